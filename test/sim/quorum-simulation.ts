// One deterministic run of the quorum simulator: two nodes, each the real QuorumDriver and
// QuorumCore over a simulated witness disk (quorum-witness.ts), a partitionable link
// (quorum-link.ts) and its own drifting clock, under faults drawn from the seed: link cuts (both
// ways or one way), witness errors, torn writes, outages and hangs (for one node or both), node
// crashes and power losses (writes in flight land, tear or vanish), pauses longer than the lease,
// clock rates that change within ρ, watchdogs that reset a node nobody feeds, and an operator who
// tries forced promotions. Each run picks its own mix ("swarm" testing). After the chaos phase
// everything heals and the pair must converge: connected, SHARED recorded, one writer per volume.
// The checkers (quorum-checkers.ts) watch every step. The same seed replays the same run.
import { AssertionError } from "../../src/common/assert.ts";
import { witnessRecordBytes } from "../../src/constants.ts";
import type { QuorumTiming } from "../../src/quorum/config.ts";
import { encodeFormattedArea, LeaseMode, type NodeIndex, type Superblock, witnessLayout } from "../../src/quorum/format.ts";
import { QuorumDriver, type QuorumClock, type WitnessDisk } from "../../src/quorum/driver.ts";
import type { QuorumBugs, QuorumPersisted, QuorumReport } from "../../src/quorum/lease.ts";
import { initialDecided } from "../../src/quorum/format.ts";
import { timingToWitness } from "../../src/quorum/config.ts";
import type { Grant } from "../../src/replica/types.ts";
import { type CheckedNode, QuorumCheckers, type QuorumFailure } from "./quorum-checkers.ts";
import { SimQuorumLink } from "./quorum-link.ts";
import { SimWitness } from "./quorum-witness.ts";
import { SimRandom } from "./random.ts";
import { EventBudgetExceeded, Scheduler } from "./scheduler.ts";

export interface QuorumMix {
  volumes: number;
  primariesOnA: number;
  tickMs: number;
  chaosMs: number;
  /** Largest clock-rate error actually used (≤ ρ of the timing). */
  clockDrift: number;
  driftChanges: boolean;
  witnessLatencyUs: [number, number];
  witnessErrors: number;
  tearProbability: number;
  witnessOutages: boolean;
  witnessHangs: boolean;
  linkLatencyUs: [number, number];
  cuts: boolean;
  oneWayCuts: boolean;
  isolations: boolean;
  crashes: boolean;
  powerLoss: boolean;
  pauses: boolean;
  watchdogs: [boolean, boolean];
  forcedPromotions: boolean;
  faultIntervalMs: [number, number];
  resyncDelayMs: [number, number];
}

export interface QuorumSimulationOptions {
  seed: number;
  long?: boolean;
  bugs?: QuorumBugs;
  mix?: Partial<QuorumMix>;
  trace?: boolean;
}

export interface QuorumSimulationResult {
  seed: number;
  ok: boolean;
  failures: QuorumFailure[];
  mix: QuorumMix;
  stats: Record<string, number>;
  timeline: string[];
  events: number;
}

/** DESIGN.md §5's defaults: the simulator runs the production timings. */
export const simulationTiming: QuorumTiming = {
  heartbeatIntervalMs: 500,
  linkTimeoutMs: 1500,
  headStartMs: 1000,
  selfFenceTimeoutMs: 3000,
  deadTimeoutMs: 5000,
  watchdogTimeoutMs: 3000,
  ioTimeoutMs: 500,
  clockRateBound: 0.01,
};

export function chooseQuorumMix(random: SimRandom, long: boolean): QuorumMix {
  const quiet = random.chance(0.08);
  const volumes = random.range(1, 4);
  return {
    volumes,
    primariesOnA: random.range(0, volumes),
    // CI ticks every 50 ms to keep 2,000 seeds quick; the long setting uses the production 10 ms.
    tickMs: long ? 10 : 50,
    chaosMs: long ? random.range(60_000, 180_000) : random.range(15_000, 40_000),
    clockDrift: random.pick([0, 0.005, 0.01]),
    driftChanges: random.chance(0.5),
    witnessLatencyUs: random.pick([[100, 2_000], [500, 20_000], [2_000, 150_000]] as [number, number][]),
    witnessErrors: !quiet && random.chance(0.3) ? random.pick([0.01, 0.05]) : 0,
    tearProbability: random.pick([0, 0.5, 1]),
    witnessOutages: !quiet && random.chance(0.5),
    witnessHangs: !quiet && random.chance(0.5),
    linkLatencyUs: random.pick([[50, 500], [200, 5_000]] as [number, number][]),
    cuts: !quiet && random.chance(0.7),
    oneWayCuts: !quiet && random.chance(0.4),
    isolations: !quiet && random.chance(0.4),
    crashes: !quiet && random.chance(0.5),
    powerLoss: !quiet && random.chance(0.25),
    pauses: !quiet && random.chance(0.5),
    watchdogs: [random.chance(0.5), random.chance(0.5)],
    forcedPromotions: !quiet && random.chance(0.3),
    faultIntervalMs: random.pick([[500, 3_000], [2_000, 8_000]] as [number, number][]),
    resyncDelayMs: [100, random.pick([500, 3_000])],
  };
}

interface SimNode {
  index: NodeIndex;
  name: string;
  alive: boolean;
  paused: boolean;
  incarnation: number;
  deferred: (() => void)[];
  random: SimRandom;
  driver: QuorumDriver | undefined;
  persisted: QuorumPersisted;
  /** Volume roles as the node keeps them (they survive crashes). */
  roles: Map<number, boolean>;
  grants: Map<number, Grant>;
  rate: number;
  clockBaseUs: number;
  clockBaseMs: number;
  watchdog: boolean;
  lastFeedMs: number;
  lastHeartbeatStartOkMs: number | undefined;
  runningSinceUs: number;
}

const names: [string, string] = ["a", "b"];

export function runQuorumSimulation(options: QuorumSimulationOptions): QuorumSimulationResult {
  const long = options.long ?? false;
  const random = new SimRandom(options.seed);
  const mix: QuorumMix = { ...chooseQuorumMix(random.fork("mix"), long), ...options.mix };
  const timing = simulationTiming;
  const scheduler = new Scheduler(long ? 20_000_000 : 3_000_000);
  const timeline: string[] = [];
  const note = (line: string) => {
    if (options.trace) timeline.push(`${(scheduler.now / 1000).toFixed(1).padStart(9)} ms  ${line}`);
  };
  const stats: Record<string, number> = { decisions: 0, ballotsAborted: 0, promotions: 0, selfFences: 0, watchdogResets: 0, crashes: 0, pauses: 0, cuts: 0, witnessFaults: 0, forced: 0, forcedRefused: 0, lost: 0 };
  const checkers = new QuorumCheckers({ selfFenceTimeoutMs: timing.selfFenceTimeoutMs, tickMs: mix.tickMs, names });
  const clusterId = new Uint8Array(16);
  random.fork("cluster").fill(clusterId);
  const superblock: Superblock = { recordBytes: witnessRecordBytes, areaBytes: 128 * 1024, formattedAtMs: 0, timing: timingToWitness(timing) };
  const volumeIds = Array.from({ length: mix.volumes }, (_, index) => index + 1);

  const nodes: [SimNode, SimNode] = [0, 1].map((index) => ({
    index: index as NodeIndex,
    name: names[index]!,
    alive: false,
    paused: false,
    incarnation: 0,
    deferred: [],
    random: random.fork(`node-${index}`),
    driver: undefined,
    persisted: { outdatedEpoch: 0n, lastDecided: initialDecided, promotionEpoch: 0n },
    roles: new Map(volumeIds.map((id, position) => [id, index === 0 ? position < mix.primariesOnA : position >= mix.primariesOnA])),
    grants: new Map(),
    rate: 1,
    clockBaseUs: 0,
    clockBaseMs: 1_000_000 * (index + 1), // any origin: the clocks share none
    watchdog: mix.watchdogs[index]!,
    lastFeedMs: 0,
    lastHeartbeatStartOkMs: undefined,
    runningSinceUs: 0,
  })) as unknown as [SimNode, SimNode];

  // Liveness bookkeeping (see the checks below): since when everything is healthy, since when only the link is cut.
  let healthySinceUs: number | undefined;
  let cutSinceUs: number | undefined;
  let cutHolder = false;

  const localMs = (node: SimNode) => node.clockBaseMs + ((scheduler.now - node.clockBaseUs) / 1000) * node.rate;
  const setRate = (node: SimNode, rate: number) => {
    node.clockBaseMs = localMs(node);
    node.clockBaseUs = scheduler.now;
    node.rate = rate;
  };
  for (const node of nodes) if (mix.clockDrift > 0) setRate(node, 1 + (node.random.float() * 2 - 1) * mix.clockDrift);

  const checked = (node: SimNode): CheckedNode => ({
    index: node.index,
    name: node.name,
    running: node.alive && !node.paused,
    grants: node.grants,
    phase: node.driver?.core.phaseName,
    latestEpoch: node.driver?.core.latestRecord.value.epoch,
    localNowMs: localMs(node),
    lastHeartbeatStartOkMs: node.lastHeartbeatStartOkMs,
  });
  const observe = () => checkers.observe([checked(nodes[0]), checked(nodes[1])], scheduler.now);

  // Runs `run` on the node: deferred while it is paused, dropped if that incarnation is gone.
  const deliver = (index: number, incarnation: number, run: () => void) => {
    const node = nodes[index]!;
    if (!node.alive || node.incarnation !== incarnation) return;
    if (node.paused) {
      node.deferred.push(run);
      return;
    }
    run();
    observe();
  };

  const initialArea = encodeFormattedArea(clusterId, superblock).slice(0, witnessLayout.sectors * witnessRecordBytes);
  const witness = new SimWitness(initialArea, scheduler, random.fork("witness"), { latencyUs: mix.witnessLatencyUs, errorProbability: mix.witnessErrors, tearProbability: mix.tearProbability }, deliver);

  // "synced": the replica layer says every volume is in sync some time after the link opened.
  let syncGeneration = 0;
  let syncedNow = false;
  const setSynced = (value: boolean) => {
    syncedNow = value;
    // After the current event: the link change that causes this may come from a node's own action.
    for (const node of nodes) {
      const driver = node.driver;
      const incarnation = node.incarnation;
      if (driver) scheduler.after(0, () => deliver(node.index, incarnation, () => driver.synced(value)));
    }
  };
  const onLinkChange = () => {
    syncGeneration++;
    if (syncedNow) setSynced(false);
    if (!link.isOpen) return;
    const generation = syncGeneration;
    const [min, max] = mix.resyncDelayMs;
    scheduler.after((min + random.float() * (max - min)) * 1000, () => {
      if (generation === syncGeneration && link.isOpen) setSynced(true);
    });
  };
  const link: SimQuorumLink = new SimQuorumLink(scheduler, random.fork("link"), mix.linkLatencyUs, deliver, () => {
    healthyChanged();
    onLinkChange();
  });

  // ---- nodes ----

  const onReport = (node: SimNode) => (report: QuorumReport) => {
    const peer = nodes[1 - node.index]!;
    switch (report.kind) {
      case "decided":
        stats.decisions!++;
        note(`${node.name} decided v${report.record.version} from ${report.source}: ${report.record.value.mode === LeaseMode.Shared ? "SHARED" : `SOLO(${names[report.record.value.owner]})`}${report.record.value.forced ? " forced" : ""}, holders ${report.record.value.holders.map((holder) => names[holder]).join(",")}`);
        break;
      case "ballotAborted":
        stats.ballotsAborted!++;
        note(`${node.name} ballot for v${report.instance} aborted: ${report.reason}: ${report.detail}`);
        break;
      case "promoted":
        stats.promotions!++;
        note(`${node.name} promotes ${report.volumes.join(",")} in epoch ${report.epoch} (evidence: ${report.evidence})`);
        break;
      case "selfFenced":
        stats.selfFences!++;
        note(`${node.name} self-fenced (heartbeat ${report.heartbeatAgeTicks} ticks old)`);
        break;
      case "lost":
        stats.lost!++;
        note(`${node.name} lost epoch ${report.epoch}`);
        break;
      case "phase":
        note(`${node.name} ${report.from} → ${report.to}: ${report.reason}`);
        break;
      default:
        note(`${node.name} ${JSON.stringify(report, (_key, value) => (typeof value === "bigint" ? value.toString() : value))}`);
    }
    checkers.report(checked(node), report, checked(peer), scheduler.now);
  };

  const startNode = (node: SimNode) => {
    if (node.alive) return;
    node.alive = true;
    node.paused = false;
    node.incarnation++;
    node.runningSinceUs = scheduler.now;
    node.lastHeartbeatStartOkMs = undefined;
    const incarnation = node.incarnation;
    const clock: QuorumClock = {
      now: () => localMs(node),
      after(delayMs, callback) {
        let cancelled = false;
        // A stopped process gets no timer callbacks; it runs the late one when it resumes.
        scheduler.after((delayMs * 1000) / node.rate, () => {
          if (!cancelled) deliver(node.index, incarnation, () => !cancelled && callback());
        });
        return { cancel: () => (cancelled = true) };
      },
    };
    const base = witness.endpoint(node.index, incarnation);
    const slotSectors = [witnessLayout.slot(node.index), witnessLayout.slot(node.index) + 1];
    // The checkers time the node's heartbeats themselves, from the writes to its slot.
    const disk: WitnessDisk = {
      read: (sector, count, done) => base.read(sector, count, done),
      write: (sector, bytes, done) => {
        const issuedMs = localMs(node);
        base.write(sector, bytes, (error) => {
          if (!error && slotSectors.includes(sector) && (node.lastHeartbeatStartOkMs === undefined || issuedMs > node.lastHeartbeatStartOkMs)) node.lastHeartbeatStartOkMs = issuedMs;
          done(error);
        });
      },
    };
    node.grants = new Map();
    const driver = new QuorumDriver({
      me: node.index,
      names,
      clusterId,
      timing,
      tickMs: mix.tickMs,
      random: node.random.fork(`incarnation-${incarnation}`),
      persisted: node.persisted,
      volumes: [...node.roles].map(([id, primary]) => ({ id, primary })),
      bugs: options.bugs,
      disk,
      clock,
      strictQuietTicks: true,
      host: {
        grants: (changes) => {
          for (const change of changes) node.grants.set(change.volumeId, change.grant);
        },
        promote: (volumeId) => node.roles.set(volumeId, true),
        demote: (volumeId) => node.roles.set(volumeId, false),
        persist: (state) => (node.persisted = state),
        sendPeer: (message) => link.send(node.index, message),
        dropLink: (reason) => link.drop(node.index, reason),
        feedWatchdog: () => (node.lastFeedMs = localMs(node)),
        report: onReport(node),
      },
    });
    node.driver = driver;
    node.lastFeedMs = localMs(node);
    note(`${node.name} starts (incarnation ${incarnation})`);
    link.attach(node.index, incarnation, {
      linkUp: () => driver.linkUp(),
      linkDown: (reason) => driver.linkDown(reason),
      message: (message) => driver.peerMessage(message),
    });
    driver.start();
    driver.synced(syncedNow && link.isOpen);
    healthyChanged();
  };

  const crashNode = (node: SimNode, why: string) => {
    if (!node.alive) return;
    stats.crashes!++;
    note(`${node.name} crashes (${why})`);
    node.driver?.stop();
    node.driver = undefined;
    node.alive = false;
    node.paused = false;
    node.deferred = [];
    node.grants = new Map();
    witness.crash(node.index);
    link.detach(node.index);
    healthyChanged();
    observe();
  };

  const pauseNode = (node: SimNode) => {
    if (!node.alive || node.paused) return;
    stats.pauses!++;
    note(`${node.name} paused (SIGSTOP)`);
    node.paused = true;
    healthyChanged();
  };

  const resumeNode = (node: SimNode) => {
    if (!node.alive || !node.paused) return;
    note(`${node.name} resumed (SIGCONT)`);
    node.paused = false;
    node.runningSinceUs = scheduler.now;
    const work = node.deferred.splice(0);
    const incarnation = node.incarnation;
    for (const run of work) {
      if (!node.alive || node.incarnation !== incarnation) break;
      run();
      observe();
    }
    healthyChanged();
  };

  // The kernel watchdog: a node nobody fed for watchdogTimeout (on its clock) is reset.
  const watchdogBeat = () => {
    for (const node of nodes) {
      if (!node.alive || !node.watchdog) continue;
      if (localMs(node) - node.lastFeedMs > timing.watchdogTimeoutMs) {
        stats.watchdogResets!++;
        crashNode(node, "watchdog reset");
        scheduler.after(1_000_000 + random.float() * 3_000_000, () => startNode(node));
      }
    }
    scheduler.after(100_000, watchdogBeat);
  };

  // ---- liveness: with link and witness healthy, IO resumes within a bound ----

  const allHealthy = () => link.healthy && nodes.every((node) => node.alive && !node.paused) && witness.isHealthy(0) && witness.isHealthy(1);
  function healthyChanged(): void {
    if (allHealthy()) healthySinceUs ??= scheduler.now;
    else healthySinceUs = undefined;
    // The clean-cut bound holds only while the cut is the only fault.
    if (cutSinceUs !== undefined && !(link.isBlocked(0) && link.isBlocked(1) && witness.isHealthy(0) && witness.isHealthy(1) && nodes.every((node) => node.alive && !node.paused))) cutSinceUs = undefined;
  }
  // Reconnect, resync (at most resyncDelay), record SHARED, and settle a pending promotion.
  const healthyBoundUs = (timing.linkTimeoutMs + timing.deadTimeoutMs + mix.resyncDelayMs[1] + timing.headStartMs + 6 * timing.heartbeatIntervalMs + 200) * 1000 * (1 + timing.clockRateBound);
  // A clean link cut: the preferred holder wins at once, the other volumes follow the loser's fenced(epoch).
  const cutBoundUs = (timing.linkTimeoutMs * (1 + timing.clockRateBound) + timing.headStartMs + 4 * timing.heartbeatIntervalMs + 8 * timing.ioTimeoutMs + 4 * mix.tickMs) * 1000;
  const volumesList = volumeIds;
  const livenessBeat = () => {
    const now = scheduler.now;
    const state: [CheckedNode, CheckedNode] = [checked(nodes[0]), checked(nodes[1])];
    if (healthySinceUs !== undefined && now - healthySinceUs >= healthyBoundUs) {
      const problem = checkers.writersComplete(state, volumesList);
      if (problem) checkers.fail("liveness", "ioResumesWithinBound", `link and witness healthy since ${(healthySinceUs / 1000).toFixed(1)} ms, but at ${(now / 1000).toFixed(1)} ms ${problem}`);
    }
    if (cutSinceUs !== undefined && cutHolder && now - cutSinceUs >= cutBoundUs) {
      const problem = checkers.writersComplete(state, volumesList);
      if (problem) checkers.fail("liveness", "linkCutResumesWithinBound", `link cut at ${(cutSinceUs / 1000).toFixed(1)} ms with the witness healthy, but ${((now - cutSinceUs) / 1000).toFixed(0)} ms later ${problem}`);
      cutSinceUs = undefined;
    }
    // Rule 6: with the link up, losing the witness changes nothing: both stay connected.
    if (link.healthy && now - link.openSinceUs > 3 * timing.linkTimeoutMs * 1000 && nodes.every((node) => node.alive && !node.paused && now - node.runningSinceUs > 3 * timing.linkTimeoutMs * 1000)) {
      for (const node of state) {
        if (node.phase !== "connected") checkers.fail("correctness", "rule6.witnessLossHarmless", `the link has been up since ${(link.openSinceUs / 1000).toFixed(1)} ms but ${node.name} is ${node.phase} at ${(now / 1000).toFixed(1)} ms`);
      }
    }
    scheduler.after(100_000, livenessBeat);
  };

  // ---- faults ----

  const ends = new Map<string, number>();
  /** Start a fault now and end it after `durationUs` (overlapping faults of one kind extend each other). */
  const during = (key: string, durationUs: number, begin: () => void, end: () => void) => {
    const until = scheduler.now + durationUs;
    if ((ends.get(key) ?? 0) < until) ends.set(key, until);
    begin();
    healthyChanged();
    scheduler.after(durationUs, () => {
      if ((ends.get(key) ?? 0) > scheduler.now || chaosOver) return;
      ends.delete(key);
      end();
      healthyChanged();
    });
  };
  let chaosOver = false;
  const scopes = [[0], [1], [0, 1]];
  const cleanCut = () => witness.isHealthy(0) && witness.isHealthy(1) && nodes.every((node) => node.alive && !node.paused);
  const faults: (() => void)[] = [];
  if (mix.cuts) {
    faults.push(() => {
      stats.cuts!++;
      const duration = random.range(500, 15_000) * 1000;
      note(`fault: link cut both ways for ${(duration / 1000).toFixed(0)} ms`);
      const clean = cleanCut() && !link.isBlocked(0) && !link.isBlocked(1);
      during("link", duration, () => link.partition([0, 1]), () => link.heal());
      if (clean) {
        cutSinceUs = scheduler.now;
        cutHolder = nodes.some((node) => node.driver?.core.latestRecord.value.holders.length);
      }
    });
  }
  if (mix.oneWayCuts) {
    faults.push(() => {
      stats.cuts!++;
      const from = random.int(2);
      const duration = random.range(500, 10_000) * 1000;
      note(`fault: link from ${names[from]} cut for ${(duration / 1000).toFixed(0)} ms`);
      during("link", duration, () => link.partition([from]), () => link.heal());
    });
  }
  const witnessFault = (kind: "fail" | "hang", scope: number[], duration: number) => {
    stats.witnessFaults!++;
    note(`fault: witness ${kind} for ${scope.map((node) => names[node]).join("+")} for ${(duration / 1000).toFixed(0)} ms`);
    const set = (on: boolean) => (kind === "fail" ? witness.setFailing(scope, on) : witness.setHung(scope, on));
    during(`witness-${kind}-${scope.join("")}`, duration, () => set(true), () => set(false));
  };
  if (mix.witnessOutages) faults.push(() => witnessFault("fail", random.pick(scopes), random.range(300, 12_000) * 1000));
  if (mix.witnessHangs) faults.push(() => witnessFault("hang", random.pick(scopes), random.range(300, 12_000) * 1000));
  if (mix.isolations) {
    // A node loses the link and its own witness path at once: the case the lease margin exists for.
    faults.push(() => {
      const node = random.int(2);
      const duration = random.range(2_000, 15_000) * 1000;
      stats.cuts!++;
      note(`fault: ${names[node]} isolated (link and its witness path) for ${(duration / 1000).toFixed(0)} ms`);
      during("link", duration, () => link.partition([0, 1]), () => link.heal());
      witnessFault(random.chance(0.5) ? "fail" : "hang", [node], random.range(1_000, 15_000) * 1000);
    });
  }
  const restartLater = (node: SimNode, minMs: number, maxMs: number) => scheduler.after(random.range(minMs, maxMs) * 1000, () => startNode(node));
  if (mix.crashes) {
    faults.push(() => {
      const node = nodes[random.int(2)]!;
      if (!node.alive) return;
      crashNode(node, "crash");
      restartLater(node, 200, 20_000);
    });
  }
  if (mix.powerLoss) {
    faults.push(() => {
      note("fault: both nodes lose power");
      for (const node of nodes) {
        crashNode(node, "power loss");
        restartLater(node, 500, 15_000);
      }
    });
  }
  if (mix.pauses) {
    faults.push(() => {
      const node = nodes[random.int(2)]!;
      const duration = random.pick([random.range(100, 2_000), random.range(3_000, 12_000)]) * 1000;
      note(`fault: ${node.name} paused for ${(duration / 1000).toFixed(0)} ms`);
      pauseNode(node);
      scheduler.after(duration, () => resumeNode(node));
    });
  }
  if (mix.driftChanges && mix.clockDrift > 0) {
    faults.push(() => {
      const node = nodes[random.int(2)]!;
      setRate(node, 1 + (random.float() * 2 - 1) * mix.clockDrift);
      note(`${node.name}'s clock now runs at ${node.rate.toFixed(4)}`);
    });
  }
  if (mix.forcedPromotions) {
    faults.push(() => {
      const node = nodes[random.int(2)]!;
      const driver = node.driver;
      if (!driver || node.paused) return;
      note(`operator: tandem failover --force on ${node.name}`);
      driver.forcePromotion((error) => {
        if (error) stats.forcedRefused!++;
        else stats.forced!++;
        note(`operator: forced promotion on ${node.name}: ${error ?? "won"}`);
      });
      observe();
    });
  }
  const nextFault = () => {
    if (chaosOver || faults.length === 0) return;
    const [min, max] = mix.faultIntervalMs;
    scheduler.after(random.range(min, max) * 1000, () => {
      if (chaosOver) return;
      random.pick(faults)();
      nextFault();
    });
  };

  // ---- the run ----

  const failures = checkers.failures;
  let converged = false;
  try {
    for (const node of nodes) startNode(node);
    watchdogBeat();
    livenessBeat();
    nextFault();
    scheduler.runUntil(mix.chaosMs * 1000, () => failures.length > 0);
    if (failures.length === 0) {
      chaosOver = true;
      note("chaos over: everything heals");
      link.heal();
      witness.healAll();
      for (const node of nodes) {
        resumeNode(node);
        if (!node.alive) startNode(node);
      }
      healthyChanged();
      const deadline = scheduler.now + healthyBoundUs + 5_000_000;
      const convergedNow = () => {
        const [a, b] = [nodes[0].driver?.core, nodes[1].driver?.core];
        if (!a || !b || a.phaseName !== "connected" || b.phaseName !== "connected") return false;
        const record = a.latestRecord;
        if (record.version !== b.latestRecord.version || record.value.mode !== LeaseMode.Shared || record.value.holders.length !== 2) return false;
        return checkers.writersComplete([checked(nodes[0]), checked(nodes[1])], volumeIds) === undefined;
      };
      scheduler.runUntil(deadline, () => failures.length > 0 || (converged = convergedNow()));
      if (converged) scheduler.runUntil(scheduler.now + 3_000_000, () => failures.length > 0);
      else if (failures.length === 0) {
        const state = nodes.map((node) => `${node.name}: ${node.driver ? JSON.stringify(node.driver.core.status()) : "down"} grants ${JSON.stringify([...node.grants])}`).join("\n");
        checkers.fail("liveness", "convergence", `after the faults healed the pair did not converge (connected, SHARED recorded, one writer per volume) within ${((healthyBoundUs + 5_000_000) / 1000).toFixed(0)} ms:\n${state}`);
      }
    }
  } catch (error) {
    if (error instanceof EventBudgetExceeded) checkers.fail("liveness", "eventBudget", error.message);
    else if (error instanceof AssertionError) checkers.fail("crash", "assertion", `${error.message}\n${error.stack}`);
    else checkers.fail("crash", "exception", `${(error as Error)?.stack ?? String(error)}`);
  }
  stats.witnessReads = witness.stats.reads;
  stats.witnessWrites = witness.stats.writes;
  stats.witnessTears = witness.stats.tears;
  stats.linkConnections = link.connections;
  stats.simulatedMs = Math.round(scheduler.now / 1000);
  return { seed: options.seed, ok: failures.length === 0, failures, mix, stats, timeline, events: scheduler.executed };
}

export interface QuorumSeedsSummary {
  failing: { seed: number; failure: QuorumFailure }[];
  seconds: number;
  events: number;
}

/** Run `count` seeds from `from`; the CI test and the command line share this loop. */
export function runQuorumSeeds(options: { from: number; count: number; long?: boolean; bugs?: QuorumBugs; stopAtFirstFailure?: boolean; onFailure?: (seed: number, failure: QuorumFailure) => void }): QuorumSeedsSummary {
  const started = performance.now();
  const failing: QuorumSeedsSummary["failing"] = [];
  let events = 0;
  for (let seed = options.from; seed < options.from + options.count; seed++) {
    const result = runQuorumSimulation({ seed, long: options.long, bugs: options.bugs });
    events += result.events;
    if (!result.ok) {
      failing.push({ seed, failure: result.failures[0]! });
      options.onFailure?.(seed, result.failures[0]!);
      if (options.stopAtFirstFailure) break;
    }
  }
  return { failing, seconds: (performance.now() - started) / 1000, events };
}
