// The replication link's byte stream in production: TCP between the two daemons, implementing the
// PeerTransport contract of src/replica/io.ts. It listens on this node's replication address (when
// it has one) and dials the peer's when the core asks; it tells the core where each accepted
// connection comes from, and never reconnects by itself nor interprets a byte (which connection to
// keep, authentication, framing and tags are the core's). Sends never block: what the kernel does
// not take at once waits in a per-connection queue, bounded by `replicaSendQueueBytesMax`; a peer
// that lets it overflow is too slow to mirror to, and its connection is closed (the core then sees
// the link drop and degrades the volumes, which is what must happen when the peer stops reading).
import type { Socket, TCPSocketListener } from "bun";
import type { Logger } from "../../common/log.ts";
import { SocketWriteQueue } from "../../common/socket-write-queue.ts";
import type { PeerTransport, PeerTransportHandler } from "../../replica/io.ts";
import type { HostPort } from "../config.ts";

/** Bytes queued for one connection before it is declared stuck and closed. */
export const replicaSendQueueBytesMax = 256 * 1024 * 1024;

/** Parts gathered in one turn are copied into one buffer up to this size and written at once. */
const coalesceBytesMax = 512 * 1024;
/**
 * A part this large is written as it is, never copied into a run: a socket write costs a few
 * microseconds, copying 16 KiB about as much. A large payload's pieces (an NBD WRITE as it was
 * received) go out without being joined.
 */
const aloneBytesMin = 16 * 1024;
/** The join buffer a connection starts with: a 4 KiB write's frame and a few answers. */
const scratchBytesInitial = 16 * 1024;

interface ConnectionData {
  id: number;
  /** Bytes the kernel has not taken yet. */
  output: SocketWriteQueue;
  /** Parts sent this turn, written together when the turn ends (one syscall, one TCP segment train). */
  pending: Uint8Array[];
  /**
   * Where a turn's parts are joined before the write: kept from turn to turn (grown up to
   * coalesceBytesMax), since SocketWriteQueue copies whatever the kernel does not take at once.
   */
  scratch: Uint8Array;
  /** Closed by us (`close`): the handler is not told. */
  closedByUs: boolean;
  reported: boolean;
}

export class TcpPeerTransport implements PeerTransport {
  private handler: PeerTransportHandler | undefined;
  private listener: TCPSocketListener<ConnectionData> | undefined;
  private readonly sockets = new Map<number, Socket<ConnectionData>>();
  private nextId = 1;
  private stopped = false;

  constructor(
    private readonly options: { listen: HostPort | undefined; peer: HostPort; log: Logger },
  ) {}

  attach(handler: PeerTransportHandler): void {
    this.handler = handler;
  }

  /** Start listening for connections (the core decides what to keep); no-op without a listen address. */
  listen(): void {
    const listen = this.options.listen;
    if (!listen) return;
    const handlers = this.socketHandlers(false);
    this.listener = Bun.listen<ConnectionData>({
      hostname: listen.hostname,
      port: listen.port,
      socket: handlers,
    });
    this.options.log.info("replication listener up", { address: `${listen.hostname}:${this.listener.port}` });
  }

  get listenPort(): number | undefined {
    return this.listener?.port;
  }

  dial(): void {
    if (this.stopped) return;
    Bun.connect<ConnectionData>({
      hostname: this.options.peer.hostname,
      port: this.options.peer.port,
      socket: {
        ...this.socketHandlers(true),
        connectError: (_socket, error) => this.handler?.dialFailed(error?.message ?? "connection refused"),
      },
    }).catch((error: Error) => this.handler?.dialFailed(error?.message ?? String(error)));
  }

  /**
   * Messages are gathered for the rest of the turn and written together: a mirrored write is a
   * header, fields and data, and a busy turn produces many; one write per turn instead of one per
   * part saves the syscalls and the peer's wake-ups. The parts are the caller's until the turn
   * ends (the core hands over buffers it does not touch again).
   */
  send(connection: number, parts: readonly Uint8Array[]): void {
    const socket = this.sockets.get(connection);
    if (!socket) return;
    const data = socket.data;
    const first = data.pending.length === 0;
    for (const part of parts) if (part.length > 0) data.pending.push(part);
    if (first && data.pending.length > 0) queueMicrotask(() => this.flush(socket));
  }

  /** Bytes sent on `connection` this turn and not yet handed to the socket (they go when the turn's synchronous work ends). */
  gatheredBytes(connection: number): number {
    let bytes = 0;
    for (const part of this.sockets.get(connection)?.data.pending ?? []) bytes += part.length;
    return bytes;
  }

  private flush(socket: Socket<ConnectionData>): void {
    const data = socket.data;
    const parts = data.pending;
    data.pending = [];
    if (!this.sockets.has(data.id)) return;
    // Runs of small parts up to coalesceBytesMax go out as one buffer each; a large or lone part as it is.
    let run: Uint8Array[] = [];
    let runBytes = 0;
    const writeRun = () => {
      if (run.length === 1) data.output.write(socket, run[0]!, true);
      else if (run.length > 1) {
        if (data.scratch.length < runBytes) data.scratch = new Uint8Array(Math.min(coalesceBytesMax, Math.max(runBytes, 2 * data.scratch.length)));
        const joined = data.scratch;
        let offset = 0;
        for (const part of run) {
          joined.set(part, offset);
          offset += part.length;
        }
        data.output.write(socket, joined.subarray(0, runBytes));
      }
      run = [];
      runBytes = 0;
    };
    for (const part of parts) {
      if (part.length >= aloneBytesMin) {
        writeRun();
        data.output.write(socket, part, true);
        continue;
      }
      if (runBytes + part.length > coalesceBytesMax) writeRun();
      run.push(part);
      runBytes += part.length;
    }
    writeRun();
    // What waits of a joined run is a copy (the scratch buffer is reused at once); a lone part waits
    // as it is, since the core never changes a buffer it sent (PeerTransport.send).
    if (data.output.queuedBytes > replicaSendQueueBytesMax) {
      this.options.log.warn("peer is not reading; closing the replication connection", { queuedBytes: data.output.queuedBytes });
      this.drop(socket, "the peer stopped reading (send queue full)");
    }
  }

  close(connection: number): void {
    const socket = this.sockets.get(connection);
    if (!socket) return;
    // What the core sent before closing (a Goodbye) still goes out, ahead of the FIN.
    if (socket.data.pending.length > 0) this.flush(socket);
    socket.data.closedByUs = true;
    this.sockets.delete(connection);
    socket.end();
  }

  stop(): void {
    this.stopped = true;
    this.listener?.stop(true);
    for (const socket of this.sockets.values()) {
      socket.data.closedByUs = true;
      socket.terminate();
    }
    this.sockets.clear();
  }

  private drop(socket: Socket<ConnectionData>, reason: string): void {
    const data = socket.data;
    this.sockets.delete(data.id);
    socket.terminate();
    if (!data.closedByUs && !data.reported) {
      data.reported = true;
      this.handler?.closed(data.id, reason);
    }
  }

  private socketHandlers(dialled: boolean) {
    return {
      open: (socket: Socket<ConnectionData>) => {
        if (this.stopped) return void socket.terminate();
        const id = this.nextId++;
        socket.data = { id, output: new SocketWriteQueue(), pending: [], scratch: new Uint8Array(scratchBytesInitial), closedByUs: false, reported: false };
        socket.setNoDelay(true);
        this.sockets.set(id, socket);
        // A socket the other end reset as it opened has no remote address any more (seen when the
        // peer's daemon is killed mid-dial); a dialled one is the peer's address we dialled.
        const remote = socket.remoteAddress ? { host: socket.remoteAddress, port: socket.remotePort ?? 0 } : dialled ? { host: this.options.peer.hostname, port: this.options.peer.port } : { host: "unknown", port: 0 };
        this.handler?.connected(id, dialled, remote);
      },
      data: (socket: Socket<ConnectionData>, bytes: Buffer) => {
        if (!socket.data || socket.data.closedByUs) return;
        // The handler keeps the buffer (the framer returns frames as views of it): Bun hands each
        // call a buffer of its own, as the NBD server's input queue also relies on, and
        // test/integration/replica-transport.test.ts checks it by keeping every chunk to the end.
        this.handler?.data(socket.data.id, bytes);
      },
      drain: (socket: Socket<ConnectionData>) => socket.data?.output.drain(socket),
      close: (socket: Socket<ConnectionData>, error?: Error) => {
        const data = socket.data;
        if (!data) return;
        this.sockets.delete(data.id);
        if (!data.closedByUs && !data.reported) {
          data.reported = true;
          this.handler?.closed(data.id, error?.message ?? "closed by the peer");
        }
      },
      error: (socket: Socket<ConnectionData>, error: Error) => {
        if (socket.data) this.drop(socket, error.message);
      },
    };
  }
}
