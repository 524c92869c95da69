// The replication domain's vocabulary, shared by the cores, the metadata format and the wire codec:
// the data state of a replica, its generation identifiers, the verdict kinds of a decision, and a
// run of dirty bits. Types and constants only; the wire and the metadata format encode them.

export const enum DataState {
  /** Never written: a new or replaced disk. */
  New = 0,
  /** A complete replica of some generation. */
  Consistent = 1,
  /** A resync target that has not finished: only the peer holds good data for its dirty regions. */
  Inconsistent = 2,
}

export const enum DecisionKind {
  InSync = 0,
  Resync = 1,
  SplitBrain = 2,
  Unrelated = 3,
  NoGoodData = 4,
  /** The sender's volume state differs in a way that forbids replication (size, granule). */
  Mismatch = 5,
  /** Both nodes hold the write grant: IO waits until one is demoted. */
  DualPrimary = 6,
  /**
   * The generations say the node that holds the write grant (and complete data) should become
   * the resync target: refused, since that needs a decision it can check or an operator.
   */
  PrimaryWouldBeTarget = 7,
}

/** A run of set bits in a dirty bitmap: [start, start + length) in bit indexes. */
export interface BitRun {
  start: number;
  length: number;
}

/** A replica's generation identifiers (generations.ts explains each). */
export interface Generations {
  current: bigint;
  bitmapBase: bigint;
  history: bigint[];
}
