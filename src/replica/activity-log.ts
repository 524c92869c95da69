// The activity log: the set of "hot" extents a writer may have writes in flight or not yet durable
// on both nodes. A write into a cold extent waits until a transaction adding that extent is durable,
// so after a crash every region that might differ between the replicas lies in a logged extent, and
// recovery marks exactly those extents dirty instead of the whole volume. The set is bounded
// (activityLogExtentsMax); making room evicts the least recently used extent with no write in
// flight, and only after every completed write is durable on both nodes (the volume core flushes
// both sides and writes back the bitmap first). Pure bookkeeping: the volume core persists.
import { assert } from "../common/assert.ts";

interface HotExtent {
  references: number;
  lastUse: number;
}

export interface ActivityLogPlan {
  add: number[];
  evict: number[];
}

export class ActivityLog {
  private readonly hot = new Map<number, HotExtent>();
  private useCounter = 0;
  /** Sequence of the last durable transaction. */
  sequence: number;

  constructor(
    readonly extentBytes: number,
    readonly capacity: number,
    initial: readonly number[] = [],
    sequence = 0,
  ) {
    assert(capacity >= 2 && extentBytes > 0, "activity log shape");
    this.sequence = sequence;
    for (const extent of initial.slice(0, capacity)) this.hot.set(extent, { references: 0, lastUse: this.useCounter++ });
  }

  get extents(): number[] {
    return [...this.hot.keys()].sort((a, b) => a - b);
  }

  get size(): number {
    return this.hot.size;
  }

  extentRange(offset: number, length: number): { first: number; last: number } {
    assert(length > 0, "activity of an empty range");
    return { first: Math.floor(offset / this.extentBytes), last: Math.floor((offset + length - 1) / this.extentBytes) };
  }

  /** Extents of [offset, offset+length) that are not hot. */
  missing(offset: number, length: number): number[] {
    const { first, last } = this.extentRange(offset, length);
    const result: number[] = [];
    for (let extent = first; extent <= last; extent++) if (!this.hot.has(extent)) result.push(extent);
    return result;
  }

  /** Hold the (hot) extents of a range while a write is in flight there. */
  acquire(offset: number, length: number): void {
    const { first, last } = this.extentRange(offset, length);
    for (let extent = first; extent <= last; extent++) {
      const entry = this.hot.get(extent);
      assert(entry, () => `extent ${extent} is hot before a write uses it`);
      entry.references++;
      entry.lastUse = this.useCounter++;
    }
  }

  release(offset: number, length: number): void {
    const { first, last } = this.extentRange(offset, length);
    for (let extent = first; extent <= last; extent++) {
      const entry = this.hot.get(extent);
      assert(entry && entry.references > 0, () => `extent ${extent} released once per acquire`);
      entry.references--;
    }
  }

  /**
   * Plan a transaction that makes `wanted` hot. Evicts least recently used idle extents, never one
   * in `protect` (extents the waiting writes also need), when the log is full; returns undefined
   * when there is not enough idle room yet (writes must drain first).
   */
  plan(wanted: readonly number[], protect: ReadonlySet<number> = new Set()): ActivityLogPlan | undefined {
    const add = [...new Set(wanted)].filter((extent) => !this.hot.has(extent));
    if (add.length === 0) return { add, evict: [] };
    if (add.length > this.capacity) return undefined;
    const room = this.capacity - this.hot.size;
    const need = add.length - room;
    if (need <= 0) return { add, evict: [] };
    const idle = [...this.hot.entries()]
      .filter(([extent, entry]) => entry.references === 0 && !protect.has(extent))
      .sort((a, b) => a[1].lastUse - b[1].lastUse);
    if (idle.length < need) return undefined;
    return { add, evict: idle.slice(0, need).map(([extent]) => extent) };
  }

  /** The extent set a plan would leave, for the transaction record. */
  after(plan: ActivityLogPlan): number[] {
    const set = new Set(this.hot.keys());
    for (const extent of plan.evict) set.delete(extent);
    for (const extent of plan.add) set.add(extent);
    return [...set].sort((a, b) => a - b);
  }

  /** Whether the evictions of a plan are still idle (a write may have started meanwhile). */
  stillValid(plan: ActivityLogPlan): boolean {
    return plan.evict.every((extent) => this.hot.get(extent)?.references === 0) && plan.add.length + this.hot.size - plan.evict.length <= this.capacity;
  }

  /**
   * A transaction failed, yet its record may have reached the disk (EIO after the write landed):
   * the log on disk is either the old set or the planned one. Only what both cover stays hot: the
   * evicted extents leave (a write there needs a new transaction), the added ones never came. The
   * transaction's sequence is used up, so a retry never overwrites a record that may be the newest.
   */
  failed(plan: ActivityLogPlan, sequence: number): void {
    for (const extent of plan.evict) {
      assert(this.hot.get(extent)?.references === 0, "evicted extents are idle");
      this.hot.delete(extent);
    }
    this.sequence = Math.max(this.sequence, sequence);
  }

  /** Apply a transaction once it is durable. */
  commit(plan: ActivityLogPlan, sequence: number): void {
    for (const extent of plan.evict) {
      assert(this.hot.get(extent)?.references === 0, "evicted extents are idle");
      this.hot.delete(extent);
    }
    for (const extent of plan.add) if (!this.hot.has(extent)) this.hot.set(extent, { references: 0, lastUse: this.useCounter++ });
    assert(this.hot.size <= this.capacity, "activity log within capacity");
    this.sequence = sequence;
  }
}
