// What a volume core makes durable in its metadata area, and when: the superblock (generations,
// data state, clean flag, resync checkpoint, rewrites outstanding), dirty bitmap pages and
// activity-log transactions.
// Jobs run one at a time in order (each a write of its slots and a flush); consecutive jobs without
// an activity-log record merge, and everyone waiting on a job is a tagged waiter (model.ts) told
// when it is durable. Also here: starting a generation of our own before anything completes
// without the peer, and the activity-log transactions that make extents hot (evicting the least
// recently used only once every completed write is durable on both nodes).
import { formatGeneration, noGeneration, startAlone } from "../generations.ts";
import { activityLogWrite, bitmapPageWrite, type MetadataWrite, superblockWrite } from "../metadata-format.ts";
import type { ActivityLogPlan } from "../activity-log.ts";
import type { IoError } from "../types.ts";
import { replicaGenerationHistoryLength } from "../../constants.ts";
import type { Parts } from "./context.ts";
import type { AloneWaiter, ClientOp, Eviction, PendingIo, PersistJob, PersistWaiter } from "./model.ts";
import { DataState, type Generations } from "../model.ts";

interface GenerationStart {
  before: Generations;
  after: Generations;
  waiters: AloneWaiter[];
  /** A hello asked for while it is persisted, sent (with redecide when any asked) afterwards. */
  helloDeferred: boolean;
  redecide: boolean;
  /**
   * Its write failed, and may have reached the disk all the same: the superblock is being written
   * again with the generation we stayed on (`before`), so that no restart reads `after` back.
   */
  rollingBack?: { retryOnTick: boolean };
}

export class Persistence {
  private jobs: PersistJob[] = [];
  /** A metadata job is being written. */
  busy = false;
  /** A generation of our own is being persisted. */
  private starting: GenerationStart | undefined;
  /** An activity-log transaction is under way. */
  activityBusy = false;
  /** Extents an activity-log transaction in progress evicts: no write may start in them. */
  readonly evicting = new Set<number>();
  private lastWritebackTick = 0;

  constructor(private readonly v: Parts) {}

  // ---------------------------------------------------------------- jobs

  persist(what: { superblock: boolean; pages: boolean; activityLog?: PersistJob["activityLog"] }, waiter: PersistWaiter): void {
    const last = this.jobs[this.jobs.length - 1];
    if (last && !last.activityLog && !what.activityLog) {
      last.superblock ||= what.superblock;
      last.pages ||= what.pages;
      last.waiters.push(waiter);
    } else {
      this.jobs.push({ superblock: what.superblock, pages: what.pages, activityLog: what.activityLog, waiters: [waiter] });
    }
    this.run();
  }

  private run(): void {
    if (this.busy) return;
    const job = this.jobs.shift();
    if (!job) return;
    this.busy = true;
    const context = this.v.context;
    const writes: MetadataWrite[] = [];
    const pages = job.pages ? context.bitmap.takeDirtyPages() : [];
    for (const page of pages) writes.push(bitmapPageWrite(context.layout, context.bitmap, page));
    if (job.activityLog) writes.push(activityLogWrite(context.layout, { sequence: job.activityLog.sequence, extentBytes: context.activityLog.extentBytes, extents: job.activityLog.extents }));
    let superblockSequence: number | undefined;
    let commit: MetadataWrite | undefined;
    if (job.superblock) {
      superblockSequence = context.superblock.sequence + 1;
      const record = superblockWrite({ ...context.superblock, sequence: superblockSequence });
      // A superblock recording a resync names its work list: the bitmap pages written with it.
      // It goes last, once they are durable (the driver orders a commit after the writes), or a
      // power loss could keep the record and take the list: the pair would then continue "an
      // interrupted resync" that copies nothing. Other records go at once beside the pages (a new
      // generation, the rewrite flag: the sooner on the disk the better, and no page depends on them).
      if (context.superblock.resync.active && writes.length > 0) commit = record;
      else writes.push(record);
    }
    if (writes.length === 0) {
      this.busy = false;
      for (const waiter of job.waiters) this.notify(waiter, null);
      this.run();
      return;
    }
    context.issue({ kind: "metadataWrite", volumeId: context.volumeId, io: 0, writes, commit, flush: true }, { kind: "metadata", job, pages, superblockSequence });
  }

  metadataDone(pending: Extract<PendingIo, { kind: "metadata" }>, error: IoError | null): void {
    const context = this.v.context;
    this.busy = false;
    if (error) context.bitmap.markPagesDirty(pending.pages);
    if (pending.superblockSequence !== undefined) context.superblock.sequence = pending.superblockSequence; // a failed slot is skipped, never reused
    for (const waiter of pending.job.waiters) this.notify(waiter, error);
    this.run();
    this.v.lifecycle.tryFinish();
  }

  private notify(waiter: PersistWaiter, error: IoError | null): void {
    const v = this.v;
    switch (waiter.kind) {
      case "open":
        return v.lifecycle.persisted(error);
      case "writeback":
        return;
      case "generation":
        return this.generationPersisted(error);
      case "activityLog":
        return this.activityCommitted(waiter.plan, waiter.sequence, error);
      case "evictionPages":
        return error ? this.activityFailed(waiter.eviction.plan, error) : this.commitActivity(waiter.eviction.plan);
      case "inSync":
        return v.negotiation.inSyncPersisted(error);
      case "resyncStart":
        return v.resync.workListPersisted(waiter.round, error);
      case "resyncEnd":
        return v.resync.endPersisted(waiter.round, waiter.then, error);
      case "closePages":
        return v.lifecycle.pagesRecorded(error);
      case "close":
        return v.lifecycle.recorded(error);
      case "lostWrites":
        if (!error) v.negotiation.requestRedecide();
        return;
    }
  }

  /** See VolumeCore.nextActionTick: the rollback's retry, else the bitmap's writeback. */
  nextActionTick(now: number): number {
    if (this.starting?.rollingBack?.retryOnTick) return now + 1;
    const context = this.v.context;
    return context.bitmap.dirtyPages > 0 ? this.lastWritebackTick + context.config.bitmapWritebackIntervalTicks : Infinity;
  }

  tick(): void {
    const context = this.v.context;
    const now = context.now();
    const rollingBack = this.starting?.rollingBack;
    if (rollingBack?.retryOnTick) {
      rollingBack.retryOnTick = false;
      this.persist({ superblock: true, pages: false }, { kind: "generation" });
    }
    if (context.bitmap.dirtyPages > 0 && now - this.lastWritebackTick >= context.config.bitmapWritebackIntervalTicks) {
      this.lastWritebackTick = now;
      this.persist({ superblock: true, pages: true }, { kind: "writeback" });
    }
  }

  // ---------------------------------------------------------------- a generation of our own

  /** A new generation is being persisted (hellos wait for it: the peer learns it once it is on disk). */
  get generationPending(): boolean {
    return this.starting !== undefined;
  }

  /** Send a hello once the generation in progress is on disk. */
  deferHello(redecide: boolean): void {
    if (!this.starting) return;
    this.starting.helloDeferred = true;
    this.starting.redecide ||= redecide;
  }

  /** Make sure this node is on a generation of its own before it completes anything alone. */
  ensureAlone(waiter: AloneWaiter): void {
    const context = this.v.context;
    // A generation being persisted is already in memory: wait for the disk, never answer early.
    if (this.starting) {
      this.starting.waiters.push(waiter);
      return;
    }
    if (context.generations.bitmapBase !== noGeneration) return this.aloneDone(waiter, null);
    if (context.dataState !== DataState.Consistent) return this.aloneDone(waiter, "EIO"); // only complete data may go on alone
    const before = context.superblock.generations;
    const after = startAlone(before, context.host.randomId(), replicaGenerationHistoryLength);
    this.starting = { before, after, waiters: [waiter], helloDeferred: false, redecide: false };
    context.superblock.generations = after;
    this.persist({ superblock: true, pages: false }, { kind: "generation" });
  }

  private generationPersisted(error: IoError | null): void {
    const starting = this.starting!;
    const context = this.v.context;
    if (error) {
      // A failed write may still have reached its slot, and a restart would read `after` back: a
      // generation of our own that nothing was written in, which a peer that wrote alone since
      // would meet as a split brain. Until the superblock is written again with `before` (a newer
      // sequence wins on load), the generation stays pending: hellos wait, and so do writes that
      // need a generation of our own (they start one afresh afterwards). A rollback that fails is
      // retried on the next tick, not at once, so a dead metadata disk does not spin.
      const first = starting.rollingBack === undefined;
      if (first) {
        context.superblock.generations = starting.before;
        context.report({ kind: "ioError", volumeId: context.volumeId, what: "recording a generation of our own (writing the previous one back)", error });
      }
      const failed = starting.waiters;
      this.starting = { ...starting, waiters: [], rollingBack: { retryOnTick: !first } };
      if (first) this.persist({ superblock: true, pages: false }, { kind: "generation" });
      for (const waiter of failed) this.aloneDone(waiter, error);
      return;
    }
    this.starting = undefined;
    if (!starting.rollingBack) context.report({ kind: "generationStarted", volumeId: context.volumeId, current: formatGeneration(starting.after.current), base: formatGeneration(starting.after.bitmapBase) });
    const negotiation = this.v.negotiation;
    if (negotiation.linkUp && this.v.lifecycle.isOpened) negotiation.sendHello(starting.redecide); // our generation changed
    negotiation.maybeDecide();
    if (!starting.rollingBack) for (const waiter of starting.waiters) this.aloneDone(waiter, null);
    else for (const waiter of starting.waiters) this.ensureAlone(waiter); // they asked while the old generation went back on disk
  }

  /** Writes done here that wait for the generation of our own before they complete alone. */
  writesWaitingToCompleteAlone(): ClientOp[] {
    const ops: ClientOp[] = [];
    for (const waiter of this.starting?.waiters ?? []) if (waiter.kind === "write") ops.push(waiter.op);
    return ops;
  }

  private aloneDone(waiter: AloneWaiter, error: IoError | null): void {
    const writes = this.v.writes;
    switch (waiter.kind) {
      case "admit":
        if (error) writes.failQueuedWrites("could not record the new generation this node needs to write alone");
        return writes.pump();
      case "write":
        if (error) writes.completeClient(waiter.op, "EIO", "could not record the new generation");
        else if (waiter.op.localError) writes.completeClient(waiter.op, waiter.op.localError, "a local flush failed and may have dropped this write");
        else writes.completeClient(waiter.op, null, undefined, false);
        return writes.pump();
      case "flush":
        return writes.completeClient(waiter.op, error ? "EIO" : null, error ? "could not record the new generation" : undefined, false);
    }
  }

  // ---------------------------------------------------------------- activity log

  touchesEvicting(start: number, end: number): boolean {
    if (this.evicting.size === 0) return false;
    const extentBytes = this.v.context.activityLog.extentBytes;
    const first = Math.floor(start / extentBytes);
    const last = Math.floor((end - 1) / extentBytes);
    for (let extent = first; extent <= last; extent++) if (this.evicting.has(extent)) return true;
    return false;
  }

  activityTransaction(wanted: number[], protect: Set<number>): void {
    if (this.activityBusy) return;
    if (wanted.some((extent) => this.evicting.has(extent))) return; // after the eviction in progress
    const context = this.v.context;
    const plan = context.activityLog.plan(wanted, protect);
    if (!plan || (plan.add.length === 0 && plan.evict.length === 0)) return;
    this.activityBusy = true;
    for (const extent of plan.evict) this.evicting.add(extent);
    if (plan.evict.length === 0) return this.commitActivity(plan);
    // Eviction: every write completed so far must be durable on both nodes, and the bitmap bits of
    // writes made alone must be on disk, before the log stops covering the evicted extents.
    const eviction: Eviction = { plan, pending: 1, failed: null };
    const writes = this.v.writes;
    if (this.v.negotiation.mirroring() && (writes.transferLog.size > 0 || writes.barriersPending())) {
      eviction.pending++;
      writes.barrier({ kind: "eviction", eviction });
    }
    this.v.writes.flushLocal({ kind: "evictionFlush", eviction });
  }

  /** One of the flushes an eviction waits for is done. */
  evictionStep(eviction: Eviction, error: IoError | null): void {
    if (error) eviction.failed = error;
    if (--eviction.pending > 0) return;
    if (eviction.failed) return this.activityFailed(eviction.plan, eviction.failed);
    this.persist({ superblock: false, pages: true }, { kind: "evictionPages", eviction });
  }

  private commitActivity(plan: ActivityLogPlan): void {
    const activityLog = this.v.context.activityLog;
    const sequence = activityLog.sequence + 1;
    this.persist({ superblock: false, pages: false, activityLog: { plan, extents: activityLog.after(plan), sequence } }, { kind: "activityLog", plan, sequence });
  }

  private activityCommitted(plan: ActivityLogPlan, sequence: number, error: IoError | null): void {
    if (error) {
      this.v.context.activityLog.failed(plan, sequence);
      return this.activityFailed(plan, error);
    }
    this.v.context.activityLog.commit(plan, sequence);
    for (const extent of plan.evict) this.evicting.delete(extent);
    this.activityBusy = false;
    this.v.writes.pump();
    this.v.lifecycle.tryFinish();
  }

  private activityFailed(plan: ActivityLogPlan, error: IoError): void {
    const context = this.v.context;
    for (const extent of plan.evict) this.evicting.delete(extent);
    this.activityBusy = false;
    context.report({ kind: "ioError", volumeId: context.volumeId, what: "activity-log transaction", error });
    // Writes waiting for these extents fail rather than wait for a disk that refuses metadata.
    this.v.writes.failWritesWaitingForActivity();
    this.v.lifecycle.tryFinish();
  }
}
