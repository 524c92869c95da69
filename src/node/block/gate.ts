// The top layer of every volume's stack, just under the exports. It counts IO (for status and the
// dashboard's rates), tracks requests in flight so a shutdown can drain them, and can freeze the
// volume: while frozen, new requests wait (the VM sees latency, never an error) until the gate is
// thawed; once closed, requests fail with ESHUTDOWN. Freezing is how the node stops IO at once when
// it may no longer be allowed to write (DESIGN.md §5 rule 2); the decision itself lives elsewhere.
import type { Payload } from "../../common/bytes.ts";
import { BlockError } from "../../common/errors.ts";
import type { BlockLayer, Extent, WriteFlags, ZeroFlags } from "./layer.ts";
import { PassThroughLayer } from "./layer.ts";

export interface GateCounters {
  readOps: number;
  readBytes: number;
  writeOps: number;
  writeBytes: number;
  flushOps: number;
  trimOps: number;
  zeroOps: number;
  errors: number;
}

export type GateState = { kind: "open" } | { kind: "frozen"; reason: string; sinceMs: number } | { kind: "closed" };

/**
 * What a volume does while the quorum forbids IO on it (DESIGN.md §5 rule 2): `suspend` (requests
 * wait, the VM sees latency) or `error` (requests fail with EIO at once, for a VM that must notice).
 */
export type FreezeMode = "suspend" | "error";
export const freezeModes: readonly FreezeMode[] = ["suspend", "error"];

/** The quorum's hold on a volume: separate from `freeze`, which a copy-out takes and gives back. */
export interface QuorumHold {
  reason: string;
  mode: FreezeMode;
  sinceMs: number;
}

export class GateLayer extends PassThroughLayer {
  readonly kind = "gate";
  private gateState: GateState = { kind: "open" };
  private quorumHold: QuorumHold | undefined;
  /** Runs before each request is admitted (the quorum catches up with the clock, and may hold the gate). */
  beforeRequest: (() => void) | undefined;
  private inFlight = 0;
  private thawWaiters: (() => void)[] = [];
  private idleWaiters: (() => void)[] = [];
  readonly counters: GateCounters = { readOps: 0, readBytes: 0, writeOps: 0, writeBytes: 0, flushOps: 0, trimOps: 0, zeroOps: 0, errors: 0 };

  constructor(below: BlockLayer, private readonly now: () => number = Date.now) {
    super(below);
  }

  get state(): GateState {
    return this.gateState;
  }

  get requestsInFlight(): number {
    return this.inFlight;
  }

  get hold(): QuorumHold | undefined {
    return this.quorumHold;
  }

  /** The quorum forbids IO: new requests wait (suspend) or fail with EIO (error) until `release`. */
  holdForQuorum(reason: string, mode: FreezeMode): void {
    const sinceMs = this.quorumHold?.sinceMs ?? this.now();
    this.quorumHold = { reason, mode, sinceMs };
    if (mode === "error") for (const wake of this.thawWaiters.splice(0)) wake();
  }

  releaseQuorumHold(): void {
    if (!this.quorumHold) return;
    this.quorumHold = undefined;
    if (this.gateState.kind !== "frozen") for (const wake of this.thawWaiters.splice(0)) wake();
  }

  private get passes(): boolean {
    return this.gateState.kind === "open" && this.quorumHold === undefined;
  }

  /** New requests wait until `thaw`; requests already below the gate complete normally. */
  freeze(reason: string): void {
    if (this.gateState.kind === "open") this.gateState = { kind: "frozen", reason, sinceMs: this.now() };
  }

  thaw(): void {
    if (this.gateState.kind !== "frozen") return;
    this.gateState = { kind: "open" };
    if (this.quorumHold?.mode !== "suspend") for (const wake of this.thawWaiters.splice(0)) wake();
  }

  /** Resolves when no request is in flight below the gate. */
  idle(): Promise<void> {
    if (this.inFlight === 0) return Promise.resolve();
    return new Promise((resolve) => this.idleWaiters.push(resolve));
  }

  /** Refuse new requests with ESHUTDOWN (waiting ones too), then wait for those in flight. */
  async shutdown(): Promise<void> {
    this.gateState = { kind: "closed" };
    for (const wake of this.thawWaiters.splice(0)) wake();
    await this.idle();
  }

  override async close(): Promise<void> {
    await this.shutdown();
    await this.below.close();
  }

  private async pass<T>(run: () => Promise<T>): Promise<T> {
    this.beforeRequest?.();
    for (;;) {
      if (this.gateState.kind === "closed") throw new BlockError("ESHUTDOWN", "volume is shutting down");
      if (this.quorumHold?.mode === "error") throw new BlockError("EIO", `no IO on this volume now: ${this.quorumHold.reason}`);
      if (this.gateState.kind === "open" && this.quorumHold === undefined) break;
      await new Promise<void>((resolve) => this.thawWaiters.push(resolve));
    }
    this.inFlight++;
    try {
      return await run();
    } catch (error) {
      this.counters.errors++;
      throw error;
    } finally {
      if (--this.inFlight === 0) for (const wake of this.idleWaiters.splice(0)) wake();
    }
  }

  override read(offset: number, target: Uint8Array): Promise<void> {
    this.counters.readOps++;
    this.counters.readBytes += target.length;
    this.beforeRequest?.();
    if (this.passes) return this.passOpen(() => this.below.read(offset, target));
    return this.pass(() => this.below.read(offset, target));
  }

  override write(offset: number, source: Payload, flags?: WriteFlags): Promise<void> {
    this.counters.writeOps++;
    this.counters.writeBytes += source.length;
    this.beforeRequest?.();
    if (this.passes) return this.passOpen(() => this.below.write(offset, source, flags));
    return this.pass(() => this.below.write(offset, source, flags));
  }

  override flush(): Promise<void> {
    this.counters.flushOps++;
    return this.pass(() => this.below.flush());
  }

  override trim(offset: number, length: number, flags?: WriteFlags): Promise<void> {
    this.counters.trimOps++;
    return this.pass(() => this.below.trim(offset, length, flags));
  }

  override zero(offset: number, length: number, flags?: ZeroFlags): Promise<void> {
    this.counters.zeroOps++;
    return this.pass(() => this.below.zero(offset, length, flags));
  }

  override cache(offset: number, length: number): Promise<void> {
    return this.pass(() => this.below.cache(offset, length));
  }

  override extents(offset: number, length: number): Promise<Extent[]> {
    return this.pass(() => this.below.extents(offset, length));
  }

  /** The hot path for reads and writes on an open gate: no extra await before the layer below. */
  private passOpen(run: () => Promise<void>): Promise<void> {
    this.inFlight++;
    let promise: Promise<void>;
    try {
      promise = run();
    } catch (error) {
      promise = Promise.reject(error);
    }
    return promise.then(
      () => this.settle(),
      (error) => {
        this.counters.errors++;
        this.settle();
        throw error;
      },
    );
  }

  private settle(): void {
    if (--this.inFlight === 0) for (const wake of this.idleWaiters.splice(0)) wake();
  }
}
