// The protocol-C data path of one volume (DESIGN.md §3). Client requests and the peer's writes wait
// in one queue, in arrival order; an operation starts when no earlier overlapping one is pending
// (range locks order overlapping IO the same way on both nodes), when its activity-log extents are
// hot, and — writing without the peer — once this node is on a generation of its own. A mirrored
// write goes to local storage and to the peer at once and completes when both have; writes the
// peer acknowledged but has not flushed stay in the transfer log until a barrier (a flush of the
// peer) covers them, so a peer crash marks exactly them dirty. Reads come from the local replica
// when it is up to date there, else from the peer.
import { assert } from "../../common/assert.ts";
import { copyOfPayload, copyPayload } from "../../common/bytes.ts";
import { noGeneration } from "../generations.ts";
import type { IoError } from "../types.ts";
import { type Message, MessageType, WireStatus } from "../wire.ts";
import type { Parts } from "./context.ts";
import type { BarrierPurpose, ClientFields, ClientOp, OpKind, PeerOp, PendingIo, PendingRequest, QueuedOp } from "./model.ts";
import { DataState } from "../model.ts";

export function errorToStatus(error: IoError | null): WireStatus {
  if (error === null) return WireStatus.Ok;
  return error === "ENOSPC" ? WireStatus.NoSpace : WireStatus.IoError;
}

type StartOutcome = "started" | "done" | "wait" | "activity" | "frozen";

export class WritePath {
  queue: QueuedOp[] = [];
  readonly running = new Set<ClientOp>();
  /** Writes from the peer not yet acknowledged, by the peer's request id. */
  readonly incoming = new Map<number, PeerOp>();
  /** Granules of writes the peer acknowledged but has not confirmed durable. */
  transferLog = new Set<number>();
  private lastBarrierTick = 0;
  /** Granules this node wrote (not FUA) since the last local flush began. */
  private localUnflushed = new Set<number>();
  /** Local flushes in flight and the granules each covers. */
  private readonly localFlushes = new Map<PendingIo, Set<number>>();
  /** Local flushes that were in flight when another one failed: they finish as failed (localFlushDone). */
  private readonly overlappedFailure = new Map<PendingIo, IoError>();
  /**
   * Granules a failed flush dropped on this node while it was a secondary: its reads there return
   * older data than it acknowledged, until the next resync round (the primary's copy wins).
   */
  private readonly droppedOnSecondary = new Set<number>();
  /**
   * A local flush failed and may have dropped acknowledged writes: the next client FLUSH reports
   * it (EIO), as Linux reports a writeback error once — a later flush that succeeds must not
   * vouch for writes an earlier one lost.
   */
  private flushErrorToReport = false;
  /**
   * Granules a failed flush may have dropped while no other replica held them: each is read back
   * and written again, so that what reads return here becomes durable by a later flush.
   */
  private rewrites: number[] = [];
  private rewriting = false;
  /**
   * Raised whenever a failed local flush may have dropped regions (flushLost). A local read in
   * flight across one may return what the flush evicted, older than what this node acknowledged:
   * it is read again by the rules in force after it (clientReadDone, NodeCore.localDrops).
   */
  drops = 0;
  /** Rewrites whose read or write failed: queued again on the next tick (not while closing). */
  private rewritesToRetry: number[] = [];
  /**
   * Raised whenever regions are queued to be written again: a local flush that began with none
   * outstanding and the same count, and succeeded, made them durable (the superblock's flag goes).
   */
  private rewriteRound = 0;
  private readonly flushRewriteRound = new Map<PendingIo, number>();
  /** Waiting until no rewrite is outstanding (a resync source's flush before it sends anything). */
  private afterRewrites: (() => void)[] = [];
  /**
   * Writes and flushes the peer never acknowledged because the link was lost, held (not answered)
   * while the write grant is frozen (config.freezeOnLinkLoss): the quorum decides whether this node
   * goes on alone (they complete as written here only) or lost (they fail). Never acknowledged
   * before that, so a node that loses the lease acknowledged nothing the winner lacks.
   */
  private heldForGrant: ClientOp[] = [];

  constructor(private readonly v: Parts) {}

  // ---------------------------------------------------------------- admission

  clientRequest(kind: OpKind, request: number, offset: number, length: number, fields: ClientFields): void {
    const context = this.v.context;
    if (this.v.lifecycle.refusesRequests) {
      context.emit({ kind: "complete", request, error: "ESHUTDOWN", message: "volume is closing" });
      return;
    }
    if (kind !== "flush" && !this.inVolume(offset, length)) {
      context.emit({ kind: "complete", request, error: "EINVAL", message: `range ${offset}+${length} is outside the volume` });
      return;
    }
    if (this.queue.length >= context.config.queuedOperationsMax) {
      context.emit({ kind: "complete", request, error: "EIO", message: "too many queued operations on this volume" });
      return;
    }
    // TRIM is advisory on some backings (a device without discard, a filesystem that cannot punch
    // holes keeps the data), so a trim replicated as such could leave the replicas different. It is
    // done as a zero that may punch holes: the same bytes on both sides, space freed where it can be.
    const trim = kind === "trim";
    this.queue.push({
      source: "client",
      kind: trim ? "zero" : kind,
      request,
      offset,
      length,
      // One copy at admission: a guest may change its buffer while the write is in flight (virtio
      // has no stable pages), and the local disk and the peer read it at different times. From
      // here on both take their bytes from this copy, which nothing changes. A caller whose
      // buffer is stable (never changed nor reused: the NBD server's) hands over the buffer itself.
      // A copy by construction, not slice(): a Buffer's slice is a view of the same bytes.
      data: context.config.bugs.shareClientBuffer || fields.stable === true || fields.data === undefined ? fields.data : copyOfPayload(fields.data),
      target: fields.target,
      fua: fields.fua === true,
      noHole: !trim && fields.noHole === true,
      localDone: false,
      localError: fields.localError ?? null,
      peerPending: false,
      peerError: false,
      mirrored: false,
      peerLost: false,
      rangeId: 0,
      activityHeld: false,
      completed: false,
      epoch: undefined,
    });
    this.pump();
  }

  /** Whether the local replica holds good data for [offset, offset+length). */
  localValid(offset: number, length: number): boolean {
    const context = this.v.context;
    if (context.dataState === DataState.New) return false;
    const round = this.v.resync.round;
    const targetHere = context.dataState === DataState.Inconsistent || (round !== undefined && !round.localIsSource);
    if (!targetHere) {
      // A secondary whose failed flush dropped writes it had acknowledged reads older data there
      // until a resync from the primary copies them back: it does not serve those regions.
      if (context.mayWrite || this.droppedOnSecondary.size === 0) return true;
      const { first, last } = context.granules(offset, length);
      for (let granule = first; granule < last; granule++) if (this.droppedOnSecondary.has(granule)) return false;
      return true;
    }
    if (round && round.stage.kind === "exchange") return false;
    const { first, last } = context.granules(offset, length);
    return !context.bitmap.anySet(first, last);
  }

  /**
   * Whether a client read of [offset, offset+length) would be served from the local replica at once
   * if it arrived now: the volume serves, its grant is not frozen (a frozen grant holds every
   * request, reads too), this node is the primary or a replicating secondary, and its data is valid
   * for the range (startRead's conditions). Reads wait for nothing else in the queue, so the driver
   * then reads the local storage itself, without a request through the core (a pure query: nothing
   * changes). A range outside the volume says false: the core's path answers it with EINVAL.
   */
  readsLocally(offset: number, length: number): boolean {
    const context = this.v.context;
    if (!this.v.lifecycle.serving || this.v.lifecycle.refusesRequests || context.grant.kind === "frozen") return false;
    return this.inVolume(offset, length) && this.servesReads() && this.localValid(offset, length);
  }

  /** [offset, offset+length) is a non-empty range inside the volume. */
  private inVolume(offset: number, length: number): boolean {
    return Number.isSafeInteger(offset) && Number.isSafeInteger(length) && offset >= 0 && length > 0 && offset + length <= this.v.context.sizeBytes;
  }

  /** This node may answer reads: the primary, or a secondary replicating (one that is not cannot know what it missed). */
  private servesReads(): boolean {
    const negotiation = this.v.negotiation;
    return this.v.context.mayWrite || (negotiation.linkUp && negotiation.phase.kind === "replicating");
  }

  /** Start what can start, in order; overlapping operations keep their arrival order. */
  pump(): void {
    if (!this.v.lifecycle.serving) return;
    // Most calls find the queue empty (a write finishing, an answer sent): nothing to walk.
    if (this.queue.length > 0) this.startQueued();
    this.pumpRewrites();
    this.v.lifecycle.tryFinish();
  }

  private startQueued(): void {
    const activityLog = this.v.context.activityLog;
    const blocked: { start: number; end: number }[] = [];
    const overlapsBlocked = (start: number, end: number) => blocked.some((range) => range.start < end && start < range.end);
    const remaining: QueuedOp[] = [];
    // Writes waiting for cold extents, in order: one activity-log transaction serves as many as fit.
    const activityWanted: number[] = [];
    const activityProtected = new Set<number>();
    let activityFull = false;
    let frozen = false;
    for (const op of this.queue) {
      const start = op.offset;
      const end = op.offset + op.length;
      if (op.source === "peer") {
        if (op.linkEpoch !== this.v.negotiation.linkEpoch) continue; // the link it came on is gone
        if (overlapsBlocked(start, end) || this.v.context.ranges.conflicts(start, end)) {
          blocked.push({ start, end });
          remaining.push(op);
          continue;
        }
        this.startPeerOp(op);
        continue;
      }
      if (frozen || op.completed) {
        if (!op.completed) remaining.push(op);
        continue;
      }
      const outcome = this.tryStartClient(op, overlapsBlocked);
      if (outcome === "started" || outcome === "done") continue;
      remaining.push(op);
      if (op.kind !== "read" && op.kind !== "flush") blocked.push({ start, end });
      if (outcome === "frozen") frozen = true;
      if (outcome === "activity" && !activityFull) {
        const { first, last } = activityLog.extentRange(op.offset, op.length);
        const extents: number[] = [];
        for (let extent = first; extent <= last; extent++) extents.push(extent);
        const evicting = this.v.persistence.evicting;
        const union = new Set([...activityWanted, ...extents.filter((extent) => activityLog.missing(extent * activityLog.extentBytes, 1).length > 0 || evicting.has(extent))]);
        // After the transaction, every extent of every write it serves must be hot at once: the
        // protected set (which includes the wanted extents) is what has to fit, not the wanted ones
        // plus a partial count. The first write always goes in (it fits alone, extents ≤ capacity).
        const protectedAfter = new Set([...activityProtected, ...extents]);
        if (protectedAfter.size > this.v.context.config.activityLogExtentsMax && activityWanted.length > 0) activityFull = true;
        else {
          activityWanted.splice(0, activityWanted.length, ...union);
          for (const extent of extents) activityProtected.add(extent);
        }
      }
    }
    this.queue = remaining;
    if (activityWanted.length > 0) this.v.persistence.activityTransaction(activityWanted, activityProtected);
  }

  private tryStartClient(op: ClientOp, overlapsBlocked: (start: number, end: number) => boolean): StartOutcome {
    const context = this.v.context;
    const grant = context.grant;
    if (grant.kind === "frozen") return "frozen";
    if (op.kind === "read") return this.startRead(op);
    if (op.kind === "flush") return this.startFlush(op);
    // Writes, trims, zeroes.
    if (grant.kind !== "write") {
      this.completeClient(op, "EPERM", `this node is not the volume's primary (${grant.reason})`);
      return "done";
    }
    const negotiation = this.v.negotiation;
    const mirror = negotiation.mirroring();
    if (!mirror && !negotiation.aloneAllowed()) return "wait"; // negotiating, or the peer still holds the grant
    if (!mirror) {
      if (context.dataState !== DataState.Consistent) {
        this.completeClient(op, "EIO", context.dataState === DataState.New ? "this replica was never synchronised and the peer is away" : "this replica is mid-resync and the peer holding the good data is away");
        return "done";
      }
      if (context.generations.bitmapBase === noGeneration) {
        this.v.persistence.ensureAlone({ kind: "admit" });
        return "wait";
      }
    }
    const start = op.offset;
    const end = op.offset + op.length;
    if (overlapsBlocked(start, end) || context.ranges.conflicts(start, end)) return "wait";
    if (this.running.size >= context.config.writesInFlightMax) return "wait";
    if (context.activityLog.missing(start, op.length).length > 0 || this.v.persistence.touchesEvicting(start, end)) return "activity";
    this.startWrite(op, mirror, grant.epoch);
    return "started";
  }

  /**
   * A request that would complete without the peer, under the quorum (config.freezeOnLinkLoss):
   * held while the grant is frozen, failed when this node may no longer write. True: handled here.
   */
  private holdForGrant(op: ClientOp): boolean {
    const context = this.v.context;
    if (!context.config.freezeOnLinkLoss || context.grant.kind === "write") return false;
    if (context.grant.kind === "frozen") this.heldForGrant.push(op);
    else this.completeClient(op, "EIO", `the link to the peer was lost before it acknowledged this ${op.kind}, and this node may no longer write (${context.grant.reason})`);
    return true;
  }

  /** The grant changed: held requests complete alone (write grant) or fail (this node lost it). */
  grantChanged(): void {
    if (this.v.context.grant.kind === "frozen") return;
    for (const op of this.heldForGrant.splice(0)) {
      if (op.kind === "flush") this.finishFlush(op);
      else this.completeAlone(op);
    }
  }

  /** Fail every queued client request (the volume is closing). */
  failQueuedClientOps(error: IoError, message: string): void {
    for (const op of this.heldForGrant.splice(0)) this.completeClient(op, error, message);
    for (const op of this.queue) if (op.source === "client") this.completeClient(op, error, message);
    this.queue = this.queue.filter((op) => op.source === "peer");
  }

  /** Fail the queued writes (a generation of our own could not be recorded). */
  failQueuedWrites(message: string): void {
    for (const op of this.queue) if (op.source === "client" && op.kind !== "read" && op.kind !== "flush") this.completeClient(op, "EIO", message);
    this.queue = this.queue.filter((op) => op.source === "peer" || !op.completed);
  }

  /** Fail the queued writes that wait for activity-log extents (the log cannot be written). */
  failWritesWaitingForActivity(): void {
    const activityLog = this.v.context.activityLog;
    for (const op of this.queue) {
      if (op.source === "client" && op.kind !== "read" && op.kind !== "flush" && (activityLog.missing(op.offset, op.length).length > 0 || this.v.persistence.touchesEvicting(op.offset, op.offset + op.length))) {
        this.completeClient(op, "EIO", "could not record the activity log");
      }
    }
    this.queue = this.queue.filter((op) => op.source === "peer" || !op.completed);
  }

  // ---------------------------------------------------------------- writes

  private startWrite(op: ClientOp, mirror: boolean, epoch: number): void {
    const context = this.v.context;
    assert(!context.ranges.conflicts(op.offset, op.offset + op.length), "a write's range is free when it starts");
    op.epoch = epoch;
    op.rangeId = context.ranges.hold(op.offset, op.offset + op.length, "client");
    context.activityLog.acquire(op.offset, op.length);
    op.activityHeld = true;
    this.running.add(op);
    if (mirror) {
      // The peer's half goes out before the local half starts: the driver performs actions in
      // order, so the peer's decode, write and answer run while this node writes its own copy
      // (CPU, or a disk's latency), instead of after it.
      op.mirrored = true;
      op.peerPending = true;
      // A resync target that writes (a primary whose own data is incomplete) cannot take back from the
      // peer a write the peer lost in a crash: a resync would copy the peer's older data over it. So
      // the peer makes each such write durable before it answers.
      const peerFua = op.fua || context.dataState !== DataState.Consistent;
      const request: PendingRequest = { kind: "write", requestId: context.requestId(), op, peerFua };
      context.expect(request);
      context.send(this.requestMessage(request));
    }
    const volumeId = context.volumeId;
    const pending: PendingIo = { kind: "clientWrite", op };
    if (op.kind === "write") context.issue({ kind: "storageWrite", volumeId, io: 0, offset: op.offset, data: op.data!, fua: op.fua }, pending);
    else if (op.kind === "trim") context.issue({ kind: "storageTrim", volumeId, io: 0, offset: op.offset, length: op.length, fua: op.fua }, pending);
    else context.issue({ kind: "storageZero", volumeId, io: 0, offset: op.offset, length: op.length, fua: op.fua, noHole: op.noHole }, pending);
    if (!mirror) this.markDirty(op.offset, op.length);
  }

  /** The local part of a client write is done. */
  clientWriteDone(op: ClientOp, error: IoError | null): void {
    op.localDone = true;
    op.localError = error;
    // A failed write may have left some of its bytes in the page cache, like any write: only a
    // flush that succeeds after it vouches for the region (FUA or not).
    if (error || !op.fua) this.wroteLocally(op.offset, op.length);
    this.finishWrite(op);
  }

  // ---------------------------------------------------------------- local flushes (Linux semantics)

  /** A local write completed: it is durable only once a flush that began after it succeeds. */
  wroteLocally(offset: number, length: number): void {
    const { first, last } = this.v.context.granules(offset, length);
    for (let granule = first; granule < last; granule++) this.localUnflushed.add(granule);
    if (this.localUnflushed.size >= this.v.context.config.transferLogGranulesMax) this.flushLocal({ kind: "backgroundFlush" });
  }

  /** Flush this node's storage; the record says who waits for it. */
  flushLocal(pending: PendingIo): void {
    const context = this.v.context;
    this.localFlushes.set(pending, this.localUnflushed);
    this.localUnflushed = new Set();
    if (!this.rewritesOutstanding) this.flushRewriteRound.set(pending, this.rewriteRound);
    context.issue({ kind: "storageFlush", volumeId: context.volumeId, io: 0 }, pending);
  }

  /**
   * A local flush finished. On Linux a failed flush may drop the writes it covered from the page
   * cache (marked clean, never written) and a later flush succeeds without them: every region
   * written since the last good flush may hold old data now. With the peer holding them (mirrored,
   * complete data there) this replica becomes a resync target for those regions, so they come back
   * from the peer; reads of them go to the peer meanwhile. Alone, nothing has them: say so.
   */
  localFlushDone(pending: PendingIo, reported: IoError | null): IoError | null {
    const covered = this.localFlushes.get(pending);
    if (covered === undefined) return reported;
    this.localFlushes.delete(pending);
    const rewriteRound = this.flushRewriteRound.get(pending);
    this.flushRewriteRound.delete(pending);
    const overlapped = this.overlappedFailure.get(pending);
    this.overlappedFailure.delete(pending);
    // A flush in flight when another failed: its regions are marked already (below), and its own
    // success proves nothing (on one file a writeback error is reported to one fsync only).
    if (overlapped !== undefined) return reported ?? overlapped;
    if (!reported) {
      if (rewriteRound === this.rewriteRound && !this.rewritesOutstanding) this.rewritesDurable();
      return null;
    }
    const error = reported;
    const lost = new Set([...covered, ...this.localUnflushed]);
    // The failed flush covered every write made before it started, those of the flushes still in
    // flight among them (Linux drops them all); those flushes count as failed when they finish.
    for (const [other, otherCovered] of this.localFlushes) {
      for (const granule of otherCovered) lost.add(granule);
      this.overlappedFailure.set(other, error);
    }
    if (lost.size > 0) this.flushLost(lost, error);
    return error;
  }

  /** What a failed local flush may have dropped (localFlushDone): tell waiting writes, mark, take back or write again. */
  private flushLost(lost: Set<number>, error: IoError): void {
    const context = this.v.context;
    this.drops++;
    if (!context.mayWrite) for (const granule of lost) this.droppedOnSecondary.add(granule);
    this.localUnflushed = new Set();
    this.flushErrorToReport = true;
    this.markGranulesDirty(lost);
    // Writes whose local part was among the dropped and that are not answered yet — waiting for the
    // peer, held for the write grant, or waiting to complete alone once a generation of our own is
    // recorded: their client is told they failed (never that they succeeded with the local copy gone).
    for (const op of [...this.running, ...this.heldForGrant, ...this.v.persistence.writesWaitingToCompleteAlone()]) {
      if (!op.localDone || op.localError) continue;
      const { first, last } = context.granules(op.offset, op.length);
      for (let granule = first; granule < last; granule++) {
        if (lost.has(granule)) {
          op.localError = error;
          break;
        }
      }
    }
    const negotiation = this.v.negotiation;
    // The peer holds them when we replicate with it and its data is complete (not while it is the
    // target of a resync from here: then nothing else has them). Only the primary takes them back
    // (it becomes a target for them); a secondary's marks join the next resync from the primary.
    // So the two never both turn inconsistent when both lose the same writes.
    const round = this.v.resync.round;
    const peerHas = context.mayWrite && negotiation.linkUp && negotiation.phase.kind === "replicating" && negotiation.peerHello?.dataState === DataState.Consistent && (round === undefined || !round.localIsSource);
    context.report({ kind: "ioError", volumeId: context.volumeId, what: `a local flush failed: ${lost.size} regions written since the last good flush may be lost here${peerHas ? ", and are taken back from the peer" : ""}`, error });
    if (!peerHas || context.dataState !== DataState.Consistent) {
      // Nothing else holds them: the pages may still read back here but will never reach the
      // disk by themselves. Write them again (a target's regions come back from its source).
      if (context.dataState === DataState.Consistent) this.queueRewrites([...lost].sort((x, y) => x - y));
      this.pumpRewrites();
      return negotiation.requestRedecide();
    }
    context.superblock.dataState = DataState.Inconsistent;
    this.v.persistence.persist({ superblock: true, pages: true }, { kind: "lostWrites" });
  }

  /** Rewrites are pending or running (a close waits for them). */
  get rewritesPending(): boolean {
    return this.rewriting || this.rewrites.length > 0;
  }

  /** Rewrites are pending, running or waiting to be tried again. */
  private get rewritesOutstanding(): boolean {
    return this.rewritesPending || this.rewritesToRetry.length > 0;
  }

  /**
   * Queue granules to be read back and written again, and record in the superblock that some are
   * (with the bitmap that marks them): a daemon that dies before they are durable leaves pages the
   * disk does not hold in the page cache, and its next open writes its dirty regions again.
   */
  private queueRewrites(granules: number[]): void {
    const context = this.v.context;
    this.rewrites.push(...granules);
    this.rewriteRound++;
    if (context.superblock.rewritePending) return;
    context.superblock.rewritePending = true;
    this.v.persistence.persist({ superblock: true, pages: true }, { kind: "writeback" });
  }

  /** A flush after every rewrite succeeded: nothing is left that only the page cache holds. */
  private rewritesDurable(): void {
    const context = this.v.context;
    if (!context.superblock.rewritePending) return;
    context.superblock.rewritePending = false;
    this.v.persistence.persist({ superblock: true, pages: false }, { kind: "writeback" });
  }

  /**
   * At open, when the superblock says a failed flush's rewrites were outstanding at the last stop:
   * write every dirty region again (the regions it dropped are among them). A replica that is
   * not complete takes its dirty regions from its source instead.
   */
  rewriteAfterRestart(): void {
    const context = this.v.context;
    if (!context.superblock.rewritePending || context.dataState !== DataState.Consistent) return;
    const granules: number[] = [];
    for (const run of context.bitmap.runs()) for (let granule = run.start; granule < run.start + run.length; granule++) granules.push(granule);
    context.report({ kind: "notice", volumeId: context.volumeId, message: `a failed flush left regions to write again at the last stop: writing the ${granules.length} dirty regions again` });
    this.queueRewrites(granules);
    this.pumpRewrites();
  }

  /** Run `then` once no rewrite is outstanding. */
  whenRewritten(then: () => void): void {
    if (!this.rewritesOutstanding) return then();
    this.afterRewrites.push(then);
  }

  private retryRewrite(offset: number): void {
    this.rewritesToRetry.push(Math.floor(offset / this.v.context.granuleBytes));
  }

  private pumpRewrites(): void {
    const context = this.v.context;
    // pump() calls this on every completion: the cheap test first.
    if (this.afterRewrites.length > 0 && !this.rewritesOutstanding) {
      const waiting = this.afterRewrites;
      this.afterRewrites = [];
      for (const then of waiting) then();
    }
    if (this.rewriting || this.rewrites.length === 0 || !this.v.lifecycle.serving) return;
    const granule = this.rewrites[0]!;
    const offset = granule * context.granuleBytes;
    const length = Math.min(context.granuleBytes, context.sizeBytes - offset);
    if (context.ranges.conflicts(offset, offset + length)) return; // after the IO there
    this.rewrites.shift();
    this.rewriting = true;
    const data = new Uint8Array(length);
    const rangeId = context.ranges.hold(offset, offset + length, "rewrite");
    context.issue({ kind: "storageRead", volumeId: context.volumeId, io: 0, offset, target: data }, { kind: "rewriteRead", offset, data, rangeId });
  }

  rewriteRead(pending: Extract<PendingIo, { kind: "rewriteRead" }>, error: IoError | null): void {
    const context = this.v.context;
    if (error) {
      context.report({ kind: "ioError", volumeId: context.volumeId, what: `reading back a region a failed flush may have dropped, at ${pending.offset} (tried again)`, error });
      context.ranges.release(pending.rangeId);
      this.rewriting = false;
      this.retryRewrite(pending.offset);
      return this.pump();
    }
    context.issue({ kind: "storageWrite", volumeId: context.volumeId, io: 0, offset: pending.offset, data: pending.data, fua: false }, { kind: "rewriteWrite", offset: pending.offset, length: pending.data.length, rangeId: pending.rangeId });
  }

  rewritten(pending: Extract<PendingIo, { kind: "rewriteWrite" }>, error: IoError | null): void {
    const context = this.v.context;
    context.ranges.release(pending.rangeId);
    this.rewriting = false;
    this.wroteLocally(pending.offset, pending.length); // failed, it may have reached the cache in part
    if (error) {
      context.report({ kind: "ioError", volumeId: context.volumeId, what: `writing again a region a failed flush may have dropped, at ${pending.offset} (tried again)`, error });
      this.retryRewrite(pending.offset);
    }
    this.pump();
  }

  /**
   * The peer's flush failed: on Linux it may have dropped everything it had not yet made durable,
   * and its next flush succeeds without it. Every write it acknowledged since its last good flush —
   * the transfer log and what barriers in flight cover — is dirty now.
   */
  peerFlushFailed(covered: Set<number>): void {
    this.markGranulesDirty(covered);
    this.markTransferLogDirty();
    this.v.negotiation.requestRedecide();
  }

  finishWrite(op: ClientOp): void {
    if (op.completed) return;
    const context = this.v.context;
    if (context.config.bugs.ackBeforePeer && op.localDone && op.peerPending && !op.localError) {
      // Deliberately wrong (simulator bug switch): acknowledge before the peer has the data.
      op.completed = true;
      context.emit({ kind: "complete", request: op.request, error: null, mirrored: true, epoch: op.epoch });
      this.running.delete(op);
      this.releaseWrite(op);
      return;
    }
    if (!op.localDone || op.peerPending) return;
    assert(this.running.has(op), "a write is running when it finishes");
    this.running.delete(op);
    this.releaseWrite(op);
    if (op.localError || op.peerError) {
      // The replicas may differ in this range now: the client gets the error, the region is
      // marked and a resync from the primary repairs it.
      this.markDirty(op.offset, op.length);
      if (op.mirrored && !op.peerLost) this.v.negotiation.requestRedecide();
      this.completeClient(op, op.localError ?? "EIO", op.localError ? "local write failed" : "the peer failed to write");
      this.pump();
      return;
    }
    if (op.peerLost || !op.mirrored) return this.completeAlone(op);
    this.completeClient(op, null, undefined, true);
    this.pump();
  }

  /** A finished write the peer does not have: it completes on this node alone (or waits for the grant). */
  private completeAlone(op: ClientOp): void {
    if (this.holdForGrant(op)) return;
    const context = this.v.context;
    if (context.dataState !== DataState.Consistent) {
      // A resync target cannot vouch for data alone: the peer's copy of this region wins later.
      this.completeClient(op, "EIO", "the link to the peer holding the good data was lost before the write reached it");
      this.pump();
      return;
    }
    // Completing without the peer: this node now holds data the peer lacks.
    assert(this.isMarked(op.offset, op.length), "a write made without the peer is in the dirty bitmap before it completes");
    this.v.persistence.ensureAlone({ kind: "write", op });
  }

  private isMarked(offset: number, length: number): boolean {
    const { first, last } = this.v.context.granules(offset, length);
    for (let bit = first; bit < last; bit++) if (!this.v.context.bitmap.test(bit)) return false;
    return true;
  }

  private releaseWrite(op: ClientOp): void {
    if (op.rangeId !== 0) {
      this.v.context.ranges.release(op.rangeId);
      op.rangeId = 0;
    }
    if (op.activityHeld) {
      this.v.context.activityLog.release(op.offset, op.length);
      op.activityHeld = false;
    }
  }

  completeClient(op: ClientOp, error: IoError | null, message?: string, mirrored?: boolean): void {
    if (op.completed) return;
    op.completed = true;
    this.v.context.emit({ kind: "complete", request: op.request, error, message, mirrored, epoch: op.epoch });
  }

  // ---------------------------------------------------------------- reads

  private startRead(op: ClientOp): "started" | "done" | "wait" {
    const negotiation = this.v.negotiation;
    const phase = negotiation.phase.kind;
    if (!this.servesReads()) {
      // A secondary that is not replicating cannot know what it missed: never serve stale data.
      if (negotiation.linkUp && phase === "negotiating") return "wait";
      this.completeClient(op, "EIO", "this node is not the primary and is not in sync with it: its data may be stale");
      return "done";
    }
    // The driver read the local replica already and it failed: as if this node's read had.
    if (op.localError) {
      this.clientReadDone(op, op.localError);
      return "started";
    }
    if (this.localValid(op.offset, op.length)) {
      this.readLocally(op);
      return "started";
    }
    if (negotiation.peerCanServe()) {
      this.remoteRead(op);
      return "started";
    }
    if (negotiation.linkUp && (phase === "negotiating" || this.v.resync.round?.stage.kind === "exchange")) return "wait";
    this.completeClient(op, "EIO", "this replica does not hold current data for the range and the peer cannot serve it");
    return "done";
  }

  private readLocally(op: ClientOp): void {
    const context = this.v.context;
    op.readDrops = this.drops;
    context.issue({ kind: "storageRead", volumeId: context.volumeId, io: 0, offset: op.offset, target: op.target! }, { kind: "clientRead", op });
  }

  /** A local read finished after a failed flush may have dropped its region: read it again where it is valid now. */
  readAgainAfterDrop(op: ClientOp): void {
    if (this.localValid(op.offset, op.length)) return this.readLocally(op);
    if (this.v.negotiation.peerCanServe()) return this.remoteRead(op);
    this.completeClient(op, "EIO", "a failed flush dropped this region while it was read, and the peer cannot serve it");
  }

  clientReadDone(op: ClientOp, error: IoError | null): void {
    if (!error && op.readDrops !== undefined && op.readDrops !== this.drops) return this.readAgainAfterDrop(op);
    if (!error) return this.completeClient(op, null);
    const context = this.v.context;
    context.report({ kind: "ioError", volumeId: context.volumeId, what: `read ${op.offset}+${op.length}`, error });
    if (this.v.negotiation.peerCanServe()) this.remoteRead(op);
    else this.completeClient(op, error, "local read failed");
  }

  private remoteRead(op: ClientOp): void {
    const context = this.v.context;
    const request: PendingRequest = { kind: "read", requestId: context.requestId(), op };
    context.expect(request);
    context.send(this.requestMessage(request));
  }

  // ---------------------------------------------------------------- flushes and barriers

  private startFlush(op: ClientOp): "started" {
    const context = this.v.context;
    const mirror = context.mayWrite && this.v.negotiation.mirroring();
    op.peerPending = mirror;
    op.mirrored = mirror;
    this.flushLocal({ kind: "clientFlush", op });
    if (mirror) this.barrier({ kind: "clientFlush", op });
    return "started";
  }

  clientFlushLocalDone(op: ClientOp, error: IoError | null): void {
    op.localDone = true;
    op.localError = error;
    this.finishFlush(op);
  }

  private finishFlush(op: ClientOp): void {
    if (!op.localDone || op.peerPending) return;
    const context = this.v.context;
    if (op.localError || op.peerError) {
      if (op.localError) this.flushErrorToReport = false; // this client is told now
      return this.completeClient(op, op.localError ?? "EIO", op.localError ? "local flush failed" : "the peer failed to flush");
    }
    if (this.flushErrorToReport) {
      this.flushErrorToReport = false;
      return this.completeClient(op, "EIO", "an earlier flush of this volume failed: writes made since the flush before it may be lost here");
    }
    if (op.peerLost && this.holdForGrant(op)) return;
    if ((!op.mirrored || op.peerLost) && context.dataState !== DataState.Consistent) {
      // A resync target lacks regions only the peer holds, and the peer did not flush them: as a
      // write cannot complete alone here (completeAlone), a flush cannot vouch for them alone.
      this.completeClient(op, "EIO", "this node is a resync target and the peer, which holds regions it lacks, did not make them durable");
      this.pump();
      return;
    }
    if (context.mayWrite && (!op.mirrored || op.peerLost) && context.bitmap.setCount > 0) {
      // Durable here only: the peer lacks data we promise is durable, so this is a new generation.
      this.v.persistence.ensureAlone({ kind: "flush", op });
      return;
    }
    this.completeClient(op, null, undefined, op.mirrored && !op.peerLost);
  }

  /**
   * Flush the peer's storage. Writes it acknowledged before now are durable there once the answer
   * comes, so they leave the transfer log.
   */
  barrier(purpose: BarrierPurpose): void {
    const context = this.v.context;
    const covered = this.transferLog;
    this.transferLog = new Set();
    this.lastBarrierTick = context.now();
    const request: PendingRequest = { kind: "barrier", requestId: context.requestId(), covered, purpose };
    context.expect(request);
    context.send(this.requestMessage(request));
  }

  /** Barriers sent and not answered. */
  barriersPending(): boolean {
    for (const request of this.v.context.requests.values()) if (request.kind === "barrier") return true;
    return false;
  }

  private barrierDone(purpose: BarrierPurpose, ok: boolean): void {
    switch (purpose.kind) {
      case "clientFlush":
        purpose.op.peerPending = false;
        if (!ok) purpose.op.peerError = true;
        return this.finishFlush(purpose.op);
      case "close":
        return this.v.lifecycle.barrierDone();
      case "eviction":
        return this.v.persistence.evictionStep(purpose.eviction, ok ? null : "EIO");
      case "background":
        return;
    }
  }

  private barrierLost(purpose: BarrierPurpose): void {
    switch (purpose.kind) {
      case "clientFlush":
        purpose.op.peerPending = false;
        purpose.op.peerLost = true;
        return this.finishFlush(purpose.op);
      case "close":
        return this.v.lifecycle.barrierDone();
      case "eviction":
        return this.v.persistence.evictionStep(purpose.eviction, null);
      case "background":
        return;
    }
  }

  transferLogAdd(offset: number, length: number): void {
    const context = this.v.context;
    const first = Math.floor(offset / context.granuleBytes);
    const last = Math.ceil((offset + length) / context.granuleBytes);
    for (let granule = first; granule < last; granule++) this.transferLog.add(granule);
    if (this.transferLog.size >= context.config.transferLogGranulesMax) this.barrier({ kind: "background" });
  }

  /** The peer may lose what it acknowledged and did not flush: mark it dirty. */
  markTransferLogDirty(): void {
    const context = this.v.context;
    const barriers = [...context.requests.values()].filter((request) => request.kind === "barrier");
    if (context.config.bugs.forgetTransferLog) {
      this.transferLog = new Set();
      for (const barrier of barriers) barrier.covered = new Set();
      return;
    }
    this.markGranulesDirty(this.transferLog);
    if (!context.config.bugs.barrierDropsCovered) for (const barrier of barriers) this.markGranulesDirty(barrier.covered);
    this.transferLog = new Set();
  }

  private markGranulesDirty(granules: Set<number>): void {
    const context = this.v.context;
    const bitCount = context.layout.bitCount;
    for (const granule of granules) {
      if (granule >= bitCount) continue;
      context.bitmap.setRange(granule, granule + 1);
      this.v.resync.remarked(granule, granule + 1);
    }
  }

  /** A resync round starts: from now on the round says which regions this node may serve. */
  resyncRoundStarted(): void {
    this.droppedOnSecondary.clear();
  }

  /** Mark a byte range as possibly different from the peer. */
  markDirty(offset: number, length: number): void {
    const { first, last } = this.v.context.granules(offset, length);
    if (first >= last) return;
    this.v.context.bitmap.setRange(first, last);
    this.v.resync.remarked(first, last);
  }

  /** See VolumeCore.nextActionTick: queued work, else the background barrier. */
  nextActionTick(now: number): number {
    if (this.queue.length > 0 || this.rewrites.length > 0 || this.rewritesToRetry.length > 0) return now + 1;
    return this.v.negotiation.mirroring() && this.transferLog.size > 0 ? this.lastBarrierTick + this.v.context.config.barrierIntervalTicks : Infinity;
  }

  tick(): void {
    const now = this.v.context.now();
    if (this.rewritesToRetry.length > 0 && !this.v.lifecycle.leaving) {
      this.rewrites.push(...this.rewritesToRetry);
      this.rewritesToRetry = [];
      this.pumpRewrites();
    }
    if (this.v.negotiation.mirroring() && this.transferLog.size > 0 && now - this.lastBarrierTick >= this.v.context.config.barrierIntervalTicks) this.barrier({ kind: "background" });
  }

  // ---------------------------------------------------------------- the peer's writes

  /** A write (trim, zero) from the primary. */
  peerWrite(message: Extract<Message, { type: MessageType.Write | MessageType.Trim | MessageType.Zero }>): void {
    const context = this.v.context;
    const length = message.type === MessageType.Write ? message.data.length : message.length;
    if (context.mayWrite || message.offset + length > context.sizeBytes) {
      context.send({ type: MessageType.WriteAck, volumeId: context.volumeId, requestId: message.requestId, status: WireStatus.Refused });
      if (context.mayWrite) context.report({ kind: "notice", volumeId: context.volumeId, message: "refused a write from the peer: this node holds the write grant" });
      return;
    }
    const op: PeerOp = {
      source: "peer",
      kind: message.type === MessageType.Write ? "write" : "zero", // a trim is done as a zero (see clientRequest)
      requestId: message.requestId,
      offset: message.offset,
      length,
      data: message.type === MessageType.Write ? message.data : undefined,
      fua: message.fua,
      noHole: message.type === MessageType.Zero ? message.noHole : false,
      zero: false,
      round: 0,
      linkEpoch: this.v.negotiation.linkEpoch,
      rangeId: 0,
    };
    this.incoming.set(message.requestId, op);
    this.queue.push(op);
    this.pump();
  }

  /** A chunk the resync leader pushes to this target, ordered with the other writes. */
  queuePeerOp(op: PeerOp): void {
    this.queue.push(op);
    this.pump();
  }

  private startPeerOp(op: PeerOp): void {
    const context = this.v.context;
    op.rangeId = context.ranges.hold(op.offset, op.offset + op.length, "peer");
    const volumeId = context.volumeId;
    const pending: PendingIo = { kind: "peerWrite", op };
    if (op.kind === "write") context.issue({ kind: "storageWrite", volumeId, io: 0, offset: op.offset, data: op.data!, fua: op.fua }, pending);
    else if (op.kind === "trim") context.issue({ kind: "storageTrim", volumeId, io: 0, offset: op.offset, length: op.length, fua: op.fua }, pending);
    else if (op.kind === "zero" || op.zero) context.issue({ kind: "storageZero", volumeId, io: 0, offset: op.offset, length: op.length, fua: op.fua, noHole: op.noHole }, pending);
    else context.issue({ kind: "storageWrite", volumeId, io: 0, offset: op.offset, data: op.data!, fua: false }, pending);
  }

  peerWriteDone(op: PeerOp, error: IoError | null): void {
    const context = this.v.context;
    context.ranges.release(op.rangeId);
    if (error || !op.fua) this.wroteLocally(op.offset, op.length); // a failed one may have reached the cache in part
    if (op.kind === "resync") this.v.resync.pushedChunkWritten(op, error);
    else if (op.linkEpoch === this.v.negotiation.linkEpoch) {
      this.incoming.delete(op.requestId);
      context.send({ type: MessageType.WriteAck, volumeId: context.volumeId, requestId: op.requestId, status: errorToStatus(error) });
    } else context.ignore("ignoreAnswerOnOldLink", `write ${op.requestId} from the peer finished after its link was lost`);
    this.pump();
  }

  // ---------------------------------------------------------------- link loss

  /** The peer stopped answering our requests: what we sent it may not have reached it. */
  peerStoppedServing(): void {
    // Writes in flight to the peer were never acknowledged: their regions may differ now.
    for (const op of this.running) {
      if (op.peerPending) {
        op.peerPending = false;
        op.peerLost = true;
        this.markDirty(op.offset, op.length);
      }
    }
    // Writes the peer acknowledged but never confirmed durable may vanish if it crashed.
    this.markTransferLogDirty();
  }

  /** The link dropped: the peer's writes we had not answered may be missing on the primary. */
  peerRequestsDropped(): void {
    for (const op of this.incoming.values()) this.markDirty(op.offset, op.length);
    this.incoming.clear();
    this.queue = this.queue.filter((op) => op.source === "client");
  }

  // ---------------------------------------------------------------- requests to the peer

  requestMessage(request: Extract<PendingRequest, { kind: "write" | "read" | "barrier" }>): Message {
    const volumeId = this.v.context.volumeId;
    const requestId = request.requestId;
    switch (request.kind) {
      case "write": {
        const op = request.op;
        if (op.kind === "write") return { type: MessageType.Write, volumeId, requestId, offset: op.offset, fua: request.peerFua, data: op.data! };
        return { type: op.kind === "trim" ? MessageType.Trim : MessageType.Zero, volumeId, requestId, offset: op.offset, length: op.length, fua: request.peerFua, noHole: op.noHole };
      }
      case "read":
        return { type: MessageType.ReadRequest, volumeId, requestId, offset: request.op.offset, length: request.op.length };
      case "barrier":
        return { type: MessageType.Flush, volumeId, requestId };
    }
  }

  answer(request: Extract<PendingRequest, { kind: "write" | "read" | "barrier" }>, message: Message): void {
    switch (request.kind) {
      case "write": {
        if (message.type !== MessageType.WriteAck) return this.v.peer.protocolError(`expected WriteAck for request ${request.requestId}, got type ${message.type}`);
        const op = request.op;
        op.peerPending = false;
        if (message.status !== WireStatus.Ok) op.peerError = true;
        else if (!request.peerFua) this.transferLogAdd(op.offset, op.length);
        return this.finishWrite(op);
      }
      case "read": {
        if (message.type !== MessageType.ReadReply) return this.v.peer.protocolError("expected ReadReply");
        const op = request.op;
        if (message.status !== WireStatus.Ok || message.data.length !== op.length) return this.completeClient(op, "EIO", "the peer could not serve the read");
        copyPayload(message.data, op.target!);
        return this.completeClient(op, null);
      }
      case "barrier": {
        if (message.type !== MessageType.FlushAck) return this.v.peer.protocolError("expected FlushAck");
        if (message.status !== WireStatus.Ok) {
          // A flush that failed may have dropped what it covered from the peer's cache (Linux
          // marks the pages clean), and a later flush would succeed without it: those regions
          // differ on the peer from now on, whatever a later barrier says.
          this.peerFlushFailed(request.covered);
          return this.barrierDone(request.purpose, false);
        }
        return this.barrierDone(request.purpose, true);
      }
    }
  }

  lost(request: Extract<PendingRequest, { kind: "write" | "read" | "barrier" }>): void {
    switch (request.kind) {
      case "write":
        return; // peerStoppedServing handles every running write
      case "read": {
        const op = request.op;
        if (this.localValid(op.offset, op.length)) {
          this.queue.unshift(op);
          this.pump();
        } else this.completeClient(op, "EIO", "the link to the peer was lost during a read the peer had to serve");
        return;
      }
      case "barrier":
        // peerStoppedServing (called first) has marked `covered` already.
        return this.barrierLost(request.purpose);
    }
  }
}
