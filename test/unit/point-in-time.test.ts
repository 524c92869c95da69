// The point-in-time layer (src/node/block/point-in-time.ts) over a memory layer: after `begin` the
// view keeps the bytes as they were while writes, trims and zeroes change the volume below; only
// the first write to a chunk preserves it; a write issued during a view read of the same chunk leaves
// the view its old bytes (the range lock that orders the two is not pinned by a deterministic
// schedule here); a failing side store loses the view (EIO) but never the volume's writes; and
// without a session the layer is a plain pass-through.
import { describe, expect, test } from "bun:test";
import { BlockError } from "../../src/common/errors.ts";
import { copyOutPreserveChunkBytes as chunk } from "../../src/constants.ts";
import { MemoryLayer } from "../../src/node/block/memory.ts";
import { PointInTimeLayer } from "../../src/node/block/point-in-time.ts";
import { until } from "../helpers/until.ts";

const size = 16 * chunk;
const filled = (byte: number, length: number) => new Uint8Array(length).fill(byte);

async function read(layer: { read(offset: number, target: Uint8Array): Promise<void> }, offset: number, length: number): Promise<Uint8Array> {
  const target = new Uint8Array(length);
  await layer.read(offset, target);
  return target;
}

describe("point-in-time view", () => {
  test("writes, trims and zeroes after the point change the volume, not the view", async () => {
    const below = new MemoryLayer(size);
    await below.write(0, filled(1, size));
    const layer = new PointInTimeLayer(below);
    layer.begin(new MemoryLayer(size));
    await layer.write(chunk / 2, filled(2, chunk)); // spans chunks 0 and 1
    await layer.zero(4 * chunk, chunk);
    await layer.trim(8 * chunk, 2 * chunk);
    expect(await read(layer, chunk / 2, 4)).toEqual(filled(2, 4));
    const view = layer.view();
    expect(await read(view, 0, size)).toEqual(filled(1, size));
    expect(layer.preservedBytes()).toBe(5 * chunk);
    await layer.write(0, filled(3, 16)); // chunk 0 again: already preserved
    expect(layer.preservedBytes()).toBe(5 * chunk);
    expect(await read(view, 0, 16)).toEqual(filled(1, 16));
    await expect(view.write(0, filled(9, 512))).rejects.toMatchObject({ code: "EPERM" });
  });

  test("a write issued while a view read of the same chunk is in flight: the view keeps the old bytes, the volume gets the new", async () => {
    // The view's read of chunk 3 is held inside the layer below until the write has been issued.
    const below = new MemoryLayer(size);
    await below.write(0, filled(1, size));
    let holding: (() => void) | undefined;
    const plainRead = below.read.bind(below);
    below.read = async (offset, target) => {
      if (!holding && offset === 3 * chunk) await new Promise<void>((resolve) => (holding = resolve));
      return plainRead(offset, target);
    };
    const layer = new PointInTimeLayer(below);
    layer.begin(new MemoryLayer(size));
    const viewRead = read(layer.view(), 3 * chunk, chunk);
    await until("the view read to reach the layer below", () => holding !== undefined);
    const write = layer.write(3 * chunk, filled(7, chunk));
    await Promise.resolve();
    holding!();
    expect(await viewRead).toEqual(filled(1, chunk));
    await write;
    expect(await read(layer.view(), 3 * chunk, chunk)).toEqual(filled(1, chunk));
    expect(await read(layer, 3 * chunk, chunk)).toEqual(filled(7, chunk));
  });

  test("a store that fails loses the view (EIO), never the volume's write", async () => {
    const below = new MemoryLayer(size);
    const store = new MemoryLayer(size);
    store.write = () => Promise.reject(new BlockError("EIO", "store broke"));
    const layer = new PointInTimeLayer(below);
    layer.begin(store);
    await layer.write(0, filled(5, chunk));
    expect(await read(layer, 0, chunk)).toEqual(filled(5, chunk));
    await expect(read(layer.view(), 0, 512)).rejects.toMatchObject({ code: "EIO" });
  });

  test("without a session it passes through; end returns the store and stops preserving", async () => {
    const below = new MemoryLayer(size);
    const layer = new PointInTimeLayer(below);
    await layer.write(0, filled(4, chunk));
    expect(layer.preservedBytes()).toBe(0);
    const store = new MemoryLayer(size);
    layer.begin(store);
    expect(() => layer.begin(new MemoryLayer(size))).toThrow("already open");
    expect(layer.end()).toBe(store);
    await layer.write(0, filled(6, chunk));
    expect(layer.preservedBytes()).toBe(0);
    await expect(read(layer.view(), 0, 512)).rejects.toMatchObject({ code: "ESHUTDOWN" });
  });
});
