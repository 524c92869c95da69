// The two-node lab as the integration tests drive it: the CLI against one lab node, a volume's
// replicas as `tandem volume list --json` reports them, a bounded wait until both nodes say
// the volume is synced, one until the pair has finished every pending create and delete, and a lab
// in a temp directory that is up and synced.
import fs from "node:fs";
import os from "node:os";
import path from "node:path";
import { ControlClient } from "../../src/node/control/client.ts";
import { pairingReconcileIntervalMs, replicaHandshakeTimeoutMs, replicaReconnectDelayMsMax } from "../../src/constants.ts";
import { runCli, type CliResult } from "./daemon.ts";

export interface ReplicaJson {
  node: string;
  backing: string;
  role: string;
  state: string;
  detail?: { progress?: string };
}

export interface LabVolumeJson {
  name: string;
  size: number;
  /** The node that is the volume's primary now (under the quorum it moves on failover). */
  primary: string;
  nodes: ReplicaJson[];
}

/** The CLI against lab node `node` (its control socket under `dir`). */
export function labCli(dir: string, args: string[], node = "a"): Promise<CliResult> {
  return runCli([...args, "--socket", path.join(dir, node, "control.sock")]);
}

/** The volume as `node` lists it; undefined when the node does not answer or lacks it. */
export async function labVolume(dir: string, volume: string, node = "a"): Promise<LabVolumeJson | undefined> {
  const result = await labCli(dir, ["volume", "list", "--json"], node);
  if (result.code !== 0) return undefined;
  return (JSON.parse(result.stdout) as { volumes: LabVolumeJson[] }).volumes.find((entry) => entry.name === volume);
}

/** Wait until both nodes list both replicas of `volume` as synced. */
export async function waitLabSynced(dir: string, volume: string, timeoutMs: number): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  let last: unknown;
  while (Date.now() < deadline) {
    const lists = [(await labVolume(dir, volume, "a"))?.nodes ?? [], (await labVolume(dir, volume, "b"))?.nodes ?? []];
    last = lists;
    if (lists.every((replicas) => replicas.length === 2 && replicas.every((replica) => replica.state === "synced"))) return;
    await Bun.sleep(200);
  }
  throw new Error(`${volume} not synced within ${timeoutMs} ms: ${JSON.stringify(last)}`);
}

export interface PendingJson {
  volume: string;
  id: number;
  state: string;
  node: string;
  next: string;
}

export interface LabHoldings {
  /** name → id of every volume the node holds. */
  volumes: Map<string, number>;
  pending: PendingJson[];
  connected: boolean;
}

/** What `node` holds, straight from its control API (fast enough to poll); undefined when it does not answer. */
export async function labHoldings(dir: string, node: string): Promise<LabHoldings | undefined> {
  const client = new ControlClient(path.join(dir, node, "control.sock"));
  try {
    const listed = await client.request<{ volumes: { name: string; id: number }[]; pending: PendingJson[] }>("GET", "/volumes");
    const status = await client.request<{ node: { link: { connected?: boolean } | null } }>("GET", "/status");
    return { volumes: new Map(listed.volumes.map((volume) => [volume.name, volume.id])), pending: listed.pending ?? [], connected: status.node.link?.connected === true };
  } catch {
    return undefined;
  }
}

/**
 * How long a pair takes to finish what a crash or a cut left pending once both nodes run: the
 * redial back-off at its longest, a handshake, and two reconcile rounds, with room for a loaded
 * machine.
 */
export const labSettleTimeoutMs = 3 * (replicaReconnectDelayMsMax + replicaHandshakeTimeoutMs + 2 * pairingReconcileIntervalMs);

/**
 * Wait until both nodes answer, the link is up, neither reports anything pending, and both hold the
 * same volumes under the same ids; returns those holdings. Throws with both nodes' last answers.
 */
export async function waitLabSettled(dir: string, timeoutMs = labSettleTimeoutMs): Promise<Map<string, number>> {
  const deadline = Date.now() + timeoutMs;
  let last: unknown;
  for (;;) {
    const [a, b] = [await labHoldings(dir, "a"), await labHoldings(dir, "b")];
    last = { a: a && { ...a, volumes: [...a.volumes] }, b: b && { ...b, volumes: [...b.volumes] } };
    if (a && b && a.connected && b.connected && a.pending.length === 0 && b.pending.length === 0) {
      const same = a.volumes.size === b.volumes.size && [...a.volumes].every(([name, id]) => b.volumes.get(name) === id);
      if (same) return a.volumes;
    }
    if (Date.now() > deadline) throw new Error(`the lab did not settle within ${timeoutMs} ms: ${JSON.stringify(last)}`);
    await Bun.sleep(100);
  }
}

export interface TestLab {
  dir: string;
  /** `tandem lab ARGS --dir DIR`. */
  lab(args: string[]): Promise<CliResult>;
  /** `lab up`, then wait until the demo volume is synced. */
  up(): Promise<void>;
  /** `lab down` and remove the directory: also after an `up` that failed or was cut short. */
  stop(): Promise<void>;
}

/**
 * A lab in a fresh temp directory, not started yet. Keep the object before awaiting `up`, so that
 * an `afterAll` can stop it even when the `beforeAll` that brings it up fails or times out (a lab
 * left up keeps its daemons, the witness's qemu-storage-daemon and its FUSE mount).
 */
export function createLab(prefix: string): TestLab {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), prefix));
  const lab = (args: string[]) => runCli(["lab", ...args, "--dir", dir], { timeoutMs: 90_000 });
  // A hook that timed out leaves its `up` running: `stop` lets it finish first (both are bounded),
  // or `lab down` would race it and miss what it starts after.
  let starting: Promise<void> | undefined;
  return {
    dir,
    lab,
    up() {
      starting = (async () => {
        const up = await lab(["up"]);
        if (up.code !== 0) throw new Error(`lab up failed: ${up.stdout}${up.stderr}`);
        await waitLabSynced(dir, "demo", 60_000);
      })();
      return starting;
    },
    async stop() {
      await starting?.catch(() => {});
      await lab(["down"]);
      fs.rmSync(dir, { recursive: true, force: true });
    },
  };
}
