// Proves the witness disk driver (src/quorum/disk.ts) on a real file: sectors written are read back;
// the file is open with O_DIRECT and O_DSYNC (checked in /proc, not assumed); IO errors come back as
// errno names and a missing witness that appears later is used without a restart; a deadline turns a
// request that never answers into an error. The stall of a real hung witness is proven on the lab's
// FUSE witness (test/integration/witness-lab.test.ts).
import { afterAll, expect, test } from "bun:test";
import fs from "node:fs";
import os from "node:os";
import path from "node:path";
import { witnessRecordBytes } from "../../src/constants.ts";
import { DirectWitnessDisk, withDeadline } from "../../src/quorum/disk.ts";

const dir = fs.mkdtempSync(path.join(os.tmpdir(), "tandem-witness-disk-"));
afterAll(() => fs.rmSync(dir, { recursive: true, force: true }));

function read(disk: DirectWitnessDisk, sector: number, count: number): Promise<Uint8Array> {
  return withDeadline("read", 5_000, (done) => disk.read(sector, count, done));
}

/**
 * The error a request ends with. (Awaiting through `expect(promise).rejects` stalls the delivery of
 * Worker messages in this Bun version, so the tests await plainly.)
 */
async function failureOf(promise: Promise<unknown>): Promise<string> {
  try {
    await promise;
  } catch (error) {
    return (error as Error).message;
  }
  return "no error";
}

function write(disk: DirectWitnessDisk, sector: number, bytes: Uint8Array): Promise<void> {
  return withDeadline("write", 5_000, (done) => disk.write(sector, bytes, (error) => done(error)));
}

test("sectors written are read back, through O_DIRECT|O_DSYNC", async () => {
  const file = path.join(dir, "witness.img");
  fs.writeFileSync(file, new Uint8Array(64 * 1024));
  const disk = new DirectWitnessDisk(file);
  try {
    const sector = new Uint8Array(witnessRecordBytes).fill(0xa5);
    sector[0] = 1;
    await write(disk, 3, sector);
    const back = await read(disk, 2, 3);
    expect(back.length).toBe(3 * witnessRecordBytes);
    expect(back.subarray(0, witnessRecordBytes).every((byte) => byte === 0)).toBe(true);
    expect(back.subarray(witnessRecordBytes, 2 * witnessRecordBytes)).toEqual(sector);
    expect(fs.readFileSync(file).subarray(3 * witnessRecordBytes, 4 * witnessRecordBytes)).toEqual(Buffer.from(sector));
    // The worker's descriptor for the file carries O_DIRECT (040000) and O_DSYNC (010000).
    const fds = fs.readdirSync("/proc/self/fd").filter((fd) => {
      try {
        return fs.readlinkSync(`/proc/self/fd/${fd}`) === file;
      } catch {
        return false;
      }
    });
    expect(fds.length).toBe(1);
    const flags = parseInt(/flags:\s+(\d+)/.exec(fs.readFileSync(`/proc/self/fdinfo/${fds[0]}`, "utf8"))![1]!, 8);
    expect(flags & 0o40000).toBe(0o40000);
    expect(flags & 0o10000).toBe(0o10000);
  } finally {
    disk.close();
  }
});

test("a missing witness fails with its errno, and is used once it appears", async () => {
  const file = path.join(dir, "later.img");
  const disk = new DirectWitnessDisk(file);
  try {
    expect(await failureOf(read(disk, 0, 1))).toBe("read: ENOENT");
    fs.writeFileSync(file, new Uint8Array(8 * witnessRecordBytes).fill(7));
    expect((await read(disk, 1, 1))[100]).toBe(7);
    expect(await failureOf(read(disk, 8, 1))).toBe("read: read past the end of the witness (the path is smaller than the witness area)");
  } finally {
    disk.close();
  }
});

test("a request that never answers becomes an error at its deadline", async () => {
  expect(await failureOf(withDeadline("read", 50, () => {}))).toBe("read: no answer within 50 ms (the witness hangs)");
});
