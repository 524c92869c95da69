// A graceful stop (SIGTERM) of either lab daemon while a client writes with fio --verify=crc32c
// through the primary: the secondary's stop costs the client nothing, the primary's finishes the
// writes in flight and then closes the client's connection; each daemon exits within 5 s, logs a
// clean stop, and after its restart the pair resyncs and verify finds no difference. Two real
// daemons and the relay, driven through the CLI, fio and signals to the lab's own pids.
// (Importing a backing that holds data is lab-lifecycle.test.ts.)
import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import fs from "node:fs";
import os from "node:os";
import path from "node:path";
import { runCli } from "../helpers/daemon.ts";
import { labCli, labVolume, waitLabSynced } from "../helpers/lab.ts";
import { runBounded } from "../helpers/run.ts";
import { eventually } from "../helpers/until.ts";
import { verifiedWorkload } from "../helpers/fio.ts";

const MiB = 1024 * 1024;
const volume = "stop";
const volumeBytes = 32 * MiB;
/** What a stopping daemon may take (the link timeout bounds its last exchange with the peer). */
const stopMsMax = 5000;

interface LabJson {
  nodes: { name: string; nbd: string }[];
}
let dir: string;
let nbd: Record<string, string>;

const cli = (args: string[], node = "a") => labCli(dir, args, node);
const lab = (args: string[]) => runCli(["lab", ...args, "--dir", dir], { timeoutMs: 90_000 });
const waitSynced = () => waitLabSynced(dir, volume, 120_000);

function pidOf(node: string): number {
  return Number(fs.readFileSync(path.join(dir, node, "node.pid"), "utf8").trim());
}

function alive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch {
    return false;
  }
}

/** SIGTERM a lab daemon (started by this test's lab) and measure how long it takes to exit. */
async function terminate(node: string): Promise<number> {
  const pid = pidOf(node);
  const started = performance.now();
  process.kill(pid, "SIGTERM");
  const deadline = started + 30_000;
  while (alive(pid) && performance.now() < deadline) await Bun.sleep(20);
  if (alive(pid)) process.kill(pid, "SIGKILL");
  return performance.now() - started;
}

/** The daemon's own account of its stop: the last "node stopped" record and any drain timeout. */
function stopRecord(node: string): { clean: boolean | undefined; timedOut: boolean } {
  const records = fs
    .readFileSync(path.join(dir, node, "node.log"), "utf8")
    .split("\n")
    .filter((line) => line.startsWith("{"))
    .map((line) => JSON.parse(line) as { msg?: string; clean?: boolean });
  const stopped = records.filter((record) => record.msg === "node stopped").at(-1);
  return { clean: stopped?.clean, timedOut: records.some((record) => record.msg?.includes("IO possibly in flight") === true) };
}

function fio(seconds: number) {
  return runBounded(
    [
      "fio",
      "--name=lifecycle",
      "--ioengine=nbd",
      `--uri=nbd+unix:///${volume}?socket=${nbd.a}`,
      ...verifiedWorkload({ sizeBytes: volumeBytes, seconds, iodepth: 32 }),
      "--output-format=json",
    ],
    { timeoutMs: 120_000, cwd: dir },
  ).done;
}

async function verifyReplicas(): Promise<{ mismatchCount: number; complete: boolean }> {
  // Under the witness quorum the survivor may have promoted the volume while its primary was
  // stopped: verify runs on whichever node is the primary now.
  const primary = (await labVolume(dir, volume, "a"))?.primary ?? "a";
  const verify = await cli(["verify", volume, "--json"], primary);
  expect(verify.code).toBe(0);
  return JSON.parse(verify.stdout) as { mismatchCount: number; complete: boolean };
}

/** Wait until fio has written something (a node's status shows writes flowing), bounded. */
async function waitForClientWrites(): Promise<void> {
  await eventually(
    "fio to start writing",
    async () => (((await labVolume(dir, volume, "a"))?.nodes[0]?.detail as { activityLogExtents?: number } | undefined)?.activityLogExtents ?? 0) > 0,
    30_000,
    50,
  );
}

describe("stopping a lab daemon gracefully under a verifying client", () => {
  beforeAll(async () => {
    dir = fs.mkdtempSync(path.join(os.tmpdir(), "tandem-stop-"));
    const up = await lab(["up", "--json"]);
    if (up.code !== 0) throw new Error(`lab up failed: ${up.stdout}${up.stderr}`);
    nbd = Object.fromEntries((JSON.parse(up.stdout) as LabJson).nodes.map((node) => [node.name, node.nbd]));
    const created = await cli(["volume", "create", volume, "--size", `${volumeBytes}`, "--json"]);
    if (created.code !== 0) throw new Error(`volume create failed: ${created.stdout}${created.stderr}`);
    await waitSynced();
  });

  afterAll(async () => {
    await lab(["down"]);
    fs.rmSync(dir, { recursive: true, force: true });
  });

  test("a SIGTERM of the secondary under fio costs the client nothing; it exits within 5 s and resyncs", async () => {
    const run = fio(8);
    await waitForClientWrites();
    const stopMs = await terminate("b");
    expect((await lab(["start", "b"])).code).toBe(0);
    const result = await run;
    expect(result.stderr).toBe("");
    expect(result.code).toBe(0);
    expect({ stopMs: stopMs < stopMsMax, ...stopRecord("b") }).toEqual({ stopMs: true, clean: true, timedOut: false });
    await waitSynced();
    expect((await verifyReplicas()).mismatchCount).toBe(0);
  });

  test("a SIGTERM of the primary under fio completes the writes in flight, closes the client's connection, exits within 5 s", async () => {
    const run = fio(20);
    await waitForClientWrites();
    const stopMs = await terminate("a");
    const result = await run;
    // The client saw its connection end, not a wrong block: no verify error, no write error
    // other than the connection going away.
    expect(result.stderr).not.toMatch(/verify|crc32c|bad magic/i);
    expect({ stopMs: stopMs < stopMsMax, ...stopRecord("a") }).toEqual({ stopMs: true, clean: true, timedOut: false });
    expect((await lab(["start", "a"])).code).toBe(0);
    await waitSynced();
    expect((await verifyReplicas()).mismatchCount).toBe(0);
  });
});
