// The simulated replication network (CONVENTIONS.md §2): a PeerTransport per node over simulated
// byte-stream connections. The link is TCP in production, so faults are the ones TCP lets through
// to the application: latency and jitter, arbitrary re-chunking of the stream, stalls ("clogs") of
// one direction, silent partitions (bytes held until the partition ends; dials time out), cable
// pulls (connections reset, dials refused), resets, half-open connections after a node dies, and
// — beyond what TCP would allow, to prove the protocol never trusts the stream blindly — flipped
// bits and duplicated chunks. Bytes of an old connection may still arrive after a new one is up
// (reordering across connections), and intruders connect with garbage, a wrong secret, or a
// replay of a real node's recorded handshake. Within one connection delivery is in order.
// Scripted scenarios (scenario.ts) also hold one direction until they release it, and tap every
// send to see which messages went when.
import type { PeerTransport, PeerTransportHandler } from "../../src/replica/io.ts";
import { joinParts } from "../../src/replica/wire.ts";
import type { SimRandom } from "./random.ts";
import type { Scheduler } from "./scheduler.ts";

export interface NetworkFaults {
  latencyUsMin: number;
  latencyUsMax: number;
  /** Largest chunk the stream is cut into on delivery. */
  chunkBytesMax: number;
  /** Chance a delivered chunk has one bit flipped. */
  corruptProbability: number;
  /** Chance a delivered chunk is delivered twice. */
  duplicateProbability: number;
  /** Chance the survivor of a crashed peer hears a reset (otherwise the connection is half-open). */
  resetOnCrashProbability: number;
}

interface Direction {
  /** Time before which nothing is delivered (clog or partition). */
  blockedUntil: number;
  lastDelivery: number;
}

interface SimConnection {
  id: number;
  ends: [string, string];
  open: Map<string, boolean>;
  incarnations: Map<string, number>;
  directions: Map<string, Direction>;
  /** First bytes each side sent, kept for replay attacks. */
  recorded: Map<string, Uint8Array[]>;
  recordedBytes: Map<string, number>;
  /** Ends that were told `connected`; a dialer reset before that hears `dialFailed` instead. */
  announced: Set<string>;
  dialer: string | undefined;
}

const recordBytesMax = 4096;

/** What a held direction keeps, in order, until it is released. */
type HeldSend = { kind: "bytes"; connection: SimConnection; bytes: Uint8Array } | { kind: "fin"; connection: SimConnection };

export class SimNetwork {
  private readonly handlers = new Map<string, { handler: PeerTransportHandler; incarnation: number }>();
  private readonly connections = new Map<number, SimConnection>();
  private nextConnection = 1;
  private partitionUntil = 0;
  private cutUntil = 0;
  private readonly clogUntil = new Map<string, number>();
  readonly recordings: Uint8Array[] = [];
  /** Directions held by a script: everything sent from that node waits, in order, for `release`. */
  private readonly held = new Map<string, HeldSend[]>();
  /** Told of every send (the bytes as the node wrote them) before any fault applies. */
  tap: ((from: string, connection: number, bytes: Uint8Array) => void) | undefined;
  readonly counters = { chunks: 0, corrupted: 0, duplicated: 0, resets: 0, intruders: 0, dialsFailed: 0 };

  constructor(
    private readonly scheduler: Scheduler,
    private readonly random: SimRandom,
    readonly faults: NetworkFaults,
    readonly names: [string, string],
  ) {}

  private other(name: string): string {
    return name === this.names[0] ? this.names[1] : this.names[0];
  }

  private latency(): number {
    return this.random.range(this.faults.latencyUsMin, this.faults.latencyUsMax);
  }

  get now(): number {
    return this.scheduler.now;
  }

  /** A node (re)starts: its transport. Connections of its earlier incarnation are dead to it. */
  endpoint(name: string, incarnation: number): PeerTransport {
    const network = this;
    return {
      attach(handler) {
        network.handlers.set(name, { handler, incarnation });
      },
      dial() {
        network.dial(name, incarnation);
      },
      send(connection, parts) {
        network.send(name, incarnation, connection, parts);
      },
      close(connection) {
        network.close(name, incarnation, connection);
      },
    };
  }

  private handlerOf(name: string, incarnation: number): PeerTransportHandler | undefined {
    const entry = this.handlers.get(name);
    return entry && entry.incarnation === incarnation ? entry.handler : undefined;
  }

  /** The node died: it hears nothing more; its peer hears a reset or nothing (half-open). */
  crash(name: string): void {
    this.handlers.delete(name);
    for (const connection of this.connections.values()) {
      if (!connection.ends.includes(name)) continue;
      connection.open.set(name, false);
      const survivor = connection.ends[0] === name ? connection.ends[1] : connection.ends[0];
      if (connection.open.get(survivor) && this.random.chance(this.faults.resetOnCrashProbability)) this.resetSide(connection, survivor, "connection reset by peer");
    }
  }

  partition(durationUs: number): void {
    this.partitionUntil = Math.max(this.partitionUntil, this.now + durationUs);
    for (const connection of this.connections.values()) for (const direction of connection.directions.values()) direction.blockedUntil = Math.max(direction.blockedUntil, this.partitionUntil);
  }

  /** Cable pull: connections reset at once, dials are refused until it ends. */
  cut(durationUs: number): void {
    this.cutUntil = Math.max(this.cutUntil, this.now + durationUs);
    for (const connection of [...this.connections.values()]) this.reset(connection);
  }

  /** One direction (from `name`) stalls for a while, as under congestion. */
  clog(name: string, durationUs: number): void {
    this.clogUntil.set(name, Math.max(this.clogUntil.get(name) ?? 0, this.now + durationUs));
    for (const connection of this.connections.values()) {
      const direction = connection.directions.get(name);
      if (direction) direction.blockedUntil = Math.max(direction.blockedUntil, this.now + durationUs);
    }
  }

  /** Hold everything `name` sends from now on (in order) until `release(name)`. */
  hold(name: string): void {
    if (!this.held.has(name)) this.held.set(name, []);
  }

  /** Send what a hold kept, in order, as if it was sent now. */
  release(name: string): void {
    const queue = this.held.get(name);
    if (!queue) return;
    this.held.delete(name);
    for (const entry of queue) {
      if (entry.kind === "bytes") this.transmit(entry.connection, name, entry.bytes);
      else this.transmitFin(entry.connection, name);
    }
  }

  /** When the last partition, cable pull or stall now in force ends (the past when none is). */
  faultsEndUs(): number {
    return Math.max(this.partitionUntil, this.cutUntil, ...this.clogUntil.values());
  }

  resetAll(): void {
    for (const connection of [...this.connections.values()]) this.reset(connection);
  }

  heal(): void {
    this.partitionUntil = this.now;
    this.cutUntil = this.now;
    this.clogUntil.clear();
    for (const connection of this.connections.values()) for (const direction of connection.directions.values()) direction.blockedUntil = this.now;
  }

  /** Stop injecting bit flips and duplicates (final phase). */
  calm(): void {
    this.faults.corruptProbability = 0;
    this.faults.duplicateProbability = 0;
  }

  private dial(from: string, incarnation: number): void {
    const to = this.other(from);
    const fail = (reason: string, delay: number) => {
      this.counters.dialsFailed++;
      this.scheduler.after(delay, () => this.handlerOf(from, incarnation)?.dialFailed(reason));
    };
    if (this.now < this.cutUntil) return fail("network is unreachable", this.latency());
    if (this.now < this.partitionUntil) return fail("connect timed out", Math.max(this.partitionUntil - this.now, 100_000));
    const target = this.handlers.get(to);
    if (!target) return fail("connection refused", this.latency() * 2);
    const id = this.nextConnection++;
    const handshake = this.latency();
    const connection: SimConnection = {
      id,
      ends: [from, to],
      open: new Map([
        [from, true],
        [to, true],
      ]),
      incarnations: new Map([
        [from, incarnation],
        [to, target.incarnation],
      ]),
      directions: new Map([
        [from, { blockedUntil: Math.max(this.clogUntil.get(from) ?? 0, 0), lastDelivery: this.now + 2 * handshake }],
        [to, { blockedUntil: Math.max(this.clogUntil.get(to) ?? 0, 0), lastDelivery: this.now + 2 * handshake }],
      ]),
      recorded: new Map(),
      recordedBytes: new Map(),
      announced: new Set(),
      dialer: from,
    };
    this.connections.set(id, connection);
    this.scheduler.after(handshake, () => {
      if (!connection.open.get(to)) return;
      connection.announced.add(to);
      this.handlerOf(to, target.incarnation)?.connected(id, false, { host: from, port: id });
    });
    this.scheduler.after(2 * handshake, () => {
      if (!connection.open.get(from)) return;
      connection.announced.add(from);
      this.handlerOf(from, incarnation)?.connected(id, true, { host: to, port: id });
    });
  }

  private send(from: string, incarnation: number, id: number, parts: readonly Uint8Array[]): void {
    const connection = this.connections.get(id);
    if (!connection || !connection.open.get(from) || connection.incarnations.get(from) !== incarnation) return;
    const bytes = joinParts(parts);
    this.record(connection, from, bytes);
    this.tap?.(from, id, bytes);
    const held = this.held.get(from);
    if (held) held.push({ kind: "bytes", connection, bytes });
    else this.transmit(connection, from, bytes);
  }

  private transmit(connection: SimConnection, from: string, bytes: Uint8Array): void {
    const id = connection.id;
    const to = connection.ends[0] === from ? connection.ends[1] : connection.ends[0];
    const direction = connection.directions.get(from)!;
    let offset = 0;
    while (offset < bytes.length) {
      const size = Math.min(bytes.length - offset, 1 + this.random.int(this.faults.chunkBytesMax));
      let chunk = bytes.subarray(offset, offset + size);
      offset += size;
      if (this.faults.corruptProbability > 0 && this.random.chance(this.faults.corruptProbability)) {
        chunk = chunk.slice();
        const bit = this.random.int(chunk.length * 8);
        chunk[bit >> 3] = chunk[bit >> 3]! ^ (1 << (bit & 7));
        this.counters.corrupted++;
      }
      const copies = this.faults.duplicateProbability > 0 && this.random.chance(this.faults.duplicateProbability) ? 2 : 1;
      if (copies === 2) this.counters.duplicated++;
      for (let copy = 0; copy < copies; copy++) {
        const at = Math.max(this.now + this.latency(), direction.blockedUntil + this.latency(), direction.lastDelivery);
        direction.lastDelivery = at;
        const delivered = chunk;
        this.counters.chunks++;
        this.scheduler.at(at, () => {
          if (!connection.open.get(to)) return;
          this.handlerOf(to, connection.incarnations.get(to)!)?.data(id, delivered);
        });
      }
    }
  }

  private record(connection: SimConnection, from: string, bytes: Uint8Array): void {
    const sofar = connection.recordedBytes.get(from) ?? 0;
    if (sofar >= recordBytesMax) return;
    const take = bytes.slice(0, recordBytesMax - sofar);
    const list = connection.recorded.get(from) ?? [];
    list.push(take);
    connection.recorded.set(from, list);
    connection.recordedBytes.set(from, sofar + take.length);
    if (sofar + take.length >= recordBytesMax || sofar === 0) {
      if (this.recordings.length >= 8) this.recordings.shift();
      this.recordings.push(joinParts(list));
    }
  }

  private close(from: string, incarnation: number, id: number): void {
    const connection = this.connections.get(id);
    if (!connection || !connection.open.get(from) || connection.incarnations.get(from) !== incarnation) return;
    connection.open.set(from, false);
    const held = this.held.get(from);
    if (held) held.push({ kind: "fin", connection });
    else this.transmitFin(connection, from);
  }

  private transmitFin(connection: SimConnection, from: string): void {
    const to = connection.ends[0] === from ? connection.ends[1] : connection.ends[0];
    const direction = connection.directions.get(from)!;
    // The FIN follows the data already sent.
    const at = Math.max(this.now + this.latency(), direction.blockedUntil + this.latency(), direction.lastDelivery);
    direction.lastDelivery = at;
    this.scheduler.at(at, () => this.closeSide(connection, to, "closed by the peer"));
  }

  private reset(connection: SimConnection): void {
    this.counters.resets++;
    for (const end of connection.ends) if (connection.open.get(end)) this.resetSide(connection, end, "connection reset");
  }

  private resetSide(connection: SimConnection, end: string, reason: string): void {
    connection.open.set(end, false);
    this.scheduler.after(this.latency(), () => this.notifyClosed(connection, end, reason));
  }

  private closeSide(connection: SimConnection, end: string, reason: string): void {
    if (!connection.open.get(end)) return;
    connection.open.set(end, false);
    this.notifyClosed(connection, end, reason);
  }

  private notifyClosed(connection: SimConnection, end: string, reason: string): void {
    const handler = this.handlerOf(end, connection.incarnations.get(end)!);
    if (connection.announced.has(end)) handler?.closed(connection.id, reason);
    else if (connection.dialer === end) {
      this.counters.dialsFailed++;
      handler?.dialFailed(reason);
    }
    if (![...connection.open.values()].some(Boolean)) this.connections.delete(connection.id);
  }

  /** An intruder connects to `target` and sends `bytes` (garbage, a bad handshake, or a replay). */
  intrude(target: string, bytes: Uint8Array, kind: string): void {
    const entry = this.handlers.get(target);
    if (!entry) return;
    this.counters.intruders++;
    const id = this.nextConnection++;
    const connection: SimConnection = {
      id,
      ends: [`intruder-${kind}`, target],
      open: new Map([
        [`intruder-${kind}`, true],
        [target, true],
      ]),
      incarnations: new Map([
        [`intruder-${kind}`, -1],
        [target, entry.incarnation],
      ]),
      directions: new Map([
        [`intruder-${kind}`, { blockedUntil: 0, lastDelivery: this.now }],
        [target, { blockedUntil: 0, lastDelivery: this.now }],
      ]),
      recorded: new Map(),
      recordedBytes: new Map(),
      announced: new Set([target]),
      dialer: undefined,
    };
    this.connections.set(id, connection);
    const handler = entry.handler;
    this.scheduler.after(this.latency(), () => {
      if (!connection.open.get(target)) return;
      handler.connected(id, false, { host: `intruder-${kind}`, port: id });
      let offset = 0;
      let at = this.now;
      while (offset < bytes.length) {
        const size = Math.min(bytes.length - offset, 1 + this.random.int(this.faults.chunkBytesMax));
        const chunk = bytes.slice(offset, offset + size);
        offset += size;
        at += this.latency();
        this.scheduler.at(at, () => {
          if (connection.open.get(target) && this.handlers.get(target)?.handler === handler) handler.data(id, chunk);
        });
      }
      // The intruder hangs up after a while if the node has not.
      this.scheduler.at(at + 50_000, () => this.closeSide(connection, target, "intruder hung up"));
    });
  }
}
