// Pure encoders and decoders for every NBD message we send or receive, handshake and transmission
// (CONVENTIONS.md §6). Byte order is big-endian throughout, as the spec says. Decoders of framed
// messages take (bytes, offset) and return { message, size }, or NEED_MORE when the bytes end
// before the message does, or throw a DecodeError when the bytes can never be a valid message
// (bad magic, impossible lengths, invalid strings): the session answers the first by waiting and
// the second with the protocol's error or a closed connection. Decoders of option payloads and
// reply-chunk payloads get the whole payload (its length is in the framed header), so for them a
// short payload is malformed, never NEED_MORE. Server-side encoders of replies that carry data
// allocate the header and the data area in one buffer, so a read lands straight in the reply.
// The client-side halves (option requests, requests, reply decoding) serve the tests and any
// client we write; they follow the same rules.
import { assert } from "../../../common/assert.ts";
import {
  NBD_MAGIC,
  NBD_OPTION_MAGIC,
  NBD_OPTION_REPLY_MAGIC,
  Info,
  Magic,
  ReplyType,
  clientFlagsBytes,
  exportNameReplyBytes,
  exportNameReplyZeroesBytes,
  offsetDataPrefixBytes,
  optionHeaderBytes,
  optionReplyHeaderBytes,
  requestHeaderBytes,
  serverGreetingBytes,
  simpleReplyHeaderBytes,
  stringBytesMax,
  structuredReplyHeaderBytes,
} from "./protocol.ts";

/** The bytes given end before the message does: call again with more. */
export const NEED_MORE: unique symbol = Symbol("NEED_MORE");
export type NeedMore = typeof NEED_MORE;
export type Decoded<T> = { message: T; size: number } | NeedMore;

export type DecodeErrorReason = "bad-magic" | "too-large" | "malformed";

/** The bytes cannot be the message expected here, whatever follows them. */
export class DecodeError extends Error {
  override name = "DecodeError";
  constructor(
    readonly reason: DecodeErrorReason,
    message: string,
  ) {
    super(message);
  }
}

// ---- Byte helpers (big-endian) ----

function readUint16(bytes: Uint8Array, offset: number): number {
  return (bytes[offset]! << 8) | bytes[offset + 1]!;
}

function readUint32(bytes: Uint8Array, offset: number): number {
  return ((bytes[offset]! << 24) | (bytes[offset + 1]! << 16) | (bytes[offset + 2]! << 8) | bytes[offset + 3]!) >>> 0;
}

/**
 * A 64-bit unsigned field as a number. Exact below 2^53; larger values come out rounded but still
 * at least 2^53, which is past any volume, so range checks refuse them just the same.
 */
function readUint64(bytes: Uint8Array, offset: number): number {
  return readUint32(bytes, offset) * 0x1_0000_0000 + readUint32(bytes, offset + 4);
}

function readBigUint64(bytes: Uint8Array, offset: number): bigint {
  return (BigInt(readUint32(bytes, offset)) << 32n) | BigInt(readUint32(bytes, offset + 4));
}

function writeUint16(bytes: Uint8Array, offset: number, value: number): void {
  bytes[offset] = value >>> 8;
  bytes[offset + 1] = value;
}

function writeUint32(bytes: Uint8Array, offset: number, value: number): void {
  bytes[offset] = value >>> 24;
  bytes[offset + 1] = value >>> 16;
  bytes[offset + 2] = value >>> 8;
  bytes[offset + 3] = value;
}

function writeUint64(bytes: Uint8Array, offset: number, value: number): void {
  assert(value >= 0 && value < 2 ** 64 && Number.isInteger(value), "64-bit field out of range");
  writeUint32(bytes, offset, Math.floor(value / 0x1_0000_0000));
  writeUint32(bytes, offset + 4, value >>> 0);
}

function writeBigUint64(bytes: Uint8Array, offset: number, value: bigint): void {
  writeUint32(bytes, offset, Number((value >> 32n) & 0xffffffffn));
  writeUint32(bytes, offset + 4, Number(value & 0xffffffffn));
}

const utf8Encoder = new TextEncoder();
const utf8Decoder = new TextDecoder("utf-8", { fatal: true });

/** A protocol string: UTF-8, no NUL, at most 4096 bytes. */
export function decodeString(bytes: Uint8Array, what: string): string {
  if (bytes.length > stringBytesMax) throw new DecodeError("too-large", `${what} is ${bytes.length} bytes; strings are at most ${stringBytesMax}`);
  if (bytes.includes(0)) throw new DecodeError("malformed", `${what} contains a NUL byte`);
  try {
    return utf8Decoder.decode(bytes);
  } catch {
    throw new DecodeError("malformed", `${what} is not valid UTF-8`);
  }
}

export function encodeString(text: string): Uint8Array {
  return utf8Encoder.encode(text);
}

/** Cut a message to the spec's string limit without splitting a UTF-8 sequence. */
export function truncateString(text: string, bytesMax = stringBytesMax): Uint8Array {
  const bytes = encodeString(text);
  if (bytes.length <= bytesMax) return bytes;
  let end = bytesMax;
  while (end > 0 && (bytes[end]! & 0xc0) === 0x80) end--;
  return bytes.subarray(0, end);
}

function concat(parts: Uint8Array[]): Uint8Array {
  let total = 0;
  for (const part of parts) total += part.length;
  const out = new Uint8Array(total);
  let at = 0;
  for (const part of parts) {
    out.set(part, at);
    at += part.length;
  }
  return out;
}

// ---- Handshake: greeting and client flags ----

export interface ServerGreeting {
  handshakeFlags: number;
}

export function encodeServerGreeting(message: ServerGreeting): Uint8Array {
  const bytes = new Uint8Array(serverGreetingBytes);
  writeBigUint64(bytes, 0, NBD_MAGIC);
  writeBigUint64(bytes, 8, NBD_OPTION_MAGIC);
  writeUint16(bytes, 16, message.handshakeFlags);
  return bytes;
}

export function decodeServerGreeting(bytes: Uint8Array, offset: number): Decoded<ServerGreeting> {
  if (bytes.length - offset < serverGreetingBytes) return NEED_MORE;
  if (readBigUint64(bytes, offset) !== NBD_MAGIC) throw new DecodeError("bad-magic", "greeting does not start with NBDMAGIC");
  if (readBigUint64(bytes, offset + 8) !== NBD_OPTION_MAGIC) throw new DecodeError("bad-magic", "greeting is not newstyle (no IHAVEOPT)");
  return { message: { handshakeFlags: readUint16(bytes, offset + 16) }, size: serverGreetingBytes };
}

export interface ClientFlags {
  flags: number;
}

export function encodeClientFlags(message: ClientFlags): Uint8Array {
  const bytes = new Uint8Array(clientFlagsBytes);
  writeUint32(bytes, 0, message.flags);
  return bytes;
}

export function decodeClientFlags(bytes: Uint8Array, offset: number): Decoded<ClientFlags> {
  if (bytes.length - offset < clientFlagsBytes) return NEED_MORE;
  return { message: { flags: readUint32(bytes, offset) }, size: clientFlagsBytes };
}

// ---- Handshake: option requests ----

export interface OptionHeader {
  option: number;
  /** Length of the option data that follows the header. */
  length: number;
}

export interface OptionRequest {
  option: number;
  data: Uint8Array;
}

/** The 16-byte header of an option request; the session decides what to do with its data. */
export function decodeOptionHeader(bytes: Uint8Array, offset: number): Decoded<OptionHeader> {
  if (bytes.length - offset < optionHeaderBytes) return NEED_MORE;
  if (readBigUint64(bytes, offset) !== NBD_OPTION_MAGIC) throw new DecodeError("bad-magic", "option request does not start with IHAVEOPT");
  return { message: { option: readUint32(bytes, offset + 8), length: readUint32(bytes, offset + 12) }, size: optionHeaderBytes };
}

/** A whole option request; options whose data is longer than `dataBytesMax` are refused. */
export function decodeOptionRequest(bytes: Uint8Array, offset: number, dataBytesMax: number): Decoded<OptionRequest> {
  const header = decodeOptionHeader(bytes, offset);
  if (header === NEED_MORE) return NEED_MORE;
  const { option, length } = header.message;
  if (length > dataBytesMax) throw new DecodeError("too-large", `option ${option} carries ${length} bytes; at most ${dataBytesMax} are accepted`);
  if (bytes.length - offset < optionHeaderBytes + length) return NEED_MORE;
  const start = offset + optionHeaderBytes;
  return { message: { option, data: bytes.subarray(start, start + length) }, size: optionHeaderBytes + length };
}

export function encodeOptionRequest(message: OptionRequest): Uint8Array {
  const bytes = new Uint8Array(optionHeaderBytes + message.data.length);
  writeBigUint64(bytes, 0, NBD_OPTION_MAGIC);
  writeUint32(bytes, 8, message.option);
  writeUint32(bytes, 12, message.data.length);
  bytes.set(message.data, optionHeaderBytes);
  return bytes;
}

/** NBD_OPT_INFO / NBD_OPT_GO data: an export name and the information items asked for. */
export interface InfoRequest {
  name: string;
  requests: number[];
}

export function decodeInfoRequest(data: Uint8Array): InfoRequest {
  if (data.length < 6) throw new DecodeError("malformed", `INFO/GO data is ${data.length} bytes; at least 6 are needed`);
  const nameBytes = readUint32(data, 0);
  if (nameBytes > data.length - 6) throw new DecodeError("malformed", `export name length ${nameBytes} runs past the option data`);
  const name = decodeString(data.subarray(4, 4 + nameBytes), "export name");
  const count = readUint16(data, 4 + nameBytes);
  const listStart = 6 + nameBytes;
  if (data.length !== listStart + 2 * count) {
    throw new DecodeError("malformed", `INFO/GO lists ${count} information requests but carries ${data.length - listStart} bytes for them`);
  }
  const requests: number[] = [];
  for (let index = 0; index < count; index++) requests.push(readUint16(data, listStart + 2 * index));
  return { name, requests };
}

export function encodeInfoRequest(message: InfoRequest): Uint8Array {
  const name = encodeString(message.name);
  const bytes = new Uint8Array(6 + name.length + 2 * message.requests.length);
  writeUint32(bytes, 0, name.length);
  bytes.set(name, 4);
  writeUint16(bytes, 4 + name.length, message.requests.length);
  message.requests.forEach((request, index) => writeUint16(bytes, 6 + name.length + 2 * index, request));
  return bytes;
}

/** NBD_OPT_LIST_META_CONTEXT / NBD_OPT_SET_META_CONTEXT data. */
export interface MetaContextRequest {
  name: string;
  queries: string[];
}

export function decodeMetaContextRequest(data: Uint8Array): MetaContextRequest {
  if (data.length < 8) throw new DecodeError("malformed", `meta context data is ${data.length} bytes; at least 8 are needed`);
  const nameBytes = readUint32(data, 0);
  if (nameBytes > data.length - 8) throw new DecodeError("malformed", `export name length ${nameBytes} runs past the option data`);
  const name = decodeString(data.subarray(4, 4 + nameBytes), "export name");
  let at = 4 + nameBytes;
  const count = readUint32(data, at);
  at += 4;
  // Each query takes at least its 4-byte length, so a count the data cannot hold is malformed.
  if (count > (data.length - at) / 4) throw new DecodeError("malformed", `${count} queries cannot fit in ${data.length - at} bytes`);
  const queries: string[] = [];
  for (let index = 0; index < count; index++) {
    if (data.length - at < 4) throw new DecodeError("malformed", `query ${index} has no length`);
    const queryBytes = readUint32(data, at);
    at += 4;
    if (queryBytes > data.length - at) throw new DecodeError("malformed", `query ${index} length ${queryBytes} runs past the option data`);
    queries.push(decodeString(data.subarray(at, at + queryBytes), `query ${index}`));
    at += queryBytes;
  }
  if (at !== data.length) throw new DecodeError("malformed", `${data.length - at} bytes follow the last query`);
  return { name, queries };
}

export function encodeMetaContextRequest(message: MetaContextRequest): Uint8Array {
  const name = encodeString(message.name);
  const queries = message.queries.map(encodeString);
  const parts: Uint8Array[] = [];
  const head = new Uint8Array(4);
  writeUint32(head, 0, name.length);
  parts.push(head, name);
  const count = new Uint8Array(4);
  writeUint32(count, 0, queries.length);
  parts.push(count);
  for (const query of queries) {
    const length = new Uint8Array(4);
    writeUint32(length, 0, query.length);
    parts.push(length, query);
  }
  return concat(parts);
}

// ---- Handshake: option replies ----

export interface OptionReplyMessage {
  option: number;
  type: number;
  data: Uint8Array;
}

export function encodeOptionReply(message: OptionReplyMessage): Uint8Array {
  const bytes = new Uint8Array(optionReplyHeaderBytes + message.data.length);
  writeBigUint64(bytes, 0, NBD_OPTION_REPLY_MAGIC);
  writeUint32(bytes, 8, message.option);
  writeUint32(bytes, 12, message.type);
  writeUint32(bytes, 16, message.data.length);
  bytes.set(message.data, optionReplyHeaderBytes);
  return bytes;
}

export function decodeOptionReply(bytes: Uint8Array, offset: number, dataBytesMax = 16 * 1024 * 1024): Decoded<OptionReplyMessage> {
  if (bytes.length - offset < optionReplyHeaderBytes) return NEED_MORE;
  if (readBigUint64(bytes, offset) !== NBD_OPTION_REPLY_MAGIC) throw new DecodeError("bad-magic", "option reply has the wrong magic");
  const length = readUint32(bytes, offset + 16);
  if (length > dataBytesMax) throw new DecodeError("too-large", `option reply carries ${length} bytes`);
  if (bytes.length - offset < optionReplyHeaderBytes + length) return NEED_MORE;
  const start = offset + optionReplyHeaderBytes;
  return {
    message: { option: readUint32(bytes, offset + 8), type: readUint32(bytes, offset + 12), data: bytes.subarray(start, start + length) },
    size: optionReplyHeaderBytes + length,
  };
}

/** NBD_REP_SERVER data: an export name and, after it, human-readable details. */
export interface ServerReplyData {
  name: string;
  details: string;
}

export function encodeServerReplyData(message: ServerReplyData): Uint8Array {
  const name = encodeString(message.name);
  const details = truncateString(message.details);
  const bytes = new Uint8Array(4 + name.length + details.length);
  writeUint32(bytes, 0, name.length);
  bytes.set(name, 4);
  bytes.set(details, 4 + name.length);
  return bytes;
}

export function decodeServerReplyData(data: Uint8Array): ServerReplyData {
  if (data.length < 4) throw new DecodeError("malformed", "NBD_REP_SERVER data is shorter than 4 bytes");
  const nameBytes = readUint32(data, 0);
  if (nameBytes > data.length - 4) throw new DecodeError("malformed", "NBD_REP_SERVER name runs past the reply");
  return { name: decodeString(data.subarray(4, 4 + nameBytes), "export name"), details: decodeString(data.subarray(4 + nameBytes), "export details") };
}

/** NBD_REP_META_CONTEXT data. */
export interface MetaContextReplyData {
  id: number;
  name: string;
}

export function encodeMetaContextReplyData(message: MetaContextReplyData): Uint8Array {
  const name = encodeString(message.name);
  const bytes = new Uint8Array(4 + name.length);
  writeUint32(bytes, 0, message.id);
  bytes.set(name, 4);
  return bytes;
}

export function decodeMetaContextReplyData(data: Uint8Array): MetaContextReplyData {
  if (data.length < 4) throw new DecodeError("malformed", "NBD_REP_META_CONTEXT data is shorter than 4 bytes");
  return { id: readUint32(data, 0), name: decodeString(data.subarray(4), "context name") };
}

/** NBD_REP_INFO data, one variant per information type. */
export type InfoReplyData =
  | { type: Info.Export; sizeBytes: number; transmissionFlags: number }
  | { type: Info.Name; name: string }
  | { type: Info.Description; description: string }
  | { type: Info.BlockSize; minimumBytes: number; preferredBytes: number; maximumBytes: number }
  | { type: number; raw: Uint8Array };

export function encodeInfoReplyData(message: InfoReplyData): Uint8Array {
  switch (message.type) {
    case Info.Export: {
      const { sizeBytes, transmissionFlags } = message as { sizeBytes: number; transmissionFlags: number };
      const bytes = new Uint8Array(12);
      writeUint16(bytes, 0, Info.Export);
      writeUint64(bytes, 2, sizeBytes);
      writeUint16(bytes, 10, transmissionFlags);
      return bytes;
    }
    case Info.Name:
    case Info.Description: {
      const text = message.type === Info.Name ? (message as { name: string }).name : (message as { description: string }).description;
      const encoded = truncateString(text);
      const bytes = new Uint8Array(2 + encoded.length);
      writeUint16(bytes, 0, message.type);
      bytes.set(encoded, 2);
      return bytes;
    }
    case Info.BlockSize: {
      const { minimumBytes, preferredBytes, maximumBytes } = message as { minimumBytes: number; preferredBytes: number; maximumBytes: number };
      const bytes = new Uint8Array(14);
      writeUint16(bytes, 0, Info.BlockSize);
      writeUint32(bytes, 2, minimumBytes);
      writeUint32(bytes, 6, preferredBytes);
      writeUint32(bytes, 10, maximumBytes);
      return bytes;
    }
    default: {
      const raw = (message as { raw: Uint8Array }).raw;
      const bytes = new Uint8Array(2 + raw.length);
      writeUint16(bytes, 0, message.type);
      bytes.set(raw, 2);
      return bytes;
    }
  }
}

export function decodeInfoReplyData(data: Uint8Array): InfoReplyData {
  if (data.length < 2) throw new DecodeError("malformed", "NBD_REP_INFO data is shorter than 2 bytes");
  const type = readUint16(data, 0);
  switch (type) {
    case Info.Export:
      if (data.length !== 12) throw new DecodeError("malformed", `NBD_INFO_EXPORT is ${data.length} bytes, not 12`);
      return { type, sizeBytes: readUint64(data, 2), transmissionFlags: readUint16(data, 10) };
    case Info.Name:
      return { type, name: decodeString(data.subarray(2), "export name") };
    case Info.Description:
      return { type, description: decodeString(data.subarray(2), "export description") };
    case Info.BlockSize:
      if (data.length !== 14) throw new DecodeError("malformed", `NBD_INFO_BLOCK_SIZE is ${data.length} bytes, not 14`);
      return { type, minimumBytes: readUint32(data, 2), preferredBytes: readUint32(data, 6), maximumBytes: readUint32(data, 10) };
    default:
      return { type, raw: data.subarray(2) };
  }
}

/** The server's answer to NBD_OPT_EXPORT_NAME: size, flags, and 124 zeroes unless NO_ZEROES. */
export interface ExportNameReply {
  sizeBytes: number;
  transmissionFlags: number;
}

export function encodeExportNameReply(message: ExportNameReply, noZeroes: boolean): Uint8Array {
  const bytes = new Uint8Array(exportNameReplyBytes + (noZeroes ? 0 : exportNameReplyZeroesBytes));
  writeUint64(bytes, 0, message.sizeBytes);
  writeUint16(bytes, 8, message.transmissionFlags);
  return bytes;
}

export function decodeExportNameReply(bytes: Uint8Array, offset: number, noZeroes: boolean): Decoded<ExportNameReply> {
  const size = exportNameReplyBytes + (noZeroes ? 0 : exportNameReplyZeroesBytes);
  if (bytes.length - offset < size) return NEED_MORE;
  return { message: { sizeBytes: readUint64(bytes, offset), transmissionFlags: readUint16(bytes, offset + 8) }, size };
}

// ---- Buffers for data ----

/**
 * Provides the buffers that READ data is read into: `bytes` long, zeroed (a short read can never
 * show a client old memory), with `alignedAt` the offset where the data starts (a driver may align
 * that offset in memory for O_DIRECT).
 */
export type BufferAllocator = (bytes: number, alignedAt: number) => Uint8Array;

export const plainAllocator: BufferAllocator = (bytes) => new Uint8Array(bytes);

// ---- Transmission: requests ----

export interface Request {
  flags: number;
  type: number;
  /** Opaque to the server; echoed in every reply. */
  cookie: bigint;
  offset: number;
  length: number;
}

/** The 28-byte request header. A WRITE's payload follows it; the session frames that. */
export function decodeRequest(bytes: Uint8Array, offset: number): Decoded<Request> {
  if (bytes.length - offset < requestHeaderBytes) return NEED_MORE;
  const magic = readUint32(bytes, offset);
  if (magic !== Magic.Request) throw new DecodeError("bad-magic", `request magic 0x${magic.toString(16)} is not NBD_REQUEST_MAGIC`);
  return {
    message: {
      flags: readUint16(bytes, offset + 4),
      type: readUint16(bytes, offset + 6),
      cookie: readBigUint64(bytes, offset + 8),
      offset: readUint64(bytes, offset + 16),
      length: readUint32(bytes, offset + 24),
    },
    size: requestHeaderBytes,
  };
}

/** A request header, followed by `payload` (a WRITE's data) when given. */
export function encodeRequest(message: Request, payload?: Uint8Array): Uint8Array {
  const bytes = new Uint8Array(requestHeaderBytes + (payload?.length ?? 0));
  writeUint32(bytes, 0, Magic.Request);
  writeUint16(bytes, 4, message.flags);
  writeUint16(bytes, 6, message.type);
  writeBigUint64(bytes, 8, message.cookie);
  writeUint64(bytes, 16, message.offset);
  writeUint32(bytes, 24, message.length);
  if (payload) bytes.set(payload, requestHeaderBytes);
  return bytes;
}

// ---- Transmission: simple replies ----

export interface SimpleReply {
  error: number;
  cookie: bigint;
}

/**
 * A simple reply header with room for `dataBytes` of READ data after it (left zeroed for the
 * caller to fill), all in one buffer.
 */
export function encodeSimpleReply(message: SimpleReply, dataBytes = 0, allocate: BufferAllocator = plainAllocator): Uint8Array {
  const bytes = allocate(simpleReplyHeaderBytes + dataBytes, simpleReplyHeaderBytes);
  writeUint32(bytes, 0, Magic.SimpleReply);
  writeUint32(bytes, 4, message.error);
  writeBigUint64(bytes, 8, message.cookie);
  return bytes;
}

/** The 16-byte simple reply header; only the client knows whether READ data follows. */
export function decodeSimpleReply(bytes: Uint8Array, offset: number): Decoded<SimpleReply> {
  if (bytes.length - offset < simpleReplyHeaderBytes) return NEED_MORE;
  const magic = readUint32(bytes, offset);
  if (magic !== Magic.SimpleReply) throw new DecodeError("bad-magic", `reply magic 0x${magic.toString(16)} is not NBD_SIMPLE_REPLY_MAGIC`);
  return { message: { error: readUint32(bytes, offset + 4), cookie: readBigUint64(bytes, offset + 8) }, size: simpleReplyHeaderBytes };
}

// ---- Transmission: structured reply chunks ----

export interface StructuredChunk {
  flags: number;
  type: number;
  cookie: bigint;
  payload: Uint8Array;
}

function writeChunkHeader(bytes: Uint8Array, flags: number, type: number, cookie: bigint, payloadBytes: number): void {
  writeUint32(bytes, 0, Magic.StructuredReply);
  writeUint16(bytes, 4, flags);
  writeUint16(bytes, 6, type);
  writeBigUint64(bytes, 8, cookie);
  writeUint32(bytes, 16, payloadBytes);
}

export function encodeStructuredChunk(message: StructuredChunk): Uint8Array {
  const bytes = new Uint8Array(structuredReplyHeaderBytes + message.payload.length);
  writeChunkHeader(bytes, message.flags, message.type, message.cookie, message.payload.length);
  bytes.set(message.payload, structuredReplyHeaderBytes);
  return bytes;
}

export function decodeStructuredChunk(bytes: Uint8Array, offset: number, payloadBytesMax = 64 * 1024 * 1024): Decoded<StructuredChunk> {
  if (bytes.length - offset < structuredReplyHeaderBytes) return NEED_MORE;
  const magic = readUint32(bytes, offset);
  if (magic !== Magic.StructuredReply) throw new DecodeError("bad-magic", `chunk magic 0x${magic.toString(16)} is not NBD_STRUCTURED_REPLY_MAGIC`);
  const length = readUint32(bytes, offset + 16);
  if (length > payloadBytesMax) throw new DecodeError("too-large", `chunk payload of ${length} bytes`);
  if (bytes.length - offset < structuredReplyHeaderBytes + length) return NEED_MORE;
  const start = offset + structuredReplyHeaderBytes;
  return {
    message: {
      flags: readUint16(bytes, offset + 4),
      type: readUint16(bytes, offset + 6),
      cookie: readBigUint64(bytes, offset + 8),
      payload: bytes.subarray(start, start + length),
    },
    size: structuredReplyHeaderBytes + length,
  };
}

/** Where the data of an OFFSET_DATA chunk starts in the buffer encodeOffsetDataChunk returns. */
export const offsetDataChunkDataStart = structuredReplyHeaderBytes + offsetDataPrefixBytes;

/**
 * An NBD_REPLY_TYPE_OFFSET_DATA chunk header plus `dataBytes` of room for the data, in one
 * buffer: read into `bytes.subarray(offsetDataChunkDataStart)` and send the whole.
 */
export function encodeOffsetDataChunk(message: { flags: number; cookie: bigint; offset: number }, dataBytes: number, allocate: BufferAllocator = plainAllocator): Uint8Array {
  const bytes = allocate(offsetDataChunkDataStart + dataBytes, offsetDataChunkDataStart);
  writeChunkHeader(bytes, message.flags, ReplyType.OffsetData, message.cookie, offsetDataPrefixBytes + dataBytes);
  writeUint64(bytes, structuredReplyHeaderBytes, message.offset);
  return bytes;
}

/** Only the first `offsetDataChunkDataStart` bytes of an OFFSET_DATA chunk of `dataBytes`: the data is sent after it in pieces. */
export function encodeOffsetDataChunkHeader(message: { flags: number; cookie: bigint; offset: number }, dataBytes: number): Uint8Array {
  return encodeOffsetDataChunk(message, dataBytes, () => new Uint8Array(offsetDataChunkDataStart));
}

export function encodeNoneChunk(message: { flags: number; cookie: bigint }): Uint8Array {
  const bytes = new Uint8Array(structuredReplyHeaderBytes);
  writeChunkHeader(bytes, message.flags, ReplyType.None, message.cookie, 0);
  return bytes;
}

export interface ErrorChunk {
  flags: number;
  cookie: bigint;
  error: number;
  message: string;
  /** Present for NBD_REPLY_TYPE_ERROR_OFFSET. */
  offset?: number;
}

export function encodeErrorChunk(chunk: ErrorChunk): Uint8Array {
  const text = truncateString(chunk.message);
  const withOffset = chunk.offset !== undefined;
  const payloadBytes = 6 + text.length + (withOffset ? 8 : 0);
  const bytes = new Uint8Array(structuredReplyHeaderBytes + payloadBytes);
  writeChunkHeader(bytes, chunk.flags, withOffset ? ReplyType.ErrorOffset : ReplyType.Error, chunk.cookie, payloadBytes);
  writeUint32(bytes, 20, chunk.error);
  writeUint16(bytes, 24, text.length);
  bytes.set(text, 26);
  if (withOffset) writeUint64(bytes, 26 + text.length, chunk.offset!);
  return bytes;
}

export interface BlockStatusDescriptor {
  length: number;
  flags: number;
}

export function encodeBlockStatusChunk(message: { flags: number; cookie: bigint; contextId: number; descriptors: BlockStatusDescriptor[] }): Uint8Array {
  const payloadBytes = 4 + 8 * message.descriptors.length;
  const bytes = new Uint8Array(structuredReplyHeaderBytes + payloadBytes);
  writeChunkHeader(bytes, message.flags, ReplyType.BlockStatus, message.cookie, payloadBytes);
  writeUint32(bytes, 20, message.contextId);
  message.descriptors.forEach((descriptor, index) => {
    writeUint32(bytes, 24 + 8 * index, descriptor.length);
    writeUint32(bytes, 28 + 8 * index, descriptor.flags);
  });
  return bytes;
}

/** Payloads of the chunk types we send, decoded (for clients and tests). */
export type ChunkPayload =
  | { type: ReplyType.None }
  | { type: ReplyType.OffsetData; offset: number; data: Uint8Array }
  | { type: ReplyType.OffsetHole; offset: number; length: number }
  | { type: ReplyType.BlockStatus; contextId: number; descriptors: BlockStatusDescriptor[] }
  | { type: ReplyType.Error; error: number; message: string }
  | { type: ReplyType.ErrorOffset; error: number; message: string; offset: number };

export function decodeChunkPayload(chunk: StructuredChunk): ChunkPayload {
  const { payload } = chunk;
  switch (chunk.type) {
    case ReplyType.None:
      if (payload.length !== 0) throw new DecodeError("malformed", "NONE chunk with a payload");
      return { type: ReplyType.None };
    case ReplyType.OffsetData:
      if (payload.length < 9) throw new DecodeError("malformed", `OFFSET_DATA chunk of ${payload.length} bytes`);
      return { type: ReplyType.OffsetData, offset: readUint64(payload, 0), data: payload.subarray(8) };
    case ReplyType.OffsetHole:
      if (payload.length !== 12) throw new DecodeError("malformed", `OFFSET_HOLE chunk of ${payload.length} bytes`);
      return { type: ReplyType.OffsetHole, offset: readUint64(payload, 0), length: readUint32(payload, 8) };
    case ReplyType.BlockStatus: {
      if (payload.length < 12 || (payload.length - 4) % 8 !== 0) throw new DecodeError("malformed", `BLOCK_STATUS chunk of ${payload.length} bytes`);
      const descriptors: BlockStatusDescriptor[] = [];
      for (let at = 4; at < payload.length; at += 8) descriptors.push({ length: readUint32(payload, at), flags: readUint32(payload, at + 4) });
      return { type: ReplyType.BlockStatus, contextId: readUint32(payload, 0), descriptors };
    }
    case ReplyType.Error:
    case ReplyType.ErrorOffset: {
      if (payload.length < 6) throw new DecodeError("malformed", `error chunk of ${payload.length} bytes`);
      const messageBytes = readUint16(payload, 4);
      const rest = chunk.type === ReplyType.ErrorOffset ? 8 : 0;
      if (6 + messageBytes + rest !== payload.length) throw new DecodeError("malformed", "error chunk message length does not match its payload");
      const message = decodeString(payload.subarray(6, 6 + messageBytes), "error message");
      const error = readUint32(payload, 0);
      if (chunk.type === ReplyType.Error) return { type: ReplyType.Error, error, message };
      return { type: ReplyType.ErrorOffset, error, message, offset: readUint64(payload, 6 + messageBytes) };
    }
    default:
      throw new DecodeError("malformed", `unknown chunk type ${chunk.type}`);
  }
}
