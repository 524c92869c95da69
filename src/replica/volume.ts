// The replication state machine of one volume on one node: the protocol-C write path, the dirty
// bitmap and activity log, the negotiation with the peer's replica, the resync engine and online
// verify. It is a pure core (CONVENTIONS.md §1): it reacts to events (client IO, storage and metadata
// completions, peer messages, ticks, grants) by emitting actions through its host, and it never
// touches a socket, a file, a clock or a random source itself.
//
// How the pieces fit (docs/replication.md has the full story):
//  - Phases of the link for this volume: down → negotiating → replicating | refused. The node with
//    the lower name decides (generations.ts `decide`) and sends the verdict; the other follows.
//  - Writes (primary): wait for overlapping ones, for their activity-log extents, and — when the
//    peer is not replicating — for a new generation; then go to local storage and the peer at once
//    and complete when both have. Writes the peer acknowledged but has not flushed stay in a
//    transfer log until a barrier flush confirms them, so a peer crash marks them dirty.
//  - Resync: after the bitmaps are exchanged (the union is the work list) the leader — the primary
//    if there is one, else the source — copies dirty chunks under range locks, checkpoints with a
//    flush of the target, clears the copied bits on both sides, and finally the target adopts the
//    source's generation.
import { assert, unreachable } from "../common/assert.ts";
import { ActivityLog, type ActivityLogPlan } from "./activity-log.ts";
import { DirtyBitmap } from "./bitmap.ts";
import { checksum } from "./checksum.ts";
import type { ReplicaConfig } from "./config.ts";
import {
  type Decision,
  decide,
  finishAsSource,
  finishAsTarget,
  formatGeneration,
  noGeneration,
  preferredSide,
  type ReplicaState,
  startAlone,
} from "./generations.ts";
import {
  activityLogWrite,
  bitmapPageWrite,
  type LoadedMetadata,
  type MetadataLayout,
  metadataLayout,
  type MetadataWrite,
  type Superblock,
  superblockWrite,
} from "./metadata-format.ts";
import { RangeTable } from "./range-table.ts";
import type { CoreAction, Grant, IoError, ResyncStatus, VerifyResult, VolumeStatus } from "./types.ts";
import {
  type BitRun,
  DataState,
  DecisionKind,
  type Message,
  MessageType,
  type ResyncDataMessage,
  type ResyncRequestMessage,
  type VolumeDecisionMessage,
  type VolumeHelloMessage,
  WireStatus,
} from "./wire.ts";
import { replicaBitmapRunsPerMessageMax, replicaGenerationHistoryLength, replicaVerifyMismatchesReportedMax } from "../constants.ts";

/** What a volume core needs from the node core that hosts it. */
export interface VolumeHost {
  readonly nodeId: string;
  readonly peerNodeId: string;
  readonly config: ReplicaConfig;
  now(): number;
  /** Send to the peer on the current link (dropped when the link is down). */
  send(message: Message): void;
  emit(action: CoreAction): void;
  /** A fresh non-zero 64-bit identifier (from the injected Random). */
  randomId(): bigint;
}

type Phase = "down" | "negotiating" | "replicating" | "refused" | "absent";
type Refusal = "splitBrain" | "unrelated" | "noGoodData" | "mismatch" | "dualPrimary";

type OpKind = "read" | "write" | "trim" | "zero" | "flush";

interface ClientOp {
  source: "client";
  kind: OpKind;
  request: number;
  offset: number;
  length: number;
  data?: Uint8Array;
  target?: Uint8Array;
  fua: boolean;
  noHole: boolean;
  localDone: boolean;
  localError: IoError | null;
  peerPending: boolean;
  peerError: boolean;
  /** The peer took part when the write started (mirrored), and had not failed or been lost. */
  mirrored: boolean;
  peerLost: boolean;
  rangeId: number;
  activityHeld: boolean;
  completed: boolean;
  /** For the sim's single-writer checker: the epoch under which the write was admitted. */
  epoch: number | undefined;
}

interface PeerOp {
  source: "peer";
  kind: "write" | "trim" | "zero" | "resync";
  requestId: number;
  offset: number;
  length: number;
  data: Uint8Array | undefined;
  fua: boolean;
  noHole: boolean;
  zero: boolean;
  round: number;
  linkEpoch: number;
  rangeId: number;
}

type QueuedOp = ClientOp | PeerOp;

interface PeerRequest {
  /** The peer answered (a message with this request id). */
  reply(message: Message): void;
  /** The peer reported our frame corrupt: send it again. */
  resend(): void;
  /** The link went down before an answer. */
  lost(): void;
}

interface PersistJob {
  superblock: boolean;
  pages: boolean;
  activityLog: { plan: ActivityLogPlan; extents: number[]; sequence: number } | undefined;
  callbacks: ((error: IoError | null) => void)[];
}

interface Chunk {
  startBit: number;
  endBit: number;
  offset: number;
  length: number;
  rangeId: number;
}

interface ResyncRound {
  round: number;
  localIsSource: boolean;
  localLeads: boolean;
  full: boolean;
  stage: "exchange" | "persisting" | "ready" | "running" | "completing";
  sentDone: boolean;
  peerDone: boolean;
  peerReady: boolean;
  /** Runs received from the peer, merged when both sides are done. */
  peerRuns: BitRun[];
  cursor: number;
  passHadFailures: boolean;
  passSkipped: boolean;
  nextPassTick: number;
  chunks: Set<Chunk>;
  doneRuns: BitRun[];
  remarked: BitRun[];
  checkpointBusy: boolean;
  bitsTotal: number;
  bitsDone: number;
  bytesCopied: number;
  samples: { tick: number; bytes: number }[];
  completeSent: boolean;
}

interface VerifyRun {
  request: number;
  repair: boolean;
  round: number;
  cursor: number;
  busy: boolean;
  extentsTotal: number;
  extentsDone: number;
  mismatches: { offset: number; length: number }[];
  mismatchCount: number;
  repaired: number;
}

function errorToStatus(error: IoError | null): WireStatus {
  if (error === null) return WireStatus.Ok;
  return error === "ENOSPC" ? WireStatus.NoSpace : WireStatus.IoError;
}

function isAllZero(bytes: Uint8Array): boolean {
  const words = bytes.byteOffset % 4 === 0 && bytes.length % 4 === 0 ? new Uint32Array(bytes.buffer, bytes.byteOffset, bytes.length / 4) : undefined;
  if (words) {
    for (let index = 0; index < words.length; index++) if (words[index] !== 0) return false;
    return true;
  }
  for (let index = 0; index < bytes.length; index++) if (bytes[index] !== 0) return false;
  return true;
}

export class VolumeCore {
  readonly layout: MetadataLayout;
  readonly bitmap: DirtyBitmap;
  private superblock: Superblock;
  private readonly activityLog: ActivityLog;
  private readonly ranges = new RangeTable();
  private grant: Grant = { kind: "read", reason: "no grant received yet" };
  private opened = false;
  private closing: { request: number } | undefined;
  private openRetry = false;
  private closed = false;

  // Link and negotiation.
  private linkUp = false;
  private linkEpoch = 0;
  private phase: Phase = "down";
  private refusal: Refusal | undefined;
  private phaseReason = "the peer is not connected";
  private helloSeq = 0;
  /** Seq of our last hello that asked for a decision: the decider answers it (or a later one). */
  private redecideHelloSeq = 0;
  private peerHello: VolumeHelloMessage | undefined;
  private decideWanted = false;
  private decisionRounds = 0;
  private splitBrainKeeper: "local" | "peer" | undefined;
  private resync: ResyncRound | undefined;
  private verify: VerifyRun | undefined;
  private verifyRounds = 0;

  // IO bookkeeping.
  private nextIo = 1;
  private readonly ioHandlers = new Map<number, (error: IoError | null) => void>();
  private queue: QueuedOp[] = [];
  private readonly running = new Set<ClientOp>();
  private readonly incoming = new Map<number, PeerOp>();
  private readonly peerRequests = new Map<number, PeerRequest>();
  private nextPeerRequest = 1;

  // Writes the peer acknowledged but has not confirmed durable (granule indexes), and barriers.
  private transferLog = new Set<number>();
  private readonly barriers = new Map<number, Set<number>>();
  private lastBarrierTick = 0;

  // Persistence.
  private persistQueue: PersistJob[] = [];
  private persistBusy = false;
  private aloneWaiters: ((error: IoError | null) => void)[] | undefined;
  private redecideAfterPersist = false;
  private activityBusy = false;
  private readonly evicting = new Set<number>();
  private lastWritebackTick = 0;
  private resyncTokens = 0;

  constructor(
    private readonly host: VolumeHost,
    readonly volumeId: number,
    loaded: LoadedMetadata,
  ) {
    this.superblock = { ...loaded.superblock, generations: { ...loaded.superblock.generations, history: [...loaded.superblock.generations.history] } };
    this.layout = metadataLayout(this.superblock.sizeBytes, this.superblock.granuleBytes);
    this.bitmap = loaded.bitmap;
    const config = host.config;
    this.activityLog = new ActivityLog(config.activityLogExtentBytes, config.activityLogExtentsMax, loaded.activityLog?.extents ?? [], loaded.activityLog?.sequence ?? 0);
    assert(this.bitmap.bitCount === this.layout.bitCount, "loaded bitmap matches the layout");
  }

  get sizeBytes(): number {
    return this.superblock.sizeBytes;
  }
  get granuleBytes(): number {
    return this.superblock.granuleBytes;
  }
  get dataState(): DataState {
    return this.superblock.dataState;
  }
  get generations() {
    return this.superblock.generations;
  }
  private get config(): ReplicaConfig {
    return this.host.config;
  }
  private get mayWrite(): boolean {
    return this.grant.kind === "write";
  }

  // ---------------------------------------------------------------- open / close

  /** Recover after an unclean stop, then persist "not clean" before any IO. */
  open(loaded: LoadedMetadata): void {
    let recovered = 0;
    if (!loaded.superblock.cleanShutdown && loaded.activityLog) {
      for (const extent of loaded.activityLog.extents) {
        const start = Math.floor((extent * loaded.activityLog.extentBytes) / this.granuleBytes);
        const end = Math.min(this.layout.bitCount, Math.ceil(((extent + 1) * loaded.activityLog.extentBytes) / this.granuleBytes));
        if (start < end) {
          this.bitmap.setRange(start, end);
          recovered++;
        }
      }
    }
    this.superblock.cleanShutdown = false;
    this.persist({ superblock: true, pages: true }, (error) => {
      if (error) {
        // Not open until "not clean" is on disk; the next tick tries again.
        this.report({ kind: "ioError", volumeId: this.volumeId, what: "marking the volume in use at open (retrying)", error });
        this.openRetry = true;
        return;
      }
      this.finishOpen(loaded.findings, recovered);
    });
  }

  private finishOpen(findings: string[], recovered: number): void {
    this.opened = true;
    this.report({ kind: "volumeOpened", volumeId: this.volumeId, findings, recoveredExtents: recovered });
    if (this.linkUp) {
      this.sendHello(true);
      this.decideWanted = true;
    }
    this.maybeDecide();
    this.pump();
  }

  close(request: number): void {
    if (this.closing || this.closed) {
      this.host.emit({ kind: "complete", request, error: "ESHUTDOWN", message: "volume is already closing" });
      return;
    }
    this.closing = { request };
    for (const op of this.queue) if (op.source === "client") this.completeClient(op, "ESHUTDOWN", "volume is closing");
    this.queue = this.queue.filter((op) => op.source === "peer");
    this.tryFinishClose();
  }

  private tryFinishClose(): void {
    const closing = this.closing;
    if (!closing || this.closed) return;
    if (this.running.size > 0 || this.persistBusy || this.activityBusy || (this.resync && this.resync.chunks.size > 0) || this.verify?.busy) return;
    this.closed = true; // no new work from here on
    const finish = () => {
      this.superblock.cleanShutdown = true;
      this.persist({ superblock: true, pages: true }, (error) => {
        if (this.linkUp) this.host.send({ type: MessageType.VolumeClosed, volumeId: this.volumeId, requestId: 0 });
        this.host.emit({ kind: "complete", request: closing.request, error, message: error ? "could not mark the volume clean" : undefined });
      });
    };
    // Make every completed write durable here and on the peer before calling the close clean.
    this.storage({ kind: "storageFlush", volumeId: this.volumeId, io: 0 }, () => {
      if (this.mirroring() && this.transferLog.size > 0) this.barrier(() => finish());
      else {
        this.markTransferLogDirty();
        finish();
      }
    });
  }

  // ---------------------------------------------------------------- events from the node

  setGrant(grant: Grant): void {
    const before = this.grant;
    this.grant = grant;
    if (before.kind === grant.kind && (before.kind !== "write" || grant.kind !== "write" || before.epoch === grant.epoch)) {
      this.pump();
      return;
    }
    if (this.linkUp && this.opened) {
      this.sendHello(true);
      this.decideWanted = true;
      this.maybeDecide();
    }
    this.pump();
  }

  linkUpEvent(): void {
    assert(!this.linkUp, "link up once per link");
    this.linkUp = true;
    this.linkEpoch++;
    this.peerHello = undefined;
    this.setPhase("negotiating", "waiting for the peer's volume state");
    if (this.opened) this.sendHello(true);
  }

  linkDownEvent(): void {
    if (!this.linkUp) return;
    this.linkUp = false;
    this.linkEpoch++;
    this.peerHello = undefined;
    this.setPhase("down", "the peer is not connected");
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
    // Writes from the peer that we had not acknowledged: the primary may not have them.
    for (const op of this.incoming.values()) this.markDirty(op.offset, op.length);
    this.incoming.clear();
    this.queue = this.queue.filter((op) => op.source === "client");
    const requests = [...this.peerRequests.values()];
    this.peerRequests.clear();
    for (const request of requests) request.lost();
    this.abortResync();
    this.abortVerify("the link to the peer was lost");
    for (const op of [...this.running]) this.finishWrite(op);
    this.pump();
  }

  tick(): void {
    if (this.openRetry && !this.persistBusy) {
      this.openRetry = false;
      this.persist({ superblock: true, pages: true }, (error) => {
        if (error) this.openRetry = true;
        else this.finishOpen([], 0);
      });
    }
    if (!this.opened || this.closed) return;
    const now = this.host.now();
    if (this.mirroring() && this.transferLog.size > 0 && now - this.lastBarrierTick >= this.config.barrierIntervalTicks) this.barrier(() => {});
    if (this.bitmap.dirtyPages > 0 && now - this.lastWritebackTick >= this.config.bitmapWritebackIntervalTicks) {
      this.lastWritebackTick = now;
      this.persist({ superblock: true, pages: true }, () => {});
    }
    const resync = this.resync;
    if (resync && resync.stage === "running" && resync.localLeads) {
      this.resyncTokens = Math.min(this.resyncTokens + this.config.resyncRateBytesPerTick, Math.max(this.config.resyncRateBytesPerTick, this.config.resyncChunkBytesMax) * 2);
      this.resyncPump();
    }
    if (this.verify && !this.verify.busy) this.verifyPump();
    this.pump();
  }

  storageDone(io: number, error: IoError | null): void {
    const handler = this.ioHandlers.get(io);
    assert(handler, `storage completion ${io} matches an issued IO`);
    this.ioHandlers.delete(io);
    handler(error);
  }

  // ---------------------------------------------------------------- client requests

  clientRequest(kind: OpKind, request: number, offset: number, length: number, fields: { data?: Uint8Array; target?: Uint8Array; fua?: boolean; noHole?: boolean }): void {
    if (this.closing || this.closed) {
      this.host.emit({ kind: "complete", request, error: "ESHUTDOWN", message: "volume is closing" });
      return;
    }
    if (kind !== "flush" && (!Number.isSafeInteger(offset) || !Number.isSafeInteger(length) || offset < 0 || length <= 0 || offset + length > this.sizeBytes)) {
      this.host.emit({ kind: "complete", request, error: "EINVAL", message: `range ${offset}+${length} is outside the volume` });
      return;
    }
    if (this.queue.length >= this.config.queuedOperationsMax) {
      this.host.emit({ kind: "complete", request, error: "EIO", message: "too many queued operations on this volume" });
      return;
    }
    const op: ClientOp = {
      source: "client",
      kind,
      request,
      offset,
      length,
      data: fields.data,
      target: fields.target,
      fua: fields.fua === true,
      noHole: fields.noHole === true,
      localDone: false,
      localError: null,
      peerPending: false,
      peerError: false,
      mirrored: false,
      peerLost: false,
      rangeId: 0,
      activityHeld: false,
      completed: false,
      epoch: undefined,
    };
    this.queue.push(op);
    this.pump();
  }

  /** Whether writes go to the peer as well. */
  private mirroring(): boolean {
    return this.linkUp && this.phase === "replicating" && this.peerHello !== undefined && !this.peerHello.mayWrite;
  }

  /** Whether writes may proceed on this node alone (the peer is away or refuses to replicate). */
  private aloneAllowed(): boolean {
    if (!this.linkUp) return true;
    if (this.phase === "absent") return true;
    return this.phase === "refused" && (this.refusal === "splitBrain" || this.refusal === "unrelated" || this.refusal === "mismatch");
  }

  /** Whether the local replica holds good data for [offset, offset+length). */
  private localValid(offset: number, length: number): boolean {
    if (this.dataState === DataState.New) return false;
    const targetHere = this.dataState === DataState.Inconsistent || (this.resync !== undefined && !this.resync.localIsSource);
    if (!targetHere) return true;
    if (this.resync && this.resync.stage === "exchange") return false;
    const first = Math.floor(offset / this.granuleBytes);
    const last = Math.ceil((offset + length) / this.granuleBytes);
    return !this.bitmap.anySet(first, last);
  }

  /** Whether the peer can serve reads of a range we cannot. */
  private peerCanServe(): boolean {
    if (!this.linkUp || this.phase !== "replicating" || !this.peerHello) return false;
    if (this.resync) return this.resync.localIsSource === false && this.resync.stage !== "exchange";
    return this.peerHello.dataState === DataState.Consistent;
  }

  /** Start what can start, in order; overlapping operations keep their arrival order. */
  private pump(): void {
    if (!this.opened || this.closed) return;
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
        if (op.linkEpoch !== this.linkEpoch) continue; // the link it came on is gone
        if (overlapsBlocked(start, end) || this.ranges.conflicts(start, end)) {
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
        const { first, last } = this.activityLog.extentRange(op.offset, op.length);
        const extents: number[] = [];
        for (let extent = first; extent <= last; extent++) extents.push(extent);
        const union = new Set([...activityWanted, ...extents.filter((extent) => this.activityLog.missing(extent * this.activityLog.extentBytes, 1).length > 0 || this.evicting.has(extent))]);
        if (union.size + activityProtected.size > this.config.activityLogExtentsMax && activityWanted.length > 0) activityFull = true;
        else {
          activityWanted.splice(0, activityWanted.length, ...union);
          for (const extent of extents) activityProtected.add(extent);
        }
      }
    }
    this.queue = remaining;
    if (activityWanted.length > 0) this.activityTransaction(activityWanted, activityProtected);
    this.tryFinishClose();
  }

  private tryStartClient(op: ClientOp, overlapsBlocked: (start: number, end: number) => boolean): "started" | "done" | "wait" | "activity" | "frozen" {
    const grant = this.grant;
    if (grant.kind === "frozen") return "frozen";
    if (op.kind === "read") return this.startRead(op);
    if (op.kind === "flush") return this.startFlush(op);
    // Writes, trims, zeroes.
    if (grant.kind !== "write") {
      this.completeClient(op, "EPERM", `this node is not the volume's primary (${grant.reason})`);
      return "done";
    }
    const mirror = this.mirroring();
    if (!mirror && !this.aloneAllowed()) return "wait"; // negotiating, or the peer still holds the grant
    if (!mirror) {
      if (this.dataState !== DataState.Consistent) {
        this.completeClient(op, "EIO", this.dataState === DataState.New ? "this replica was never synchronised and the peer is away" : "this replica is mid-resync and the peer holding the good data is away");
        return "done";
      }
      if (this.generations.bitmapBase === noGeneration) {
        this.ensureAlone((error) => {
          if (error) this.failQueuedWrites("could not record the new generation this node needs to write alone");
          this.pump();
        });
        return "wait";
      }
    }
    const start = op.offset;
    const end = op.offset + op.length;
    if (overlapsBlocked(start, end) || this.ranges.conflicts(start, end)) return "wait";
    if (this.running.size >= this.config.writesInFlightMax) return "wait";
    if (this.activityLog.missing(start, op.length).length > 0 || this.touchesEvicting(start, end)) return "activity";
    this.startWrite(op, mirror, grant.epoch);
    return "started";
  }

  private failQueuedWrites(message: string): void {
    for (const op of this.queue) if (op.source === "client" && op.kind !== "read" && op.kind !== "flush") this.completeClient(op, "EIO", message);
    this.queue = this.queue.filter((op) => op.source === "peer" || !op.completed);
  }

  private touchesEvicting(start: number, end: number): boolean {
    if (this.evicting.size === 0) return false;
    const first = Math.floor(start / this.activityLog.extentBytes);
    const last = Math.floor((end - 1) / this.activityLog.extentBytes);
    for (let extent = first; extent <= last; extent++) if (this.evicting.has(extent)) return true;
    return false;
  }

  private startWrite(op: ClientOp, mirror: boolean, epoch: number): void {
    op.epoch = epoch;
    op.rangeId = this.ranges.hold(op.offset, op.offset + op.length, "client");
    this.activityLog.acquire(op.offset, op.length);
    op.activityHeld = true;
    this.running.add(op);
    const volumeId = this.volumeId;
    const done = (error: IoError | null) => {
      op.localDone = true;
      op.localError = error;
      this.finishWrite(op);
    };
    if (op.kind === "write") this.storage({ kind: "storageWrite", volumeId, io: 0, offset: op.offset, data: op.data!, fua: op.fua }, done);
    else if (op.kind === "trim") this.storage({ kind: "storageTrim", volumeId, io: 0, offset: op.offset, length: op.length, fua: op.fua }, done);
    else this.storage({ kind: "storageZero", volumeId, io: 0, offset: op.offset, length: op.length, fua: op.fua, noHole: op.noHole }, done);
    if (!mirror) {
      this.markDirty(op.offset, op.length);
      return;
    }
    op.mirrored = true;
    op.peerPending = true;
    const requestId = this.nextPeerRequest++;
    const send = () => {
      if (op.kind === "write") this.host.send({ type: MessageType.Write, volumeId, requestId, offset: op.offset, fua: op.fua, data: op.data! });
      else this.host.send({ type: op.kind === "trim" ? MessageType.Trim : MessageType.Zero, volumeId, requestId, offset: op.offset, length: op.length, fua: op.fua, noHole: op.noHole });
    };
    this.peerRequests.set(requestId, {
      reply: (message) => {
        if (message.type !== MessageType.WriteAck) return this.protocolError(`expected WriteAck for request ${requestId}, got type ${message.type}`);
        op.peerPending = false;
        if (message.status !== WireStatus.Ok) op.peerError = true;
        else if (!op.fua) this.transferLogAdd(op.offset, op.length);
        this.finishWrite(op);
      },
      resend: send,
      lost: () => {}, // handled for every running op in linkDownEvent
    });
    send();
  }

  private finishWrite(op: ClientOp): void {
    if (op.completed) return;
    if (this.config.bugs.ackBeforePeer && op.localDone && op.peerPending && !op.localError) {
      // Deliberately wrong (simulator bug switch): acknowledge before the peer has the data.
      op.completed = true;
      this.host.emit({ kind: "complete", request: op.request, error: null, mirrored: true, epoch: op.epoch });
      this.running.delete(op);
      this.releaseWrite(op);
      return;
    }
    if (!op.localDone || op.peerPending) return;
    this.running.delete(op);
    this.releaseWrite(op);
    if (op.localError || op.peerError) {
      // The replicas may differ in this range now: the client gets the error, the region is
      // marked and a resync from the primary repairs it.
      this.markDirty(op.offset, op.length);
      if (op.mirrored && !op.peerLost) this.requestRedecide();
      this.completeClient(op, op.localError ?? "EIO", op.localError ? "local write failed" : "the peer failed to write");
      this.pump();
      return;
    }
    if (op.peerLost || !op.mirrored) {
      if (this.dataState !== DataState.Consistent) {
        // A resync target cannot vouch for data alone: the peer's copy of this region wins later.
        this.completeClient(op, "EIO", "the link to the peer holding the good data was lost before the write reached it");
        this.pump();
        return;
      }
      // Completing without the peer: this node now holds data the peer lacks.
      this.ensureAlone((error) => {
        if (error) this.completeClient(op, "EIO", "could not record the new generation");
        else this.completeClient(op, null, undefined, false);
        this.pump();
      });
      return;
    }
    this.completeClient(op, null, undefined, true);
    this.pump();
  }

  private releaseWrite(op: ClientOp): void {
    if (op.rangeId !== 0) {
      this.ranges.release(op.rangeId);
      op.rangeId = 0;
    }
    if (op.activityHeld) {
      this.activityLog.release(op.offset, op.length);
      op.activityHeld = false;
    }
  }

  private completeClient(op: ClientOp, error: IoError | null, message?: string, mirrored?: boolean): void {
    if (op.completed) return;
    op.completed = true;
    this.host.emit({ kind: "complete", request: op.request, error, message, mirrored, epoch: op.epoch });
  }

  private startRead(op: ClientOp): "started" | "done" | "wait" {
    const target = op.target!;
    if (!this.mayWrite && !(this.linkUp && this.phase === "replicating")) {
      // A secondary that is not replicating cannot know what it missed: never serve stale data.
      if (this.linkUp && this.phase === "negotiating") return "wait";
      this.completeClient(op, "EIO", "this node is not the primary and is not in sync with it: its data may be stale");
      return "done";
    }
    if (this.localValid(op.offset, op.length)) {
      this.storage({ kind: "storageRead", volumeId: this.volumeId, io: 0, offset: op.offset, target }, (error) => {
        if (!error) return this.completeClient(op, null);
        this.report({ kind: "ioError", volumeId: this.volumeId, what: `read ${op.offset}+${op.length}`, error });
        if (this.peerCanServe()) this.remoteRead(op);
        else this.completeClient(op, error, "local read failed");
      });
      return "started";
    }
    if (this.peerCanServe()) {
      this.remoteRead(op);
      return "started";
    }
    if (this.linkUp && (this.phase === "negotiating" || this.resync?.stage === "exchange")) return "wait";
    this.completeClient(op, "EIO", "this replica does not hold current data for the range and the peer cannot serve it");
    return "done";
  }

  private remoteRead(op: ClientOp): void {
    const requestId = this.nextPeerRequest++;
    const send = () => this.host.send({ type: MessageType.ReadRequest, volumeId: this.volumeId, requestId, offset: op.offset, length: op.length });
    this.peerRequests.set(requestId, {
      reply: (message) => {
        if (message.type !== MessageType.ReadReply) return this.protocolError("expected ReadReply");
        if (message.status !== WireStatus.Ok || message.data.length !== op.length) return this.completeClient(op, "EIO", "the peer could not serve the read");
        op.target!.set(message.data);
        this.completeClient(op, null);
      },
      resend: send,
      lost: () => {
        if (this.localValid(op.offset, op.length)) {
          this.queue.unshift(op);
          this.pump();
        } else this.completeClient(op, "EIO", "the link to the peer was lost during a read the peer had to serve");
      },
    });
    send();
  }

  private startFlush(op: ClientOp): "started" {
    const mirror = this.mayWrite && this.mirroring();
    op.peerPending = mirror;
    op.mirrored = mirror;
    const finish = () => {
      if (!op.localDone || op.peerPending) return;
      if (op.localError || op.peerError) return this.completeClient(op, op.localError ?? "EIO", op.localError ? "local flush failed" : "the peer failed to flush");
      if (this.mayWrite && (!op.mirrored || op.peerLost) && this.bitmap.setCount > 0 && this.dataState === DataState.Consistent) {
        // Durable here only: the peer lacks data we promise is durable, so this is a new generation.
        this.ensureAlone((error) => this.completeClient(op, error ? "EIO" : null, error ? "could not record the new generation" : undefined, false));
        return;
      }
      this.completeClient(op, null, undefined, op.mirrored && !op.peerLost);
    };
    this.storage({ kind: "storageFlush", volumeId: this.volumeId, io: 0 }, (error) => {
      op.localDone = true;
      op.localError = error;
      finish();
    });
    if (mirror) {
      this.barrier(
        (ok) => {
          op.peerPending = false;
          if (!ok) op.peerError = true;
          finish();
        },
        () => {
          op.peerPending = false;
          op.peerLost = true;
          finish();
        },
      );
    }
    return "started";
  }

  /**
   * Flush the peer's storage. Writes it acknowledged before now are durable there once the answer
   * comes, so they leave the transfer log. `done(false)` when the peer's flush failed.
   */
  private barrier(done: (ok: boolean) => void, lost?: () => void): void {
    const covered = this.transferLog;
    this.transferLog = new Set();
    this.lastBarrierTick = this.host.now();
    const requestId = this.nextPeerRequest++;
    this.barriers.set(requestId, covered);
    const send = () => this.host.send({ type: MessageType.Flush, volumeId: this.volumeId, requestId });
    this.peerRequests.set(requestId, {
      reply: (message) => {
        if (message.type !== MessageType.FlushAck) return this.protocolError("expected FlushAck");
        this.barriers.delete(requestId);
        if (message.status !== WireStatus.Ok) {
          for (const granule of covered) this.transferLog.add(granule);
          done(false);
        } else done(true);
      },
      resend: send,
      lost: () => {
        // markTransferLogDirty (called first on link loss) has marked `covered` already.
        this.barriers.delete(requestId);
        (lost ?? (() => done(false)))();
      },
    });
    send();
  }

  private transferLogAdd(offset: number, length: number): void {
    const first = Math.floor(offset / this.granuleBytes);
    const last = Math.ceil((offset + length) / this.granuleBytes);
    for (let granule = first; granule < last; granule++) this.transferLog.add(granule);
    if (this.transferLog.size >= this.config.transferLogGranulesMax) this.barrier(() => {});
  }

  private markTransferLogDirty(): void {
    if (this.config.bugs.forgetTransferLog) {
      this.transferLog = new Set();
      this.barriers.clear();
      return;
    }
    const mark = (granules: Set<number>) => {
      for (const granule of granules) this.bitmap.setRange(granule, Math.min(granule + 1, this.layout.bitCount));
    };
    mark(this.transferLog);
    for (const granules of this.barriers.values()) mark(granules);
    this.transferLog = new Set();
  }

  /** Mark a byte range as possibly different from the peer. */
  private markDirty(offset: number, length: number): void {
    const first = Math.floor(offset / this.granuleBytes);
    const last = Math.min(this.layout.bitCount, Math.ceil((offset + length) / this.granuleBytes));
    if (first >= last) return;
    this.bitmap.setRange(first, last);
    this.resync?.remarked.push({ start: first, length: last - first });
  }

  /** Make sure this node is on a generation of its own before it completes anything alone. */
  private ensureAlone(done: (error: IoError | null) => void): void {
    if (this.generations.bitmapBase !== noGeneration) return done(null);
    if (this.dataState !== DataState.Consistent) return done("EIO"); // only complete data may go on alone
    if (this.aloneWaiters) {
      this.aloneWaiters.push(done);
      return;
    }
    this.aloneWaiters = [done];
    const before = this.superblock.generations;
    const after = startAlone(before, this.host.randomId(), replicaGenerationHistoryLength);
    this.superblock.generations = after;
    this.persist({ superblock: true, pages: false }, (error) => {
      const waiters = this.aloneWaiters ?? [];
      this.aloneWaiters = undefined;
      if (error) this.superblock.generations = before;
      else this.report({ kind: "generationStarted", volumeId: this.volumeId, current: formatGeneration(after.current), base: formatGeneration(after.bitmapBase) });
      const redecide = this.redecideAfterPersist;
      this.redecideAfterPersist = false;
      if (this.linkUp && this.opened) this.sendHello(redecide); // our generation changed
      this.maybeDecide();
      for (const waiter of waiters) waiter(error);
    });
  }

  // ---------------------------------------------------------------- activity log

  private activityTransaction(wanted: number[], protect: Set<number>): void {
    if (this.activityBusy) return;
    if (wanted.some((extent) => this.evicting.has(extent))) return; // after the eviction in progress
    const plan = this.activityLog.plan(wanted, protect);
    if (!plan || (plan.add.length === 0 && plan.evict.length === 0)) return;
    this.activityBusy = true;
    for (const extent of plan.evict) this.evicting.add(extent);
    const fail = (error: IoError) => {
      for (const extent of plan.evict) this.evicting.delete(extent);
      this.activityBusy = false;
      this.report({ kind: "ioError", volumeId: this.volumeId, what: "activity-log transaction", error });
      // Writes waiting for these extents fail rather than wait for a disk that refuses metadata.
      for (const op of this.queue) {
        if (op.source === "client" && op.kind !== "read" && op.kind !== "flush" && (this.activityLog.missing(op.offset, op.length).length > 0 || this.touchesEvicting(op.offset, op.offset + op.length))) {
          this.completeClient(op, "EIO", "could not record the activity log");
        }
      }
      this.queue = this.queue.filter((op) => op.source === "peer" || !op.completed);
      this.tryFinishClose();
    };
    const commit = () => {
      const sequence = this.activityLog.sequence + 1;
      this.persist({ superblock: false, pages: false, activityLog: { plan, extents: this.activityLog.after(plan), sequence } }, (error) => {
        if (error) return fail(error);
        this.activityLog.commit(plan, sequence);
        for (const extent of plan.evict) this.evicting.delete(extent);
        this.activityBusy = false;
        this.pump();
        this.tryFinishClose();
      });
    };
    if (plan.evict.length === 0) return commit();
    // Eviction: every write completed so far must be durable on both nodes, and the bitmap bits of
    // writes made alone must be on disk, before the log stops covering the evicted extents.
    let pending = 1;
    let failed: IoError | null = null;
    const step = (error: IoError | null) => {
      if (error) failed = error;
      if (--pending > 0) return;
      if (failed) return fail(failed);
      this.persist({ superblock: false, pages: true }, (pagesError) => (pagesError ? fail(pagesError) : commit()));
    };
    if (this.mirroring() && (this.transferLog.size > 0 || this.barriers.size > 0)) {
      pending++;
      this.barrier((ok) => step(ok ? null : "EIO"), () => step(null));
    }
    this.storage({ kind: "storageFlush", volumeId: this.volumeId, io: 0 }, step);
  }

  // ---------------------------------------------------------------- persistence

  private persist(what: { superblock: boolean; pages: boolean; activityLog?: PersistJob["activityLog"] }, callback: (error: IoError | null) => void): void {
    const last = this.persistQueue[this.persistQueue.length - 1];
    if (last && !last.activityLog && !what.activityLog) {
      last.superblock ||= what.superblock;
      last.pages ||= what.pages;
      last.callbacks.push(callback);
    } else {
      this.persistQueue.push({ superblock: what.superblock, pages: what.pages, activityLog: what.activityLog, callbacks: [callback] });
    }
    this.runPersist();
  }

  private runPersist(): void {
    if (this.persistBusy) return;
    const job = this.persistQueue.shift();
    if (!job) return;
    this.persistBusy = true;
    const writes: MetadataWrite[] = [];
    const pages = job.pages ? this.bitmap.takeDirtyPages() : [];
    for (const page of pages) writes.push(bitmapPageWrite(this.layout, this.bitmap, page));
    if (job.activityLog) writes.push(activityLogWrite(this.layout, { sequence: job.activityLog.sequence, extentBytes: this.activityLog.extentBytes, extents: job.activityLog.extents }));
    let sequence = this.superblock.sequence;
    if (job.superblock) {
      sequence++;
      writes.push(superblockWrite({ ...this.superblock, sequence }));
    }
    if (writes.length === 0) {
      this.persistBusy = false;
      for (const callback of job.callbacks) callback(null);
      this.runPersist();
      return;
    }
    const io = this.nextIo++;
    this.ioHandlers.set(io, (error) => {
      this.persistBusy = false;
      if (error) this.bitmap.markPagesDirty(pages);
      if (job.superblock) this.superblock.sequence = sequence; // a failed slot is skipped, never reused
      for (const callback of job.callbacks) callback(error);
      this.runPersist();
      this.tryFinishClose();
    });
    this.host.emit({ kind: "metadataWrite", volumeId: this.volumeId, io, writes, flush: true });
  }

  metadataDone(io: number, error: IoError | null): void {
    this.storageDone(io, error);
  }

  private storage(action: CoreAction & { io: number }, done: (error: IoError | null) => void): void {
    const io = this.nextIo++;
    this.ioHandlers.set(io, done);
    this.host.emit({ ...action, io } as CoreAction);
  }

  // ---------------------------------------------------------------- negotiation

  private ownState(): ReplicaState {
    return { nodeId: this.host.nodeId, generations: this.generations, dataState: this.dataState, mayWrite: this.mayWrite, bitsSet: this.bitmap.setCount };
  }

  /**
   * Tell the peer our replica's state. `redecide`: we want a new decision (our role changed, or
   * regions went out of sync); otherwise the peer just learns a state change a decision caused.
   * Every change of data state or generations is announced, so the deciding node never decides on
   * a state we have left.
   */
  private sendHello(redecide: boolean): void {
    if (this.aloneWaiters) {
      // A new generation is being persisted: announce it once it is on disk, never before.
      this.redecideAfterPersist ||= redecide;
      return;
    }
    this.helloSeq++;
    if (redecide) this.redecideHelloSeq = this.helloSeq;
    this.host.send({
      type: MessageType.VolumeHello,
      volumeId: this.volumeId,
      requestId: 0,
      seq: this.helloSeq,
      sizeBytes: this.sizeBytes,
      granuleBytes: this.granuleBytes,
      generations: this.generations,
      dataState: this.dataState,
      mayWrite: this.mayWrite,
      bitsSet: this.bitmap.setCount,
      redecide,
    });
  }

  private get isDecider(): boolean {
    return this.host.nodeId < this.host.peerNodeId;
  }

  /** Ask for a fresh decision (our state changed in a way that matters to the peer). */
  private requestRedecide(): void {
    if (!this.linkUp || !this.opened) return;
    if (this.isDecider) {
      this.decideWanted = true;
      this.maybeDecide();
    } else this.sendHello(true);
  }

  private maybeDecide(): void {
    if (!this.isDecider || !this.linkUp || !this.opened || !this.peerHello || !this.decideWanted || this.closed) return;
    if (this.aloneWaiters) return; // decide on generations that are on disk (called again after)
    this.decideWanted = false;
    const peer = this.peerHello;
    const local = this.ownState();
    const peerState: ReplicaState = { nodeId: this.host.peerNodeId, generations: peer.generations, dataState: peer.dataState, mayWrite: peer.mayWrite, bitsSet: peer.bitsSet };
    let decision: Decision;
    let byOperator = false;
    if (peer.sizeBytes !== this.sizeBytes || peer.granuleBytes !== this.granuleBytes) {
      decision = { kind: "unrelated", reason: `volume geometry differs: local ${this.sizeBytes} bytes / ${this.granuleBytes}-byte granules, peer ${peer.sizeBytes} / ${peer.granuleBytes}` };
      return this.sendAndApply(peer.seq, DecisionKind.Mismatch, false, false, false, decision.reason);
    }
    decision = decide(local, peerState);
    if ((decision.kind === "splitBrain" || decision.kind === "unrelated") && this.splitBrainKeeper) {
      const keeper = this.splitBrainKeeper;
      const victimMayWrite = keeper === "local" ? peer.mayWrite : local.mayWrite;
      if (victimMayWrite) {
        this.report({ kind: "notice", volumeId: this.volumeId, message: "split brain resolution waits: the node whose changes are discarded still holds the write grant (demote it first)" });
      } else {
        const full = decision.kind === "unrelated" || decision.full;
        decision = { kind: "resync", source: keeper, full, reason: `operator resolved the ${decision.kind === "splitBrain" ? "split brain" : "unrelated data"}: ${keeper === "local" ? this.host.nodeId : this.host.peerNodeId} keeps its data` };
        this.splitBrainKeeper = undefined;
        byOperator = true;
      }
    }
    if (decision.kind !== "splitBrain" && decision.kind !== "unrelated" && local.mayWrite && peer.mayWrite) {
      return this.sendAndApply(peer.seq, DecisionKind.Mismatch, false, false, false, "both nodes hold the write grant for this volume: IO waits until one is demoted");
    }
    switch (decision.kind) {
      case "inSync":
        return this.sendAndApply(peer.seq, DecisionKind.InSync, false, false, false, decision.reason);
      case "resync": {
        const sourceIsLocal = decision.source === "local";
        // The primary leads (it alone originates writes, so its range locks order everything);
        // with no primary, the source leads.
        const leaderIsLocal = local.mayWrite !== peerState.mayWrite ? local.mayWrite : sourceIsLocal;
        return this.sendAndApply(peer.seq, DecisionKind.Resync, sourceIsLocal, leaderIsLocal, decision.full, decision.reason, byOperator);
      }
      case "splitBrain":
        return this.sendAndApply(peer.seq, DecisionKind.SplitBrain, false, false, decision.full, decision.reason);
      case "unrelated":
        return this.sendAndApply(peer.seq, DecisionKind.Unrelated, false, false, true, decision.reason);
      case "noGoodData":
        return this.sendAndApply(peer.seq, DecisionKind.NoGoodData, false, false, false, decision.reason);
      default:
        unreachable(decision);
    }
  }

  private sendAndApply(followerHelloSeq: number, kind: DecisionKind, deciderIsSource: boolean, deciderLeads: boolean, full: boolean, reason: string, byOperator = false): void {
    const round = ++this.decisionRounds;
    const message: VolumeDecisionMessage = { type: MessageType.VolumeDecision, volumeId: this.volumeId, requestId: 0, followerHelloSeq, round, kind, deciderIsSource, deciderLeads, full, byOperator, reason };
    this.host.send(message);
    this.applyDecision(kind, round, deciderIsSource, deciderLeads, full, reason, byOperator);
  }

  private applyDecision(kind: DecisionKind, round: number, localIsSource: boolean, localLeads: boolean, full: boolean, reason: string, byOperator: boolean): void {
    const peerBits = this.peerHello?.bitsSet ?? 0;
    this.abortResync();
    this.report({
      kind: "decision",
      volumeId: this.volumeId,
      decision: ["inSync", "resync", "splitBrain", "unrelated", "noGoodData", "mismatch"][kind] ?? String(kind),
      sourceIsLocal: kind === DecisionKind.Resync ? localIsSource : undefined,
      full,
      reason,
      localBits: this.bitmap.setCount,
      peerBits,
      byOperator,
    });
    switch (kind) {
      case DecisionKind.InSync: {
        this.setPhase("replicating", "in sync");
        if (this.generations.bitmapBase !== noGeneration) {
          this.superblock.generations = finishAsSource(this.generations, replicaGenerationHistoryLength);
          this.persist({ superblock: true, pages: false }, (error) => {
            if (!error && this.linkUp) this.sendHello(false);
          });
        }
        this.report({ kind: "synced", volumeId: this.volumeId, current: formatGeneration(this.generations.current), asTarget: false });
        break;
      }
      case DecisionKind.Resync:
        this.setPhase("replicating", localIsSource ? "resync source" : "resync target");
        this.beginResync(round, localIsSource, localLeads, full);
        break;
      case DecisionKind.SplitBrain:
        this.refuse("splitBrain", reason);
        this.report({ kind: "splitBrain", volumeId: this.volumeId, reason });
        break;
      case DecisionKind.Unrelated:
        this.refuse("unrelated", reason);
        break;
      case DecisionKind.NoGoodData:
        this.refuse("noGoodData", reason);
        break;
      case DecisionKind.Mismatch:
        this.refuse(reason.startsWith("both nodes hold") ? "dualPrimary" : "mismatch", reason);
        break;
    }
    this.pump();
  }

  private refuse(refusal: Refusal, reason: string): void {
    this.refusal = refusal;
    this.setPhase("refused", reason);
  }

  private setPhase(phase: Phase, reason: string): void {
    this.phase = phase;
    this.phaseReason = reason;
    if (phase !== "refused") this.refusal = undefined;
  }

  /** Operator: resolve a split brain (or unrelated data) by choosing whose data survives. */
  resolveSplitBrain(request: number, keep: "local" | "peer"): void {
    if (!this.linkUp || this.phase !== "refused" || (this.refusal !== "splitBrain" && this.refusal !== "unrelated")) {
      this.host.emit({ kind: "complete", request, error: "EINVAL", message: "the volume is not in split brain (or not connected to its peer)" });
      return;
    }
    if (keep === "peer" && this.mayWrite) {
      this.host.emit({ kind: "complete", request, error: "EPERM", message: "this node's changes would be discarded but it holds the write grant: demote it first" });
      return;
    }
    if (this.isDecider) {
      this.splitBrainKeeper = keep;
      this.decideWanted = true;
      this.maybeDecide();
    } else {
      this.host.send({ type: MessageType.SplitBrainResolve, volumeId: this.volumeId, requestId: 0, senderKeeps: keep === "local" });
    }
    this.host.emit({ kind: "complete", request, error: null, message: "resolution sent: the discarded side becomes the resync target" });
  }

  // ---------------------------------------------------------------- peer messages

  peerMessage(message: Message): void {
    if (this.closed && message.type !== MessageType.VolumeHello) return;
    switch (message.type) {
      case MessageType.VolumeHello:
        this.peerHello = message;
        if (this.phase === "absent") {
          // The peer did not have the volume when we said hello: say it again.
          this.setPhase("negotiating", "the peer opened the volume");
          if (this.opened) this.sendHello(true);
        }
        if (this.isDecider) {
          if (message.redecide || this.phase === "negotiating" || this.phase === "down") this.decideWanted = true;
          this.maybeDecide();
        } else if (this.phase === "down" || this.phase === "absent") this.setPhase("negotiating", "waiting for the decision");
        this.pump();
        return;
      case MessageType.VolumeDecision:
        if (this.isDecider) return this.protocolError("a decision from the node that does not decide");
        if (message.followerHelloSeq !== this.helloSeq) {
          // It answers a state of ours we have since left. When a later hello of ours already asked
          // for a decision, that answer is on its way; otherwise ask again with the current state.
          // (Asking again on every stale answer would keep two questions in flight for ever.)
          if (message.followerHelloSeq >= this.redecideHelloSeq) this.sendHello(true);
          return;
        }
        this.applyDecision(message.kind, message.round, message.kind === DecisionKind.Resync ? !message.deciderIsSource : false, message.kind === DecisionKind.Resync ? !message.deciderLeads : false, message.full, message.reason, message.byOperator);
        return;
      case MessageType.VolumeUnknown:
      case MessageType.VolumeClosed:
        this.abortResync();
        this.abortVerify("the peer closed the volume");
        this.markTransferLogDirty();
        this.peerHello = undefined;
        this.setPhase("absent", message.type === MessageType.VolumeUnknown ? "the peer does not have this volume" : "the peer closed this volume");
        if (message.type === MessageType.VolumeUnknown) this.report({ kind: "volumeUnknownOnPeer", volumeId: this.volumeId });
        this.pump();
        return;
      case MessageType.SplitBrainResolve:
        if (!this.isDecider) return this.protocolError("a resolution sent to the node that does not decide");
        this.splitBrainKeeper = message.senderKeeps ? "peer" : "local";
        this.decideWanted = true;
        this.maybeDecide();
        return;
      case MessageType.Write:
      case MessageType.Trim:
      case MessageType.Zero:
        return this.peerWrite(message);
      case MessageType.Flush: {
        const epoch = this.linkEpoch;
        this.storage({ kind: "storageFlush", volumeId: this.volumeId, io: 0 }, (error) => {
          if (epoch === this.linkEpoch) this.host.send({ type: MessageType.FlushAck, volumeId: this.volumeId, requestId: message.requestId, status: errorToStatus(error) });
        });
        return;
      }
      case MessageType.ReadRequest: {
        const epoch = this.linkEpoch;
        if (message.offset + message.length > this.sizeBytes || !this.localValid(message.offset, message.length)) {
          this.host.send({ type: MessageType.ReadReply, volumeId: this.volumeId, requestId: message.requestId, status: WireStatus.Refused, data: new Uint8Array(0) });
          return;
        }
        const target = new Uint8Array(message.length);
        this.storage({ kind: "storageRead", volumeId: this.volumeId, io: 0, offset: message.offset, target }, (error) => {
          if (epoch !== this.linkEpoch) return;
          this.host.send({ type: MessageType.ReadReply, volumeId: this.volumeId, requestId: message.requestId, status: errorToStatus(error), data: error ? new Uint8Array(0) : target });
        });
        return;
      }
      case MessageType.BitmapRuns:
      case MessageType.BitmapDone:
      case MessageType.ResyncReady:
      case MessageType.ResyncProgress:
      case MessageType.ResyncComplete:
      case MessageType.ResyncCompleteAck:
      case MessageType.ResyncRequest:
      case MessageType.ResyncData:
      case MessageType.ResyncFlush:
        return this.resyncMessage(message);
      case MessageType.VerifyRequest:
        return this.verifyRequest(message);
      case MessageType.RepairData:
        return this.repairData(message);
      case MessageType.WriteAck:
      case MessageType.FlushAck:
      case MessageType.ReadReply:
      case MessageType.ResyncAck:
      case MessageType.ResyncFlushAck:
      case MessageType.VerifyReply:
      case MessageType.RepairAck: {
        const request = this.peerRequests.get(message.requestId);
        if (!request) return this.protocolError(`answer to unknown request ${message.requestId} (type ${message.type})`);
        this.peerRequests.delete(message.requestId);
        request.reply(message);
        return;
      }
      case MessageType.Nack: {
        const request = this.peerRequests.get(message.requestId);
        if (!request) return this.protocolError(`resend request for unknown request ${message.requestId}`);
        request.resend();
        return;
      }
      default:
        return this.protocolError(`message type ${message.type} is not a volume message`);
    }
  }

  /** A frame for this volume arrived with a payload that failed its checksum. */
  corruptFrame(type: number, requestId: number): void {
    if (type === MessageType.Write || type === MessageType.Trim || type === MessageType.Zero || type === MessageType.RepairData || type === MessageType.ResyncData && !this.resync?.localLeads) {
      // Never written: ask for it again.
      this.host.send({ type: MessageType.Nack, volumeId: this.volumeId, requestId, corruptType: type });
      return;
    }
    const request = this.peerRequests.get(requestId);
    if (request && (type === MessageType.ReadReply || type === MessageType.ResyncData || type === MessageType.VerifyReply)) {
      // An answer to us was damaged: ask again (the request is idempotent).
      request.resend();
      return;
    }
    this.protocolError(`corrupt frame of type ${type} that cannot be retried`);
  }

  private protocolError(reason: string): void {
    this.host.emit({ kind: "report", report: { kind: "protocolError", reason: `volume ${this.volumeId}: ${reason}` } });
    this.onProtocolError?.(reason);
  }

  /** Set by the node core: a protocol violation drops the link. */
  onProtocolError: ((reason: string) => void) | undefined;

  private peerWrite(message: Extract<Message, { type: MessageType.Write | MessageType.Trim | MessageType.Zero }>): void {
    const length = message.type === MessageType.Write ? message.data.length : message.length;
    if (this.mayWrite || message.offset + length > this.sizeBytes) {
      this.host.send({ type: MessageType.WriteAck, volumeId: this.volumeId, requestId: message.requestId, status: WireStatus.Refused });
      if (this.mayWrite) this.report({ kind: "notice", volumeId: this.volumeId, message: "refused a write from the peer: this node holds the write grant" });
      return;
    }
    const op: PeerOp = {
      source: "peer",
      kind: message.type === MessageType.Write ? "write" : message.type === MessageType.Trim ? "trim" : "zero",
      requestId: message.requestId,
      offset: message.offset,
      length,
      data: message.type === MessageType.Write ? message.data : undefined,
      fua: message.fua,
      noHole: message.type === MessageType.Write ? false : message.noHole,
      zero: false,
      round: 0,
      linkEpoch: this.linkEpoch,
      rangeId: 0,
    };
    this.incoming.set(message.requestId, op);
    this.queue.push(op);
    this.pump();
  }

  private startPeerOp(op: PeerOp): void {
    op.rangeId = this.ranges.hold(op.offset, op.offset + op.length, "peer");
    const epoch = op.linkEpoch;
    const done = (error: IoError | null) => {
      this.ranges.release(op.rangeId);
      if (op.kind === "resync") this.resyncWriteDone(op, error);
      else if (epoch === this.linkEpoch) {
        this.incoming.delete(op.requestId);
        this.host.send({ type: MessageType.WriteAck, volumeId: this.volumeId, requestId: op.requestId, status: errorToStatus(error) });
      }
      this.pump();
    };
    const volumeId = this.volumeId;
    if (op.kind === "write") this.storage({ kind: "storageWrite", volumeId, io: 0, offset: op.offset, data: op.data!, fua: op.fua }, done);
    else if (op.kind === "trim") this.storage({ kind: "storageTrim", volumeId, io: 0, offset: op.offset, length: op.length, fua: op.fua }, done);
    else if (op.kind === "zero" || op.zero) this.storage({ kind: "storageZero", volumeId, io: 0, offset: op.offset, length: op.length, fua: op.fua, noHole: op.noHole }, done);
    else this.storage({ kind: "storageWrite", volumeId, io: 0, offset: op.offset, data: op.data!, fua: false }, done);
  }

  // ---------------------------------------------------------------- resync

  private beginResync(round: number, localIsSource: boolean, localLeads: boolean, full: boolean): void {
    const resync: ResyncRound = {
      round,
      localIsSource,
      localLeads,
      full,
      stage: "exchange",
      sentDone: false,
      peerDone: false,
      peerReady: false,
      peerRuns: [],
      cursor: 0,
      passHadFailures: false,
      passSkipped: false,
      nextPassTick: 0,
      chunks: new Set(),
      doneRuns: [],
      remarked: [],
      checkpointBusy: false,
      bitsTotal: 0,
      bitsDone: 0,
      bytesCopied: 0,
      samples: [],
      completeSent: false,
    };
    this.resync = resync;
    if (full) {
      resync.sentDone = true;
      this.host.send({ type: MessageType.BitmapDone, volumeId: this.volumeId, requestId: 0, round });
    } else {
      const runs = this.bitmap.runs();
      for (let index = 0; index < runs.length; index += replicaBitmapRunsPerMessageMax) {
        this.host.send({ type: MessageType.BitmapRuns, volumeId: this.volumeId, requestId: 0, round, runs: runs.slice(index, index + replicaBitmapRunsPerMessageMax) });
      }
      resync.sentDone = true;
      this.host.send({ type: MessageType.BitmapDone, volumeId: this.volumeId, requestId: 0, round });
    }
    this.report({ kind: "resyncStarted", volumeId: this.volumeId, sourceIsLocal: localIsSource, bits: this.bitmap.setCount, full });
    this.exchangeProgress();
  }

  private exchangeProgress(): void {
    const resync = this.resync;
    if (!resync || resync.stage !== "exchange" || !resync.sentDone || !resync.peerDone) return;
    if (resync.full) this.bitmap.setAll();
    else if (this.config.bugs.skipDirtyUnion) {
      // Deliberately wrong (simulator bug switch): only the source's bitmap is copied.
      if (!resync.localIsSource) {
        this.bitmap.clearRange(0, this.bitmap.bitCount);
        this.bitmap.setRuns(resync.peerRuns);
      }
    } else this.bitmap.setRuns(resync.peerRuns);
    resync.peerRuns = [];
    resync.stage = "persisting";
    resync.bitsTotal = this.bitmap.setCount;
    if (!resync.localIsSource) this.superblock.dataState = DataState.Inconsistent;
    this.superblock.resync = { active: true, target: !resync.localIsSource, bitsTotal: resync.bitsTotal, bitsDone: 0 };
    // The source's copy of what it is about to send may still sit in its volatile cache (writes it
    // received as a secondary, an earlier resync): were it to crash after the target made that copy
    // durable, the source would lose it and nothing would mark the region dirty. So the source
    // makes its data durable first; what it writes afterwards is covered by the activity log or the
    // primary's transfer log as usual.
    let pending = resync.localIsSource ? 2 : 1;
    let failure: IoError | null = null;
    const step = (error: IoError | null) => {
      failure ??= error;
      if (--pending > 0 || this.resync !== resync) return;
      if (failure) {
        this.report({ kind: "ioError", volumeId: this.volumeId, what: "preparing the resync (work list or source flush)", error: failure });
        this.abortResync();
        this.requestRedecide();
        return;
      }
      resync.stage = "ready";
      if (!resync.localIsSource) this.sendHello(false); // we are inconsistent now
      this.host.send({ type: MessageType.ResyncReady, volumeId: this.volumeId, requestId: 0, round: resync.round });
      this.startRunning();
    };
    this.persist({ superblock: true, pages: true }, step);
    if (resync.localIsSource) this.storage({ kind: "storageFlush", volumeId: this.volumeId, io: 0 }, step);
    this.pump();
  }

  private startRunning(): void {
    const resync = this.resync;
    if (!resync || resync.stage !== "ready" || !resync.peerReady) return;
    resync.stage = "running";
    if (resync.localLeads) this.resyncPump();
  }

  private abortResync(): void {
    const resync = this.resync;
    if (!resync) return;
    this.resync = undefined;
    // Chunks in flight keep their range until their IO finishes; their bits stay set.
    if (this.superblock.resync.active) {
      this.superblock.resync = { ...this.superblock.resync, bitsDone: this.superblock.resync.bitsDone + resync.bitsDone };
    }
  }

  private resyncMessage(message: Message): void {
    const resync = this.resync;
    const stale = (round: number) => !resync || resync.round !== round;
    switch (message.type) {
      case MessageType.BitmapRuns:
        if (stale(message.round) || resync!.stage !== "exchange") return;
        for (const run of message.runs) {
          if (run.start + run.length > this.bitmap.bitCount) return this.protocolError("bitmap run beyond the volume");
          resync!.peerRuns.push(run);
        }
        return;
      case MessageType.BitmapDone:
        if (stale(message.round) || resync!.stage !== "exchange") return;
        resync!.peerDone = true;
        this.exchangeProgress();
        return;
      case MessageType.ResyncReady:
        if (stale(message.round)) return;
        resync!.peerReady = true;
        this.startRunning();
        return;
      case MessageType.ResyncProgress:
        if (stale(message.round) || resync!.localLeads) return;
        for (const run of message.runs) if (run.start + run.length > this.bitmap.bitCount) return this.protocolError("progress run beyond the volume");
        this.bitmap.clearRuns(message.runs);
        for (const run of message.runs) resync!.bitsDone += run.length;
        return;
      case MessageType.ResyncFlush: {
        const epoch = this.linkEpoch;
        const round = message.round;
        this.storage({ kind: "storageFlush", volumeId: this.volumeId, io: 0 }, (error) => {
          if (epoch === this.linkEpoch) this.host.send({ type: MessageType.ResyncFlushAck, volumeId: this.volumeId, requestId: message.requestId, round, offset: 0, status: errorToStatus(error) });
        });
        return;
      }
      case MessageType.ResyncRequest: {
        // We are the source of a resync the peer (the primary) leads: read and send.
        const epoch = this.linkEpoch;
        const reply = (status: WireStatus, zero: boolean, data: Uint8Array) =>
          this.host.send({ type: MessageType.ResyncData, volumeId: this.volumeId, requestId: message.requestId, round: message.round, offset: message.offset, length: message.length, zero, status, data });
        if (stale(message.round) || !resync!.localIsSource || message.offset + message.length > this.sizeBytes || message.length > this.config.resyncChunkBytesMax) {
          reply(WireStatus.Refused, false, new Uint8Array(0));
          return;
        }
        const target = new Uint8Array(message.length);
        this.storage({ kind: "storageRead", volumeId: this.volumeId, io: 0, offset: message.offset, target }, (error) => {
          if (epoch !== this.linkEpoch) return;
          if (error) return reply(errorToStatus(error), false, new Uint8Array(0));
          const zero = isAllZero(target);
          reply(WireStatus.Ok, zero, zero ? new Uint8Array(0) : target);
        });
        return;
      }
      case MessageType.ResyncData: {
        if (resync?.localLeads && this.peerRequests.has(message.requestId)) {
          const request = this.peerRequests.get(message.requestId)!;
          this.peerRequests.delete(message.requestId);
          request.reply(message);
          return;
        }
        // We are the target of a resync the peer pushes.
        const refuse = () => this.host.send({ type: MessageType.ResyncAck, volumeId: this.volumeId, requestId: message.requestId, round: message.round, offset: message.offset, status: WireStatus.Refused });
        if (stale(message.round) || resync!.localIsSource || resync!.localLeads || this.mayWrite || message.status !== WireStatus.Ok || message.offset + message.length > this.sizeBytes) return refuse();
        const op: PeerOp = {
          source: "peer",
          kind: "resync",
          requestId: message.requestId,
          offset: message.offset,
          length: message.length,
          data: message.zero ? undefined : message.data,
          fua: false,
          noHole: false,
          zero: message.zero,
          round: message.round,
          linkEpoch: this.linkEpoch,
          rangeId: 0,
        };
        this.queue.push(op);
        this.pump();
        return;
      }
      case MessageType.ResyncComplete: {
        // From the leader: as the target, adopt its generation; as the source, record the end.
        if (stale(message.round) || resync!.localLeads) return;
        const round = message.round;
        this.finishResyncLocally(message.sourceCurrent, (error) => {
          if (error) return;
          this.host.send({ type: MessageType.ResyncCompleteAck, volumeId: this.volumeId, requestId: 0, round, sourceCurrent: this.generations.current });

        });
        return;
      }
      case MessageType.ResyncCompleteAck: {
        // To the leader. A leading target adopts now (its source has recorded the end).
        if (stale(message.round) || !resync!.localLeads || resync!.localIsSource) return;
        this.finishResyncLocally(message.sourceCurrent, () => {});
        return;
      }
      default:
        return this.protocolError(`unexpected resync message ${message.type}`);
    }
  }

  private resyncWriteDone(op: PeerOp, error: IoError | null): void {
    if (op.linkEpoch !== this.linkEpoch) return;
    this.host.send({ type: MessageType.ResyncAck, volumeId: this.volumeId, requestId: op.requestId, round: op.round, offset: op.offset, status: errorToStatus(error) });
  }

  /** Leader: issue chunks within the window and the rate budget; checkpoint; finish. */
  private resyncPump(): void {
    const resync = this.resync;
    if (!resync || resync.stage !== "running" || !resync.localLeads || !this.linkUp) return;
    const now = this.host.now();
    const clientBusy = this.running.size > 0 || this.queue.some((op) => op.source === "client");
    const window = clientBusy ? 1 : this.config.resyncWindowChunks;
    const chunkGranules = Math.max(1, Math.floor(this.config.resyncChunkBytesMax / this.granuleBytes));
    while (resync.chunks.size < window && this.resyncTokens > 0 && resync.cursor < this.bitmap.bitCount && now >= resync.nextPassTick) {
      const startBit = this.bitmap.nextSet(resync.cursor);
      if (startBit === -1) {
        resync.cursor = this.bitmap.bitCount;
        break;
      }
      const endBit = Math.min(this.bitmap.nextClear(startBit), startBit + chunkGranules);
      resync.cursor = endBit;
      const offset = startBit * this.granuleBytes;
      const length = Math.min(endBit * this.granuleBytes, this.sizeBytes) - offset;
      if (this.ranges.conflicts(offset, offset + length)) {
        resync.passSkipped = true; // client IO there: leave it for the next pass
        continue;
      }
      const chunk: Chunk = { startBit, endBit, offset, length, rangeId: this.ranges.hold(offset, offset + length, "resync") };
      resync.chunks.add(chunk);
      this.resyncTokens -= length;
      if (resync.localIsSource) this.pushChunk(resync, chunk);
      else this.pullChunk(resync, chunk);
    }
    this.resyncCheckpoint(false);
    if (resync.cursor >= this.bitmap.bitCount && resync.chunks.size === 0 && !resync.checkpointBusy && resync.doneRuns.length === 0) {
      if (this.bitmap.setCount === 0) return this.completeResync(resync);
      // Another pass for what failed, was skipped, or was marked again meanwhile.
      resync.cursor = 0;
      if (resync.passHadFailures) resync.nextPassTick = now + this.config.resyncRetryDelayTicks;
      resync.passHadFailures = false;
      resync.passSkipped = false;
    }
  }

  private chunkFinished(resync: ResyncRound, chunk: Chunk, ok: boolean): void {
    this.ranges.release(chunk.rangeId);
    resync.chunks.delete(chunk);
    if (this.resync !== resync) {
      this.pump();
      return;
    }
    if (ok) {
      resync.doneRuns.push({ start: chunk.startBit, length: chunk.endBit - chunk.startBit });
      resync.bytesCopied += chunk.length;
      resync.samples.push({ tick: this.host.now(), bytes: chunk.length });
      const horizon = this.host.now() - this.config.rateWindowTicks;
      while (resync.samples.length > 0 && resync.samples[0]!.tick < horizon) resync.samples.shift();
    } else resync.passHadFailures = true;
    this.resyncPump();
    this.pump();
  }

  private pushChunk(resync: ResyncRound, chunk: Chunk): void {
    const data = new Uint8Array(chunk.length);
    this.storage({ kind: "storageRead", volumeId: this.volumeId, io: 0, offset: chunk.offset, target: data }, (error) => {
      if (error || this.resync !== resync || !this.linkUp) {
        if (error) this.report({ kind: "ioError", volumeId: this.volumeId, what: `resync read at ${chunk.offset}`, error });
        return this.chunkFinished(resync, chunk, false);
      }
      const zero = isAllZero(data);
      const requestId = this.nextPeerRequest++;
      const send = () =>
        this.host.send({ type: MessageType.ResyncData, volumeId: this.volumeId, requestId, round: resync.round, offset: chunk.offset, length: chunk.length, zero, status: WireStatus.Ok, data: zero ? new Uint8Array(0) : data });
      this.peerRequests.set(requestId, {
        reply: (message) => {
          if (message.type !== MessageType.ResyncAck) return this.protocolError("expected ResyncAck");
          this.chunkFinished(resync, chunk, message.status === WireStatus.Ok);
        },
        resend: send,
        lost: () => this.chunkFinished(resync, chunk, false),
      });
      send();
    });
  }

  private pullChunk(resync: ResyncRound, chunk: Chunk): void {
    const requestId = this.nextPeerRequest++;
    const send = () => this.host.send({ type: MessageType.ResyncRequest, volumeId: this.volumeId, requestId, round: resync.round, offset: chunk.offset, length: chunk.length });
    this.peerRequests.set(requestId, {
      reply: (message) => {
        if (message.type !== MessageType.ResyncData) return this.protocolError("expected ResyncData");
        const data = message as ResyncDataMessage;
        if (data.status !== WireStatus.Ok || data.offset !== chunk.offset || data.length !== chunk.length) return this.chunkFinished(resync, chunk, false);
        const done = (error: IoError | null) => {
          if (error) this.report({ kind: "ioError", volumeId: this.volumeId, what: `resync write at ${chunk.offset}`, error });
          this.chunkFinished(resync, chunk, error === null);
        };
        if (data.zero) this.storage({ kind: "storageZero", volumeId: this.volumeId, io: 0, offset: chunk.offset, length: chunk.length, fua: false, noHole: false }, done);
        else this.storage({ kind: "storageWrite", volumeId: this.volumeId, io: 0, offset: chunk.offset, data: data.data, fua: false }, done);
      },
      resend: send,
      lost: () => this.chunkFinished(resync, chunk, false),
    });
    send();
  }

  /** Make copied chunks durable on the target, then clear their bits on both sides. */
  private resyncCheckpoint(force: boolean): void {
    const resync = this.resync;
    if (!resync || resync.checkpointBusy || resync.doneRuns.length === 0) return;
    const passEnded = resync.cursor >= this.bitmap.bitCount && resync.chunks.size === 0;
    if (!force && !passEnded && resync.doneRuns.length < this.config.resyncCheckpointChunks) return;
    const runs = resync.doneRuns;
    const remarkedBefore = resync.remarked.length;
    resync.doneRuns = [];
    resync.checkpointBusy = true;
    const cleared = () => {
      resync.checkpointBusy = false;
      if (this.resync !== resync) return;
      // Regions marked again after their chunk was copied stay dirty.
      const remarked = resync.remarked.splice(0, remarkedBefore);
      this.bitmap.clearRuns(runs);
      this.bitmap.setRuns(remarked);
      this.bitmap.setRuns(resync.remarked);
      let bits = 0;
      for (const run of runs) bits += run.length;
      resync.bitsDone += bits;
      this.superblock.resync = { ...this.superblock.resync, bitsDone: resync.bitsDone };
      for (let index = 0; index < runs.length; index += replicaBitmapRunsPerMessageMax) {
        this.host.send({ type: MessageType.ResyncProgress, volumeId: this.volumeId, requestId: 0, round: resync.round, runs: runs.slice(index, index + replicaBitmapRunsPerMessageMax) });
      }
      this.resyncPump();
    };
    const failed = () => {
      resync.checkpointBusy = false;
      resync.passHadFailures = true;
      this.resyncPump();
    };
    if (resync.localIsSource) {
      const requestId = this.nextPeerRequest++;
      const send = () => this.host.send({ type: MessageType.ResyncFlush, volumeId: this.volumeId, requestId, round: resync.round });
      this.peerRequests.set(requestId, {
        reply: (message) => {
          if (message.type !== MessageType.ResyncFlushAck) return this.protocolError("expected ResyncFlushAck");
          if (message.status === WireStatus.Ok) cleared();
          else failed();
        },
        resend: send,
        lost: failed,
      });
      send();
    } else {
      this.storage({ kind: "storageFlush", volumeId: this.volumeId, io: 0 }, (error) => (error ? failed() : cleared()));
    }
  }

  /**
   * The work list is empty. The source records the end first (its bitmap base becomes history, so
   * the next write it makes alone starts a new generation), then the target adopts the source's
   * generation. In the other order a source that died in between would keep writing alone under a
   * generation the target already shares, and a later split brain would go unseen.
   */
  private completeResync(resync: ResyncRound): void {
    if (resync.completeSent) return;
    resync.completeSent = true;
    resync.stage = "completing";
    if (resync.localIsSource) {
      this.finishResyncLocally(noGeneration, (error) => {
        if (!error) this.host.send({ type: MessageType.ResyncComplete, volumeId: this.volumeId, requestId: 0, round: resync.round, sourceCurrent: this.generations.current });
      });
    } else {
      // We lead as the target: the source records its side first and answers with its generation.
      this.host.send({ type: MessageType.ResyncComplete, volumeId: this.volumeId, requestId: 0, round: resync.round, sourceCurrent: noGeneration });
    }
  }

  /** Persist the end of a resync on this side: the target adopts, the source forgets its base. */
  private finishResyncLocally(sourceCurrent: bigint, done: (error: IoError | null) => void): void {
    const resync = this.resync;
    if (!resync) return;
    resync.stage = "completing";
    this.bitmap.clearRange(0, this.bitmap.bitCount);
    if (resync.localIsSource) {
      if (this.generations.current === noGeneration) {
        // Two new replicas: the source names the first generation both will share.
        this.superblock.generations = { ...this.generations, current: this.host.randomId() };
        this.superblock.dataState = DataState.Consistent;
      }
      this.superblock.generations = finishAsSource(this.generations, replicaGenerationHistoryLength);
    } else {
      if (sourceCurrent === noGeneration) return done("EIO");
      this.superblock.generations = finishAsTarget(this.generations, sourceCurrent, replicaGenerationHistoryLength);
      this.superblock.dataState = DataState.Consistent;
    }
    this.superblock.resync = { active: false, target: false, bitsTotal: 0, bitsDone: 0 };
    this.persist({ superblock: true, pages: true }, (error) => {
      if (this.resync !== resync) return done(error ?? "EIO");
      if (error) {
        this.report({ kind: "ioError", volumeId: this.volumeId, what: "recording the end of the resync", error });
        resync.stage = "running";
        resync.completeSent = false;
        this.requestRedecide();
        return done(error);
      }
      this.resyncFinished();
      done(null);
      if (this.linkUp) this.sendHello(false); // our generations changed
    });
  }

  private resyncFinished(): void {
    const resync = this.resync;
    if (!resync) return;
    this.resync = undefined;
    this.setPhase("replicating", "in sync");
    this.report({ kind: "synced", volumeId: this.volumeId, current: formatGeneration(this.generations.current), asTarget: !resync.localIsSource });

    if (this.decideWanted) this.maybeDecide();
    this.pump();
  }

  // ---------------------------------------------------------------- verify

  startVerify(request: number, repair: boolean): void {
    const fail = (message: string) => this.host.emit({ kind: "complete", request, error: "EINVAL", message });
    if (this.verify) return fail("a verify is already running on this volume");
    if (!this.mirroring() || this.resync) return fail("verify needs the peer connected and in sync (no resync running)");
    if (!this.mayWrite && this.peerHello?.mayWrite) return fail("run verify on the volume's primary node");
    const extentsTotal = Math.ceil(this.sizeBytes / this.config.verifyExtentBytes);
    const run: VerifyRun = { request, repair, round: ++this.verifyRounds, cursor: 0, busy: true, extentsTotal, extentsDone: 0, mismatches: [], mismatchCount: 0, repaired: 0 };
    this.verify = run;
    // Repairs copy from here: make this side's data durable first (see exchangeProgress).
    this.storage({ kind: "storageFlush", volumeId: this.volumeId, io: 0 }, (error) => {
      if (this.verify !== run) return;
      run.busy = false;
      if (error) return this.abortVerify("flushing the local replica failed");
      this.verifyPump();
    });
  }

  private verifyResult(run: VerifyRun, complete: boolean): VerifyResult {
    return { extentsCompared: run.extentsDone, mismatches: run.mismatches, mismatchCount: run.mismatchCount, repaired: run.repaired, complete };
  }

  private abortVerify(reason: string): void {
    const run = this.verify;
    if (!run) return;
    this.verify = undefined;
    this.host.emit({ kind: "complete", request: run.request, error: "EIO", message: `verify stopped: ${reason}`, result: this.verifyResult(run, false) });
  }

  private verifyPump(): void {
    const run = this.verify;
    if (!run || run.busy) return;
    if (run.cursor >= this.sizeBytes) {
      this.verify = undefined;
      this.host.emit({ kind: "complete", request: run.request, error: null, result: this.verifyResult(run, true) });
      return;
    }
    if (!this.mirroring() || this.resync) return this.abortVerify("the replicas are no longer in sync");
    if (this.resyncTokens <= 0 && this.running.size > 0) return; // client IO first; retried on the next tick
    const offset = run.cursor;
    const length = Math.min(this.config.verifyExtentBytes, this.sizeBytes - offset);
    if (this.ranges.conflicts(offset, offset + length)) return;
    run.busy = true;
    const rangeId = this.ranges.hold(offset, offset + length, "verify");
    const data = new Uint8Array(length);
    const finish = (advance: boolean) => {
      this.ranges.release(rangeId);
      run.busy = false;
      if (advance) {
        run.cursor += length;
        run.extentsDone++;
      }
      if (this.verify === run) this.verifyPump();
      this.pump();
      this.tryFinishClose();
    };
    this.storage({ kind: "storageRead", volumeId: this.volumeId, io: 0, offset, target: data }, (error) => {
      if (this.verify !== run) return finish(false);
      if (error) {
        this.report({ kind: "ioError", volumeId: this.volumeId, what: `verify read at ${offset}`, error });
        return finish(true);
      }
      const localCrc = checksum(data);
      const requestId = this.nextPeerRequest++;
      const send = () => this.host.send({ type: MessageType.VerifyRequest, volumeId: this.volumeId, requestId, round: run.round, offset, length });
      this.peerRequests.set(requestId, {
        reply: (message) => {
          if (message.type !== MessageType.VerifyReply) return this.protocolError("expected VerifyReply");
          if (message.status !== WireStatus.Ok) return finish(true);
          if (message.crc === localCrc) return finish(true);
          run.mismatchCount++;
          if (run.mismatches.length < replicaVerifyMismatchesReportedMax) run.mismatches.push({ offset, length });
          if (!run.repair) {
            this.report({ kind: "verifyMismatch", volumeId: this.volumeId, offset, length, repaired: false });
            return finish(true);
          }
          // Repair from this side (the primary, the up-to-date one) while the range is still held.
          const repairId = this.nextPeerRequest++;
          const sendRepair = () =>
            this.host.send({ type: MessageType.RepairData, volumeId: this.volumeId, requestId: repairId, round: run.round, offset, length, zero: false, status: WireStatus.Ok, data });
          this.peerRequests.set(repairId, {
            reply: (ack) => {
              if (ack.type !== MessageType.RepairAck) return this.protocolError("expected RepairAck");
              const ok = ack.status === WireStatus.Ok;
              if (ok) {
                run.repaired++;
                this.transferLogAdd(offset, length);
              }
              this.report({ kind: "verifyMismatch", volumeId: this.volumeId, offset, length, repaired: ok });
              finish(true);
            },
            resend: sendRepair,
            lost: () => finish(false),
          });
          sendRepair();
        },
        resend: send,
        lost: () => finish(false),
      });
      send();
    });
  }

  private verifyRequest(message: ResyncRequestMessage): void {
    const epoch = this.linkEpoch;
    const reply = (status: WireStatus, crc: number) =>
      this.host.send({ type: MessageType.VerifyReply, volumeId: this.volumeId, requestId: message.requestId, round: message.round, offset: message.offset, status, crc });
    if (message.offset + message.length > this.sizeBytes || message.length > this.config.resyncChunkBytesMax) return reply(WireStatus.Refused, 0);
    const data = new Uint8Array(message.length);
    this.storage({ kind: "storageRead", volumeId: this.volumeId, io: 0, offset: message.offset, target: data }, (error) => {
      if (epoch === this.linkEpoch) reply(errorToStatus(error), error ? 0 : checksum(data));
    });
  }

  private repairData(message: ResyncDataMessage): void {
    const epoch = this.linkEpoch;
    if (this.mayWrite || message.offset + message.length > this.sizeBytes || message.status !== WireStatus.Ok || message.zero) {
      this.host.send({ type: MessageType.RepairAck, volumeId: this.volumeId, requestId: message.requestId, status: WireStatus.Refused });
      return;
    }
    this.storage({ kind: "storageWrite", volumeId: this.volumeId, io: 0, offset: message.offset, data: message.data, fua: false }, (error) => {
      if (epoch === this.linkEpoch) this.host.send({ type: MessageType.RepairAck, volumeId: this.volumeId, requestId: message.requestId, status: errorToStatus(error) });
    });
  }

  // ---------------------------------------------------------------- status

  private report(report: Extract<CoreAction, { kind: "report" }>["report"]): void {
    this.host.emit({ kind: "report", report });
  }

  status(): VolumeStatus {
    const grant = this.grant;
    let sync: VolumeStatus["sync"];
    if (this.resync) sync = "resyncing";
    else if (this.phase === "replicating") sync = "synced";
    else if (this.phase === "negotiating") sync = "negotiating";
    else if (this.phase === "refused") sync = this.refusal === "splitBrain" ? "splitBrain" : "refused";
    else sync = "degraded";
    let resync: ResyncStatus | undefined;
    if (this.resync) {
      const run = this.resync;
      const remaining = this.bitmap.setCount;
      let windowBytes = 0;
      for (const sample of run.samples) windowBytes += sample.bytes;
      const first = run.samples[0];
      const spanTicks = first ? Math.max(1, this.host.now() - first.tick) : 0;
      const rate = first ? (windowBytes * 1000) / (spanTicks * this.config.tickMs) : 0;
      const bytesRemaining = Math.min(remaining * this.granuleBytes, this.sizeBytes);
      resync = {
        direction: run.localIsSource ? "source" : "target",
        leader: run.localLeads,
        bitsTotal: run.bitsTotal,
        bitsRemaining: remaining,
        bytesRemaining,
        bytesCopied: run.bytesCopied,
        rateBytesPerSecond: Math.round(rate),
        etaSeconds: rate > 0 ? Math.ceil(bytesRemaining / rate) : undefined,
      };
    }
    return {
      volumeId: this.volumeId,
      role: grant.kind === "write" ? "primary" : grant.kind === "frozen" ? "frozen" : "secondary",
      epoch: grant.kind === "write" ? grant.epoch : undefined,
      sync,
      reason: this.phaseReason,
      dataState: this.dataState === DataState.New ? "new" : this.dataState === DataState.Consistent ? "consistent" : "inconsistent",
      current: formatGeneration(this.generations.current),
      bitmapBase: formatGeneration(this.generations.bitmapBase),
      dirtyBytes: Math.min(this.bitmap.setCount * this.granuleBytes, this.sizeBytes),
      activityLogExtents: this.activityLog.size,
      resync,
      verify: this.verify
        ? { extentsTotal: this.verify.extentsTotal, extentsDone: this.verify.extentsDone, mismatches: this.verify.mismatchCount, repaired: this.verify.repaired }
        : undefined,
      writesInFlight: this.running.size,
      queued: this.queue.length,
    };
  }

  /** Whether the side preferred as source when generations tie is this node (for tests). */
  preferredIsLocal(): boolean {
    const peer = this.peerHello;
    if (!peer) return true;
    return preferredSide(this.ownState(), { nodeId: this.host.peerNodeId, generations: peer.generations, dataState: peer.dataState, mayWrite: peer.mayWrite, bitsSet: peer.bitsSet }) === "local";
  }
}
