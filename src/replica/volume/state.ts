// The explicit states of a volume core (CONVENTIONS.md §11, after DRBD's is_valid_transition and
// libnbd's state table): the lifecycle of the volume on this node, the phase of its link with the
// peer's replica, and the stage of a resync. Each is a tagged union whose per-state data lives in
// its variant; each changes only through `transition`, which checks the move against the table of
// allowed next states below. A move not in a table is a bug (an assertion, never a silent change).
import { assert } from "../../common/assert.ts";
import type { Chunk } from "./model.ts";
import type { IoError, Refusal } from "../types.ts";
import type { BitRun } from "../model.ts";

/** A table of allowed transitions: for each state, the states it may move to. */
export type TransitionTable<K extends string> = { readonly [From in K]: readonly K[] };

export function checkTransition<K extends string>(machine: string, table: TransitionTable<K>, from: K, to: K): void {
  assert(table[from].includes(to), `${machine}: ${from} → ${to} is not an allowed transition`);
}

// ---------------------------------------------------------------- lifecycle

export type Lifecycle =
  /** "Not clean" is being persisted (retried on the next tick after a failure); no IO yet. */
  | { kind: "opening"; retry: boolean }
  /** Serving. */
  | { kind: "open" }
  /**
   * A close was asked for: the peer was told to send nothing more for this volume; no client
   * request is admitted; IO and requests in flight finish (the peer's answers still count).
   */
  | { kind: "closing"; request: number; flushFailed?: boolean }
  /** Nothing is in flight: every completed write is being made durable here and on the peer. */
  | { kind: "flushingForClose"; request: number; localFlushFailed: boolean }
  /** The shutdown is being persisted: clean unless a flush failed (then the activity log replays). */
  | { kind: "recordingClose"; request: number; clean: boolean }
  /** Done: the node core may detach the volume. */
  | { kind: "closed" };

export const lifecycleTransitions: TransitionTable<Lifecycle["kind"]> = {
  opening: ["opening", "open", "closing"],
  open: ["closing"],
  closing: ["flushingForClose"],
  flushingForClose: ["recordingClose", "closing"],
  recordingClose: ["closed"],
  closed: [],
};

// ---------------------------------------------------------------- link phase

/** Why the two replicas do not replicate although the link is up (see types.ts). */
export type { Refusal };

export type LinkPhase =
  /** No link to the peer. */
  | { kind: "down"; reason: string }
  /** Connected; the two sides are agreeing what to do (the decider's verdict is awaited). */
  | { kind: "negotiating"; reason: string }
  /** Connected, but the peer does not have (or has closed) this volume. */
  | { kind: "absent"; reason: string }
  /** Writes are mirrored (in sync, or a resync is running). */
  | { kind: "replicating"; reason: string }
  /** The decision forbids replicating until something changes (an operator, a role, the data). */
  | { kind: "refused"; refusal: Refusal; reason: string };

export const linkPhaseTransitions: TransitionTable<LinkPhase["kind"]> = {
  down: ["negotiating", "absent"], // absent: the link comes up while this node closes the volume
  negotiating: ["down", "negotiating", "replicating", "refused", "absent"],
  replicating: ["down", "replicating", "refused", "absent"],
  refused: ["down", "replicating", "refused", "absent"],
  absent: ["down", "negotiating", "absent"],
};

// ---------------------------------------------------------------- resync

/** One pass over the work list and its chunks in flight (the leader's copy loop). */
export interface ResyncPass {
  cursor: number;
  passHadFailures: boolean;
  passSkipped: boolean;
  nextPassTick: number;
  chunks: Set<Chunk>;
  /** Copied chunks not yet made durable on the target (their bits are cleared at a checkpoint). */
  doneRuns: BitRun[];
  checkpointBusy: boolean;
}

export type ResyncStage =
  /** Both sides send their dirty bitmaps; the union becomes the work list. */
  | { kind: "exchange"; peerDone: boolean; peerRuns: BitRun[] }
  /** The work list (and "inconsistent" on the target) is persisted; the source flushes its data. */
  | { kind: "persisting"; pending: number; failure: IoError | null }
  /** Ready here; waiting for the peer's ResyncReady. */
  | { kind: "ready" }
  /** Chunks move (the leader copies them; the follower answers). */
  | { kind: "running"; pass: ResyncPass }
  /** The work list is empty: the end is being recorded on both sides. */
  | { kind: "completing"; pass: ResyncPass };

export const resyncStageTransitions: TransitionTable<ResyncStage["kind"]> = {
  exchange: ["persisting"],
  persisting: ["ready"],
  ready: ["running"],
  running: ["completing"],
  completing: ["running"],
};

export interface ResyncRound {
  round: number;
  localIsSource: boolean;
  localLeads: boolean;
  full: boolean;
  /** The peer said it is ready (it may say so before this side is). */
  peerReady: boolean;
  /** Regions marked dirty again while the round runs (a checkpoint must not clear them). */
  remarked: BitRun[];
  bitsTotal: number;
  bitsDone: number;
  bytesCopied: number;
  samples: { tick: number; bytes: number }[];
  stage: ResyncStage;
}

export function newPass(): ResyncPass {
  return { cursor: 0, passHadFailures: false, passSkipped: false, nextPassTick: 0, chunks: new Set(), doneRuns: [], checkpointBusy: false };
}

/** The pass of a round that is running or completing. */
export function passOf(round: ResyncRound): ResyncPass | undefined {
  return round.stage.kind === "running" || round.stage.kind === "completing" ? round.stage.pass : undefined;
}

export function moveResync(round: ResyncRound, next: ResyncStage): void {
  checkTransition("resync stage", resyncStageTransitions, round.stage.kind, next.kind);
  round.stage = next;
}

// ---------------------------------------------------------------- verify

export type VerifyStage =
  /** This side's data is being made durable (repairs copy from it). */
  | { kind: "flushing" }
  /** Between extents. */
  | { kind: "idle" }
  /** One extent is being compared (and maybe repaired) under its range lock. */
  | { kind: "comparing" };

export interface VerifyRun {
  request: number;
  repair: boolean;
  round: number;
  cursor: number;
  stage: VerifyStage;
  extentsTotal: number;
  extentsDone: number;
  mismatches: { offset: number; length: number }[];
  mismatchCount: number;
  repaired: number;
}
