// What `tandem witness show` prints: every record of a witness, both copies, each marked valid,
// empty, torn or foreign, as plain JSON (bigints as decimal strings). Pure: the CLI decodes a path
// it read itself, the daemon the witness it watches; both render the same shape.
import { clusterIdHex, decodeWitness, describeValue, LeaseMode, latestDecided, nodeIndexes, type RecordPair, slotRoleNames, superblockCluster, type WitnessState } from "./format.ts";

export interface CopyView {
  copy: 0 | 1;
  state: "valid" | "empty" | "torn" | "foreign";
  sequence: string | null;
  why: string | null;
}

export interface RecordView<T> {
  /** The copy in force (the valid one with the higher sequence), decoded; null when none is valid. */
  record: T | null;
  copies: CopyView[];
}

export interface WitnessView {
  cluster: string | null;
  formatted: boolean;
  superblock: RecordView<{ formattedAtMs: number; recordBytes: number; areaBytes: number; timing: Record<string, number> }>;
  nodes: {
    index: number;
    slot: RecordView<{ name: string; heartbeat: string; epoch: string; role: string; fencedEpoch: string; primaryCount: number; volumeIds: number[]; truncated: boolean }>;
    mailbox: RecordView<{ request: string; epoch: string; from: string }>;
    paxos: RecordView<{ instance: string; mbal: string; bal: string; value: string | null }>;
    decided: RecordView<{ version: string; epoch: string; mode: string; owner: string | null; holders: string[]; forced: boolean }>;
  }[];
  /** The decided record in force: the newest valid one of either node's copy. */
  decided: { version: string; epoch: string; summary: string } | null;
  /** Copies that are torn or foreign: what an operator should look at. */
  problems: string[];
}

function view<T, V>(pair: RecordPair<T>, render: (record: T) => V): RecordView<V> {
  return {
    record: pair.newest ? render(pair.newest.record) : null,
    copies: pair.copies.map((copy, index) => ({
      copy: index as 0 | 1,
      state: copy.state,
      sequence: copy.state === "valid" ? copy.sequence.toString() : null,
      why: copy.state === "torn" || copy.state === "foreign" ? copy.why : null,
    })),
  };
}

/** Decode the witness area read from a path. Without a cluster id, the superblock's own is used. */
export function describeWitness(area: Uint8Array, clusterId?: Uint8Array): WitnessView {
  const cluster = clusterId ?? superblockCluster(area);
  const state: WitnessState = decodeWitness(area, cluster ?? new Uint8Array(16));
  const names: [string, string] = [state.slots[0].newest?.record.nodeName || "node 0", state.slots[1].newest?.record.nodeName || "node 1"];
  const problems: string[] = [];
  const note = (what: string, pair: RecordPair<unknown>) => {
    pair.copies.forEach((copy, index) => {
      if (copy.state === "torn" || copy.state === "foreign") problems.push(`${what}, copy ${index}: ${copy.state}: ${copy.why}`);
    });
  };
  note("superblock", state.superblock);
  const nodes = nodeIndexes.map((node) => {
    const name = names[node];
    note(`slot of ${name}`, state.slots[node]);
    note(`mailbox of ${name}`, state.mailboxes[node]);
    note(`paxos block of ${name}`, state.paxos[node]);
    note(`decided record of ${name}`, state.decided[node]);
    return {
      index: node,
      slot: view(state.slots[node], (slot) => ({
        name: slot.nodeName,
        heartbeat: slot.heartbeat.toString(),
        epoch: slot.epoch.toString(),
        role: slotRoleNames[slot.role],
        fencedEpoch: slot.fencedEpoch.toString(),
        primaryCount: slot.primaryCount,
        volumeIds: slot.volumeIds,
        truncated: slot.truncated,
      })),
      mailbox: view(state.mailboxes[node], (mailbox) => ({ request: mailbox.request === 1 ? "fence" : "none", epoch: mailbox.epoch.toString(), from: mailbox.fromName })),
      paxos: view(state.paxos[node], (block) => ({ instance: block.instance.toString(), mbal: block.mbal.toString(), bal: block.bal.toString(), value: block.value ? describeValue(block.value, names) : null })),
      decided: view(state.decided[node], (decided) => ({
        version: decided.version.toString(),
        epoch: decided.value.epoch.toString(),
        mode: decided.value.mode === LeaseMode.Shared ? "shared" : "solo",
        owner: decided.value.mode === LeaseMode.Solo ? names[decided.value.owner] : null,
        holders: decided.value.holders.map((holder) => names[holder]),
        forced: decided.value.forced,
      })),
    };
  });
  const superblock = view(state.superblock, (record) => ({ formattedAtMs: record.formattedAtMs, recordBytes: record.recordBytes, areaBytes: record.areaBytes, timing: { ...record.timing } }));
  const latest = latestDecided(state);
  return {
    cluster: cluster ? clusterIdHex(cluster) : null,
    formatted: state.superblock.newest !== undefined,
    superblock,
    nodes,
    decided: latest.version === 0n ? null : { version: latest.version.toString(), epoch: latest.value.epoch.toString(), summary: describeValue(latest.value, names) },
    problems,
  };
}
