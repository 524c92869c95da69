// The two-node lab as the integration tests drive it: the CLI against one lab node, a volume's
// replicas as `tandem volume list --json` reports them, and a bounded wait until both nodes say
// the volume is synced.
import path from "node:path";
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
