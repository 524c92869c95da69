// The lab's link relay: a loopback TCP forwarder standing between the two nodes' replication
// endpoints, so the lab (and the integration tests) can cut, heal and delay the link without root
// tools. `cut` closes every forwarded connection at once (both nodes see the link drop, as after a
// cable pull) and refuses new ones until `heal`; `delay(ms)` holds each chunk for that long before
// passing it on, in order, in both directions. A side that cannot take more gets it queued (the
// nodes' own send queues bound what is in flight on the link).
import type { Socket, TCPSocketListener } from "bun";
import { SocketWriteQueue } from "../../common/socket-write-queue.ts";
import type { HostPort } from "../config.ts";

interface Pair {
  client: Socket<Side>;
  server: Socket<Side> | undefined;
  /** Bytes from the client that arrived before the connection to the target was up. */
  early: Uint8Array[];
  closed: boolean;
}

interface Side {
  pair: Pair;
  /** Bytes waiting for this socket to drain. */
  output: SocketWriteQueue;
  role: "client" | "server";
}

export interface RelayState {
  cut: boolean;
  delayMs: number;
  connections: number;
  bytesForwarded: number;
}

export class LinkRelay {
  private readonly pairs = new Set<Pair>();
  private isCut = false;
  private delayMs = 0;
  private bytesForwarded = 0;

  private constructor(
    private readonly listener: TCPSocketListener<Side>,
    readonly target: HostPort,
  ) {}

  get port(): number {
    return this.listener.port;
  }

  static start(options: { listen: HostPort; target: HostPort }): LinkRelay {
    let relay: LinkRelay | undefined;
    const listener = Bun.listen<Side>({
      hostname: options.listen.hostname,
      port: options.listen.port,
      socket: {
        open: (socket) => relay!.accepted(socket),
        data: (socket, data) => relay!.forward(socket.data, data),
        drain: (socket) => socket.data?.output.drain(socket),
        close: (socket) => relay!.closePair(socket.data?.pair),
        error: (socket) => relay!.closePair(socket.data?.pair),
      },
    });
    relay = new LinkRelay(listener, options.target);
    return relay;
  }

  state(): RelayState {
    return { cut: this.isCut, delayMs: this.delayMs, connections: this.pairs.size, bytesForwarded: this.bytesForwarded };
  }

  cut(): void {
    this.isCut = true;
    for (const pair of [...this.pairs]) this.closePair(pair);
  }

  heal(): void {
    this.isCut = false;
  }

  delay(ms: number): void {
    if (!Number.isInteger(ms) || ms < 0) throw new Error("delay must be a whole number of milliseconds >= 0");
    this.delayMs = ms;
  }

  close(): void {
    for (const pair of [...this.pairs]) this.closePair(pair);
    this.listener.stop(true);
  }

  private accepted(client: Socket<Side>): void {
    if (this.isCut) {
      client.end();
      return;
    }
    const pair: Pair = { client, server: undefined, early: [], closed: false };
    client.data = { pair, output: new SocketWriteQueue(), role: "client" };
    this.pairs.add(pair);
    Bun.connect<Side>({
      hostname: this.target.hostname,
      port: this.target.port,
      socket: {
        open: (server) => {
          if (pair.closed) return void server.end();
          server.data = { pair, output: new SocketWriteQueue(), role: "server" };
          pair.server = server;
          server.setNoDelay(true);
          for (const bytes of pair.early.splice(0)) server.data.output.write(server, bytes);
        },
        data: (server, data) => this.forward(server.data, data),
        drain: (server) => server.data?.output.drain(server),
        close: () => this.closePair(pair),
        error: () => this.closePair(pair),
        connectError: () => this.closePair(pair),
      },
    }).catch(() => this.closePair(pair));
    client.setNoDelay(true);
  }

  /** `bytes` is the runtime's read buffer, valid during this call only: kept bytes are copied. */
  private forward(from: Side | undefined, bytes: Uint8Array): void {
    if (!from || from.pair.closed) return;
    const pair = from.pair;
    const send = (chunk: Uint8Array) => {
      if (pair.closed) return;
      this.bytesForwarded += chunk.length;
      if (from.role === "client") {
        if (pair.server) pair.server.data.output.write(pair.server, chunk);
        else pair.early.push(new Uint8Array(chunk)); // a copy: a Buffer's slice is a view
      } else pair.client.data.output.write(pair.client, chunk);
    };
    // Timers with equal delays fire in the order they were set, so order is kept.
    if (this.delayMs > 0) {
      const kept = new Uint8Array(bytes);
      setTimeout(() => send(kept), this.delayMs);
    } else send(bytes);
  }

  private closePair(pair: Pair | undefined): void {
    if (!pair || pair.closed) return;
    pair.closed = true;
    this.pairs.delete(pair);
    pair.client.terminate();
    pair.server?.terminate();
  }
}
