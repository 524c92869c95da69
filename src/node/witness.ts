// The node's witness service, as far as it goes before the quorum drives the data path: it watches
// the configured witness (one read of every record per heartbeat interval, on the witness disk's
// own thread, with a deadline, never two at once), reports whether it is reachable, its latency and
// what it holds (for `tandem status` and `tandem witness show`), and arms the kernel watchdog per the
// config, feeding it from the event loop so a hung daemon is reset (DESIGN.md §5 rule 7). The lease
// itself (src/quorum/lease.ts) is wired in here next, through the same disk, with the watchdog fed
// by the core's feedWatchdog action instead.
import type { Logger } from "../common/log.ts";
import { TandemError } from "../common/errors.ts";
import { leaseMarginMs, timingDifference, timingFromWitness, timingRelations } from "../quorum/config.ts";
import { describeWitness, type WitnessView } from "../quorum/describe.ts";
import { DirectWitnessDisk } from "../quorum/disk.ts";
import { LatencyRecorder, type LatencyFigures, type WitnessDisk } from "../quorum/driver.ts";
import { clusterIdHex, decodeWitness, witnessLayout } from "../quorum/format.ts";
import { Watchdog, type WatchdogState } from "../quorum/watchdog.ts";
import type { NodeConfig } from "./config.ts";

export interface WitnessStatus {
  path: string;
  reachable: boolean;
  /** Why the last read failed, or why what it read is not usable (another cluster, other timings). */
  failure: string | null;
  lastReadAgeMs: number | null;
  /** A read that has not returned (a hung witness), and for how long. */
  outstandingMs: number | null;
  latency: LatencyFigures;
  formatted: boolean;
  decided: WitnessView["decided"];
  problems: string[];
  timing: { relations: { name: string; holds: boolean; detail: string }[]; leaseMarginMs: number };
  watchdog: WatchdogState;
}

export class WitnessService {
  private readonly disk: DirectWitnessDisk;
  private readonly watchdog: Watchdog;
  private readonly latency = new LatencyRecorder();
  private timer: ReturnType<typeof setInterval> | undefined;
  private outstanding: { sinceMs: number; timedOut: boolean } | undefined;
  private lastView: WitnessView | undefined;
  private lastReadAtMs: number | undefined;
  private reachable = false;
  private failure: string | null = "not read yet";

  constructor(
    private readonly config: NodeConfig & { witness: NonNullable<NodeConfig["witness"]> },
    private readonly log: Logger,
  ) {
    const timing = config.witness.timing;
    // Arming first: `required` refuses to start without a watchdog before anything else runs.
    this.watchdog = Watchdog.arm(config.watchdog, Math.max(1, Math.round(timing.watchdogTimeoutMs / 1000)));
    if (this.watchdog.armed) log.info("watchdog armed", { device: this.watchdog.state.device, timeoutSeconds: this.watchdog.state.timeoutSeconds, detail: this.watchdog.state.reason });
    else log.warn("no watchdog armed", { mode: config.watchdog.mode, reason: this.watchdog.state.reason });
    this.disk = new DirectWitnessDisk(config.witness.path);
  }

  static start(config: NodeConfig, log: Logger): WitnessService | undefined {
    if (!config.witness) return undefined;
    const service = new WitnessService(config as NodeConfig & { witness: NonNullable<NodeConfig["witness"]> }, log);
    service.timer = setInterval(() => service.beat(), config.witness.timing.heartbeatIntervalMs);
    service.beat();
    return service;
  }

  private beat(): void {
    // The event loop runs: feed the watchdog (a hung daemon never gets here).
    this.watchdog.feed();
    const ioTimeoutMs = this.config.witness.timing.ioTimeoutMs;
    const outstanding = this.outstanding;
    if (outstanding) {
      const ageMs = performance.now() - outstanding.sinceMs;
      if (ageMs > ioTimeoutMs && !outstanding.timedOut) {
        outstanding.timedOut = true;
        this.setReachable(false, `no answer within ${ioTimeoutMs} ms (the witness hangs)`);
      }
      return; // one witness IO at a time: a hung one is never joined by more
    }
    const started = performance.now();
    this.outstanding = { sinceMs: started, timedOut: false };
    this.disk.read(0, witnessLayout.sectors, (error, bytes) => {
      const late = this.outstanding?.timedOut ?? false;
      this.outstanding = undefined;
      const elapsed = performance.now() - started;
      this.latency.record(elapsed, error !== null);
      if (error || !bytes) return this.setReachable(false, error ?? "short read");
      if (late && elapsed > ioTimeoutMs) this.log.info("a witness read returned late", { elapsedMs: Math.round(elapsed) });
      this.absorb(bytes);
    });
  }

  private absorb(bytes: Uint8Array): void {
    this.lastReadAtMs = performance.now();
    const clusterId = this.config.peer?.clusterId;
    const view = describeWitness(bytes, clusterId);
    this.lastView = view;
    if (!view.formatted) {
      const foreign = describeWitness(bytes);
      const why = foreign.formatted ? `the witness belongs to cluster ${foreign.cluster}, not ${clusterId ? clusterIdHex(clusterId) : "this one"}` : "the witness is not formatted (tandem witness format)";
      return this.setReachable(false, why);
    }
    const superblock = decodeWitness(bytes, clusterId ?? new Uint8Array(16)).superblock.newest;
    const difference = superblock ? timingDifference(this.config.witness.timing, timingFromWitness(superblock.record.timing)) : undefined;
    if (difference) return this.setReachable(false, `the witness was formatted with other timings (${difference})`);
    this.setReachable(true, null);
  }

  private setReachable(reachable: boolean, failure: string | null): void {
    if (reachable !== this.reachable) {
      if (reachable) this.log.info("witness reachable", { path: this.config.witness.path });
      else this.log.warn("witness lost", { path: this.config.witness.path, reason: failure });
    }
    this.reachable = reachable;
    this.failure = failure;
  }

  status(): WitnessStatus {
    const now = performance.now();
    const timing = this.config.witness.timing;
    return {
      path: this.config.witness.path,
      reachable: this.reachable,
      failure: this.failure,
      lastReadAgeMs: this.lastReadAtMs === undefined ? null : Math.round(now - this.lastReadAtMs),
      outstandingMs: this.outstanding ? Math.round(now - this.outstanding.sinceMs) : null,
      latency: this.latency.figures(),
      formatted: this.lastView?.formatted ?? false,
      decided: this.lastView?.decided ?? null,
      problems: this.lastView?.problems ?? [],
      timing: { relations: timingRelations(timing), leaseMarginMs: Math.round(leaseMarginMs(timing)) },
      watchdog: { ...this.watchdog.state },
    };
  }

  /**
   * Hand the witness to the quorum driver: from now on the lease's own reads (one per heartbeat
   * interval, with their deadlines) are the ones `status` and `witness show` report, and this
   * service stops reading and feeding the watchdog by itself — the core feeds it (feedWatchdog)
   * while the node honours its lease.
   */
  quorumDisk(): WitnessDisk {
    if (this.timer) clearInterval(this.timer);
    this.timer = undefined;
    this.outstanding = undefined;
    const disk = this.disk;
    return {
      read: (sector, count, done) => {
        const started = performance.now();
        this.outstanding = { sinceMs: started, timedOut: false };
        disk.read(sector, count, (error, bytes) => {
          this.outstanding = undefined;
          this.latency.record(performance.now() - started, error !== null);
          if (error || !bytes) this.setReachable(false, error ?? "short read");
          else if (sector === 0 && count === witnessLayout.sectors) this.absorb(bytes);
          done(error, bytes);
        });
      },
      write: (sector, bytes, done) => disk.write(sector, bytes, done),
    };
  }

  /** The quorum core says the node honours its lease. */
  feedWatchdog(): void {
    this.watchdog.feed();
  }

  /** Every record as last read (for `tandem witness show` without a path). */
  view(): WitnessView & { path: string; readAgeMs: number | null } {
    if (!this.lastView) throw new TandemError("unavailable", `the witness at ${this.config.witness.path} has not been read yet: ${this.failure ?? "no answer"}`);
    return { path: this.config.witness.path, readAgeMs: this.lastReadAtMs === undefined ? null : Math.round(performance.now() - this.lastReadAtMs), ...this.lastView };
  }

  /** The cluster and timings the daemon uses (`tandem witness format` without --cluster formats for them). */
  identity(): { clusterId: string | null; timing: NonNullable<NodeConfig["witness"]>["timing"] } {
    return { clusterId: this.config.peer ? clusterIdHex(this.config.peer.clusterId) : null, timing: this.config.witness.timing };
  }

  /** A clean stop: no more reads, the watchdog disarmed (a crash leaves it armed, and the machine resets). */
  stop(): void {
    if (this.timer) clearInterval(this.timer);
    this.timer = undefined;
    this.watchdog.disarm();
    this.disk.close();
  }
}
