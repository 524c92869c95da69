// Two real daemons in the lab, mirrored through the lab's relay, driven only through the `tandem`
// CLI and real clients: fio with --verify=crc32c through the primary's NBD export while the link is
// cut and healed, while the secondary is SIGKILLed and restarted, and while the primary itself is
// SIGKILLed mid-write and restarted. Afterwards the pair must be back in sync by itself, `tandem
// verify` must find zero differing extents, and the two backing files must hash the same.
import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import { createHash } from "node:crypto";
import fs from "node:fs";
import os from "node:os";
import path from "node:path";
import { runCli } from "../helpers/daemon.ts";
import { runBounded } from "../helpers/run.ts";
import { eventually } from "../helpers/until.ts";
import { labCli, labVolume, waitLabSynced } from "../helpers/lab.ts";
import { replicaLinkTimeoutMs } from "../../src/constants.ts";
import { verifiedWorkload } from "../helpers/fio.ts";

const MiB = 1024 * 1024;
const volume = "mirror";
const volumeBytes = 64 * MiB;

interface LabJson {
  dir: string;
  nodes: { name: string; control: string; nbd: string; dataDir: string }[];
}
let lab: LabJson;
let dir: string;

const cli = (args: string[], node = "a") => labCli(dir, args, node);
const volumeState = (node: string) => labVolume(dir, volume, node);
const waitSynced = () => waitLabSynced(dir, volume, 90_000);
/** Wait until the primary lists its replica as degraded: the link loss is noticed within a link timeout (room for a loaded machine). */
const waitDegraded = () => eventually("the primary's replica degraded", async () => (await volumeState("a"))?.nodes[0]?.state === "degraded", 10 * replicaLinkTimeoutMs);
/** fio runs a while before the fault, so its run spans it: time that must pass, not a synchronisation. */
const letFioWrite = (ms: number) => Bun.sleep(ms);

function fio(args: string[], timeoutMs: number) {
  const uri = `nbd+unix:///${volume}?socket=${lab.nodes[0]!.nbd}`;
  return runBounded(["fio", "--name=mirror", "--ioengine=nbd", `--uri=${uri}`, "--output-format=json", "--group_reporting", ...args], { timeoutMs, cwd: dir });
}

/** fio's JSON: bytes written and blocks verified (read back), to show the run really spanned the fault. */
function fioTotals(stdout: string): { writtenBytes: number; verifiedBytes: number } {
  const job = (JSON.parse(stdout.slice(stdout.indexOf("{"))) as { jobs: { write: { io_bytes: number }; read: { io_bytes: number } }[] }).jobs[0]!;
  return { writtenBytes: job.write.io_bytes, verifiedBytes: job.read.io_bytes };
}

describe("mirrored volume in the two-node lab", () => {
  beforeAll(async () => {
    dir = fs.mkdtempSync(path.join(os.tmpdir(), "tandem-mirror-"));
    const up = await runCli(["lab", "up", "--dir", dir, "--json"], { timeoutMs: 90_000 });
    if (up.code !== 0) throw new Error(`lab up failed: ${up.stdout}${up.stderr}`);
    lab = JSON.parse(up.stdout) as LabJson;
    const created = await cli(["volume", "create", volume, "--size", `${volumeBytes}`, "--json"]);
    if (created.code !== 0) throw new Error(`volume create failed: ${created.stdout}${created.stderr}`);
    await waitSynced();
  });

  afterAll(async () => {
    await runCli(["lab", "down", "--dir", dir]);
    fs.rmSync(dir, { recursive: true, force: true });
  });

  test("the volume exists on both nodes with the stable fields: a primary, b secondary", async () => {
    const a = (await volumeState("a"))!;
    expect(a.size).toBe(volumeBytes);
    expect(a.nodes.map((node) => [node.node, node.role, node.state])).toEqual([
      ["a", "primary", "synced"],
      ["b", "secondary", "synced"],
    ]);
    expect(a.nodes[1]!.backing).toBe(path.join(dir, "b/data/volumes/mirror.img"));
    // The secondary refuses writes.
    const write = Bun.spawnSync(["nbdsh", "-u", `nbd+unix:///${volume}?socket=${lab.nodes[1]!.nbd}`, "-c", "h.pwrite(b'x' * 512, 0)"], { env: { ...process.env, PATH: `/usr/bin:${process.env.PATH}` } });
    expect(write.exitCode).not.toBe(0);
  });

  test("fio verifies while the link is cut and healed; the pair resyncs by itself", async () => {
    const run = fio(verifiedWorkload({ sizeBytes: volumeBytes, seconds: 8, iodepth: 32 }), 120_000);
    await letFioWrite(1500);
    expect((await runCli(["lab", "cut", "--dir", dir])).code).toBe(0);
    await waitDegraded();
    await letFioWrite(1000); // through the degraded primary
    expect((await runCli(["lab", "heal", "--dir", dir])).code).toBe(0);
    const result = await run.done;
    expect(result.stderr).not.toMatch(/verify|bad magic|crc32c/i);
    expect(result.code).toBe(0);
    const totals = fioTotals(result.stdout);
    expect(totals.writtenBytes).toBeGreaterThan(4 * MiB);
    expect(totals.verifiedBytes).toBeGreaterThan(4 * MiB);
    await waitSynced();
  });

  test("fio verifies while the secondary is SIGKILLed and restarted", async () => {
    const run = fio(verifiedWorkload({ sizeBytes: volumeBytes, seconds: 8, iodepth: 32 }), 120_000);
    await letFioWrite(1500);
    expect((await runCli(["lab", "kill", "b", "--dir", dir])).code).toBe(0);
    await waitDegraded();
    await letFioWrite(1000); // through the degraded primary
    expect((await runCli(["lab", "start", "b", "--dir", dir])).code).toBe(0);
    const result = await run.done;
    expect(result.stderr).toBe("");
    expect(result.code).toBe(0);
    expect(fioTotals(result.stdout).verifiedBytes).toBeGreaterThan(4 * MiB);
    await waitSynced();
  });

  test("the primary SIGKILLed mid-write comes back, resyncs, and verify finds the replicas identical", async () => {
    const run = fio(["--rw=randwrite", "--bs=64k", "--iodepth=16", `--size=${volumeBytes}`, "--time_based=1", "--runtime=30"], 60_000);
    await letFioWrite(2000);
    expect((await runCli(["lab", "kill", "a", "--dir", dir])).code).toBe(0);
    await run.done; // fails: its server died
    expect((await runCli(["lab", "start", "a", "--dir", dir])).code).toBe(0);
    await waitSynced();

    // Under the witness quorum b may have promoted the volume while a was dead (a then rejoined as
    // its secondary): verify runs on whichever node is the primary now.
    const primary = (await volumeState("a"))!.primary;
    const verify = await cli(["verify", volume, "--json"], primary);
    expect(verify.code).toBe(0);
    const report = JSON.parse(verify.stdout) as { mismatchCount: number; extentsCompared: number; complete: boolean };
    expect(report.complete).toBe(true);
    expect(report.extentsCompared).toBeGreaterThan(0);
    expect(report.mismatchCount).toBe(0);

    const down = await runCli(["lab", "down", "--dir", dir]);
    expect(down.code).toBe(0);
    const hash = (node: string) => createHash("sha256").update(fs.readFileSync(path.join(dir, node, "data/volumes/mirror.img"))).digest("hex");
    expect(hash("a")).toBe(hash("b"));
  });
});
