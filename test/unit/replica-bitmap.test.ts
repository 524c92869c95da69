// Proves the dirty bitmap against a plain boolean-array model under thousands of seeded random
// range operations (set counts, next set/clear, runs), its page bookkeeping (dirty pages, page
// load ignoring bits past the end), and the memory bound of DESIGN.md §3 through the granule choice.
import { expect, test } from "bun:test";
import { bitmapPageBits, DirtyBitmap } from "../../src/replica/bitmap.ts";
import { granuleBytesFor } from "../../src/replica/metadata-format.ts";
import { replicaBitmapBytesPerTiBMax, replicaBitmapGranuleBytesMax, replicaBitmapGranuleBytesMin, units } from "../../src/constants.ts";

function rng(seed: number) {
  let state = seed >>> 0;
  return () => {
    state = (state + 0x6d2b79f5) >>> 0;
    let t = state;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 2 ** 32;
  };
}

test("random range operations agree with a boolean-array model", () => {
  for (const bitCount of [1, 31, 32, 33, 1000, bitmapPageBits + 77, 3 * bitmapPageBits]) {
    const random = rng(bitCount);
    const bitmap = new DirtyBitmap(bitCount);
    const model = new Array<boolean>(bitCount).fill(false);
    for (let step = 0; step < 400; step++) {
      const start = Math.floor(random() * bitCount);
      const end = Math.min(bitCount, start + 1 + Math.floor(random() * (random() < 0.2 ? bitCount : 70)));
      const set = random() < 0.55;
      let changed = 0;
      for (let bit = start; bit < end; bit++) {
        if (model[bit] !== set) changed++;
        model[bit] = set;
      }
      expect(set ? bitmap.setRange(start, end) : bitmap.clearRange(start, end)).toBe(changed);
      expect(bitmap.setCount).toBe(model.filter(Boolean).length);
      const from = Math.floor(random() * bitCount);
      const nextSet = model.indexOf(true, from);
      expect(bitmap.nextSet(from)).toBe(nextSet);
      const nextClear = model.indexOf(false, from);
      expect(bitmap.nextClear(from)).toBe(nextClear === -1 ? bitCount : nextClear);
    }
    const runs = bitmap.runs();
    const rebuilt = new Array<boolean>(bitCount).fill(false);
    for (const run of runs) for (let bit = run.start; bit < run.start + run.length; bit++) rebuilt[bit] = true;
    expect(rebuilt).toEqual(model);
    for (let index = 1; index < runs.length; index++) expect(runs[index]!.start).toBeGreaterThan(runs[index - 1]!.start + runs[index - 1]!.length);
  }
});

test("runs respect their count and length limits", () => {
  const bitmap = new DirtyBitmap(1000);
  bitmap.setRange(10, 100);
  bitmap.setRange(200, 210);
  expect(bitmap.runs(0, 1)).toEqual([{ start: 10, length: 90 }]);
  expect(bitmap.runs(0, Infinity, 50)).toEqual([{ start: 10, length: 50 }, { start: 60, length: 40 }, { start: 200, length: 10 }]);
  expect(bitmap.runs(150)).toEqual([{ start: 200, length: 10 }]);
});

test("changed pages are handed out once for writeback", () => {
  const bitmap = new DirtyBitmap(3 * bitmapPageBits);
  bitmap.setRange(5, 6);
  bitmap.setRange(2 * bitmapPageBits + 1, 2 * bitmapPageBits + 2);
  expect(bitmap.takeDirtyPages()).toEqual([0, 2]);
  expect(bitmap.takeDirtyPages()).toEqual([]);
  bitmap.setRange(5, 6); // already set: no change
  expect(bitmap.dirtyPages).toBe(0);
  bitmap.clearRange(5, 6);
  expect(bitmap.takeDirtyPages()).toEqual([0]);
});

test("loading a page ignores bits past the end and keeps the count", () => {
  const bitmap = new DirtyBitmap(40);
  const words = new Uint32Array(bitmapPageBits / 32).fill(0xffffffff);
  bitmap.loadPage(0, words);
  expect(bitmap.setCount).toBe(40);
  expect(bitmap.nextSet(40)).toBe(-1);
  expect(bitmap.dirtyPages).toBe(0);
  bitmap.fillPage(0);
  expect(bitmap.setCount).toBe(40);
});

test("a 1 TiB volume's bitmap stays within 32 MiB; larger volumes get coarser granules", () => {
  const granule = (size: number) => granuleBytesFor(size, replicaBitmapGranuleBytesMin, replicaBitmapGranuleBytesMax, replicaBitmapBytesPerTiBMax);
  expect(granule(units.TiB)).toBe(4096);
  const bitmap = new DirtyBitmap(units.TiB / granule(units.TiB));
  expect(bitmap.words.byteLength).toBeLessThanOrEqual(32 * units.MiB);
  expect(granule(256 * units.TiB)).toBe(64 * 1024);
  expect((256 * units.TiB) / granule(256 * units.TiB)).toBeLessThanOrEqual(2 ** 32);
});
