// The records a volume core keeps while work is under way (CONVENTIONS.md §11: pending work is data).
// Every IO the core issued and every request it sent to the peer is one tagged record in a table,
// so status and tests can list them, a completion is dispatched by the record's kind to the module
// that owns it, and a request can be sent again from its record alone. Nothing here acts.
import type { ActivityLogPlan } from "../activity-log.ts";
import type { IoError } from "../types.ts";
import type { ResyncRound, VerifyRun } from "./state.ts";
import type { Payload } from "../../common/bytes.ts";
import type { BitRun } from "../model.ts";

export type OpKind = "read" | "write" | "trim" | "zero" | "flush";

/** What a client request brings besides its kind and range. */
export interface ClientFields {
  /** A write's bytes: one buffer, or (a stable NBD payload) the pieces it arrived in. */
  data?: Payload;
  target?: Uint8Array;
  fua?: boolean;
  noHole?: boolean;
  /** `data` is never changed nor reused by the caller: kept as it is, not copied at admission. */
  stable?: boolean;
  /** A read the driver already tried on the local replica, and how it failed (ReplicaDriver.read). */
  localError?: IoError;
}

/** A client request on this node (through the export above the mirror). */
export interface ClientOp {
  source: "client";
  kind: OpKind;
  request: number;
  offset: number;
  length: number;
  data: Payload | undefined;
  target: Uint8Array | undefined;
  fua: boolean;
  noHole: boolean;
  localDone: boolean;
  localError: IoError | null;
  peerPending: boolean;
  peerError: boolean;
  /** The peer took part when the write started (mirrored), and had not failed or been lost. */
  mirrored: boolean;
  peerLost: boolean;
  rangeId: number;
  activityHeld: boolean;
  completed: boolean;
  /** For the simulator's single-writer checker: the epoch under which the write was admitted. */
  epoch: number | undefined;
  /** A read from the local replica: WritePath.drops when it was issued. */
  readDrops?: number;
}

/** A write the peer asked this node to perform (a mirrored write, or a chunk a resync pushes). */
export interface PeerOp {
  source: "peer";
  kind: "write" | "trim" | "zero" | "resync";
  requestId: number;
  offset: number;
  length: number;
  /** As received: in pieces when its frame was large (Framer). */
  data: Payload | undefined;
  fua: boolean;
  noHole: boolean;
  zero: boolean;
  round: number;
  linkEpoch: number;
  rangeId: number;
}

export type QueuedOp = ClientOp | PeerOp;

/** A range of the resync work list in flight. */
export interface Chunk {
  startBit: number;
  endBit: number;
  offset: number;
  length: number;
  rangeId: number;
}

/** Why a barrier (a flush of the peer's storage) was sent, so its answer reaches the right place. */
export type BarrierPurpose =
  /** A client FLUSH waits for it. */
  | { kind: "clientFlush"; op: ClientOp }
  /** The close of the volume waits for it. */
  | { kind: "close" }
  /** An activity-log eviction waits for it. */
  | { kind: "eviction"; eviction: Eviction }
  /** Periodic, or the transfer log is full: nobody waits. */
  | { kind: "background" };

/** An activity-log transaction that evicts extents: what it waits for before it is written. */
export interface Eviction {
  plan: ActivityLogPlan;
  pending: number;
  failed: IoError | null;
}

/** A request this node sent the peer and waits to have answered. */
export type PendingRequest =
  /** `peerFua`: the peer makes it durable before answering (the client asked, or we are a resync target). */
  | { kind: "write"; requestId: number; op: ClientOp; peerFua: boolean }
  | { kind: "read"; requestId: number; op: ClientOp }
  | { kind: "barrier"; requestId: number; covered: Set<number>; purpose: BarrierPurpose }
  | { kind: "resyncPush"; requestId: number; round: ResyncRound; chunk: Chunk; data: Uint8Array; zero: boolean }
  | { kind: "resyncPull"; requestId: number; round: ResyncRound; chunk: Chunk }
  | { kind: "resyncFlush"; requestId: number; round: ResyncRound; checkpoint: Checkpoint }
  | { kind: "verify"; requestId: number; run: VerifyRun; extent: VerifyExtent }
  | { kind: "repair"; requestId: number; run: VerifyRun; extent: VerifyExtent };

/** Copied chunks waiting to be made durable on the target before their bits are cleared. */
export interface Checkpoint {
  runs: BitRun[];
  remarkedBefore: number;
}

/** One extent of a verify run under its range lock. */
export interface VerifyExtent {
  offset: number;
  length: number;
  rangeId: number;
  data: Uint8Array;
  localCrc: number;
}

/** Who waits for a persistence job (a metadata write followed by a flush). */
export type PersistWaiter =
  | { kind: "open" }
  | { kind: "writeback" }
  | { kind: "generation" }
  | { kind: "activityLog"; plan: ActivityLogPlan; sequence: number }
  | { kind: "evictionPages"; eviction: Eviction }
  | { kind: "inSync" }
  | { kind: "resyncStart"; round: ResyncRound }
  | { kind: "resyncEnd"; round: ResyncRound; then: ResyncEndThen }
  | { kind: "closePages" }
  | { kind: "close" }
  /** Regions a failed local flush may have dropped are marked, and the replica inconsistent. */
  | { kind: "lostWrites" };

/** What follows a persisted end of resync on this side. */
export type ResyncEndThen = "announce" | "acknowledge" | "nothing";

export interface PersistJob {
  superblock: boolean;
  pages: boolean;
  activityLog: { plan: ActivityLogPlan; extents: number[]; sequence: number } | undefined;
  waiters: PersistWaiter[];
}

/** Who waits for this node to be on a generation of its own before completing something alone. */
export type AloneWaiter = { kind: "admit" } | { kind: "write"; op: ClientOp } | { kind: "flush"; op: ClientOp };

/** An IO this core asked the driver to perform (storage or metadata), keyed by its io number. */
export type PendingIo =
  | { kind: "clientWrite"; op: ClientOp }
  | { kind: "clientRead"; op: ClientOp }
  | { kind: "clientFlush"; op: ClientOp }
  | { kind: "metadata"; job: PersistJob; pages: number[]; superblockSequence: number | undefined }
  | { kind: "closeFlush" }
  /** Local writes not yet covered by a flush reached their bound. */
  | { kind: "backgroundFlush" }
  | { kind: "evictionFlush"; eviction: Eviction }
  | { kind: "peerWrite"; op: PeerOp }
  | { kind: "peerFlush"; requestId: number; linkEpoch: number; round: number | undefined }
  | { kind: "peerRead"; requestId: number; linkEpoch: number; target: Uint8Array }
  | { kind: "sourceRead"; requestId: number; round: number; offset: number; length: number; linkEpoch: number; target: Uint8Array }
  | { kind: "sourceFlush"; round: ResyncRound }
  | { kind: "chunkRead"; round: ResyncRound; chunk: Chunk; data: Uint8Array }
  | { kind: "chunkWrite"; round: ResyncRound; chunk: Chunk }
  | { kind: "checkpointFlush"; round: ResyncRound; checkpoint: Checkpoint }
  | { kind: "verifyFlush"; run: VerifyRun }
  | { kind: "verifyRead"; run: VerifyRun; extent: VerifyExtent }
  | { kind: "rewriteRead"; offset: number; data: Uint8Array; rangeId: number }
  | { kind: "rewriteWrite"; offset: number; length: number; rangeId: number }
  | { kind: "verifyAnswerRead"; requestId: number; round: number; offset: number; linkEpoch: number; data: Uint8Array }
  | { kind: "repairWrite"; requestId: number; linkEpoch: number };

/** Named reasons a message or completion is ignored as stale (counted and reported). */
export type IgnoreCheck =
  | "ignoreAfterClose"
  | "ignoreRequestWhileClosing"
  | "ignoreAnswerToRetiredRequest"
  | "ignoreStaleDecision"
  | "ignoreStaleRound"
  | "ignoreAnswerOnOldLink"
  | "ignoreResyncMessageInWrongStage"
  | "ignoreCompletionOfAbortedWork";
