// Proves Tandem's NBD target interoperates with the real clients operators and VMs use: libnbd's
// nbdinfo, nbdsh and nbdcopy, QEMU's NBD driver through qemu-io and qemu-img, and fio's nbd
// engine. Each test starts a target through test/helpers/nbd-harness.ts, drives it with the
// external tool, and checks what the tool reports AND the bytes that landed in the volume's
// backing file, read independently of the server. fio's crc32c verification is shown to be live
// by corrupting one block behind the server's back and watching verification fail.
import { afterEach, describe, expect, test } from "bun:test";
import fs from "node:fs";
import os from "node:os";
import path from "node:path";
import { startInProcessNbdTarget, startNbdTarget, type NbdTarget } from "../helpers/nbd-harness.ts";

const MiB = 1024 * 1024;
/** Each test runs a few external tools; generous for a loaded machine. */
const toolTimeoutMs = 120_000;
/** libnbd's nbdsh runs `python3` from PATH; Debian's has the nbd module, a pyenv one may not. */
const toolEnv = { ...process.env, PATH: "/usr/bin:/bin:/usr/sbin:/sbin" };
const targets: NbdTarget[] = [];
const scratch: string[] = [];
afterEach(async () => {
  for (const target of targets.splice(0)) await target.stop();
  for (const directory of scratch.splice(0)) fs.rmSync(directory, { recursive: true, force: true });
});

async function target(options: Parameters<typeof startNbdTarget>[0] = {}): Promise<NbdTarget> {
  const started = await startNbdTarget(options);
  targets.push(started);
  return started;
}

function scratchDirectory(): string {
  const directory = fs.mkdtempSync(path.join(os.tmpdir(), "tandem-nbd-interop-"));
  scratch.push(directory);
  return directory;
}

interface RunResult {
  code: number;
  stdout: string;
  stderr: string;
}

async function run(command: string[], options: { timeoutMs?: number; env?: Record<string, string | undefined> } = {}): Promise<RunResult> {
  // Tools run in a scratch directory: fio, for one, leaves verify state files in its working directory.
  const child = Bun.spawn(command, { stdout: "pipe", stderr: "pipe", env: { ...toolEnv, ...options.env }, cwd: scratchDirectory() });
  const timer = setTimeout(() => child.kill(), options.timeoutMs ?? 60_000);
  const [stdout, stderr, code] = await Promise.all([new Response(child.stdout).text(), new Response(child.stderr).text(), child.exited]);
  clearTimeout(timer);
  return { code, stdout, stderr };
}

async function ok(command: string[], options?: Parameters<typeof run>[1]): Promise<string> {
  const result = await run(command, options);
  if (result.code !== 0) throw new Error(`${command.join(" ")} exited ${result.code}\n${result.stdout}\n${result.stderr}`);
  return result.stdout;
}

/** Deterministic bytes that differ at every offset, so misplaced data shows. */
function pattern(length: number, seed: number): Uint8Array {
  const bytes = new Uint8Array(length);
  let state = seed >>> 0 || 1;
  for (let index = 0; index < length; index++) {
    state ^= state << 13;
    state ^= state >>> 17;
    state ^= state << 5;
    bytes[index] = state & 0xff;
  }
  return bytes;
}

function readBacking(target: NbdTarget, offset: number, length: number): Uint8Array {
  const fd = fs.openSync(target.backingPath, "r");
  try {
    const out = new Uint8Array(length);
    fs.readSync(fd, out, 0, length, offset);
    return out;
  } finally {
    fs.closeSync(fd);
  }
}

function expectBytes(actual: Uint8Array, expected: Uint8Array, what: string): void {
  if (Buffer.compare(actual, expected) === 0) return;
  const at = actual.findIndex((byte, index) => byte !== expected[index]);
  throw new Error(`${what}: first difference at byte ${at} (got ${actual[at]}, want ${expected[at]})`);
}

describe("nbdinfo", () => {
  test("reports size, block sizes, and every capability the target offers", async () => {
    const served = await target({ sizeBytes: 64 * MiB });
    const info = JSON.parse(await ok(["nbdinfo", "--json", served.uri]));
    expect(info.protocol).toBe("newstyle-fixed");
    expect(info.structured).toBe(true);
    const exported = info.exports[0];
    expect(exported).toMatchObject({
      "export-name": served.exportName,
      "export-size": 64 * MiB,
      is_read_only: false,
      can_flush: true,
      can_fua: true,
      can_trim: true,
      can_zero: true,
      can_fast_zero: true,
      can_multi_conn: true,
      can_cache: true,
      can_df: true,
      block_size_minimum: 512,
      block_size_preferred: 4096,
      block_size_maximum: 32 * MiB,
    });
    expect(exported.contexts).toContain("base:allocation");
    for (const capability of ["flush", "fua", "trim", "zero", "multi-conn", "structured-reply", "fast-zero", "cache", "df", "write"]) {
      const result = await run(["nbdinfo", "--can", capability, served.uri]);
      expect({ capability, code: result.code }).toEqual({ capability, code: 0 });
    }
    expect((await run(["nbdinfo", "--is", "read-only", served.uri])).code).toBe(2);
    expect((await ok(["nbdinfo", "--size", served.uri])).trim()).toBe(String(64 * MiB));
    const listed = JSON.parse(await ok(["nbdinfo", "--list", "--json", `nbd+unix://?socket=${served.socketPath}`]));
    expect(listed.exports.map((entry: { "export-name": string }) => entry["export-name"])).toEqual([served.exportName]);
    const missing = await run(["nbdinfo", `nbd+unix:///no-such-volume?socket=${served.socketPath}`]);
    expect(missing.code).not.toBe(0);
  }, toolTimeoutMs);

  test("--map shows written ranges as data and the rest as holes that read as zero", async () => {
    const served = await target({ sizeBytes: 64 * MiB });
    await ok(["qemu-io", "-f", "raw", "-c", "write -P 0x33 1M 2M", "-c", "write -P 0x44 40M 64k", served.uri]);
    const map = JSON.parse(await ok(["nbdinfo", "--map", "--json", served.uri])) as { offset: number; length: number; type: number; description: string }[];
    const covered = map.reduce((sum, extent) => sum + extent.length, 0);
    expect(covered).toBe(64 * MiB);
    const typeAt = (offset: number) => map.find((extent) => extent.offset <= offset && offset < extent.offset + extent.length)!.type;
    expect(typeAt(1 * MiB)).toBe(0);
    expect(typeAt(3 * MiB - 1)).toBe(0);
    expect(typeAt(40 * MiB)).toBe(0);
    expect(typeAt(0)).toBe(3);
    expect(typeAt(20 * MiB)).toBe(3);
    expect(typeAt(63 * MiB)).toBe(3);
  }, toolTimeoutMs);
});

describe("nbdsh (libnbd from Python)", () => {
  test("synchronous and pipelined IO, block status, errors from the server, and option mode", async () => {
    const served = await target({ sizeBytes: 16 * MiB });
    const directory = scratchDirectory();
    const script = path.join(directory, "check.py");
    fs.writeFileSync(
      script,
      `
import json, os, nbd
uri = os.environ["NBD_URI"]
out = {}
h = nbd.NBD()
h.add_meta_context(nbd.CONTEXT_BASE_ALLOCATION)
h.connect_uri(uri)
h.set_strict_mode(0)  # let requests libnbd would refuse reach the server
out["size"] = h.get_size()
out["structured"] = h.get_structured_replies_negotiated()
out["allocation"] = h.can_meta_context(nbd.CONTEXT_BASE_ALLOCATION)
block = bytes((i * 7 + 3) % 251 for i in range(65536))
h.pwrite(block, 1048576)
h.pwrite(b"\\xab" * 4096, 0, nbd.CMD_FLAG_FUA)
h.flush()
out["read_back"] = h.pread(65536, 1048576) == block
out["fua_read_back"] = h.pread(4096, 0) == b"\\xab" * 4096
h.zero(32768, 1048576 + 16384)
out["zeroed"] = h.pread(32768, 1048576 + 16384) == bytes(32768)
out["zero_kept_neighbours"] = h.pread(16384, 1048576) == block[:16384]
h.trim(1048576, 8 * 1048576)
extents = []
def status(context, offset, entries, err):
    extents.append([context, offset, list(entries)])
    return 0
h.block_status(4 * 1048576, 0, status)
out["extents"] = extents
def errno_of(call):
    try:
        call()
        return 0
    except nbd.Error as error:
        return error.errno
out["read_past_end"] = errno_of(lambda: h.pread(4096, out["size"]))
out["write_past_end"] = errno_of(lambda: h.pwrite(b"x" * 512, out["size"]))
out["unaligned_read"] = errno_of(lambda: h.pread(512, 100))
out["fast_zero"] = errno_of(lambda: h.zero(4096, 2 * 1048576, nbd.CMD_FLAG_FAST_ZERO))
buffers = []
for i in range(64):
    data = bytes([i]) * 4096
    h.aio_pwrite(data, 8 * 1048576 + i * 4096)
while h.aio_in_flight() > 0:
    h.poll(-1)
for i in range(64):
    buffer = nbd.Buffer(4096)
    buffers.append((i, buffer, h.aio_pread(buffer, 8 * 1048576 + i * 4096)))
while h.aio_in_flight() > 0:
    h.poll(-1)
out["aio_read_back"] = all(h.aio_command_completed(cookie) and buffer.to_bytearray() == bytes([i]) * 4096 for i, buffer, cookie in buffers)
h.shutdown()
o = nbd.NBD()
o.set_opt_mode(True)
o.connect_uri(uri)
names = []
o.opt_list(lambda name, description: names.append([name, description]) or 0)
out["listed"] = names
o.set_export_name("no-such-volume")
out["go_unknown"] = errno_of(lambda: o.opt_info())
o.opt_abort()
print(json.dumps(out))
`,
    );
    const output = await ok(["nbdsh", "-n", "-c", `exec(open(${JSON.stringify(script)}).read())`], { env: { NBD_URI: served.uri } });
    const result = JSON.parse(output.trim().split("\n").pop()!);
    expect(result).toMatchObject({
      size: 16 * MiB,
      structured: true,
      allocation: true,
      read_back: true,
      fua_read_back: true,
      zeroed: true,
      zero_kept_neighbours: true,
      read_past_end: "EINVAL",
      write_past_end: "ENOSPC",
      unaligned_read: "EINVAL",
      fast_zero: 0,
      aio_read_back: true,
      listed: [[served.exportName, `Tandem volume ${served.exportName}`]],
    });
    expect(result.go_unknown).toBe("ENOENT"); // NBD_REP_ERR_UNKNOWN as libnbd reports it
    // base:allocation from 0: data at 0 (the FUA write), the rest trimmed or never written.
    const [context, offset, entries] = result.extents[0];
    expect(context).toBe("base:allocation");
    expect(offset).toBe(0);
    expect(entries[1]).toBe(0); // first extent is data
    expect(entries.length % 2).toBe(0);
    const flagsOfEntries = entries.filter((_: number, index: number) => index % 2 === 1);
    expect(flagsOfEntries).toContain(3);
    // And the bytes really are in the volume.
    expectBytes(readBacking(served, 0, 4096), new Uint8Array(4096).fill(0xab), "FUA write in the backing file");
    expectBytes(readBacking(served, 8 * MiB + 5 * 4096, 4096), new Uint8Array(4096).fill(5), "aio write in the backing file");
  }, toolTimeoutMs);

  test("a client that does not ask for block sizes gets a minimum of 1 and byte-granular IO, on page-cache and O_DIRECT volumes", async () => {
    for (const direct of [false, true]) {
      const served = await target({ sizeBytes: 4 * MiB, direct });
      const directory = scratchDirectory();
      const script = path.join(directory, "old.py");
      // libnbd asks for NBD_INFO_BLOCK_SIZE unless told not to, as old clients never did.
      fs.writeFileSync(
        script,
        `
import json, os, nbd
h = nbd.NBD()
h.set_request_block_size(False)
h.connect_uri(os.environ["NBD_URI"])
out = {"minimum": h.get_block_size(nbd.SIZE_MINIMUM)}
h.pwrite(bytes(range(256)) * 16, 0)
h.pwrite(b"old client", 1001)
h.pwrite(b"\x07" * 3, 4095)
out["read"] = list(h.pread(20, 995))
out["edge"] = list(h.pread(5, 4094))
h.shutdown()
print(json.dumps(out))
`,
      );
      const output = await ok(["nbdsh", "-n", "-c", `exec(open(${JSON.stringify(script)}).read())`], { env: { NBD_URI: served.uri } });
      const result = JSON.parse(output.trim().split("\n").pop()!);
      const expected = new Uint8Array(4100);
      expected.set(new Uint8Array(4096).map((_, index) => index % 256));
      expected.set(new TextEncoder().encode("old client"), 1001);
      expected.set([7, 7, 7], 4095);
      expect(result).toEqual({ minimum: 1, read: [...expected.subarray(995, 1015)], edge: [...expected.subarray(4094, 4099)] });
      expectBytes(readBacking(served, 0, 4100), expected, `${direct ? "O_DIRECT" : "page-cache"} volume after unaligned writes`);
    }
  }, toolTimeoutMs);
});

describe("QEMU (qemu-io, qemu-img)", () => {
  test("qemu-io pattern writes (plain, FUA, zeroes, unaligned, async) read back and land in the volume", async () => {
    const served = await target({ sizeBytes: 64 * MiB });
    const output = await ok([
      "qemu-io",
      "-f",
      "raw",
      "-c",
      "write -P 0xa5 0 4M",
      "-c",
      "write -f -P 0x5a 4M 1M",
      "-c",
      "write -P 0x77 8M 1M",
      "-c",
      "write -z 8M 512k",
      "-c",
      "write -P 0x3c 100 1000",
      "-c",
      "aio_write -P 0x11 12M 64k",
      "-c",
      "aio_write -P 0x12 13M 64k",
      "-c",
      "aio_flush",
      "-c",
      "flush",
      "-c",
      "discard 20M 4M",
      "-c",
      "read -P 0xa5 1100 4193204",
      "-c",
      "read -P 0x3c 100 1000",
      "-c",
      "read -P 0xa5 0 100",
      "-c",
      "read -P 0x5a 4M 1M",
      "-c",
      "read -P 0 8M 512k",
      "-c",
      "read -P 0x77 8704k 512k",
      "-c",
      "read -P 0x11 12M 64k",
      "-c",
      "read -P 0x12 13M 64k",
      served.uri,
    ]);
    expect(output).not.toMatch(/fail|error|mismatch/i);
    expect(output.match(/^read /gm)?.length).toBe(8);
    const expected = new Uint8Array(4 * MiB).fill(0xa5);
    expected.fill(0x3c, 100, 1100);
    expectBytes(readBacking(served, 0, 4 * MiB), expected, "0..4M");
    expectBytes(readBacking(served, 4 * MiB, MiB), new Uint8Array(MiB).fill(0x5a), "4M..5M");
    expectBytes(readBacking(served, 8 * MiB, 512 * 1024), new Uint8Array(512 * 1024), "zeroed 8M..8.5M");
    expectBytes(readBacking(served, 8 * MiB + 512 * 1024, 512 * 1024), new Uint8Array(512 * 1024).fill(0x77), "8.5M..9M");
    expectBytes(readBacking(served, 13 * MiB, 64 * 1024), new Uint8Array(64 * 1024).fill(0x12), "13M async write");
  }, toolTimeoutMs);

  test("qemu-img convert into the export and back out gives identical bytes", async () => {
    const served = await target({ sizeBytes: 32 * MiB });
    const directory = scratchDirectory();
    const source = path.join(directory, "source.img");
    // Random data with zero runs and a hole, so convert uses zero writes and block status.
    const image = new Uint8Array(32 * MiB);
    image.set(pattern(6 * MiB, 1), 0);
    image.set(pattern(3 * MiB, 2), 10 * MiB);
    image.set(pattern(MiB - 4096, 3), 31 * MiB + 4096);
    fs.writeFileSync(source, image);
    await ok(["qemu-img", "convert", "-n", "-f", "raw", "-O", "raw", source, served.uri]);
    expectBytes(readBacking(served, 0, 32 * MiB), image, "volume after convert in");
    const back = path.join(directory, "back.img");
    await ok(["qemu-img", "convert", "-f", "raw", "-O", "raw", served.uri, back]);
    expect((await run(["cmp", source, back])).code).toBe(0);
    const compared = await run(["qemu-img", "compare", "-f", "raw", "-F", "raw", source, served.uri]);
    expect(compared.stdout).toContain("Images are identical");
  }, toolTimeoutMs);
});

describe("nbdcopy", () => {
  test("copies in and out over 4 connections with identical bytes", async () => {
    const served = await startInProcessNbdTarget({ sizeBytes: 48 * MiB });
    targets.push(served);
    const directory = scratchDirectory();
    const source = path.join(directory, "source.img");
    const image = new Uint8Array(48 * MiB);
    for (let index = 0; index < 48; index += 3) image.set(pattern(MiB, index + 10), index * MiB);
    fs.writeFileSync(source, image);
    // nbdcopy uses at most one connection per thread; ask for four of each.
    await ok(["nbdcopy", "-C", "4", "-T", "4", "--flush", source, served.uri]);
    // CAN_MULTI_CONN let nbdcopy open four connections to the export.
    expect(served.exports.opens.filter((entry) => entry.name === served.exportName).length).toBeGreaterThanOrEqual(4);
    expectBytes(readBacking(served, 0, 48 * MiB), image, "volume after nbdcopy in");
    const back = path.join(directory, "back.img");
    fs.writeFileSync(back, new Uint8Array(0));
    await ok(["nbdcopy", "-C", "4", "-T", "4", served.uri, back]);
    expect((await run(["cmp", source, back])).code).toBe(0);
  }, toolTimeoutMs);
});

describe("fio nbd engine", () => {
  test("mixed random read/write at iodepth 32 passes crc32c verification", async () => {
    const served = await target({ sizeBytes: 64 * MiB });
    const output = await ok([
      "fio",
      "--name=mixed",
      "--ioengine=nbd",
      `--uri=${served.uri}`,
      "--rw=randrw",
      "--rwmixread=50",
      "--bs=4k",
      "--iodepth=32",
      "--size=48M",
      "--verify=crc32c",
      "--do_verify=1",
      "--verify_fatal=1",
      "--output-format=json",
    ]);
    const job = JSON.parse(output.slice(output.indexOf("{"))).jobs[0];
    expect(job.error).toBe(0);
    expect(job.write.total_ios).toBeGreaterThan(1000);
    expect(job.read.total_ios).toBeGreaterThan(job.write.total_ios); // its own reads plus the verify pass
  }, toolTimeoutMs);

  test("an O_DIRECT volume passes the same verification, and qemu-io's unaligned writes land", async () => {
    const served = await startInProcessNbdTarget({ sizeBytes: 64 * MiB, direct: true });
    targets.push(served);
    const output = await ok([
      "fio",
      "--name=direct",
      "--ioengine=nbd",
      `--uri=${served.uri}`,
      "--rw=randrw",
      "--bsrange=512-64k",
      "--bs_unaligned=0",
      "--iodepth=32",
      "--size=32M",
      "--verify=crc32c",
      "--do_verify=1",
      "--verify_fatal=1",
      "--output-format=json",
    ]);
    expect(JSON.parse(output.slice(output.indexOf("{"))).jobs[0].error).toBe(0);
    const io = await ok(["qemu-io", "-f", "raw", "-c", "write -P 0x6b 40M 4M", "-c", "write -P 0x1f 41944040 3000", "-c", "read -P 0x1f 41944040 3000", served.uri]);
    expect(io).not.toMatch(/fail|error/i);
    const expected = new Uint8Array(4 * MiB).fill(0x6b);
    expected.fill(0x1f, 1000, 4000);
    expectBytes(readBacking(served, 40 * MiB, 4 * MiB), expected, "O_DIRECT volume at 40M");
  }, toolTimeoutMs);

  test("verification is live: a block corrupted behind the server's back fails it", async () => {
    const served = await target({ sizeBytes: 32 * MiB });
    const common = ["--name=live", "--ioengine=nbd", `--uri=${served.uri}`, "--rw=randwrite", "--bs=4k", "--iodepth=32", "--size=16M", "--verify=crc32c", "--randseed=42"];
    await ok(["fio", ...common, "--do_verify=0"]);
    await ok(["fio", ...common, "--verify_only", "--verify_fatal=1"]);
    // Flip one byte of one written block in the backing file.
    const fd = fs.openSync(served.backingPath, "r+");
    const block = new Uint8Array(4096);
    fs.readSync(fd, block, 0, 4096, 5 * MiB);
    block[2000] = block[2000]! ^ 0xff;
    fs.writeSync(fd, block, 0, 4096, 5 * MiB);
    fs.fsyncSync(fd);
    fs.closeSync(fd);
    const failed = await run(["fio", ...common, "--verify_only", "--verify_fatal=1"]);
    expect(failed.code).not.toBe(0);
    expect(failed.stdout + failed.stderr).toMatch(/verify|crc32c/i);
  }, toolTimeoutMs);
});
