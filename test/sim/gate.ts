// A simulated process's door to the world: everything that reaches a node (bytes and connection
// events from the network, completions from its disks, its clock's ticks, its clients' requests)
// passes through its gate. A gate can stall — the process is descheduled, swapped out, stopped by a
// debugger — and everything that arrives meanwhile waits, in order, until the stall ends; ticks are
// not piled up (a late timer fires once). A gate also closes for good when its process dies, so a
// dead incarnation hears nothing more.
import type { BlockStorage, IoCallback, MetadataStore, PeerTransport, PeerTransportHandler } from "../../src/replica/io.ts";
import type { IoError } from "../../src/replica/types.ts";
import type { Scheduler } from "./scheduler.ts";

export class ProcessGate {
  stalledUntil = 0;
  private open = true;

  constructor(private readonly scheduler: Scheduler) {}

  /** The process died: nothing more is delivered to it. */
  close(): void {
    this.open = false;
  }

  /** Stall the process until `untilUs` (extending a stall in progress). */
  stall(untilUs: number): void {
    this.stalledUntil = Math.max(this.stalledUntil, untilUs);
  }

  get stalled(): boolean {
    return this.stalledUntil > this.scheduler.now;
  }

  /** Run `work` in the process now, or when its stall ends. */
  enter(work: () => void): void {
    if (!this.open) return;
    if (this.stalled) {
      this.scheduler.at(this.stalledUntil, () => this.enter(work));
      return;
    }
    work();
  }

  transport(inner: PeerTransport): PeerTransport {
    return {
      attach: (handler: PeerTransportHandler) =>
        inner.attach({
          connected: (connection, dialled, remote) => this.enter(() => handler.connected(connection, dialled, remote)),
          dialFailed: (reason) => this.enter(() => handler.dialFailed(reason)),
          data: (connection, bytes) => this.enter(() => handler.data(connection, bytes)),
          closed: (connection, reason) => this.enter(() => handler.closed(connection, reason)),
        }),
      dial: () => inner.dial(),
      send: (connection, parts) => inner.send(connection, parts),
      close: (connection) => inner.close(connection),
    };
  }

  storage(inner: BlockStorage): BlockStorage {
    const back = (done: IoCallback): IoCallback => (error) => this.enter(() => done(error));
    return {
      read: (offset, target, done) => inner.read(offset, target, back(done)),
      write: (offset, data, fua, done) => inner.write(offset, data, fua, back(done)),
      flush: (done) => inner.flush(back(done)),
      trim: (offset, length, fua, done) => inner.trim(offset, length, fua, back(done)),
      zero: (offset, length, fua, noHole, done) => inner.zero(offset, length, fua, noHole, back(done)),
    };
  }

  metadata(inner: MetadataStore): MetadataStore {
    return {
      sizeBytes: () => inner.sizeBytes(),
      read: (offset, length, done) => inner.read(offset, length, (error: IoError | null, bytes: Uint8Array | undefined) => this.enter(() => done(error, bytes))),
      write: (offset, bytes, done) => inner.write(offset, bytes, (error) => this.enter(() => done(error))),
      flush: (done) => inner.flush((error) => this.enter(() => done(error))),
    };
  }
}
