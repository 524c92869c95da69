// Proves the on-disk metadata format: every record round-trips; the newer of the two superblock
// slots wins, and a torn newer slot falls back to the older one; the activity-log ring yields its
// newest valid transaction; a torn bitmap page is taken as all dirty (never as clean); a blank
// area is "blank"; and an area whose superblocks are both damaged is refused, not guessed.
import { describe, expect, test } from "bun:test";
import { DirtyBitmap } from "../../src/replica/bitmap.ts";
import {
  activityLogWrite,
  bitmapPageWrite,
  decodeSuperblock,
  encodeSuperblock,
  loadMetadata,
  metadataLayout,
  type MetadataWrite,
  type Superblock,
  superblockWrite,
} from "../../src/replica/metadata-format.ts";
import { DecodeError } from "../../src/replica/wire.ts";
import { DataState } from "../../src/replica/model.ts";

const sizeBytes = 1024 * 1024 * 1024;
const granuleBytes = 4096;
const layout = metadataLayout(sizeBytes, granuleBytes);

function superblock(sequence: number, overrides: Partial<Superblock> = {}): Superblock {
  return {
    sequence,
    volumeId: 3,
    sizeBytes,
    granuleBytes,
    activityLogExtentBytes: 4 << 20,
    dataState: DataState.Consistent,
    cleanShutdown: false,
    generations: { current: 0xabcn, bitmapBase: 0x12n, history: [1n, 2n] },
    resync: { active: true, target: true, bitsTotal: 100, bitsDone: 40 },
    rewritePending: true,
    ...overrides,
  };
}

function area(writes: MetadataWrite[]): Uint8Array {
  const bytes = new Uint8Array(layout.totalBytes);
  for (const write of writes) bytes.set(write.bytes, write.offset);
  return bytes;
}

describe("records", () => {
  test("a superblock round-trips", () => {
    const record = superblock(7);
    expect(decodeSuperblock(encodeSuperblock(record))).toEqual(record);
  });

  test("any flipped bit makes a superblock invalid", () => {
    const encoded = encodeSuperblock(superblock(7));
    for (const offset of [0, 9, 40, 90, 100]) {
      const damaged = encoded.slice();
      damaged[offset] = damaged[offset]! ^ 0x10;
      expect(typeof decodeSuperblock(damaged)).toBe("string");
    }
  });
});

describe("loading", () => {
  test("a blank area is new; both superblocks damaged is refused", () => {
    expect(loadMetadata(new Uint8Array(layout.totalBytes))).toBe("blank");
    const bytes = area([superblockWrite(superblock(4)), superblockWrite(superblock(5))]);
    bytes[10] = bytes[10]! ^ 1;
    bytes[4096 + 10] = bytes[4096 + 10]! ^ 1;
    expect(() => loadMetadata(bytes)).toThrow(DecodeError);
  });

  test("the newest superblock wins; a torn newest falls back to the older one", () => {
    const writes = [superblockWrite(superblock(4, { generations: { current: 4n, bitmapBase: 0n, history: [] } })), superblockWrite(superblock(5, { generations: { current: 5n, bitmapBase: 0n, history: [] } }))];
    const loaded = loadMetadata(area(writes));
    if (loaded === "blank") throw new Error("blank");
    expect(loaded.superblock.generations.current).toBe(5n);
    const torn = area(writes);
    torn.fill(0, 4096 + 40, 4096 * 2); // slot 1 (sequence 5) torn: only its first 40 bytes reached the disk
    const fallback = loadMetadata(torn);
    if (fallback === "blank") throw new Error("blank");
    expect(fallback.superblock.generations.current).toBe(4n);
    expect(fallback.findings.join()).toMatch(/superblock slot invalid/);
  });

  test("the activity-log ring gives its newest valid transaction", () => {
    const writes = [superblockWrite(superblock(1))];
    for (let sequence = 1; sequence <= 11; sequence++) writes.push(activityLogWrite(layout, { sequence, extentBytes: 4 << 20, extents: [sequence, sequence + 1] }));
    const bytes = area(writes);
    let loaded = loadMetadata(bytes);
    if (loaded === "blank") throw new Error("blank");
    expect(loaded.activityLog).toEqual({ sequence: 11, extentBytes: 4 << 20, extents: [11, 12] });
    const slot11 = layout.activityLogOffset + (11 % 8) * 4096;
    bytes[slot11 + 30] = bytes[slot11 + 30]! ^ 0xff; // torn transaction 11: the log is transaction 10
    loaded = loadMetadata(bytes);
    if (loaded === "blank") throw new Error("blank");
    expect(loaded.activityLog?.sequence).toBe(10);
  });

  test("bitmap pages load; a torn page is all dirty, an unwritten page all clean", () => {
    const bitmap = new DirtyBitmap(layout.bitCount);
    bitmap.setRange(10, 20);
    bitmap.setRange(layout.bitCount - 5, layout.bitCount);
    const pages = bitmap.takeDirtyPages();
    const writes = [superblockWrite(superblock(1)), ...pages.map((page) => bitmapPageWrite(layout, bitmap, page))];
    const bytes = area(writes);
    let loaded = loadMetadata(bytes);
    if (loaded === "blank") throw new Error("blank");
    expect(loaded.bitmap.runs()).toEqual(bitmap.runs());
    const lastPage = layout.pageCount - 1;
    bytes[layout.bitmapOffset + lastPage * 4096 + 100] = bytes[layout.bitmapOffset + lastPage * 4096 + 100]! ^ 1;
    loaded = loadMetadata(bytes);
    if (loaded === "blank") throw new Error("blank");
    const pageStart = lastPage * 32640;
    expect(loaded.bitmap.setCount).toBe(10 + (layout.bitCount - pageStart));
    expect(loaded.findings.join()).toMatch(/all its regions taken as dirty/);
  });
});
