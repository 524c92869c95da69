// The numbers of the NBD protocol (NetworkBlockDevice/nbd doc/proto.md), named once so the codec,
// the session and the tests speak the spec's vocabulary. Each member carries the spec's name in a
// comment. 64-bit magics do not fit a const enum and are bigint constants. Nothing here has
// behaviour; the codec turns these into bytes and the session decides what to send.

/** S: 'NBDMAGIC', first 8 bytes of every handshake (INIT_PASSWD). */
export const NBD_MAGIC = 0x4e42444d41474943n;
/** 'IHAVEOPT': second handshake magic, and the magic of every option request. */
export const NBD_OPTION_MAGIC = 0x49484156454f5054n;
/** Magic of every option reply (fixed newstyle). */
export const NBD_OPTION_REPLY_MAGIC = 0x3e889045565a9n;

export const enum Magic {
  /** NBD_REQUEST_MAGIC */
  Request = 0x25609513,
  /** NBD_SIMPLE_REPLY_MAGIC (formerly NBD_REPLY_MAGIC) */
  SimpleReply = 0x67446698,
  /** NBD_STRUCTURED_REPLY_MAGIC */
  StructuredReply = 0x668e33ef,
  /** NBD_EXTENDED_REQUEST_MAGIC: experimental EXTENDED_HEADERS, which we do not negotiate. */
  ExtendedRequest = 0x21e41c71,
}

/** Handshake flags, sent by the server after the magics (16 bits). */
export const enum HandshakeFlag {
  /** NBD_FLAG_FIXED_NEWSTYLE */
  FixedNewstyle = 1 << 0,
  /** NBD_FLAG_NO_ZEROES */
  NoZeroes = 1 << 1,
}

/** Client flags, the client's 32-bit answer to the handshake flags. */
export const enum ClientFlag {
  /** NBD_FLAG_C_FIXED_NEWSTYLE */
  FixedNewstyle = 1 << 0,
  /** NBD_FLAG_C_NO_ZEROES */
  NoZeroes = 1 << 1,
}

/** Transmission flags (16 bits), sent with the export size at the end of negotiation. */
export const enum TransmissionFlag {
  /** NBD_FLAG_HAS_FLAGS: always set. */
  HasFlags = 1 << 0,
  /** NBD_FLAG_READ_ONLY */
  ReadOnly = 1 << 1,
  /** NBD_FLAG_SEND_FLUSH */
  SendFlush = 1 << 2,
  /** NBD_FLAG_SEND_FUA */
  SendFua = 1 << 3,
  /** NBD_FLAG_ROTATIONAL */
  Rotational = 1 << 4,
  /** NBD_FLAG_SEND_TRIM */
  SendTrim = 1 << 5,
  /** NBD_FLAG_SEND_WRITE_ZEROES */
  SendWriteZeroes = 1 << 6,
  /** NBD_FLAG_SEND_DF */
  SendDontFragment = 1 << 7,
  /** NBD_FLAG_CAN_MULTI_CONN */
  CanMultiConnection = 1 << 8,
  /** NBD_FLAG_SEND_RESIZE (experimental RESIZE extension; never set) */
  SendResize = 1 << 9,
  /** NBD_FLAG_SEND_CACHE */
  SendCache = 1 << 10,
  /** NBD_FLAG_SEND_FAST_ZERO */
  SendFastZero = 1 << 11,
}

/** Option types (NBD_OPT_*), sent by the client during option haggling. */
export const enum Option {
  /** NBD_OPT_EXPORT_NAME */
  ExportName = 1,
  /** NBD_OPT_ABORT */
  Abort = 2,
  /** NBD_OPT_LIST */
  List = 3,
  /** NBD_OPT_PEEK_EXPORT (withdrawn) */
  PeekExport = 4,
  /** NBD_OPT_STARTTLS */
  StartTls = 5,
  /** NBD_OPT_INFO */
  Info = 6,
  /** NBD_OPT_GO */
  Go = 7,
  /** NBD_OPT_STRUCTURED_REPLY */
  StructuredReply = 8,
  /** NBD_OPT_LIST_META_CONTEXT */
  ListMetaContext = 9,
  /** NBD_OPT_SET_META_CONTEXT */
  SetMetaContext = 10,
  /** NBD_OPT_EXTENDED_HEADERS (experimental; answered with ERR_UNSUP) */
  ExtendedHeaders = 11,
}

/** Option reply types (NBD_REP_*). Errors have bit 31 set. */
export const enum OptionReply {
  /** NBD_REP_ACK */
  Ack = 1,
  /** NBD_REP_SERVER */
  Server = 2,
  /** NBD_REP_INFO */
  Info = 3,
  /** NBD_REP_META_CONTEXT */
  MetaContext = 4,
  /** NBD_REP_ERR_UNSUP */
  ErrorUnsupported = 0x80000001,
  /** NBD_REP_ERR_POLICY */
  ErrorPolicy = 0x80000002,
  /** NBD_REP_ERR_INVALID */
  ErrorInvalid = 0x80000003,
  /** NBD_REP_ERR_PLATFORM */
  ErrorPlatform = 0x80000004,
  /** NBD_REP_ERR_TLS_REQD */
  ErrorTlsRequired = 0x80000005,
  /** NBD_REP_ERR_UNKNOWN */
  ErrorUnknown = 0x80000006,
  /** NBD_REP_ERR_SHUTDOWN */
  ErrorShutdown = 0x80000007,
  /** NBD_REP_ERR_BLOCK_SIZE_REQD */
  ErrorBlockSizeRequired = 0x80000008,
  /** NBD_REP_ERR_TOO_BIG */
  ErrorTooBig = 0x80000009,
}

/** Information types in NBD_REP_INFO replies and NBD_OPT_INFO/GO requests (NBD_INFO_*). */
export const enum Info {
  /** NBD_INFO_EXPORT */
  Export = 0,
  /** NBD_INFO_NAME */
  Name = 1,
  /** NBD_INFO_DESCRIPTION */
  Description = 2,
  /** NBD_INFO_BLOCK_SIZE */
  BlockSize = 3,
}

/** Request types (NBD_CMD_*). */
export const enum Command {
  /** NBD_CMD_READ */
  Read = 0,
  /** NBD_CMD_WRITE */
  Write = 1,
  /** NBD_CMD_DISC */
  Disconnect = 2,
  /** NBD_CMD_FLUSH */
  Flush = 3,
  /** NBD_CMD_TRIM */
  Trim = 4,
  /** NBD_CMD_CACHE */
  Cache = 5,
  /** NBD_CMD_WRITE_ZEROES */
  WriteZeroes = 6,
  /** NBD_CMD_BLOCK_STATUS */
  BlockStatus = 7,
  /** NBD_CMD_RESIZE (experimental; refused with EINVAL) */
  Resize = 8,
}

/** Command flags (NBD_CMD_FLAG_*), 16 bits in every request. */
export const enum CommandFlag {
  /** NBD_CMD_FLAG_FUA */
  Fua = 1 << 0,
  /** NBD_CMD_FLAG_NO_HOLE */
  NoHole = 1 << 1,
  /** NBD_CMD_FLAG_DF */
  DontFragment = 1 << 2,
  /** NBD_CMD_FLAG_REQ_ONE */
  RequestOne = 1 << 3,
  /** NBD_CMD_FLAG_FAST_ZERO */
  FastZero = 1 << 4,
  /** NBD_CMD_FLAG_PAYLOAD_LEN (experimental EXTENDED_HEADERS; refused) */
  PayloadLength = 1 << 5,
}

/** Structured reply chunk flags (NBD_REPLY_FLAG_*). */
export const enum ReplyFlag {
  /** NBD_REPLY_FLAG_DONE */
  Done = 1 << 0,
}

/** Structured reply chunk types (NBD_REPLY_TYPE_*). Error chunks have bit 15 set. */
export const enum ReplyType {
  /** NBD_REPLY_TYPE_NONE */
  None = 0,
  /** NBD_REPLY_TYPE_OFFSET_DATA */
  OffsetData = 1,
  /** NBD_REPLY_TYPE_OFFSET_HOLE */
  OffsetHole = 2,
  /** NBD_REPLY_TYPE_BLOCK_STATUS */
  BlockStatus = 5,
  /** NBD_REPLY_TYPE_ERROR */
  Error = 0x8001,
  /** NBD_REPLY_TYPE_ERROR_OFFSET */
  ErrorOffset = 0x8002,
}

/** Error values in replies (NBD_E*). */
export const enum ErrorValue {
  /** NBD_EPERM */
  Permission = 1,
  /** NBD_EIO */
  InputOutput = 5,
  /** NBD_ENOMEM */
  NoMemory = 12,
  /** NBD_EINVAL */
  Invalid = 22,
  /** NBD_ENOSPC */
  NoSpace = 28,
  /** NBD_EOVERFLOW */
  Overflow = 75,
  /** NBD_ENOTSUP */
  NotSupported = 95,
  /** NBD_ESHUTDOWN */
  Shutdown = 108,
}

/** `base:allocation` state flags (NBD_STATE_*). */
export const enum AllocationState {
  /** NBD_STATE_HOLE */
  Hole = 1 << 0,
  /** NBD_STATE_ZERO */
  Zero = 1 << 1,
}

/** The one metadata context we serve. */
export const BASE_ALLOCATION = "base:allocation";

// Fixed sizes of the messages, in bytes.
export const serverGreetingBytes = 18; // NBDMAGIC + IHAVEOPT + 16-bit handshake flags
export const clientFlagsBytes = 4;
export const optionHeaderBytes = 16; // IHAVEOPT + option + length
export const optionReplyHeaderBytes = 20; // magic + option + type + length
export const exportNameReplyBytes = 10; // size + transmission flags, then 124 zeroes unless NO_ZEROES
export const exportNameReplyZeroesBytes = 124;
export const requestHeaderBytes = 28;
export const simpleReplyHeaderBytes = 16;
export const structuredReplyHeaderBytes = 20;
/** Offset field in front of the data of an OFFSET_DATA chunk. */
export const offsetDataPrefixBytes = 8;
/** Longest string the spec allows (export names, error messages, context names). */
export const stringBytesMax = 4096;
/** The largest value a 32-bit length field carries. */
export const uint32Max = 0xffffffff;
