// The vhost-user message codec (QEMU docs/interop/vhost-user.rst): the 12-byte header, every
// payload a virtio-blk back-end exchanges with its front-end, and a framer that cuts a byte stream
// (with the file descriptors that arrived alongside it) into messages. Pure: bytes in, typed
// messages out, no sockets. Numbers are little-endian (the protocol says "native"; Tandem runs on
// little-endian hosts only, asserted below). "Need more bytes" is NEED_MORE; anything malformed —
// a wrong version, a payload size that does not fit the request, an absurd count — throws a
// DecodeError, which ends that front-end's session.
import { assert } from "../../../common/assert.ts";
import { vhostMessageFdsMax, vhostMessagePayloadBytesMax, vhostMemoryRegionsMax, vhostConfigBytesMax } from "../../../constants.ts";

assert(new Uint8Array(new Uint16Array([1]).buffer)[0] === 1, "vhost-user and virtio need a little-endian host");

/** Front-end requests (vhost-user.rst "Front-end message types"); the spec's names in comments. */
export const enum Request {
  GetFeatures = 1, // VHOST_USER_GET_FEATURES
  SetFeatures = 2, // VHOST_USER_SET_FEATURES
  SetOwner = 3, // VHOST_USER_SET_OWNER
  ResetOwner = 4, // VHOST_USER_RESET_OWNER
  SetMemTable = 5, // VHOST_USER_SET_MEM_TABLE
  SetLogBase = 6, // VHOST_USER_SET_LOG_BASE
  SetLogFd = 7, // VHOST_USER_SET_LOG_FD
  SetVringNum = 8, // VHOST_USER_SET_VRING_NUM
  SetVringAddr = 9, // VHOST_USER_SET_VRING_ADDR
  SetVringBase = 10, // VHOST_USER_SET_VRING_BASE
  GetVringBase = 11, // VHOST_USER_GET_VRING_BASE
  SetVringKick = 12, // VHOST_USER_SET_VRING_KICK
  SetVringCall = 13, // VHOST_USER_SET_VRING_CALL
  SetVringErr = 14, // VHOST_USER_SET_VRING_ERR
  GetProtocolFeatures = 15, // VHOST_USER_GET_PROTOCOL_FEATURES
  SetProtocolFeatures = 16, // VHOST_USER_SET_PROTOCOL_FEATURES
  GetQueueNum = 17, // VHOST_USER_GET_QUEUE_NUM
  SetVringEnable = 18, // VHOST_USER_SET_VRING_ENABLE
  GetConfig = 24, // VHOST_USER_GET_CONFIG
  SetConfig = 25, // VHOST_USER_SET_CONFIG
  GetInflightFd = 31, // VHOST_USER_GET_INFLIGHT_FD
  SetInflightFd = 32, // VHOST_USER_SET_INFLIGHT_FD
  ResetDevice = 34, // VHOST_USER_RESET_DEVICE
  GetMaxMemSlots = 36, // VHOST_USER_GET_MAX_MEM_SLOTS
  SetStatus = 39, // VHOST_USER_SET_STATUS
  GetStatus = 40, // VHOST_USER_GET_STATUS
}

const requestNames: Record<number, string> = {
  1: "GET_FEATURES", 2: "SET_FEATURES", 3: "SET_OWNER", 4: "RESET_OWNER", 5: "SET_MEM_TABLE", 6: "SET_LOG_BASE",
  7: "SET_LOG_FD", 8: "SET_VRING_NUM", 9: "SET_VRING_ADDR", 10: "SET_VRING_BASE", 11: "GET_VRING_BASE",
  12: "SET_VRING_KICK", 13: "SET_VRING_CALL", 14: "SET_VRING_ERR", 15: "GET_PROTOCOL_FEATURES",
  16: "SET_PROTOCOL_FEATURES", 17: "GET_QUEUE_NUM", 18: "SET_VRING_ENABLE", 19: "SEND_RARP", 20: "NET_SET_MTU",
  21: "SET_SLAVE_REQ_FD", 22: "IOTLB_MSG", 23: "SET_VRING_ENDIAN", 24: "GET_CONFIG", 25: "SET_CONFIG",
  26: "CREATE_CRYPTO_SESSION", 27: "CLOSE_CRYPTO_SESSION", 28: "POSTCOPY_ADVISE", 29: "POSTCOPY_LISTEN",
  30: "POSTCOPY_END", 31: "GET_INFLIGHT_FD", 32: "SET_INFLIGHT_FD", 33: "GPU_SET_SOCKET", 34: "RESET_DEVICE",
  35: "VRING_KICK", 36: "GET_MAX_MEM_SLOTS", 37: "ADD_MEM_REG", 38: "REM_MEM_REG", 39: "SET_STATUS", 40: "GET_STATUS",
};

export function requestName(request: number): string {
  return requestNames[request] ?? `request ${request}`;
}

/** Header flag bits. */
export const enum HeaderFlag {
  Version = 0x1, // lower 2 bits: protocol version 1
  VersionMask = 0x3,
  Reply = 0x4, // set on every reply from the back-end
  NeedReply = 0x8, // REPLY_ACK: the front-end wants a u64 status for this request
}

export const headerBytes = 12;

/** Virtio feature bits that are not device specific (virtio spec §6), and vhost-user's bit 30. */
export const FeatureBit = {
  ringIndirectDescriptors: 28n, // VIRTIO_RING_F_INDIRECT_DESC
  ringEventIndex: 29n, // VIRTIO_RING_F_EVENT_IDX
  protocolFeatures: 30n, // VHOST_USER_F_PROTOCOL_FEATURES
  version1: 32n, // VIRTIO_F_VERSION_1
} as const;

/** vhost-user protocol feature bits (VHOST_USER_PROTOCOL_F_*). */
export const ProtocolFeatureBit = {
  multipleQueues: 0n, // MQ
  logSharedMemory: 1n, // LOG_SHMFD
  replyAck: 3n, // REPLY_ACK
  backendRequests: 5n, // SLAVE_REQ
  config: 9n, // CONFIG
  inflightSharedMemory: 12n, // INFLIGHT_SHMFD
  resetDevice: 13n, // RESET_DEVICE
  inbandNotifications: 14n, // INBAND_NOTIFICATIONS
  configureMemorySlots: 15n, // CONFIGURE_MEM_SLOTS
  status: 16n, // STATUS
} as const;

export function bit(index: bigint): bigint {
  return 1n << index;
}

export interface MemoryRegionDescription {
  guestAddress: number;
  sizeBytes: number;
  userAddress: number;
  mmapOffset: number;
}

export interface VringAddress {
  index: number;
  flags: number;
  descriptor: number;
  used: number;
  available: number;
  log: number;
}

export interface ConfigSpace {
  offset: number;
  sizeBytes: number;
  flags: number;
  /** For requests and replies carrying bytes; `sizeBytes` zero-length payloads mean "error" in replies. */
  payload: Uint8Array;
}

export interface InflightDescription {
  mmapSizeBytes: number;
  mmapOffset: number;
  queues: number;
  queueSize: number;
}

/** A decoded payload; which one a request carries is fixed by its type and direction. */
export type Body =
  | { kind: "none" }
  | { kind: "u64"; value: bigint }
  | { kind: "state"; index: number; num: number }
  | { kind: "vringFile"; index: number; noFd: boolean }
  | { kind: "address"; address: VringAddress }
  | { kind: "memory"; regions: MemoryRegionDescription[] }
  | { kind: "config"; config: ConfigSpace }
  | { kind: "inflight"; inflight: InflightDescription }
  | { kind: "opaque"; bytes: Uint8Array };

export interface Message {
  request: number;
  flags: number;
  body: Body;
}

export class DecodeError extends Error {
  override name = "DecodeError";
}

export const NEED_MORE = Symbol("need more bytes");

const u64Bytes = 8;
const stateBytes = 8;
const addressBytes = 40;
const memoryRegionBytes = 32;
const memoryHeaderBytes = 8;
const configHeaderBytes = 12;
/** sizeof(VhostUserInflight): two u64 and two u16, padded to 8 bytes as QEMU's struct is. */
export const inflightBytes = 24;
const vringFileIndexMask = 0xffn;
const vringFileNoFd = 0x100n;

type BodyKind = Body["kind"];

/** The payload a front-end request carries. */
function requestBodyKind(request: number): BodyKind {
  switch (request) {
    case Request.GetFeatures:
    case Request.GetProtocolFeatures:
    case Request.SetOwner:
    case Request.ResetOwner:
    case Request.GetQueueNum:
    case Request.ResetDevice:
    case Request.GetMaxMemSlots:
    case Request.GetStatus:
    case Request.SetLogFd:
      return "none";
    case Request.SetFeatures:
    case Request.SetProtocolFeatures:
    case Request.SetLogBase:
    case Request.SetStatus:
      return "u64";
    case Request.SetVringNum:
    case Request.SetVringBase:
    case Request.GetVringBase:
    case Request.SetVringEnable:
      return "state";
    case Request.SetVringKick:
    case Request.SetVringCall:
    case Request.SetVringErr:
      return "vringFile";
    case Request.SetVringAddr:
      return "address";
    case Request.SetMemTable:
      return "memory";
    case Request.GetConfig:
    case Request.SetConfig:
      return "config";
    case Request.GetInflightFd:
    case Request.SetInflightFd:
      return "inflight";
    default:
      return "opaque";
  }
}

/** The payload of the back-end's reply to `request` (REPLY_ACK replies are a u64 status). */
export function replyBodyKind(request: number): BodyKind {
  switch (request) {
    case Request.GetVringBase:
      return "state";
    case Request.GetConfig:
      return "config";
    case Request.GetInflightFd:
      return "inflight";
    default:
      return "u64";
  }
}

function readSafe(view: DataView, offset: number, what: string): number {
  const value = view.getBigUint64(offset, true);
  if (value > BigInt(Number.MAX_SAFE_INTEGER)) throw new DecodeError(`${what} 0x${value.toString(16)} is beyond 2^53`);
  return Number(value);
}

function expectSize(request: number, size: number, expected: number): void {
  if (size !== expected) throw new DecodeError(`${requestName(request)} carries ${size} payload bytes, expected ${expected}`);
}

function decodeBody(request: number, kind: BodyKind, view: DataView, start: number, size: number): Body {
  switch (kind) {
    case "none":
      expectSize(request, size, 0);
      return { kind: "none" };
    case "u64":
      expectSize(request, size, u64Bytes);
      return { kind: "u64", value: view.getBigUint64(start, true) };
    case "state":
      expectSize(request, size, stateBytes);
      return { kind: "state", index: view.getUint32(start, true), num: view.getUint32(start + 4, true) };
    case "vringFile": {
      expectSize(request, size, u64Bytes);
      const value = view.getBigUint64(start, true);
      if ((value & ~(vringFileIndexMask | vringFileNoFd)) !== 0n) {
        throw new DecodeError(`${requestName(request)} has unknown bits set: 0x${value.toString(16)}`);
      }
      return { kind: "vringFile", index: Number(value & vringFileIndexMask), noFd: (value & vringFileNoFd) !== 0n };
    }
    case "address":
      expectSize(request, size, addressBytes);
      return {
        kind: "address",
        address: {
          index: view.getUint32(start, true),
          flags: view.getUint32(start + 4, true),
          descriptor: readSafe(view, start + 8, "descriptor table address"),
          used: readSafe(view, start + 16, "used ring address"),
          available: readSafe(view, start + 24, "available ring address"),
          log: readSafe(view, start + 32, "log address"),
        },
      };
    case "memory": {
      if (size < memoryHeaderBytes) throw new DecodeError(`SET_MEM_TABLE carries ${size} payload bytes, less than its header`);
      const count = view.getUint32(start, true);
      if (count === 0 || count > vhostMemoryRegionsMax) throw new DecodeError(`SET_MEM_TABLE with ${count} regions (1..${vhostMemoryRegionsMax})`);
      expectSize(request, size, memoryHeaderBytes + count * memoryRegionBytes);
      const regions: MemoryRegionDescription[] = [];
      for (let index = 0; index < count; index++) {
        const at = start + memoryHeaderBytes + index * memoryRegionBytes;
        regions.push({
          guestAddress: readSafe(view, at, "region guest address"),
          sizeBytes: readSafe(view, at + 8, "region size"),
          userAddress: readSafe(view, at + 16, "region user address"),
          mmapOffset: readSafe(view, at + 24, "region mmap offset"),
        });
      }
      return { kind: "memory", regions };
    }
    case "config": {
      if (size < configHeaderBytes) throw new DecodeError(`${requestName(request)} carries ${size} payload bytes, less than its header`);
      const offset = view.getUint32(start, true);
      const sizeBytes = view.getUint32(start + 4, true);
      const flags = view.getUint32(start + 8, true);
      if (sizeBytes > vhostConfigBytesMax) throw new DecodeError(`${requestName(request)} of ${sizeBytes} config bytes (at most ${vhostConfigBytesMax})`);
      expectSize(request, size, configHeaderBytes + sizeBytes);
      const payload = new Uint8Array(view.buffer, view.byteOffset + start + configHeaderBytes, sizeBytes).slice();
      return { kind: "config", config: { offset, sizeBytes, flags, payload } };
    }
    case "inflight":
      expectSize(request, size, inflightBytes);
      return {
        kind: "inflight",
        inflight: {
          mmapSizeBytes: readSafe(view, start, "inflight mmap size"),
          mmapOffset: readSafe(view, start + 8, "inflight mmap offset"),
          queues: view.getUint16(start + 16, true),
          queueSize: view.getUint16(start + 18, true),
        },
      };
    case "opaque":
      return { kind: "opaque", bytes: new Uint8Array(view.buffer, view.byteOffset + start, size).slice() };
  }
}

/**
 * Decode one message at `offset`. The header says whether it is a reply (the front-end side of
 * the tests decodes replies with the same function). Returns NEED_MORE until the whole message is
 * there; throws DecodeError on a bad version or a payload that does not fit.
 */
export function decodeMessage(bytes: Uint8Array, offset: number): { message: Message; size: number } | typeof NEED_MORE {
  if (bytes.length - offset < headerBytes) return NEED_MORE;
  const view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  const request = view.getUint32(offset, true);
  const flags = view.getUint32(offset + 4, true);
  const size = view.getUint32(offset + 8, true);
  if ((flags & HeaderFlag.VersionMask) !== HeaderFlag.Version) throw new DecodeError(`${requestName(request)}: protocol version ${flags & HeaderFlag.VersionMask}, expected 1`);
  if (size > vhostMessagePayloadBytesMax) throw new DecodeError(`${requestName(request)}: payload of ${size} bytes (at most ${vhostMessagePayloadBytesMax})`);
  if (bytes.length - offset < headerBytes + size) return NEED_MORE;
  const kind = flags & HeaderFlag.Reply ? replyBodyKind(request) : requestBodyKind(request);
  const body = decodeBody(request, kind, view, offset + headerBytes, size);
  return { message: { request, flags, body }, size: headerBytes + size };
}

function bodySize(body: Body): number {
  switch (body.kind) {
    case "none":
      return 0;
    case "u64":
    case "vringFile":
      return u64Bytes;
    case "state":
      return stateBytes;
    case "address":
      return addressBytes;
    case "memory":
      return memoryHeaderBytes + body.regions.length * memoryRegionBytes;
    case "config":
      return configHeaderBytes + body.config.payload.length;
    case "inflight":
      return inflightBytes;
    case "opaque":
      return body.bytes.length;
  }
}

/** Encode a message; the size field is computed from the body. */
export function encodeMessage(message: Message): Uint8Array {
  const size = bodySize(message.body);
  const bytes = new Uint8Array(headerBytes + size);
  const view = new DataView(bytes.buffer);
  view.setUint32(0, message.request, true);
  view.setUint32(4, message.flags, true);
  view.setUint32(8, size, true);
  const at = headerBytes;
  const body = message.body;
  switch (body.kind) {
    case "none":
      break;
    case "u64":
      view.setBigUint64(at, body.value, true);
      break;
    case "vringFile":
      view.setBigUint64(at, BigInt(body.index) | (body.noFd ? vringFileNoFd : 0n), true);
      break;
    case "state":
      view.setUint32(at, body.index, true);
      view.setUint32(at + 4, body.num, true);
      break;
    case "address": {
      const a = body.address;
      view.setUint32(at, a.index, true);
      view.setUint32(at + 4, a.flags, true);
      view.setBigUint64(at + 8, BigInt(a.descriptor), true);
      view.setBigUint64(at + 16, BigInt(a.used), true);
      view.setBigUint64(at + 24, BigInt(a.available), true);
      view.setBigUint64(at + 32, BigInt(a.log), true);
      break;
    }
    case "memory":
      view.setUint32(at, body.regions.length, true);
      body.regions.forEach((region, index) => {
        const r = at + memoryHeaderBytes + index * memoryRegionBytes;
        view.setBigUint64(r, BigInt(region.guestAddress), true);
        view.setBigUint64(r + 8, BigInt(region.sizeBytes), true);
        view.setBigUint64(r + 16, BigInt(region.userAddress), true);
        view.setBigUint64(r + 24, BigInt(region.mmapOffset), true);
      });
      break;
    case "config":
      view.setUint32(at, body.config.offset, true);
      view.setUint32(at + 4, body.config.payload.length, true);
      view.setUint32(at + 8, body.config.flags, true);
      bytes.set(body.config.payload, at + configHeaderBytes);
      break;
    case "inflight":
      view.setBigUint64(at, BigInt(body.inflight.mmapSizeBytes), true);
      view.setBigUint64(at + 8, BigInt(body.inflight.mmapOffset), true);
      view.setUint16(at + 16, body.inflight.queues, true);
      view.setUint16(at + 18, body.inflight.queueSize, true);
      break;
    case "opaque":
      bytes.set(body.bytes, at);
      break;
  }
  return bytes;
}

/** A reply to `request` (the reply flag and version set). */
export function encodeReply(request: number, body: Body): Uint8Array {
  return encodeMessage({ request, flags: HeaderFlag.Version | HeaderFlag.Reply, body });
}

export interface FramedMessage {
  message: Message;
  /** Descriptors that arrived with this message; the receiver owns (and must close) them. */
  fds: number[];
}

/**
 * Cuts a byte stream into messages. Feed it each chunk read from the socket with the descriptors
 * that came with that chunk, in any chunking. A front-end sends each message with its descriptors
 * in one send, and a unix-socket read returns the descriptors of the first send it touches that
 * carries any, then stops at the end of that send (it may have read sends without descriptors
 * before it). So descriptors belong to the message that starts inside their chunk and reaches its
 * end (or beyond, when the read stopped short). Descriptors whose chunk lies inside a message
 * are a protocol violation.
 */
export class MessageFramer {
  private buffer = new Uint8Array(4096);
  private start = 0;
  private end = 0;
  /** Stream position of buffer[start]. */
  private consumed = 0;
  /** Descriptors not yet handed out, with the stream range of the chunk they came with. */
  private fdQueue: { chunkStart: number; chunkEnd: number; fds: number[] }[] = [];

  push(chunk: Uint8Array, fds: readonly number[] = []): void {
    if (fds.length > 0) {
      const chunkStart = this.consumed + (this.end - this.start);
      this.fdQueue.push({ chunkStart, chunkEnd: chunkStart + chunk.length, fds: [...fds] });
      if (fds.length > vhostMessageFdsMax) throw new DecodeError(`${fds.length} file descriptors with one message (at most ${vhostMessageFdsMax})`);
    }
    if (this.end + chunk.length > this.buffer.length) {
      const live = this.end - this.start;
      const needed = live + chunk.length;
      if (needed > this.buffer.length) {
        const next = new Uint8Array(Math.max(needed, this.buffer.length * 2));
        next.set(this.buffer.subarray(this.start, this.end), 0);
        this.buffer = next;
      } else {
        this.buffer.copyWithin(0, this.start, this.end);
      }
      this.start = 0;
      this.end = live;
    }
    this.buffer.set(chunk, this.end);
    this.end += chunk.length;
  }

  /** The next whole message, or undefined until more bytes arrive. Throws DecodeError. */
  next(): FramedMessage | undefined {
    const decoded = decodeMessage(this.buffer.subarray(this.start, this.end), 0);
    if (decoded === NEED_MORE) return undefined;
    const messageStart = this.consumed;
    const messageEnd = messageStart + decoded.size;
    let fds: number[] = [];
    // Chunks with descriptors that end within this message: they belong to it if it starts inside them.
    while (this.fdQueue.length > 0 && this.fdQueue[0]!.chunkEnd <= messageEnd) {
      const entry = this.fdQueue[0]!;
      if (messageStart < entry.chunkStart || messageStart >= entry.chunkEnd) {
        throw new DecodeError(`file descriptors arrived inside a ${requestName(decoded.message.request)} message`);
      }
      fds = fds.concat(entry.fds);
      this.fdQueue.shift();
      if (fds.length > vhostMessageFdsMax) {
        this.fdQueue.unshift({ chunkStart: messageStart, chunkEnd: messageEnd, fds });
        throw new DecodeError(`more than ${vhostMessageFdsMax} file descriptors with one message`);
      }
    }
    this.start += decoded.size;
    this.consumed = messageEnd;
    if (this.start === this.end) this.start = this.end = 0;
    return { message: decoded.message, fds };
  }

  /** Bytes buffered that do not yet make a whole message. */
  get bufferedBytes(): number {
    return this.end - this.start;
  }

  /** Descriptors received but not yet handed out with a message (to close them on teardown). */
  takeFds(): number[] {
    const fds = this.fdQueue.flatMap((entry) => entry.fds);
    this.fdQueue = [];
    return fds;
  }
}
