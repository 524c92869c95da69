// The replication link's byte format: frames, message bodies and a framer that accepts any chunking.
// One TCP connection between the two daemons carries every volume, so each frame names its volume
// and request. Every frame has two CRC32Cs: one over its header (a bad one means the framing itself
// cannot be trusted: the connection is dropped) and one over its payload (a bad one with a good
// header is reported as a corrupt frame, so a data message is resent rather than written). Once the
// link is authenticated every frame also carries a 16-byte tag after its payload (flag `Tagged`),
// computed and checked by the session (auth.ts) before the frame is acted on; the framer only
// delimits it. Pure functions over bytes (CONVENTIONS.md §6): encoders return Uint8Array parts
// ready for a vectored send (data payloads are never copied), decoders return NEED_MORE or a value,
// or throw DecodeError.
//
// On an authenticated link of version 3 or later the payload CRC of a tagged frame is zero and the
// receiver never checks a tagged frame's payload CRC: the tag covers the same bytes and is checked
// before anything else (a version-2 peer still gets the CRC, and a version-2 sender's is ignored).
//
// Frame header, 32 bytes, little endian:
//   0 u32 magic "TDM1"   4 u8 type   5 u8 flags   6 u16 reserved (0)   8 u32 volume id
//  12 u32 payload length 16 u64 request id            24 u32 payload CRC32C  28 u32 header CRC32C
// then the payload, then (flags & Tagged) a 16-byte tag over header and payload.
import { checksum } from "./checksum.ts";
import { bufferToFill, joinPayload, type Payload, payloadOf, Pieces, partsOf } from "../common/bytes.ts";
import { crc32cRange } from "../common/crc32c.ts";
import { type BitRun, DataState, DecisionKind, type Generations } from "./model.ts";
import { FieldReader, FieldWriter, getUint16, getUint32, setUint16, setUint32, textEncoder, wireStatus, writeText } from "./wire-fields.ts";
import {
  admissionBytesMax,
  type Base,
  clusterIdBytes,
  DecodeError,
  type Frame,
  FrameFlags,
  frameHeaderBytes,
  frameMagic,
  frameTagBytes,
  type HelloMessage,
  LinkRole,
  macBytes,
  type Message,
  MessageType,
  NEED_MORE,
  type NeedMore,
  nodeIdBytesMax,
  peerPayloadBytesMax,
  protocolVersionMax,
  protocolVersionMin,
  quorumPayloadBytesMax,
  reasonBytesMax,
  WireStatus,
} from "./messages.ts";

export * from "./messages.ts";

// ---- frames ----

/** How a frame is sent: tagged (the flag set now, the tag appended by the session) and with or without its payload CRC. */
export interface FrameMode {
  tagged: boolean;
  payloadCrc: boolean;
}

/** Handshake frames and links that agreed on untagged frames. */
export const plainFrames: FrameMode = { tagged: false, payloadCrc: true };

function finishHeader(bytes: Uint8Array, type: number, flags: number, volumeId: number, requestId: number, payloadLength: number, payloadCrc: number): void {
  setUint32(bytes, 0, frameMagic);
  bytes[4] = type;
  bytes[5] = flags;
  setUint16(bytes, 6, 0);
  setUint32(bytes, 8, volumeId);
  setUint32(bytes, 12, payloadLength);
  setUint32(bytes, 16, requestId % 0x100000000);
  setUint32(bytes, 20, Math.floor(requestId / 0x100000000));
  setUint32(bytes, 24, payloadCrc);
  setUint32(bytes, 28, crc32cRange(bytes, 0, 28));
}

/**
 * A frame as parts for a vectored send: header and fixed fields in one new buffer, then `data`
 * untouched (it is not copied; the caller keeps it alive and unchanged until sent).
 */
function frame(type: MessageType, base: Base, fields: FieldWriter | undefined, data: Payload | undefined, mode: FrameMode): Uint8Array[] {
  const head = fields ?? new FieldWriter(frameHeaderBytes, frameHeaderBytes);
  let crc = 0;
  if (mode.payloadCrc) {
    crc = checksum(head.bytes.subarray(frameHeaderBytes, head.offset));
    if (data) crc = payloadChecksum(data, crc);
  }
  const payloadLength = head.offset - frameHeaderBytes + (data?.length ?? 0);
  finishHeader(head.bytes, type, mode.tagged ? FrameFlags.Tagged : 0, base.volumeId, base.requestId, payloadLength, crc);
  // Views only where needed: the fields usually fill their buffer exactly.
  const headBytes = head.offset === head.bytes.length ? head.bytes : head.bytes.subarray(0, head.offset);
  return data && data.length > 0 ? [headBytes, ...partsOf(data)] : [headBytes];
}

/** CRC32C of a payload's bytes, whole or in pieces, continuing from `crc`. */
function payloadChecksum(payload: Payload, crc: number): number {
  for (const part of partsOf(payload)) crc = checksum(part, crc);
  return crc;
}

/**
 * Flag the frame whose header starts `head` (the first part encodeMessage returned) as carrying a
 * tag, and recompute its header CRC. The caller appends the tag as the frame's last part.
 */
export function markFrameTagged(head: Uint8Array): void {
  head[5] = head[5]! | FrameFlags.Tagged;
  setUint32(head, 28, crc32cRange(head, 0, 28));
}

function fields(length: number): FieldWriter {
  return new FieldWriter(frameHeaderBytes + length, frameHeaderBytes);
}

// ---- message layouts ----
//
// Each message's payload is described once, as the list of its fields in wire order; encodeMessage
// and decodeMessage are derived from the description (the Hello of the handshake, whose decoding
// depends on its version, keeps its own code below). Integers are little endian; u64 fields carry
// at most 2^53; text is a u16 byte length then UTF-8; `data` is the rest of the payload, sent as its
// own part (never copied) and received as a view; `payload` is the rest, copied.

type Field =
  | { kind: "u8" | "u16" | "u32" | "u64" | "big64" | "bool" | "status"; name: string; label: string }
  | { kind: "enum"; name: string; label: string; max: number }
  | { kind: "text"; name: string; label: string; bytesMax: number }
  | { kind: "raw"; name: string; label: string; bytes: number }
  | { kind: "generations"; name: string }
  | { kind: "runs"; name: string }
  | { kind: "payload"; name: string; label: string; bytesMax: number }
  | { kind: "data"; name: string };

interface Layout {
  fields: Field[];
  /** Semantic checks a decoded message must pass (beyond each field's own). */
  check?(message: Record<string, unknown>): void;
}

const label = (name: string) => name.replace(/[A-Z]/g, (letter) => ` ${letter.toLowerCase()}`);
const u8 = (name: string, what = label(name)): Field => ({ kind: "u8", name, label: what });
const u32 = (name: string, what = label(name)): Field => ({ kind: "u32", name, label: what });
const u64 = (name: string, what = label(name)): Field => ({ kind: "u64", name, label: what });
const big64 = (name: string, what: string): Field => ({ kind: "big64", name, label: what });
const bool = (name: string): Field => ({ kind: "bool", name, label: name });
const status: Field = { kind: "status", name: "status", label: "status" };
const round = u32("round");
const offset = u64("offset");
const length = u32("length");
const reason: Field = { kind: "text", name: "reason", label: "reason", bytesMax: reasonBytesMax };
const data: Field = { kind: "data", name: "data" };
const nonEmpty = (what: string) => (message: Record<string, unknown>) => {
  if (message.length === 0) throw new DecodeError(`empty ${what}`);
};

const layouts: Partial<Record<MessageType, Layout>> = {
  [MessageType.Auth]: { fields: [{ kind: "raw", name: "mac", label: "mac", bytes: macBytes }] },
  [MessageType.Ping]: { fields: [] },
  [MessageType.Pong]: { fields: [] },
  [MessageType.Goodbye]: { fields: [reason] },
  [MessageType.PeerRequest]: { fields: [{ kind: "payload", name: "payload", label: "peer request", bytesMax: peerPayloadBytesMax }] },
  [MessageType.PeerReply]: { fields: [bool("ok"), { kind: "payload", name: "payload", label: "peer reply", bytesMax: peerPayloadBytesMax }] },
  [MessageType.Quorum]: {
    fields: [{ kind: "payload", name: "payload", label: "quorum message", bytesMax: quorumPayloadBytesMax }],
    check: (message) => {
      if ((message.payload as Uint8Array).length === 0) throw new DecodeError("empty quorum message");
    },
  },
  [MessageType.VolumeHello]: {
    fields: [u32("seq"), u64("sizeBytes", "size"), u32("granuleBytes", "granule"), { kind: "generations", name: "generations" }, { kind: "enum", name: "dataState", label: "data state", max: DataState.Inconsistent }, bool("mayWrite"), u64("bitsSet", "bits set"), bool("redecide")],
  },
  [MessageType.VolumeDecision]: {
    fields: [u32("followerHelloSeq", "follower hello seq"), round, { kind: "enum", name: "kind", label: "decision", max: DecisionKind.PrimaryWouldBeTarget }, bool("deciderIsSource"), bool("deciderLeads"), bool("full"), bool("byOperator"), reason],
  },
  [MessageType.VolumeUnknown]: { fields: [] },
  [MessageType.VolumeClosed]: { fields: [] },
  [MessageType.BitmapRuns]: { fields: [round, { kind: "runs", name: "runs" }] },
  [MessageType.BitmapDone]: { fields: [round] },
  [MessageType.ResyncReady]: { fields: [round] },
  [MessageType.ResyncProgress]: { fields: [round, { kind: "runs", name: "runs" }] },
  [MessageType.ResyncComplete]: { fields: [round, big64("sourceCurrent", "source generation")] },
  [MessageType.ResyncCompleteAck]: { fields: [round, big64("sourceCurrent", "source generation")] },
  [MessageType.SplitBrainResolve]: { fields: [bool("senderKeeps")] },
  [MessageType.Write]: {
    fields: [offset, bool("fua"), data],
    check: (message) => {
      if ((message.data as Uint8Array).length === 0) throw new DecodeError("empty write");
    },
  },
  [MessageType.Trim]: { fields: [offset, length, bool("fua"), bool("noHole")], check: nonEmpty("trim or zero") },
  [MessageType.Zero]: { fields: [offset, length, bool("fua"), bool("noHole")], check: nonEmpty("trim or zero") },
  [MessageType.WriteAck]: { fields: [status] },
  [MessageType.Flush]: { fields: [] },
  [MessageType.FlushAck]: { fields: [status] },
  [MessageType.Nack]: { fields: [u8("corruptType", "corrupt type")] },
  [MessageType.ReadRequest]: { fields: [offset, length], check: nonEmpty("read") },
  [MessageType.ReadReply]: { fields: [status, data] },
  [MessageType.ResyncRequest]: { fields: [round, offset, length], check: nonEmpty("range") },
  [MessageType.ResyncData]: { fields: [round, offset, length, bool("zero"), status, data], check: resyncDataCheck },
  [MessageType.ResyncAck]: { fields: [round, offset, status] },
  [MessageType.ResyncFlush]: { fields: [round] },
  [MessageType.ResyncFlushAck]: { fields: [round, offset, status] },
  [MessageType.VerifyRequest]: { fields: [round, offset, length], check: nonEmpty("range") },
  [MessageType.VerifyReply]: { fields: [round, offset, status, u32("crc")] },
  [MessageType.RepairData]: { fields: [round, offset, length, bool("zero"), status, data], check: resyncDataCheck },
  [MessageType.RepairAck]: { fields: [status] },
};

function resyncDataCheck(message: Record<string, unknown>): void {
  const bytes = (message.data as Uint8Array).length;
  if (message.length === 0) throw new DecodeError("empty resync data");
  if (message.status === WireStatus.Ok && !message.zero && bytes !== message.length) throw new DecodeError(`resync data carries ${bytes} bytes for a ${message.length}-byte range`);
  if ((message.zero || message.status !== WireStatus.Ok) && bytes !== 0) throw new DecodeError("zero or failed resync data carries bytes");
}

/** Bytes a field takes in the fixed part of the payload (a `data` field takes none there). */
function fieldBytes(field: Field, value: unknown): number {
  switch (field.kind) {
    case "u8":
    case "bool":
    case "status":
    case "enum":
      return 1;
    case "u16":
      return 2;
    case "u32":
      return 4;
    case "u64":
    case "big64":
      return 8;
    case "text":
      return 2 + Math.min(textEncoder.encode(value as string).length, field.bytesMax);
    case "raw":
      return field.bytes;
    case "generations":
      return 17 + (value as Generations).history.length * 8;
    case "runs":
      return 4 + (value as BitRun[]).length * 16;
    case "payload":
      return (value as Uint8Array).length;
    case "data":
      return 0;
  }
}

function writeField(writer: FieldWriter, field: Field, value: unknown): void {
  switch (field.kind) {
    case "u8":
    case "status":
    case "enum":
      writer.u8(value as number);
      return;
    case "bool":
      writer.u8(value ? 1 : 0);
      return;
    case "u16":
      writer.u16(value as number);
      return;
    case "u32":
      writer.u32(value as number);
      return;
    case "u64":
      writer.u64(value as number);
      return;
    case "big64":
      writer.big64(value as bigint);
      return;
    case "text":
      writeText(writer, textEncoder.encode(value as string).subarray(0, field.bytesMax));
      return;
    case "raw":
      writer.raw(value as Uint8Array);
      return;
    case "generations": {
      const generations = value as Generations;
      writer.big64(generations.current).big64(generations.bitmapBase).u8(generations.history.length);
      for (const generation of generations.history) writer.big64(generation);
      return;
    }
    case "runs": {
      const runs = value as BitRun[];
      writer.u32(runs.length);
      for (const run of runs) writer.u64(run.start).u64(run.length);
      return;
    }
    case "payload": {
      const payload = value as Uint8Array;
      if (payload.length > field.bytesMax) throw new DecodeError(`${field.label} of ${payload.length} bytes`);
      writer.raw(payload);
      return;
    }
    case "data":
      return;
  }
}

function readField(reader: FieldReader, field: Field): unknown {
  switch (field.kind) {
    case "u8":
      return reader.u8(field.label);
    case "u16":
      return reader.u16(field.label);
    case "u32":
      return reader.u32(field.label);
    case "u64":
      return reader.u64(field.label);
    case "big64":
      return reader.big64(field.label);
    case "bool":
      return reader.bool(field.label);
    case "status":
      return wireStatus(reader.u8(field.label));
    case "enum": {
      const value = reader.u8(field.label);
      if (value > field.max) throw new DecodeError(`unknown ${field.label} ${value}`);
      return value;
    }
    case "text":
      return reader.text(field.bytesMax, field.label);
    case "raw":
      return reader.raw(field.bytes, field.label);
    case "generations": {
      const current = reader.big64("current generation");
      const bitmapBase = reader.big64("bitmap base");
      const historyLength = reader.u8("history length");
      if (historyLength > 16) throw new DecodeError(`history of ${historyLength} generations`);
      const history: bigint[] = [];
      for (let index = 0; index < historyLength; index++) history.push(reader.big64("history generation"));
      return { current, bitmapBase, history };
    }
    case "runs": {
      const count = reader.u32("run count");
      if (count * 16 !== reader.remaining) throw new DecodeError(`run count ${count} does not match the payload`);
      const runs: BitRun[] = [];
      for (let index = 0; index < count; index++) {
        const start = reader.u64("run start");
        const bits = reader.u64("run length");
        if (bits === 0 || start + bits > 2 ** 52) throw new DecodeError(`bit run ${start}+${bits} is empty or out of range`);
        runs.push({ start, length: bits });
      }
      return runs;
    }
    case "payload": {
      const payload = reader.rest();
      if (payload.length > field.bytesMax) throw new DecodeError(`${field.label} of ${payload.length} bytes`);
      return new Uint8Array(payload); // a copy (a received Buffer's slice would be a view of the chunk)
    }
    case "data":
      return reader.rest();
  }
}

/**
 * Encode one message as frame parts (header+fields, then the data payload if any). A tagged mode
 * sets the header's flag now (the session appends the tag, FrameSealer.seal).
 */
export function encodeMessage(message: Message, mode: FrameMode = plainFrames): Uint8Array[] {
  if (message.type === MessageType.Hello) return encodeHello(message);
  const layout = layouts[message.type];
  if (!layout) throw new DecodeError(`no layout for message type ${message.type}`);
  const values = message as unknown as Record<string, unknown>;
  let size = 0;
  for (const field of layout.fields) size += fieldBytes(field, values[field.name]);
  const writer = fields(size);
  let payload: Payload | undefined;
  for (const field of layout.fields) {
    if (field.kind === "data") payload = values[field.name] as Payload;
    else writeField(writer, field, values[field.name]);
  }
  return frame(message.type, message, size > 0 ? writer : undefined, payload, mode);
}

function encodeHello(message: HelloMessage): Uint8Array[] {
  const nodeId = textEncoder.encode(message.nodeId);
  const writer = fields(4 + clusterIdBytes + 2 + nodeId.length + 1 + message.nonce.length + 3 + message.admission.length)
    .u16(message.versionMin)
    .u16(message.versionMax)
    .raw(message.clusterId);
  writeText(writer, nodeId);
  writer.u8(message.nonce.length).raw(message.nonce);
  writer.u8(message.role).u8(message.flags).u8(message.admission.length).raw(message.admission);
  return frame(message.type, message, writer, undefined, plainFrames);
}

/** Concatenate frame parts (tests and transports without vectored writes). */
export function joinParts(parts: readonly Uint8Array[]): Uint8Array {
  let length = 0;
  for (const part of parts) length += part.length;
  const out = new Uint8Array(length);
  let offset = 0;
  for (const part of parts) {
    out.set(part, offset);
    offset += part.length;
  }
  return out;
}

/**
 * Decode the frame starting at `offset`: NEED_MORE until the whole frame is there, DecodeError when
 * the header is not a valid frame header or announces more than `frameBytesMax`.
 */
export function decodeFrame(bytes: Uint8Array, offset: number, frameBytesMax: number): { frame: Frame; size: number } | NeedMore {
  if (bytes.length - offset < frameHeaderBytes) return NEED_MORE;
  const magic = getUint32(bytes, offset);
  if (magic !== frameMagic) throw new DecodeError(`bad frame magic 0x${magic.toString(16)}`);
  const headerCrc = getUint32(bytes, offset + 28);
  if (crc32cRange(bytes, offset, offset + 28) !== headerCrc) throw new DecodeError("frame header checksum mismatch");
  const flags = bytes[offset + 5]!;
  if ((flags & ~FrameFlags.Tagged) !== 0 || getUint16(bytes, offset + 6) !== 0) throw new DecodeError("reserved frame header bits set");
  const payloadLength = getUint32(bytes, offset + 12);
  const tagLength = flags & FrameFlags.Tagged ? frameTagBytes : 0;
  if (payloadLength + frameHeaderBytes + tagLength > frameBytesMax) throw new DecodeError(`frame of ${payloadLength} payload bytes exceeds the ${frameBytesMax}-byte limit`);
  const high = getUint32(bytes, offset + 20);
  if (high >= 0x200000) throw new DecodeError("request id beyond 2^53");
  const size = frameHeaderBytes + payloadLength + tagLength;
  if (bytes.length - offset < size) return NEED_MORE;
  const payloadEnd = offset + frameHeaderBytes + payloadLength;
  const payload = bytes.subarray(offset + frameHeaderBytes, payloadEnd);
  return { frame: frameOf(bytes.subarray(offset, offset + frameHeaderBytes), payload, tagLength > 0 ? bytes.subarray(payloadEnd, payloadEnd + tagLength) : undefined), size };
}

/** A frame from its checked header, its payload and its tag (a tagged frame's payload is checked by opening it, auth.ts). */
function frameOf(header: Uint8Array, payload: Payload, tag: Uint8Array | undefined): Frame {
  return {
    type: header[4]!,
    volumeId: getUint32(header, 8),
    requestId: getUint32(header, 20) * 0x100000000 + getUint32(header, 16),
    payload,
    payloadIntact: tag !== undefined || payloadChecksum(payload, 0) === getUint32(header, 24),
    header,
    tag,
  };
}

/** Bytes of the whole frame whose header is at `offset` (header, payload, tag), read from the header alone. */
function frameSize(bytes: Uint8Array, offset: number): number {
  return frameHeaderBytes + getUint32(bytes, offset + 12) + (bytes[offset + 5]! & FrameFlags.Tagged ? frameTagBytes : 0);
}

const fixedFieldBytes: Partial<Record<Field["kind"], number>> = { u8: 1, u16: 2, u32: 4, u64: 8, big64: 8, bool: 1, status: 1, enum: 1 };

/** Bytes of a layout's fields before its data when data is last and every field before it has a fixed size; else undefined. */
function fieldBytesBeforeData(layout: Layout): number | undefined {
  const fields = layout.fields;
  if (fields.length === 0 || fields[fields.length - 1]!.kind !== "data") return undefined;
  let bytes = 0;
  for (const field of fields.slice(0, -1)) {
    const fixed = field.kind === "raw" ? field.bytes : fixedFieldBytes[field.kind];
    if (fixed === undefined) return undefined;
    bytes += fixed;
  }
  return bytes;
}

/** Decode a frame's payload into a message. The payload must be intact (checked by the caller). */
export function decodeMessage(frame: Frame): Message {
  if (frame.type === MessageType.Hello) return decodeHello(frame);
  const layout = layouts[frame.type as MessageType];
  if (!layout) throw new DecodeError(`unknown message type ${frame.type}`);
  let payload = frame.payload;
  // Data that arrived in pieces stays in them (a large frame); the fields before it are read from
  // the first piece, which the framer makes hold them. Any other layout is joined first.
  let restOfData: readonly Uint8Array[] | undefined;
  if (payload instanceof Pieces) {
    const before = fieldBytesBeforeData(layout);
    if (before !== undefined && payload.parts[0]!.length >= before) {
      restOfData = payload.parts.slice(1);
      payload = payload.parts[0]!;
    } else {
      payload = joinPayload(payload);
    }
  }
  const reader = new FieldReader(payload);
  const message: Record<string, unknown> = { type: frame.type, volumeId: frame.volumeId, requestId: frame.requestId };
  for (const field of layout.fields) {
    if (field.kind === "data" && restOfData) message[field.name] = payloadOf([reader.rest(), ...restOfData]);
    else message[field.name] = readField(reader, field);
  }
  reader.end(`message type ${frame.type}`);
  layout.check?.(message);
  return message as unknown as Message;
}

function decodeHello(frame: Frame): HelloMessage {
  const base = { volumeId: frame.volumeId, requestId: frame.requestId };
  const reader = new FieldReader(joinPayload(frame.payload));
  const type = MessageType.Hello as const;
  const versionMin = reader.u16("versionMin");
  const versionMax = reader.u16("versionMax");
  const clusterId = reader.raw(clusterIdBytes, "cluster id");
  const nodeId = reader.text(nodeIdBytesMax, "node id");
  const nonceLength = reader.u8("nonce length");
  if (nonceLength < 16) throw new DecodeError(`nonce of ${nonceLength} bytes is too short`);
  const nonce = reader.raw(nonceLength, "nonce");
  if (versionMin === 0 || versionMin > versionMax) throw new DecodeError(`bad version range ${versionMin}..${versionMax}`);
  // A version-1 Hello ends here; say so plainly rather than "payload too short".
  if (versionMax < 2 && reader.offset === frame.payload.length) throw new DecodeError(`a protocol ${versionMin}..${versionMax} Hello; this node speaks ${protocolVersionMin}..${protocolVersionMax} (upgrade the peer)`);
  const role = reader.u8("role");
  if (role !== LinkRole.Dialer && role !== LinkRole.Acceptor) throw new DecodeError(`unknown link role ${role}`);
  const flags = reader.u8("flags");
  const admissionLength = reader.u8("admission length");
  if (admissionLength > admissionBytesMax) throw new DecodeError(`admission tag of ${admissionLength} bytes`);
  const admission = reader.raw(admissionLength, "admission tag");
  // A Hello may grow in later versions: trailing bytes are the newer peer's, and ignored.
  return { type, ...base, versionMin, versionMax, clusterId, nodeId, nonce, role: role as LinkRole, flags, admission };
}

/** A large frame's payload is left in pieces; this many bytes at its start are copied into the first, so its fields read from one buffer. */
const piecesLeadingBytes = 256;

/**
 * Reassembles frames from a byte stream chunked any way at all. Chunks handed to `push` become the
 * framer's: a frame that lies inside one chunk is returned as a view of it (no copy); one that
 * spans chunks is assembled into a new buffer once, or, from `piecesBytesMin` bytes (a 1 MiB
 * write, a resync chunk), returned with its payload as Pieces: views of the chunks, the payload's
 * first bytes copied to join the header's chunk.
 */
export class Framer {
  private chunks: Uint8Array[] = [];
  private buffered = 0;
  /** Offset of the first unread byte in chunks[0]. */
  private head = 0;

  constructor(
    private frameBytesMax: number,
    private readonly piecesBytesMin = Infinity,
  ) {}

  /** Raise or lower the frame size limit (a link allows large frames only once authenticated). */
  setFrameBytesMax(value: number): void {
    this.frameBytesMax = value;
  }

  get bufferedBytes(): number {
    return this.buffered;
  }

  push(chunk: Uint8Array): void {
    if (chunk.length === 0) return;
    this.chunks.push(chunk);
    this.buffered += chunk.length;
  }

  /** The next complete frame, or undefined when more bytes are needed. Throws DecodeError. */
  next(): Frame | undefined {
    if (this.buffered < frameHeaderBytes) return undefined;
    let first = this.chunks[0]!;
    if (first.length - this.head < frameHeaderBytes) {
      this.coalesce(frameHeaderBytes);
      first = this.chunks[0]!;
    }
    let result = decodeFrame(first, this.head, this.frameBytesMax);
    if (result === NEED_MORE) {
      const size = frameSize(first, this.head);
      if (this.buffered < size) return undefined;
      if (size >= this.piecesBytesMin) return this.takePieces(size);
      this.coalesce(size);
      first = this.chunks[0]!;
      result = decodeFrame(first, this.head, this.frameBytesMax);
      if (result === NEED_MORE) throw new DecodeError("framer lost track of a frame"); // cannot happen: the bytes are all there
    }
    this.head += result.size;
    this.buffered -= result.size;
    if (this.head === first.length) {
      this.chunks.shift();
      this.head = 0;
    }
    return result.frame;
  }

  /** The whole frame of `size` bytes at the front (its header checked), spanning chunks, with its payload as views of them. */
  private takePieces(size: number): Frame {
    const tagLength = this.chunks[0]![this.head + 5]! & FrameFlags.Tagged ? frameTagBytes : 0;
    const payloadLength = size - frameHeaderBytes - tagLength;
    const leading = frameHeaderBytes + Math.min(payloadLength, piecesLeadingBytes);
    if (this.chunks[0]!.length - this.head < leading) this.coalesce(leading);
    const [header] = this.takeViews(frameHeaderBytes);
    const parts = this.takeViews(payloadLength);
    const tagParts = this.takeViews(tagLength);
    this.buffered -= size;
    return frameOf(header!, payloadOf(parts), tagLength === 0 ? undefined : joinPayload(payloadOf(tagParts)));
  }

  /** Views of the next `bytes` unread bytes, consumed. */
  private takeViews(bytes: number): Uint8Array[] {
    const views: Uint8Array[] = [];
    while (bytes > 0) {
      const chunk = this.chunks[0]!;
      const take = Math.min(bytes, chunk.length - this.head);
      views.push(chunk.subarray(this.head, this.head + take));
      this.head += take;
      bytes -= take;
      if (this.head === chunk.length) {
        this.chunks.shift();
        this.head = 0;
      }
    }
    return views;
  }

  /** Move the first `size` unread bytes into one new chunk at the front (every byte copied over at once). */
  private coalesce(size: number): void {
    const joined = bufferToFill(size);
    let filled = 0;
    while (filled < size) {
      const chunk = this.chunks[0]!;
      const take = Math.min(chunk.length - this.head, size - filled);
      joined.set(chunk.subarray(this.head, this.head + take), filled);
      filled += take;
      if (this.head + take === chunk.length) {
        this.chunks.shift();
        this.head = 0;
      } else {
        this.head += take;
      }
    }
    if (this.head > 0) {
      this.chunks[0] = this.chunks[0]!.subarray(this.head);
      this.head = 0;
    }
    this.chunks.unshift(joined);
  }
}

/** The highest version both ranges contain, or undefined when they do not overlap. */
export function negotiateVersion(localMin: number, localMax: number, peerMin: number, peerMax: number): number | undefined {
  const version = Math.min(localMax, peerMax);
  return version >= Math.max(localMin, peerMin) ? version : undefined;
}
