// Exclusive locks over byte ranges. The file layer holds one around each O_DIRECT write so that a
// read-modify-write of a partial block cannot interleave with another write to the same block and
// lose its bytes. Waiters are served in arrival order per conflicting range; non-overlapping ranges
// never wait. In-flight ranges are few (bounded by the per-connection request limit), so a list
// scan is cheaper than a tree.

interface Held {
  start: number;
  end: number;
  released: Promise<void>;
}

export class RangeLock {
  private held: Held[] = [];

  /** Wait until [start, end) overlaps no held range, hold it, and return the release function. */
  async acquire(start: number, end: number): Promise<() => void> {
    for (;;) {
      const conflict = this.held.find((range) => range.start < end && start < range.end);
      if (!conflict) break;
      await conflict.released;
    }
    let release!: () => void;
    const entry: Held = { start, end, released: new Promise<void>((resolve) => (release = resolve)) };
    this.held.push(entry);
    return () => {
      this.held.splice(this.held.indexOf(entry), 1);
      release();
    };
  }

  get heldCount(): number {
    return this.held.length;
  }
}
