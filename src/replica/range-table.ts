// Byte ranges with IO in flight on one volume, so that overlapping operations are serialised and
// applied in the same order on both nodes (DESIGN.md §3): a mirrored write, a write arriving from
// the peer, a resync chunk and a verify extent each hold their range until they are done, and an
// operation whose range overlaps a held one waits. Non-overlapping operations never wait. The set
// is bounded by the in-flight limits, so a scan is cheaper than a tree. Pure bookkeeping.
import { assert } from "../common/assert.ts";

export type RangeOwner = "client" | "peer" | "resync" | "verify" | "rewrite";

interface HeldRange {
  id: number;
  start: number;
  end: number;
  owner: RangeOwner;
}

export class RangeTable {
  private held: HeldRange[] = [];
  private nextId = 1;

  get size(): number {
    return this.held.length;
  }

  /** Whether [start, end) overlaps a held range. */
  conflicts(start: number, end: number): boolean {
    for (const range of this.held) if (range.start < end && start < range.end) return true;
    return false;
  }

  hold(start: number, end: number, owner: RangeOwner): number {
    assert(start < end, "held ranges are not empty");
    assert(!this.conflicts(start, end), () => `range ${start}..${end} is free before it is held`);
    const id = this.nextId++;
    this.held.push({ id, start, end, owner });
    return id;
  }

  release(id: number): void {
    const index = this.held.findIndex((range) => range.id === id);
    assert(index >= 0, () => `range ${id} released once`);
    this.held.splice(index, 1);
  }

  countOwnedBy(owner: RangeOwner): number {
    let count = 0;
    for (const range of this.held) if (range.owner === owner) count++;
    return count;
  }
}
