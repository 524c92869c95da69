// Proves the direct (O_DIRECT) file layer on both IO engines, io_uring and the thread pool (forced
// by preference), on real files: random reads and writes of random sizes, aligned and not, some
// with the data in pieces (an NBD payload as received, copied together into an aligned buffer), many in
// flight at once, checked byte for byte against a copy kept in memory; requests that do not fit the
// ring at once (more than its entries) all complete; a medium that fails (qemu-storage-daemon's
// FUSE export of a qcow2 image over blkdebug, which fails every data read and the writes of one
// sector) gives EIO for exactly those requests and the layer keeps serving; closing with IO in
// flight lets that IO finish and refuses what comes after. It also proves the fallback: when the
// kernel refuses the ring, `auto` runs on the thread pool and says why, `io_uring` refuses to open.
import { afterAll, describe, expect, test } from "bun:test";
import fs from "node:fs";
import os from "node:os";
import path from "node:path";
import { type Payload, payloadOf } from "../../src/common/bytes.ts";
import { BlockError, TandemError } from "../../src/common/errors.ts";
import { ioUringEntries, ioUringPollMicrosDefault } from "../../src/constants.ts";
import { FileLayer, alignedBuffer } from "../../src/node/block/file.ts";
import { acquireIoEngine, ioEnginePreferenceFromEnvironment, ioUringPollFromEnvironment } from "../../src/node/block/io-engine.ts";
import { IoUring } from "../../src/node/block/io-uring.ts";

const KiB = 1024;
const MiB = 1024 * KiB;
const directory = fs.mkdtempSync(path.join(os.tmpdir(), "tandem-direct-io-"));
afterAll(() => fs.rmSync(directory, { recursive: true, force: true }));

let fileCounter = 0;
function newBacking(sizeBytes: number): string {
  const file = path.join(directory, `disk-${fileCounter++}.img`);
  FileLayer.createSparse(file, sizeBytes);
  return file;
}

/** A deterministic pseudo-random sequence, so a failure can be replayed from the printed seed. */
function generator(seed: number): () => number {
  let state = seed >>> 0 || 1;
  return () => {
    state ^= state << 13;
    state ^= state >>> 17;
    state ^= state << 5;
    return (state >>> 0) / 0x1_0000_0000;
  };
}

/** `bytes` cut at up to three random places into Pieces (a single buffer when no cut lands inside). */
function inPieces(bytes: Uint8Array, random: () => number): Payload {
  const cuts = [0, ...Array.from({ length: 3 }, () => Math.floor(random() * bytes.length)), bytes.length].sort((a, b) => a - b);
  return payloadOf(cuts.slice(1).map((end, index) => bytes.subarray(cuts[index]!, end)));
}

function fillRandom(bytes: Uint8Array, random: () => number): void {
  for (let index = 0; index < bytes.length; index++) bytes[index] = (random() * 256) | 0;
}

const engines = ["io_uring", "threadpool"] as const;

describe.each(engines)("direct file layer on %s", (engine) => {
  test("runs on the engine asked for", async () => {
    const layer = FileLayer.open({ path: newBacking(1 * MiB), direct: true, ioEngine: engine });
    try {
      expect(layer.ioEngineName).toBe(engine);
      expect(layer.ioEngineFallbackReason).toBeUndefined();
    } finally {
      await layer.close();
    }
  });

  test("random reads and writes of random sizes and alignments, many in flight, read back byte for byte", async () => {
    const sizeBytes = 16 * MiB;
    const layer = FileLayer.open({ path: newBacking(sizeBytes), direct: true, ioEngine: engine });
    const shadow = new Uint8Array(sizeBytes);
    const seed = Date.now() % 100_000;
    const random = generator(seed);
    try {
      for (let batch = 0; batch < 40; batch++) {
        // One batch: up to 48 writes to ranges that do not overlap each other, all in flight at once
        // (overlapping writes in flight together have no defined order, on a disk as here).
        const taken: [number, number][] = [];
        const writes: Promise<void>[] = [];
        for (let attempt = 0; attempt < 48; attempt++) {
          const aligned = random() < 0.5;
          const length = aligned ? (1 + Math.floor(random() * 32)) * 4 * KiB : 1 + Math.floor(random() * 70 * KiB);
          const offset = aligned ? Math.floor(random() * ((sizeBytes - length) / (4 * KiB))) * 4 * KiB : Math.floor(random() * (sizeBytes - length));
          // Unaligned requests take their whole 4 KiB blocks under the range lock: keep blocks apart too.
          const start = offset - (offset % (4 * KiB));
          const end = Math.ceil((offset + length) / (4 * KiB)) * 4 * KiB;
          if (taken.some(([from, to]) => start < to && from < end)) continue;
          taken.push([start, end]);
          const source = aligned && random() < 0.8 ? alignedBuffer(length) : new Uint8Array(length + 1).subarray(1);
          fillRandom(source, random);
          shadow.set(source, offset);
          // A third of them in pieces, as an NBD payload arrives: the layer copies them together.
          writes.push(layer.write(offset, random() < 0.33 ? inPieces(source, random) : source));
        }
        await Promise.all(writes);
        const reads: Promise<void>[] = [];
        for (let index = 0; index < 32; index++) {
          const length = 1 + Math.floor(random() * 64 * KiB);
          const offset = Math.floor(random() * (sizeBytes - length));
          const target = random() < 0.5 ? alignedBuffer(length) : new Uint8Array(length + 3).subarray(3);
          reads.push(
            layer.read(offset, target).then(() => {
              if (!Buffer.from(target).equals(shadow.subarray(offset, offset + length))) throw new Error(`seed ${seed}: read ${offset}+${length} differs from what was written`);
            }),
          );
        }
        await Promise.all(reads);
      }
      const whole = alignedBuffer(sizeBytes);
      await layer.read(0, whole);
      expect(Buffer.from(whole).equals(shadow)).toBe(true);
    } finally {
      await layer.close();
    }
    // And what reached the file is the same through another descriptor, without O_DIRECT.
    expect(Buffer.from(fs.readFileSync(layer.path)).equals(shadow)).toBe(true);
  }, 120_000);

  test("unaligned offsets, lengths and buffers (the bounce path) keep the neighbouring bytes", async () => {
    const layer = FileLayer.open({ path: newBacking(1 * MiB), direct: true, ioEngine: engine });
    try {
      const background = alignedBuffer(64 * KiB);
      background.fill(0xaa);
      await layer.write(0, background);
      const cases: [number, number][] = [
        [1, 1], // one byte inside a block
        [4095, 2], // across a block boundary
        [4096 - 7, 4096 + 14], // head and tail partial, whole block between
        [8192, 100], // aligned start, partial tail
        [12288 + 50, 4096 - 50], // partial head, aligned end
      ];
      const expected = new Uint8Array(background);
      for (const [index, [offset, length]] of cases.entries()) {
        const source = new Uint8Array(length + 1).subarray(1).fill(index + 1);
        await layer.write(offset, source);
        expected.fill(index + 1, offset, offset + length);
      }
      const back = new Uint8Array(64 * KiB + 5).subarray(5);
      await layer.read(0, back);
      expect(Buffer.from(back).equals(expected)).toBe(true);
      const pieces: [number, number[]][] = [
        [8190, [3, 3, 4]],
        [12336, [0xaa, 0xaa, 5]],
        [0, [0xaa, 1, 0xaa]],
      ];
      for (const [offset, bytes] of pieces) {
        const piece = new Uint8Array(3);
        await layer.read(offset, piece);
        expect({ offset, bytes: Array.from(piece) }).toEqual({ offset, bytes });
      }
    } finally {
      await layer.close();
    }
  });

  test(`more requests than the ring holds (${3 * ioUringEntries}) all complete with the right data`, async () => {
    const count = 3 * ioUringEntries;
    const layer = FileLayer.open({ path: newBacking(count * 4 * KiB), direct: true, ioEngine: engine });
    try {
      const writes = Array.from({ length: count }, (_, index) => layer.write(index * 4 * KiB, alignedBuffer(4 * KiB).fill(index & 0xff)));
      await Promise.all(writes);
      const targets = Array.from({ length: count }, () => alignedBuffer(4 * KiB));
      await Promise.all(targets.map((target, index) => layer.read(index * 4 * KiB, target)));
      for (const [index, target] of targets.entries()) expect({ index, first: target[0], last: target[4095] }).toEqual({ index, first: index & 0xff, last: index & 0xff });
    } finally {
      await layer.close();
    }
  }, 60_000);

  test("close with IO in flight lets that IO finish, then refuses more", async () => {
    const file = newBacking(4 * MiB);
    const layer = FileLayer.open({ path: file, direct: true, ioEngine: engine });
    const writes = Array.from({ length: 400 }, (_, index) => layer.write((index % 1024) * 4 * KiB, alignedBuffer(4 * KiB).fill((index % 250) + 1)));
    const closing = layer.close();
    const results = await Promise.allSettled(writes);
    await closing;
    expect(results.filter((result) => result.status === "rejected")).toEqual([]);
    await expect(layer.read(0, alignedBuffer(4 * KiB))).rejects.toMatchObject({ code: "ESHUTDOWN" });
    const reopened = FileLayer.open({ path: file, direct: true, ioEngine: engine });
    try {
      const target = alignedBuffer(4 * KiB);
      await reopened.read(399 * 4 * KiB, target);
      expect(target[0]).toBe((399 % 250) + 1);
    } finally {
      await reopened.close();
    }
  });
});

describe("io_uring ring", () => {
  test("a private ring of 8 entries completes 1000 requests queued at once, in any order", async () => {
    const acquired = IoUring.acquire(8);
    if (!acquired.ok) throw new Error(acquired.reason);
    const engine = acquired.engine;
    const file = newBacking(1 * MiB);
    const fd = fs.openSync(file, fs.constants.O_RDWR | fs.constants.O_DIRECT);
    try {
      expect(engine.ring.capacity).toBe(8);
      const block = alignedBuffer(4 * KiB).fill(5);
      await engine.write(fd, block, 0);
      const reads = Array.from({ length: 1000 }, () => engine.read(fd, alignedBuffer(4 * KiB), 0));
      expect(engine.inFlight()).toBe(1000);
      expect((await Promise.all(reads)).every((count) => count === 4 * KiB)).toBe(true);
      expect(engine.inFlight()).toBe(0);
      // Batched: far fewer io_uring_enter calls than requests.
      expect(engine.ring.counters.enters).toBeLessThan(1000);
      await engine.datasync(fd);
    } finally {
      await engine.release();
      fs.closeSync(fd);
    }
  });

  type RingEngine = Extract<ReturnType<typeof IoUring.acquire>, { ok: true }>["engine"];

  /** A private ring with this polling budget and an O_DIRECT file of 1 MiB, both let go after `body`. */
  async function withRing(pollMicrosMax: number, body: (engine: RingEngine, fd: number) => Promise<void>): Promise<void> {
    const acquired = IoUring.acquire(8, pollMicrosMax);
    if (!acquired.ok) throw new Error(acquired.reason);
    const fd = fs.openSync(newBacking(1 * MiB), fs.constants.O_RDWR | fs.constants.O_DIRECT);
    try {
      await body(acquired.engine, fd);
    } finally {
      await acquired.engine.release();
      fs.closeSync(fd);
    }
  }

  /** Write then read back `count` blocks one request at a time (a lone request is what polling is for). */
  async function oneAtATime(engine: RingEngine, fd: number, count: number): Promise<void> {
    const random = generator(count);
    for (let index = 0; index < count; index++) {
      const block = alignedBuffer(4 * KiB);
      fillRandom(block, random);
      expect(await engine.write(fd, block, (index % 64) * 4 * KiB)).toBe(4 * KiB);
      const back = alignedBuffer(4 * KiB);
      expect(await engine.read(fd, back, (index % 64) * 4 * KiB)).toBe(4 * KiB);
      expect(Buffer.compare(back, block)).toBe(0);
    }
  }

  test("a lone request on a fast device is waited for on the CPU, and its bytes are right", () =>
    withRing(1000, async (engine, fd) => {
      await oneAtATime(engine, fd, 200);
      // O_DIRECT IO to this machine's disk takes well under the 1 ms allowed here.
      expect(engine.ring.counters.polls).toBeGreaterThan(0);
      expect(engine.ring.counters.polledCompletions).toBeGreaterThan(0);
    }));

  test("a completion that comes after the poll gave up still wakes the loop (the eventfd is armed again)", () =>
    // Reads of a hole complete at once, so the ring learns a service time of a few µs; a read of
    // written blocks then goes to the disk and takes longer than the poll allows (twice that time):
    // the poll gives up, and the read would hang if the poll had left the eventfd silenced.
    withRing(1000, async (engine, fd) => {
      const written = alignedBuffer(256 * KiB);
      fillRandom(written, generator(7));
      expect(await engine.write(fd, written, 0)).toBe(256 * KiB);
      await engine.datasync(fd);
      const { polls, polledCompletions, wakeups } = engine.ring.counters;
      for (let round = 0; round < 50; round++) {
        for (let hole = 0; hole < 8; hole++) expect(await engine.read(fd, alignedBuffer(4 * KiB), 512 * KiB + hole * 4 * KiB)).toBe(4 * KiB);
        const back = alignedBuffer(4 * KiB);
        const at = (round % 64) * 4 * KiB;
        expect(await engine.read(fd, back, at)).toBe(4 * KiB);
        expect(Buffer.compare(back, written.subarray(at, at + 4 * KiB))).toBe(0);
      }
      const counters = engine.ring.counters;
      expect(counters.polls - polls).toBeGreaterThan(0);
      // Some polls gave up, and what they waited for came by the eventfd.
      expect(counters.polls - polls).toBeGreaterThan(counters.polledCompletions - polledCompletions);
      expect(counters.wakeups - wakeups).toBeGreaterThan(0);
    }));

  test("polling off (0) never spins; more than one request in flight is never polled for", async () => {
    await withRing(0, async (engine, fd) => {
      await oneAtATime(engine, fd, 20);
      expect(engine.ring.counters.polls).toBe(0);
    });
    await withRing(1000, async (engine, fd) => {
      await engine.write(fd, alignedBuffer(16 * KiB).fill(9), 0);
      const polls = engine.ring.counters.polls;
      for (let round = 0; round < 20; round++) {
        const reads = Array.from({ length: 4 }, (_, index) => engine.read(fd, alignedBuffer(4 * KiB), index * 4 * KiB));
        expect((await Promise.all(reads)).every((count) => count === 4 * KiB)).toBe(true);
      }
      // Four submitted in one turn: none of those enters polled (a later lone straggler may be).
      expect(engine.ring.counters.polls - polls).toBeLessThan(20);
    });
  });

  test("an error from the kernel comes back as the errno name (EBADF on a closed descriptor)", async () => {
    const acquired = IoUring.acquire(4);
    if (!acquired.ok) throw new Error(acquired.reason);
    try {
      await expect(acquired.engine.read(987_654, alignedBuffer(4 * KiB), 0)).rejects.toMatchObject({ code: "EBADF" });
    } finally {
      await acquired.engine.release();
    }
  });
});

describe("engine choice and fallback", () => {
  test("auto falls back to the thread pool when the kernel refuses the ring, and says why", async () => {
    // io_uring_setup refuses 0 entries with EINVAL: a real refusal by the kernel.
    const choice = acquireIoEngine("auto", 0);
    try {
      expect(choice.engine.name).toBe("threadpool");
      expect(choice.fallbackReason).toContain("io_uring_setup(0) failed: EINVAL");
    } finally {
      await choice.engine.release();
    }
  });

  test("io_uring insisted on is refused when the kernel refuses it", () => {
    expect(() => acquireIoEngine("io_uring", 0)).toThrow(TandemError);
  });

  test("TANDEM_IO_ENGINE picks the engine; a wrong value is a clear error", () => {
    expect(ioEnginePreferenceFromEnvironment({})).toBe("auto");
    expect(ioEnginePreferenceFromEnvironment({ TANDEM_IO_ENGINE: "threadpool" })).toBe("threadpool");
    expect(() => ioEnginePreferenceFromEnvironment({ TANDEM_IO_ENGINE: "aio" })).toThrow("expected one of auto, io_uring, threadpool");
  });

  test("TANDEM_IO_POLL_US sets the polling budget; 0 turns it off; a wrong value is a clear error", () => {
    expect(ioUringPollFromEnvironment({})).toBe(ioUringPollMicrosDefault);
    expect(ioUringPollFromEnvironment({ TANDEM_IO_POLL_US: "0" })).toBe(0);
    expect(ioUringPollFromEnvironment({ TANDEM_IO_POLL_US: "250" })).toBe(250);
    for (const wrong of ["-1", "fast", "1.5", "1001"]) expect(() => ioUringPollFromEnvironment({ TANDEM_IO_POLL_US: wrong })).toThrow("expected a whole number of microseconds from 0 (no polling) to 1000");
  });

  test("a process whose direct volumes are closed exits by itself (the ring does not hold the event loop)", async () => {
    const script = path.join(directory, "exit-check.ts");
    fs.writeFileSync(
      script,
      [
        `import { FileLayer, alignedBuffer } from ${JSON.stringify(path.resolve(import.meta.dir, "../../src/node/block/file.ts"))};`,
        `const layer = FileLayer.open({ path: ${JSON.stringify(newBacking(1 * MiB))}, direct: true, ioEngine: "io_uring" });`,
        "await layer.write(0, alignedBuffer(4096).fill(1));",
        "await layer.close();",
        "console.log(layer.ioEngineName);",
      ].join("\n"),
    );
    const child = Bun.spawn([process.execPath, script], { stdout: "pipe", stderr: "pipe" });
    const timer = setTimeout(() => child.kill("SIGKILL"), 30_000);
    const [stdout, code] = await Promise.all([new Response(child.stdout).text(), child.exited]);
    clearTimeout(timer);
    expect({ stdout: stdout.trim(), code, signal: child.signalCode }).toEqual({ stdout: "io_uring", code: 0, signal: null });
  });
});

// ---------------------------------------------------------------------------- a failing medium

function mounted(mountpoint: string): boolean {
  return fs.readFileSync("/proc/mounts", "utf8").split("\n").some((line) => line.split(" ")[1] === mountpoint);
}

/** The guest offset whose data lands on host byte `hostByte` of the qcow2 file (preallocated metadata). */
async function guestOffsetForHostByte(image: string, hostByte: number): Promise<number> {
  const map = Bun.spawn(["qemu-img", "map", "--output=json", image], { stdout: "pipe" });
  const extents = JSON.parse(await new Response(map.stdout).text()) as { start: number; length: number; offset?: number }[];
  await map.exited;
  const extent = extents.find((entry) => entry.offset !== undefined && entry.offset <= hostByte && hostByte < entry.offset + entry.length)!;
  return extent.start + (hostByte - extent.offset!);
}

describe.each(engines)("direct file layer on %s over a failing medium", (engine) => {
  const hasTools = Bun.which("qemu-storage-daemon") !== null && Bun.which("qemu-img") !== null && fs.existsSync("/dev/fuse");

  test.skipIf(!hasTools)("EIO for the failing reads and the failing sector's writes; everything else still works", async () => {
    const image = path.join(directory, `failing-${engine}.qcow2`);
    const mountpoint = path.join(directory, `failing-${engine}.raw`);
    const created = Bun.spawnSync(["qemu-img", "create", "-q", "-f", "qcow2", "-o", "preallocation=metadata", image, "8M"]);
    expect(created.exitCode).toBe(0);
    fs.writeFileSync(mountpoint, "");
    const failingHostSector = 4096; // host byte 2 MiB of the qcow2 file
    const failingWrite = await guestOffsetForHostByte(image, failingHostSector * 512);
    const rules = {
      driver: "blkdebug",
      "node-name": "faulty",
      image: "file0",
      "inject-error": [
        { event: "read_aio", errno: 5 },
        { event: "write_aio", errno: 5, sector: failingHostSector },
      ],
    };
    const daemon = Bun.spawn(
      [
        "qemu-storage-daemon",
        "--blockdev",
        `driver=file,node-name=file0,filename=${image}`,
        "--blockdev",
        JSON.stringify(rules),
        "--blockdev",
        "driver=qcow2,node-name=disk0,file=faulty",
        "--export",
        `type=fuse,id=export0,node-name=disk0,mountpoint=${mountpoint},writable=on`,
      ],
      { stdout: "pipe", stderr: "pipe" },
    );
    let layer: FileLayer | undefined;
    try {
      const deadline = Date.now() + 15_000;
      while (!mounted(mountpoint)) {
        if (daemon.exitCode !== null) throw new Error(`qemu-storage-daemon exited: ${await new Response(daemon.stderr).text()}`);
        if (Date.now() > deadline) throw new Error("the FUSE export did not appear within 15 s");
        await Bun.sleep(20);
      }
      layer = FileLayer.open({ path: mountpoint, direct: true, ioEngine: engine });
      expect(layer.ioEngineName).toBe(engine);
      // Writes away from the failing sector succeed.
      await layer.write(0, alignedBuffer(4 * KiB).fill(1));
      await layer.write(1 * MiB, new Uint8Array(4 * KiB + 1).subarray(1).fill(2));
      // The failing sector's write, aligned and through the bounce path (whose head read fails first).
      const failing = layer.write(failingWrite, alignedBuffer(4 * KiB).fill(3));
      await expect(failing).rejects.toBeInstanceOf(BlockError);
      await expect(failing).rejects.toMatchObject({ code: "EIO" });
      await expect(layer.write(failingWrite + 10, new Uint8Array(100))).rejects.toMatchObject({ code: "EIO" });
      // Every data read fails: aligned, unaligned, and many at once.
      await expect(layer.read(0, alignedBuffer(4 * KiB))).rejects.toMatchObject({ code: "EIO" });
      await expect(layer.read(3, new Uint8Array(10))).rejects.toMatchObject({ code: "EIO" });
      const many = await Promise.allSettled(Array.from({ length: 64 }, (_, index) => layer!.read(index * 4 * KiB, alignedBuffer(4 * KiB))));
      expect(many.every((result) => result.status === "rejected" && (result.reason as BlockError).code === "EIO")).toBe(true);
      // And the layer still serves after all those failures.
      await layer.write(2 * 4 * KiB, alignedBuffer(4 * KiB).fill(4));
      await layer.flush();
    } finally {
      await layer?.close();
      daemon.kill("SIGTERM");
      const exited = await Promise.race([daemon.exited.then(() => true), Bun.sleep(10_000).then(() => false)]);
      if (!exited) daemon.kill("SIGKILL");
      if (mounted(mountpoint)) Bun.spawnSync(["umount", "-l", mountpoint]);
    }
  }, 60_000);
});
