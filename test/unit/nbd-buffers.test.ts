// Proves the NBD driver's buffer allocator gives O_DIRECT-ready memory: the data offset of every
// buffer is 4 KiB aligned in memory, buffers of any size (carved from slabs or allocated alone)
// never overlap, every byte of each can be written and read back as its own, and buffers for reads
// come zeroed.
import { expect, test } from "bun:test";
import { ptr } from "bun:ffi";
import { AlignedBuffers } from "../../src/node/export/nbd/server.ts";

test("data offsets are 4 KiB aligned and buffers never share bytes", () => {
  const buffers = new AlignedBuffers();
  const handed: { buffer: Uint8Array; fill: number }[] = [];
  const sizes = [28 + 4096, 16 + 512, 28 + 65536, 4096, 1, 28 + 1048576, 16 + 300000, 28 + 8192];
  for (let index = 0; index < 400; index++) {
    const bytes = sizes[index % sizes.length]!;
    const alignedAt = bytes > 28 ? (index % 2 ? 28 : 16) : 0;
    const buffer = buffers.allocate(bytes, alignedAt);
    expect(buffer.length).toBe(bytes);
    expect((ptr(buffer) + alignedAt) % 4096).toBe(0);
    buffer.fill(index & 0xff);
    handed.push({ buffer, fill: index & 0xff });
  }
  for (const { buffer, fill } of handed) expect(buffer.every((byte) => byte === fill)).toBe(true);
});

test("large buffers come zeroed and aligned even where dropped buffers held data", () => {
  const buffers = new AlignedBuffers();
  const bytes = 16 + 300_000; // above the slab share: allocated alone
  for (let round = 0; round < 10; round++) {
    // Fill and drop buffers so the allocator has dirty memory to hand out again.
    let dirty: Uint8Array[] = [];
    for (let index = 0; index < 32; index++) {
      const used = buffers.allocate(bytes, 16);
      expect(used.length).toBe(bytes);
      expect((ptr(used) + 16) % 4096).toBe(0);
      used.fill(0xa5);
      dirty.push(used);
    }
    dirty = [];
    Bun.gc(true);
    for (let index = 0; index < 32; index++) {
      const read = buffers.allocate(bytes, 16);
      expect(read.every((byte) => byte === 0)).toBe(true);
    }
  }
});
