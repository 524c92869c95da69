// A simulated disk (CONVENTIONS.md §2) implementing the replica driver's BlockStorage and
// MetadataStore. It keeps two images: `visible` (what reads see: every completed write) and
// `durable` (what survives a crash). A write completes at a scheduled time; unless it was FUA it then
// sits in a volatile cache until a flush that started after its completion completes. Faults drawn
// from the run's seed: IO errors (a failed write may leave part of its sectors behind), and on a
// crash each cached or in-flight write survives whole, vanishes, or is torn at sector granularity.
// A crash also drops every pending completion, so a dead node never hears back from its disk.
import type { IoCallback } from "../../src/replica/io.ts";
import type { IoError } from "../../src/replica/types.ts";
import type { SimRandom } from "./random.ts";
import type { Scheduler } from "./scheduler.ts";

export interface DiskFaults {
  latencyUsMin: number;
  latencyUsMax: number;
  writeErrorProbability: number;
  readErrorProbability: number;
  flushErrorProbability: number;
  /** Unit a crash or failed write can tear at (4096: sector-atomic data disk; 512 for metadata). */
  tearBytes: number;
  /** On a crash, chance that a cached (unflushed) write reached the medium whole. */
  crashKeepProbability: number;
}

interface PendingWrite {
  offset: number;
  bytes: Uint8Array;
  sequence: number;
}

export class SimDisk {
  visible: Uint8Array;
  durable: Uint8Array;
  private cache: PendingWrite[] = [];
  private readonly inFlight = new Set<PendingWrite>();
  private completions = 0;
  private incarnation = 0;
  /** Errors are switched off for the final convergence phase. */
  errorsEnabled = true;
  readonly counters = { reads: 0, writes: 0, flushes: 0, errors: 0, torn: 0 };

  constructor(
    readonly name: string,
    sizeBytes: number,
    private readonly scheduler: Scheduler,
    private readonly random: SimRandom,
    readonly faults: DiskFaults,
  ) {
    this.visible = new Uint8Array(sizeBytes);
    this.durable = new Uint8Array(sizeBytes);
  }

  sizeBytes(): number {
    return this.visible.length;
  }

  private latency(): number {
    return this.random.range(this.faults.latencyUsMin, this.faults.latencyUsMax);
  }

  /** Schedule `run` unless the disk crashes first. */
  private later(run: () => void): void {
    const incarnation = this.incarnation;
    this.scheduler.after(this.latency(), () => {
      if (this.incarnation === incarnation) run();
    });
  }

  private fails(probability: number): boolean {
    return this.errorsEnabled && probability > 0 && this.random.chance(probability);
  }

  private checkRange(offset: number, length: number): IoError | null {
    return Number.isSafeInteger(offset) && offset >= 0 && length >= 0 && offset + length <= this.visible.length ? null : "EINVAL";
  }

  /** Remove [offset, offset+length) from cached writes (a later durable write supersedes them). */
  private uncache(offset: number, length: number): void {
    const end = offset + length;
    const kept: PendingWrite[] = [];
    for (const entry of this.cache) {
      const entryEnd = entry.offset + entry.bytes.length;
      if (entryEnd <= offset || entry.offset >= end) {
        kept.push(entry);
        continue;
      }
      if (entry.offset < offset) kept.push({ offset: entry.offset, bytes: entry.bytes.subarray(0, offset - entry.offset), sequence: entry.sequence });
      if (entryEnd > end) kept.push({ offset: end, bytes: entry.bytes.subarray(end - entry.offset), sequence: entry.sequence });
    }
    this.cache = kept;
  }

  /** Apply a random subset of a write's tear units to `image`. */
  private applyPartially(image: Uint8Array, write: PendingWrite): void {
    const unit = this.faults.tearBytes;
    let applied = false;
    for (let start = 0; start < write.bytes.length; start += unit) {
      if (this.random.chance(0.5)) {
        image.set(write.bytes.subarray(start, Math.min(start + unit, write.bytes.length)), write.offset + start);
        applied = true;
      }
    }
    if (applied) this.counters.torn++;
  }

  private submitWrite(offset: number, bytes: Uint8Array, fua: boolean, done: IoCallback): void {
    const rangeError = this.checkRange(offset, bytes.length);
    if (rangeError) return this.later(() => done(rangeError));
    this.counters.writes++;
    const write: PendingWrite = { offset, bytes: bytes.slice(), sequence: 0 };
    this.inFlight.add(write);
    this.later(() => {
      this.inFlight.delete(write);
      write.sequence = ++this.completions;
      if (this.fails(this.faults.writeErrorProbability)) {
        // A failed write may have reached some sectors (cached, like any other write).
        this.counters.errors++;
        this.applyPartially(this.visible, write);
        // The sectors that landed sit in the cache like any write: the range as it now reads.
        this.cache.push({ offset, bytes: this.visible.slice(offset, offset + write.bytes.length), sequence: write.sequence });
        return done("EIO");
      }
      this.visible.set(write.bytes, offset);
      if (fua) {
        this.uncache(offset, write.bytes.length);
        this.durable.set(write.bytes, offset);
      } else this.cache.push(write);
      done(null);
    });
  }

  // ---- BlockStorage

  read(offset: number, target: Uint8Array, done: IoCallback): void {
    const rangeError = this.checkRange(offset, target.length);
    if (rangeError) return this.later(() => done(rangeError));
    this.counters.reads++;
    this.later(() => {
      if (this.fails(this.faults.readErrorProbability)) {
        this.counters.errors++;
        return done("EIO");
      }
      target.set(this.visible.subarray(offset, offset + target.length));
      done(null);
    });
  }

  write(offset: number, data: Uint8Array, fua: boolean, done: IoCallback): void {
    this.submitWrite(offset, data, fua, done);
  }

  flush(done: IoCallback): void {
    this.counters.flushes++;
    const covered = this.completions;
    this.later(() => {
      if (this.fails(this.faults.flushErrorProbability)) {
        this.counters.errors++;
        return done("EIO");
      }
      const kept: PendingWrite[] = [];
      for (const entry of this.cache) {
        if (entry.sequence <= covered) this.durable.set(entry.bytes, entry.offset);
        else kept.push(entry);
      }
      this.cache = kept;
      done(null);
    });
  }

  trim(offset: number, length: number, fua: boolean, done: IoCallback): void {
    this.submitWrite(offset, new Uint8Array(Math.max(0, length)), fua, done);
  }

  zero(offset: number, length: number, fua: boolean, _noHole: boolean, done: IoCallback): void {
    this.submitWrite(offset, new Uint8Array(Math.max(0, length)), fua, done);
  }

  // ---- MetadataStore (reads return a copy)

  readMetadata(offset: number, length: number, done: (error: IoError | null, bytes: Uint8Array | undefined) => void): void {
    this.later(() => done(null, this.visible.slice(offset, offset + length)));
  }

  // ---- faults

  /** Power loss: cached and in-flight writes survive whole, vanish, or tear; nothing pending completes. */
  crash(): void {
    this.incarnation++;
    const unresolved = [...this.cache, ...[...this.inFlight].sort((a, b) => a.offset - b.offset)];
    for (const write of unresolved) {
      const roll = this.random.float();
      if (roll < this.faults.crashKeepProbability) this.durable.set(write.bytes, write.offset);
      else if (roll < this.faults.crashKeepProbability + (1 - this.faults.crashKeepProbability) / 2) this.applyPartially(this.durable, write);
    }
    this.cache = [];
    this.inFlight.clear();
    this.visible = this.durable.slice();
  }

  /** Silent corruption of a range on the medium (bit rot), for verify to find. */
  rot(offset: number, length: number): void {
    for (let index = offset; index < offset + length; index++) {
      this.visible[index] = this.visible[index]! ^ 0x5a;
      this.durable[index] = this.durable[index]! ^ 0x5a;
    }
  }

  /** A replaced disk: empty, and nothing pending. */
  replace(): void {
    this.incarnation++;
    this.cache = [];
    this.inFlight.clear();
    this.visible = new Uint8Array(this.visible.length);
    this.durable = new Uint8Array(this.durable.length);
  }

  /** The view the replica driver uses as its metadata store. */
  asMetadataStore() {
    return {
      sizeBytes: () => this.sizeBytes(),
      read: (offset: number, length: number, done: (error: IoError | null, bytes: Uint8Array | undefined) => void) => this.readMetadata(offset, length, done),
      write: (offset: number, bytes: Uint8Array, done: IoCallback) => this.write(offset, bytes, false, done),
      flush: (done: IoCallback) => this.flush(done),
    };
  }
}
