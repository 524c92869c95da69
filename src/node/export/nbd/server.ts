// The NBD target's IO driver: listens on a unix socket (and on TCP only when the operator names an
// address), runs one NbdSession per connection and carries out what it asks: bytes to the socket
// (queued while the kernel buffer is full, with the session told so it stops reading), exports
// opened through the node's ExportResolver, requests run against the export handle's layer. All
// protocol decisions live in session.ts; this file holds only the IO and the few checks that
// depend on the live volume (its current size and whether it is writable right now).
import fs from "node:fs";
import { ptr } from "bun:ffi";
import { AssertionError } from "../../../common/assert.ts";
import { BlockError, TandemError } from "../../../common/errors.ts";
import type { Logger } from "../../../common/log.ts";
import { directIoAlignmentBytes, nbdCloseLingerMs, nbdConnectionsMax, nbdShutdownLingerMs, nbdHandshakeTimeoutMs, nbdPausedProbeIntervalMs } from "../../../constants.ts";
import { checkRange, writeDurable, type BlockLayer } from "../../block/layer.ts";
import type { ExportHandle, ExportInfo, ExportResolver, ExportSessionInfo } from "../types.ts";
import { NbdSession, type ExportDescription, type IoRequest, type IoResult, type SessionAction, type SessionEvent } from "./session.ts";

export interface NbdServerOptions {
  /** Listen on this unix socket (mode 0660). */
  unixPath?: string;
  /** Only when the operator names an address. */
  tcp?: { hostname: string; port: number };
  exports: ExportResolver;
  log: Logger;
}

export interface NbdServer {
  readonly unixPath?: string;
  /** "host:port" actually bound (port 0 → real port). */
  readonly tcpAddress?: string;
  sessions(): ExportSessionInfo[];
  /** Client connections open now, in negotiation or serving (at most nbdConnectionsMax). */
  connectionCount(): number;
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
 * Hands out the buffers READ data is read into and split WRITE payloads are gathered in, with
 * the data 4 KiB aligned in memory so an O_DIRECT layer can use them without a bounce copy.
 * Small ones are carved in turn from 1 MiB slabs (one allocation and one address lookup per
 * slab, not per request); a slab is freed by the collector once no buffer cut from it is held.
 * Buffers are never reused, so no request can see another's bytes.
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

/** Per-connection state the listener callbacks reach through `socket.data`. */
class Connection {
  readonly session: NbdSession;
  readonly sinceMs = Date.now();
  private handle: ExportHandle | undefined;
  private readonly pendingEvents: SessionEvent[] = [];
  private stepping = false;
  private readonly output: Uint8Array[] = [];
  private batch: Uint8Array[] = [];
  private batchBytes = 0;
  private batchScheduled = false;
  private outputBlocked = false;
  private gracefulClose = false;
  private shuttingDown = false;
  private closed = false;
  private handshakeTimer: ReturnType<typeof setTimeout> | undefined;
  private inputPaused = false;
  private pauseProbeTimer: ReturnType<typeof setInterval> | undefined;
  private lingerTimer: ReturnType<typeof setTimeout> | undefined;
  /** Resolves when the socket has closed. */
  readonly socketClosed: Promise<void>;
  private resolveSocketClosed!: () => void;
  /** Resolves when the export handle is released (or was never held). */
  readonly released: Promise<void>;
  private resolveReleased!: () => void;

  constructor(
    readonly id: string,
    readonly client: string,
    private readonly socket: ConnectionSocket,
    private readonly exports: ExportResolver,
    private readonly log: Logger,
    buffers: AlignedBuffers,
  ) {
    this.session = new NbdSession({}, buffers.allocate);
    this.socketClosed = new Promise((resolve) => (this.resolveSocketClosed = resolve));
    this.released = new Promise((resolve) => (this.resolveReleased = resolve));
  }

  start(): void {
    this.handshakeTimer = setTimeout(() => this.dispatch({ type: "handshakeTimedOut" }), nbdHandshakeTimeoutMs);
    this.applyAll(this.session.start());
  }

  get volume(): string | undefined {
    return this.closed ? undefined : this.session.exportName;
  }

  /** Feed an event to the session; events raised while applying actions are queued, in order. */
  dispatch(event: SessionEvent): void {
    this.pendingEvents.push(event);
    if (this.stepping) return;
    this.stepping = true;
    try {
      for (let next = this.pendingEvents.shift(); next; next = this.pendingEvents.shift()) this.applyAll(this.session.handle(next));
    } finally {
      this.stepping = false;
    }
  }

  private applyAll(actions: SessionAction[]): void {
    for (const action of actions) this.apply(action);
  }

  private apply(action: SessionAction): void {
    switch (action.type) {
      case "send":
        return this.send(action.bytes);
      case "io":
        return this.runIo(action.io);
      case "input":
        return this.setInputPaused(action.paused);
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

  private runIo(io: IoRequest): void {
    const handle = this.handle;
    let promise: Promise<unknown>;
    try {
      if (!handle) throw new BlockError("ESHUTDOWN", "the export is no longer open");
      promise = this.startIo(handle, io);
    } catch (error) {
      promise = Promise.reject(error);
    }
    promise.then(
      (value) => this.dispatch({ type: "ioCompleted", id: io.id, result: io.kind === "extents" ? { ok: true, extents: value as never } : { ok: true } }),
      (error) => this.dispatch({ type: "ioCompleted", id: io.id, result: this.failure(io, error) }),
    );
  }

  /** Start one request on the layer. Range and write permission are checked against the live volume. */
  private startIo(handle: ExportHandle, io: IoRequest): Promise<unknown> {
    const layer = handle.layer;
    switch (io.kind) {
      case "read":
        checkRange(layer, io.offset, io.target.length, "read");
        return layer.read(io.offset, io.target);
      case "write":
        checkWritable(handle, layer, io.offset, io.data.length, "write");
        return writeDurable(layer, io.offset, io.data, io.fua);
      case "flush":
        return layer.flush();
      case "trim":
        checkRange(layer, io.offset, io.length, "trim");
        checkWritable(handle, layer, io.offset, io.length, "trim");
        return durably(layer, io.fua, (fua) => layer.trim(io.offset, io.length, { fua }));
      case "zero":
        checkWritable(handle, layer, io.offset, io.length, "write zeroes");
        return durably(layer, io.fua, (fua) => layer.zero(io.offset, io.length, { fua, noHole: io.noHole, fastZero: io.fastZero }));
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
  private send(bytes: Uint8Array): void {
    if (this.closed) return;
    if (this.output.length > 0) {
      this.output.push(bytes);
      return;
    }
    this.batch.push(bytes);
    this.batchBytes += bytes.length;
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
    if (this.closed || parts.length === 0) return;
    let pending: Uint8Array[] = parts;
    if (parts.length > 1 && total <= coalesceBytesMax) {
      const joined = new Uint8Array(total);
      let at = 0;
      for (const part of parts) {
        joined.set(part, at);
        at += part.length;
      }
      pending = [joined];
    }
    for (let index = 0; index < pending.length; index++) {
      const bytes = pending[index]!;
      if (this.output.length > 0) {
        this.output.push(bytes);
        continue;
      }
      const written = this.socket.write(bytes);
      if (written < 0) return;
      if (written === bytes.length) continue;
      this.output.push(written > 0 ? bytes.subarray(written) : bytes);
    }
    if (this.output.length > 0 && !this.outputBlocked) {
      this.outputBlocked = true;
      this.dispatch({ type: "outputBlocked" });
    }
  }

  onDrain(): void {
    while (this.output.length > 0) {
      const head = this.output[0]!;
      const written = this.socket.write(head);
      if (written < 0) return;
      if (written < head.length) {
        this.output[0] = head.subarray(written);
        return;
      }
      this.output.shift();
    }
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
    if (graceful && this.output.length > 0) {
      // The rest goes out from onDrain; a client that stops reading is cut after the linger time.
      this.gracefulClose = true;
      if (!this.closed) this.lingerTimer = setTimeout(() => this.socket.terminate(), nbdCloseLingerMs);
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

  onClose(): void {
    if (this.closed) return;
    const volume = this.session.exportName;
    if (volume !== undefined) this.log.info("session closed", { volume, client: this.client, requestsInFlight: this.session.requestsInFlight });
    this.closed = true;
    this.output.length = 0;
    clearTimeout(this.handshakeTimer);
    clearTimeout(this.lingerTimer);
    clearInterval(this.pauseProbeTimer);
    this.resolveSocketClosed();
    this.dispatch({ type: "disconnected" });
    // A session that never opened an export has nothing to release.
    if (!this.handle) this.resolveReleased();
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

/** Run a trim or zero with FUA honoured whatever the layer offers (CONVENTIONS.md §7). */
async function durably(layer: BlockLayer, fua: boolean, run: (fua: boolean) => Promise<void>): Promise<void> {
  const capabilities = layer.capabilities();
  if (!fua || capabilities.fua) return run(fua);
  await run(false);
  if (capabilities.flush) await layer.flush();
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
  let nextConnection = 1;
  let accepting = true;
  const buffers = new AlignedBuffers();

  const handlers = (transport: "unix" | "tcp") => ({
    binaryType: "uint8array" as const,
    open(socket: ConnectionSocket) {
      const number = nextConnection++;
      if (!accepting || connections.size >= nbdConnectionsMax) {
        log.warn("refusing NBD connection", { reason: accepting ? `${nbdConnectionsMax} connections are open` : "server closing" });
        socket.data = {};
        socket.terminate();
        return;
      }
      const tcp = transport === "tcp";
      const client = tcp ? `nbd tcp ${socket.remoteAddress}:${socket.remotePort}` : `nbd unix #${number}`;
      const connection = new Connection(`nbd-${number}`, client, socket, options.exports, log.child("session", { session: `nbd-${number}` }), buffers);
      socket.data = { connection };
      connections.add(connection);
      if (tcp) socket.setNoDelay(true);
      connection.start();
    },
    data(socket: ConnectionSocket, bytes: Uint8Array) {
      socket.data.connection?.dispatch({ type: "bytesReceived", bytes });
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
    sessions(): ExportSessionInfo[] {
      const out: ExportSessionInfo[] = [];
      for (const connection of connections) {
        const volume = connection.volume;
        if (volume === undefined) continue;
        out.push({ id: connection.id, kind: "nbd", volume, client: connection.client, sinceMs: connection.sinceMs, requestsInFlight: connection.session.requestsInFlight });
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
        return;
      }
      for (const connection of open) connection.terminate();
      await Promise.all(open.map((connection) => connection.socketClosed));
    },
  };
}
