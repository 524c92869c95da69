// The simulated witness disk for the quorum simulator: one shared area of sectors, reached by each
// node through its own path, with the faults a real shared LUN shows. Each IO takes effect at a
// random instant between its start and its completion (so reads and writes of the two nodes
// interleave as on a real disk) and completes later. Faults, per node path or for both: IO errors
// (a failed write may leave its sector torn: some 512-byte pieces new, some old), a failing path
// (every IO errors), a hang (IO issued during it starts only when it ends — or never, until healed),
// and a crash of the writer (its write in flight lands whole, torn or not at all).
import { witnessRecordBytes } from "../../src/constants.ts";
import type { WitnessDisk } from "../../src/quorum/driver.ts";
import type { SimRandom } from "./random.ts";
import type { Scheduler } from "./scheduler.ts";

export interface WitnessFaults {
  latencyUs: [number, number];
  /** Probability that one IO fails on its own. */
  errorProbability: number;
  /** Probability that a failed write leaves its sector torn (else it left nothing). */
  tearProbability: number;
}

interface PendingIo {
  node: number;
  incarnation: number;
  /** Set when the IO has started (a hung path holds it back). */
  started: boolean;
  effect: () => void;
  finish: (error: string | null) => void;
  /** For writes: the outcome if the writer crashes before the effect. */
  sector?: number;
  bytes?: Uint8Array;
  applied: boolean;
  cancelled: boolean;
}

export interface WitnessStats {
  reads: number;
  writes: number;
  errors: number;
  tears: number;
  hungIos: number;
}

export class SimWitness {
  readonly area: Uint8Array;
  /** Faults are counted per node path, so overlapping faults of different scopes end one at a time. */
  private readonly failing = [0, 0];
  private readonly hung = [0, 0];
  private readonly held: PendingIo[] = [];
  private readonly inFlight = new Set<PendingIo>();
  readonly stats: WitnessStats = { reads: 0, writes: 0, errors: 0, tears: 0, hungIos: 0 };
  /** Every write that took effect: the checkers read the history of the slots from it. */
  readonly writeLog: { timeUs: number; node: number; sector: number; ok: boolean }[] = [];

  constructor(
    initial: Uint8Array,
    private readonly scheduler: Scheduler,
    private readonly random: SimRandom,
    private readonly faults: WitnessFaults,
    /** Runs a completion on the node (the simulation defers it while the node is paused, drops it after a crash). */
    private readonly deliver: (node: number, incarnation: number, run: () => void) => void,
  ) {
    this.area = initial.slice();
  }

  setFailing(nodes: number[], failing: boolean): void {
    for (const node of nodes) this.failing[node] = Math.max(0, this.failing[node]! + (failing ? 1 : -1));
  }

  setHung(nodes: number[], hung: boolean): void {
    for (const node of nodes) this.hung[node] = Math.max(0, this.hung[node]! + (hung ? 1 : -1));
    if (!hung) {
      for (const io of this.held.splice(0)) {
        if (this.hung[io.node]! > 0) this.held.push(io);
        else this.begin(io);
      }
    }
  }

  healAll(): void {
    this.failing.fill(0);
    this.hung.fill(0);
    this.setHung([], false);
  }

  isHealthy(node: number): boolean {
    return this.failing[node] === 0 && this.hung[node] === 0;
  }

  endpoint(node: number, incarnation: number): WitnessDisk {
    return {
      read: (sector, count, done) => {
        this.stats.reads++;
        let snapshot: Uint8Array | undefined;
        this.submit(node, incarnation, () => (snapshot = this.area.slice(sector * witnessRecordBytes, (sector + count) * witnessRecordBytes)), (error) => done(error, error ? undefined : snapshot));
      },
      write: (sector, bytes, done) => {
        this.stats.writes++;
        const copy = bytes.slice();
        const io = this.submit(node, incarnation, () => this.apply(node, sector, copy, true), done);
        io.sector = sector;
        io.bytes = copy;
      },
    };
  }

  /** The node crashed: its writes in flight land whole, torn, or not at all; nothing completes to it. */
  crash(node: number): void {
    for (const io of [...this.inFlight, ...this.held]) {
      if (io.node !== node || io.applied || io.cancelled) continue;
      io.cancelled = true;
      this.inFlight.delete(io);
      if (io.sector === undefined || !io.started) continue;
      const outcome = this.random.int(3);
      if (outcome === 0) this.apply(node, io.sector, io.bytes!, true);
      else if (outcome === 1) this.tear(node, io.sector, io.bytes!);
    }
    for (let index = this.held.length - 1; index >= 0; index--) if (this.held[index]!.node === node) this.held.splice(index, 1);
  }

  private submit(node: number, incarnation: number, effect: () => void, finish: (error: string | null) => void): PendingIo {
    const io: PendingIo = { node, incarnation, started: false, effect, finish, applied: false, cancelled: false };
    if (this.hung[node]! > 0) {
      this.stats.hungIos++;
      this.held.push(io);
    } else this.begin(io);
    return io;
  }

  private begin(io: PendingIo): void {
    io.started = true;
    this.inFlight.add(io);
    const [min, max] = this.faults.latencyUs;
    const latency = min + this.random.float() * (max - min);
    const effectAt = this.random.float() * latency;
    let error: string | null = null;
    this.scheduler.after(effectAt, () => {
      if (io.cancelled) return;
      if (this.failing[io.node]! > 0 || this.random.chance(this.faults.errorProbability)) {
        error = "EIO";
        this.stats.errors++;
        if (io.sector !== undefined && this.random.chance(this.faults.tearProbability)) this.tear(io.node, io.sector, io.bytes!);
        io.applied = true;
        return;
      }
      io.effect();
      io.applied = true;
    });
    this.scheduler.after(latency, () => {
      if (io.cancelled) return;
      this.inFlight.delete(io);
      // A path that hung after the IO started holds its completion back too.
      if (this.hung[io.node]! > 0) {
        this.held.push({ ...io, started: true, sector: undefined, bytes: undefined, effect: () => {}, finish: () => io.finish(error) });
        return;
      }
      this.deliver(io.node, io.incarnation, () => io.finish(error));
    });
  }

  private apply(node: number, sector: number, bytes: Uint8Array, ok: boolean): void {
    this.area.set(bytes, sector * witnessRecordBytes);
    this.writeLog.push({ timeUs: this.scheduler.now, node, sector, ok });
  }

  /** Some 512-byte pieces of the new record land, the others keep the old bytes. */
  private tear(node: number, sector: number, bytes: Uint8Array): void {
    const pieces = witnessRecordBytes / 512;
    const keepNew = 1 + this.random.int(pieces - 1); // at least one new and one old piece
    const base = sector * witnessRecordBytes;
    // Fisher-Yates: a fixed number of draws (a sort with a random comparator would not be reproducible).
    const order = Array.from({ length: pieces }, (_, index) => index);
    for (let index = pieces - 1; index > 0; index--) {
      const other = this.random.int(index + 1);
      [order[index], order[other]] = [order[other]!, order[index]!];
    }
    for (const piece of order.slice(0, keepNew)) this.area.set(bytes.subarray(piece * 512, (piece + 1) * 512), base + piece * 512);
    this.stats.tears++;
    this.writeLog.push({ timeUs: this.scheduler.now, node, sector, ok: false });
  }
}
