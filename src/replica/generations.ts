import { DataState, type Generations } from "./model.ts";
// Generation identifiers and the resync decision (DESIGN.md §4). Each replica of a volume carries
//   current     - the generation its data belongs to (0 = a new disk that was never written);
//   bitmapBase  - the generation it shared with the peer when it started writing alone (0 = it has
//                 not written alone since it last agreed with the peer); its dirty bitmap holds every
//                 region changed since then;
//   history     - older generations, newest first.
// When two replicas meet, `decide` compares these and says: in sync, which side is the source (and
// whether the bitmap suffices or a full copy is needed), split brain (both wrote alone since a common
// generation: never resolved here), unrelated data, or no good data at all. It is a pure function of
// both sides' states and symmetric by construction: decide(a, b) mirrors decide(b, a), so both nodes
// reach the same verdict from the same two states. The update rules below are the only ways a
// generation changes; the volume core persists each result before acting on it.


export interface ReplicaState {
  nodeId: string;
  generations: Generations;
  dataState: DataState;
  /** This side holds the write grant (it is the volume's primary). */
  mayWrite: boolean;
  /** Set bits in its dirty bitmap. */
  bitsSet: number;
}

export type Side = "local" | "peer";

export type Decision =
  | { kind: "inSync"; reason: string }
  | { kind: "resync"; source: Side; full: boolean; reason: string }
  | { kind: "splitBrain"; full: boolean; reason: string }
  | { kind: "unrelated"; reason: string }
  | { kind: "noGoodData"; reason: string };

export const noGeneration = 0n;

/** Which side to prefer when either could be the source: the writer, else the lower node name. */
export function preferredSide(local: ReplicaState, peer: ReplicaState): Side {
  if (local.mayWrite !== peer.mayWrite) return local.mayWrite ? "local" : "peer";
  return local.nodeId < peer.nodeId ? "local" : "peer";
}

function related(a: Generations, b: Generations): boolean {
  const known = (generations: Generations) => [generations.current, generations.bitmapBase, ...generations.history].filter((id) => id !== noGeneration);
  const bKnown = new Set(known(b));
  return known(a).some((id) => bKnown.has(id));
}

/**
 * The resync decision for `local` meeting `peer`. Every rule is written for both sides at once, so
 * decide(b, a) is exactly the mirror image of decide(a, b) and both nodes agree.
 */
export function decide(local: ReplicaState, peer: ReplicaState): Decision {
  const L = local.generations;
  const P = peer.generations;
  const localNew = local.dataState === DataState.New;
  const peerNew = peer.dataState === DataState.New;
  const localIncomplete = local.dataState === DataState.Inconsistent;
  const peerIncomplete = peer.dataState === DataState.Inconsistent;

  // 1. Data states first: a side without complete data can only be a target.
  if (localNew && peerNew) return { kind: "resync", source: preferredSide(local, peer), full: false, reason: "both replicas are new: adopt one generation, nothing to copy" };
  if ((localNew || localIncomplete) && (peerNew || peerIncomplete)) return { kind: "noGoodData", reason: "neither replica holds complete data (new, or an interrupted resync target)" };
  if (localNew) return { kind: "resync", source: "peer", full: true, reason: "the local replica is new: full copy from the peer" };
  if (peerNew) return { kind: "resync", source: "local", full: true, reason: "the peer's replica is new: full copy to it" };
  if (localIncomplete || peerIncomplete) {
    const source: Side = localIncomplete ? "peer" : "local";
    if (related(L, P)) return { kind: "resync", source, full: false, reason: "continuing an interrupted resync: the target's remaining bitmap and the source's" };
    return { kind: "resync", source, full: true, reason: "an interrupted resync target shares no generation with the source: full copy" };
  }
  // 2. Both complete: compare generations.
  if (L.current === P.current) {
    if (local.bitsSet === 0 && peer.bitsSet === 0) return { kind: "inSync", reason: "same current generation, no dirty regions" };
    return { kind: "resync", source: preferredSide(local, peer), full: false, reason: "same generation with dirty regions (writes in flight at a link loss or crash): copy them from the preferred side" };
  }
  const peerWroteAlone = P.bitmapBase !== noGeneration && P.bitmapBase === L.current;
  const localWroteAlone = L.bitmapBase !== noGeneration && L.bitmapBase === P.current;
  if (peerWroteAlone && !localWroteAlone) return { kind: "resync", source: "peer", full: false, reason: "the peer wrote alone since our generation: incremental resync from both bitmaps" };
  if (localWroteAlone && !peerWroteAlone) return { kind: "resync", source: "local", full: false, reason: "we wrote alone since the peer's generation: incremental resync from both bitmaps" };
  if (L.bitmapBase !== noGeneration && L.bitmapBase === P.bitmapBase) return { kind: "splitBrain", full: false, reason: "both replicas wrote alone since the same generation" };
  const peerMovedOn = P.history.includes(L.current);
  const localMovedOn = L.history.includes(P.current);
  if (peerMovedOn && !localMovedOn) return { kind: "resync", source: "peer", full: true, reason: "the peer moved on from our generation and its bitmap does not cover the change: full copy" };
  if (localMovedOn && !peerMovedOn) return { kind: "resync", source: "local", full: true, reason: "we moved on from the peer's generation and our bitmap does not cover the change: full copy" };
  if (related(L, P)) return { kind: "splitBrain", full: true, reason: "both replicas moved on from a common generation and no bitmap covers the difference" };
  return { kind: "unrelated", reason: "the replicas share no generation: they hold unrelated data" };
}

/** Start writing without the peer: remember the shared generation as the bitmap base, take a new id. */
export function startAlone(generations: Generations, newId: bigint, historyLength: number): Generations {
  if (generations.bitmapBase !== noGeneration) return generations;
  if (generations.current === noGeneration) return { current: newId, bitmapBase: noGeneration, history: generations.history };
  return { current: newId, bitmapBase: generations.current, history: generations.history.slice(0, historyLength) };
}

function pushHistory(history: bigint[], id: bigint, historyLength: number): bigint[] {
  if (id === noGeneration || history[0] === id) return history.slice(0, historyLength);
  return [id, ...history.filter((entry) => entry !== id)].slice(0, historyLength);
}

/** The source finished a resync: its bitmap base becomes history. */
export function finishAsSource(generations: Generations, historyLength: number): Generations {
  return { current: generations.current, bitmapBase: noGeneration, history: pushHistory(generations.history, generations.bitmapBase, historyLength) };
}

/**
 * A resync target begins to take the source's data: it records the source's generation, so that
 * after an interruption the two are related and the resync continues from the remaining bitmaps
 * (a new disk, whose own generation is none, would otherwise look unrelated and start over).
 */
export function startAsTarget(generations: Generations, sourceCurrent: bigint, historyLength: number): Generations {
  if (sourceCurrent === noGeneration || sourceCurrent === generations.current) return generations;
  return { ...generations, history: pushHistory(generations.history, sourceCurrent, historyLength) };
}

/** The target finished a resync: it now holds the source's generation. */
export function finishAsTarget(generations: Generations, sourceCurrent: bigint, historyLength: number): Generations {
  let history = pushHistory(generations.history, generations.bitmapBase, historyLength);
  if (generations.current !== sourceCurrent) history = pushHistory(history, generations.current, historyLength);
  return { current: sourceCurrent, bitmapBase: noGeneration, history: history.filter((id) => id !== sourceCurrent) };
}

export function formatGeneration(id: bigint): string {
  return id.toString(16).padStart(16, "0");
}
