// The thin driver that runs the quorum core (lease.ts) against real interfaces: it turns clock
// ticks, link and peer events, volume changes and witness IO completions into core events, feeds
// them one at a time, and performs the actions the core returns, in order (CONVENTIONS.md §1). The
// daemon and the simulator construct it with their own WitnessDisk, clock and host; it holds no
// lease logic.
//
// Two rules live here because they are about the IO, not the lease:
//  - Time catches up before every event. The core counts ticks of this node's monotonic clock; a
//    process that was stopped (SIGSTOP, a long GC, a hung host) gets no timer callbacks while it is
//    stopped, so before each event the driver feeds the ticks that elapsed on `clock.now()`. A node
//    that wakes up after its lease ran out therefore sees that first, before any message or IO.
//  - Timers only for what is due. After each event the driver asks the core for the first tick that
//    will act (QuorumCore.nextActionTick: the heartbeat, a timeout, a ballot's retry) and sets one
//    timer for it; an idle node wakes a few times a second, not every tick. The ticks before that
//    tick must act on nothing, whenever they are fed: the driver checks (a failure in the simulator).
//  - One witness IO at a time. A witness that hangs leaves its IO outstanding; while it is, every
//    new IO fails at once ("busy") instead of queueing behind it, so a hung witness costs one stuck
//    request, never a pile of them, and the core sees the witness as lost.
// It also keeps the witness latency figures `status` shows.
import type { Logger } from "../common/log.ts";
import type { Clock } from "../replica/io.ts";
import type { Grant } from "../replica/types.ts";
import { quorumTickMs } from "../constants.ts";
import type { QuorumMessage } from "./message.ts";
import { type QuorumAction, QuorumCore, type QuorumCoreOptions, type QuorumEvent, type QuorumPersisted, type QuorumReport, type QuorumStatus, type QuorumVolume } from "./lease.ts";

/** The witness disk, by sectors of witnessRecordBytes. Each call completes exactly once (maybe synchronously). */
export interface WitnessDisk {
  read(sector: number, count: number, done: (error: string | null, bytes?: Uint8Array) => void): void;
  write(sector: number, bytes: Uint8Array, done: (error: string | null) => void): void;
}

/** This node's monotonic clock (ms, any origin) and a one-shot timer on it. */
export type QuorumClock = Clock;

/** The node's side: what the core's decisions do. Every method is optional (a test may watch only some). */
export interface QuorumHost {
  grants?(changes: { volumeId: number; grant: Grant }[]): void;
  promote?(volumeId: number, epoch: bigint): void;
  demote?(volumeId: number, epoch: bigint): void;
  persist?(state: QuorumPersisted): void;
  sendPeer?(message: QuorumMessage): void;
  dropLink?(reason: string): void;
  feedWatchdog?(): void;
  report?(report: QuorumReport): void;
}

export interface LatencyFigures {
  count: number;
  lastMs: number | null;
  p50Ms: number | null;
  p99Ms: number | null;
  maxMs: number | null;
  failures: number;
}

const latencyWindow = 256;

export class LatencyRecorder {
  private readonly samples: number[] = [];
  private count = 0;
  private failures = 0;
  private last: number | null = null;

  record(ms: number, failed: boolean): void {
    this.count++;
    if (failed) this.failures++;
    this.last = ms;
    this.samples.push(ms);
    if (this.samples.length > latencyWindow) this.samples.shift();
  }

  figures(): LatencyFigures {
    const sorted = [...this.samples].sort((a, b) => a - b);
    const at = (q: number) => (sorted.length === 0 ? null : Number(sorted[Math.min(sorted.length - 1, Math.floor(q * sorted.length))]!.toFixed(3)));
    return { count: this.count, lastMs: this.last === null ? null : Number(this.last.toFixed(3)), p50Ms: at(0.5), p99Ms: at(0.99), maxMs: sorted.length === 0 ? null : Number(sorted[sorted.length - 1]!.toFixed(3)), failures: this.failures };
  }
}

export interface QuorumDriverOptions extends Omit<QuorumCoreOptions, "tickMs"> {
  disk: WitnessDisk;
  clock: QuorumClock;
  host: QuorumHost;
  tickMs?: number;
  logger?: Logger;
  /** Throw when ticks the core called quiet act (simulators and tests); else it is logged. */
  strictQuietTicks?: boolean;
}

export class QuorumDriver {
  readonly core: QuorumCore;
  private readonly tickMs: number;
  private readonly events: QuorumEvent[] = [];
  private draining = false;
  private started = false;
  private timer: { cancel(): void; tick: number } | undefined;
  /** The core's next acting tick, asked after the last thing it handled. */
  private actsAt = 1;
  private quietTickActed = false;
  private startedAt = 0;
  private ticksFed = 0;
  private ioBusy: { io: number; sinceMs: number } | undefined;
  private readonly reads = new LatencyRecorder();
  private readonly writes = new LatencyRecorder();
  private readonly requests = new Map<number, (error: string | null, result?: unknown) => void>();
  private nextRequest = 1;
  private stopped = false;

  constructor(private readonly options: QuorumDriverOptions) {
    this.tickMs = options.tickMs ?? quorumTickMs;
    this.core = new QuorumCore({ ...options, tickMs: this.tickMs });
  }

  start(): void {
    if (this.started || this.stopped) return;
    this.started = true;
    this.startedAt = this.options.clock.now();
    this.actsAt = this.core.nextActionTick();
    this.arm();
  }

  stop(): void {
    this.stopped = true;
    this.timer?.cancel();
    this.timer = undefined;
  }

  linkUp(): void {
    this.feed({ kind: "linkUp" });
  }

  linkDown(reason: string): void {
    this.feed({ kind: "linkDown", reason });
  }

  peerMessage(message: QuorumMessage): void {
    this.feed({ kind: "peerMessage", message });
  }

  volumes(volumes: QuorumVolume[]): void {
    this.feed({ kind: "volumes", volumes });
  }

  synced(synced: boolean): void {
    this.feed({ kind: "synced", synced });
  }

  /** An operator's forced promotion; `done` with null when this node won, else why not. */
  forcePromotion(done: (error: string | null, result?: unknown) => void): void {
    const request = this.nextRequest++;
    this.requests.set(request, done);
    this.feed({ kind: "forcePromotion", request });
  }

  grant(volumeId: number): Grant {
    return this.core.grant(volumeId);
  }

  /**
   * Feed the ticks that elapsed, now. The node calls it before it admits client IO: a process that
   * was stopped (SIGSTOP, a hung host) may find client requests queued before its timers run, and
   * must see its lease run out before it serves any of them.
   */
  catchUpNow(): void {
    this.feed(undefined);
  }

  status(): QuorumStatus & { latency: { read: LatencyFigures; write: LatencyFigures }; ioOutstandingMs: number | null } {
    return { ...this.core.status(), latency: { read: this.reads.figures(), write: this.writes.figures() }, ioOutstandingMs: this.ioBusy ? this.options.clock.now() - this.ioBusy.sinceMs : null };
  }

  /** Feed the ticks that elapsed, then `event`; re-entrant calls are queued. */
  private feed(event: QuorumEvent | undefined): void {
    if (this.stopped) return;
    if (event) this.events.push(event);
    if (this.draining) return;
    this.draining = true;
    let handled = false;
    try {
      handled = this.catchUp();
      for (let next = this.events.shift(); next; next = this.events.shift()) {
        this.handle(next);
        this.catchUp();
        handled = true;
      }
    } finally {
      this.draining = false;
    }
    if (handled && !this.stopped) this.arm();
  }

  /**
   * Feed the ticks that elapsed; whether there were any. Those before the core's next acting tick
   * go in one jump of their own, which must act on nothing: a deadline the core left out of
   * nextActionTick falls inside it and shows.
   */
  private catchUp(): boolean {
    if (!this.started) return false;
    const due = this.elapsedTicks() - this.ticksFed;
    if (due <= 0) return false;
    const quiet = Math.max(0, Math.min(due, this.actsAt - 1 - this.ticksFed));
    if (quiet > 0) this.tick(quiet, true);
    if (due > quiet && !this.stopped) this.tick(due - quiet, false);
    return true;
  }

  /**
   * Ticks elapsed since the start. The allowance (a ten-thousandth of a tick) keeps floating-point
   * rounding from counting a tick as not yet due at the very instant its timer was set for
   * (startedAt + tick·tickMs − startedAt can come out a hair short): the timer would then find
   * nothing due and set itself again for the same instant, for ever where time stands still
   * between timers (the simulator; found by quorum seed 700244).
   */
  private elapsedTicks(): number {
    return Math.floor((this.options.clock.now() - this.startedAt) / this.tickMs + 1e-4);
  }

  private tick(count: number, quiet: boolean): void {
    const actions = this.core.handle({ kind: "tick", count });
    this.ticksFed += count; // after: ticks a throwing core did not take are fed again
    if (quiet && actions.length > 0) this.quietActed(actions);
    this.actsAt = this.core.nextActionTick();
    this.run(actions);
  }

  private handle(event: QuorumEvent): void {
    const actions = this.core.handle(event);
    this.actsAt = this.core.nextActionTick();
    this.run(actions);
  }

  private quietActed(actions: QuorumAction[]): void {
    const detail = `ticks up to ${this.ticksFed}, claimed quiet, acted: ${actions.map((action) => action.kind).join(", ")}`;
    if (this.options.strictQuietTicks) throw new Error(`quorum core: ${detail}`);
    if (this.quietTickActed) return;
    this.quietTickActed = true;
    this.options.logger?.error("quorum core: ticks it called quiet acted (their actions ran late); not reported again", { detail });
  }

  /** One timer, for the core's next acting tick (never one already fed: after a throw, the next). */
  private arm(): void {
    const tick = Math.max(this.actsAt, this.ticksFed + 1);
    if (this.timer?.tick === tick) return;
    this.timer?.cancel();
    const delayMs = Math.max(0, Math.ceil(this.startedAt + tick * this.tickMs - this.options.clock.now()));
    const timer = this.options.clock.after(delayMs, () => {
      if (this.timer !== handle) return;
      this.timer = undefined;
      try {
        this.feed(undefined);
      } finally {
        // Even when the core threw (a bug): a node whose clock stopped would never see its lease end.
        if (!this.timer && !this.stopped) this.arm();
      }
    });
    const handle = { cancel: () => timer.cancel(), tick };
    this.timer = handle;
  }

  private run(actions: QuorumAction[]): void {
    const host = this.options.host;
    for (const action of actions) {
      switch (action.kind) {
        case "witnessRead":
          this.witnessIo(action.io, true, (done) => this.options.disk.read(action.sector, action.count, done));
          break;
        case "witnessWrite":
          this.witnessIo(action.io, false, (done) => this.options.disk.write(action.sector, action.bytes, (error) => done(error)));
          break;
        case "sendPeer":
          host.sendPeer?.(action.message);
          break;
        case "dropLink":
          host.dropLink?.(action.reason);
          break;
        case "grants":
          host.grants?.(action.grants);
          break;
        case "promote":
          host.promote?.(action.volumeId, action.epoch);
          break;
        case "demote":
          host.demote?.(action.volumeId, action.epoch);
          break;
        case "persist":
          host.persist?.(action.state);
          break;
        case "feedWatchdog":
          host.feedWatchdog?.();
          break;
        case "complete": {
          const done = this.requests.get(action.request);
          this.requests.delete(action.request);
          done?.(action.error, action.result);
          break;
        }
        case "report":
          host.report?.(action.report);
          break;
      }
    }
  }

  private witnessIo(io: number, read: boolean, start: (done: (error: string | null, bytes?: Uint8Array) => void) => void): void {
    if (this.ioBusy) {
      const outstandingMs = Math.round(this.options.clock.now() - this.ioBusy.sinceMs);
      this.events.push({ kind: "witnessDone", io, error: `busy: the previous witness IO has not returned for ${outstandingMs} ms (the witness hangs)` });
      return;
    }
    const sinceMs = this.options.clock.now();
    this.ioBusy = { io, sinceMs };
    let called = false;
    start((error, bytes) => {
      if (called) return;
      called = true;
      if (this.ioBusy?.io === io) this.ioBusy = undefined;
      (read ? this.reads : this.writes).record(this.options.clock.now() - sinceMs, error !== null);
      this.feed({ kind: "witnessDone", io, error, bytes });
    });
  }
}
