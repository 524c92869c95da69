// The narrow interfaces the replica driver performs its IO through. The same ReplicaDriver runs in
// the daemon (with the adapters of src/node/replica/io-adapters.ts and a TCP PeerTransport) and in
// the simulator (test/sim/, whose fakes implement the same interfaces with scheduled faults). All
// calls are callback-based: a callback may run synchronously or later, exactly once, and the driver
// copes with both. docs/replication.md states each contract.
import type { Payload } from "../common/bytes.ts";
import type { Grant, IoError, RemoteAddress } from "./types.ts";

export type IoCallback = (error: IoError | null) => void;

/**
 * The local replica of one volume. `write`/`trim`/`zero` with `fua` are durable when they complete;
 * otherwise they may sit in a volatile cache until a `flush` started after their completion
 * completes. Reads see every completed write. Buffers passed to `write` are not modified and must
 * not be kept after completion; `read` fills `target` completely or fails.
 */
export interface BlockStorage {
  read(offset: number, target: Uint8Array, done: IoCallback): void;
  /** `data` may be in pieces (a large frame received, Framer): written as they are, never joined first unless the storage must. */
  write(offset: number, data: Payload, fua: boolean, done: IoCallback): void;
  flush(done: IoCallback): void;
  trim(offset: number, length: number, fua: boolean, done: IoCallback): void;
  zero(offset: number, length: number, fua: boolean, noHole: boolean, done: IoCallback): void;
}

/**
 * The persistent metadata area of one volume (a small file or partition, zero-filled when new).
 * Same durability contract as BlockStorage; a write interrupted by a crash may leave any mix of old
 * and new bytes (the format's checksums detect it).
 */
export interface MetadataStore {
  sizeBytes(): number;
  read(offset: number, length: number, done: (error: IoError | null, bytes: Uint8Array | undefined) => void): void;
  write(offset: number, bytes: Uint8Array, done: IoCallback): void;
  flush(done: IoCallback): void;
}

/** What a transport reports to the driver. Connection ids are the transport's, unique per process. */
export interface PeerTransportHandler {
  /** A connection is open (`dialled`: it answers our `dial`; otherwise someone connected to us, from `remote`). */
  connected(connection: number, dialled: boolean, remote: RemoteAddress): void;
  /** A `dial` failed before a connection existed. */
  dialFailed(reason: string): void;
  /** Bytes arrived; the buffer becomes the driver's (the transport must not reuse it). */
  data(connection: number, bytes: Uint8Array): void;
  /** The connection is gone (either side closed it, or it broke). Not reported after `close`. */
  closed(connection: number, reason: string): void;
}

/**
 * The byte-stream link to the peer (TCP in production). The transport delivers bytes in order per
 * connection, or not at all; it does not reconnect by itself — the node core decides when to dial
 * (with backoff). `send` must not block; the transport queues what the socket cannot take yet.
 */
export interface PeerTransport {
  attach(handler: PeerTransportHandler): void;
  dial(): void;
  /**
   * The parts are never changed after this call, by the core or anyone: they are buffers the core
   * made (headers, tags, data it read), its admission copy of a client's write, or a client buffer
   * that is stable (WriteFlags.stable), so a transport may queue them without a copy.
   */
  send(connection: number, parts: readonly Uint8Array[]): void;
  close(connection: number): void;
}

/** This node's monotonic clock and a one-shot timer on it. */
export interface Clock {
  /** Milliseconds, from any origin. */
  now(): number;
  /** Call `callback` once, `delayMs` from now on this clock, unless cancelled first. */
  after(delayMs: number, callback: () => void): { cancel(): void };
}

export interface Random {
  fill(bytes: Uint8Array): void;
}

/**
 * Who may write each volume (DESIGN.md §5 item "keep the decision behind one interface"). The
 * driver asks `grant` when a volume opens and whenever a listener is called, and tells the
 * authority about the link so a quorum implementation can react to its loss.
 */
export interface WriteAuthority {
  grant(volumeId: number): Grant;
  subscribe(listener: (volumeId: number) => void): () => void;
  linkChanged(up: boolean): void;
}
