// What every part of a volume core shares: its host (the node core), its persistent state
// (superblock, dirty bitmap, activity log), the range table that orders overlapping IO, the grant,
// and the two tables of work in flight — IO issued to the driver and requests sent to the peer —
// each entry a tagged record (model.ts) that a completion is dispatched by. The parts (lifecycle,
// negotiation, write path, persistence, resync, verify, peer service) each own one concern and
// reach each other through `Parts`.
import { assert } from "../../common/assert.ts";
import { ActivityLog } from "../activity-log.ts";
import type { DirtyBitmap } from "../bitmap.ts";
import type { ReplicaConfig } from "../config.ts";
import { type LoadedMetadata, type MetadataLayout, metadataLayout, type Superblock } from "../metadata-format.ts";
import { RangeTable } from "../range-table.ts";
import type { CoreAction, Grant, ReplicaReport } from "../types.ts";
import type { Message } from "../wire.ts";
import type { VolumeLifecycle } from "./lifecycle.ts";
import type { IgnoreCheck, PendingIo, PendingRequest } from "./model.ts";
import type { Negotiation } from "./negotiation.ts";
import type { PeerService } from "./peer-service.ts";
import type { Persistence } from "./persistence.ts";
import type { ResyncEngine } from "./resync.ts";
import type { Verifier } from "./verify.ts";
import type { WritePath } from "./write-path.ts";
import type { DataState } from "../model.ts";

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

/** The parts of one volume core; each reaches the others through this. */
export interface Parts {
  readonly context: VolumeContext;
  readonly lifecycle: VolumeLifecycle;
  readonly negotiation: Negotiation;
  readonly writes: WritePath;
  readonly persistence: Persistence;
  readonly resync: ResyncEngine;
  readonly verify: Verifier;
  readonly peer: PeerService;
}

/** Storage actions a core issues; `io` is filled in by `issue`. */
type StorageAction = Extract<CoreAction, { io: number }>;

export class VolumeContext {
  readonly layout: MetadataLayout;
  readonly bitmap: DirtyBitmap;
  superblock: Superblock;
  readonly activityLog: ActivityLog;
  readonly ranges = new RangeTable();
  grant: Grant = { kind: "read", reason: "no grant received yet" };
  /** IO issued to the driver, by io number. */
  readonly io = new Map<number, PendingIo>();
  /** Requests sent to the peer and not answered, by request id (insertion order = sending order). */
  readonly requests = new Map<number, PendingRequest>();
  /** Stale messages and completions ignored, by the check that ignored them. */
  readonly ignored = new Map<IgnoreCheck, number>();
  private nextIo = 1;
  private nextRequest = 1;
  /** Requests with a lower id belong to an ended peer session: a late answer to one is ignored. */
  private retiredBelow = 1;

  constructor(
    readonly host: VolumeHost,
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

  get config(): ReplicaConfig {
    return this.host.config;
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
  get mayWrite(): boolean {
    return this.grant.kind === "write";
  }
  now(): number {
    return this.host.now();
  }

  send(message: Message): void {
    this.host.send(message);
  }

  emit(action: CoreAction): void {
    this.host.emit(action);
  }

  report(report: ReplicaReport): void {
    this.host.emit({ kind: "report", report });
  }

  /** Issue a storage or metadata IO; its completion is dispatched by `pending`'s kind. */
  issue(action: StorageAction, pending: PendingIo): void {
    const io = this.nextIo++;
    this.io.set(io, pending);
    this.host.emit({ ...action, io });
  }

  /** The record of a completed IO (removed from the table). */
  completed(io: number): PendingIo {
    const pending = this.io.get(io);
    assert(pending, () => `completion ${io} matches an issued IO`);
    this.io.delete(io);
    return pending;
  }

  /** A fresh id for a request to the peer. */
  requestId(): number {
    return this.nextRequest++;
  }

  /**
   * The peer stopped serving our requests (the link dropped, or it closed the volume): take every
   * pending request out of the table; answers that still come for them are stale.
   */
  retireRequests(): PendingRequest[] {
    const requests = [...this.requests.values()];
    this.requests.clear();
    this.retiredBelow = this.nextRequest;
    return requests;
  }

  /** Whether a request id belongs to an ended peer session (rather than never existing). */
  retired(requestId: number): boolean {
    return requestId < this.retiredBelow;
  }

  /** Remember a request sent to the peer until its answer (or the link's loss). */
  expect(request: PendingRequest): void {
    assert(!this.requests.has(request.requestId), () => `request ${request.requestId} is pending once`);
    this.requests.set(request.requestId, request);
  }

  /** A stale message or completion, ignored for a named reason: counted, and reported for the log. */
  ignore(check: IgnoreCheck, why: string): void {
    this.ignored.set(check, (this.ignored.get(check) ?? 0) + 1);
    this.report({ kind: "ignored", volumeId: this.volumeId, check, reason: why });
  }

  /** The bitmap bits covering a byte range. */
  granules(offset: number, length: number): { first: number; last: number } {
    return { first: Math.floor(offset / this.granuleBytes), last: Math.min(this.layout.bitCount, Math.ceil((offset + length) / this.granuleBytes)) };
  }
}
