// How a mirrored create or delete completes across the pair after a crash, a kill or a lost link:
// pure functions over what each node holds (its volumes and its intents), so the rules are tested
// without daemons and the driver (pairing.ts) only carries them out.
//
// An intent is written before the step it announces, in the same SQLite transaction as whatever
// that step must not be separated from, and removed when the operation has finished on both nodes:
//   create  - on the creating node, from before its replica exists until the peer's replica exists
//             and the create is committed (the intent removed). A create that did not commit is rolled
//             back: this node's replica is removed at once (or at the next start) and the intent
//             becomes a delete, so the peer's replica, if it was made, goes too.
//   replica - on the peer, from before it makes its replica at the creator's request until the
//             creator commits. If the creator turns out to hold neither the volume nor an intent on
//             it, the create was rolled back there and this replica is removed too.
//   delete  - on a node that deletes (or rolls back) a volume: its own replica is removed first and
//             the intent stays until the peer confirms that its replica of that id is gone.
// Everything is keyed by (name, id): ids are never reused (state.ts), so a step meant for one
// volume can never touch another that later took the same name.
import type { IntentRecord } from "./state.ts";

/** What one node holds, as it tells its peer (PeerRequest `describe`). */
export interface PairSnapshot {
  volumes: { name: string; id: number }[];
  intents: IntentRecord[];
}

export type ReconcileStep =
  /** A delete intent whose local replica is still here (the delete was interrupted): remove it. */
  | { kind: "finishLocalDelete"; volume: string; id: number }
  /** A delete intent: ask the peer to drop its replica of this id, then remove the intent. */
  | { kind: "askPeerDelete"; volume: string; id: number; force: boolean }
  /** A replica intent the creator has committed (it holds the volume and no intent on it). */
  | { kind: "commitReplica"; volume: string; id: number }
  /** A replica intent whose creator has no trace of the volume: the create was rolled back there. */
  | { kind: "abortReplica"; volume: string; id: number }
  /** A create intent whose create is no longer running: roll it back. */
  | { kind: "rollBackCreate"; volume: string; id: number };

const same = (a: { volume: string; id: number }, name: string, id: number) => a.volume === name && a.id === id;

/**
 * The steps that move this node's intents forward, given both nodes' holdings. `running` names the
 * volumes with an operation in progress on this node (their intents are left alone). Steps for one
 * volume come in the order they must run.
 */
export function planReconcile(local: PairSnapshot, peer: PairSnapshot, running: ReadonlySet<string>): ReconcileStep[] {
  const steps: ReconcileStep[] = [];
  for (const intent of local.intents) {
    if (running.has(intent.volume)) continue;
    const { volume, id } = intent;
    switch (intent.operation) {
      case "delete":
        if (local.volumes.some((entry) => entry.name === volume && entry.id === id)) steps.push({ kind: "finishLocalDelete", volume, id });
        steps.push({ kind: "askPeerDelete", volume, id, force: intent.force });
        break;
      case "replica": {
        const creatorIntent = peer.intents.find((other) => same(other, volume, id));
        // The creator is still creating, or it is deleting and will ask us itself.
        if (creatorIntent) break;
        const committed = peer.volumes.some((entry) => entry.name === volume && entry.id === id);
        steps.push(committed ? { kind: "commitReplica", volume, id } : { kind: "abortReplica", volume, id });
        break;
      }
      case "create":
        steps.push({ kind: "rollBackCreate", volume, id });
        break;
    }
  }
  return steps;
}

/** A volume whose create or delete is unfinished, or that only one node holds, with what to do next. */
export interface PendingVolume {
  volume: string;
  id: number;
  /** create / delete: an intent waits for the peer; only-here / only-on-peer: a one-sided leftover without intents. */
  state: "create-pending" | "delete-pending" | "only-here" | "only-on-peer";
  /** The node that still has to act, or that holds the leftover. */
  node: string;
  sinceMs: number | null;
  /** The next safe action, in words an operator can follow. */
  next: string;
}

/**
 * What `volume list` and `status` report about unfinished work. `peer` is the peer's last answer
 * (undefined when it never answered): one-sided volumes are only reported from a fresh answer, since
 * a stale one cannot tell a leftover from a volume created or deleted since.
 */
export function pendingVolumes(local: PairSnapshot, peer: PairSnapshot | undefined, names: { local: string; peer: string }, connected: boolean): PendingVolume[] {
  const pending: PendingVolume[] = [];
  const after = connected ? `now that ${names.peer} is connected (within seconds)` : `when ${names.peer} is reachable again`;
  for (const intent of local.intents) {
    const { volume, id, sinceMs } = intent;
    switch (intent.operation) {
      case "create":
        pending.push({ volume, id, state: "create-pending", node: names.peer, sinceMs, next: `the create is in progress; if it does not finish it is rolled back on both nodes` });
        break;
      case "replica":
        pending.push({
          volume,
          id,
          state: "create-pending",
          node: names.peer,
          sinceMs,
          next: `${names.peer} created this volume and has not confirmed it: it is kept or removed ${after}; \`tandem volume delete ${volume} --force\` removes it from both nodes`,
        });
        break;
      case "delete":
        pending.push({ volume, id, state: "delete-pending", node: names.peer, sinceMs, next: `deleted here; ${names.peer}'s replica is removed ${after}. Nothing else to do` });
        break;
    }
  }
  if (!peer || !connected) return pending;
  const intentOn = (snapshot: PairSnapshot, name: string, id: number) => snapshot.intents.some((intent) => same(intent, name, id));
  /** Volumes `holder` has and `other` lacks (by name and id), with no intent on either side. */
  const oneSided = (holder: PairSnapshot, other: PairSnapshot, state: "only-here" | "only-on-peer", node: string, next: (name: string) => string) => {
    for (const entry of holder.volumes) {
      if (intentOn(local, entry.name, entry.id) || intentOn(peer, entry.name, entry.id)) continue;
      if (other.volumes.some((candidate) => candidate.name === entry.name && candidate.id === entry.id)) continue;
      pending.push({ volume: entry.name, id: entry.id, state, node, sinceMs: null, next: next(entry.name) });
    }
  };
  oneSided(local, peer, "only-here", names.local, (name) => `${names.peer} has no replica of it: \`tandem volume delete ${name} --force\` removes it here`);
  oneSided(peer, local, "only-on-peer", names.peer, (name) => `only ${names.peer} holds it: \`tandem volume delete ${name} --force\` (on either node) removes it there`);
  return pending;
}
