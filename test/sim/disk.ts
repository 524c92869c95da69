// A simulated disk (CONVENTIONS.md §2) implementing the replica driver's BlockStorage and
// MetadataStore. It keeps two images: `visible` (what reads see: every completed write) and
// `durable` (what survives a crash). A write completes at a scheduled time; unless it was FUA it then
// sits in a volatile cache until a flush that started after its completion completes. Faults drawn
// from the run's seed: IO errors (a failed write may leave part of its sectors behind), and on a
// crash each cached or in-flight write survives whole, vanishes, or is torn at sector granularity.
// A crash also drops every pending completion, so a dead node never hears back from its disk.
// Like a real disk doing DMA, a write takes its bytes from the caller's buffer when it completes,
// not when it is submitted: a caller that changes the buffer meanwhile writes the changed bytes.
// Linux semantics when configured: a failed flush drops the cached writes it covered (they never
// become durable, and a later flush succeeds without them) and may evict them from the page
// cache, so reads return the older bytes; TRIM may leave the data in place (it is advisory).
// Scripted scenarios add rules: the next matching IO fails, with or without its bytes landing.
import { joinPayload, type Payload } from "../../src/common/bytes.ts";
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
  /** ... and that it reached it torn (default: half of the rest; otherwise it vanished). */
  crashTearProbability?: number;
  /** A failed flush drops the cached writes it covered (Linux: the pages are marked clean). */
  flushFailureDropsCache?: boolean;
  /** ... and evicts them, so reads see what is on the medium. */
  flushFailureEvicts?: boolean;
  /** Chance a TRIM leaves the old data in place (it is advisory on some backings). */
  trimKeepsDataProbability?: number;
  /** Share of write errors that are ENOSPC rather than EIO (a thin backing that ran out). */
  noSpaceShare?: number;
}

/** A scripted fault: the next IO(s) of `op` overlapping the range fail with `error`. */
export interface DiskRule {
  op: "read" | "write" | "flush";
  /** Only IO overlapping [offset, offset + length); every IO of `op` when omitted. */
  offset?: number;
  length?: number;
  error: IoError;
  /** A failing write's bytes land anyway: in the cache ("all"), or on the medium ("durable"). */
  landed?: "none" | "all" | "durable";
  /** How many matching IOs fail (default 1). */
  times?: number;
}

interface PendingWrite {
  offset: number;
  bytes: Uint8Array;
  sequence: number;
}

interface InFlightWrite {
  offset: number;
  /** The caller's buffer: read when the write completes (or when a crash decides its fate). */
  /** Read when the write lands, as a real write reads its buffer: pieces as the core handed them. */
  source: Payload;
}

export class SimDisk {
  visible: Uint8Array;
  durable: Uint8Array;
  private cache: PendingWrite[] = [];
  private readonly inFlight = new Set<InFlightWrite>();
  private rules: (DiskRule & { left: number })[] = [];
  private completions = 0;
  private incarnation = 0;
  /** Errors are switched off for the final convergence phase. */
  errorsEnabled = true;
  /** Told when a failed flush dropped cached writes (the simulator's checkers note the data loss). */
  onDropped: (() => void) | undefined;
  /** Told when a flush failed, whatever it did to the cache. */
  onFlushFailed: (() => void) | undefined;
  readonly counters = { reads: 0, writes: 0, flushes: 0, errors: 0, torn: 0, dropped: 0, trimsKept: 0 };

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

  /** Add a scripted fault (scenario tests); rules apply in the order added. */
  inject(rule: DiskRule): void {
    this.rules.push({ ...rule, left: rule.times ?? 1 });
  }

  /** The scripted rule that fails this IO, if any (consumed). */
  private ruled(op: DiskRule["op"], offset: number, length: number): DiskRule | undefined {
    const rule = this.rules.find((candidate) => {
      if (candidate.op !== op || candidate.left <= 0) return false;
      if (candidate.offset === undefined) return true;
      const end = candidate.offset + (candidate.length ?? 1);
      return offset < end && candidate.offset < offset + Math.max(length, 1);
    });
    if (!rule) return undefined;
    rule.left--;
    this.rules = this.rules.filter((candidate) => candidate.left > 0);
    return rule;
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
  private applyPartially(image: Uint8Array, write: { offset: number; bytes: Uint8Array }): void {
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

  private submitWrite(offset: number, source: Payload, fua: boolean, done: IoCallback, trim = false): void {
    const rangeError = this.checkRange(offset, source.length);
    if (rangeError) return this.later(() => done(rangeError));
    this.counters.writes++;
    const write: InFlightWrite = { offset, source };
    this.inFlight.add(write);
    this.later(() => {
      this.inFlight.delete(write);
      const sequence = ++this.completions;
      const length = write.source.length;
      const rule = this.ruled("write", offset, length);
      if (rule) {
        this.counters.errors++;
        if (rule.landed === "all" || rule.landed === "durable") {
          const bytes = joinPayload(write.source).slice();
          this.visible.set(bytes, offset);
          if (rule.landed === "durable") {
            this.uncache(offset, length);
            this.durable.set(bytes, offset);
          } else this.cache.push({ offset, bytes, sequence });
        }
        return done(rule.error);
      }
      if (this.fails(this.faults.writeErrorProbability)) {
        // A failed write may have reached some sectors (cached, like any other write).
        this.counters.errors++;
        this.applyPartially(this.visible, { offset, bytes: joinPayload(write.source).slice() });
        // The sectors that landed sit in the cache like any write: the range as it now reads.
        this.cache.push({ offset, bytes: this.visible.slice(offset, offset + length), sequence });
        return done((this.faults.noSpaceShare ?? 0) > 0 && this.random.chance(this.faults.noSpaceShare ?? 0) ? "ENOSPC" : "EIO");
      }
      if (trim && (this.faults.trimKeepsDataProbability ?? 0) > 0 && this.random.chance(this.faults.trimKeepsDataProbability ?? 0)) {
        // Advisory TRIM: the backing kept the data.
        this.counters.trimsKept++;
        return done(null);
      }
      const bytes = joinPayload(write.source).slice();
      this.visible.set(bytes, offset);
      if (fua) {
        this.uncache(offset, length);
        this.durable.set(bytes, offset);
      } else this.cache.push({ offset, bytes, sequence });
      done(null);
    });
  }

  // ---- BlockStorage

  read(offset: number, target: Uint8Array, done: IoCallback): void {
    const rangeError = this.checkRange(offset, target.length);
    if (rangeError) return this.later(() => done(rangeError));
    this.counters.reads++;
    this.later(() => {
      const rule = this.ruled("read", offset, target.length);
      if (rule || this.fails(this.faults.readErrorProbability)) {
        this.counters.errors++;
        return done(rule?.error ?? "EIO");
      }
      target.set(this.visible.subarray(offset, offset + target.length));
      done(null);
    });
  }

  write(offset: number, data: Payload, fua: boolean, done: IoCallback): void {
    this.submitWrite(offset, data, fua, done);
  }

  flush(done: IoCallback): void {
    this.counters.flushes++;
    const covered = this.completions;
    this.later(() => {
      const rule = this.ruled("flush", 0, 0);
      if (rule || this.fails(this.faults.flushErrorProbability)) {
        this.counters.errors++;
        if (this.faults.flushFailureDropsCache) this.dropCache(covered);
        this.onFlushFailed?.();
        return done(rule?.error ?? "EIO");
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

  /**
   * Linux after a failed fsync: the cached writes it covered are marked clean without reaching the
   * medium, so no later flush makes them durable; evicted, they no longer even read back.
   */
  private dropCache(covered: number): void {
    const kept: PendingWrite[] = [];
    for (const entry of this.cache) {
      if (entry.sequence > covered) {
        kept.push(entry);
        continue;
      }
      this.counters.dropped++;
      if (this.faults.flushFailureEvicts) this.visible.set(this.durable.subarray(entry.offset, entry.offset + entry.bytes.length), entry.offset);
    }
    if (this.cache.length !== kept.length) this.onDropped?.();
    this.cache = kept;
    // A newer cached write over an evicted range still reads back.
    if (this.faults.flushFailureEvicts) for (const entry of kept) this.visible.set(entry.bytes, entry.offset);
  }

  trim(offset: number, length: number, fua: boolean, done: IoCallback): void {
    this.submitWrite(offset, new Uint8Array(Math.max(0, length)), fua, done, true);
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
    const inFlight = [...this.inFlight].sort((a, b) => a.offset - b.offset).map((write) => ({ offset: write.offset, bytes: joinPayload(write.source).slice() }));
    const unresolved = [...this.cache, ...inFlight];
    for (const write of unresolved) {
      const roll = this.random.float();
      if (roll < this.faults.crashKeepProbability) this.durable.set(write.bytes, write.offset);
      else if (roll < this.faults.crashKeepProbability + (this.faults.crashTearProbability ?? (1 - this.faults.crashKeepProbability) / 2)) this.applyPartially(this.durable, write);
    }
    this.cache = [];
    this.inFlight.clear();
    this.visible = this.durable.slice();
  }

  /**
   * The process died (kill -9, an abort), the machine did not: the page cache keeps every write
   * that reached it, clean or dirty, so what reads back may differ from what is on the medium
   * (after a failed flush on Linux). A write in flight lands in the cache or not; nothing pending
   * completes.
   */
  kill(): void {
    this.incarnation++;
    for (const write of [...this.inFlight].sort((a, b) => a.offset - b.offset)) {
      if (!this.random.chance(0.5)) continue;
      const bytes = joinPayload(write.source).slice();
      this.visible.set(bytes, write.offset);
      this.cache.push({ offset: write.offset, bytes, sequence: ++this.completions });
    }
    this.inFlight.clear();
  }

  /** The node dies: a power loss (crash) or, with `kill`, its process only (kill). */
  die(kill: boolean): void {
    if (kill) this.kill();
    else this.crash();
  }

  /** Writes completed so far: a mark for `cachedOnlyHereDurableOn`. */
  get writesCompleted(): number {
    return this.completions;
  }

  /**
   * Whether some `unit`-sized block, written here by a cached write `which` selects (by its place
   * in `writesCompleted`), reads back here only from the cache (its bytes on the medium differ)
   * while `other` made those very bytes durable since its medium held `otherBefore`: a crash here
   * may lose what a copy elsewhere already made durable.
   */
  cachedOnlyHereCopiedTo(other: SimDisk, otherBefore: Uint8Array, unit: number, which: (sequence: number) => boolean): boolean {
    for (const entry of this.cache) {
      if (!which(entry.sequence)) continue;
      const first = Math.floor(entry.offset / unit);
      const last = Math.ceil((entry.offset + entry.bytes.length) / unit);
      for (let block = first; block < last; block++) {
        const start = block * unit;
        const end = Math.min(start + unit, this.visible.length);
        let volatile = false;
        let copied = true;
        let changed = false;
        for (let index = start; index < end && copied; index++) {
          const byte = this.visible[index]!;
          if (byte !== this.durable[index]) volatile = true;
          if (byte !== other.durable[index]) copied = false;
          if (byte !== otherBefore[index]) changed = true;
        }
        if (volatile && copied && changed) return true;
      }
    }
    return false;
  }

  /**
   * Silent corruption of a range on the medium (bit rot), for verify to find. A byte whose page is
   * dirty in the cache still reads back as written (the page is in memory), and the next flush
   * writes that page over the rot; elsewhere reads see the rot at once.
   */
  rot(offset: number, length: number): void {
    for (let index = offset; index < offset + length; index++) {
      this.durable[index] = this.durable[index]! ^ 0x5a;
      const cached = this.cache.some((entry) => entry.offset <= index && index < entry.offset + entry.bytes.length);
      if (!cached) this.visible[index] = this.visible[index]! ^ 0x5a;
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
