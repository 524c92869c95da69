// The lab's witness as the nodes use it: `tandem lab up` formats it (a qemu-storage-daemon FUSE
// file); `witness-fail` is a real EIO and `witness-hang` a real stall, seen both by the witness disk
// driver in this process and by the daemons; while the witness hangs, the daemons' control API keeps
// answering (the witness IO runs on its own thread); `witness-heal` brings it back and the stuck
// read returns; `lab pause` makes a daemon stop answering and `resume` brings it back. Two real
// daemons, the relay and the witness server, driven through the CLI; bounded waits throughout.
import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import fs from "node:fs";
import os from "node:os";
import path from "node:path";
import { ControlClient } from "../../src/node/control/client.ts";
import { defaultQuorumTiming } from "../../src/quorum/config.ts";
import { DirectWitnessDisk } from "../../src/quorum/disk.ts";
import { witnessLayout } from "../../src/quorum/format.ts";
import { fuseWitnessAvailable, labWitnessDrill } from "../../src/node/lab/witness.ts";
import { runCli } from "../helpers/daemon.ts";
import { eventually } from "../helpers/eventually.ts";
import { labCli } from "../helpers/lab.ts";

const timing = defaultQuorumTiming;
/** A change on the witness shows in a daemon's status within one heartbeat interval plus the IO deadline (and slack for a loaded machine). */
const seenWithinMs = timing.heartbeatIntervalMs + timing.ioTimeoutMs + 5_000;

let dir: string;
const lab = (args: string[]) => runCli(["lab", ...args, "--dir", dir], { timeoutMs: 90_000 });

interface WitnessStatusJson {
  reachable: boolean;
  failure: string | null;
  outstandingMs: number | null;
  latency: { count: number; failures: number; p50Ms: number | null };
  formatted: boolean;
}

async function witnessOf(node: string): Promise<WitnessStatusJson> {
  const reply = await new ControlClient(path.join(dir, node, "control.sock")).request<{ quorum: { witness: WitnessStatusJson } }>("GET", "/status");
  return reply.quorum.witness;
}

function readOnce(disk: DirectWitnessDisk): Promise<{ error: string | null; ms: number }> {
  const started = performance.now();
  return new Promise((resolve) => disk.read(0, witnessLayout.sectors, (error) => resolve({ error, ms: performance.now() - started })));
}

describe.skipIf(!fuseWitnessAvailable())("the lab witness", () => {
  beforeAll(async () => {
    dir = fs.mkdtempSync(path.join(os.tmpdir(), "tandem-witness-lab-"));
    const up = await lab(["up", "--json"]);
    if (up.code !== 0) throw new Error(`lab up failed: ${up.stdout}${up.stderr}`);
  }, 120_000);

  afterAll(async () => {
    await lab(["witness-heal"]);
    await lab(["down"]);
    const mounts = fs.readFileSync("/proc/mounts", "utf8");
    fs.rmSync(dir, { recursive: true, force: true });
    expect(mounts).not.toContain(path.join(dir, "witness.img"));
  }, 120_000);

  test("lab up formats the witness for the lab's cluster; both daemons read it", async () => {
    const cluster = fs.readFileSync(path.join(dir, "cluster.id"), "utf8").trim();
    const show = await labCli(dir, ["witness", "show", "--json"]);
    expect(show.code).toBe(0);
    const view = JSON.parse(show.stdout);
    expect(view).toMatchObject({ path: path.join(dir, "witness.img"), cluster, formatted: true, problems: [] });
    for (const node of ["a", "b"]) {
      const witness = await eventually(`${node} reads the witness`, async () => {
        const status = await witnessOf(node);
        return status.reachable && status.latency.count > 0 && status;
      }, seenWithinMs);
      expect(witness).toMatchObject({ failure: null, formatted: true });
    }
    const status = JSON.parse((await lab(["status", "--json"])).stdout);
    expect(status.witness).toMatchObject({ mode: "fuse", running: true, failing: false, hung: false });
  }, 60_000);

  test("witness-fail is a real EIO: the driver here and both daemons see it; witness-heal ends it", async () => {
    const disk = new DirectWitnessDisk(path.join(dir, "witness.img"));
    try {
      expect((await readOnce(disk)).error).toBeNull();
      expect((await lab(["witness-fail"])).code).toBe(0);
      expect((await readOnce(disk)).error).toBe("EIO");
      for (const node of ["a", "b"]) await eventually(`${node} sees the EIO`, async () => (await witnessOf(node)).failure === "EIO", seenWithinMs);
      expect((await lab(["witness-heal"])).code).toBe(0);
      expect((await readOnce(disk)).error).toBeNull();
      for (const node of ["a", "b"]) await eventually(`${node} reads the witness again`, async () => (await witnessOf(node)).reachable, seenWithinMs);
    } finally {
      disk.close();
    }
  }, 60_000);

  test("witness-hang is a real stall: IO blocks, the daemons count the witness lost and their control API keeps answering", async () => {
    const disk = new DirectWitnessDisk(path.join(dir, "witness.img"));
    try {
      expect((await lab(["witness-hang"])).code).toBe(0);
      const stuck = readOnce(disk);
      const outcome = await Promise.race([stuck, Bun.sleep(2 * timing.ioTimeoutMs).then(() => "still waiting" as const)]);
      expect(outcome).toBe("still waiting");
      for (const node of ["a", "b"]) {
        await eventually(`${node} counts the witness lost`, async () => {
          const witness = await witnessOf(node);
          return !witness.reachable && (witness.outstandingMs ?? 0) > timing.ioTimeoutMs && witness.failure === `no answer within ${timing.ioTimeoutMs} ms (the witness hangs)`;
        }, seenWithinMs);
      }
      // The event loop is free: the control API answers at once, again and again, while the witness hangs.
      const client = new ControlClient(path.join(dir, "a", "control.sock"));
      const latencies: number[] = [];
      for (let request = 0; request < 10; request++) {
        const started = performance.now();
        await client.request("GET", "/status");
        latencies.push(performance.now() - started);
      }
      console.log(`control API during a hung witness: ${latencies.map((ms) => ms.toFixed(1)).join(", ")} ms`);
      expect(Math.max(...latencies)).toBeLessThan(1_000);
      // Healed in-process, not with the CLI: this process holds the FUSE witness open with a read
      // stuck on it, and a program it starts would close its inherited copy of that descriptor in
      // exec — and FUSE flushes on every close, which waits for the stopped server: a deadlock.
      expect((await labWitnessDrill(dir, "heal")).hung).toBe(false);
      const released = await stuck;
      expect(released.error).toBeNull();
      expect(released.ms).toBeGreaterThan(2 * timing.ioTimeoutMs);
      for (const node of ["a", "b"]) await eventually(`${node} reads the witness again`, async () => (await witnessOf(node)).reachable, seenWithinMs);
    } finally {
      disk.close();
    }
  }, 90_000);

  test("pause stops a daemon answering, resume brings it back", async () => {
    expect((await lab(["pause", "b"])).code).toBe(0);
    const status = JSON.parse((await lab(["status", "--json"])).stdout);
    expect(status.nodes.find((node: { name: string }) => node.name === "b")).toMatchObject({ running: true, paused: true });
    const probe = await Promise.race([new ControlClient(path.join(dir, "b", "control.sock")).request("GET", "/status").then(() => "answered"), Bun.sleep(1_000).then(() => "silent")]);
    expect(probe).toBe("silent");
    expect((await lab(["resume", "b"])).code).toBe(0);
    await eventually("b answers again", async () => (await new ControlClient(path.join(dir, "b", "control.sock")).request("GET", "/status")) !== undefined, 10_000);
  }, 60_000);
});
