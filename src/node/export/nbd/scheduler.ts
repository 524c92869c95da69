// Which NBD storage operation starts next, for the whole node. Sessions hand their IO to the driver
// at once; the driver queues it here and starts what this scheduler lets through:
//  - at most `inFlightMax` operations run at once, so NBD never takes the whole IO thread pool
//    (O_DIRECT reads and writes, fdatasync) from the replication link and the metadata writes;
//  - at most `operationsPerTurnMax` operations and `bytesPerTurnMax` bytes start in one turn of the
//    event loop, so a flood of page-cache reads (which run on the event loop itself) leaves room for
//    the control API's and the replication link's sockets and timers between turns;
//  - connections take turns (round robin), so one connection's deep queue does not delay another's;
//  - a closed connection's operations that have not started are taken out (`cancel`) and never
//    reach the volume.
// Pure bookkeeping (CONVENTIONS.md §1): the driver calls `nextTurn` from its own timer.
import { assert } from "../../../common/assert.ts";

export interface SchedulerLimits {
  inFlightMax: number;
  operationsPerTurnMax: number;
  bytesPerTurnMax: number;
}

export class StorageScheduler<T> {
  /** Queued operations per owner, in submission order; owners in round-robin order. */
  private readonly queues = new Map<number, { item: T; bytes: number }[]>();
  private running = 0;
  private operationsThisTurn = 0;
  private bytesThisTurn = 0;
  private queuedCount = 0;

  constructor(readonly limits: SchedulerLimits) {
    assert(limits.inFlightMax >= 1 && limits.operationsPerTurnMax >= 1 && limits.bytesPerTurnMax >= 1, "scheduler limits admit work");
  }

  get inFlight(): number {
    return this.running;
  }

  get queued(): number {
    return this.queuedCount;
  }

  submit(owner: number, item: T, bytes: number): void {
    let queue = this.queues.get(owner);
    if (!queue) {
      queue = [];
      this.queues.set(owner, queue);
    }
    queue.push({ item, bytes });
    this.queuedCount++;
  }

  /**
   * The next operation to start now, or undefined when none may start (nothing queued, too many
   * running, or this turn's allowance spent). The caller starts it and calls `finished` when done.
   * The first operation of a turn always starts, however large, so every size makes progress.
   */
  next(): { owner: number; item: T } | undefined {
    if (this.queuedCount === 0 || this.running >= this.limits.inFlightMax || this.turnSpent()) return undefined;
    const [owner, queue] = this.queues.entries().next().value!;
    const entry = queue.shift()!;
    this.queues.delete(owner);
    if (queue.length > 0) this.queues.set(owner, queue); // to the back: the others go first
    this.queuedCount--;
    this.running++;
    this.operationsThisTurn++;
    this.bytesThisTurn += entry.bytes;
    return { owner, item: entry.item };
  }

  /** Whether queued work waits only for the next turn (the driver then arms its timer). */
  waitsForTurn(): boolean {
    return this.queuedCount > 0 && this.running < this.limits.inFlightMax && this.turnSpent();
  }

  finished(): void {
    assert(this.running > 0, "an operation finishes once");
    this.running--;
  }

  /** A new turn of the event loop: the allowance is full again. */
  nextTurn(): void {
    this.operationsThisTurn = 0;
    this.bytesThisTurn = 0;
  }

  /** Take out every queued operation of `owner` (its connection closed); returns them. */
  cancel(owner: number): T[] {
    const queue = this.queues.get(owner);
    if (!queue) return [];
    this.queues.delete(owner);
    this.queuedCount -= queue.length;
    return queue.map((entry) => entry.item);
  }

  private turnSpent(): boolean {
    return this.operationsThisTurn >= this.limits.operationsPerTurnMax || (this.operationsThisTurn > 0 && this.bytesThisTurn >= this.limits.bytesPerTurnMax);
  }
}
