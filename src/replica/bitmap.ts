// The dirty bitmap of one volume: one bit per granule (4..64 KiB) that may differ from the peer's
// replica. It is set while the peer is away (and for writes in flight when the link drops), read by
// the resync engine, and cleared as regions are copied. It lives in memory as 32-bit words (1 TiB at
// 4 KiB granules is 32 MiB) grouped into pages that match the on-disk pages of metadata-format.ts;
// each page keeps its count of set bits, so scans skip clean pages, and a dirty flag, so writeback
// writes only pages that changed. Pure data structure: persistence is the caller's.
import { assert } from "../common/assert.ts";
import type { BitRun } from "./model.ts";

/** Bits in one bitmap page: a 4 KiB metadata slot minus its 16-byte header. */
export const bitmapPageWords = (4096 - 16) / 4;
export const bitmapPageBits = bitmapPageWords * 32;

function popcount(value: number): number {
  value = value - ((value >>> 1) & 0x55555555);
  value = (value & 0x33333333) + ((value >>> 2) & 0x33333333);
  return (((value + (value >>> 4)) & 0x0f0f0f0f) * 0x01010101) >>> 24;
}

export class DirtyBitmap {
  readonly words: Uint32Array;
  readonly pageCount: number;
  private readonly pageSetCounts: Uint32Array;
  private readonly pageDirty: Uint8Array;
  private dirtyPageTotal = 0;
  private setTotal = 0;

  constructor(readonly bitCount: number) {
    assert(Number.isSafeInteger(bitCount) && bitCount >= 0 && bitCount <= 2 ** 32, "bitmap size in range");
    this.pageCount = Math.ceil(bitCount / bitmapPageBits);
    // Exactly one bit per granule (no padding to whole pages): 1 TiB at 4 KiB costs 32 MiB.
    this.words = new Uint32Array(Math.ceil(bitCount / 32));
    this.pageSetCounts = new Uint32Array(this.pageCount);
    this.pageDirty = new Uint8Array(this.pageCount);
  }

  get setCount(): number {
    return this.setTotal;
  }

  get dirtyPages(): number {
    return this.dirtyPageTotal;
  }

  private touchPage(page: number): void {
    if (this.pageDirty[page] === 0) {
      this.pageDirty[page] = 1;
      this.dirtyPageTotal++;
    }
  }

  /** Replace word `index` with `value`, keeping counts and dirty flags. */
  private store(index: number, value: number): void {
    const old = this.words[index]!;
    if (old === value) return;
    const delta = popcount(value) - popcount(old);
    this.words[index] = value;
    const page = Math.floor(index / bitmapPageWords);
    this.pageSetCounts[page] = this.pageSetCounts[page]! + delta;
    this.setTotal += delta;
    this.touchPage(page);
  }

  private checkRange(start: number, end: number): void {
    assert(Number.isSafeInteger(start) && Number.isSafeInteger(end) && 0 <= start && start <= end && end <= this.bitCount, `bit range ${start}..${end} within ${this.bitCount}`);
  }

  private apply(start: number, end: number, set: boolean): void {
    this.checkRange(start, end);
    let bit = start;
    while (bit < end) {
      const index = bit >>> 5;
      const shift = bit & 31;
      const span = Math.min(32 - shift, end - bit);
      const mask = span === 32 ? 0xffffffff : (((1 << span) - 1) << shift) >>> 0;
      const old = this.words[index]!;
      this.store(index, set ? (old | mask) >>> 0 : (old & ~mask) >>> 0);
      bit += span;
    }
  }

  /** Set bits [start, end); returns how many were newly set. */
  setRange(start: number, end: number): number {
    const before = this.setTotal;
    this.apply(start, end, true);
    return this.setTotal - before;
  }

  /** Clear bits [start, end); returns how many were cleared. */
  clearRange(start: number, end: number): number {
    const before = this.setTotal;
    this.apply(start, end, false);
    return before - this.setTotal;
  }

  test(bit: number): boolean {
    return ((this.words[bit >>> 5]! >>> (bit & 31)) & 1) === 1;
  }

  /** Whether any bit in [start, end) is set. */
  anySet(start: number, end: number): boolean {
    const next = this.nextSet(start);
    return next !== -1 && next < end;
  }

  /** The first set bit at or after `from`, or -1. Skips clean pages and zero words. */
  nextSet(from: number): number {
    if (from >= this.bitCount) return -1;
    let index = from >>> 5;
    let word = this.words[index]! & ((0xffffffff << (from & 31)) >>> 0);
    for (;;) {
      if (word !== 0) {
        const bit = index * 32 + (31 - Math.clz32(word & -word));
        return bit < this.bitCount ? bit : -1;
      }
      index++;
      if (index >= this.words.length) return -1;
      if (index % bitmapPageWords === 0) {
        let page = index / bitmapPageWords;
        while (page < this.pageCount && this.pageSetCounts[page] === 0) page++;
        if (page >= this.pageCount) return -1;
        index = Math.max(index, page * bitmapPageWords);
      }
      word = this.words[index]!;
    }
  }

  /** The first clear bit at or after `from` (or bitCount). */
  nextClear(from: number): number {
    if (from >= this.bitCount) return this.bitCount;
    let index = from >>> 5;
    let word = ~this.words[index]! & ((0xffffffff << (from & 31)) >>> 0);
    for (;;) {
      if (word !== 0) {
        const bit = index * 32 + (31 - Math.clz32(word & -word));
        return Math.min(bit, this.bitCount);
      }
      index++;
      if (index >= this.words.length) return this.bitCount;
      word = ~this.words[index]! >>> 0;
    }
  }

  /** Runs of set bits starting at or after `from`, at most `maxRuns` of them, each at most `maxLength` long. */
  runs(from = 0, maxRuns = Infinity, maxLength = Infinity): BitRun[] {
    const runs: BitRun[] = [];
    let bit = this.nextSet(from);
    while (bit !== -1 && runs.length < maxRuns) {
      const end = Math.min(this.nextClear(bit), bit + maxLength);
      runs.push({ start: bit, length: end - bit });
      bit = this.nextSet(end);
    }
    return runs;
  }

  setRuns(runs: readonly BitRun[]): number {
    let added = 0;
    for (const run of runs) added += this.setRange(run.start, run.start + run.length);
    return added;
  }

  clearRuns(runs: readonly BitRun[]): void {
    for (const run of runs) this.clearRange(run.start, run.start + run.length);
  }

  setAll(): void {
    this.setRange(0, this.bitCount);
  }

  /** Pages changed since they were last taken for writeback, in order; their flags are reset. */
  takeDirtyPages(): number[] {
    const pages: number[] = [];
    if (this.dirtyPageTotal === 0) return pages;
    for (let page = 0; page < this.pageCount; page++) {
      if (this.pageDirty[page] === 1) {
        pages.push(page);
        this.pageDirty[page] = 0;
      }
    }
    this.dirtyPageTotal = 0;
    return pages;
  }

  /** Mark pages for writeback again (a writeback failed). */
  markPagesDirty(pages: readonly number[]): void {
    for (const page of pages) this.touchPage(page);
  }

  /** All pages need writing (a new or reformatted metadata area). */
  markAllPagesDirty(): void {
    for (let page = 0; page < this.pageCount; page++) this.touchPage(page);
  }

  /** The words of a page as stored on disk (the last page padded with zeroes). */
  pageWords(page: number): Uint32Array {
    const words = this.words.subarray(page * bitmapPageWords, (page + 1) * bitmapPageWords);
    if (words.length === bitmapPageWords) return words;
    const padded = new Uint32Array(bitmapPageWords);
    padded.set(words);
    return padded;
  }

  /** Load a page read from disk; bits past the end of the bitmap are ignored. Does not mark it dirty. */
  loadPage(page: number, words: Uint32Array): void {
    assert(words.length === bitmapPageWords && page < this.pageCount, "bitmap page shape");
    let count = 0;
    const base = page * bitmapPageWords;
    const wordsHere = Math.min(bitmapPageWords, this.words.length - base);
    for (let index = 0; index < wordsHere; index++) {
      let value = words[index]!;
      const firstBit = (base + index) * 32;
      if (firstBit >= this.bitCount) value = 0;
      else if (firstBit + 32 > this.bitCount) value = (value & ((1 << (this.bitCount - firstBit)) - 1)) >>> 0;
      const old = this.words[base + index]!;
      this.setTotal += popcount(value) - popcount(old);
      this.words[base + index] = value;
      count += popcount(value);
    }
    this.pageSetCounts[page] = count;
  }

  /** Set every bit of a page (its on-disk copy was torn or lost: assume all of it differs). */
  fillPage(page: number): void {
    const start = page * bitmapPageBits;
    this.setRange(start, Math.min(this.bitCount, start + bitmapPageBits));
  }
}
