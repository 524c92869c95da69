// `tandem volume copy-out` against a real daemon (the CLI as its own process):
//  - into a file it creates: the file holds the volume's bytes, the checksums match, the session
//    ends (its export and side store are gone);
//  - into a second NBD server (nbdkit on a unix socket, pre-filled with 0xff and slowed down by its
//    delay filter so the copy lasts seconds) while a client rewrites the volume: the target holds
//    the volume AS OF THE POINT (the old bytes, zero regions zeroed), the volume the new bytes, and
//    the report counts what was kept aside;
//  - refused on nothing to copy, and a second copy-out of the same volume while one runs;
//  - the checksum reader is read to its end and left to exit (nbdcopy with a captive qemu-nbd
//    cleans its socket directory under /tmp as it exits); bytes beyond the size are ignored.
// Processes are ours and stopped by pid; waits poll with deadlines.
import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import fs from "node:fs";
import path from "node:path";
import os from "node:os";
import { copyOutChecksumChunkBytes } from "../../src/constants.ts";
import { type CopyOutResult, digestOf } from "../../src/node/copy-out-runner.ts";
import { runCli, TestDaemon, tandemCommand } from "../helpers/daemon.ts";
import { NbdClient } from "../helpers/nbd-client.ts";
import { pattern } from "../helpers/pattern.ts";
import { eventually, until } from "../helpers/until.ts";

const MiB = 1024 * 1024;
const volumeBytes = 32 * MiB;
const hasTools = ["qemu-img", "qemu-nbd", "nbdcopy", "nbdkit"].every((tool) => Bun.which(tool) !== null);

function readAll(uri: string): Uint8Array {
  const result = Bun.spawnSync(["nbdcopy", uri, "-"], { timeout: 60_000 });
  if (result.exitCode !== 0) throw new Error(`nbdcopy ${uri}: ${result.stderr}`);
  return new Uint8Array(result.stdout);
}

describe("copy-out's checksum reader", () => {
  const sha256 = (bytes: Uint8Array) => new Bun.CryptoHasher("sha256").update(bytes).digest("hex");
  const size = 2 * copyOutChecksumChunkBytes + 4096;

  test("is read to its end and exits by itself: what it does after its last byte is not cut short", async () => {
    // nbdcopy with a captive qemu-nbd removes libnbd's socket directory under /tmp as it exits;
    // killed after its last byte, it left the directory behind. Here the reader's last step after
    // its output is to leave a mark.
    const dir = fs.mkdtempSync(path.join(os.tmpdir(), "tandem-digest-"));
    try {
      const mark = path.join(dir, "finished");
      const digest = await digestOf(["sh", "-c", `head -c ${size} /dev/zero; sleep 0.3; touch ${mark}`], size, "zeroes", () => {});
      expect(fs.existsSync(mark)).toBe(true);
      expect(digest.overall).toBe(sha256(new Uint8Array(size)));
      expect(digest.chunks).toEqual([sha256(new Uint8Array(copyOutChecksumChunkBytes)), sha256(new Uint8Array(copyOutChecksumChunkBytes)), sha256(new Uint8Array(4096))]);
    } finally {
      fs.rmSync(dir, { recursive: true, force: true });
    }
  });

  test("bytes beyond the size are ignored; a reader that never stops is stopped; a short one is an error", async () => {
    const expected = sha256(new Uint8Array(size));
    let reported = 0;
    expect((await digestOf(["head", "-c", `${size + 12345}`, "/dev/zero"], size, "zeroes", (bytes) => (reported = bytes))).overall).toBe(expected);
    expect(reported).toBe(size); // the chunk that crosses the size still reports the last bytes
    expect((await digestOf(["cat", "/dev/zero"], size, "zeroes", () => {})).overall).toBe(expected);
    await expect(digestOf(["head", "-c", "100", "/dev/zero"], size, "a short target", () => {})).rejects.toThrow(`reading a short target gave 100 of ${size} bytes (exit 0)`);
  });
});

describe.skipIf(!hasTools)("volume copy-out", () => {
  let daemon: TestDaemon;
  let original: Uint8Array<ArrayBufferLike>;

  beforeAll(async () => {
    daemon = await TestDaemon.start();
    expect((await daemon.cli(["volume", "create", "vm1", "--size", `${volumeBytes}`])).code).toBe(0);
    // Data in the first half; the second half stays zero (a hole the copy must still zero on the target).
    original = new Uint8Array(volumeBytes);
    original.set(pattern(1, volumeBytes / 2));
    const client = await NbdClient.connect({ unix: daemon.nbdSocket }, { name: "vm1" });
    for (let offset = 0; offset < volumeBytes / 2; offset += 4 * MiB) await client.write(offset, original.subarray(offset, offset + 4 * MiB));
    await client.flush();
    await client.disconnect();
  });
  afterAll(() => daemon.cleanup());

  test("into a file it creates: same bytes, checksums match, the session is gone", async () => {
    const target = path.join(daemon.dir, "copy.raw");
    const result = await daemon.cli(["volume", "copy-out", "vm1", target, "--json"]);
    expect(result.code).toBe(0);
    const report = JSON.parse(result.stdout) as CopyOutResult;
    expect(report).toMatchObject({ volume: "vm1", target, targetFormat: "raw", sizeBytes: volumeBytes, preservedBytes: 0 });
    expect(report.checksum.match).toBe(true);
    expect(report.checksum.source).toBe(new Bun.CryptoHasher("sha256").update(original).digest("hex"));
    expect(new Uint8Array(fs.readFileSync(target)) as Uint8Array<ArrayBufferLike>).toEqual(original);
    expect(fs.readdirSync(path.join(daemon.dataDir, "copy-out"))).toEqual([]);
    const list = Bun.spawnSync(["nbdinfo", "--list", `nbd+unix:///?socket=${daemon.nbdSocket}`]).stdout.toString();
    expect(list).toContain("vm1");
    expect(list).not.toContain("@copyout-");
    const text = await daemon.cli(["volume", "copy-out", "vm1", path.join(daemon.dir, "copy2.raw")]);
    expect(text.code).toBe(0);
    expect(text.stdout).toMatch(/^copied vm1 to .*copy2\.raw \(raw\): 32 MiB in [\d.]+ s\n  consistent as of \d{4}-\d\d-\d\dT[\d:.]+Z: every write completed before then is in the copy, none after/);
    expect(text.stdout).toContain(`checksums match: sha256 ${report.checksum.source}`);
  });

  test("into a slow NBD server while the volume is rewritten: the target holds the volume as of the point", async () => {
    const socket = path.join(daemon.dir, "target.sock");
    const nbdkit = Bun.spawn(["nbdkit", "--foreground", "--exit-with-parent", "-U", socket, "--filter=delay", "data", `data=0xff*${volumeBytes}`, "wdelay=300ms"], { stdout: "ignore", stderr: "pipe" });
    const killTimer = setTimeout(() => nbdkit.kill("SIGKILL"), 120_000);
    try {
      await until("nbdkit's socket", () => fs.existsSync(socket), 10_000);
      const target = `nbd+unix:///?socket=${socket}`;
      const eventsBefore = (await daemon.api<{ events: { id: number }[] }>("GET", "/events?limit=1")).events.at(-1)?.id ?? 0;
      const copy = Bun.spawn([...tandemCommand, "volume", "copy-out", "vm1", target, "--json", "--socket", daemon.controlSocket], { stdout: "pipe", stderr: "pipe" });
      // As soon as the point is taken (the daemon logs it), rewrite the first 4 MiB while the copy runs.
      await eventually(
        "the copy-out to take its point",
        async () => (await daemon.api<{ events: { id: number; kind: string }[] }>("GET", "/events?limit=20")).events.some((event) => event.id > eventsBefore && event.kind === "copy-out-started"),
        30_000,
        20,
      );
      const client = await NbdClient.connect({ unix: daemon.nbdSocket }, { name: "vm1" });
      const rewritten = pattern(2, 4 * MiB);
      await client.write(0, rewritten);
      await client.flush();
      await client.disconnect();
      expect(copy.exitCode).toBeNull(); // the rewrite happened during the copy
      const second = await daemon.cli(["volume", "copy-out", "vm1", path.join(daemon.dir, "again.raw")]);
      expect(second.code).toBe(5);
      expect(second.stderr).toContain("a copy-out of vm1 is already running");

      const [stdout, code] = await Promise.all([new Response(copy.stdout).text(), copy.exited]);
      expect(code).toBe(0);
      const report = JSON.parse(stdout) as CopyOutResult;
      expect(report.checksum.match).toBe(true);
      expect(report.preservedBytes).toBe(4 * MiB);
      expect(readAll(target)).toEqual(original);
      const now = readAll(daemon.nbdUri("vm1"));
      expect(now.subarray(0, 4 * MiB)).toEqual(rewritten);
      expect(now.subarray(4 * MiB)).toEqual(original.subarray(4 * MiB));
    } finally {
      nbdkit.kill("SIGTERM");
      await nbdkit.exited;
      clearTimeout(killTimer);
    }
  }, 120_000);

  test("an unknown volume is not found (exit 4); a target it cannot write fails the copy (exit 1) and ends the session", async () => {
    const missing = await daemon.cli(["volume", "copy-out", "nope", path.join(daemon.dir, "x.raw")]);
    expect(missing.code).toBe(4);
    const unwritable = await runCli(["volume", "copy-out", "vm1", "/proc/tandem-cannot-write-here.raw", "--socket", daemon.controlSocket]);
    expect(unwritable.code).toBe(1);
    expect(unwritable.stderr).toContain("qemu-img convert to /proc/tandem-cannot-write-here.raw failed");
    expect(fs.readdirSync(path.join(daemon.dataDir, "copy-out"))).toEqual([]);
  });
});
