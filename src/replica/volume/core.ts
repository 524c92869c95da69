// The replication state machine of one volume on one node: the parts below, tied together. It is a
// pure core (CONVENTIONS.md §1): it reacts to events (client IO, storage and metadata completions,
// peer messages, ticks, grants) by emitting actions through its host, and never touches a socket, a
// file, a clock or a random source itself. Each concern lives in its own module:
//   lifecycle.ts     open (recovery), close (drain, flush both sides, record clean)
//   negotiation.ts   hellos, the decision, the link phase, split-brain resolution
//   write-path.ts    protocol C: the ordered queue, mirrored writes, reads, flushes, barriers
//   persistence.ts   metadata jobs, a generation of our own, activity-log transactions
//   resync.ts        the work list, the leader's copy loop, checkpoints, the end of a resync
//   verify.ts        online verify and repair, and answering the peer's
//   peer-service.ts  routing the peer's messages, answers to our requests, answering the peer
// State is explicit (state.ts) and work in flight is data (model.ts): this class only routes.
import type { LoadedMetadata } from "../metadata-format.ts";
import type { Grant, IoError, VolumeStatus } from "../types.ts";
import { type Message } from "../wire.ts";
import { formatGeneration } from "../generations.ts";
import { type Parts, VolumeContext, type VolumeHost } from "./context.ts";
import { VolumeLifecycle } from "./lifecycle.ts";
import type { ClientFields, OpKind, PendingIo } from "./model.ts";
import { Negotiation } from "./negotiation.ts";
import { PeerService } from "./peer-service.ts";
import { Persistence } from "./persistence.ts";
import { ResyncEngine } from "./resync.ts";
import { Verifier } from "./verify.ts";
import { WritePath } from "./write-path.ts";
import { DataState } from "../model.ts";

export type { VolumeHost } from "./context.ts";

export class VolumeCore implements Parts {
  readonly context: VolumeContext;
  readonly lifecycle: VolumeLifecycle;
  readonly negotiation: Negotiation;
  readonly writes: WritePath;
  readonly persistence: Persistence;
  readonly resync: ResyncEngine;
  readonly verify: Verifier;
  readonly peer: PeerService;

  constructor(host: VolumeHost, readonly volumeId: number, loaded: LoadedMetadata) {
    this.context = new VolumeContext(host, volumeId, loaded);
    this.lifecycle = new VolumeLifecycle(this);
    this.negotiation = new Negotiation(this);
    this.writes = new WritePath(this);
    this.persistence = new Persistence(this);
    this.resync = new ResyncEngine(this);
    this.verify = new Verifier(this);
    this.peer = new PeerService(this);
  }

  /** Set by the node core: a protocol violation drops the link. */
  set onProtocolError(handler: ((reason: string) => void) | undefined) {
    this.peer.onProtocolError = handler;
  }

  // ---------------------------------------------------------------- events from the node

  open(loaded: LoadedMetadata): void {
    this.lifecycle.open(loaded);
  }

  close(request: number): void {
    this.lifecycle.close(request);
  }

  /** How many times a failed local flush may have dropped regions (WritePath.drops). */
  get drops(): number {
    return this.writes.drops;
  }

  /** A client read of the range would be served locally at once (WritePath.readsLocally). */
  readsLocally(offset: number, length: number): boolean {
    return this.writes.readsLocally(offset, length);
  }

  setGrant(grant: Grant): void {
    const before = this.context.grant;
    this.context.grant = grant;
    this.writes.grantChanged();
    this.negotiation.grantChanged(before, grant);
  }

  linkUpEvent(): void {
    this.negotiation.linkUpEvent();
  }

  linkDownEvent(): void {
    // DESIGN.md §5 rule 2: under the quorum a lost link freezes at once, before anything in flight
    // can complete without the peer; the quorum's next grant says who goes on.
    const context = this.context;
    if (context.config.freezeOnLinkLoss && context.grant.kind === "write") context.grant = { kind: "frozen", reason: "the link to the peer was lost: frozen until the quorum decides" };
    this.negotiation.linkDownEvent();
  }

  /**
   * The first tick at which `tick` may act (ask for IO, send, report), after `now` and if no other
   * event comes first. Exact for the idle timers (barrier, bitmap writeback); while anything is in
   * motion (a queue, a resync, a verify, an open or close) it is the next tick, as if ticking every tick.
   */
  nextActionTick(now: number): number {
    const next = now + 1;
    if (this.lifecycle.tickActsNext) return next;
    if (!this.lifecycle.serving) return Infinity;
    if (this.lifecycle.leaving || this.resync.ticking || this.verify.run) return next;
    return Math.min(this.writes.nextActionTick(now), this.persistence.nextActionTick(now));
  }

  tick(): void {
    this.lifecycle.tick();
    if (!this.lifecycle.serving) return;
    this.writes.tick();
    this.persistence.tick();
    this.resync.tick();
    this.verify.tick();
    this.writes.pump();
  }

  clientRequest(kind: OpKind, request: number, offset: number, length: number, fields: ClientFields): void {
    this.writes.clientRequest(kind, request, offset, length, fields);
  }

  startVerify(request: number, repair: boolean): void {
    this.verify.start(request, repair);
  }

  resolveSplitBrain(request: number, keep: "local" | "peer"): void {
    this.negotiation.resolveSplitBrain(request, keep);
  }

  peerMessage(message: Message): void {
    this.peer.message(message);
  }

  corruptFrame(type: number, requestId: number): void {
    this.peer.corruptFrame(type, requestId);
  }

  metadataDone(io: number, error: IoError | null): void {
    this.storageDone(io, error);
  }

  /** An IO completed: dispatch it by what it was for. */
  storageDone(io: number, reported: IoError | null): void {
    const pending: PendingIo = this.context.completed(io);
    // A local flush that succeeded while another failed counts as failed (localFlushDone).
    const error = this.writes.localFlushDone(pending, reported);
    switch (pending.kind) {
      case "clientWrite":
        return this.writes.clientWriteDone(pending.op, error);
      case "clientRead":
        return this.writes.clientReadDone(pending.op, error);
      case "clientFlush":
        return this.writes.clientFlushLocalDone(pending.op, error);
      case "peerWrite":
        return this.writes.peerWriteDone(pending.op, error);
      case "metadata":
        return this.persistence.metadataDone(pending, error);
      case "evictionFlush":
        return this.persistence.evictionStep(pending.eviction, error);
      case "closeFlush":
        return this.lifecycle.flushed(error);
      case "backgroundFlush":
        return;
      case "peerFlush":
        return this.peer.flushed(pending, error);
      case "peerRead":
        return this.peer.readDone(pending, error);
      case "sourceRead":
        return this.resync.sourceReadDone(pending, error);
      case "sourceFlush":
        return this.resync.sourceFlushed(pending.round, error);
      case "chunkRead":
        return this.resync.chunkRead(pending, error);
      case "chunkWrite":
        return this.resync.chunkWritten(pending, error);
      case "checkpointFlush":
        return this.resync.checkpointFlushed(pending, error);
      case "verifyFlush":
        return this.verify.flushed(pending.run, error);
      case "verifyRead":
        return this.verify.readDone(pending, error);
      case "verifyAnswerRead":
        return this.verify.answerReadDone(pending, error);
      case "repairWrite":
        return this.verify.repairWritten(pending, error);
      case "rewriteRead":
        return this.writes.rewriteRead(pending, error);
      case "rewriteWrite":
        return this.writes.rewritten(pending, error);
    }
  }

  // ---------------------------------------------------------------- status

  /** IO and peer requests in flight, by kind (for status and tests). */
  pending(): { io: Record<string, number>; requests: Record<string, number> } {
    const io: Record<string, number> = {};
    for (const entry of this.context.io.values()) io[entry.kind] = (io[entry.kind] ?? 0) + 1;
    const requests: Record<string, number> = {};
    for (const entry of this.context.requests.values()) requests[entry.kind] = (requests[entry.kind] ?? 0) + 1;
    return { io, requests };
  }

  /** The role status() reports, without building the rest of it (asked on every client write). */
  role(): VolumeStatus["role"] {
    const kind = this.context.grant.kind;
    return kind === "write" ? "primary" : kind === "frozen" ? "frozen" : "secondary";
  }

  status(): VolumeStatus {
    const context = this.context;
    const grant = context.grant;
    const phase = this.negotiation.phase;
    let sync: VolumeStatus["sync"];
    if (this.resync.round) sync = "resyncing";
    else if (phase.kind === "replicating") sync = "synced";
    else if (phase.kind === "negotiating") sync = "negotiating";
    else if (phase.kind === "refused") sync = phase.refusal === "splitBrain" ? "splitBrain" : "refused";
    else sync = "degraded";
    return {
      volumeId: this.volumeId,
      role: this.role(),
      epoch: grant.kind === "write" ? grant.epoch : undefined,
      sync,
      refusal: phase.kind === "refused" ? phase.refusal : undefined,
      reason: phase.reason,
      dataState: context.dataState === DataState.New ? "new" : context.dataState === DataState.Consistent ? "consistent" : "inconsistent",
      current: formatGeneration(context.generations.current),
      bitmapBase: formatGeneration(context.generations.bitmapBase),
      dirtyBytes: Math.min(context.bitmap.setCount * context.granuleBytes, context.sizeBytes),
      activityLogExtents: context.activityLog.size,
      resync: this.resync.status(),
      verify: this.verify.status(),
      writesInFlight: this.writes.running.size,
      queued: this.writes.queue.length,
    };
  }
}
