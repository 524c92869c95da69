// One Disk Paxos ballot (Gafni & Lamport, "Disk Paxos", 2003) for one instance of the decided
// record, with two processors and a single disk: pure functions, the lease core does the IO.
//
// Each node owns one block on the witness: {instance, mbal, bal, value}. A ballot with number mbal:
//   phase 1: write my block {mbal, bal and value as before}, then read every block. Abort if any
//            block for this instance has a higher mbal. Otherwise choose the value with the highest
//            bal among the blocks read (mine included), or my own proposal if none has one.
//   phase 2: write my block {mbal, bal = mbal, value}, then read every block. Abort if any block
//            for this instance has a higher mbal. Otherwise the value is committed: it is final.
// Ballot numbers are unique per node (mbal ≡ node + 1 mod 2) and grow past every mbal seen.
//
// What the single disk adds (DESIGN.md §5, docs/quorum.md): the blocks are double-buffered records
// (format.ts), so a write torn by a crash reads as the block before it; a block that cannot be read
// at all (both copies bad, not merely empty) aborts the ballot rather than being taken as empty,
// because an empty-looking block could hide a higher mbal or an accepted value. A node writes its
// block for instance i + 1 only after its decided copy holds i, so a block is never more than one
// instance ahead of the newest decided record, and a ballot that sees a decided record for its own
// instance stops: the decision exists, the caller learns it.
import { latestDecided, type LeaseValue, type NodeIndex, otherNode, type PaxosBlock, type WitnessState, emptyPaxosBlock } from "./format.ts";

export interface BallotState {
  instance: bigint;
  mbal: bigint;
  phase: 1 | 2;
  /** What this node proposes if no block carries an accepted value. */
  proposal: LeaseValue;
  /** The block this phase writes. */
  block: PaxosBlock;
}

export type BallotOutcome =
  /** Phase 1 is complete: write `state.block` (phase 2). */
  | { kind: "phase2"; state: BallotState }
  /** Phase 2 is complete: `value` is decided for the instance. */
  | { kind: "committed"; value: LeaseValue }
  | {
      kind: "aborted";
      /** higherBallot: the other node runs a higher ballot; decided: the instance is decided already;
       * unreadable: the other node's block cannot be read; inconsistent: a block is ahead of every decided record. */
      reason: "higherBallot" | "decided" | "unreadable" | "inconsistent";
      detail: string;
      /** The highest mbal seen for the instance (the next ballot must exceed it). */
      highestMbal: bigint;
    };

/** The smallest ballot number of `node` above `above`. */
export function nextBallotNumber(node: NodeIndex, above: bigint): bigint {
  let candidate = above + 1n;
  if ((candidate - BigInt(node) - 1n) % 2n !== 0n) candidate += 1n;
  return candidate;
}

/** Phase 1 of a new ballot for `instance`. `mine`: this node's block as last written (or read at start). */
export function startBallot(node: NodeIndex, instance: bigint, proposal: LeaseValue, mine: PaxosBlock, highestMbalSeen: bigint): BallotState {
  const sameInstance = mine.instance === instance;
  const above = sameInstance && mine.mbal > highestMbalSeen ? mine.mbal : highestMbalSeen;
  const mbal = nextBallotNumber(node, above);
  const block: PaxosBlock = sameInstance ? { instance, mbal, bal: mine.bal, value: mine.value } : { instance, mbal, bal: 0n, value: undefined };
  return { instance, mbal, phase: 1, proposal, block };
}

/** The other node's block as it bears on `instance`, or why it cannot be used. */
function otherBlock(witness: WitnessState, other: NodeIndex): PaxosBlock | "unreadable" {
  const pair = witness.paxos[other];
  if (pair.newest) return pair.newest.record;
  return pair.copies.every((copy) => copy.state === "empty") ? emptyPaxosBlock : "unreadable";
}

/** Evaluate the read that followed this phase's write. */
export function afterRead(state: BallotState, node: NodeIndex, witness: WitnessState): BallotOutcome {
  const decided = latestDecided(witness);
  if (decided.version >= state.instance) {
    return { kind: "aborted", reason: "decided", detail: `instance ${state.instance} is decided already (the witness holds version ${decided.version})`, highestMbal: state.mbal };
  }
  const other = otherBlock(witness, otherNode(node));
  if (other === "unreadable") {
    const why = witness.paxos[otherNode(node)].copies.map((copy) => (copy.state === "torn" || copy.state === "foreign" ? copy.why : copy.state)).join("; ");
    return { kind: "aborted", reason: "unreadable", detail: `the other node's paxos block cannot be read (${why})`, highestMbal: state.mbal };
  }
  if (other.instance > state.instance) {
    return { kind: "aborted", reason: "inconsistent", detail: `the other node's paxos block is at instance ${other.instance} but the newest decided record is version ${decided.version}`, highestMbal: state.mbal };
  }
  if (other.instance === state.instance && other.mbal > state.mbal) {
    return { kind: "aborted", reason: "higherBallot", detail: `the other node runs ballot ${other.mbal} > ${state.mbal}`, highestMbal: other.mbal };
  }
  if (state.phase === 2) return { kind: "committed", value: state.block.value! };
  // Phase 1 complete: the value with the highest bal among the blocks of this instance, else ours.
  let chosen: { bal: bigint; value: LeaseValue } | undefined;
  for (const block of [state.block, other]) {
    if (block.instance !== state.instance || block.bal === 0n || !block.value) continue;
    if (!chosen || block.bal > chosen.bal) chosen = { bal: block.bal, value: block.value };
  }
  const value = chosen?.value ?? state.proposal;
  return { kind: "phase2", state: { ...state, phase: 2, block: { instance: state.instance, mbal: state.mbal, bal: state.mbal, value } } };
}
