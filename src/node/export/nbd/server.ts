// The NBD target's IO driver: listens on a unix socket (and on TCP only when the operator names an
// address), runs one NbdSession per connection and carries out what it asks: bytes to the socket
// (queued while the kernel buffer is full, with the session told so it stops reading), exports
// opened through the node's ExportResolver, requests run against the export handle's layer. All
// protocol decisions live in session.ts; this file holds only the IO and the few checks that
// depend on the live volume (its current size and whether it is writable right now).
//
// Node-wide resources are shared by every connection (budget.ts, scheduler.ts): memory for
// payloads and replies is granted from one budget (a reply's memory comes back when the socket has
// taken it); storage work starts through one scheduler that caps what runs at once and what starts
// per turn of the event loop, so the control API and the replication link never wait behind NBD
// work. When a connection goes, its queued work is dropped before it reaches the volume, its
// unsent replies are dropped, and its memory goes back. When the connection limit is reached, the
// connection idle longest in its handshake makes room for the new one.
import fs from "node:fs";
import { ptr } from "bun:ffi";
import { AssertionError } from "../../../common/assert.ts";
import { bufferToFill } from "../../../common/bytes.ts";
import { BlockError, TandemError } from "../../../common/errors.ts";
import type { Logger } from "../../../common/log.ts";
import {
  directIoAlignmentBytes,
  nbdClientStallTimeoutMs,
  nbdCloseLingerMs,
  nbdConnectionsMax,
  nbdGarbageBudgetFraction,
  nbdGarbageCollectionIntervalMsMin,
  nbdMemoryBudgetGrantableFraction,
  nbdHandshakeTimeoutMs,
  nbdMemoryBudgetBytesDefault,
  nbdPausedProbeIntervalMs,
  nbdReadPieceBytes,
  nbdReadPiecesAheadMax,
  nbdRefusalLogIntervalMs,
  nbdShutdownLingerMs,
  nbdStallCheckIntervalMs,
  nbdStorageBytesPerTurnMax,
  nbdStorageOperationsPerTurnMax,
  nbdStorageThreadPoolShare,
  ioThreadPoolSizeDefault,
  requestBytesInFlightPerConnectionMax,
} from "../../../constants.ts";
import { emulating } from "../../block/emulate.ts";
import { checkRange, type BlockLayer } from "../../block/layer.ts";
import type { ExportHandle, ExportInfo, ExportResolver, ExportSessionInfo } from "../types.ts";
import { MemoryBudget, type MemoryGrant } from "./budget.ts";
import { StorageScheduler } from "./scheduler.ts";
import { NbdSession, type ExportDescription, type IoRequest, type IoResult, type SessionAction, type SessionEvent } from "./session.ts";

export interface NbdServerOptions {
  /** Listen on this unix socket (mode 0660). */
  unixPath?: string;
  /** Only when the operator names an address. */
  tcp?: { hostname: string; port: number };
  exports: ExportResolver;
  log: Logger;
  /** Memory all connections may hold together for payloads and replies (default nbdMemoryBudgetBytesDefault). */
  memoryBudgetBytes?: number;
  /** Connections open at once (default nbdConnectionsMax; tests use fewer). */
  connectionsMax?: number;
  /** A client stalled this long while others wait for memory is closed (default nbdClientStallTimeoutMs; tests use less). */
  stallTimeoutMs?: number;
}

/** The memory budget as status shows it. */
export interface NbdMemoryStatus {
  budgetBytes: number;
  /** What connections may hold at once; the rest of the budget covers received bytes and buffers waiting for the collector. */
  grantableBytes: number;
  usedBytes: number;
  /** Connections waiting for memory now (their sockets are not read meanwhile). */
  waitingConnections: number;
}

export interface NbdServer {
  readonly unixPath?: string;
  /** "host:port" actually bound (port 0 → real port). */
  readonly tcpAddress?: string;
  sessions(): ExportSessionInfo[];
  /** Client connections open now, in negotiation or serving (at most nbdConnectionsMax). */
  connectionCount(): number;
  memory(): NbdMemoryStatus;
  /**
   * Stop accepting; with drain, finish requests in flight and send their replies, then close.
   * Without drain, connections are cut at once and the promise resolves when they are closed;
   * export handles are released as soon as the IO they still have in flight completes. Calling
   * close again without drain cuts connections a drain is still waiting for.
   */
  close(options?: { drain?: boolean }): Promise<void>;
}

type ConnectionSocket = import("bun").Socket<{ connection?: Connection }>;

/** Replies gathered in one turn are copied into one buffer up to this size; beyond it they are written one by one. */
const coalesceBytesMax = 256 * 1024;

/** Size of the slabs read and write buffers are carved from. */
const slabBytes = 1024 * 1024;

/**
 * Hands out the buffers READ data is read into, with the data 4 KiB aligned in memory so an
 * O_DIRECT layer can use them without a bounce copy. Small ones are carved in turn from 1 MiB
 * slabs (one allocation and one address lookup per slab, not per request); a slab is freed by the
 * collector once no buffer cut from it is held. Buffers are never reused and come zeroed, so no
 * request can see another's bytes.
 */
export class AlignedBuffers {
  private slab: Uint8Array | undefined;
  private address = 0;
  private used = 0;

  readonly allocate = (bytes: number, alignedAt: number): Uint8Array => {
    const alignment = directIoAlignmentBytes;
    if (bytes > slabBytes / 4) {
      const raw = new Uint8Array(bytes + alignment);
      const skew = (alignment - ((ptr(raw) + alignedAt) % alignment)) % alignment;
      return raw.subarray(skew, skew + bytes);
    }
    let start = this.slab ? this.alignedStart(alignedAt) : slabBytes;
    if (start + bytes > slabBytes) {
      this.slab = new Uint8Array(slabBytes);
      this.address = ptr(this.slab);
      this.used = 0;
      start = this.alignedStart(alignedAt);
    }
    this.used = start + bytes;
    return this.slab!.subarray(start, start + bytes);
  };

  /** The first offset at or after `used` where `offset + alignedAt` is aligned in memory. */
  private alignedStart(alignedAt: number): number {
    const alignment = directIoAlignmentBytes;
    const wanted = this.address + this.used + alignedAt;
    return Math.ceil(wanted / alignment) * alignment - alignedAt - this.address;
  }
}

/** NBD's share of the IO thread pool this process runs with (at least one operation). */
function storageOperationsInFlightMax(): number {
  const configured = Number(process.env.UV_THREADPOOL_SIZE);
  const pool = Number.isInteger(configured) && configured > 0 ? configured : ioThreadPoolSizeDefault;
  return Math.max(1, Math.floor(pool * nbdStorageThreadPoolShare));
}

/** Bytes waiting to be written, with the budget memory and the `sent` tokens that go with them. */
interface OutputEntry {
  bytes: Uint8Array;
  reserved: number;
  tokens: number[];
}

/**
 * The node-wide memory budget and storage scheduler as connections use them. Grants and
 * completions are delivered to sessions as events; a closed connection's queued IO is answered
 * ESHUTDOWN without reaching the layer, and its waiting memory request is withdrawn.
 */
class SharedResources {
  readonly budget: MemoryBudget;
  private readonly scheduler = new StorageScheduler<{ connection: Connection; io: IoRequest }>({
    inFlightMax: storageOperationsInFlightMax(),
    operationsPerTurnMax: nbdStorageOperationsPerTurnMax,
    bytesPerTurnMax: nbdStorageBytesPerTurnMax,
  });
  private readonly owners = new Map<number, Connection>();
  private turnArmed = false;
  private garbageBytes = 0;
  private collectedMs = -Infinity;
  private collectionTimer: ReturnType<typeof setTimeout> | undefined;
  private stallTimer: ReturnType<typeof setTimeout> | undefined;

  constructor(
    readonly budgetBytes: number,
    private readonly stallTimeoutMs: number,
    private readonly log: Logger,
  ) {
    const grantable = Math.floor(budgetBytes * nbdMemoryBudgetGrantableFraction);
    this.budget = new MemoryBudget({
      totalBytes: grantable,
      shareBytesMin: nbdReadPieceBytes * nbdReadPiecesAheadMax + 64 * 1024,
      shareBytesMax: Math.min(requestBytesInFlightPerConnectionMax, grantable),
    });
  }

  register(connection: Connection): void {
    this.owners.set(connection.number, connection);
  }

  reserve(connection: Connection, bytes: number): void {
    if (this.budget.request(connection.number, bytes)) connection.dispatch({ type: "reserved", bytes });
    else this.armStallCheck();
  }

  /**
   * While connections wait for memory, one that holds memory and has not read its replies (or sent
   * its announced payload) for the stall timeout is closed, the longest stalled first, so clients
   * that stopped reading cannot keep the others waiting for ever.
   */
  private armStallCheck(): void {
    if (this.stallTimer) return;
    this.stallTimer = setTimeout(() => {
      this.stallTimer = undefined;
      if (this.budget.waitingCount === 0) return;
      // Only others waiting for room justify closing a client: one over its own share just waits.
      const waiting = this.budget.ownersWaitingForRoom();
      const now = Date.now();
      let stalled: { connection: Connection; sinceMs: number } | undefined;
      for (const connection of this.owners.values()) {
        if (!waiting.some((owner) => owner !== connection.number)) continue;
        const sinceMs = connection.stalledSinceMs();
        if (sinceMs === undefined || this.budget.heldBy(connection.number) === 0 || now - sinceMs < this.stallTimeoutMs) continue;
        if (!stalled || sinceMs < stalled.sinceMs) stalled = { connection, sinceMs };
      }
      if (stalled) {
        this.log.warn("closing an NBD client that holds memory others wait for and has not moved", {
          client: stalled.connection.client,
          stalledMs: now - stalled.sinceMs,
          heldBytes: this.budget.heldBy(stalled.connection.number),
          waiting: this.budget.waitingCount,
        });
        stalled.connection.peerGone();
      }
      this.armStallCheck();
    }, Math.min(nbdStallCheckIntervalMs, this.stallTimeoutMs));
  }

  release(connection: Connection, bytes: number): void {
    if (bytes > 0) this.deliver(this.budget.release(connection.number, bytes));
  }

  submit(connection: Connection, io: IoRequest): void {
    this.scheduler.submit(connection.number, { connection, io }, io.kind === "read" ? io.target.length : io.kind === "write" ? io.data.length : 0);
    this.startWork();
  }

  /** The connection is gone: what it queued never starts, what it waited for goes to others. */
  closed(connection: Connection): void {
    for (const queued of this.scheduler.cancel(connection.number)) {
      connection.dispatch({ type: "ioCompleted", id: queued.io.id, result: { ok: false, code: "ESHUTDOWN", message: `${queued.io.kind} dropped: the connection closed` } });
    }
    this.deliver(this.budget.withdraw(connection.number));
  }

  /** The connection's session is over: it asks for nothing more. */
  forget(connection: Connection): void {
    this.owners.delete(connection.number);
  }

  finished(): void {
    this.scheduler.finished();
    this.startWork();
  }

  private startWork(): void {
    for (let next = this.scheduler.next(); next; next = this.scheduler.next()) {
      this.armTurn();
      next.item.connection.startIo(next.item.io);
    }
    if (this.scheduler.waitsForTurn()) this.armTurn();
  }

  /** The allowance of work per turn is renewed in the next turn of the event loop, after sockets and timers had theirs. */
  private armTurn(): void {
    if (this.turnArmed) return;
    this.turnArmed = true;
    setImmediate(() => {
      this.turnArmed = false;
      this.scheduler.nextTurn();
      this.startWork();
    });
  }

  /**
   * Buffers the connections are done with (received chunks, write payloads, written replies) are
   * freed by the collector only when it runs, and it runs late for a heap of few objects holding
   * large buffers: past a threshold of such garbage, ask for a collection (rate-limited), so RSS
   * follows the memory really in use. The threshold is half of what the budget leaves beside the
   * memory granted now, and at least an eighth of the budget: granted memory and garbage together
   * stay within the budget, and a client streaming large writes into an idle budget is not
   * interrupted by a full collection every 32 MiB (which took a third of the daemon's time at
   * 1 MiB sequential writes: the forced collections were 30% of node a's profile).
   */
  dropped(bytes: number): void {
    this.garbageBytes += bytes;
    if (this.collectionTimer || this.garbageBytes < this.garbageThresholdBytes()) return;
    const waitMs = Math.max(0, this.collectedMs + nbdGarbageCollectionIntervalMsMin - Date.now());
    this.collectionTimer = setTimeout(() => {
      this.collectionTimer = undefined;
      this.garbageBytes = 0;
      // With most of the budget free the collector may run beside the event loop; when more than
      // a quarter is granted, memory is short and the garbage is freed before anything else runs.
      Bun.gc(this.budget.usedBytes > this.budgetBytes / 4);
      this.collectedMs = Date.now();
    }, waitMs);
  }

  /** Garbage that triggers a collection now: see `dropped`. */
  private garbageThresholdBytes(): number {
    const free = Math.max(0, this.budgetBytes - this.budget.usedBytes);
    return Math.max(this.budgetBytes * nbdGarbageBudgetFraction, free / 2);
  }

  stop(): void {
    clearTimeout(this.collectionTimer);
    this.collectionTimer = undefined;
    clearTimeout(this.stallTimer);
    this.stallTimer = undefined;
  }

  /** Grants go out after the current step, so no session is entered while another one is being stepped. */
  private deliver(grants: MemoryGrant[]): void {
    if (grants.length === 0) return;
    queueMicrotask(() => {
      for (const grant of grants) {
        const owner = this.owners.get(grant.owner);
        if (owner) owner.dispatch({ type: "reserved", bytes: grant.bytes });
        else this.deliver(this.budget.release(grant.owner, grant.bytes)); // its session ended meanwhile
      }
    });
  }
}

/** Per-connection state the listener callbacks reach through `socket.data`. */
class Connection {
  readonly session: NbdSession;
  readonly sinceMs = Date.now();
  /** Last time the client sent anything (an idle handshake is evicted first). */
  lastInputMs = this.sinceMs;
  private handle: ExportHandle | undefined;
  private readonly pendingEvents: SessionEvent[] = [];
  private stepping = false;
  private output: OutputEntry[] = [];
  private batch: OutputEntry[] = [];
  private batchBytes = 0;
  private batchScheduled = false;
  private outputBlocked = false;
  /** When the socket last stopped taking our replies (undefined: it takes them). */
  private outputBlockedSinceMs: number | undefined;
  private gracefulClose = false;
  private shuttingDown = false;
  private closed = false;
  private handshakeTimer: ReturnType<typeof setTimeout> | undefined;
  private inputPaused = false;
  /** What the session asked for last; applied when the current step ends. */
  private wantPaused = false;
  private pauseProbeTimer: ReturnType<typeof setInterval> | undefined;
  private lingerTimer: ReturnType<typeof setTimeout> | undefined;
  /** Resolves when the socket has closed. */
  readonly socketClosed: Promise<void>;
  private resolveSocketClosed!: () => void;
  /** Resolves when the export handle is released (or was never held). */
  readonly released: Promise<void>;
  private resolveReleased!: () => void;

  constructor(
    readonly number: number,
    readonly client: string,
    private readonly socket: ConnectionSocket,
    private readonly exports: ExportResolver,
    private readonly log: Logger,
    buffers: AlignedBuffers,
    private readonly resources: SharedResources,
  ) {
    this.session = new NbdSession({}, buffers.allocate);
    this.socketClosed = new Promise((resolve) => (this.resolveSocketClosed = resolve));
    this.released = new Promise((resolve) => (this.resolveReleased = resolve));
    resources.register(this);
  }

  get id(): string {
    return `nbd-${this.number}`;
  }

  start(): void {
    this.handshakeTimer = setTimeout(() => this.dispatch({ type: "handshakeTimedOut" }), nbdHandshakeTimeoutMs);
    this.applyAll(this.session.start());
  }

  get volume(): string | undefined {
    return this.closed ? undefined : this.session.exportName;
  }

  /**
   * Since when the client has kept us from making progress: replies it does not read, or a WRITE
   * payload it announced and does not send. IO waiting on the volume is not a stall.
   */
  stalledSinceMs(): number | undefined {
    if (this.closed) return undefined;
    const payloadSinceMs = this.session.awaitingPayload ? this.lastInputMs : undefined;
    if (this.outputBlockedSinceMs === undefined) return payloadSinceMs;
    return payloadSinceMs === undefined ? this.outputBlockedSinceMs : Math.min(payloadSinceMs, this.outputBlockedSinceMs);
  }

  /** Still negotiating (not serving a volume yet, not closed): may be evicted to make room. */
  get negotiating(): boolean {
    return !this.closed && (this.session.state === "clientFlags" || this.session.state === "options");
  }

  received(bytes: Uint8Array): void {
    this.lastInputMs = Date.now();
    this.dispatch({ type: "bytesReceived", bytes });
    this.resources.dropped(bytes.length);
  }

  /**
   * Feed an event to the session; events raised while applying actions are queued, in order.
   * Input pauses take effect once the queue is empty: a request that waits for memory the budget
   * grants at once would otherwise pause and resume the socket (and its probe timer) every time.
   */
  dispatch(event: SessionEvent): void {
    this.pendingEvents.push(event);
    if (this.stepping) return;
    this.stepping = true;
    try {
      for (let next = this.pendingEvents.shift(); next; next = this.pendingEvents.shift()) this.applyAll(this.session.handle(next));
    } finally {
      this.stepping = false;
    }
    if (this.wantPaused !== this.inputPaused) this.setInputPaused(this.wantPaused);
  }

  private applyAll(actions: SessionAction[]): void {
    for (const action of actions) this.apply(action);
  }

  private apply(action: SessionAction): void {
    switch (action.type) {
      case "send":
        return this.send({ bytes: action.bytes, reserved: action.reserved ?? 0, tokens: action.token === undefined ? [] : [action.token] });
      case "reserve":
        return this.resources.reserve(this, action.bytes);
      case "unreserve":
        return this.resources.release(this, action.bytes);
      case "io":
        return this.runIo(action.io);
      case "input":
        this.wantPaused = action.paused;
        return;
      case "openExport":
        return this.openExport(action.name, action.purpose);
      case "listExports": {
        let exports: ExportInfo[];
        try {
          exports = this.exports.list();
        } catch (error) {
          this.log.error("listing exports failed", { error });
          exports = [];
        }
        return this.dispatch({ type: "exportsListed", exports });
      }
      case "close":
        return this.close(action.graceful, action.reason);
      case "release":
        if (this.handle) {
          this.handle.release();
          this.handle = undefined;
        }
        this.resources.forget(this);
        this.resolveReleased();
        return;
      case "log":
        this.log[action.level](action.message, action.fields);
        return;
    }
  }

  /**
   * Stop or restart reading the socket. A paused Bun socket does not notice that its peer hung
   * up, so while paused the socket is resumed for a moment every nbdPausedProbeIntervalMs: a
   * client that died is then seen closing, and its session ends and releases its export.
   */
  private setInputPaused(paused: boolean): void {
    this.inputPaused = paused;
    if (this.closed) return;
    if (!paused) {
      clearInterval(this.pauseProbeTimer);
      this.pauseProbeTimer = undefined;
      this.socket.resume();
      return;
    }
    this.socket.pause();
    this.pauseProbeTimer ??= setInterval(() => {
      if (this.closed || !this.inputPaused) return;
      this.socket.resume();
      // Pause again after the event loop has polled the socket once.
      setTimeout(() => {
        if (!this.closed && this.inputPaused) this.socket.pause();
      }, 1);
    }, nbdPausedProbeIntervalMs);
  }

  private openExport(name: string, purpose: "info" | "go"): void {
    let handle: ExportHandle | undefined;
    try {
      handle = this.exports.open(name, this.client);
    } catch (error) {
      this.log.info("export refused", { name, error });
      const message = error instanceof TandemError || error instanceof BlockError ? error.message : "the export cannot be opened now";
      return this.dispatch({ type: "exportOpened", result: { ok: false, reason: "refused", message } });
    }
    if (!handle) return this.dispatch({ type: "exportOpened", result: { ok: false, reason: "unknown", message: `no export named "${name}"` } });
    let description: ExportDescription;
    try {
      const layer = handle.layer;
      description = {
        name: handle.volume,
        description: this.exports.list().find((info) => info.name === handle.volume)?.description ?? "",
        sizeBytes: layer.size(),
        readOnly: handle.readOnly(),
        capabilities: layer.capabilities(),
      };
    } catch (error) {
      if (error instanceof AssertionError) throw error;
      handle.release();
      this.log.warn("describing an export failed", { name, error });
      return this.dispatch({ type: "exportOpened", result: { ok: false, reason: "refused", message: "the export cannot be opened now" } });
    }
    if (purpose === "info" || this.closed) {
      handle.release();
    } else {
      this.handle = handle;
      handle.onRevoke((reason) => this.dispatch({ type: "revoked", reason }));
      clearTimeout(this.handshakeTimer);
      this.log.info("session opened", { volume: handle.volume, client: this.client });
    }
    this.dispatch({ type: "exportOpened", result: { ok: true, export: description } });
  }

  /** Queue the request for the node-wide scheduler; once the connection is gone it never starts. */
  private runIo(io: IoRequest): void {
    if (this.closed) {
      return this.dispatch({ type: "ioCompleted", id: io.id, result: { ok: false, code: "ESHUTDOWN", message: `${io.kind} dropped: the connection closed` } });
    }
    this.resources.submit(this, io);
  }

  /** Start a request on the layer (the scheduler's turn came). */
  startIo(io: IoRequest): void {
    const handle = this.handle;
    let promise: Promise<unknown>;
    try {
      if (!handle) throw new BlockError("ESHUTDOWN", "the export is no longer open");
      promise = this.startOnLayer(handle, io);
    } catch (error) {
      promise = Promise.reject(error);
    }
    promise.then(
      (value) => {
        if (io.kind === "write") this.resources.dropped(io.data.length);
        this.resources.finished();
        this.dispatch({ type: "ioCompleted", id: io.id, result: io.kind === "extents" ? { ok: true, extents: value as never } : { ok: true } });
      },
      (error) => {
        this.resources.finished();
        this.dispatch({ type: "ioCompleted", id: io.id, result: this.failure(io, error) });
      },
    );
  }

  /** Range and write permission are checked against the live volume. */
  private startOnLayer(handle: ExportHandle, io: IoRequest): Promise<unknown> {
    const layer = handle.layer;
    switch (io.kind) {
      case "read":
        checkRange(layer, io.offset, io.target.length, "read");
        return layer.read(io.offset, io.target);
      case "write":
        checkWritable(handle, layer, io.offset, io.data.length, "write");
        // A payload is this server's alone and never reused (views of the chunks it was received
        // in, or a buffer it was copied into): the mirror keeps it rather than copying it.
        return emulating(layer).write(io.offset, io.data, { fua: io.fua, stable: true });
      case "flush":
        return emulating(layer).flush();
      case "trim":
        checkRange(layer, io.offset, io.length, "trim");
        checkWritable(handle, layer, io.offset, io.length, "trim");
        return emulating(layer).trim(io.offset, io.length, { fua: io.fua });
      case "zero":
        checkWritable(handle, layer, io.offset, io.length, "write zeroes");
        return emulating(layer).zero(io.offset, io.length, { fua: io.fua, noHole: io.noHole, fastZero: io.fastZero });
      case "cache":
        checkRange(layer, io.offset, io.length, "cache");
        return layer.cache(io.offset, io.length);
      case "extents":
        checkRange(layer, io.offset, io.length, "block status");
        return layer.extents(io.offset, io.length);
    }
  }

  private failure(io: IoRequest, error: unknown): IoResult {
    // A broken invariant below us is a bug: let it take the process down (CONVENTIONS.md §4).
    if (error instanceof AssertionError) throw error;
    if (error instanceof BlockError) {
      if (error.code !== "ENOTSUP" && error.code !== "ESHUTDOWN") this.log.warn(`${io.kind} failed`, { client: this.client, error });
      return { ok: false, code: error.code, message: `${io.kind} failed: ${error.code}` };
    }
    this.log.error(`${io.kind} failed with an unexpected error`, { client: this.client, error });
    return { ok: false, code: "EIO", message: `${io.kind} failed: EIO` };
  }

  /**
   * Replies produced in one turn (a received chunk of pipelined requests, IO completions
   * resolving together) are gathered and written once at the end of the turn: one syscall
   * instead of one per reply. Small replies are copied together; large ones go out as they are.
   */
  private send(entry: OutputEntry): void {
    if (this.closed) return this.written([entry], false);
    if (this.output.length > 0) {
      this.output.push(entry);
      return;
    }
    this.batch.push(entry);
    this.batchBytes += entry.bytes.length;
    // Large replies leave at once, so a full socket is seen (and input paused) without delay.
    if (this.batchBytes >= coalesceBytesMax) return this.writeBatch();
    if (!this.batchScheduled) {
      this.batchScheduled = true;
      queueMicrotask(() => this.writeBatch());
    }
  }

  private writeBatch(): void {
    this.batchScheduled = false;
    const parts = this.batch;
    const total = this.batchBytes;
    this.batch = [];
    this.batchBytes = 0;
    if (this.closed || parts.length === 0) return this.written(parts, false);
    let pending = parts;
    if (parts.length > 1 && total <= coalesceBytesMax) {
      // Every byte of it is a copy of a part: not zeroed first from 64 KiB up (bufferToFill).
      const joined: OutputEntry = { bytes: bufferToFill(total), reserved: 0, tokens: [] };
      let at = 0;
      for (const part of parts) {
        joined.bytes.set(part.bytes, at);
        at += part.bytes.length;
        joined.reserved += part.reserved;
        joined.tokens.push(...part.tokens);
      }
      pending = [joined];
    }
    const done: OutputEntry[] = [];
    for (let index = 0; index < pending.length; index++) {
      const entry = pending[index]!;
      if (this.output.length > 0) {
        this.output.push(entry);
        continue;
      }
      const written = this.socket.write(entry.bytes);
      if (written < 0) {
        // The peer is gone; Bun reports the close only when the event loop next polls, which a
        // busy loop may not do for a while: end the session now.
        this.written(done, true);
        this.written(pending.slice(index), false);
        return this.peerGone();
      }
      if (written === entry.bytes.length) done.push(entry);
      else this.output.push(written > 0 ? { ...entry, bytes: entry.bytes.subarray(written) } : entry);
    }
    this.written(done, true);
    if (this.output.length > 0 && !this.outputBlocked) {
      this.outputBlocked = true;
      this.outputBlockedSinceMs = Date.now();
      this.dispatch({ type: "outputBlocked" });
    }
  }

  /** Entries that left (or were dropped): their memory goes back; the session hears of the tokens of those that left. */
  private written(entries: OutputEntry[], left: boolean): void {
    let reserved = 0;
    let dropped = 0;
    for (const entry of entries) {
      reserved += entry.reserved;
      // A READ stream's pieces are reused; other replies are garbage once written.
      if (entry.tokens.length === 0) dropped += entry.bytes.length;
      if (left) for (const token of entry.tokens) this.dispatch({ type: "sent", token });
    }
    this.resources.release(this, reserved);
    this.resources.dropped(dropped);
  }

  onDrain(): void {
    const done: OutputEntry[] = [];
    while (this.output.length > 0) {
      const head = this.output[0]!;
      const written = this.socket.write(head.bytes);
      if (written < 0) break;
      if (written < head.bytes.length) {
        this.output[0] = { ...head, bytes: head.bytes.subarray(written) };
        break;
      }
      done.push(this.output.shift()!);
    }
    this.written(done, true);
    if (done.length > 0 && this.output.length > 0) this.outputBlockedSinceMs = Date.now(); // it moved
    if (this.output.length > 0) return;
    this.outputBlockedSinceMs = undefined;
    if (this.gracefulClose) return this.endSocket();
    if (this.outputBlocked) {
      this.outputBlocked = false;
      this.dispatch({ type: "outputDrained" });
    }
  }

  private close(graceful: boolean, reason: string): void {
    if (this.closed || this.gracefulClose) return;
    this.log.debug("closing connection", { client: this.client, reason, graceful });
    clearTimeout(this.handshakeTimer);
    // Whatever the session sent before deciding to close goes out first, as far as the socket takes it.
    this.writeBatch();
    if (this.closed) return;
    // Nothing queued for this session starts any more, and what it waited for goes to others.
    this.resources.closed(this);
    if (graceful && this.output.length > 0) {
      // The rest goes out from onDrain; a client that stops reading is cut after the linger time.
      this.gracefulClose = true;
      this.lingerTimer = setTimeout(() => this.socket.terminate(), nbdCloseLingerMs);
      return;
    }
    if (graceful) this.endSocket();
    else this.socket.terminate();
  }

  private endSocket(): void {
    this.socket.end();
    clearTimeout(this.lingerTimer);
    // Closed already, or end() ran the close handler at once (the client had closed its side).
    if (this.closed) return;
    // A client that never closes its side is cut after the linger time (short when the daemon is
    // stopping: every reply has been written by now, and an idle client must not hold it up).
    this.lingerTimer = setTimeout(() => this.socket.terminate(), this.shuttingDown ? nbdShutdownLingerMs : nbdCloseLingerMs);
  }

  /** The server is stopping: finish what is in flight, then close without waiting on the client. */
  shutdown(): void {
    this.shuttingDown = true;
    this.dispatch({ type: "shutdown" });
  }

  /** Cut the connection now, whatever is queued. */
  terminate(): void {
    if (!this.closed) this.socket.terminate();
  }

  /** Cut the connection now and end its session at once (to make room, or because the peer is gone). */
  peerGone(): void {
    this.socket.terminate();
    this.onClose();
  }

  onClose(): void {
    if (this.closed) return;
    const volume = this.session.exportName;
    if (volume !== undefined) this.log.info("session closed", { volume, client: this.client, requestsInFlight: this.session.requestsInFlight });
    this.closed = true;
    const unsent = [...this.output, ...this.batch];
    this.output = [];
    this.batch = [];
    this.batchBytes = 0;
    this.written(unsent, false);
    clearTimeout(this.handshakeTimer);
    clearTimeout(this.lingerTimer);
    clearInterval(this.pauseProbeTimer);
    this.resolveSocketClosed();
    this.dispatch({ type: "disconnected" });
    // Queued IO is answered (dropped) after the session has heard that the connection is gone.
    this.resources.closed(this);
    // A session that never opened an export has nothing to release.
    if (!this.handle) {
      this.resources.forget(this);
      this.resolveReleased();
    }
  }
}


function checkWritable(handle: ExportHandle, layer: BlockLayer, offset: number, length: number, what: string): void {
  if (handle.readOnly()) throw new BlockError("EPERM", `${what}: the volume is read-only on this node`);
  try {
    checkRange(layer, offset, length, what);
  } catch (error) {
    // The volume shrank under the session: a write past the end is ENOSPC in NBD's terms.
    if (error instanceof BlockError) throw new BlockError("ENOSPC", error.message);
    throw error;
  }
}

/** Refuse to replace anything but a stale socket of ours at `path`. */
async function clearStaleSocket(path: string): Promise<void> {
  let stat: fs.Stats;
  try {
    stat = fs.lstatSync(path);
  } catch {
    return;
  }
  if (!stat.isSocket()) throw new TandemError("already_exists", `${path} exists and is not a socket`);
  const live = await Bun.connect({ unix: path, socket: { data() {}, connectError() {} } }).then(
    (socket) => {
      socket.terminate();
      return true;
    },
    () => false,
  );
  if (live) throw new TandemError("in_use", `another server is listening on ${path}`);
  fs.unlinkSync(path);
}

export async function startNbdServer(options: NbdServerOptions): Promise<NbdServer> {
  const log = options.log;
  const connections = new Set<Connection>();
  const connectionsMax = options.connectionsMax ?? nbdConnectionsMax;
  let nextConnection = 1;
  let accepting = true;
  const buffers = new AlignedBuffers();
  const resources = new SharedResources(options.memoryBudgetBytes ?? nbdMemoryBudgetBytesDefault, options.stallTimeoutMs ?? nbdClientStallTimeoutMs, log);
  // Refusals are logged at most once per interval, with the count of those not logged, so a
  // connection flood cannot flood the log.
  let refusedUnlogged = 0;
  let refusalLoggedMs = -Infinity;
  const refuse = (socket: ConnectionSocket, reason: string) => {
    socket.data = {};
    socket.terminate();
    refusedUnlogged++;
    const now = Date.now();
    if (now - refusalLoggedMs < nbdRefusalLogIntervalMs) return;
    log.warn("refusing NBD connections", { reason, refused: refusedUnlogged });
    refusedUnlogged = 0;
    refusalLoggedMs = now;
  };
  /** At the limit, the connection idle longest in its handshake makes room: a real client negotiates in milliseconds. */
  const evictIdleHandshake = (): boolean => {
    let idlest: Connection | undefined;
    for (const connection of connections) {
      if (connection.negotiating && (!idlest || connection.lastInputMs < idlest.lastInputMs)) idlest = connection;
    }
    if (!idlest) return false;
    log.info("closing an idle NBD handshake to make room", { client: idlest.client, idleMs: Date.now() - idlest.lastInputMs });
    connections.delete(idlest);
    idlest.peerGone();
    return true;
  };

  const handlers = (transport: "unix" | "tcp") => ({
    binaryType: "uint8array" as const,
    open(socket: ConnectionSocket) {
      const number = nextConnection++;
      if (!accepting) return refuse(socket, "server closing");
      if (connections.size >= connectionsMax && !evictIdleHandshake()) return refuse(socket, `${connectionsMax} connections are serving volumes`);
      const tcp = transport === "tcp";
      const client = tcp ? `nbd tcp ${socket.remoteAddress}:${socket.remotePort}` : `nbd unix #${number}`;
      const connection = new Connection(number, client, socket, options.exports, log.child("session", { session: `nbd-${number}` }), buffers, resources);
      socket.data = { connection };
      connections.add(connection);
      if (tcp) socket.setNoDelay(true);
      connection.start();
    },
    data(socket: ConnectionSocket, bytes: Uint8Array) {
      socket.data.connection?.received(bytes);
    },
    drain(socket: ConnectionSocket) {
      socket.data.connection?.onDrain();
    },
    close(socket: ConnectionSocket) {
      const connection = socket.data?.connection;
      if (!connection) return;
      connection.onClose();
      connections.delete(connection);
    },
    error(socket: ConnectionSocket, error: Error) {
      if (error instanceof AssertionError) throw error;
      log.warn("NBD socket error", { client: socket.data?.connection?.client, error });
    },
  });

  const listeners: { stop(closeActiveConnections?: boolean): void }[] = [];
  let unixPath: string | undefined;
  let tcpAddress: string | undefined;
  try {
    if (options.unixPath !== undefined) {
      await clearStaleSocket(options.unixPath);
      listeners.push(Bun.listen<{ connection?: Connection }>({ unix: options.unixPath, socket: handlers("unix") }));
      fs.chmodSync(options.unixPath, 0o660);
      unixPath = options.unixPath;
    }
    if (options.tcp) {
      const listener = Bun.listen<{ connection?: Connection }>({ hostname: options.tcp.hostname, port: options.tcp.port, socket: handlers("tcp") });
      listeners.push(listener);
      const host = listener.hostname.includes(":") ? `[${listener.hostname}]` : listener.hostname;
      tcpAddress = `${host}:${listener.port}`;
    }
  } catch (error) {
    for (const listener of listeners) listener.stop(true);
    if (unixPath) fs.rmSync(unixPath, { force: true });
    throw error;
  }
  log.info("NBD server listening", { unixPath, tcpAddress });

  return {
    unixPath,
    tcpAddress,
    connectionCount(): number {
      return connections.size;
    },
    memory(): NbdMemoryStatus {
      return { budgetBytes: resources.budgetBytes, grantableBytes: resources.budget.totalBytes, usedBytes: resources.budget.usedBytes, waitingConnections: resources.budget.waitingCount };
    },
    sessions(): ExportSessionInfo[] {
      const out: ExportSessionInfo[] = [];
      for (const connection of connections) {
        const volume = connection.volume;
        if (volume === undefined) continue;
        out.push({ id: connection.id, kind: "nbd", volume, client: connection.client, sinceMs: connection.sinceMs, requestsInFlight: connection.session.requestsInFlight, inputPaused: connection.session.readingPaused });
      }
      return out;
    },
    async close(closeOptions = {}) {
      const drain = closeOptions.drain === true;
      if (accepting) {
        accepting = false;
        for (const listener of listeners) listener.stop(false);
        if (unixPath) fs.rmSync(unixPath, { force: true });
        log.info("NBD server closing", { drain, connections: connections.size });
      }
      const open = [...connections];
      if (drain) {
        for (const connection of open) connection.shutdown();
        await Promise.all(open.map((connection) => Promise.all([connection.socketClosed, connection.released])));
        resources.stop();
        return;
      }
      for (const connection of open) connection.terminate();
      await Promise.all(open.map((connection) => connection.socketClosed));
      resources.stop();
    },
  };
}
