// virtio-blk on top of a descriptor chain (virtio 1.1 §5.2): the device feature bits, the config
// space a front-end reads with GET_CONFIG, and the request decoder that turns a chain into a typed
// request whose data segments are views of guest memory (never copies). Pure.
//
// A chain is laid out as a 16-byte header {u32 type, u32 reserved, u64 sector} in device-readable
// memory, then the data (device-readable for writes and for discard/write-zeroes ranges,
// device-writable for reads and GET_ID), then one device-writable status byte. The layout may be
// split across descriptors in any way (VIRTIO_F_ANY_LAYOUT is implied by VERSION_1), so the header
// and status are found by byte position, not by descriptor. A chain with no room for the header or
// status cannot be answered at all: that is a BlkChainError and ends the session. A request that
// can be answered but is wrong (bad length, out of range, unknown type) decodes to a request the
// device completes with IOERR or UNSUPP.
import type { Chain } from "./virtqueue.ts";

/** Device feature bits (VIRTIO_BLK_F_*). */
export const BlkFeatureBit = {
  sizeMax: 1n,
  segmentMax: 2n,
  geometry: 4n,
  readOnly: 5n,
  blockSize: 6n,
  flush: 9n,
  topology: 10n,
  configWce: 11n,
  multipleQueues: 12n,
  discard: 13n,
  writeZeroes: 14n,
} as const;

/** Request types (VIRTIO_BLK_T_*). */
export const enum BlkRequestType {
  In = 0, // VIRTIO_BLK_T_IN
  Out = 1, // VIRTIO_BLK_T_OUT
  Flush = 4, // VIRTIO_BLK_T_FLUSH
  GetId = 8, // VIRTIO_BLK_T_GET_ID
  GetLifetime = 10, // VIRTIO_BLK_T_GET_LIFETIME
  Discard = 11, // VIRTIO_BLK_T_DISCARD
  WriteZeroes = 13, // VIRTIO_BLK_T_WRITE_ZEROES
  SecureErase = 14, // VIRTIO_BLK_T_SECURE_ERASE
}

/** Status byte values (VIRTIO_BLK_S_*). */
export const enum BlkStatus {
  Ok = 0,
  IoError = 1,
  Unsupported = 2,
}

export const sectorBytes = 512;
/** Length of the device ID string GET_ID returns (VIRTIO_BLK_ID_BYTES). */
export const blkIdBytes = 20;
const headerBytes = 16;
const rangeBytes = 16;
const rangeFlagUnmap = 1;

export interface BlkConfig {
  capacitySectors: number;
  segmentsMax: number;
  blockSizeBytes: number;
  /** log2(physical block / logical block). */
  physicalBlockExponent: number;
  minimumIoSectors: number;
  optimalIoSectors: number;
  queues: number;
  discardSectorsMax: number;
  discardSegmentsMax: number;
  discardAlignmentSectors: number;
  writeZeroesSectorsMax: number;
  writeZeroesSegmentsMax: number;
  writeZeroesMayUnmap: boolean;
}

/** Bytes of struct virtio_blk_config up to and including the write-zeroes fields. */
export const blkConfigBytes = 60;

/** struct virtio_blk_config, little-endian. */
export function encodeBlkConfig(config: BlkConfig): Uint8Array {
  const bytes = new Uint8Array(blkConfigBytes);
  const view = new DataView(bytes.buffer);
  view.setBigUint64(0, BigInt(config.capacitySectors), true); // capacity
  view.setUint32(8, 0, true); // size_max (VIRTIO_BLK_F_SIZE_MAX not offered)
  view.setUint32(12, config.segmentsMax, true); // seg_max
  // geometry (16..19) left zero: VIRTIO_BLK_F_GEOMETRY is not offered.
  view.setUint32(20, config.blockSizeBytes, true); // blk_size
  view.setUint8(24, config.physicalBlockExponent); // topology.physical_block_exp
  view.setUint8(25, 0); // topology.alignment_offset
  view.setUint16(26, config.minimumIoSectors, true); // topology.min_io_size
  view.setUint32(28, config.optimalIoSectors, true); // topology.opt_io_size
  view.setUint8(32, 0); // writeback (VIRTIO_BLK_F_CONFIG_WCE not offered)
  view.setUint16(34, config.queues, true); // num_queues
  view.setUint32(36, config.discardSectorsMax, true); // max_discard_sectors
  view.setUint32(40, config.discardSegmentsMax, true); // max_discard_seg
  view.setUint32(44, config.discardAlignmentSectors, true); // discard_sector_alignment
  view.setUint32(48, config.writeZeroesSectorsMax, true); // max_write_zeroes_sectors
  view.setUint32(52, config.writeZeroesSegmentsMax, true); // max_write_zeroes_seg
  view.setUint8(56, config.writeZeroesMayUnmap ? 1 : 0); // write_zeroes_may_unmap
  return bytes;
}

export class BlkChainError extends Error {
  override name = "BlkChainError";
}

export interface BlkRange {
  offsetBytes: number;
  lengthBytes: number;
  unmap: boolean;
}

export type BlkRequest =
  | { kind: "read"; offsetBytes: number; lengthBytes: number; segments: Uint8Array[]; status: Uint8Array }
  | { kind: "write"; offsetBytes: number; lengthBytes: number; segments: Uint8Array[]; status: Uint8Array }
  | { kind: "flush"; status: Uint8Array }
  | { kind: "getId"; target: Uint8Array[]; status: Uint8Array }
  | { kind: "discard"; ranges: BlkRange[]; status: Uint8Array }
  | { kind: "writeZeroes"; ranges: BlkRange[]; status: Uint8Array }
  /** Complete with this status without doing IO (unknown type, bad length, ...). */
  | { kind: "reject"; status: Uint8Array; code: BlkStatus.IoError | BlkStatus.Unsupported; reason: string };

export interface BlkLimits {
  requestBytesMax: number;
  segmentsMax: number;
  rangesMax: number;
  /** Largest DISCARD / WRITE_ZEROES range. */
  rangeBytesMax: number;
  /** Which optional request types were negotiated. */
  discard: boolean;
  writeZeroes: boolean;
  flush: boolean;
}

/** Copy `length` bytes starting at byte `start` of a segment list (request metadata only). */
function gather(segments: readonly Uint8Array[], start: number, length: number): Uint8Array {
  const out = new Uint8Array(length);
  let skip = start;
  let filled = 0;
  for (const segment of segments) {
    if (filled === length) break;
    if (skip >= segment.length) {
      skip -= segment.length;
      continue;
    }
    const take = Math.min(segment.length - skip, length - filled);
    out.set(segment.subarray(skip, skip + take), filled);
    filled += take;
    skip = 0;
  }
  return out;
}

/** The segments covering bytes [start, start + length) of a segment list, as sub-views. */
function slice(segments: readonly Uint8Array[], start: number, length: number): Uint8Array[] {
  const out: Uint8Array[] = [];
  let skip = start;
  let remaining = length;
  for (const segment of segments) {
    if (remaining === 0) break;
    if (skip >= segment.length) {
      skip -= segment.length;
      continue;
    }
    const take = Math.min(segment.length - skip, remaining);
    out.push(skip === 0 && take === segment.length ? segment : segment.subarray(skip, skip + take));
    remaining -= take;
    skip = 0;
  }
  return out;
}

function decodeRanges(data: Uint8Array, unmapAllowed: boolean, limits: BlkLimits): BlkRange[] | { code: BlkStatus.IoError | BlkStatus.Unsupported; reason: string } {
  if (data.length === 0 || data.length % rangeBytes !== 0) return { code: BlkStatus.IoError, reason: `range list of ${data.length} bytes is not a whole number of 16-byte ranges` };
  const count = data.length / rangeBytes;
  if (count > limits.rangesMax) return { code: BlkStatus.IoError, reason: `${count} ranges (at most ${limits.rangesMax})` };
  const view = new DataView(data.buffer, data.byteOffset, data.byteLength);
  const ranges: BlkRange[] = [];
  for (let index = 0; index < count; index++) {
    const at = index * rangeBytes;
    const sector = view.getBigUint64(at, true);
    const sectors = view.getUint32(at + 8, true);
    const flags = view.getUint32(at + 12, true);
    if (flags & ~rangeFlagUnmap) return { code: BlkStatus.Unsupported, reason: `range flags 0x${flags.toString(16)}` };
    const unmap = (flags & rangeFlagUnmap) !== 0;
    if (unmap && !unmapAllowed) return { code: BlkStatus.Unsupported, reason: "unmap flag on a discard range" };
    if (sector > BigInt(Math.floor(Number.MAX_SAFE_INTEGER / sectorBytes))) return { code: BlkStatus.IoError, reason: `sector ${sector} is beyond any volume` };
    const lengthBytes = sectors * sectorBytes;
    if (lengthBytes > limits.rangeBytesMax) return { code: BlkStatus.IoError, reason: `range of ${lengthBytes} bytes (at most ${limits.rangeBytesMax})` };
    ranges.push({ offsetBytes: Number(sector) * sectorBytes, lengthBytes, unmap });
  }
  return ranges;
}

/** Decode a chain into a virtio-blk request. Throws BlkChainError when the chain has no header or status byte. */
export function decodeBlkRequest(chain: Chain, limits: BlkLimits): BlkRequest {
  if (chain.readableBytes < headerBytes) throw new BlkChainError(`chain ${chain.head} has ${chain.readableBytes} device-readable bytes, less than a request header`);
  if (chain.writableBytes < 1) throw new BlkChainError(`chain ${chain.head} has no device-writable status byte`);
  const header = new DataView(gather(chain.readable, 0, headerBytes).buffer);
  const type = header.getUint32(0, true);
  const sector = header.getBigUint64(8, true);
  const lastWritable = chain.writable[chain.writable.length - 1]!;
  const status = lastWritable.subarray(lastWritable.length - 1);
  const inBytes = chain.writableBytes - 1;
  const outBytes = chain.readableBytes - headerBytes;
  const reject = (code: BlkStatus.IoError | BlkStatus.Unsupported, reason: string): BlkRequest => ({ kind: "reject", status, code, reason });

  const dataRequest = (kind: "read" | "write", lengthBytes: number, segments: () => Uint8Array[]): BlkRequest => {
    if (lengthBytes % sectorBytes !== 0) return reject(BlkStatus.IoError, `${kind} of ${lengthBytes} bytes is not a whole number of sectors`);
    if (lengthBytes > limits.requestBytesMax) return reject(BlkStatus.IoError, `${kind} of ${lengthBytes} bytes (at most ${limits.requestBytesMax})`);
    if (sector > BigInt(Math.floor(Number.MAX_SAFE_INTEGER / sectorBytes))) return reject(BlkStatus.IoError, `sector ${sector} is beyond any volume`);
    const views = segments();
    if (views.length > limits.segmentsMax) return reject(BlkStatus.IoError, `${kind} in ${views.length} segments (at most ${limits.segmentsMax})`);
    return { kind, offsetBytes: Number(sector) * sectorBytes, lengthBytes, segments: views, status };
  };

  switch (type) {
    case BlkRequestType.In:
      return dataRequest("read", inBytes, () => slice(chain.writable, 0, inBytes));
    case BlkRequestType.Out:
      return dataRequest("write", outBytes, () => slice(chain.readable, headerBytes, outBytes));
    case BlkRequestType.Flush:
      if (!limits.flush) return reject(BlkStatus.Unsupported, "FLUSH was not negotiated");
      return { kind: "flush", status };
    case BlkRequestType.GetId:
      return { kind: "getId", target: slice(chain.writable, 0, Math.min(inBytes, blkIdBytes)), status };
    case BlkRequestType.Discard:
    case BlkRequestType.WriteZeroes: {
      const discard = type === BlkRequestType.Discard;
      if (discard ? !limits.discard : !limits.writeZeroes) return reject(BlkStatus.Unsupported, `${discard ? "DISCARD" : "WRITE_ZEROES"} was not negotiated`);
      if (outBytes > limits.rangesMax * rangeBytes) return reject(BlkStatus.IoError, `range list of ${outBytes} bytes (at most ${limits.rangesMax} ranges)`);
      const ranges = decodeRanges(gather(chain.readable, headerBytes, outBytes), !discard, limits);
      if (!Array.isArray(ranges)) return reject(ranges.code, ranges.reason);
      return { kind: discard ? "discard" : "writeZeroes", ranges, status };
    }
    default:
      return reject(BlkStatus.Unsupported, `request type ${type}`);
  }
}

/** The 20-byte device ID for GET_ID: the volume name, NUL-padded (not terminated when it fills all 20). */
export function blkDeviceId(volume: string): Uint8Array {
  const id = new Uint8Array(blkIdBytes);
  id.set(new TextEncoder().encode(volume).subarray(0, blkIdBytes));
  return id;
}
