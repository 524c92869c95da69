// The node-wide memory budget of the NBD server: every byte a connection holds for a request
// payload or a reply (a WRITE's payload until the layer has it, a READ's reply until the socket has
// taken it) is reserved here first, so all connections together never hold more than the budget.
// A connection that cannot get memory stops being read (its session pauses input), which is the
// back-pressure. Pure bookkeeping (CONVENTIONS.md §1): the driver asks, releases and delivers the
// grants this class returns; there is no IO, clock or randomness in it.
//
// Fairness. A connection may hold at most its share: the budget divided by the connections that
// hold or want memory now, between `shareBytesMin` and `shareBytesMax`. Waiters are served in
// arrival order; a waiter held back only by its own share does not hold up the ones behind it, but
// one waiting for room does (so a large request is not starved by a stream of small ones). A
// connection that holds nothing may take more than its share in one request (a maximal WRITE must
// always be possible), as soon as the budget has room. A greedy client therefore gets its share
// and no more while others want memory, and a client that never reads its replies keeps at most
// what it held when its replies stopped moving.
import { assert } from "../../../common/assert.ts";

export interface MemoryGrant {
  owner: number;
  bytes: number;
}

export interface MemoryBudgetLimits {
  totalBytes: number;
  /** A share never falls below this (a READ stream's working set must fit one). */
  shareBytesMin: number;
  /** A share never exceeds this, however few connections want memory. */
  shareBytesMax: number;
}

interface Waiter {
  owner: number;
  bytes: number;
}

export class MemoryBudget {
  private used = 0;
  private readonly held = new Map<number, number>();
  private readonly waiters: Waiter[] = [];

  constructor(readonly limits: MemoryBudgetLimits) {
    assert(limits.shareBytesMin >= 1 && limits.shareBytesMin <= limits.shareBytesMax && limits.shareBytesMax <= limits.totalBytes, "memory budget limits ordered");
  }

  get totalBytes(): number {
    return this.limits.totalBytes;
  }

  get usedBytes(): number {
    return this.used;
  }

  /** Connections waiting for memory now. */
  get waitingCount(): number {
    return this.waiters.length;
  }

  heldBy(owner: number): number {
    return this.held.get(owner) ?? 0;
  }

  isWaiting(owner: number): boolean {
    return this.waiters.some((waiter) => waiter.owner === owner);
  }

  /** Owners whose request waits for room in the budget (not merely for their own share to come down). */
  ownersWaitingForRoom(): number[] {
    const share = this.share();
    return this.waiters.filter((waiter) => !(this.heldBy(waiter.owner) > 0 && this.heldBy(waiter.owner) + waiter.bytes > share)).map((waiter) => waiter.owner);
  }

  /** What one connection may hold now: the budget split over the connections holding or wanting memory. */
  share(): number {
    // Counted without building a set: it runs for every request, and an owner waits at most once.
    let owners = this.held.size;
    for (const waiter of this.waiters) if (!this.held.has(waiter.owner)) owners++;
    const split = Math.floor(this.limits.totalBytes / Math.max(1, owners));
    return Math.min(this.limits.shareBytesMax, Math.max(this.limits.shareBytesMin, split));
  }

  /**
   * Ask for `bytes` more for `owner`. True when granted now; false when queued, and the grant is
   * returned later by `release` or `withdraw`. An owner has at most one request waiting.
   */
  request(owner: number, bytes: number): boolean {
    assert(Number.isSafeInteger(bytes) && bytes > 0 && bytes <= this.limits.totalBytes, `a memory request of ${bytes} bytes fits the budget`);
    assert(!this.isWaiting(owner), "one memory request waits per connection");
    this.waiters.push({ owner, bytes });
    const granted = this.grantWaiters();
    const mine = granted.find((grant) => grant.owner === owner);
    assert(granted.length === (mine ? 1 : 0), "a new request never lets an earlier waiter through");
    return mine !== undefined;
  }

  /** `owner` gives `bytes` back; returns the waiters that can go on now. */
  release(owner: number, bytes: number): MemoryGrant[] {
    if (bytes === 0) return [];
    const holding = this.heldBy(owner);
    assert(Number.isSafeInteger(bytes) && bytes > 0 && bytes <= holding, `owner ${owner} releases ${bytes} of the ${holding} bytes it holds`);
    if (holding === bytes) this.held.delete(owner);
    else this.held.set(owner, holding - bytes);
    this.used -= bytes;
    return this.grantWaiters();
  }

  /** `owner` no longer wants what it asked for (its connection closed); others may go on. */
  withdraw(owner: number): MemoryGrant[] {
    const index = this.waiters.findIndex((waiter) => waiter.owner === owner);
    if (index < 0) return [];
    this.waiters.splice(index, 1);
    return this.grantWaiters();
  }

  private grantWaiters(): MemoryGrant[] {
    const granted: MemoryGrant[] = [];
    for (let index = 0; index < this.waiters.length; ) {
      const waiter = this.waiters[index]!;
      const holding = this.heldBy(waiter.owner);
      if (this.used + waiter.bytes > this.limits.totalBytes) break; // waiting for room: nobody overtakes
      if (holding > 0 && holding + waiter.bytes > this.share()) {
        index++; // over its own share: the ones behind it may go first
        continue;
      }
      this.waiters.splice(index, 1);
      this.held.set(waiter.owner, holding + waiter.bytes);
      this.used += waiter.bytes;
      granted.push({ owner: waiter.owner, bytes: waiter.bytes });
    }
    return granted;
  }
}
