// The buffered (page cache) file layer's writes: the common case, a write without FUA, is one
// pwrite done before the call returns; it must still answer through its promise, with the same
// errors as the general path (EPERM on a read-only layer, ESHUTDOWN once closed), never by
// throwing at the caller. FUA writes take the general path and reach the file too. A large write
// goes to the kernel in pieces (constants.ts, pageCacheWritePieceBytes) and still lands whole; a
// payload in pieces (an NBD WRITE as it arrived) is written from its pieces, never joined.
import { afterAll, expect, spyOn, test } from "bun:test";
import fs from "node:fs";
import os from "node:os";
import path from "node:path";
import { Pieces } from "../../src/common/bytes.ts";
import { pageCacheWritePieceBytes } from "../../src/constants.ts";
import { FileLayer } from "../../src/node/block/file.ts";

const directory = fs.mkdtempSync(path.join(os.tmpdir(), "tandem-file-layer-"));
afterAll(() => fs.rmSync(directory, { recursive: true, force: true }));

function backing(name: string): string {
  const file = path.join(directory, name);
  FileLayer.createSparse(file, 1024 * 1024);
  return file;
}

test("writes with and without FUA land in the file and read back", async () => {
  const file = backing("rw.img");
  const layer = FileLayer.open({ path: file });
  await layer.write(4096, new Uint8Array(4096).fill(0x11));
  await layer.write(8192 + 5, new Uint8Array(100).fill(0x22), { fua: true });
  const back = new Uint8Array(4096);
  await layer.read(4096, back);
  expect(back.every((byte) => byte === 0x11)).toBe(true);
  await layer.close();
  const bytes = fs.readFileSync(file);
  expect(bytes.subarray(4096, 8192).every((byte) => byte === 0x11)).toBe(true);
  expect(bytes.subarray(8192 + 5, 8192 + 105).every((byte) => byte === 0x22)).toBe(true);
  expect(bytes[8192 + 4]).toBe(0);
});

test("a large page-cache write reaches the kernel in pieces that end on piece boundaries, and reads back whole", async () => {
  const file = backing("pieces.img");
  const layer = FileLayer.open({ path: file });
  const offset = 12_345;
  const source = new Uint8Array(6 * pageCacheWritePieceBytes + 300);
  for (let index = 0; index < source.length; index++) source[index] = (index * 7 + 3) & 0xff;
  const pieces: { position: number; length: number }[] = [];
  const realWriteSync = fs.writeSync;
  const recording = spyOn(fs, "writeSync").mockImplementation(((fd: number, buffer: Uint8Array, bufferOffset: number, length: number, position: number) => {
    pieces.push({ position, length });
    return realWriteSync(fd, buffer, bufferOffset, length, position);
  }) as typeof fs.writeSync);
  try {
    await layer.write(offset, source);
    await layer.write(offset + source.length, new Uint8Array(3 * pageCacheWritePieceBytes).fill(0x5a), { fua: true });
  } finally {
    recording.mockRestore();
  }
  expect(pieces.length).toBeGreaterThanOrEqual(7 + 3);
  let next = offset;
  for (const piece of pieces) {
    expect(piece.position).toBe(next);
    expect(piece.length).toBeGreaterThan(0);
    expect(Math.floor(piece.position / pageCacheWritePieceBytes)).toBe(Math.floor((piece.position + piece.length - 1) / pageCacheWritePieceBytes));
    next += piece.length;
  }
  expect(next).toBe(offset + source.length + 3 * pageCacheWritePieceBytes);
  const back = new Uint8Array(source.length);
  await layer.read(offset, back);
  expect(Buffer.from(back).equals(Buffer.from(source))).toBe(true);
  await layer.close();
  const bytes = fs.readFileSync(file);
  expect(Buffer.from(bytes.subarray(offset, offset + source.length)).equals(Buffer.from(source))).toBe(true);
  expect(bytes.subarray(offset + source.length, offset + source.length + 3 * pageCacheWritePieceBytes).every((byte) => byte === 0x5a)).toBe(true);
});

test("a payload in pieces is written from the pieces themselves, with and without FUA, and lands whole", async () => {
  const file = backing("payload-pieces.img");
  const layer = FileLayer.open({ path: file });
  const parts = [5000, 70_001, 3, pageCacheWritePieceBytes + 17].map((length, index) => new Uint8Array(length).map((_, at) => (index * 41 + at) & 0xff));
  const whole = Buffer.concat(parts);
  const offset = 12_345;
  const sources = new Set<ArrayBufferLike>();
  const realWriteSync = fs.writeSync;
  const recording = spyOn(fs, "writeSync").mockImplementation(((fd: number, buffer: Uint8Array, ...rest: [number, number, number]) => {
    sources.add(buffer.buffer);
    return realWriteSync(fd, buffer, ...rest);
  }) as typeof fs.writeSync);
  try {
    await layer.write(offset, new Pieces(parts));
    await layer.write(offset + whole.length, new Pieces(parts), { fua: true });
  } finally {
    recording.mockRestore();
  }
  // Every pwrite took its bytes from one of the parts: nothing was copied together first.
  expect([...sources].every((buffer) => parts.some((part) => part.buffer === buffer))).toBe(true);
  await layer.close();
  const bytes = fs.readFileSync(file);
  expect(Buffer.from(bytes.subarray(offset, offset + whole.length)).equals(whole)).toBe(true);
  expect(Buffer.from(bytes.subarray(offset + whole.length, offset + 2 * whole.length)).equals(whole)).toBe(true);
  expect(bytes[offset - 1]).toBe(0);
  expect(bytes[offset + 2 * whole.length]).toBe(0);
});

test("a write to a read-only layer, or to a closed one, is a rejected promise with its code", async () => {
  const readOnly = FileLayer.open({ path: backing("ro.img"), readOnly: true });
  let thrown: unknown;
  let promise: Promise<void> | undefined;
  try {
    promise = readOnly.write(0, new Uint8Array(512));
  } catch (error) {
    thrown = error;
  }
  expect(thrown).toBeUndefined();
  await expect(promise!).rejects.toMatchObject({ code: "EPERM" });
  await readOnly.close();

  const closed = FileLayer.open({ path: backing("closed.img") });
  await closed.close();
  await expect(closed.write(0, new Uint8Array(512))).rejects.toMatchObject({ code: "ESHUTDOWN" });
});
