// The failure table of DESIGN.md §5 as fire drills on the two-node lab, with the witness quorum
// deciding who writes: two real daemons, the lab's relay as the replication link, the lab witness
// (a qemu-storage-daemon FUSE export whose IO really fails), and fio --verify=crc32c through the
// NBD export of the writing side. For each row: the expected side writes, the other freezes,
// nothing acknowledged is lost (fio verifies every block it wrote), the replicas end identical
// (`tandem verify`), and the time from the fault to resumed IO is printed (taken on a machine
// shared with other test runs: the figures carry that load). Targets with the default timings:
// link cut ≤ 3 s, node death ≤ 8 s, switchover ≤ 1 s of IO pause. Also: a SIGSTOPped primary that
// resumes after its peer promoted writes not one byte.
import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import fs from "node:fs";
import os from "node:os";
import path from "node:path";
import { defaultQuorumTiming } from "../../src/quorum/config.ts";
import { ControlClient } from "../../src/node/control/client.ts";
import type { StatusReport } from "../../src/node/control/status.ts";
import { runCli } from "../helpers/daemon.ts";
import { eventually } from "../helpers/eventually.ts";
import { labCli, waitLabSynced } from "../helpers/lab.ts";
import { verifiedWorkload } from "../helpers/fio.ts";

const MiB = 1024 * 1024;
const volume = "drill";
const volumeBytes = 64 * MiB;
const timing = defaultQuorumTiming;
/** Longest a decision may take on this loaded machine: a dead node's promotion plus room. */
const decisionMs = 4 * timing.deadTimeoutMs;

let dir: string;
let sockets: Record<string, { control: string; nbd: string }>;
const figures: string[] = [];

const lab = (args: string[]) => runCli(["lab", ...args, "--dir", dir], { timeoutMs: 90_000 });
const cli = (args: string[], node: string) => labCli(dir, args, node);
const status = (node: string) => new ControlClient(sockets[node]!.control).request<StatusReport>("GET", "/status", undefined, { timeoutMs: 2000 });
const quorumState = async (node: string) => (await status(node)).quorum.state;
const primaryOf = async (node: string) => (await status(node)).volumes.find((entry) => entry.name === volume)!.primary;
const nbdUri = (node: string) => `nbd+unix:///${volume}?socket=${sockets[node]!.nbd}`;

interface FioRun {
  done: Promise<{ code: number | null; stdout: string; stderr: string }>;
}

/** fio through `node`'s export: random 4 KiB writes, each read back and checked (crc32c) during and after the run. */
function fio(node: string, seconds: number, extra: string[] = []): FioRun {
  const child = Bun.spawn(
    ["fio", "--name=drill", "--ioengine=nbd", `--uri=${nbdUri(node)}`, "--output-format=json", ...verifiedWorkload({ sizeBytes: volumeBytes, seconds, iodepth: 16 }), ...extra],
    { stdout: "pipe", stderr: "pipe", cwd: dir },
  );
  const timer = setTimeout(() => child.kill("SIGKILL"), (seconds + 60) * 1000);
  return {
    done: (async () => {
      const [stdout, stderr, code] = await Promise.all([new Response(child.stdout).text(), new Response(child.stderr).text(), child.exited]);
      clearTimeout(timer);
      return { code, stdout, stderr };
    })(),
  };
}

/** What fio wrote and verified, and the longest any write waited (the IO pause a VM would see). */
function fioFigures(stdout: string): { writtenBytes: number; verifiedBytes: number; writeLatencyMaxMs: number } {
  const job = (JSON.parse(stdout.slice(stdout.indexOf("{"))) as { jobs: { write: { io_bytes: number; clat_ns: { max: number } }; read: { io_bytes: number } }[] }).jobs[0]!;
  return { writtenBytes: job.write.io_bytes, verifiedBytes: job.read.io_bytes, writeLatencyMaxMs: job.write.clat_ns.max / 1e6 };
}

async function expectFioClean(run: FioRun): Promise<ReturnType<typeof fioFigures>> {
  const result = await run.done;
  expect(result.stderr).not.toMatch(/verify|bad magic|crc32c|error/i);
  expect(result.code).toBe(0);
  const figures = fioFigures(result.stdout);
  expect(figures.writtenBytes).toBeGreaterThan(MiB);
  expect(figures.verifiedBytes).toBeGreaterThan(MiB);
  return figures;
}

/** One 4 KiB write through `node`'s export; resolves with the time it took, rejects with the error. */
async function probeWrite(node: string, offset: number, byte: number, timeoutMs: number): Promise<number> {
  const started = performance.now();
  const child = Bun.spawn(["nbdsh", "-u", nbdUri(node), "-c", `h.pwrite(bytes([${byte}]) * 4096, ${offset}); h.flush()`], { stdout: "pipe", stderr: "pipe", env: { ...process.env, PATH: `/usr/bin:${process.env.PATH}` } });
  const timer = setTimeout(() => child.kill("SIGKILL"), timeoutMs);
  const [stderr, code] = await Promise.all([new Response(child.stderr).text(), child.exited]);
  clearTimeout(timer);
  if (code !== 0) throw new Error(`write on ${node} failed (${code}): ${stderr.trim()}`);
  return performance.now() - started;
}

function blockOf(node: string, offset: number): Uint8Array {
  const fd = fs.openSync(path.join(dir, node, "data/volumes", `${volume}.img`), "r");
  try {
    const bytes = new Uint8Array(4096);
    fs.readSync(fd, bytes, 0, 4096, offset);
    return bytes;
  } finally {
    fs.closeSync(fd);
  }
}

async function verifyIdentical(): Promise<void> {
  await waitLabSynced(dir, volume, 120_000);
  const primary = await primaryOf("a");
  const verify = await cli(["verify", volume, "--json"], primary);
  expect(verify.code).toBe(0);
  const report = JSON.parse(verify.stdout) as { mismatchCount: number; extentsCompared: number; complete: boolean };
  expect(report.complete).toBe(true);
  expect(report.mismatchCount).toBe(0);
}

/** Put the primary role back on a (a planned switchover) so each drill starts from the same place. */
async function primaryOnA(): Promise<void> {
  await waitLabSynced(dir, volume, 120_000);
  await eventually("both nodes SHARED with both holding data", async () => (await status("a")).quorum.state === "shared" && (await status("b")).quorum.state === "shared" && ((await status("a")).quorum as { dataHolders: string[] }).dataHolders.length === 2, decisionMs);
  if ((await primaryOf("a")) !== "a") expect((await cli(["failover", volume, "--to", "a"], "a")).code).toBe(0);
}

describe("the failure table on the lab, under fio --verify", () => {
  beforeAll(async () => {
    dir = fs.mkdtempSync(path.join(os.tmpdir(), "tandem-drills-"));
    const up = await runCli(["lab", "up", "--dir", dir, "--json"], { timeoutMs: 120_000 });
    if (up.code !== 0) throw new Error(`lab up failed: ${up.stdout}${up.stderr}`);
    const labJson = JSON.parse(up.stdout) as { nodes: { name: string; control: string; nbd: string }[] };
    sockets = Object.fromEntries(labJson.nodes.map((node) => [node.name, { control: node.control, nbd: node.nbd }]));
    const created = await cli(["volume", "create", volume, "--size", `${volumeBytes}`, "--json"], "a");
    if (created.code !== 0) throw new Error(`volume create failed: ${created.stdout}${created.stderr}`);
    await primaryOnA();
  });

  afterAll(async () => {
    await runCli(["lab", "down", "--dir", dir]);
    if (process.env.TANDEM_KEEP_LAB) console.log(`lab kept in ${dir}`);
    else fs.rmSync(dir, { recursive: true, force: true });
    console.log(["failure table drills (lab, default timings, machine shared with other test runs):", ...figures].join("\n  "));
  });

  test("replication link cut: a (more primaries) keeps writing, b freezes as outdated; after heal, identical", async () => {
    const run = fio("a", 8);
    await Bun.sleep(1500); // fio is writing when the link goes
    expect((await lab(["cut"])).code).toBe(0);
    await eventually("b frozen and outdated", async () => {
      const b = (await status("b")).quorum as { state: string; outdated?: boolean };
      return b.state === "frozen" && b.outdated === true;
    }, decisionMs);
    expect(await quorumState("a")).toBe("solo");
    const figuresCut = await expectFioClean(run);
    expect((await lab(["heal"])).code).toBe(0);
    await verifyIdentical();
    figures.push(`link cut: longest write wait ${figuresCut.writeLatencyMaxMs.toFixed(0)} ms (target ≤ 3000)`);
    expect(figuresCut.writeLatencyMaxMs).toBeLessThanOrEqual(3000);
  });

  test("witness lost with the link up: nothing stops, health DEGRADED; heal", async () => {
    await primaryOnA();
    const run = fio("a", 5);
    await Bun.sleep(1000);
    expect((await lab(["witness-fail"])).code).toBe(0);
    const seen = await eventually("a reports the witness lost", async () => {
      const report = await status("a");
      return report.quorum.state === "shared" && report.quorum.witness?.reachable === false ? report : undefined;
    }, decisionMs);
    expect(seen.health.state).toBe("degraded");
    const statusRun = await runCli(["status", "--socket", sockets.a!.control]);
    expect(statusRun.code).toBe(6);
    const result = await expectFioClean(run);
    expect((await lab(["witness-heal"])).code).toBe(0);
    figures.push(`witness lost, link up: longest write wait ${result.writeLatencyMaxMs.toFixed(0)} ms (nothing stops)`);
    expect(result.writeLatencyMaxMs).toBeLessThan(timing.linkTimeoutMs);
  });

  test("link and witness lost: both freeze, NO QUORUM (exit 7); writes wait and complete after the heal", async () => {
    await primaryOnA();
    expect((await lab(["witness-fail"])).code).toBe(0);
    await eventually("the witness lost on both", async () => (await status("a")).quorum.witness?.reachable === false && (await status("b")).quorum.witness?.reachable === false, decisionMs);
    expect((await lab(["cut"])).code).toBe(0);
    await eventually("no quorum on both", async () => (await quorumState("a")) === "no-quorum" && (await quorumState("b")) === "no-quorum", decisionMs);
    expect((await runCli(["status", "--socket", sockets.a!.control])).code).toBe(7);
    const frozenVolume = (await status("a")).volumes.find((entry) => entry.name === volume)!;
    expect(frozenVolume.quorumHold?.reason).toContain("no quorum");
    const waiting = probeWrite("a", 0, 0x5a, 60_000);
    const healedAt = performance.now();
    expect((await lab(["witness-heal"])).code).toBe(0);
    expect((await lab(["heal"])).code).toBe(0);
    await waiting; // the write waited through the freeze (onFreeze suspend) and completed
    figures.push(`link + witness lost: IO frozen until healed; the waiting write completed ${(performance.now() - healedAt).toFixed(0)} ms after the heal`);
    await verifyIdentical();
  });

  test("node crash (kill -9 of the primary): b promotes after fence evidence, fio verifies on b; a returns outdated and resyncs", async () => {
    await primaryOnA();
    const run = fio("a", 30);
    await Bun.sleep(1500);
    // Timed from the kill request: an upper bound (the CLI's own start-up is counted).
    const killedAt = performance.now();
    expect((await lab(["kill", "a"])).code).toBe(0);
    await run.done; // its server died
    const writableMs = await eventually("b accepts a write", async () => {
      await probeWrite("b", 8 * MiB, 0x42, 2000);
      return performance.now() - killedAt;
    }, decisionMs, 50);
    figures.push(`node death: b wrote ${writableMs.toFixed(0)} ms after the kill -9 of a was requested (target ≤ 8000)`);
    expect(writableMs).toBeLessThanOrEqual(8000);
    expect(await primaryOf("b")).toBe("b");
    await expectFioClean(fio("b", 5));
    expect((await lab(["start", "a"])).code).toBe(0);
    await eventually("a back and SHARED", async () => (await quorumState("a")) === "shared", decisionMs * 2);
    expect(await primaryOf("a")).toBe("b");
    await verifyIdentical();
  });

  test("planned switchover: no IO error, nothing lost, IO pause ≤ 1 s", async () => {
    await primaryOnA();
    const layout = ["--randrepeat=1", "--randseed=4242"];
    const write = await fio("a", 4, [...layout, "--verify_backlog=0", "--do_verify=0"]).done;
    expect(write.code).toBe(0);
    // A client still holding the volume on a: refused, naming it; with --wait, done once it leaves.
    const holder = Bun.spawn(["nbdsh", "-u", nbdUri("a"), "-c", "import sys; sys.stdin.readline()"], { stdin: "pipe", stdout: "pipe", stderr: "pipe", env: { ...process.env, PATH: `/usr/bin:${process.env.PATH}` } });
    await eventually("the client's session is open on a", async () => (await status("a")).sessions.length > 0, 10_000);
    const refused = await cli(["failover", volume, "--to", "b"], "a");
    expect(refused.code).toBe(5);
    expect(refused.stderr).toContain("is open for writing on a by nbd unix");
    const waiting = cli(["failover", volume, "--to", "b", "--wait", "--json"], "a");
    await eventually("the switchover waits for the client", async () => (await primaryOf("a")) === "a" && (await status("a")).sessions.length > 0, 10_000);
    holder.stdin.write("done\n");
    holder.stdin.flush();
    const waited = await waiting;
    expect(waited.code).toBe(0);
    expect((JSON.parse(waited.stdout) as { to: string }).to).toBe("b");
    await holder.exited;
    // And back to a, then the measured switchover.
    expect((await cli(["failover", volume, "--to", "a"], "b")).code).toBe(0);
    const moved = await cli(["failover", volume, "--to", "b", "--json"], "a");
    expect(moved.code).toBe(0);
    const result = JSON.parse(moved.stdout) as { pauseMs: number; to: string };
    expect(result.to).toBe("b");
    // Every block fio wrote through a reads back, checked, through b.
    const check = Bun.spawnSync(["fio", "--name=drill", "--ioengine=nbd", `--uri=${nbdUri("b")}`, "--rw=randwrite", "--bs=4k", "--iodepth=16", `--size=${volumeBytes}`, "--time_based=1", "--runtime=4", "--verify=crc32c", "--verify_only", ...layout], { cwd: dir });
    expect(check.stderr.toString()).not.toMatch(/verify|bad magic|crc32c/i);
    expect(check.exitCode).toBe(0);
    figures.push(`planned switchover: IO paused ${result.pauseMs} ms (target ≤ 1000)`);
    expect(result.pauseMs).toBeLessThanOrEqual(1000);
  });

  test("a SIGSTOPped primary that resumes after its peer promoted writes not one byte", async () => {
    await primaryOnA();
    const offset = 12 * MiB;
    await probeWrite("a", offset, 0x11, 10_000);
    await waitLabSynced(dir, volume, 60_000);
    // A client with a session on a, whose write arrives while a is stopped.
    const client = Bun.spawn(["nbdsh", "-u", nbdUri("a"), "-c", `import sys; sys.stdin.readline(); h.pwrite(bytes([0xAA]) * 4096, ${offset}); h.flush(); print("acknowledged")`], { stdin: "pipe", stdout: "pipe", stderr: "pipe", env: { ...process.env, PATH: `/usr/bin:${process.env.PATH}` } });
    await eventually("the client's session is open on a", async () => (await status("a")).sessions.length > 0, 10_000);
    expect((await lab(["pause", "a"])).code).toBe(0);
    client.stdin.write("go\n");
    client.stdin.flush();
    await eventually("b promoted", async () => (await primaryOf("b")) === "b" && (await quorumState("b")) === "solo", decisionMs);
    await probeWrite("b", offset, 0xbb, 10_000);
    // Keep a apart from b when it wakes, so nothing but a itself could change a's copy.
    expect((await lab(["cut"])).code).toBe(0);
    expect((await lab(["resume", "a"])).code).toBe(0);
    await eventually("a has caught up and is frozen", async () => ["frozen", "no-quorum"].includes(await quorumState("a")), decisionMs);
    const onA = blockOf("a", offset);
    expect(onA.every((byte) => byte === 0x11)).toBe(true);
    expect(blockOf("b", offset).every((byte) => byte === 0xbb)).toBe(true);
    client.kill("SIGKILL");
    const clientOut = await new Response(client.stdout).text();
    expect(clientOut).not.toContain("acknowledged");
    figures.push("SIGSTOPped primary resumed after b promoted: its copy of the block unchanged (0x11), the client's write never acknowledged");
    expect((await lab(["heal"])).code).toBe(0);
    await verifyIdentical();
    expect(blockOf("a", offset).every((byte) => byte === 0xbb)).toBe(true);
  });
});
