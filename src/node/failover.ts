// `tandem failover VOLUME --to NODE`: move a volume's primary role (DESIGN.md §5, failure table row
// "planned switchover"), or force this node to take over when the only data holder is gone.
//
// A planned switchover runs while both nodes are connected and the quorum is SHARED. The old
// primary P releases the volume: it refuses while a client still has the volume open on P (naming
// the client) or, with `wait`, waits until none does; then it freezes the volume's gate (new IO
// waits), waits until the IO in flight has completed — every completed write is mirrored, protocol C
// — flushes so that all of it is durable on both nodes, and gives up the role (a new role epoch,
// persisted). Then the target T adopts the role (same epoch, persisted) and P thaws its gate: from
// then on P refuses writes and T accepts them. No acknowledged write can be lost (T had all of them
// before P stopped) and the pause is the drain plus two role changes. Either side can run the
// command: the steps on the other node go over the authenticated link as peer requests.
//
// Refused while the quorum is not SHARED (a promotion pending, a node outdated or resyncing): the
// lease decides those moves, not an operator. With `force` on a node that is not a data holder and
// whose peer is gone, the quorum runs a forced promotion (src/quorum/lease.ts); the CLI first says
// what it discards.
import { failoverDrainTimeoutMs, failoverWaitMsMax, failoverWaitPollMs } from "../constants.ts";
import { TandemError } from "../common/errors.ts";
import type { Logger } from "../common/log.ts";
import type { NodeState, VolumeRecord } from "./state.ts";
import type { VolumeManager } from "./volumes.ts";
import type { QuorumWriteAuthority } from "./replica/quorum-authority.ts";

export interface FailoverRequest {
  volume: string;
  to: string;
  wait: boolean;
  force: boolean;
}

export interface FailoverResult {
  volume: string;
  from: string;
  to: string;
  kind: "switchover" | "forced" | "already";
  /** Time from the old primary's freeze to the new primary's role (ms); null when nothing moved. */
  pauseMs: number | null;
  epoch: number;
  message: string;
}

/** The peer's half of a switchover (a peer request). */
export type FailoverPeerOp = { op: "release"; name: string; id: number; to: string; wait: boolean } | { op: "adopt"; name: string; id: number; epoch: number } | { op: "thaw"; name: string; id: number };

export interface FailoverDependencies {
  nodeName: string;
  peerName: string;
  state: NodeState;
  volumes: VolumeManager;
  /** The quorum when this node has a witness (absent: static roles). */
  quorum: QuorumWriteAuthority | undefined;
  /** Change this node's role for a volume in the replica layer's authority. */
  setRole(volumeId: number, primary: boolean, epoch: number): void;
  /** Whether the replication link is up. */
  linkUp(): boolean;
  askPeer(op: FailoverPeerOp): Promise<unknown>;
  log: Logger;
}

export class Failover {
  constructor(private readonly deps: FailoverDependencies) {}

  async run(request: FailoverRequest): Promise<FailoverResult> {
    const { nodeName, peerName, state } = this.deps;
    if (request.to !== nodeName && request.to !== peerName) throw new TandemError("invalid_argument", `--to ${request.to}: the nodes are ${nodeName} and ${peerName}`);
    const record = state.volume(request.volume);
    if (!record) throw new TandemError("not_found", `no volume ${request.volume} on ${nodeName}`);
    const quorum = this.deps.quorum?.status();
    if (record.primary === request.to && !request.force) {
      return { volume: record.name, from: record.primary, to: request.to, kind: "already", pauseMs: null, epoch: record.epoch, message: `${request.to} is already the primary of ${record.name}` };
    }
    if (request.force) return this.forced(record, request);
    if (!this.deps.linkUp()) throw new TandemError("failed_precondition", `the link to ${peerName} is down: a planned switchover needs both nodes${quorum ? ` (the quorum moves the volumes of a node that is gone: ${quorum.reason})` : ""}; to take over without the data holder, --force`);
    if (quorum && quorum.quorum !== "shared") throw new TandemError("failed_precondition", `the quorum is ${quorum.quorum} (${quorum.reason}): a switchover waits until it is shared`);
    if (quorum && quorum.dataHolders.length !== 2) throw new TandemError("failed_precondition", `a promotion is pending (${quorum.record}): the switchover waits until both nodes hold the latest data`);
    const status = this.deps.volumes.view(record.name).nodes[0];
    if (status && status.state !== "synced") throw new TandemError("failed_precondition", `${record.name} is ${status.state}: a switchover needs the replicas in sync`);
    return this.switchover(record, request);
  }

  private async switchover(record: VolumeRecord, request: FailoverRequest): Promise<FailoverResult> {
    const { nodeName, peerName } = this.deps;
    const from = record.primary;
    const epoch = record.epoch + 1;
    const started = performance.now();
    const release = { op: "release" as const, name: record.name, id: record.id, to: request.to, wait: request.wait };
    const adopt = { op: "adopt" as const, name: record.name, id: record.id, epoch };
    const thaw = { op: "thaw" as const, name: record.name, id: record.id };
    // The release may wait for clients; the pause runs from the old primary's freeze until the new
    // primary holds the role (timed on this node; the peer reports how long it has been frozen).
    let frozenBeforeMs: number;
    let since: number;
    if (from === nodeName) {
      since = await this.release(release);
      frozenBeforeMs = 0;
    } else {
      frozenBeforeMs = ((await this.deps.askPeer(release)) as { frozenForMs: number }).frozenForMs;
      since = performance.now();
    }
    let pauseMs: number;
    try {
      if (request.to === nodeName) this.adopt(adopt);
      else await this.deps.askPeer(adopt);
      pauseMs = Math.round(frozenBeforeMs + performance.now() - since);
    } finally {
      if (from === nodeName) this.thaw(thaw);
      else await this.deps.askPeer(thaw).catch((error) => this.deps.log.error("the old primary did not thaw after a switchover", { error }));
    }
    const message = `${record.name}: primary moved from ${from} to ${request.to} (role epoch ${epoch}); IO paused ${pauseMs} ms`;
    this.deps.state.addEvent("info", "failover", record.name, message);
    this.deps.log.info("switchover", { volume: record.name, from, to: request.to, pauseMs, totalMs: Math.round(performance.now() - started) });
    return { volume: record.name, from, to: request.to === nodeName ? nodeName : peerName, kind: "switchover", pauseMs, epoch, message };
  }

  private async forced(record: VolumeRecord, request: FailoverRequest): Promise<FailoverResult> {
    const { nodeName, peerName } = this.deps;
    const quorum = this.deps.quorum;
    if (request.to !== nodeName) throw new TandemError("invalid_argument", `--force promotes the node it runs on: run it on ${request.to}`);
    if (!quorum) throw new TandemError("failed_precondition", "--force needs the witness quorum (this node has no witness)");
    if (this.deps.linkUp()) throw new TandemError("failed_precondition", `${peerName} is connected: use a planned switchover (without --force)`);
    const before = quorum.status();
    const discards = `every write ${peerName} made since epoch ${before.epoch} (the regions it marked are overwritten by this node's data when it returns)`;
    await quorum.forcePromotion();
    const after = quorum.status();
    const message = `${nodeName} won epoch ${after.epoch} by force; it promotes ${peerName}'s volumes once ${peerName} is provably fenced. Discarded: ${discards}`;
    this.deps.state.addEvent("warn", "failover-forced", record.name, message);
    return { volume: record.name, from: record.primary, to: nodeName, kind: "forced", pauseMs: null, epoch: Number(after.epoch), message };
  }

  /** The old primary's half: wait for (or refuse over) clients, freeze, drain, flush, give up the role. Returns when it froze (performance.now). */
  async release(op: Extract<FailoverPeerOp, { op: "release" }>): Promise<number> {
    const record = this.recordOf(op.name, op.id);
    if (record.primary !== this.deps.nodeName) throw new TandemError("failed_precondition", `${this.deps.nodeName} is not the primary of ${op.name} (${record.primary} is)`);
    const volumes = this.deps.volumes;
    const deadline = performance.now() + failoverWaitMsMax;
    for (;;) {
      const users = volumes.clientsOf(op.name);
      if (users.length === 0) break;
      if (!op.wait) throw new TandemError("in_use", `${op.name} is open for writing on ${this.deps.nodeName} by ${users.join(", ")}: stop it there first, or pass --wait to wait until it disconnects`);
      if (performance.now() > deadline) throw new TandemError("in_use", `${op.name} is still open on ${this.deps.nodeName} by ${users.join(", ")} after ${failoverWaitMsMax / 1000} s of waiting: nothing moved`);
      await Bun.sleep(failoverWaitPollMs);
    }
    const frozenAt = performance.now();
    await volumes.quiesce(op.name, `switchover to ${op.to}`, failoverDrainTimeoutMs);
    const epoch = record.epoch + 1;
    this.deps.state.setVolumeRole(op.name, op.to, epoch);
    volumes.reloadRecord(op.id);
    this.deps.setRole(op.id, false, epoch);
    return frozenAt;
  }

  /** The new primary's half: take the role (persisted first). */
  adopt(op: Extract<FailoverPeerOp, { op: "adopt" }>): void {
    this.recordOf(op.name, op.id);
    this.deps.state.setVolumeRole(op.name, this.deps.nodeName, op.epoch);
    this.deps.volumes.reloadRecord(op.id);
    this.deps.setRole(op.id, true, op.epoch);
  }

  thaw(op: Extract<FailoverPeerOp, { op: "thaw" }>): void {
    this.deps.volumes.thaw(op.name);
  }

  /** A peer request: the other node runs the switchover and this node is the old or new primary. */
  async answer(op: FailoverPeerOp): Promise<unknown> {
    switch (op.op) {
      case "release": {
        const frozenAt = await this.release(op);
        return { frozenForMs: performance.now() - frozenAt };
      }
      case "adopt":
        this.adopt(op);
        return { adopted: op.name };
      case "thaw":
        this.thaw(op);
        return { thawed: op.name };
    }
  }

  private recordOf(name: string, id: number): VolumeRecord {
    const record = this.deps.state.volume(name);
    if (!record || record.id !== id) throw new TandemError("not_found", `no volume ${name} (id ${id}) on ${this.deps.nodeName}`);
    return record;
  }
}
