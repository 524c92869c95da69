// The on-disk format of a volume's replication metadata (generations, data state, activity log,
// dirty bitmap, resync checkpoint), kept in a small file or partition next to the volume's data.
// Every record is one 4 KiB slot with its own magic and CRC32C, so a torn or lost write is detected
// and never trusted:
//   slot 0, 1          superblock, written alternately with a rising sequence number: a torn write
//                      leaves the other slot, the last durable state, which wins on load;
//   slots 2 .. 2+R-1   activity-log ring of R transactions (each the whole set of hot extents);
//                      the valid one with the highest sequence is the log;
//   then one slot per bitmap page (bitmapPageBits bits each). A page slot that is all zeroes was
//                      never written (all clean); any other invalid page is taken as all dirty.
// Pure functions over bytes; the driver reads the whole area at open and writes slots as told.
import { assert } from "../common/assert.ts";
import { bitmapPageBits, bitmapPageWords, DirtyBitmap } from "./bitmap.ts";
import { checksum } from "./checksum.ts";
import { DecodeError } from "./wire.ts";
import { DataState, type Generations } from "./model.ts";

export const metadataSlotBytes = 4096;
export const metadataFormatVersion = 1;
export const activityLogRingSlots = 8;
const superblockMagic = 0x534d4454; // "TDMS"
const activityLogMagic = 0x414d4454; // "TDMA"
const bitmapPageMagic = 0x424d4454; // "TDMB"
const historyLengthMax = 16;

export interface MetadataLayout {
  sizeBytes: number;
  granuleBytes: number;
  bitCount: number;
  pageCount: number;
  activityLogOffset: number;
  bitmapOffset: number;
  totalBytes: number;
}

export function metadataLayout(sizeBytes: number, granuleBytes: number): MetadataLayout {
  assert(Number.isSafeInteger(sizeBytes) && sizeBytes > 0 && granuleBytes > 0, "layout of a real volume");
  const bitCount = Math.ceil(sizeBytes / granuleBytes);
  const pageCount = Math.ceil(bitCount / bitmapPageBits);
  const activityLogOffset = 2 * metadataSlotBytes;
  const bitmapOffset = activityLogOffset + activityLogRingSlots * metadataSlotBytes;
  return { sizeBytes, granuleBytes, bitCount, pageCount, activityLogOffset, bitmapOffset, totalBytes: bitmapOffset + pageCount * metadataSlotBytes };
}

/** Granule for a volume: the finest power of two that keeps the bitmap within `bytesPerTiB`. */
export function granuleBytesFor(sizeBytes: number, granuleMin: number, granuleMax: number, bytesPerTiB: number): number {
  const bitsPerTiB = bytesPerTiB * 8;
  let granule = granuleMin;
  while (granule < granuleMax && 2 ** 40 / granule > bitsPerTiB) granule *= 2;
  while (granule < granuleMax && Math.ceil(sizeBytes / granule) > 2 ** 32) granule *= 2;
  return granule;
}

export interface ResyncCheckpoint {
  /** A resync was under way when this was written. */
  active: boolean;
  /** This replica was its target. */
  target: boolean;
  /** Bits to copy when the resync (round) began, and copied since: progress survives a restart. */
  bitsTotal: number;
  bitsDone: number;
}

export interface Superblock {
  sequence: number;
  volumeId: number;
  sizeBytes: number;
  granuleBytes: number;
  activityLogExtentBytes: number;
  dataState: DataState;
  /** Set on a clean close; cleared (durably) before the first write after open. */
  cleanShutdown: boolean;
  generations: Generations;
  resync: ResyncCheckpoint;
  /**
   * A failed flush left regions only this node holds to be written again (its pages read back but
   * may never reach the disk): set until a flush after those rewrites succeeds; at an open it
   * makes the volume write its dirty regions again (the daemon may have died with the page cache
   * still holding them).
   */
  rewritePending: boolean;
}

function slot(): { bytes: Uint8Array; view: DataView } {
  const bytes = new Uint8Array(metadataSlotBytes);
  return { bytes, view: new DataView(bytes.buffer) };
}

function setU64(view: DataView, offset: number, value: number): void {
  view.setUint32(offset, value % 0x100000000, true);
  view.setUint32(offset + 4, Math.floor(value / 0x100000000), true);
}

function getU64(view: DataView, offset: number): number {
  const high = view.getUint32(offset + 4, true);
  if (high >= 0x200000) throw new DecodeError("64-bit field beyond 2^53");
  return high * 0x100000000 + view.getUint32(offset, true);
}

function viewOf(bytes: Uint8Array): DataView {
  return new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
}

export function encodeSuperblock(record: Superblock): Uint8Array {
  const history = record.generations.history;
  assert(history.length <= historyLengthMax, "history fits the superblock");
  const { bytes, view } = slot();
  view.setUint32(0, superblockMagic, true);
  view.setUint16(4, metadataFormatVersion, true);
  const length = 88 + history.length * 8 + 4;
  view.setUint16(6, length, true);
  setU64(view, 8, record.sequence);
  view.setUint32(16, record.volumeId, true);
  view.setUint32(20, record.granuleBytes, true);
  setU64(view, 24, record.sizeBytes);
  view.setUint32(32, record.activityLogExtentBytes, true);
  view.setUint8(36, record.dataState);
  view.setUint8(37, record.cleanShutdown ? 1 : 0);
  view.setUint8(38, history.length);
  view.setUint8(39, (record.resync.active ? 1 : 0) | (record.resync.target ? 2 : 0) | (record.rewritePending ? 4 : 0));
  view.setBigUint64(40, record.generations.current, true);
  view.setBigUint64(48, record.generations.bitmapBase, true);
  setU64(view, 56, record.resync.bitsTotal);
  setU64(view, 64, record.resync.bitsDone);
  // 72..88 reserved (zero)
  history.forEach((id, index) => view.setBigUint64(88 + index * 8, id, true));
  view.setUint32(length - 4, checksum(bytes.subarray(0, length - 4)), true);
  return bytes;
}

/** The record in one superblock slot, or a reason it is not valid. */
export function decodeSuperblock(bytes: Uint8Array): Superblock | string {
  if (bytes.length !== metadataSlotBytes) return "slot has the wrong size";
  const view = viewOf(bytes);
  if (view.getUint32(0, true) !== superblockMagic) return bytes.every((byte) => byte === 0) ? "never written" : "bad magic";
  const version = view.getUint16(4, true);
  if (version !== metadataFormatVersion) return `format version ${version} is not ${metadataFormatVersion}`;
  const length = view.getUint16(6, true);
  if (length < 92 || length > metadataSlotBytes) return `bad record length ${length}`;
  if (checksum(bytes.subarray(0, length - 4)) !== view.getUint32(length - 4, true)) return "checksum mismatch (torn or corrupt)";
  try {
    const historyLength = view.getUint8(38);
    if (historyLength > historyLengthMax || length !== 88 + historyLength * 8 + 4) return "history length does not match the record";
    const dataState = view.getUint8(36);
    if (dataState > DataState.Inconsistent) return `unknown data state ${dataState}`;
    const history: bigint[] = [];
    for (let index = 0; index < historyLength; index++) history.push(view.getBigUint64(88 + index * 8, true));
    const flags = view.getUint8(39);
    return {
      sequence: getU64(view, 8),
      volumeId: view.getUint32(16, true),
      granuleBytes: view.getUint32(20, true),
      sizeBytes: getU64(view, 24),
      activityLogExtentBytes: view.getUint32(32, true),
      dataState: dataState as DataState,
      cleanShutdown: view.getUint8(37) === 1,
      generations: { current: view.getBigUint64(40, true), bitmapBase: view.getBigUint64(48, true), history },
      resync: { active: (flags & 1) !== 0, target: (flags & 2) !== 0, bitsTotal: getU64(view, 56), bitsDone: getU64(view, 64) },
      rewritePending: (flags & 4) !== 0,
    };
  } catch (error) {
    if (error instanceof DecodeError) return error.message;
    throw error;
  }
}

export interface ActivityLogRecord {
  sequence: number;
  extentBytes: number;
  extents: number[];
}

export function encodeActivityLog(record: ActivityLogRecord): Uint8Array {
  const length = 24 + record.extents.length * 4 + 4;
  assert(length <= metadataSlotBytes, "activity-log transaction fits one slot");
  const { bytes, view } = slot();
  view.setUint32(0, activityLogMagic, true);
  view.setUint16(4, metadataFormatVersion, true);
  view.setUint16(6, record.extents.length, true);
  setU64(view, 8, record.sequence);
  view.setUint32(16, record.extentBytes, true);
  record.extents.forEach((extent, index) => view.setUint32(24 + index * 4, extent, true));
  view.setUint32(length - 4, checksum(bytes.subarray(0, length - 4)), true);
  return bytes;
}

export function decodeActivityLog(bytes: Uint8Array): ActivityLogRecord | string {
  const view = viewOf(bytes);
  if (view.getUint32(0, true) !== activityLogMagic) return bytes.every((byte) => byte === 0) ? "never written" : "bad magic";
  if (view.getUint16(4, true) !== metadataFormatVersion) return "unknown format version";
  const count = view.getUint16(6, true);
  const length = 24 + count * 4 + 4;
  if (length > metadataSlotBytes) return "extent count too large";
  if (checksum(bytes.subarray(0, length - 4)) !== view.getUint32(length - 4, true)) return "checksum mismatch (torn or corrupt)";
  const extents: number[] = [];
  for (let index = 0; index < count; index++) extents.push(view.getUint32(24 + index * 4, true));
  try {
    return { sequence: getU64(view, 8), extentBytes: view.getUint32(16, true), extents };
  } catch (error) {
    if (error instanceof DecodeError) return error.message;
    throw error;
  }
}

export function encodeBitmapPage(page: number, words: Uint32Array): Uint8Array {
  assert(words.length === bitmapPageWords, "bitmap page shape");
  const { bytes, view } = slot();
  view.setUint32(0, bitmapPageMagic, true);
  view.setUint32(4, page, true);
  view.setUint32(12, metadataFormatVersion, true);
  bytes.set(new Uint8Array(words.buffer, words.byteOffset, words.byteLength), 16);
  view.setUint32(8, checksum(bytes.subarray(16), checksum(bytes.subarray(0, 8))), true);
  return bytes;
}

/** The words of a bitmap page, "empty" for a slot never written, or a reason it is invalid. */
export function decodeBitmapPage(bytes: Uint8Array, page: number): Uint32Array | "empty" | string {
  const view = viewOf(bytes);
  if (view.getUint32(0, true) !== bitmapPageMagic) return bytes.every((byte) => byte === 0) ? "empty" : "bad magic";
  if (view.getUint32(4, true) !== page) return `slot holds page ${view.getUint32(4, true)}, not ${page}`;
  if (view.getUint32(12, true) !== metadataFormatVersion) return "unknown format version";
  if (checksum(bytes.subarray(16), checksum(bytes.subarray(0, 8))) !== view.getUint32(8, true)) return "checksum mismatch (torn or corrupt)";
  const words = new Uint32Array(bitmapPageWords);
  new Uint8Array(words.buffer).set(bytes.subarray(16, metadataSlotBytes));
  return words;
}

/** A write the driver must perform on the metadata area. */
export interface MetadataWrite {
  offset: number;
  bytes: Uint8Array;
}

export function superblockWrite(record: Superblock): MetadataWrite {
  return { offset: (record.sequence % 2) * metadataSlotBytes, bytes: encodeSuperblock(record) };
}

export function activityLogWrite(layout: MetadataLayout, record: ActivityLogRecord): MetadataWrite {
  return { offset: layout.activityLogOffset + (record.sequence % activityLogRingSlots) * metadataSlotBytes, bytes: encodeActivityLog(record) };
}

export function bitmapPageWrite(layout: MetadataLayout, bitmap: DirtyBitmap, page: number): MetadataWrite {
  return { offset: layout.bitmapOffset + page * metadataSlotBytes, bytes: encodeBitmapPage(page, bitmap.pageWords(page)) };
}

export interface LoadedMetadata {
  superblock: Superblock;
  activityLog: ActivityLogRecord | undefined;
  bitmap: DirtyBitmap;
  /** What was found torn or invalid and how it was taken (for the log). */
  findings: string[];
}

/**
 * Read a whole metadata area. Returns "blank" when no superblock was ever written (a new area),
 * and throws DecodeError when superblocks exist but none is valid (refuse to guess).
 */
export function loadMetadata(bytes: Uint8Array): LoadedMetadata | "blank" {
  if (bytes.length < 2 * metadataSlotBytes) throw new DecodeError("metadata area smaller than its superblocks");
  const findings: string[] = [];
  const candidates: Superblock[] = [];
  const reasons: string[] = [];
  for (const index of [0, 1]) {
    const result = decodeSuperblock(bytes.subarray(index * metadataSlotBytes, (index + 1) * metadataSlotBytes));
    if (typeof result === "string") reasons.push(result);
    else if (result.sequence % 2 !== index) reasons.push(`superblock slot ${index} holds sequence ${result.sequence}`);
    else candidates.push(result);
  }
  if (candidates.length === 0) {
    if (reasons.every((reason) => reason === "never written")) return "blank";
    throw new DecodeError(`no valid superblock: ${reasons.join("; ")}`);
  }
  if (candidates.length === 1 && reasons[0] !== "never written") findings.push(`one superblock slot invalid (${reasons[0]}); using sequence ${candidates[0]!.sequence}`);
  const superblock = candidates.reduce((best, candidate) => (candidate.sequence > best.sequence ? candidate : best));
  const layout = metadataLayout(superblock.sizeBytes, superblock.granuleBytes);
  if (bytes.length < layout.totalBytes) throw new DecodeError(`metadata area is ${bytes.length} bytes, the volume needs ${layout.totalBytes}`);

  let activityLog: ActivityLogRecord | undefined;
  for (let index = 0; index < activityLogRingSlots; index++) {
    const offset = layout.activityLogOffset + index * metadataSlotBytes;
    const result = decodeActivityLog(bytes.subarray(offset, offset + metadataSlotBytes));
    if (typeof result === "string") {
      if (result !== "never written") findings.push(`activity-log slot ${index} invalid (${result})`);
      continue;
    }
    if (result.sequence % activityLogRingSlots !== index) {
      findings.push(`activity-log slot ${index} holds sequence ${result.sequence}`);
      continue;
    }
    if (!activityLog || result.sequence > activityLog.sequence) activityLog = result;
  }

  const bitmap = new DirtyBitmap(layout.bitCount);
  for (let page = 0; page < layout.pageCount; page++) {
    const offset = layout.bitmapOffset + page * metadataSlotBytes;
    const result = decodeBitmapPage(bytes.subarray(offset, offset + metadataSlotBytes), page);
    if (result === "empty") continue;
    if (typeof result === "string") {
      findings.push(`bitmap page ${page} invalid (${result}): all its regions taken as dirty`);
      bitmap.fillPage(page);
      bitmap.markPagesDirty([page]);
      continue;
    }
    bitmap.loadPage(page, result);
  }
  return { superblock, activityLog, bitmap, findings };
}

export interface FormatOptions {
  volumeId: number;
  sizeBytes: number;
  granuleBytes: number;
  activityLogExtentBytes: number;
  /**
   * The generation both replicas of a newly created volume start from (the creator picks it and
   * the peer is formatted with the same one, so they start in sync without a copy). Omit it for a
   * new or replaced disk that must be filled from the peer: its data state is then "new".
   */
  initialGeneration?: bigint;
}

/**
 * The writes that format a metadata area: both superblock slots, an empty activity-log ring and
 * valid empty bitmap pages, so an area that held anything before cannot be misread.
 */
export function formatMetadata(options: FormatOptions): MetadataWrite[] {
  const layout = metadataLayout(options.sizeBytes, options.granuleBytes);
  const writes: MetadataWrite[] = [];
  const zero = new Uint8Array(metadataSlotBytes);
  writes.push({ offset: 0, bytes: zero });
  for (let slotIndex = 0; slotIndex < activityLogRingSlots; slotIndex++) writes.push({ offset: layout.activityLogOffset + slotIndex * metadataSlotBytes, bytes: zero });
  const emptyWords = new Uint32Array(bitmapPageWords);
  for (let page = 0; page < layout.pageCount; page++) writes.push({ offset: layout.bitmapOffset + page * metadataSlotBytes, bytes: encodeBitmapPage(page, emptyWords) });
  const initial = options.initialGeneration ?? 0n;
  writes.push(
    superblockWrite({
      sequence: 1,
      volumeId: options.volumeId,
      sizeBytes: options.sizeBytes,
      granuleBytes: options.granuleBytes,
      activityLogExtentBytes: options.activityLogExtentBytes,
      dataState: initial === 0n ? DataState.New : DataState.Consistent,
      cleanShutdown: true,
      generations: { current: initial, bitmapBase: 0n, history: [] },
      resync: { active: false, target: false, bitsTotal: 0, bitsDone: 0 },
      rewritePending: false,
    }),
  );
  return writes;
}
