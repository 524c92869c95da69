// The lease state machine of DESIGN.md §5: who may write, decided through the witness. A pure core
// (CONVENTIONS.md §1): events in (`tick`, link up/down, the peer's quorum message, witness IO done,
// the node's volumes and sync state, an operator's forced promotion), actions out (witness reads and
// writes, per-volume grants, promotions and demotions, what to persist, watchdog feeds, reports).
// Time is a count of ticks of this node's own monotonic clock; randomness is injected. The node's
// driver executes the actions in the order given (docs/quorum.md states the contract).
//
// In one paragraph: while the peer is connected (link up and its quorum messages arriving), a node
// serves its volumes by their roles, and records SHARED on the witness once both say they are in
// sync. When the link is lost every volume freezes at once; a node that is a data holder in the
// newest decided record proposes SOLO(itself) for the next version — at once if it serves more
// primary volumes, after `headStart` otherwise — through one Disk Paxos instance (paxos.ts). The
// winner resumes its primaries, and promotes the peer's volumes once the peer is provably fenced:
// its slot says fenced(epoch), or its heartbeat counter stayed still for `deadTimeout` on this
// node's clock (counted from no earlier than the link loss). The loser stays frozen, demotes its
// primaries, persists "outdated" and writes fenced(epoch). A node whose own heartbeat writes have
// not succeeded for `selfFenceTimeout` while the link is down stops all IO and must win a new epoch
// to serve again. Every witness IO has a deadline; a late answer is ignored.
import { assert } from "../common/assert.ts";
import type { Random } from "../replica/io.ts";
import type { Grant } from "../replica/types.ts";
import { checkTiming, type QuorumTicks, type QuorumTiming, timingDifference, timingFromWitness, timingTicks } from "./config.ts";
import {
  type DecidedRecord,
  decodeWitness,
  describeValue,
  emptyPaxosBlock,
  encodeDecided,
  encodeMailbox,
  encodePaxosBlock,
  encodeSlot,
  initialDecided,
  latestDecided,
  LeaseMode,
  type LeaseValue,
  MailboxRequest,
  type NodeIndex,
  otherNode,
  type PaxosBlock,
  type RecordPair,
  sameValue,
  type Slot,
  SlotRole,
  witnessLayout,
  type WitnessState,
} from "./format.ts";
import type { QuorumMessage } from "./message.ts";
import { afterRead, type BallotState, startBallot } from "./paxos.ts";
import { witnessRecordBytes } from "../constants.ts";

/** Deliberately broken behaviours, for the simulator to prove its checkers catch them. Never set in production. */
export interface QuorumBugs {
  /** The winner promotes the peer's volumes at once, without fence evidence. */
  promoteWithoutFence?: boolean;
  /** The owner keeps its lease until deadTimeout (the peer's full timeout) instead of selfFenceTimeout: no margin. */
  renewWithoutMargin?: boolean;
  /** A node that does not hold the latest data proposes SOLO(itself) like a data holder. */
  nonHolderWins?: boolean;
}

export interface QuorumVolume {
  id: number;
  /** This node is the volume's primary. */
  primary: boolean;
}

/** What the node keeps across restarts for the core (the quorum's part of the node's state). */
export interface QuorumPersisted {
  /** This node lost epoch N and its data is behind its peer's (0: not outdated). */
  outdatedEpoch: bigint;
  /** The newest decided record this node knows. */
  lastDecided: DecidedRecord;
  /** This node won epoch N and still has to promote the peer's volumes once the peer is fenced (0: none). */
  promotionEpoch: bigint;
}

export type QuorumEvent =
  /** `count` ticks of this node's monotonic clock have passed (more than one after the process was stopped). */
  | { kind: "tick"; count?: number }
  /** The replication link to the peer is connected (authenticated). */
  | { kind: "linkUp" }
  | { kind: "linkDown"; reason: string }
  | { kind: "peerMessage"; message: QuorumMessage }
  /** A witness read or write finished: `bytes` for a read; `error` names the failure. */
  | { kind: "witnessDone"; io: number; error: string | null; bytes?: Uint8Array }
  /** The node's volumes and this node's role for each (replaces the previous list). */
  | { kind: "volumes"; volumes: QuorumVolume[] }
  /** Every volume is in sync with the peer (false while any is resyncing, degraded or disconnected). */
  | { kind: "synced"; synced: boolean }
  /** An operator forces this node to take over although it does not hold the latest data. */
  | { kind: "forcePromotion"; request: number };

export type QuorumAction =
  | { kind: "witnessRead"; io: number; sector: number; count: number }
  | { kind: "witnessWrite"; io: number; sector: number; bytes: Uint8Array }
  | { kind: "sendPeer"; message: QuorumMessage }
  /** Ask the node to drop the replication connection: the core counts the peer as gone (it fell silent). */
  | { kind: "dropLink"; reason: string }
  /** New grants for the volumes whose grant changed. */
  | { kind: "grants"; grants: { volumeId: number; grant: Grant }[] }
  /** Make this node the volume's primary in `epoch` (the peer is fenced). Durable before the next witness write. */
  | { kind: "promote"; volumeId: number; epoch: bigint }
  /** This node lost: it is no longer the volume's primary. Durable before the next witness write. */
  | { kind: "demote"; volumeId: number; epoch: bigint }
  /** Persist the quorum state. Durable before the next witness write. */
  | { kind: "persist"; state: QuorumPersisted }
  | { kind: "feedWatchdog" }
  | { kind: "complete"; request: number; error: string | null; result?: unknown }
  | { kind: "report"; report: QuorumReport };

export type QuorumReport =
  | { kind: "phase"; from: PhaseName; to: PhaseName; reason: string }
  | { kind: "decided"; record: DecidedRecord; source: "ballot" | "witness" | "peer" }
  | { kind: "won"; epoch: bigint; forced: boolean }
  | { kind: "lost"; epoch: bigint; winner: NodeIndex }
  /** The peer is provably fenced for `epoch` (newest known), judged by this node; reported once per epoch. */
  | { kind: "peerFenced"; epoch: bigint; evidence: "fenced" | "heartbeat still" }
  | { kind: "promoted"; epoch: bigint; volumes: number[]; evidence: "fenced" | "heartbeat still" | "none" }
  | { kind: "selfFenced"; heartbeatAgeTicks: number }
  | { kind: "witness"; reachable: boolean; reason: string }
  | { kind: "ballotAborted"; instance: bigint; reason: string; detail: string }
  | { kind: "waiting"; holder: NodeIndex; reason: string }
  /** Two different values for one version: agreement is broken (a bug or a tampered witness). */
  | { kind: "conflict"; version: bigint; known: LeaseValue; other: LeaseValue; source: string };

export type PhaseName = "starting" | "connected" | "deciding" | "owner" | "outdated" | "selfFenced";

type Phase =
  /** Reading the witness and waiting for the peer. */
  | { kind: "starting" }
  /** The peer is connected: volumes serve by their roles. */
  | { kind: "connected"; sinceTick: number }
  /** The link is lost: frozen while the lease is decided (or while waiting for the data holder). */
  | { kind: "deciding"; sinceTick: number }
  /** SOLO(me) won in this process while disconnected. */
  | { kind: "owner"; epoch: bigint; sinceTick: number }
  /** Lost the lease: frozen, outdated. */
  | { kind: "outdated"; epoch: bigint; sinceTick: number }
  /** Own heartbeats stalled past selfFenceTimeout while disconnected: all IO stopped. */
  | { kind: "selfFenced"; sinceTick: number };

/** CONVENTIONS.md §11: every phase change is checked against this table. */
const allowedTransitions: Record<PhaseName, PhaseName[]> = {
  starting: ["connected", "deciding", "outdated", "selfFenced"],
  connected: ["deciding", "outdated"],
  deciding: ["connected", "owner", "outdated", "selfFenced"],
  owner: ["connected", "deciding", "outdated", "selfFenced"],
  outdated: ["connected", "deciding", "owner"],
  selfFenced: ["connected", "deciding", "owner", "outdated"],
};

type OwnedRecord = "slot" | "paxos" | "decided" | "mailbox";

type IoIntent =
  | { kind: "read"; ballot: number | undefined }
  | { kind: "heartbeat" }
  | { kind: "paxos"; ballot: number; block: PaxosBlock }
  /** Write this node's copy of the newest decided record (the record is fixed when the write is issued). */
  | { kind: "decided"; record: DecidedRecord | undefined }
  | { kind: "mailbox"; epoch: bigint };

interface InFlight {
  io: number;
  intent: IoIntent;
  issuedAt: number;
  write?: { record: OwnedRecord; copy: 0 | 1; sequence: bigint };
}

interface Ballot {
  id: number;
  state: BallotState;
  awaitingRead: boolean;
  purpose: "solo" | "shared" | "force";
  request?: number;
}

export interface QuorumStatus {
  node: string;
  peer: string;
  phase: PhaseName;
  /** The summary an operator reads: shared, solo, frozen or no-quorum. */
  quorum: "shared" | "solo" | "frozen" | "no-quorum";
  reason: string;
  version: string;
  epoch: string;
  record: string;
  dataHolders: string[];
  outdated: boolean;
  witness: {
    reachable: boolean;
    failure: string | null;
    lastReadAgeMs: number | null;
    lastWriteAgeMs: number | null;
    lastHeartbeatAgeMs: number | null;
  };
  peerHeartbeat: { value: string | null; stillForMs: number; fencedEpoch: string };
  /** How long this node may still serve alone before it must fence itself (owner only). */
  leaseRemainingMs: number | null;
  ballot: string | null;
  /** What an operator can do next when the node waits (cold start, outdated). */
  nextSafeAction: string | null;
}

export interface QuorumCoreOptions {
  me: NodeIndex;
  /** Both nodes' names, by index. */
  names: readonly [string, string];
  clusterId: Uint8Array;
  timing: QuorumTiming;
  tickMs?: number;
  random: Random;
  persisted?: QuorumPersisted;
  volumes?: QuorumVolume[];
  bugs?: QuorumBugs;
}

const never = -1_000_000_000;

function sameGrant(a: Grant, b: Grant): boolean {
  if (a.kind === "write") return b.kind === "write" && a.epoch === b.epoch;
  return a.kind === b.kind && a.reason === (b as { reason: string }).reason;
}

export class QuorumCore {
  readonly me: NodeIndex;
  readonly peer: NodeIndex;
  private readonly names: readonly [string, string];
  private readonly clusterId: Uint8Array;
  private readonly timing: QuorumTiming;
  private readonly ticks: QuorumTicks;
  private readonly random: Random;
  private readonly bugs: QuorumBugs;

  private now = 0;
  private phase: Phase = { kind: "starting" };
  private latest: DecidedRecord;
  private outdatedEpoch: bigint;
  private readonly volumes = new Map<number, boolean>();
  private synced = false;

  // The link: `up` as the node reports it; `peer` is the peer's last message on this connection.
  private linkUp = false;
  /** The peer's last message on this connection, once the connection counts (it echoed one of ours). */
  private peerMessage: QuorumMessage | undefined;
  private sentSequence = 0;
  private firstSequenceOnLink = 1;
  private receivedSequence = 0;
  private peerSeenAt = never;
  private linkUpAt = 0;
  /** When the link was last lost (or last up): stillness counts only from here. */
  private linkLostAt = 0;
  private nextMessageAt = 0;

  // The witness.
  private witnessKnown = false;
  private witnessReachable = false;
  private witnessFailure: string | null = "not read yet";
  private lastReadOkAt = never;
  private lastWriteOkAt = never;
  private lastHeartbeatStartOk = never;
  private nextHeartbeatAt = 0;
  private heartbeat = 0n;
  private fencedEpoch = 0n;
  private readonly owned: Record<OwnedRecord, { copy: 0 | 1 | undefined; sequence: bigint }> = {
    slot: { copy: undefined, sequence: 0n },
    paxos: { copy: undefined, sequence: 0n },
    decided: { copy: undefined, sequence: 0n },
    mailbox: { copy: undefined, sequence: 0n },
  };
  private myBlock: PaxosBlock = emptyPaxosBlock;
  private myDecidedVersion = 0n;
  private highestMbal = 0n;

  // The peer as the witness shows it.
  private peerHeartbeat: bigint | null | undefined = undefined;
  /** The sequences of the other records the peer writes (its Paxos block, its decided record, its fence requests to us). */
  private peerRecords = "";
  /** When a read last showed the peer's heartbeat or one of its other records changed (our tick). */
  private peerHeartbeatSeenAt = 0;
  private peerFencedEpoch = 0n;
  private peerFencedReported: bigint | undefined;

  // Deciding.
  private ballot: Ballot | undefined;
  private nextBallotId = 1;
  private ballotRetryAt = 0;
  private sharedEligibleSince: number | undefined;
  private wonEpoch: bigint | undefined;
  private pendingPromotion: bigint | undefined;
  private forceRequest: number | undefined;

  // IO.
  private readonly queue: IoIntent[] = [];
  private inFlight: InFlight | undefined;
  private nextIo = 1;

  private readonly grants = new Map<number, Grant>();
  private actions: QuorumAction[] = [];

  constructor(options: QuorumCoreOptions) {
    this.me = options.me;
    this.peer = otherNode(options.me);
    this.names = options.names;
    this.clusterId = options.clusterId;
    this.timing = options.timing;
    checkTiming(options.timing, "quorum timing", options.tickMs);
    this.ticks = timingTicks(options.timing, options.tickMs);
    this.random = options.random;
    this.bugs = options.bugs ?? {};
    this.latest = options.persisted?.lastDecided ?? initialDecided;
    this.outdatedEpoch = options.persisted?.outdatedEpoch ?? 0n;
    // A node that persisted outdated(E) gave up everything in E: it says fenced(E) from the start,
    // even if its fenced(E) heartbeat never reached the witness before it went down, or the winner
    // waits for that evidence forever.
    this.fencedEpoch = this.outdatedEpoch;
    const promotionEpoch = options.persisted?.promotionEpoch ?? 0n;
    if (promotionEpoch !== 0n) this.pendingPromotion = promotionEpoch;
    for (const volume of options.volumes ?? []) this.volumes.set(volume.id, volume.primary);
  }

  /** Feed one event; returns the actions to perform, in order. */
  handle(event: QuorumEvent): QuorumAction[] {
    this.actions = [];
    switch (event.kind) {
      case "tick":
        this.onTick(Math.max(1, event.count ?? 1));
        break;
      case "linkUp":
        // A new connection while we believed the old one was up: the old one was lost in between.
        if (this.linkUp) this.loseLink("the link was re-established");
        this.linkUp = true;
        this.linkUpAt = this.now;
        this.peerMessage = undefined;
        this.receivedSequence = 0;
        this.firstSequenceOnLink = this.sentSequence + 1;
        this.nextMessageAt = this.now; // introduce ourselves at once
        break;
      case "linkDown":
        if (this.linkUp) this.linkLostAt = this.now;
        this.linkUp = false;
        this.loseLink(event.reason);
        break;
      case "peerMessage":
        this.onPeerMessage(event.message);
        break;
      case "witnessDone":
        this.onWitnessDone(event.io, event.error, event.bytes);
        break;
      case "volumes":
        this.volumes.clear();
        for (const volume of event.volumes) this.volumes.set(volume.id, volume.primary);
        break;
      case "synced":
        this.synced = event.synced;
        break;
      case "forcePromotion":
        this.onForcePromotion(event.request);
        break;
    }
    this.sendMessageIfDue();
    this.maybePropose();
    this.pump();
    this.updateGrants();
    return this.actions;
  }

  // ---- Time ----

  private onTick(count: number): void {
    this.now += count;
    const inFlight = this.inFlight;
    if (inFlight && this.now - inFlight.issuedAt >= this.ticks.io) this.ioFinished(inFlight, `no answer within ${this.timing.ioTimeoutMs} ms`, undefined);
    if (this.connected() && this.now - this.peerSeenAt > this.ticks.linkTimeout) {
      const reason = `no quorum message from ${this.peerName} for ${this.timing.linkTimeoutMs} ms`;
      // The connection is dead to us: anything still arriving on it is stale (a process that was
      // stopped finds the peer's old messages queued). Only a new connection (linkUp) counts again.
      this.linkUp = false;
      this.linkLostAt = this.now;
      this.peerMessage = undefined;
      this.emit({ kind: "dropLink", reason });
      this.loseLink(reason);
    } else if (this.linkUp && !this.peerMessage && this.now - this.linkUpAt > this.ticks.linkTimeout) {
      // A connection whose handshake never completes (traffic flows one way only) is no connection.
      this.linkUp = false;
      this.linkLostAt = this.now;
      this.emit({ kind: "dropLink", reason: `${this.peerName} did not answer on the new connection within ${this.timing.linkTimeoutMs} ms` });
    }
    if (this.now >= this.nextHeartbeatAt) {
      this.nextHeartbeatAt = this.now + this.ticks.heartbeat;
      if (this.witnessKnown && !this.queue.some((intent) => intent.kind === "heartbeat")) this.queue.push({ kind: "heartbeat" });
      if (!this.queue.some((intent) => intent.kind === "read" && intent.ballot === undefined)) this.queue.push({ kind: "read", ballot: undefined });
      if (this.honoursLease()) this.emit({ kind: "feedWatchdog" });
    }
    if (this.phase.kind === "starting" && !this.connected() && this.now >= this.ticks.linkTimeout) {
      // The peer had linkTimeout to connect after we started: decide as after a link loss.
      this.linkLostAt = this.now;
      this.setPhase({ kind: "deciding", sinceTick: this.now }, `${this.peerName} has not connected within ${this.timing.linkTimeoutMs} ms of start-up`);
      if (!this.holder()) this.emit({ kind: "report", report: { kind: "waiting", holder: this.peer, reason: this.waitingReason() } });
    }
    this.checkLease();
  }

  /**
   * The first tick after now at which a tick may act (witness IO, a message, a report, a grant or
   * phase change, feeding the watchdog), if no other event comes first: the heartbeat, the IO, link
   * and lease timeouts, the start-up wait, the next message, a ballot's retry or head start. A
   * driver may sleep until then and feed the ticks that passed in one jump; a jump that stops short
   * of it acts on nothing (the driver checks).
   */
  nextActionTick(): number {
    const t = this.ticks;
    let at = this.nextHeartbeatAt;
    const by = (tick: number) => {
      if (tick < at) at = tick;
    };
    const later = (tick: number) => {
      if (tick > this.now) by(tick);
    };
    if (this.inFlight) by(this.inFlight.issuedAt + t.io);
    if (this.connected()) by(this.peerSeenAt + t.linkTimeout + 1);
    else if (this.linkUp) by(this.linkUpAt + t.linkTimeout + 1);
    if (this.phase.kind === "starting" && !this.connected()) later(t.linkTimeout);
    if (this.phase.kind === "owner" && !this.connected()) by(this.lastHeartbeatStartOk + this.leaseTicks() + 1);
    if (this.linkUp) by(this.nextMessageAt);
    // Proposals wait for their time only; what else holds them back changes by events.
    later(this.ballotRetryAt);
    if (this.phase.kind === "deciding") later(this.phase.sinceTick + (this.preferred() ? 0 : t.headStart));
    if (this.sharedEligibleSince !== undefined) later(this.sharedEligibleSince + (this.me === 0 ? 0 : t.headStart));
    return Math.max(at, this.now + 1);
  }

  /** The age of this node's last successful heartbeat write (from its start), in ticks. */
  private heartbeatAge(): number {
    return this.now - this.lastHeartbeatStartOk;
  }

  private leaseTicks(): number {
    return this.bugs.renewWithoutMargin ? this.ticks.dead : this.ticks.selfFence;
  }

  /** Rule 4 / 7: disconnected and own heartbeats stale → stop everything. */
  private checkLease(): void {
    // Only an owner serves while disconnected; every other disconnected phase is frozen already.
    if (this.connected() || this.phase.kind !== "owner") return;
    const age = this.heartbeatAge();
    if (age <= this.leaseTicks()) return;
    if (this.fencedEpoch < this.phase.epoch) this.fencedEpoch = this.phase.epoch;
    this.emit({ kind: "report", report: { kind: "selfFenced", heartbeatAgeTicks: age } });
    this.dropOwnership();
    this.setPhase({ kind: "selfFenced", sinceTick: this.now }, `own heartbeat writes have not succeeded for ${age * this.ticks.tickMs} ms while the link is down`);
  }

  /** The watchdog is fed while the node honours its lease: connected, heartbeats fresh, or serving nothing. */
  private honoursLease(): boolean {
    if (this.connected() || this.heartbeatAge() <= this.leaseTicks()) return true;
    for (const grant of this.grants.values()) if (grant.kind === "write") return false;
    return true;
  }

  // ---- The link ----

  private get peerName(): string {
    return this.names[this.peer];
  }

  private connected(): boolean {
    return this.linkUp && this.peerMessage !== undefined;
  }

  private onPeerMessage(message: QuorumMessage): void {
    if (!this.linkUp || message.from !== this.peer || message.sequence <= this.receivedSequence) return;
    this.receivedSequence = message.sequence;
    this.learn(message.decided, "peer");
    if (message.fencedEpoch > this.peerFencedEpoch) this.peerFencedEpoch = message.fencedEpoch;
    if (message.echo < this.firstSequenceOnLink) {
      // The peer has not heard us on this connection yet: what it says may be old. Answer at once.
      if (!this.peerMessage) this.nextMessageAt = this.now;
      return;
    }
    this.peerMessage = message;
    this.peerSeenAt = this.now;
    if (this.phase.kind !== "connected") this.setPhase({ kind: "connected", sinceTick: this.now }, `${this.peerName} is connected`);
    this.maybePromote(undefined);
  }

  private sendMessageIfDue(): void {
    if (!this.linkUp || this.now < this.nextMessageAt) return;
    this.nextMessageAt = this.now + this.ticks.heartbeat;
    this.sentSequence++;
    this.emit({ kind: "sendPeer", message: { from: this.me, sequence: this.sentSequence, echo: this.receivedSequence, fencedEpoch: this.fencedEpoch, decided: this.latest, synced: this.synced, primaryCount: this.primaryCount() } });
  }

  /** Rule 2: the peer is gone; freeze everything and decide. */
  private loseLink(reason: string): void {
    this.sharedEligibleSince = undefined;
    if (this.phase.kind !== "connected") return;
    this.setPhase({ kind: "deciding", sinceTick: this.now }, `link to ${this.peerName} lost: ${reason}`);
    if (!this.holder()) this.emit({ kind: "report", report: { kind: "waiting", holder: this.peer, reason: this.waitingReason() } });
  }

  // ---- Volumes and roles ----

  private primaryCount(): number {
    let count = 0;
    for (const primary of this.volumes.values()) if (primary) count++;
    return count;
  }

  /**
   * The peer's last message said it is in sync, and said so knowing the newest record this node
   * knows. A message from before that record proves nothing about the data since: a node stopped
   * while its link was silently cut can resume still counting the link up, read that the peer won an
   * epoch alone (and wrote in it), and find the peer's last "in sync" from the epoch before.
   */
  private peerSynced(): boolean {
    const message = this.peerMessage;
    return message !== undefined && message.synced && message.decided.version === this.latest.version;
  }

  private holder(): boolean {
    return this.latest.value.holders.includes(this.me);
  }

  private preferred(): boolean {
    const mine = this.primaryCount();
    const peers = this.volumes.size - mine;
    return mine > peers || (mine === peers && this.me === 0);
  }

  private waitingReason(): string {
    return `waiting for ${this.peerName}, the only node with the latest data; a forced promotion (tandem failover --force) would discard its writes since epoch ${this.latest.value.epoch}`;
  }

  // ---- Grants ----

  private grantFor(primary: boolean): Grant {
    const epoch = Number(this.latest.value.epoch);
    const phase = this.phase;
    if (phase.kind === "selfFenced") return { kind: "frozen", reason: "self-fenced: own heartbeat writes stalled while the link was down" };
    if (this.connected()) {
      if (!primary) return { kind: "read", reason: "this node is the volume's secondary" };
      if (this.holder() || (this.synced && this.peerSynced())) return { kind: "write", epoch };
      return { kind: "frozen", reason: `this node does not hold the latest data (${describeValue(this.latest.value, this.names)}); it resyncs first` };
    }
    if (phase.kind === "owner" && this.ownerNow()) {
      if (primary) return { kind: "write", epoch };
      return { kind: "frozen", reason: `waiting until ${this.peerName} is provably fenced before promoting its volumes` };
    }
    switch (phase.kind) {
      case "starting":
        return { kind: "frozen", reason: "starting: reading the witness and waiting for the peer" };
      case "outdated":
        return { kind: "frozen", reason: `${this.peerName} won epoch ${phase.epoch}: this node is outdated until it resyncs` };
      default:
        if (!this.witnessReachable) return { kind: "frozen", reason: `no quorum: the link to ${this.peerName} and the witness are both lost (${this.witnessFailure ?? "unreachable"})` };
        if (!this.holder() && !this.bugs.nonHolderWins) return { kind: "frozen", reason: this.waitingReason() };
        return { kind: "frozen", reason: `link to ${this.peerName} lost: deciding the lease on the witness` };
    }
  }

  /** SOLO(me) won in this process, still the newest record, and the lease is valid. */
  private ownerNow(): boolean {
    const value = this.latest.value;
    return this.wonEpoch !== undefined && this.wonEpoch === value.epoch && value.mode === LeaseMode.Solo && value.owner === this.me && this.heartbeatAge() <= this.leaseTicks();
  }

  private updateGrants(): void {
    const changed: { volumeId: number; grant: Grant }[] = [];
    for (const [volumeId, primary] of this.volumes) {
      const grant = this.grantFor(primary);
      const before = this.grants.get(volumeId);
      if (before && sameGrant(before, grant)) continue;
      this.grants.set(volumeId, grant);
      changed.push({ volumeId, grant });
    }
    for (const volumeId of [...this.grants.keys()]) if (!this.volumes.has(volumeId)) this.grants.delete(volumeId);
    if (changed.length > 0) this.emit({ kind: "grants", grants: changed });
  }

  /** The grant the core holds for a volume now (for the node's WriteAuthority). */
  grant(volumeId: number): Grant {
    return this.grants.get(volumeId) ?? this.grantFor(this.volumes.get(volumeId) ?? false);
  }

  // ---- Phases ----

  private setPhase(next: Phase, reason: string): void {
    const from = this.phase.kind;
    if (from === next.kind && from !== "owner") return;
    assert(from === next.kind || allowedTransitions[from].includes(next.kind), `quorum phase ${from} → ${next.kind} is not allowed`);
    this.phase = next;
    this.emit({ kind: "report", report: { kind: "phase", from, to: next.kind, reason } });
  }

  /** The lease is gone (self-fenced, or a newer record): stop serving alone. A pending promotion stays (lose() ends it). */
  private dropOwnership(): void {
    this.wonEpoch = undefined;
  }

  // ---- Decided records ----

  private learn(record: DecidedRecord, source: "ballot" | "witness" | "peer"): void {
    if (record.version < this.latest.version) return;
    if (record.version === this.latest.version) {
      if (!sameValue(record.value, this.latest.value)) this.emit({ kind: "report", report: { kind: "conflict", version: record.version, known: this.latest.value, other: record.value, source } });
      return;
    }
    this.latest = record;
    this.highestMbal = 0n;
    const value = record.value;
    if (value.holders.includes(this.me) && this.outdatedEpoch !== 0n) this.outdatedEpoch = 0n;
    // SOLO(me), however it reached us (our ballot, the witness, the peer): the loser gives up its
    // primaries when it learns it lost, so promoting them is ours to do (on fence evidence).
    if (value.mode === LeaseMode.Solo && value.owner === this.me && [...this.volumes.values()].some((primary) => !primary)) this.pendingPromotion = value.epoch;
    this.persist();
    this.emit({ kind: "report", report: { kind: "decided", record, source } });
    this.ensureDecidedCopy();
    if (this.ballot && this.ballot.state.instance <= record.version) this.endBallot(value.mode === LeaseMode.Solo && value.owner === this.me ? null : `epoch ${value.epoch} went to ${describeValue(value, this.names)}`);
    if (this.wonEpoch !== undefined && this.wonEpoch !== value.epoch) {
      this.dropOwnership();
      if (this.phase.kind === "owner") this.setPhase({ kind: "deciding", sinceTick: this.now }, `a newer record was decided: ${describeValue(value, this.names)}`);
    }
    if (value.mode === LeaseMode.Solo && value.owner !== this.me) this.lose(value.epoch);
  }

  /** The peer owns `epoch`: freeze for good, give up primaries, persist outdated, say fenced(epoch). */
  private lose(epoch: bigint): void {
    this.dropOwnership();
    this.pendingPromotion = undefined;
    if (this.outdatedEpoch < epoch) this.outdatedEpoch = epoch;
    const demoted: number[] = [];
    for (const [volumeId, primary] of this.volumes) {
      if (!primary) continue;
      this.volumes.set(volumeId, false);
      demoted.push(volumeId);
    }
    for (const volumeId of demoted) this.emit({ kind: "demote", volumeId, epoch });
    this.persist();
    if (this.fencedEpoch < epoch) this.fencedEpoch = epoch;
    // Say fenced(epoch) at once rather than at the next heartbeat: the winner is waiting for it.
    if (this.witnessKnown && !this.queue.some((intent) => intent.kind === "heartbeat")) this.queue.push({ kind: "heartbeat" });
    this.emit({ kind: "report", report: { kind: "lost", epoch, winner: this.peer } });
    if (!this.connected() && this.phase.kind !== "outdated") this.setPhase({ kind: "outdated", epoch, sinceTick: this.now }, `${this.peerName} won epoch ${epoch}`);
  }

  /** Our decided copy must hold the newest record before our paxos block may move to the next instance (paxos.ts). */
  private ensureDecidedCopy(): void {
    if (!this.witnessKnown || this.myDecidedVersion >= this.latest.version) return;
    if (this.queue.some((intent) => intent.kind === "decided") || this.inFlight?.intent.kind === "decided") return;
    this.queue.unshift({ kind: "decided", record: undefined });
  }

  private persist(): void {
    this.emit({ kind: "persist", state: { outdatedEpoch: this.outdatedEpoch, lastDecided: this.latest, promotionEpoch: this.pendingPromotion ?? 0n } });
  }

  // ---- Proposing ----

  private maybePropose(): void {
    if (this.ballot || !this.witnessKnown || !this.witnessReachable || this.now < this.ballotRetryAt) return;
    if (this.myDecidedVersion < this.latest.version) return this.ensureDecidedCopy();
    const nextEpoch = this.latest.value.epoch + 1n;
    if (this.forceRequest !== undefined) {
      const request = this.forceRequest;
      if (this.connected()) {
        this.forceRequest = undefined;
        this.emit({ kind: "complete", request, error: `${this.peerName} connected again: the forced promotion is abandoned` });
        return;
      }
      this.startBallot("force", { epoch: nextEpoch, mode: LeaseMode.Solo, owner: this.me, holders: [this.me], forced: true }, request);
      return;
    }
    if (this.phase.kind === "deciding" && (this.holder() || this.bugs.nonHolderWins)) {
      const startAt = this.phase.sinceTick + (this.preferred() ? 0 : this.ticks.headStart);
      if (this.now >= startAt) this.startBallot("solo", { epoch: nextEpoch, mode: LeaseMode.Solo, owner: this.me, holders: [this.me], forced: false });
      return;
    }
    if (this.phase.kind === "connected") {
      const wanted = this.synced && this.peerSynced() && !(this.latest.value.mode === LeaseMode.Shared && this.latest.value.holders.length === 2);
      if (!wanted) {
        this.sharedEligibleSince = undefined;
        return;
      }
      this.sharedEligibleSince ??= this.now;
      const startAt = this.sharedEligibleSince + (this.me === 0 ? 0 : this.ticks.headStart);
      if (this.now >= startAt) this.startBallot("shared", { epoch: nextEpoch, mode: LeaseMode.Shared, owner: 0, holders: [0, 1], forced: false });
    }
  }

  private startBallot(purpose: Ballot["purpose"], proposal: LeaseValue, request?: number): void {
    const state = startBallot(this.me, this.latest.version + 1n, proposal, this.myBlock, this.highestMbal);
    const id = this.nextBallotId++;
    this.ballot = { id, state, awaitingRead: false, purpose, request };
    this.queue.unshift({ kind: "paxos", ballot: id, block: state.block });
  }

  private endBallot(error: string | null): void {
    const ballot = this.ballot;
    this.ballot = undefined;
    if (ballot?.request !== undefined) {
      this.forceRequest = undefined;
      this.emit({ kind: "complete", request: ballot.request, error, result: error ? undefined : { version: this.latest.version.toString(), epoch: this.latest.value.epoch.toString() } });
    }
  }

  private ballotRead(ballot: Ballot, state: WitnessState): void {
    const outcome = afterRead(ballot.state, this.me, state);
    switch (outcome.kind) {
      case "phase2":
        ballot.state = outcome.state;
        ballot.awaitingRead = false;
        this.queue.unshift({ kind: "paxos", ballot: ballot.id, block: outcome.state.block });
        return;
      case "committed":
        this.committed(ballot, outcome.value);
        return;
      case "aborted":
        if (outcome.highestMbal > this.highestMbal) this.highestMbal = outcome.highestMbal;
        this.emit({ kind: "report", report: { kind: "ballotAborted", instance: ballot.state.instance, reason: outcome.reason, detail: outcome.detail } });
        this.ballot = undefined;
        if (outcome.reason === "decided") {
          this.endBallotRequest(ballot, "the lease was decided by the other node meanwhile");
          return;
        }
        this.ballotRetryAt = this.now + 1 + this.randomBelow(this.ticks.ballotBackoffMax);
        if (outcome.reason !== "higherBallot") this.ballotRetryAt = this.now + this.ticks.heartbeat;
        if (ballot.purpose === "force") this.retryForce(ballot);
        return;
    }
  }

  private endBallotRequest(ballot: Ballot, error: string): void {
    if (ballot.request === undefined) return;
    this.forceRequest = undefined;
    this.emit({ kind: "complete", request: ballot.request, error });
  }

  private retryForce(ballot: Ballot): void {
    // The forced proposal keeps going (the operator asked); it is retried like any other ballot.
    if (ballot.request !== undefined) this.forceRequest = ballot.request;
  }

  private committed(ballot: Ballot, value: LeaseValue): void {
    const instance = ballot.state.instance;
    this.ballot = undefined;
    const mine = value.mode === LeaseMode.Solo && value.owner === this.me;
    if (mine) this.wonEpoch = value.epoch;
    this.learn({ version: instance, value }, "ballot");
    if (ballot.request !== undefined) {
      this.forceRequest = undefined;
      this.emit({ kind: "complete", request: ballot.request, error: mine ? null : `the lease went to ${describeValue(value, this.names)}`, result: { version: instance.toString(), epoch: value.epoch.toString() } });
    }
    if (!mine) return;
    this.emit({ kind: "report", report: { kind: "won", epoch: value.epoch, forced: value.forced } });
    if (!this.connected()) this.setPhase({ kind: "owner", epoch: value.epoch, sinceTick: this.now }, `won epoch ${value.epoch} (${describeValue(value, this.names)})`);
    this.queue.push({ kind: "mailbox", epoch: value.epoch });
    if (this.pendingPromotion === value.epoch && this.bugs.promoteWithoutFence) this.promotePeerVolumes(value.epoch, "none");
  }

  private onForcePromotion(request: number): void {
    const refuse = (why: string) => this.emit({ kind: "complete", request, error: why });
    if (this.connected()) return refuse(`${this.peerName} is connected: move a volume with a planned switchover instead`);
    // A starting node gives its peer linkTimeout to connect before anything is decided alone.
    if (this.phase.kind === "starting") {
      const waitMs = Math.max(0, this.ticks.linkTimeout - this.now) * this.ticks.tickMs;
      return refuse(`this node is still starting: it waits up to ${this.timing.linkTimeoutMs} ms for ${this.peerName} to connect before it decides anything alone; ask again in ${waitMs} ms`);
    }
    if (this.forceRequest !== undefined || this.ballot?.purpose === "force") return refuse("a forced promotion is already running");
    if (!this.witnessKnown || !this.witnessReachable) return refuse(`the witness is unreachable (${this.witnessFailure ?? "unknown"}): a forced promotion is decided on the witness too`);
    if (this.holder() && this.phase.kind !== "selfFenced") return refuse("this node holds the latest data: it takes over by itself, no force needed");
    const evidence = this.peerFenceEvidence(this.now);
    if (evidence === undefined) {
      const still = this.peerHeartbeatStillTicks() * this.ticks.tickMs;
      return refuse(`${this.peerName} is not provably fenced: its heartbeat changed ${still} ms ago (dead after ${this.timing.deadTimeoutMs} ms) and it has not written fenced(${this.latest.value.epoch}); stop it first`);
    }
    if (this.ballot) this.ballot = undefined;
    this.forceRequest = request;
    this.startBallot("force", { epoch: this.latest.value.epoch + 1n, mode: LeaseMode.Solo, owner: this.me, holders: [this.me], forced: true }, request);
  }

  // ---- Fence evidence and promotion ----

  /**
   * Rule 5: promote the peer's volumes after winning epoch E, once the peer is provably fenced for E:
   * it says fenced(≥ E) (slot or message), or — disconnected, judged by a witness read issued at
   * `readIssuedAt` — its heartbeat stood still long enough. Only while this node may write: it owns
   * the lease now, or it is connected and holds the latest data (the peer gave its volumes up).
   */
  private maybePromote(readIssuedAt: number | undefined): void {
    const epoch = this.pendingPromotion;
    if (epoch === undefined) return;
    if (!(this.ownerNow() || (this.connected() && this.holder()))) return;
    if (this.peerFencedEpoch >= epoch) return this.promotePeerVolumes(epoch, "fenced");
    if (readIssuedAt === undefined || !this.ownerNow() || this.latest.value.epoch !== epoch) return;
    if (this.peerFenceEvidence(readIssuedAt) === "heartbeat still") this.promotePeerVolumes(epoch, "heartbeat still");
  }

  private peerHeartbeatStillTicks(): number {
    return this.linkUp ? 0 : this.now - Math.max(this.peerHeartbeatSeenAt, this.linkLostAt);
  }

  /**
   * Rule 5: is the peer provably fenced for the newest epoch, judged by a read issued at `readIssuedAt`?
   * Its slot says fenced(epoch), or (disconnected) its heartbeat counter has not changed in any read
   * since max(first seen, link lost) and this read started deadTimeout after that, on our clock.
   */
  private peerFenceEvidence(readIssuedAt: number): "fenced" | "heartbeat still" | undefined {
    if (this.latest.value.epoch > 0n && this.peerFencedEpoch >= this.latest.value.epoch) return "fenced";
    // While a connection is up (even one still in its handshake) the peer may be connected and
    // writing by its own lights: stillness proves nothing until the link has been down for good.
    if (this.linkUp || this.peerHeartbeat === undefined) return undefined;
    if (readIssuedAt >= Math.max(this.peerHeartbeatSeenAt, this.linkLostAt) + this.ticks.dead) return "heartbeat still";
    return undefined;
  }

  private promotePeerVolumes(epoch: bigint, evidence: "fenced" | "heartbeat still" | "none"): void {
    this.pendingPromotion = undefined;
    this.persist();
    const promoted: number[] = [];
    for (const [volumeId, primary] of this.volumes) {
      if (primary) continue;
      this.volumes.set(volumeId, true);
      promoted.push(volumeId);
    }
    for (const volumeId of promoted) this.emit({ kind: "promote", volumeId, epoch });
    if (promoted.length > 0) this.emit({ kind: "report", report: { kind: "promoted", epoch, volumes: promoted, evidence } });
  }

  // ---- Witness IO ----

  private pump(): void {
    if (this.inFlight) return;
    while (this.queue.length > 0) {
      const intent = this.queue.shift()!;
      const io = this.nextIo++;
      if (intent.kind === "read") {
        this.inFlight = { io, intent, issuedAt: this.now };
        this.emit({ kind: "witnessRead", io, sector: 0, count: witnessLayout.sectors });
        return;
      }
      if (!this.witnessKnown) continue; // nothing is written before the first read told us the copies
      if (intent.kind === "paxos" && this.ballot?.id !== intent.ballot) continue; // a ballot that ended
      const record: OwnedRecord = intent.kind === "heartbeat" ? "slot" : intent.kind;
      const tracking = this.owned[record];
      const copy: 0 | 1 = tracking.copy === undefined ? 0 : tracking.copy === 0 ? 1 : 0;
      const sequence = tracking.sequence + 1n;
      tracking.sequence = sequence;
      const bytes = this.encodeIntent(intent, sequence);
      const base = record === "slot" ? witnessLayout.slot(this.me) : record === "paxos" ? witnessLayout.paxos(this.me) : record === "decided" ? witnessLayout.decided(this.me) : witnessLayout.mailbox(this.peer);
      this.inFlight = { io, intent, issuedAt: this.now, write: { record, copy, sequence } };
      this.emit({ kind: "witnessWrite", io, sector: base + copy, bytes });
      return;
    }
  }

  private encodeIntent(intent: Exclude<IoIntent, { kind: "read" }>, sequence: bigint): Uint8Array {
    switch (intent.kind) {
      case "heartbeat": {
        this.heartbeat++;
        return encodeSlot(this.clusterId, this.me, this.slot(), sequence);
      }
      case "paxos":
        return encodePaxosBlock(this.clusterId, this.me, intent.block, sequence);
      case "decided":
        intent.record = this.latest;
        return encodeDecided(this.clusterId, this.me, this.latest, sequence);
      case "mailbox":
        return encodeMailbox(this.clusterId, this.peer, { request: MailboxRequest.Fence, epoch: intent.epoch, senderHeartbeat: this.heartbeat, fromName: this.names[this.me] }, sequence);
    }
  }

  private slot(): Slot {
    const ids = [...this.volumes].filter(([, primary]) => primary).map(([id]) => id);
    const roles: Record<PhaseName, SlotRole> = { starting: SlotRole.Starting, connected: SlotRole.Connected, deciding: SlotRole.Frozen, owner: SlotRole.Owner, outdated: SlotRole.Outdated, selfFenced: SlotRole.SelfFenced };
    return { heartbeat: this.heartbeat, epoch: this.latest.value.epoch, role: roles[this.phase.kind], fencedEpoch: this.fencedEpoch, nodeName: this.names[this.me], primaryCount: ids.length, volumeIds: ids, truncated: false };
  }

  private onWitnessDone(io: number, error: string | null, bytes: Uint8Array | undefined): void {
    const inFlight = this.inFlight;
    if (!inFlight || inFlight.io !== io) return; // answered after its deadline: already counted as failed
    this.ioFinished(inFlight, error, bytes);
  }

  private ioFinished(inFlight: InFlight, error: string | null, bytes: Uint8Array | undefined): void {
    this.inFlight = undefined;
    const intent = inFlight.intent;
    let failure = error;
    let state: WitnessState | undefined;
    if (!failure && intent.kind === "read") {
      if (!bytes || bytes.length < witnessLayout.sectors * witnessRecordBytes) failure = "short read";
      else {
        state = decodeWitness(bytes, this.clusterId);
        failure = this.unusable(state);
      }
    }
    if (failure) {
      this.setWitness(false, failure);
      if (intent.kind === "paxos" || (intent.kind === "read" && intent.ballot !== undefined)) {
        if (this.ballot && this.ballot.id === (intent.kind === "paxos" ? intent.ballot : intent.ballot)) {
          const ballot = this.ballot;
          this.ballot = undefined;
          this.ballotRetryAt = this.now + this.ticks.heartbeat;
          this.emit({ kind: "report", report: { kind: "ballotAborted", instance: ballot.state.instance, reason: "io", detail: failure } });
          if (ballot.purpose === "force") this.retryForce(ballot);
        }
      }
      return;
    }
    this.setWitness(true, "");
    if (inFlight.write) {
      const tracking = this.owned[inFlight.write.record];
      tracking.copy = inFlight.write.copy;
      this.lastWriteOkAt = this.now;
    }
    switch (intent.kind) {
      case "read":
        this.lastReadOkAt = this.now;
        this.absorb(state!, inFlight.issuedAt);
        if (intent.ballot !== undefined && this.ballot?.id === intent.ballot && this.ballot.awaitingRead) this.ballotRead(this.ballot, state!);
        return;
      case "heartbeat":
        if (inFlight.issuedAt > this.lastHeartbeatStartOk) this.lastHeartbeatStartOk = inFlight.issuedAt;
        if (this.phase.kind === "selfFenced" && !this.connected()) {
          this.setPhase({ kind: "deciding", sinceTick: this.now }, "own heartbeat writes succeed again");
        }
        return;
      case "paxos":
        this.myBlock = intent.block;
        if (this.ballot?.id === intent.ballot) {
          this.ballot.awaitingRead = true;
          this.queue.unshift({ kind: "read", ballot: intent.ballot });
        }
        return;
      case "decided":
        if (intent.record && intent.record.version > this.myDecidedVersion) this.myDecidedVersion = intent.record.version;
        return;
      case "mailbox":
        return;
    }
  }

  /** Why a witness read is not usable (not formatted for us, other timings), or null. */
  private unusable(state: WitnessState): string | null {
    const superblock = state.superblock.newest?.record;
    if (!superblock) {
      const why = state.superblock.copies.map((copy) => (copy.state === "torn" || copy.state === "foreign" ? copy.why : copy.state)).join("; ");
      return `the witness has no superblock of this cluster (${why}); format it with tandem witness format`;
    }
    const difference = timingDifference(this.timing, timingFromWitness(superblock.timing));
    return difference ? `the witness was formatted with other timings (${difference}); both nodes must use the witness's timings` : null;
  }

  private setWitness(reachable: boolean, reason: string): void {
    if (reachable !== this.witnessReachable) this.emit({ kind: "report", report: { kind: "witness", reachable, reason: reachable ? "witness IO succeeds again" : reason } });
    this.witnessReachable = reachable;
    this.witnessFailure = reachable ? null : reason;
  }

  /** Take in everything a successful read shows. */
  private absorb(state: WitnessState, issuedAt: number): void {
    this.syncOwned("slot", state.slots[this.me]);
    this.syncOwned("paxos", state.paxos[this.me]);
    this.syncOwned("decided", state.decided[this.me]);
    this.syncOwned("mailbox", state.mailboxes[this.peer]);
    if (!this.witnessKnown) {
      this.witnessKnown = true;
      const mySlot = state.slots[this.me].newest?.record;
      if (mySlot) {
        this.heartbeat = mySlot.heartbeat;
        if (mySlot.fencedEpoch > this.fencedEpoch) this.fencedEpoch = mySlot.fencedEpoch;
      }
      this.myBlock = state.paxos[this.me].newest?.record ?? emptyPaxosBlock;
      this.queue.unshift({ kind: "heartbeat" });
    }
    const myDecided = state.decided[this.me].newest?.record.version ?? 0n;
    if (myDecided > this.myDecidedVersion) this.myDecidedVersion = myDecided;
    // The peer's signs of life, judged on our clock: a new heartbeat, or a change in any other record
    // it writes, restarts the count. A peer can win an epoch on its Paxos and decided records alone
    // (its slot writes failing, or not yet due after a restart) and renew its heartbeat afterwards:
    // stillness counted across that ballot would call it fenced for the epoch it just won.
    const peerSlot = state.slots[this.peer].newest?.record;
    const value = peerSlot?.heartbeat ?? null;
    const records = [state.paxos[this.peer], state.decided[this.peer], state.mailboxes[this.me]].map((pair) => pair.newest?.sequence ?? 0n).join(" ");
    if (value !== this.peerHeartbeat || records !== this.peerRecords) {
      this.peerHeartbeat = value;
      this.peerRecords = records;
      this.peerHeartbeatSeenAt = this.now;
    }
    if (peerSlot && peerSlot.fencedEpoch > this.peerFencedEpoch) this.peerFencedEpoch = peerSlot.fencedEpoch;
    // Ballot numbers seen for the next instance.
    const instance = this.latest.version + 1n;
    for (const pair of state.paxos) {
      const block = pair.newest?.record;
      if (block && block.instance === instance && block.mbal > this.highestMbal) this.highestMbal = block.mbal;
    }
    this.learn(latestDecided(state), "witness");
    const mailbox = state.mailboxes[this.me].newest?.record;
    if (mailbox && mailbox.request === MailboxRequest.Fence && mailbox.epoch > this.fencedEpoch && this.wonEpoch !== mailbox.epoch && mailbox.epoch >= this.latest.value.epoch) this.lose(mailbox.epoch);
    const evidence = this.peerFenceEvidence(issuedAt);
    if (evidence && this.peerFencedReported !== this.latest.value.epoch) {
      this.peerFencedReported = this.latest.value.epoch;
      this.emit({ kind: "report", report: { kind: "peerFenced", epoch: this.latest.value.epoch, evidence } });
    }
    this.maybePromote(issuedAt);
  }

  /** Keep our own record tracking in step with the disk (a write that answered late may have landed). */
  private syncOwned(record: OwnedRecord, pair: RecordPair<unknown>): void {
    const tracking = this.owned[record];
    const newest = pair.newest;
    if (newest && newest.sequence >= tracking.sequence) {
      tracking.copy = newest.copy;
      tracking.sequence = newest.sequence;
    }
  }

  private randomBelow(n: number): number {
    if (n <= 1) return 0;
    const bytes = new Uint8Array(4);
    this.random.fill(bytes);
    return (((bytes[0]! | (bytes[1]! << 8) | (bytes[2]! << 16) | (bytes[3]! << 24)) >>> 0) % n);
  }

  private emit(action: QuorumAction): void {
    this.actions.push(action);
  }

  // ---- Status ----

  status(): QuorumStatus {
    const ms = (ticks: number) => ticks * this.ticks.tickMs;
    const age = (at: number) => (at === never ? null : ms(this.now - at));
    const phase = this.phase;
    const owner = phase.kind === "owner" && this.ownerNow();
    const quorum: QuorumStatus["quorum"] = this.connected() ? "shared" : owner ? "solo" : this.witnessReachable ? "frozen" : "no-quorum";
    let reason: string;
    let nextSafeAction: string | null = null;
    if (this.connected()) reason = `connected to ${this.peerName}`;
    else if (owner) reason = `owns epoch ${this.latest.value.epoch} alone`;
    else {
      const grant = this.grantFor(true);
      reason = grant.kind === "frozen" ? grant.reason : `link to ${this.peerName} lost`;
      if (!this.holder()) nextSafeAction = `wait for ${this.peerName} (the only data holder) to return; or, if it is gone for good, tandem failover --force on this node (discards ${this.peerName}'s writes since epoch ${this.latest.value.epoch})`;
    }
    return {
      node: this.names[this.me],
      peer: this.peerName,
      phase: phase.kind,
      quorum,
      reason,
      version: this.latest.version.toString(),
      epoch: this.latest.value.epoch.toString(),
      record: describeValue(this.latest.value, this.names),
      dataHolders: this.latest.value.holders.map((node) => this.names[node]),
      outdated: this.outdatedEpoch !== 0n,
      witness: {
        reachable: this.witnessReachable,
        failure: this.witnessFailure,
        lastReadAgeMs: age(this.lastReadOkAt),
        lastWriteAgeMs: age(this.lastWriteOkAt),
        lastHeartbeatAgeMs: age(this.lastHeartbeatStartOk),
      },
      peerHeartbeat: { value: this.peerHeartbeat === undefined || this.peerHeartbeat === null ? null : this.peerHeartbeat.toString(), stillForMs: ms(this.peerHeartbeatStillTicks()), fencedEpoch: this.peerFencedEpoch.toString() },
      leaseRemainingMs: owner ? ms(this.leaseTicks() - this.heartbeatAge()) : null,
      ballot: this.ballot ? `${this.ballot.purpose} for version ${this.ballot.state.instance}, ballot ${this.ballot.state.mbal}, phase ${this.ballot.state.phase}` : null,
      nextSafeAction,
    };
  }

  /** For tests and the simulator's checkers. */
  get phaseName(): PhaseName {
    return this.phase.kind;
  }

  get latestRecord(): DecidedRecord {
    return this.latest;
  }

  get nowTicks(): number {
    return this.now;
  }

  /** The start tick of the last heartbeat write that succeeded (never: a large negative number). */
  get lastHeartbeatStartTick(): number {
    return this.lastHeartbeatStartOk;
  }
}
