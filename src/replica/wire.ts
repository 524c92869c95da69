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
// Frame header, 32 bytes, little endian:
//   0 u32 magic "TDM1"   4 u8 type   5 u8 flags   6 u16 reserved (0)   8 u32 volume id
//  12 u32 payload length 16 u64 request id            24 u32 payload CRC32C  28 u32 header CRC32C
// then the payload, then (flags & Tagged) a 16-byte tag over header and payload.
import { checksum } from "./checksum.ts";
import { type BitRun, DataState, DecisionKind, type Generations } from "./model.ts";

export const frameMagic = 0x314d4454; // "TDM1" read as little endian
export const frameHeaderBytes = 32;
/** Bytes of the tag an authenticated frame carries after its payload (AES-256-GCM's tag). */
export const frameTagBytes = 16;

/** Bits of the frame header's flags byte. */
export const enum FrameFlags {
  /** A tag of frameTagBytes follows the payload (every frame after the handshake). */
  Tagged = 1,
}

/** The protocol versions this build speaks. A newer node offers a wider range and both pick the
 * highest common version (see negotiateVersion); messages added later are only sent when agreed.
 * Version 1 had a handshake that could be reflected (each side proved itself to anyone who sent a
 * Hello) and unauthenticated frames: it is not spoken any more, so a version-1 node is refused. */
export const protocolVersionMin = 2;
export const protocolVersionMax = 2;

/** Largest control-plane payload (PeerRequest / PeerReply) between the daemons. */
export const peerPayloadBytesMax = 1024 * 1024;

export const NEED_MORE = Symbol("need more bytes");
export type NeedMore = typeof NEED_MORE;

export class DecodeError extends Error {
  override name = "DecodeError";
}

export const enum MessageType {
  // Link: authentication and liveness.
  Hello = 1,
  Auth = 2,
  Ping = 3,
  Pong = 4,
  Goodbye = 5,
  /** Control plane between the daemons (create a replica, describe volumes): opaque payloads. */
  PeerRequest = 8,
  PeerReply = 9,
  // Volume negotiation and resync control.
  VolumeHello = 16,
  VolumeDecision = 17,
  VolumeUnknown = 18,
  VolumeClosed = 19,
  BitmapRuns = 20,
  BitmapDone = 21,
  ResyncReady = 22,
  ResyncProgress = 23,
  ResyncComplete = 24,
  ResyncCompleteAck = 25,
  SplitBrainResolve = 26,
  // The mirrored data path.
  Write = 32,
  Trim = 33,
  Zero = 34,
  WriteAck = 35,
  Flush = 36,
  FlushAck = 37,
  Nack = 38,
  ReadRequest = 39,
  ReadReply = 40,
  // Resync data.
  ResyncRequest = 48,
  ResyncData = 49,
  ResyncAck = 50,
  ResyncFlush = 51,
  ResyncFlushAck = 52,
  // Online verify.
  VerifyRequest = 56,
  VerifyReply = 57,
  RepairData = 58,
  RepairAck = 59,
}

/** Outcome codes carried by acks; anything but Ok means the operation failed on the sender's side. */
export const enum WireStatus {
  Ok = 0,
  IoError = 1,
  NoSpace = 2,
  Refused = 3,
}





interface Base {
  volumeId: number;
  requestId: number;
}

/** Which end of the link a Hello comes from (the dial/accept role is fixed by configuration). */
export const enum LinkRole {
  Dialer = 1,
  Acceptor = 2,
}

/** Bits of a Hello's flags byte. */
export const enum HelloFlags {
  /** The sender asks for frames without tags (benchmarks only; both Hellos must carry it). */
  UntaggedFrames = 1,
}

export interface HelloMessage extends Base {
  type: MessageType.Hello;
  versionMin: number;
  versionMax: number;
  clusterId: Uint8Array;
  nodeId: string;
  nonce: Uint8Array;
  role: LinkRole;
  flags: number;
  /** The dialer's admission tag over the fields above (auth.ts); empty in the acceptor's Hello. */
  admission: Uint8Array;
}
export interface AuthMessage extends Base {
  type: MessageType.Auth;
  mac: Uint8Array;
}
export interface PingMessage extends Base {
  type: MessageType.Ping | MessageType.Pong;
}
export interface GoodbyeMessage extends Base {
  type: MessageType.Goodbye;
  reason: string;
}
export interface PeerRequestMessage extends Base {
  type: MessageType.PeerRequest;
  payload: Uint8Array;
}
export interface PeerReplyMessage extends Base {
  type: MessageType.PeerReply;
  /** False: the receiving daemon could not handle the request (no handler); payload says why. */
  ok: boolean;
  payload: Uint8Array;
}
export interface VolumeHelloMessage extends Base {
  type: MessageType.VolumeHello;
  seq: number;
  sizeBytes: number;
  granuleBytes: number;
  generations: Generations;
  dataState: DataState;
  mayWrite: boolean;
  bitsSet: number;
  /** The sender asks the deciding node for a new decision (false: it only reports its new state). */
  redecide: boolean;
}
export interface VolumeDecisionMessage extends Base {
  type: MessageType.VolumeDecision;
  /** The follower hello the decision answers; a follower that has sent a newer one ignores it. */
  followerHelloSeq: number;
  round: number;
  kind: DecisionKind;
  /** Resync: whether the decider (sender) is the source. */
  deciderIsSource: boolean;
  /** Resync: whether the decider drives the chunks (holds the range locks). */
  deciderLeads: boolean;
  full: boolean;
  /** The verdict applies an operator's split-brain resolution. */
  byOperator: boolean;
  reason: string;
}
export interface EmptyVolumeMessage extends Base {
  type: MessageType.VolumeUnknown | MessageType.VolumeClosed | MessageType.Flush;
}
export interface BitmapRunsMessage extends Base {
  type: MessageType.BitmapRuns | MessageType.ResyncProgress;
  round: number;
  runs: BitRun[];
}
export interface RoundMessage extends Base {
  type: MessageType.BitmapDone | MessageType.ResyncReady | MessageType.ResyncFlush;
  round: number;
}
export interface ResyncCompleteMessage extends Base {
  type: MessageType.ResyncComplete | MessageType.ResyncCompleteAck;
  round: number;
  /** The source's current generation, which the target adopts. */
  sourceCurrent: bigint;
}
export interface SplitBrainResolveMessage extends Base {
  type: MessageType.SplitBrainResolve;
  /** True when the sender keeps its data and the receiver's changes are discarded. */
  senderKeeps: boolean;
}
export interface WriteMessage extends Base {
  type: MessageType.Write;
  offset: number;
  fua: boolean;
  data: Uint8Array;
}
export interface TrimMessage extends Base {
  type: MessageType.Trim | MessageType.Zero;
  offset: number;
  length: number;
  fua: boolean;
  noHole: boolean;
}
export interface StatusMessage extends Base {
  type: MessageType.WriteAck | MessageType.FlushAck | MessageType.RepairAck;
  status: WireStatus;
}
export interface NackMessage extends Base {
  type: MessageType.Nack;
  /** Type of the frame whose payload failed its checksum. */
  corruptType: number;
}
export interface ReadRequestMessage extends Base {
  type: MessageType.ReadRequest;
  offset: number;
  length: number;
}
export interface ReadReplyMessage extends Base {
  type: MessageType.ReadReply;
  status: WireStatus;
  data: Uint8Array;
}
export interface ResyncRequestMessage extends Base {
  type: MessageType.ResyncRequest | MessageType.VerifyRequest;
  round: number;
  offset: number;
  length: number;
}
export interface ResyncDataMessage extends Base {
  type: MessageType.ResyncData | MessageType.RepairData;
  round: number;
  offset: number;
  /** Length of the range; when `zero` is set the range reads as zeroes and `data` is empty. */
  length: number;
  zero: boolean;
  status: WireStatus;
  data: Uint8Array;
}
export interface ResyncAckMessage extends Base {
  type: MessageType.ResyncAck | MessageType.ResyncFlushAck;
  round: number;
  offset: number;
  status: WireStatus;
}
export interface VerifyReplyMessage extends Base {
  type: MessageType.VerifyReply;
  round: number;
  offset: number;
  status: WireStatus;
  crc: number;
}

export type Message =
  | HelloMessage
  | AuthMessage
  | PingMessage
  | GoodbyeMessage
  | PeerRequestMessage
  | PeerReplyMessage
  | VolumeHelloMessage
  | VolumeDecisionMessage
  | EmptyVolumeMessage
  | BitmapRunsMessage
  | RoundMessage
  | ResyncCompleteMessage
  | SplitBrainResolveMessage
  | WriteMessage
  | TrimMessage
  | StatusMessage
  | NackMessage
  | ReadRequestMessage
  | ReadReplyMessage
  | ResyncRequestMessage
  | ResyncDataMessage
  | ResyncAckMessage
  | VerifyReplyMessage;

/** A frame whose header checked out; `payloadIntact` is false when the payload failed its CRC. */
export interface Frame {
  type: number;
  volumeId: number;
  requestId: number;
  payload: Uint8Array;
  payloadIntact: boolean;
  /** The 32 header bytes as received (what a tag covers, with the payload). */
  header: Uint8Array;
  /** The tag after the payload when the frame is flagged Tagged. */
  tag: Uint8Array | undefined;
}

export const nodeIdBytesMax = 64;
export const clusterIdBytes = 16;
export const macBytes = 32;
/** Largest admission tag a Hello may carry (HMAC-SHA256 is 32 bytes). */
const admissionBytesMax = 64;
const textEncoder = new TextEncoder();
const textDecoder = new TextDecoder("utf-8", { fatal: true });
const reasonBytesMax = 512;

// ---- field writer and reader ----

class FieldWriter {
  readonly bytes: Uint8Array;
  private readonly view: DataView;
  offset: number;
  constructor(length: number, start: number) {
    this.bytes = new Uint8Array(length);
    this.view = new DataView(this.bytes.buffer);
    this.offset = start;
  }
  u8(value: number): this {
    this.view.setUint8(this.offset, value);
    this.offset += 1;
    return this;
  }
  u16(value: number): this {
    this.view.setUint16(this.offset, value, true);
    this.offset += 2;
    return this;
  }
  u32(value: number): this {
    this.view.setUint32(this.offset, value >>> 0, true);
    this.offset += 4;
    return this;
  }
  u64(value: number): this {
    this.view.setUint32(this.offset, value % 0x100000000, true);
    this.view.setUint32(this.offset + 4, Math.floor(value / 0x100000000), true);
    this.offset += 8;
    return this;
  }
  big64(value: bigint): this {
    this.view.setBigUint64(this.offset, value, true);
    this.offset += 8;
    return this;
  }
  raw(value: Uint8Array): this {
    this.bytes.set(value, this.offset);
    this.offset += value.length;
    return this;
  }
}

class FieldReader {
  private readonly view: DataView;
  offset = 0;
  constructor(private readonly bytes: Uint8Array) {
    this.view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  }
  private need(count: number, what: string): void {
    if (this.offset + count > this.bytes.length) throw new DecodeError(`payload too short for ${what}`);
  }
  u8(what: string): number {
    this.need(1, what);
    return this.view.getUint8(this.offset++);
  }
  u16(what: string): number {
    this.need(2, what);
    const value = this.view.getUint16(this.offset, true);
    this.offset += 2;
    return value;
  }
  u32(what: string): number {
    this.need(4, what);
    const value = this.view.getUint32(this.offset, true);
    this.offset += 4;
    return value;
  }
  u64(what: string): number {
    this.need(8, what);
    const low = this.view.getUint32(this.offset, true);
    const high = this.view.getUint32(this.offset + 4, true);
    this.offset += 8;
    if (high >= 0x200000) throw new DecodeError(`${what} is beyond 2^53`);
    return high * 0x100000000 + low;
  }
  big64(what: string): bigint {
    this.need(8, what);
    const value = this.view.getBigUint64(this.offset, true);
    this.offset += 8;
    return value;
  }
  bool(what: string): boolean {
    const value = this.u8(what);
    if (value > 1) throw new DecodeError(`${what} must be 0 or 1, got ${value}`);
    return value === 1;
  }
  raw(count: number, what: string): Uint8Array {
    this.need(count, what);
    const value = this.bytes.subarray(this.offset, this.offset + count);
    this.offset += count;
    return value;
  }
  rest(): Uint8Array {
    const value = this.bytes.subarray(this.offset);
    this.offset = this.bytes.length;
    return value;
  }
  text(maxBytes: number, what: string): string {
    const length = this.u16(`${what} length`);
    if (length > maxBytes) throw new DecodeError(`${what} is ${length} bytes, more than ${maxBytes}`);
    try {
      return textDecoder.decode(this.raw(length, what));
    } catch (error) {
      if (error instanceof DecodeError) throw error;
      throw new DecodeError(`${what} is not valid UTF-8`);
    }
  }
  end(what: string): void {
    if (this.offset !== this.bytes.length) throw new DecodeError(`${this.bytes.length - this.offset} trailing bytes after ${what}`);
  }
}

function writeText(writer: FieldWriter, encoded: Uint8Array): void {
  writer.u16(encoded.length).raw(encoded);
}

function wireStatus(value: number): WireStatus {
  if (value > WireStatus.Refused) throw new DecodeError(`unknown status ${value}`);
  return value as WireStatus;
}

// ---- frames ----

function finishHeader(bytes: Uint8Array, type: number, volumeId: number, requestId: number, payloadLength: number, payloadCrc: number): void {
  const view = new DataView(bytes.buffer, bytes.byteOffset, frameHeaderBytes);
  view.setUint32(0, frameMagic, true);
  view.setUint8(4, type);
  view.setUint8(5, 0);
  view.setUint16(6, 0, true);
  view.setUint32(8, volumeId >>> 0, true);
  view.setUint32(12, payloadLength, true);
  view.setUint32(16, requestId % 0x100000000, true);
  view.setUint32(20, Math.floor(requestId / 0x100000000), true);
  view.setUint32(24, payloadCrc, true);
  view.setUint32(28, checksum(bytes.subarray(0, 28)), true);
}

/**
 * A frame as parts for a vectored send: header and fixed fields in one new buffer, then `data`
 * untouched (it is not copied; the caller keeps it alive and unchanged until sent).
 */
function frame(type: MessageType, base: Base, fields: FieldWriter | undefined, data?: Uint8Array): Uint8Array[] {
  const head = fields ?? new FieldWriter(frameHeaderBytes, frameHeaderBytes);
  const fieldBytes = head.bytes.subarray(frameHeaderBytes, head.offset);
  let crc = checksum(fieldBytes);
  if (data && data.length > 0) crc = checksum(data, crc);
  const payloadLength = fieldBytes.length + (data?.length ?? 0);
  finishHeader(head.bytes, type, base.volumeId, base.requestId, payloadLength, crc);
  const headBytes = head.bytes.subarray(0, head.offset);
  return data && data.length > 0 ? [headBytes, data] : [headBytes];
}

/**
 * Flag the frame whose header starts `head` (the first part encodeMessage returned) as carrying a
 * tag, and recompute its header CRC. The caller appends the tag as the frame's last part.
 */
export function markFrameTagged(head: Uint8Array): void {
  const view = new DataView(head.buffer, head.byteOffset, frameHeaderBytes);
  view.setUint8(5, view.getUint8(5) | FrameFlags.Tagged);
  view.setUint32(28, checksum(head.subarray(0, 28)), true);
}

function fields(length: number): FieldWriter {
  return new FieldWriter(frameHeaderBytes + length, frameHeaderBytes);
}

function encodeRuns(writer: FieldWriter, round: number, runs: BitRun[]): void {
  writer.u32(round).u32(runs.length);
  for (const run of runs) writer.u64(run.start).u64(run.length);
}

/** Encode one message as frame parts (header+fields, then the data payload if any). */
export function encodeMessage(message: Message): Uint8Array[] {
  switch (message.type) {
    case MessageType.Hello: {
      const nodeId = textEncoder.encode(message.nodeId);
      const writer = fields(4 + clusterIdBytes + 2 + nodeId.length + 1 + message.nonce.length + 3 + message.admission.length)
        .u16(message.versionMin)
        .u16(message.versionMax)
        .raw(message.clusterId);
      writeText(writer, nodeId);
      writer.u8(message.nonce.length).raw(message.nonce);
      writer.u8(message.role).u8(message.flags).u8(message.admission.length).raw(message.admission);
      return frame(message.type, message, writer);
    }
    case MessageType.Auth:
      return frame(message.type, message, fields(macBytes).raw(message.mac));
    case MessageType.Ping:
    case MessageType.Pong:
    case MessageType.VolumeUnknown:
    case MessageType.VolumeClosed:
    case MessageType.Flush:
      return frame(message.type, message, undefined);
    case MessageType.PeerRequest:
      if (message.payload.length > peerPayloadBytesMax) throw new DecodeError(`peer request of ${message.payload.length} bytes`);
      return frame(message.type, message, fields(message.payload.length).raw(message.payload));
    case MessageType.PeerReply:
      if (message.payload.length > peerPayloadBytesMax) throw new DecodeError(`peer reply of ${message.payload.length} bytes`);
      return frame(message.type, message, fields(1 + message.payload.length).u8(message.ok ? 1 : 0).raw(message.payload));
    case MessageType.Goodbye: {
      const reason = textEncoder.encode(message.reason).subarray(0, reasonBytesMax);
      const writer = fields(2 + reason.length);
      writeText(writer, reason);
      return frame(message.type, message, writer);
    }
    case MessageType.VolumeHello: {
      const history = message.generations.history;
      const writer = fields(4 + 8 + 4 + 8 + 8 + 1 + history.length * 8 + 1 + 1 + 8 + 1)
        .u32(message.seq)
        .u64(message.sizeBytes)
        .u32(message.granuleBytes)
        .big64(message.generations.current)
        .big64(message.generations.bitmapBase)
        .u8(history.length);
      for (const generation of history) writer.big64(generation);
      writer.u8(message.dataState).u8(message.mayWrite ? 1 : 0).u64(message.bitsSet).u8(message.redecide ? 1 : 0);
      return frame(message.type, message, writer);
    }
    case MessageType.VolumeDecision: {
      const reason = textEncoder.encode(message.reason).subarray(0, reasonBytesMax);
      const writer = fields(4 + 4 + 1 + 1 + 1 + 1 + 1 + 2 + reason.length)
        .u32(message.followerHelloSeq)
        .u32(message.round)
        .u8(message.kind)
        .u8(message.deciderIsSource ? 1 : 0)
        .u8(message.deciderLeads ? 1 : 0)
        .u8(message.full ? 1 : 0)
        .u8(message.byOperator ? 1 : 0);
      writeText(writer, reason);
      return frame(message.type, message, writer);
    }
    case MessageType.BitmapRuns:
    case MessageType.ResyncProgress: {
      const writer = fields(8 + message.runs.length * 16);
      encodeRuns(writer, message.round, message.runs);
      return frame(message.type, message, writer);
    }
    case MessageType.BitmapDone:
    case MessageType.ResyncReady:
    case MessageType.ResyncFlush:
      return frame(message.type, message, fields(4).u32(message.round));
    case MessageType.ResyncComplete:
    case MessageType.ResyncCompleteAck:
      return frame(message.type, message, fields(12).u32(message.round).big64(message.sourceCurrent));
    case MessageType.SplitBrainResolve:
      return frame(message.type, message, fields(1).u8(message.senderKeeps ? 1 : 0));
    case MessageType.Write:
      return frame(message.type, message, fields(9).u64(message.offset).u8(message.fua ? 1 : 0), message.data);
    case MessageType.Trim:
    case MessageType.Zero:
      return frame(
        message.type,
        message,
        fields(14).u64(message.offset).u32(message.length).u8(message.fua ? 1 : 0).u8(message.noHole ? 1 : 0),
      );
    case MessageType.WriteAck:
    case MessageType.FlushAck:
    case MessageType.RepairAck:
      return frame(message.type, message, fields(1).u8(message.status));
    case MessageType.Nack:
      return frame(message.type, message, fields(1).u8(message.corruptType));
    case MessageType.ReadRequest:
      return frame(message.type, message, fields(12).u64(message.offset).u32(message.length));
    case MessageType.ReadReply:
      return frame(message.type, message, fields(1).u8(message.status), message.data);
    case MessageType.ResyncRequest:
    case MessageType.VerifyRequest:
      return frame(message.type, message, fields(16).u32(message.round).u64(message.offset).u32(message.length));
    case MessageType.ResyncData:
    case MessageType.RepairData:
      return frame(
        message.type,
        message,
        fields(18).u32(message.round).u64(message.offset).u32(message.length).u8(message.zero ? 1 : 0).u8(message.status),
        message.data,
      );
    case MessageType.ResyncAck:
    case MessageType.ResyncFlushAck:
      return frame(message.type, message, fields(13).u32(message.round).u64(message.offset).u8(message.status));
    case MessageType.VerifyReply:
      return frame(message.type, message, fields(17).u32(message.round).u64(message.offset).u8(message.status).u32(message.crc));
  }
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
  const view = new DataView(bytes.buffer, bytes.byteOffset + offset, frameHeaderBytes);
  const magic = view.getUint32(0, true);
  if (magic !== frameMagic) throw new DecodeError(`bad frame magic 0x${magic.toString(16)}`);
  const headerCrc = view.getUint32(28, true);
  if (checksum(bytes.subarray(offset, offset + 28)) !== headerCrc) throw new DecodeError("frame header checksum mismatch");
  const flags = view.getUint8(5);
  if ((flags & ~FrameFlags.Tagged) !== 0 || view.getUint16(6, true) !== 0) throw new DecodeError("reserved frame header bits set");
  const payloadLength = view.getUint32(12, true);
  const tagLength = flags & FrameFlags.Tagged ? frameTagBytes : 0;
  if (payloadLength + frameHeaderBytes + tagLength > frameBytesMax) throw new DecodeError(`frame of ${payloadLength} payload bytes exceeds the ${frameBytesMax}-byte limit`);
  const high = view.getUint32(20, true);
  if (high >= 0x200000) throw new DecodeError("request id beyond 2^53");
  const size = frameHeaderBytes + payloadLength + tagLength;
  if (bytes.length - offset < size) return NEED_MORE;
  const payloadEnd = offset + frameHeaderBytes + payloadLength;
  const payload = bytes.subarray(offset + frameHeaderBytes, payloadEnd);
  return {
    frame: {
      type: view.getUint8(4),
      volumeId: view.getUint32(8, true),
      requestId: high * 0x100000000 + view.getUint32(16, true),
      payload,
      payloadIntact: checksum(payload) === view.getUint32(24, true),
      header: bytes.subarray(offset, offset + frameHeaderBytes),
      tag: tagLength > 0 ? bytes.subarray(payloadEnd, payloadEnd + tagLength) : undefined,
    },
    size,
  };
}

/** Bytes of the whole frame whose header is at `offset` (header, payload, tag), read from the header alone. */
function frameSize(bytes: Uint8Array, offset: number): number {
  const view = new DataView(bytes.buffer, bytes.byteOffset + offset, frameHeaderBytes);
  return frameHeaderBytes + view.getUint32(12, true) + (view.getUint8(5) & FrameFlags.Tagged ? frameTagBytes : 0);
}

function decodeRuns(reader: FieldReader, bitsMax: number): { round: number; runs: BitRun[] } {
  const round = reader.u32("round");
  const count = reader.u32("run count");
  if (count * 16 !== reader.rest().length) throw new DecodeError(`run count ${count} does not match the payload`);
  reader.offset -= count * 16;
  const runs: BitRun[] = [];
  for (let index = 0; index < count; index++) {
    const start = reader.u64("run start");
    const length = reader.u64("run length");
    if (length === 0 || start + length > bitsMax) throw new DecodeError(`bit run ${start}+${length} is empty or out of range`);
    runs.push({ start, length });
  }
  return { round, runs };
}

/** Decode a frame's payload into a message. The payload must be intact (checked by the caller). */
export function decodeMessage(frame: Frame): Message {
  const base = { volumeId: frame.volumeId, requestId: frame.requestId };
  const reader = new FieldReader(frame.payload);
  const type = frame.type;
  switch (type) {
    case MessageType.Hello: {
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
    case MessageType.Auth: {
      const mac = reader.raw(macBytes, "mac");
      reader.end("Auth");
      return { type, ...base, mac };
    }
    case MessageType.Ping:
    case MessageType.Pong:
      reader.end("Ping");
      return { type, ...base };
    case MessageType.VolumeUnknown:
    case MessageType.VolumeClosed:
    case MessageType.Flush:
      reader.end("message");
      return { type, ...base };
    case MessageType.PeerRequest: {
      const payload = reader.rest();
      if (payload.length > peerPayloadBytesMax) throw new DecodeError(`peer request of ${payload.length} bytes`);
      return { type, ...base, payload: payload.slice() };
    }
    case MessageType.PeerReply: {
      const ok = reader.bool("ok");
      const payload = reader.rest();
      if (payload.length > peerPayloadBytesMax) throw new DecodeError(`peer reply of ${payload.length} bytes`);
      return { type, ...base, ok, payload: payload.slice() };
    }
    case MessageType.Goodbye: {
      const reason = reader.text(reasonBytesMax, "reason");
      reader.end("Goodbye");
      return { type, ...base, reason };
    }
    case MessageType.VolumeHello: {
      const seq = reader.u32("seq");
      const sizeBytes = reader.u64("size");
      const granuleBytes = reader.u32("granule");
      const current = reader.big64("current generation");
      const bitmapBase = reader.big64("bitmap base");
      const historyLength = reader.u8("history length");
      if (historyLength > 16) throw new DecodeError(`history of ${historyLength} generations`);
      const history: bigint[] = [];
      for (let index = 0; index < historyLength; index++) history.push(reader.big64("history generation"));
      const dataState = reader.u8("data state");
      if (dataState > DataState.Inconsistent) throw new DecodeError(`unknown data state ${dataState}`);
      const mayWrite = reader.bool("mayWrite");
      const bitsSet = reader.u64("bits set");
      const redecide = reader.bool("redecide");
      reader.end("VolumeHello");
      return { type, ...base, seq, sizeBytes, granuleBytes, generations: { current, bitmapBase, history }, dataState, mayWrite, bitsSet, redecide };
    }
    case MessageType.VolumeDecision: {
      const followerHelloSeq = reader.u32("follower hello seq");
      const round = reader.u32("round");
      const kind = reader.u8("kind");
      if (kind > DecisionKind.PrimaryWouldBeTarget) throw new DecodeError(`unknown decision ${kind}`);
      const deciderIsSource = reader.bool("deciderIsSource");
      const deciderLeads = reader.bool("deciderLeads");
      const full = reader.bool("full");
      const byOperator = reader.bool("byOperator");
      const reason = reader.text(reasonBytesMax, "reason");
      reader.end("VolumeDecision");
      return { type, ...base, followerHelloSeq, round, kind, deciderIsSource, deciderLeads, full, byOperator, reason };
    }
    case MessageType.BitmapRuns:
    case MessageType.ResyncProgress: {
      const { round, runs } = decodeRuns(reader, 2 ** 52);
      return { type, ...base, round, runs };
    }
    case MessageType.BitmapDone:
    case MessageType.ResyncReady:
    case MessageType.ResyncFlush: {
      const round = reader.u32("round");
      reader.end("message");
      return { type, ...base, round };
    }
    case MessageType.ResyncComplete:
    case MessageType.ResyncCompleteAck: {
      const round = reader.u32("round");
      const sourceCurrent = reader.big64("source generation");
      reader.end("ResyncComplete");
      return { type, ...base, round, sourceCurrent };
    }
    case MessageType.SplitBrainResolve: {
      const senderKeeps = reader.bool("senderKeeps");
      reader.end("SplitBrainResolve");
      return { type, ...base, senderKeeps };
    }
    case MessageType.Write: {
      const offset = reader.u64("offset");
      const fua = reader.bool("fua");
      const data = reader.rest();
      if (data.length === 0) throw new DecodeError("empty write");
      return { type, ...base, offset, fua, data };
    }
    case MessageType.Trim:
    case MessageType.Zero: {
      const offset = reader.u64("offset");
      const length = reader.u32("length");
      const fua = reader.bool("fua");
      const noHole = reader.bool("noHole");
      reader.end("Trim");
      if (length === 0) throw new DecodeError("empty trim or zero");
      return { type, ...base, offset, length, fua, noHole };
    }
    case MessageType.WriteAck:
    case MessageType.FlushAck:
    case MessageType.RepairAck: {
      const status = wireStatus(reader.u8("status"));
      reader.end("ack");
      return { type, ...base, status };
    }
    case MessageType.Nack: {
      const corruptType = reader.u8("corrupt type");
      reader.end("Nack");
      return { type, ...base, corruptType };
    }
    case MessageType.ReadRequest: {
      const offset = reader.u64("offset");
      const length = reader.u32("length");
      reader.end("ReadRequest");
      if (length === 0) throw new DecodeError("empty read");
      return { type, ...base, offset, length };
    }
    case MessageType.ReadReply: {
      const status = wireStatus(reader.u8("status"));
      return { type, ...base, status, data: reader.rest() };
    }
    case MessageType.ResyncRequest:
    case MessageType.VerifyRequest: {
      const round = reader.u32("round");
      const offset = reader.u64("offset");
      const length = reader.u32("length");
      reader.end("request");
      if (length === 0) throw new DecodeError("empty range");
      return { type, ...base, round, offset, length };
    }
    case MessageType.ResyncData:
    case MessageType.RepairData: {
      const round = reader.u32("round");
      const offset = reader.u64("offset");
      const length = reader.u32("length");
      const zero = reader.bool("zero");
      const status = wireStatus(reader.u8("status"));
      const data = reader.rest();
      if (length === 0) throw new DecodeError("empty resync data");
      if (status === WireStatus.Ok && !zero && data.length !== length) throw new DecodeError(`resync data carries ${data.length} bytes for a ${length}-byte range`);
      if ((zero || status !== WireStatus.Ok) && data.length !== 0) throw new DecodeError("zero or failed resync data carries bytes");
      return { type, ...base, round, offset, length, zero, status, data };
    }
    case MessageType.ResyncAck:
    case MessageType.ResyncFlushAck: {
      const round = reader.u32("round");
      const offset = reader.u64("offset");
      const status = wireStatus(reader.u8("status"));
      reader.end("ResyncAck");
      return { type, ...base, round, offset, status };
    }
    case MessageType.VerifyReply: {
      const round = reader.u32("round");
      const offset = reader.u64("offset");
      const status = wireStatus(reader.u8("status"));
      const crc = reader.u32("crc");
      reader.end("VerifyReply");
      return { type, ...base, round, offset, status, crc };
    }
    default:
      throw new DecodeError(`unknown message type ${type}`);
  }
}

/**
 * Reassembles frames from a byte stream chunked any way at all. Chunks handed to `push` become the
 * framer's: a frame that lies inside one chunk is returned as a view of it (no copy); one that
 * spans chunks is assembled into a new buffer once.
 */
export class Framer {
  private chunks: Uint8Array[] = [];
  private buffered = 0;
  /** Offset of the first unread byte in chunks[0]. */
  private head = 0;

  constructor(private frameBytesMax: number) {}

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

  /** Move the first `size` unread bytes into one new chunk at the front. */
  private coalesce(size: number): void {
    const joined = new Uint8Array(size);
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
