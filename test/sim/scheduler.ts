// Simulated time: a priority queue of callbacks keyed by (time in microseconds, insertion order),
// so events at the same instant run in the order they were scheduled and a run is a pure function
// of its seed. Nothing here knows about nodes or disks.

interface Entry {
  time: number;
  order: number;
  run: () => void;
}

/** Thrown when a run executes more events than its budget: a livelock (say, a message storm). */
export class EventBudgetExceeded extends Error {
  override name = "EventBudgetExceeded";
}

export class Scheduler {
  private heap: Entry[] = [];
  private order = 0;
  now = 0;
  executed = 0;

  /** `maxEvents`: a normal run executes thousands of events; far more means nothing converges. */
  constructor(private readonly maxEvents = Infinity) {}

  at(time: number, run: () => void): void {
    const entry: Entry = { time: Math.max(time, this.now), order: this.order++, run };
    const heap = this.heap;
    heap.push(entry);
    let index = heap.length - 1;
    while (index > 0) {
      const parent = (index - 1) >> 1;
      if (!this.less(entry, heap[parent]!)) break;
      heap[index] = heap[parent]!;
      index = parent;
    }
    heap[index] = entry;
  }

  after(delayUs: number, run: () => void): void {
    this.at(this.now + Math.max(0, Math.round(delayUs)), run);
  }

  get pending(): number {
    return this.heap.length;
  }

  private less(x: Entry, y: Entry): boolean {
    return x.time < y.time || (x.time === y.time && x.order < y.order);
  }

  private pop(): Entry | undefined {
    const heap = this.heap;
    const top = heap[0];
    if (!top) return undefined;
    const last = heap.pop()!;
    if (heap.length > 0) {
      heap[0] = last;
      let index = 0;
      for (;;) {
        const left = index * 2 + 1;
        const right = left + 1;
        let smallest = index;
        if (left < heap.length && this.less(heap[left]!, heap[smallest]!)) smallest = left;
        if (right < heap.length && this.less(heap[right]!, heap[smallest]!)) smallest = right;
        if (smallest === index) break;
        const swap = heap[index]!;
        heap[index] = heap[smallest]!;
        heap[smallest] = swap;
        index = smallest;
      }
    }
    return top;
  }

  /** Run events until time passes `until` or `stop()` returns true (checked after each event). */
  runUntil(until: number, stop?: () => boolean): void {
    for (;;) {
      const top = this.heap[0];
      if (!top || top.time > until) {
        this.now = Math.max(this.now, until);
        return;
      }
      this.pop();
      this.now = top.time;
      if (++this.executed > this.maxEvents) throw new EventBudgetExceeded(`more than ${this.maxEvents} events by ${(this.now / 1000).toFixed(1)} ms of simulated time`);
      top.run();
      if (stop?.()) return;
    }
  }
}
