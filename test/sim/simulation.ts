// One deterministic simulation run: two nodes, each the real ReplicaDriver and cores over simulated
// disks, network and clocks, a workload of VMs writing through whichever node believes it is the
// primary, an operator that fails over and resolves split brains as a person would, and faults drawn
// from the seed. Each run picks its own fault mix from the seed ("swarm" testing: a run with only
// crashes finds different bugs than one with everything at once). After a chaos phase the faults
// stop, the operator restores a single primary, and the run must converge within a deadline; then
// the checkers compare both replicas with the oracle. The same seed always replays the same run.
// Besides the network and disk faults, the operator closes and reopens volumes and stops daemons
// gracefully, volumes may start from imported data, processes stall past the link timeout, clients
// change buffers of writes in flight, flushes fail the Linux way, and bit rot strikes either side.
import { Pieces } from "../../src/common/bytes.ts";
import { BlockError } from "../../src/common/errors.ts";
import { StaticWriteAuthority } from "../../src/replica/authority.ts";
import { replicaFramePiecesBytesMin } from "../../src/constants.ts";
import { defaultReplicaConfig, type ReplicaBugs, type ReplicaConfig } from "../../src/replica/config.ts";
import { ReplicaDriver } from "../../src/replica/driver.ts";
import type { Clock, WriteAuthority } from "../../src/replica/io.ts";
import { formatMetadata, metadataLayout } from "../../src/replica/metadata-format.ts";
import type { ReplicaReport, VolumeStatus } from "../../src/replica/types.ts";
import { encodeMessage, joinParts, LinkRole, MessageType, protocolVersionMax, protocolVersionMin } from "../../src/replica/wire.ts";
import { Checkers, type Failure } from "./checkers.ts";
import { SimDisk } from "./disk.ts";
import { SimNetwork } from "./network.ts";
import { blockBytes, fillBlock, Oracle } from "./oracle.ts";
import { SimRandom } from "./random.ts";
import { ProcessGate } from "./gate.ts";
import { EventBudgetExceeded, Scheduler } from "./scheduler.ts";

export interface FaultMix {
  volumes: number;
  blocks: number;
  granuleBytes: number;
  activityLogExtentBytes: number;
  activityLogExtents: number;
  resyncChunkBytes: number;
  resyncWindow: number;
  checkpointChunks: number;
  chaosMs: number;
  networkLatencyUs: [number, number];
  chunkBytesMax: number;
  corrupt: number;
  duplicate: number;
  partitions: boolean;
  cuts: boolean;
  clogs: boolean;
  resets: boolean;
  intruders: boolean;
  crashes: "none" | "a" | "b" | "both";
  powerLoss: boolean;
  diskLatencyUs: [number, number];
  diskErrors: number;
  metadataErrors: number;
  forcedPromotion: boolean;
  switchover: boolean;
  verify: boolean;
  rot: boolean;
  replaceDisk: boolean;
  newSecondary: boolean;
  clockDrift: number;
  depth: number;
  fuaRate: number;
  flushRate: number;
  trimRate: number;
  readRate: number;
  finalPowerLoss: boolean;
  faultIntervalMs: [number, number];
  /** The operator closes a volume on one node and opens it again. */
  closes: boolean;
  /** A daemon stops gracefully (closes its volumes, says goodbye) and starts again. */
  shutdowns: boolean;
  /** a's volume is created on a backing that already holds data; b's new replica holds garbage. */
  imported: boolean;
  /** A failed flush drops the cached writes it covered (Linux), maybe evicting them too. */
  linuxFlush: boolean;
  linuxEvicts: boolean;
  /** Clients change a write's buffer while the write is in flight (virtio has no stable pages). */
  mutateBuffers: boolean;
  /** Bit rot strikes the primary too, not only the secondary. */
  rotPrimary: boolean;
  /** Some write errors are ENOSPC (a thin backing ran out). */
  noSpace: boolean;
  /** A node's process stalls for longer than the link timeout, then carries on. */
  stalls: boolean;
  /** TRIM may leave the data in place (advisory). */
  trimAdvisory: boolean;
  /** Crashes aim at a moment something is in flight (a barrier, a resync, mirrored writes), and at a resync source that copies what only its cache holds. */
  aimedCrashes: boolean;
  /** The chaos pauses now and then: once the pair converges, the replicas must be identical. */
  pauses: number;
  /** Few flushes and rare barriers: written data stays in the caches for long. */
  lazyFlush: boolean;
  /** During a link outage the operator swaps the roles (the unreachable primary is demoted). */
  flips: boolean;
}

export interface SimulationOptions {
  seed: number;
  long?: boolean;
  bugs?: ReplicaBugs;
  mix?: Partial<FaultMix>;
  /** Collect a timeline of reports and operator actions (for replaying a failing seed). */
  trace?: boolean;
}

export interface SimulationResult {
  seed: number;
  ok: boolean;
  failures: Failure[];
  mix: FaultMix;
  stats: Record<string, number>;
  timeline: string[];
}

const nodeNames: [string, string] = ["a", "b"];

export function chooseMix(random: SimRandom, long: boolean): FaultMix {
  const blocks = long ? random.range(64, 256) : random.range(24, 64);
  const granuleBytes = random.pick([4096, 8192]);
  const activityLogExtentBytes = granuleBytes * random.pick([2, 4, 8]);
  const quiet = random.chance(0.1); // some runs have no faults at all: the happy path must work too
  const crashes = quiet ? "none" : random.pick(["none", "a", "b", "both", "both"] as const);
  const forcedPromotion = !quiet && random.chance(0.3);
  const switchover = !quiet && random.chance(0.25);
  const verify = random.chance(0.3);
  const stable = !forcedPromotion && !switchover;
  return {
    volumes: random.chance(0.25) ? 2 : 1,
    blocks,
    granuleBytes,
    activityLogExtentBytes,
    activityLogExtents: random.range(3, 6),
    resyncChunkBytes: granuleBytes * random.pick([1, 2, 4, 8]),
    resyncWindow: random.range(1, 4),
    checkpointChunks: random.range(1, 8),
    chaosMs: long ? random.range(10_000, 30_000) : random.range(600, 2000),
    networkLatencyUs: random.pick([[30, 120], [50, 1000], [200, 5000]] as [number, number][]),
    chunkBytesMax: random.pick([64, 1500, 65536]),
    corrupt: !quiet && random.chance(0.2) ? random.pick([0.001, 0.01]) : 0,
    duplicate: !quiet && random.chance(0.1) ? 0.002 : 0,
    partitions: !quiet && random.chance(0.5),
    cuts: !quiet && random.chance(0.3),
    clogs: !quiet && random.chance(0.4),
    resets: !quiet && random.chance(0.3),
    intruders: !quiet && random.chance(0.2),
    crashes,
    powerLoss: !quiet && random.chance(0.3),
    diskLatencyUs: random.pick([[20, 200], [50, 2000], [100, 8000]] as [number, number][]),
    diskErrors: !quiet && random.chance(0.25) ? random.pick([0.002, 0.02]) : 0,
    metadataErrors: !quiet && random.chance(0.15) ? 0.01 : 0,
    forcedPromotion,
    switchover,
    verify,
    rot: verify && stable && random.chance(0.5),
    replaceDisk: stable && !quiet && random.chance(0.15),
    newSecondary: stable && random.chance(0.1),
    clockDrift: random.pick([0, 0.001, 0.01]),
    depth: random.range(1, 8),
    fuaRate: random.pick([0, 0.1, 0.3]),
    flushRate: random.pick([0.05, 0.15]),
    trimRate: random.pick([0, 0.05]),
    readRate: random.pick([0.1, 0.3]),
    finalPowerLoss: random.chance(0.3),
    faultIntervalMs: long ? [100, 2000] : [20, 200],
    // Drawn last, so the fields above keep the values they had for each seed.
    closes: !quiet && random.chance(0.25),
    shutdowns: !quiet && random.chance(0.2),
    imported: stable && random.chance(0.1),
    linuxFlush: random.chance(0.5),
    linuxEvicts: random.chance(0.5),
    mutateBuffers: random.chance(0.3),
    rotPrimary: random.chance(0.5),
    noSpace: random.chance(0.3),
    stalls: !quiet && random.chance(0.2),
    trimAdvisory: random.chance(0.5),
    aimedCrashes: random.chance(0.6),
    pauses: random.pick([0, 1, 2, 3]),
    lazyFlush: random.chance(0.4),
    flips: !quiet && random.chance(0.4),
  };
}

interface SimNode {
  name: string;
  alive: boolean;
  incarnation: number;
  driver: ReplicaDriver | undefined;
  authority: StaticWriteAuthority;
  disks: Map<number, { data: SimDisk; meta: SimDisk }>;
  random: SimRandom;
  clockRate: number;
  downSinceUs: number | undefined;
  gate: ProcessGate | undefined;
  /** Volumes open on the running incarnation, and those being closed. */
  open: Set<number>;
  closing: Set<number>;
  /** A graceful shutdown is under way. */
  stopping: boolean;
}

interface Outstanding {
  node: string;
  incarnation: number;
  volumeId: number;
  blocks: number[];
  write: boolean;
}

export function runSimulation(options: SimulationOptions): SimulationResult {
  const random = new SimRandom(options.seed);
  const chosen = chooseMix(random.fork("mix"), options.long === true);
  if (chosen.lazyFlush) chosen.flushRate = 0.01;
  // A replaced disk during role swaps can leave no complete replica anywhere: not what a run tests.
  if (chosen.flips) chosen.replaceDisk = false;
  const mix: FaultMix = { ...chosen, ...options.mix };
  // Normal runs take 5-50 thousand events (the long setting up to a few million).
  const scheduler = new Scheduler(options.long ? 50_000_000 : 2_000_000);
  const oracle = new Oracle(nodeNames);
  const checkers = new Checkers(oracle);
  const timeline: string[] = [];
  const stats: Record<string, number> = { writesAcked: 0, writesAlone: 0, writesFailed: 0, reads: 0, flushes: 0, crashes: 0, resyncs: 0, splitBrains: 0, servingTargetsRefused: 0, resyncsFromB: 0, flips: 0, decisions: 0, intrusions: 0, verifies: 0 };
  const note = (line: string) => {
    if (options.trace) timeline.push(`${(scheduler.now / 1000).toFixed(1).padStart(9)} ms  ${line}`);
  };

  const config: ReplicaConfig = options.long
    ? defaultReplicaConfig({
        activityLogExtentBytes: mix.activityLogExtentBytes,
        activityLogExtentsMax: mix.activityLogExtents,
        resyncChunkBytesMax: mix.resyncChunkBytes,
        verifyExtentBytes: Math.min(mix.resyncChunkBytes, 16384),
        resyncWindowChunks: mix.resyncWindow,
        resyncCheckpointChunks: mix.checkpointChunks,
        framePiecesBytesMin: random.fork("frame pieces").pick([1, 4096, replicaFramePiecesBytesMin]),
        bugs: options.bugs ?? {},
      })
    : defaultReplicaConfig({
        tickMs: 10,
        keepaliveIntervalTicks: 5,
        linkTimeoutTicks: 15,
        handshakeTimeoutTicks: 50,
        reconnectDelayTicksMin: 2,
        reconnectDelayTicksMax: 20,
        activityLogExtentBytes: mix.activityLogExtentBytes,
        activityLogExtentsMax: mix.activityLogExtents,
        resyncChunkBytesMax: mix.resyncChunkBytes,
        resyncWindowChunks: mix.resyncWindow,
        resyncRateBytesPerTick: 1 << 20,
        resyncCheckpointChunks: mix.checkpointChunks,
        resyncRetryDelayTicks: 5,
        verifyExtentBytes: Math.min(mix.resyncChunkBytes, 16384),
        transferLogGranulesMax: 64,
        barrierIntervalTicks: mix.lazyFlush ? 200 : 10,
        bitmapWritebackIntervalTicks: 30,
        rateWindowTicks: 100,
        frameBytesMax: 1 << 20,
        // Data in pieces (large frames across chunks) at every size here, or only where the daemon keeps it.
        framePiecesBytesMin: random.fork("frame pieces").pick([1, 4096, replicaFramePiecesBytesMin]),
        bugs: options.bugs ?? {},
      });

  const network = new SimNetwork(
    scheduler,
    random.fork("network"),
    { latencyUsMin: mix.networkLatencyUs[0], latencyUsMax: mix.networkLatencyUs[1], chunkBytesMax: mix.chunkBytesMax, corruptProbability: mix.corrupt, duplicateProbability: mix.duplicate, resetOnCrashProbability: 0.5 },
    nodeNames,
  );
  const secret = new TextEncoder().encode("pairing secret for the simulation");
  const clusterId = new Uint8Array(16).fill(0x42);
  const epochs = new Map<number, number>();
  const volumeIds = Array.from({ length: mix.volumes }, (_, index) => index + 1);
  const sizeBytes = mix.blocks * blockBytes;
  const layout = metadataLayout(sizeBytes, mix.granuleBytes);
  const rotted = new Map<number, Set<number>>(volumeIds.map((id) => [id, new Set()]));
  /** Blocks rot struck on a (verify may copy that rot to b): excused in the final images. */
  const rotEver = new Map<number, Set<number>>(volumeIds.map((id) => [id, new Set()]));
  /**
   * Blocks rot struck on each node. The node that copies to its peer (a resync source, a verify
   * that repairs: the primary, which flips) copies its rot with the data, and both then hold it.
   */
  const rotOn = new Map<number, Map<string, Set<number>>>(volumeIds.map((id) => [id, new Map()]));
  const rotCopiedFrom = (volumeId: number, name: string, blocks?: Iterable<number>) => {
    const struck = rotOn.get(volumeId)!.get(name);
    if (!struck) return;
    for (const block of blocks ?? struck) if (struck.has(block)) rotEver.get(volumeId)!.add(block);
  };
  /** When rot last struck each block. */
  const rotTimes = new Map<number, Map<number, number>>(volumeIds.map((id) => [id, new Map()]));

  const nodes = new Map<string, SimNode>();
  for (const name of nodeNames) {
    const nodeRandom = random.fork(`node-${name}`);
    const disks = new Map<number, { data: SimDisk; meta: SimDisk }>();
    for (const volumeId of volumeIds) {
      const diskFaults = {
        latencyUsMin: mix.diskLatencyUs[0],
        latencyUsMax: mix.diskLatencyUs[1],
        readErrorProbability: mix.diskErrors,
        writeErrorProbability: mix.diskErrors,
        flushErrorProbability: mix.diskErrors / 2,
        tearBytes: 4096,
        crashKeepProbability: 0.4,
        flushFailureDropsCache: mix.linuxFlush,
        flushFailureEvicts: mix.linuxEvicts,
        noSpaceShare: mix.noSpace ? 0.5 : 0,
        trimKeepsDataProbability: mix.trimAdvisory ? 0.5 : 0,
      };
      const data = new SimDisk(`${name}.v${volumeId}.data`, sizeBytes, scheduler, nodeRandom.fork(`data${volumeId}`), diskFaults);
      const meta = new SimDisk(`${name}.v${volumeId}.meta`, layout.totalBytes, scheduler, nodeRandom.fork(`meta${volumeId}`), {
        ...diskFaults,
        readErrorProbability: 0,
        writeErrorProbability: mix.metadataErrors,
        flushErrorProbability: mix.metadataErrors,
        tearBytes: 512,
      });
      disks.set(volumeId, { data, meta });
    }
    const authority = new StaticWriteAuthority(volumeIds.map((id) => [id, { primary: name === "a", epoch: 1 }]));
    const drift = mix.clockDrift === 0 ? 1 : 1 + (nodeRandom.float() * 2 - 1) * mix.clockDrift;
    nodes.set(name, { name, alive: false, incarnation: 0, driver: undefined, authority, disks, random: nodeRandom, clockRate: drift, downSinceUs: undefined, gate: undefined, open: new Set(), closing: new Set(), stopping: false });
  }
  const initialGeneration = 0x1000n + BigInt(random.int(1 << 30));
  const format = (disk: SimDisk, volumeId: number, initial: bigint | undefined) => {
    for (const write of formatMetadata({ volumeId, sizeBytes, granuleBytes: mix.granuleBytes, activityLogExtentBytes: mix.activityLogExtentBytes, initialGeneration: initial })) {
      disk.visible.set(write.bytes, write.offset);
      disk.durable.set(write.bytes, write.offset);
    }
  };
  for (const volumeId of volumeIds) {
    oracle.addVolume(volumeId, mix.blocks);
    epochs.set(volumeId, 1);
    format(nodes.get("a")!.disks.get(volumeId)!.meta, volumeId, initialGeneration);
    format(nodes.get("b")!.disks.get(volumeId)!.meta, volumeId, mix.newSecondary || mix.imported ? undefined : initialGeneration);
    if (mix.imported) {
      // a's backing already holds data; b's new replica holds whatever its disk held (garbage).
      const blocks = Array.from({ length: mix.blocks }, (_, block) => block).filter(() => random.chance(0.6));
      const a = nodes.get("a")!.disks.get(volumeId)!.data;
      for (const record of oracle.preload(volumeId, "a", blocks)) {
        const bytes = new Uint8Array(blockBytes);
        fillBlock(bytes, record.id, volumeId, record.firstBlock);
        a.visible.set(bytes, record.firstBlock * blockBytes);
        a.durable.set(bytes, record.firstBlock * blockBytes);
      }
      const b = nodes.get("b")!.disks.get(volumeId)!.data;
      random.fill(b.durable);
      b.visible.set(b.durable);
    }
  }
  for (const node of nodes.values()) {
    for (const [volumeId, disks] of node.disks) {
      // Evicted cached writes no longer read back: reads may see older data from now on.
      disks.data.onDropped = () => oracle.disturb(scheduler.now);
      // A failed flush voids the promise of what it covered on this node, as fsync on Linux
      // reports a writeback error once: a later flush that succeeds does not vouch for those
      // writes (their copy on the peer may still bring them back). Whether the disk kept them
      // cached (dirty) or dropped them, the product treats them as possibly lost.
      disks.data.onFlushFailed = () => oracle.cacheDropped(volumeId, node.name);
      disks.meta.onDropped = () => oracle.disturb(scheduler.now);
    }
  }

  // ---------------------------------------------------------------- nodes

  const peerOf = (name: string) => (name === "a" ? "b" : "a");

  const observe = (node: SimNode) => (report: ReplicaReport) => {
    if (report.kind === "decision") {
      stats.decisions!++;
      note(`${node.name} v${report.volumeId} decision ${report.decision}${report.sourceIsLocal === undefined ? "" : report.sourceIsLocal ? " (source)" : " (target)"}${report.full ? " full" : ""}: ${report.reason} [bits local ${report.localBits} peer ${report.peerBits}]`);
      // Judged where the verdict takes effect on both sides: when the follower applies it. A verdict
      // the decider reached on a state the follower has left since (a hello that waited in a stopped
      // process, say) is refused by the follower and never applied.
      if (node.name > peerOf(node.name)) checkers.checkDecision(report.volumeId, report.decision, report.byOperator, node.name, scheduler.now);
      if (report.decision === "resync") {
        const begun = node.driver?.status(report.volumeId)?.dataState === "inconsistent";
        checkers.checkResyncDecision(report.volumeId, node.name, report.sourceIsLocal === false, report.full, report.byOperator, begun, scheduler.now);
      }
      if (report.decision === "resync") stats.resyncs!++;
      if (report.decision === "resync" && node.name === "b" && report.sourceIsLocal) stats.resyncsFromB!++;
      if (report.decision === "splitBrain") stats.splitBrains!++;
      if (report.decision === "primaryWouldBeTarget") stats.servingTargetsRefused!++;
    } else if (report.kind === "resyncStarted") {
      if (report.sourceIsLocal) {
        rotCopiedFrom(report.volumeId, node.name);
        resyncSourceMarks.set(`${node.name}:${report.volumeId}`, { written: node.disks.get(report.volumeId)!.data.writesCompleted, peerDurable: nodes.get(peerOf(node.name))!.disks.get(report.volumeId)!.data.durable.slice() });
      } else resyncSourceMarks.delete(`${node.name}:${report.volumeId}`);
      if (options.trace) note(`${node.name} ${JSON.stringify(report)}`);
    } else if (report.kind === "synced") {
      note(`${node.name} v${report.volumeId} synced at ${report.current}`);
      oracle.synced(report.volumeId, node.name, report.asTarget, scheduler.now);
      if (report.asTarget) checkers.resyncOver(report.volumeId, node.name);
    } else if (report.kind === "generationStarted") {
      note(`${node.name} v${report.volumeId} new generation ${report.current} (base ${report.base})`);
      oracle.generationStarted(report.volumeId, node.name, scheduler.now);
    } else if (report.kind === "verifyMismatch") {
      // A repaired extent holds the same bytes on both sides from now on (rot later is new rot):
      // the repairing node's, rot included.
      if (report.repaired) {
        const blocks: number[] = [];
        for (let block = Math.floor(report.offset / blockBytes); block < Math.ceil((report.offset + report.length) / blockBytes); block++) blocks.push(block);
        rotCopiedFrom(report.volumeId, node.name, blocks);
        // Rot that struck after the verify began may postdate the repair's write of the extent
        // (the report comes after it): it stays rot.
        for (const block of blocks) if ((rotTimes.get(report.volumeId)!.get(block) ?? -1) < verifyStartedUs) rotted.get(report.volumeId)!.delete(block);
      }
      if (options.trace) note(`${node.name} ${JSON.stringify(report)}`);
    } else if (report.kind === "linkDown") {
      // Writes in flight to the peer now complete alone: this node may start a generation of its
      // own (and crash before it says so).
      for (const volumeId of volumeIds) if (workload.writing(node.name, volumeId)) oracle.generationStarted(volumeId, node.name, scheduler.now);
      if (options.trace) note(`${node.name} ${JSON.stringify(report)}`);
    } else if (report.kind === "connectionRefused") {
      stats.intrusions!++;
      note(`${node.name} refused a connection: ${report.reason}`);
    } else if (options.trace) note(`${node.name} ${JSON.stringify(report, (_key, value) => (typeof value === "bigint" ? value.toString(16) : value))}`);
  };

  const startNode = (node: SimNode) => {
    if (node.alive) return;
    node.alive = true;
    node.downSinceUs = undefined;
    node.incarnation++;
    node.stopping = false;
    node.open.clear();
    node.closing.clear();
    const incarnation = node.incarnation;
    const gate = new ProcessGate(scheduler);
    node.gate = gate;
    // The node's clock runs at its own rate, from a random origin.
    const origin = node.random.float() * 1000;
    const clock: Clock = {
      now: () => origin + (scheduler.now * node.clockRate) / 1000,
      after(delayMs, callback) {
        // A process's timer fires at once for a delay it cannot hold (setTimeout: Infinity → 1 ms).
        if (!Number.isFinite(delayMs) || delayMs > 2 ** 31 - 1) throw new Error(`a timer of ${delayMs} ms`);
        let cancelled = false;
        scheduler.after((delayMs * 1000) / node.clockRate, () => {
          // A stalled process runs its timer callback when the stall ends.
          if (!cancelled && node.incarnation === incarnation && node.alive) gate.enter(() => !cancelled && callback());
        });
        return { cancel: () => (cancelled = true) };
      },
    };
    // The node's role configuration outlives a crash, but a dead incarnation must hear nothing more.
    const authority: WriteAuthority = {
      grant: (volumeId) => node.authority.grant(volumeId),
      subscribe: (listener) => node.authority.subscribe((volumeId) => {
        if (node.incarnation === incarnation && node.alive) gate.enter(() => listener(volumeId));
      }),
      linkChanged: (up) => node.authority.linkChanged(up),
    };
    const driver = new ReplicaDriver({
      identity: { nodeId: node.name, peerNodeId: peerOf(node.name), clusterId, secret, connect: node.name === "a" ? "dial" : "accept" },
      transport: gate.transport(network.endpoint(node.name, incarnation)),
      clock,
      random: node.random.fork(`incarnation-${incarnation}`),
      authority,
      config,
      strictQuietTicks: true,
      observer: { report: observe(node) },
    });
    node.driver = driver;
    note(`${node.name} starts (incarnation ${incarnation})`);
    for (const volumeId of node.disks.keys()) openVolume(node, volumeId);
    driver.start();
  };

  const openVolume = (node: SimNode, volumeId: number) => {
    const driver = node.driver!;
    const disks = node.disks.get(volumeId)!;
    const gate = node.gate!;
    driver.openVolume(volumeId, gate.storage(disks.data), gate.metadata(disks.meta.asMetadataStore()), (error) => {
      if (node.driver !== driver) return;
      // Reading metadata cannot fail in the simulation (no read errors on it): a real problem.
      if (error) checkers.fail("correctness", "volume opens", `${node.name} could not open volume ${volumeId}: ${error.message}`);
      else node.open.add(volumeId);
    });
  };

  /** The operator closes a volume on a node; it opens it again a little later. */
  const closeVolume = (node: SimNode, volumeId: number, reopenAfterUs: number | undefined, done: () => void = () => {}) => {
    const driver = node.driver!;
    node.closing.add(volumeId);
    note(`operator: close v${volumeId} on ${node.name}`);
    // The peer's writes in flight to this node now complete alone (it may start a generation).
    if (workload.writing(peerOf(node.name), volumeId)) oracle.generationStarted(volumeId, peerOf(node.name), scheduler.now);
    node.gate!.enter(() =>
      driver.closeVolume(volumeId, (error) => {
        if (node.driver !== driver) return;
        node.closing.delete(volumeId);
        node.open.delete(volumeId);
        note(`${node.name} closed v${volumeId}${error ? ` (${error.message})` : ""}`);
        done();
        if (reopenAfterUs === undefined) return;
        scheduler.after(reopenAfterUs, () => {
          if (node.driver !== driver || node.stopping || node.open.has(volumeId) || node.closing.has(volumeId)) return;
          note(`operator: open v${volumeId} on ${node.name} again`);
          openVolume(node, volumeId);
        });
      }),
    );
  };

  /** A graceful stop: every volume closed, a goodbye to the peer, then the process exits. */
  const shutdownNode = (node: SimNode, restartAfterUs: number) => {
    if (!node.alive || node.stopping || node.closing.size > 0) return;
    node.stopping = true;
    const driver = node.driver!;
    note(`operator: stop ${node.name} gracefully`);
    const volumes = [...node.open];
    let pending = volumes.length;
    const stop = () => {
      if (node.driver !== driver || !node.alive) return;
      driver.stop(); // called from the last close's completion: inside the running process
      node.gate!.close();
      node.alive = false;
      node.driver = undefined;
      node.downSinceUs = scheduler.now;
      network.crash(node.name); // the process is gone; its disks keep everything (no power loss)
      workload.abandon(node.name);
      note(`${node.name} stopped`);
      restartLater(node, restartAfterUs);
    };
    if (pending === 0) return stop();
    for (const volumeId of volumes) closeVolume(node, volumeId, undefined, () => --pending === 0 && stop());
  };

  /** A node dies: a power loss (its disks lose what they had not made durable) or, with `kill`, its process only (the page cache survives). */
  const crashNode = (node: SimNode, why: string, kill = false) => {
    if (!node.alive) return;
    stats.crashes!++;
    note(kill ? `${node.name} is killed (${why}; its page cache survives)` : `${node.name} crashes (${why})`);
    oracle.disturb(scheduler.now);
    if (verifyOn?.name === node.name) {
      // The operator's verify died with its node: its answer never comes.
      verifyBusy = false;
      verifyOn = undefined;
    }
    node.gate?.close();
    node.alive = false;
    node.driver = undefined;
    node.downSinceUs = scheduler.now;
    network.crash(node.name);
    oracle.crashed(node.name);
    for (const disks of node.disks.values()) {
      disks.data.die(kill);
      disks.meta.die(kill);
    }
    workload.abandon(node.name);
  };

  const status = (name: string, volumeId: number): VolumeStatus | undefined => {
    const node = nodes.get(name)!;
    return node.alive ? node.driver?.status(volumeId) : undefined;
  };
  const linkUp = (name: string) => {
    const node = nodes.get(name)!;
    return node.alive && node.driver?.link().state === "up";
  };
  const isPrimary = (name: string, volumeId: number) => nodes.get(name)!.authority.role(volumeId)?.primary === true;
  const setRole = (name: string, volumeId: number, primary: boolean) => {
    const node = nodes.get(name)!;
    const epoch = primary ? (epochs.get(volumeId)! + 1) : (node.authority.role(volumeId)?.epoch ?? 1);
    if (primary) epochs.set(volumeId, epoch);
    if (primary !== isPrimary(name, volumeId)) {
      const marks = roleMarks.get(`${name}:${volumeId}`) ?? {};
      marks[primary ? "promoted" : "demoted"] = node.disks.get(volumeId)!.data.writesCompleted;
      roleMarks.set(`${name}:${volumeId}`, marks);
    }
    note(`operator: ${name} becomes ${primary ? `primary of v${volumeId} in epoch ${epoch}` : `secondary of v${volumeId}`}`);
    node.authority.setRole(volumeId, { primary, epoch });
  };

  // ---------------------------------------------------------------- workload

  const workloadRandom = random.fork("workload");
  // After a failover the VM still has to boot on its new node: it writes (and flushes) only after
  // a while, and the link may come back before that. Meanwhile the new primary's cache still holds
  // what it received as the secondary (a resync from it copies data it has not flushed).
  const bootRandom = random.fork("boot");
  /** Per node and volume, when the VM a failover moved there starts writing. */
  const vmStarts = new Map<string, number>();
  const vmBoots = (name: string, volumeId: number) => vmStarts.set(`${name}:${volumeId}`, scheduler.now + bootRandom.range(20_000, 400_000));
  const workload = {
    stopped: false,
    outstanding: new Map<number, Outstanding>(),
    nextOp: 1,
    busy: new Map<number, Set<number>>(volumeIds.map((id) => [id, new Set()])),
    count(volumeId: number): number {
      let count = 0;
      for (const op of this.outstanding.values()) if (op.volumeId === volumeId) count++;
      return count;
    },
    /** Whether `name` has writes of `volumeId` outstanding. */
    writing(name: string, volumeId: number): boolean {
      for (const op of this.outstanding.values()) if (op.node === name && op.volumeId === volumeId && op.write) return true;
      return false;
    },
    abandon(name: string) {
      for (const [id, op] of this.outstanding) {
        if (op.node !== name) continue;
        for (const block of op.blocks) this.busy.get(op.volumeId)!.delete(block);
        this.outstanding.delete(id);
      }
    },
    pickBlocks(volumeId: number, maxCount: number): number[] | undefined {
      const busy = this.busy.get(volumeId)!;
      for (let attempt = 0; attempt < 4; attempt++) {
        const count = workloadRandom.range(1, maxCount);
        const first = workloadRandom.int(mix.blocks - count + 1);
        const blocks = Array.from({ length: count }, (_, index) => first + index);
        if (blocks.every((block) => !busy.has(block))) return blocks;
      }
      return undefined;
    },
    issue(volumeId: number): void {
      const writers = nodeNames.filter((name) => nodes.get(name)!.alive && isPrimary(name, volumeId) && (vmStarts.get(`${name}:${volumeId}`) ?? 0) <= scheduler.now);
      if (writers.length === 0) return;
      const name = workloadRandom.pick(writers);
      const node = nodes.get(name)!;
      const driver = node.driver!;
      const gate = node.gate!;
      const incarnation = node.incarnation;
      const roll = workloadRandom.float();
      const id = this.nextOp++;
      const track = (blocks: number[]) => {
        for (const block of blocks) this.busy.get(volumeId)!.add(block);
        this.outstanding.set(id, { node: name, incarnation, volumeId, blocks, write: blocks.length > 0 });
      };
      const finish = () => {
        const op = this.outstanding.get(id);
        if (!op || op.incarnation !== nodes.get(op.node)!.incarnation) return false;
        for (const block of op.blocks) this.busy.get(volumeId)!.delete(block);
        this.outstanding.delete(id);
        return true;
      };
      if (roll < mix.flushRate) {
        const covered = oracle.flushSnapshot(volumeId, name);
        track([]);
        stats.flushes!++;
        gate.enter(() =>
          driver.flush(volumeId, (error, info) => {
            if (!finish()) return;
            if (!error) oracle.flushCompleted(volumeId, name, covered, scheduler.now, info?.mirrored === true);
          }),
        );
        return;
      }
      if (roll < mix.flushRate + mix.readRate) {
        const readers = nodeNames.filter((candidate) => nodes.get(candidate)!.alive && (isPrimary(candidate, volumeId) || !mix.rot));
        const reader = nodes.get(workloadRandom.pick(readers))!;
        const blocks = this.pickBlocks(volumeId, 4);
        if (!blocks) return;
        const target = new Uint8Array(blocks.length * blockBytes);
        const readerIncarnation = reader.incarnation;
        const readerDriver = reader.driver!;
        for (const block of blocks) this.busy.get(volumeId)!.add(block);
        this.outstanding.set(id, { node: reader.name, incarnation: readerIncarnation, volumeId, blocks, write: false });
        stats.reads!++;
        reader.gate!.enter(() => {
          const submittedUs = scheduler.now;
          readerDriver.read(volumeId, blocks[0]! * blockBytes, target, (error) => {
            if (!finish()) return;
            // A read may be served by the peer: rot on either side excuses a damaged block.
            if (!error) checkers.checkRead(volumeId, reader.name, blocks[0]!, target, submittedUs, scheduler.now, (block) => rotted.get(volumeId)!.has(block) || rotEver.get(volumeId)!.has(block));
          });
        });
        return;
      }
      const zero = roll < mix.flushRate + mix.readRate + mix.trimRate;
      const blocks = this.pickBlocks(volumeId, 4);
      if (!blocks) return;
      const fua = workloadRandom.chance(mix.fuaRate);
      // A write to a node that is not in sync may make it start a generation of its own (even if it
      // crashes before saying so): the split-brain checker must not call that spurious.
      if (status(name, volumeId)?.sync !== "synced") oracle.generationStarted(volumeId, name, scheduler.now);
      const record = oracle.submitWrite(volumeId, name, blocks[0]!, blocks.length, zero, fua, scheduler.now);
      track(blocks);
      const done = (error: BlockError | null, info: { mirrored: boolean | undefined; epoch: number | undefined }) => {
        if (!finish()) return;
        oracle.ackWrite(record, error === null, info.mirrored, info.epoch, scheduler.now);
        if (error) stats.writesFailed!++;
        else {
          stats.writesAcked!++;
          if (info.mirrored === false) stats.writesAlone!++;
        }
      };
      const offset = blocks[0]! * blockBytes;
      if (zero) {
        const trim = workloadRandom.chance(0.5);
        const noHole = workloadRandom.chance(0.5);
        gate.enter(() => (trim ? driver.trim(volumeId, offset, blocks.length * blockBytes, fua, done) : driver.zero(volumeId, offset, blocks.length * blockBytes, { fua, noHole }, done)));
        return;
      }
      const data = new Uint8Array(blocks.length * blockBytes);
      blocks.forEach((block, index) => fillBlock(data.subarray(index * blockBytes, (index + 1) * blockBytes), record.id, volumeId, block));
      // A guest may reuse the buffer while the write is in flight (no stable pages): once the
      // write was submitted, its bytes change under it.
      const mutateAfterUs = mix.mutateBuffers && workloadRandom.chance(0.5) ? workloadRandom.range(0, 3000) : undefined;
      // A write whose buffer nothing changes is handed over as stable (as the NBD server does)
      // every other time, so both admission paths run; decided without a draw, so seeds replay.
      const stable = mutateAfterUs === undefined && record.id % 2 === 0;
      // Half of those arrive in two pieces, as an NBD payload that spanned two received chunks.
      const cut = 1 + ((record.id * 509) % Math.max(1, data.length - 1));
      const payload = stable && record.id % 4 === 0 && cut < data.length ? new Pieces([data.subarray(0, cut), data.subarray(cut)]) : data;
      gate.enter(() => {
        driver.write(volumeId, offset, payload, fua, done, stable);
        if (mutateAfterUs !== undefined) scheduler.after(mutateAfterUs, () => data.fill(0xa5, 16, 80));
      });
    },
    loop(): void {
      if (this.stopped) return;
      if (!paused) for (const volumeId of volumeIds) if (!frozen.has(volumeId) && this.count(volumeId) < mix.depth) this.issue(volumeId);
      scheduler.after(workloadRandom.range(100, 1500), () => this.loop());
    },
  };

  // ---------------------------------------------------------------- operator and faults

  const faultRandom = random.fork("faults");
  const operatorRandom = random.fork("operator");
  const killRandom = random.fork("kills");
  let promotions = 0;
  /** Volumes a switchover froze (one at a time): their clients issue nothing until it ends. */
  const frozen = new Set<number>();
  let verifyBusy = false;
  /** The node (and incarnation) running the operator's verify: its death ends the verify too. */
  let verifyOn: { name: string; incarnation: number } | undefined;
  /** When the operator's last verify began. */
  let verifyStartedUs = 0;
  let replaced = false;
  /** An aimed crash of a resync source is waiting for its moment. */
  let sourceAimed = false;
  /** Per node and volume, when it last began a resync as the source: its data disk's write count and its peer's medium. */
  const resyncSourceMarks = new Map<string, { written: number; peerDurable: Uint8Array }>();
  /** Per node and volume, the data disk's write count when the node last became its primary and last stopped being it. */
  const roleMarks = new Map<string, { promoted?: number; demoted?: number }>();
  const resolving = new Map<number, number>();

  const restartLater = (node: SimNode, delayUs: number) => scheduler.after(delayUs, () => startNode(node));

  const injectFault = () => {
    const kinds: string[] = [];
    if (mix.partitions) kinds.push("partition");
    if (mix.cuts) kinds.push("cut");
    if (mix.clogs) kinds.push("clog");
    if (mix.resets) kinds.push("reset");
    if (mix.intruders) kinds.push("intruder");
    if (mix.crashes === "a" || mix.crashes === "both") kinds.push("crash-a");
    if (mix.crashes === "b" || mix.crashes === "both") kinds.push("crash-b");
    if (mix.powerLoss) kinds.push("power");
    if (mix.rot) kinds.push("rot");
    if (mix.replaceDisk && !replaced) kinds.push("replace");
    if (mix.aimedCrashes && mix.crashes !== "none") kinds.push("crash-source", "crash-source");
    if (mix.closes) kinds.push("close");
    if (mix.shutdowns) kinds.push("shutdown");
    if (mix.stalls) kinds.push("stall");
    if (kinds.length === 0) return;
    const kind = faultRandom.pick(kinds);
    switch (kind) {
      case "partition": {
        const duration = faultRandom.range(20_000, 400_000);
        note(`fault: partition for ${duration / 1000} ms`);
        network.partition(duration);
        return;
      }
      case "cut": {
        const duration = faultRandom.range(20_000, 300_000);
        note(`fault: cable pulled for ${duration / 1000} ms`);
        network.cut(duration);
        return;
      }
      case "clog": {
        const from = faultRandom.pick(nodeNames);
        const duration = faultRandom.range(5_000, 200_000);
        note(`fault: ${from}'s outgoing traffic stalls for ${duration / 1000} ms`);
        network.clog(from, duration);
        return;
      }
      case "reset":
        note("fault: connections reset");
        network.resetAll();
        return;
      case "intruder": {
        const target = faultRandom.pick(nodeNames);
        const choice = faultRandom.int(3);
        let bytes: Uint8Array;
        if (choice === 0 || network.recordings.length === 0) {
          bytes = new Uint8Array(faultRandom.range(1, 3000));
          faultRandom.fill(bytes);
        } else if (choice === 1) {
          bytes = network.recordings[faultRandom.int(network.recordings.length)]!;
        } else {
          // A plausible handshake from someone who does not know the secret.
          bytes = intruderHandshake(faultRandom, clusterId, peerOf(target));
        }
        note(`fault: intruder connects to ${target} (${["garbage", "replay", "wrong secret"][choice]})`);
        network.intrude(target, bytes, ["garbage", "replay", "badsecret"][choice]!);
        return;
      }
      case "crash-a":
      case "crash-b": {
        const node = nodes.get(kind === "crash-a" ? "a" : "b")!;
        if (!node.alive) return;
        const restartUs = faultRandom.range(20_000, 600_000);
        // Some crashes kill the process only (a stream of its own: the other draws stay as they were).
        const kill = killRandom.chance(0.3);
        aimed(node, () => {
          if (!node.alive) return;
          crashNode(node, "fault", kill);
          restartLater(node, restartUs);
        });
        return;
      }
      case "crash-source":
        aimAtSource(faultRandom.range(20_000, 300_000));
        return;
      case "power": {
        const restarts = nodeNames.map(() => faultRandom.range(20_000, 300_000));
        aimed(nodes.get(faultRandom.pick(nodeNames))!, () => {
          note("fault: power loss on both nodes");
          nodeNames.forEach((name, index) => {
            crashNode(nodes.get(name)!, "power loss");
            restartLater(nodes.get(name)!, restarts[index]!);
          });
        });
        return;
      }
      case "rot": {
        const volumeId = faultRandom.pick(volumeIds);
        const victim = nodes.get(mix.rotPrimary ? faultRandom.pick(nodeNames) : "b")!;
        if (!victim.alive || status(victim.name, volumeId)?.sync !== "synced") return;
        const block = faultRandom.int(mix.blocks);
        note(`fault: bit rot in v${volumeId} block 0x${block.toString(16)} on ${victim.name}`);
        victim.disks.get(volumeId)!.data.rot(block * blockBytes + 100, 16);
        rotted.get(volumeId)!.add(block);
        const struck = rotOn.get(volumeId)!;
        if (!struck.has(victim.name)) struck.set(victim.name, new Set());
        struck.get(victim.name)!.add(block);
        rotTimes.get(volumeId)!.set(block, scheduler.now);
        // Rot on the side verify repairs from is copied to the other: both then hold it.
        if (victim.name === "a") rotEver.get(volumeId)!.add(block);
        return;
      }
      case "close": {
        const node = nodes.get(faultRandom.pick(nodeNames))!;
        const volumeId = faultRandom.pick(volumeIds);
        if (!node.alive || node.stopping || !node.open.has(volumeId) || node.closing.has(volumeId)) return;
        closeVolume(node, volumeId, faultRandom.range(10_000, 300_000));
        return;
      }
      case "shutdown": {
        const node = nodes.get(faultRandom.pick(nodeNames))!;
        shutdownNode(node, faultRandom.range(20_000, 300_000));
        return;
      }
      case "stall": {
        const node = nodes.get(faultRandom.pick(nodeNames))!;
        if (!node.alive) return;
        const linkTimeoutUs = config.linkTimeoutTicks * config.tickMs * 1000;
        const durationUs = Math.round(linkTimeoutUs * (1.2 + faultRandom.float() * 2.8));
        note(`fault: ${node.name}'s process stalls for ${(durationUs / 1000).toFixed(0)} ms (link timeout ${linkTimeoutUs / 1000} ms)`);
        node.gate!.stall(scheduler.now + durationUs);
        return;
      }
      case "replace": {
        const node = nodes.get("b")!;
        if (!node.alive) return;
        // An operator replaces a disk only while the other replica is complete (status says so):
        // replacing the only complete copy loses data by hand, not what a run tests.
        if (!volumeIds.every((volumeId) => status("a", volumeId)?.dataState === "consistent")) return;
        replaced = true;
        crashNode(node, "disk replacement");
        for (const [volumeId, disks] of node.disks) {
          disks.data.replace();
          disks.meta.replace();
          format(disks.meta, volumeId, undefined);
          rotted.get(volumeId)!.clear();
          rotOn.get(volumeId)!.delete(node.name);
          checkers.resyncOver(volumeId, node.name);
        }
        note("fault: b's disks replaced with new ones");
        restartLater(node, faultRandom.range(20_000, 200_000));
        return;
      }
    }
  };

  /**
   * A crash of the source of a resync, right after a checkpoint (the target made copied regions
   * durable and both cleared them) while the target holds on its medium a region the source holds
   * only in its cache, written there before the resync began and while this node was not the
   * primary (so its activity log does not cover it): what the source copies must have been durable
   * there first, or its crash loses it and nothing marks it. The moment comes only when a
   * former secondary, its cache not yet flushed, becomes a resync source (a failover while the link
   * is down, say), so the aim waits for it until the chaos ends; one aim at a time.
   */
  const aimAtSource = (restartUs: number) => {
    if (sourceAimed) return;
    sourceAimed = true;
    const remaining = new Map<string, number>();
    const poll = () => {
      if (faultsStopped) return;
      for (const name of nodeNames) {
        const node = nodes.get(name)!;
        const peer = nodes.get(peerOf(name))!;
        if (!node.alive || !peer.alive) continue;
        for (const volumeId of volumeIds) {
          const key = `${name}:${volumeId}`;
          const began = resyncSourceMarks.get(key);
          const resync = node.driver!.status(volumeId)?.resync;
          if (!began || resync?.direction !== "source") continue;
          const before = remaining.get(key);
          remaining.set(key, resync.bitsRemaining);
          if (before === undefined || resync.bitsRemaining >= before) continue;
          // Written during its last spell as the secondary (up to now if it still is).
          const demoted = roleMarks.get(key)?.demoted ?? 0;
          const promoted = isPrimary(name, volumeId) ? (roleMarks.get(key)?.promoted ?? 0) : Infinity;
          const unprotected = (sequence: number) => sequence <= began.written && sequence > demoted && sequence <= promoted;
          if (!node.disks.get(volumeId)!.data.cachedOnlyHereCopiedTo(peer.disks.get(volumeId)!.data, began.peerDurable, blockBytes, unprotected)) continue;
          note(`fault aimed at ${name}, the source of a resync, while ${peerOf(name)} holds durably what ${name} holds only in its cache`);
          sourceAimed = false;
          crashNode(node, "fault");
          restartLater(node, restartUs);
          return;
        }
      }
      scheduler.after(1000, poll);
    };
    poll();
  };

  /**
   * A crash aimed at a moment that matters: with aimed crashes on, wait (bounded) until something
   * is in flight towards `node` — a barrier, a resync chunk or checkpoint, mirrored writes — then act.
   */
  const aimed = (node: SimNode, act: () => void) => {
    if (!mix.aimedCrashes) return act();
    const target = faultRandom.pick(["barrier", "resync", "writes", "checkpoint"] as const);
    const peer = nodes.get(peerOf(node.name))!;
    // "checkpoint": once a resync has cleared copied regions (they are on the target's disk).
    const remaining = (who: SimNode) => (who.alive ? volumeIds.map((volumeId) => who.driver!.status(volumeId)?.resync?.bitsRemaining ?? -1) : []);
    const before = [...remaining(node), ...remaining(peer)];
    const inFlight = (who: SimNode) => (who.alive ? volumeIds.map((volumeId) => who.driver!.inFlight(volumeId)) : []);
    const ready = () => {
      if (target === "barrier") return inFlight(peer).some((pending) => (pending?.requests.barrier ?? 0) > 0);
      if (target === "writes") return inFlight(peer).some((pending) => (pending?.requests.write ?? 0) > 0);
      if (target === "checkpoint") return [...remaining(node), ...remaining(peer)].some((bits, index) => before[index]! > 0 && bits < before[index]!);
      return [...inFlight(node), ...inFlight(peer)].some((pending) => pending !== undefined && ((pending.requests.resyncPush ?? 0) + (pending.requests.resyncPull ?? 0) + (pending.requests.resyncFlush ?? 0) + (pending.io.chunkWrite ?? 0) + (pending.io.checkpointFlush ?? 0) > 0));
    };
    const deadline = scheduler.now + 100_000;
    const poll = () => {
      if (faultsStopped) return;
      if (ready() || scheduler.now >= deadline) {
        if (ready()) note(`fault aimed at ${node.name} while ${target === "writes" ? "mirrored writes" : `a ${target}`} is in flight`);
        return act();
      }
      scheduler.after(500, poll);
    };
    poll();
  };

  /** Set when the chaos ends: faults still waiting for their moment are dropped. */
  let faultsStopped = false;
  /** Chaos pauses: faults and new IO stop; if the pair converges soon, its replicas must match. */
  let paused = false;
  const pause = (endUs: number) => {
    if (scheduler.now >= endUs || faultsStopped) return;
    paused = true;
    note("pause: faults and new IO stop for a moment");
    const deadline = scheduler.now + 300_000;
    const poll = () => {
      if (faultsStopped) return;
      if (converged()) {
        note("pause: the pair converged; the replicas must be identical");
        for (const volumeId of volumeIds) {
          const imageA = nodes.get("a")!.disks.get(volumeId)!.data.visible;
          const imageB = nodes.get("b")!.disks.get(volumeId)!.data.visible;
          // Rot stays until a verify repairs it (or a write overwrites it).
          const rot = (block: number) => rotted.get(volumeId)!.has(block) || rotEver.get(volumeId)!.has(block);
          checkers.checkIdentical(volumeId, ["a", imageA], ["b", imageB], `in a pause at ${(scheduler.now / 1000).toFixed(1)} ms`, rot);
        }
        paused = false;
        return;
      }
      if (scheduler.now >= deadline) {
        paused = false;
        return;
      }
      scheduler.after(1000, poll);
    };
    poll();
  };

  const faultLoop = (endUs: number) => {
    if (scheduler.now >= endUs) return;
    if (!paused) injectFault();
    scheduler.after(faultRandom.range(mix.faultIntervalMs[0] * 1000, mix.faultIntervalMs[1] * 1000), () => faultLoop(endUs));
  };

  /** The operator during chaos: forced promotions, switchovers, verifies, and split-brain repair. */
  const operatorStep = (final: boolean) => {
    for (const volumeId of volumeIds) resolveConflicts(volumeId, final);
    if (final) return;
    const b = nodes.get("b")!;
    if (mix.flips && nodeNames.every((name) => nodes.get(name)!.alive && !linkUp(name)) && operatorRandom.chance(0.2)) {
      // The operator reaches both nodes but they cannot reach each other: the roles swap.
      const volumeId = operatorRandom.pick(volumeIds);
      const primaries = nodeNames.filter((name) => isPrimary(name, volumeId));
      // An operator promotes only a replica that status shows complete.
      if (primaries.length === 1 && status(peerOf(primaries[0]!), volumeId)?.dataState === "consistent") {
        const from = primaries[0]!;
        note(`operator: the link is down; moving v${volumeId} from ${from} to ${peerOf(from)}`);
        stats.flips!++;
        oracle.forcedPrimary(volumeId, peerOf(from), scheduler.now);
        oracle.disturb(scheduler.now);
        setRole(from, volumeId, false);
        setRole(peerOf(from), volumeId, true);
        vmBoots(peerOf(from), volumeId);
      }
    }
    if (mix.forcedPromotion && promotions < 2 && b.alive && !isPrimary("b", volumeIds[0]!) && !linkUp("b") && operatorRandom.chance(0.2)) {
      const volumeId = operatorRandom.pick(volumeIds);
      const state = status("b", volumeId);
      if (state && state.dataState === "consistent") {
        promotions++;
        note(`operator: a is unreachable from b; forcing b to primary of v${volumeId}`);
        oracle.forcedPrimary(volumeId, "b", scheduler.now);
        oracle.disturb(scheduler.now);
        setRole("b", volumeId, true);
        vmBoots("b", volumeId);
      }
    }
    if (mix.switchover && frozen.size === 0 && operatorRandom.chance(0.1)) {
      const volumeId = operatorRandom.pick(volumeIds);
      const primaries = nodeNames.filter((name) => isPrimary(name, volumeId));
      const synced = nodeNames.every((name) => linkUp(name) && status(name, volumeId)?.sync === "synced");
      if (primaries.length === 1 && synced) switchover(volumeId, primaries[0]!);
    }
    if (mix.verify && !verifyBusy && operatorRandom.chance(0.05)) startVerify(operatorRandom.pick(volumeIds), operatorRandom.chance(0.7), () => {});
  };

  /**
   * A planned switchover as `tandem failover` runs it (src/node/failover.ts): the old primary
   * freezes the volume, waits until the IO in flight has completed, flushes, and only then gives up
   * the role; the new primary adopts it over the link. A drain that does not finish in time (the old
   * primary stalled), its death, or a failed flush moves nothing; a flush that did not reach the
   * peer, or a link down at the hand-over, leaves no primary (the adopt cannot reach the peer).
   */
  const switchover = (volumeId: number, from: string) => {
    const node = nodes.get(from)!;
    const incarnation = node.incarnation;
    const deadlineUs = scheduler.now + 100_000;
    frozen.add(volumeId);
    note(`operator: switchover of v${volumeId} from ${from}: freeze, drain, flush`);
    const end = (outcome: string) => {
      frozen.delete(volumeId);
      note(`operator: switchover of v${volumeId} from ${from}: ${outcome}`);
    };
    const gone = () => !node.alive || node.incarnation !== incarnation || !isPrimary(from, volumeId);
    const drain = () => {
      if (gone()) return end(`${from} is gone or no longer primary; nothing moved`);
      if (workload.count(volumeId) > 0) {
        if (scheduler.now > deadlineUs) return end("the IO in flight did not drain in time; nothing moved");
        return scheduler.after(1_000, drain);
      }
      const covered = oracle.flushSnapshot(volumeId, from);
      node.gate!.enter(() =>
        node.driver!.flush(volumeId, (error, info) => {
          if (gone()) return end(`${from} is gone or no longer primary; nothing moved`);
          if (error) return end(`the flush failed (${error.message}); nothing moved`);
          oracle.flushCompleted(volumeId, from, covered, scheduler.now, info?.mirrored === true);
          setRole(from, volumeId, false);
          if (info?.mirrored === true && linkUp(from) && linkUp(peerOf(from))) {
            setRole(peerOf(from), volumeId, true);
            end("done");
          } else end("the peer could not adopt the role; no primary");
        }),
      );
    };
    drain();
  };

  const startVerify = (volumeId: number, repair: boolean, done: (complete: boolean) => void) => {
    const primaries = nodeNames.filter((name) => isPrimary(name, volumeId) && nodes.get(name)!.alive);
    if (primaries.length !== 1) return done(false);
    const name = primaries[0]!;
    if (status(name, volumeId)?.sync !== "synced") return done(false);
    verifyBusy = true;
    verifyOn = { name, incarnation: nodes.get(name)!.incarnation };
    stats.verifies!++;
    const other = peerOf(name);
    const rotSnapshot = new Set(rotted.get(volumeId)!);
    const startedUs = scheduler.now;
    verifyStartedUs = startedUs;
    note(`operator: verify v${volumeId} on ${name}${repair ? " with repair" : ""}`);
    nodes.get(name)!.driver!.verify(volumeId, repair, (error, result) => {
      verifyBusy = false;
      verifyOn = undefined;
      note(`verify v${volumeId}: ${error ? error.message : "done"}; ${result ? `${result.mismatchCount} differing, ${result.repaired} repaired` : ""}`);
      if (result) {
        for (const mismatch of result.mismatches) {
          const first = Math.floor(mismatch.offset / blockBytes);
          const last = Math.ceil((mismatch.offset + mismatch.length) / blockBytes);
          let explained = false;
          for (let block = first; block < last; block++) if (rotSnapshot.has(block) || rotted.get(volumeId)!.has(block) || (rotTimes.get(volumeId)!.get(block) ?? -1) >= startedUs) explained = true;
          if (!explained) checkers.fail("correctness", "replicas identical", `verify of v${volumeId} on ${name} found ${mismatch.offset}+${mismatch.length} differing from ${other} while in sync, with no injected rot there`);
        }
      }
      done(error === null && result?.complete === true);
    });
  };

  /** Split brains and double primaries need a person; so does a volume with no primary. */
  const resolveConflicts = (volumeId: number, final: boolean) => {
    if (!nodeNames.every((name) => nodes.get(name)!.alive)) return;
    const statuses = nodeNames.map((name) => status(name, volumeId));
    const splitBrain = statuses.some((state) => state?.sync === "splitBrain");
    const primaries = nodeNames.filter((name) => isPrimary(name, volumeId));
    const lastTry = resolving.get(volumeId) ?? -Infinity;
    if (scheduler.now - lastTry < 100_000) return;
    if (splitBrain && linkUp("a") && linkUp("b")) {
      resolving.set(volumeId, scheduler.now);
      const keeper = operatorRandom.pick(nodeNames);
      const victim = peerOf(keeper);
      if (isPrimary(victim, volumeId)) setRole(victim, volumeId, false);
      if (!isPrimary(keeper, volumeId) && final) setRole(keeper, volumeId, true);
      scheduler.after(20_000, () => {
        const node = nodes.get(keeper)!;
        if (!node.alive || isPrimary(victim, volumeId)) return;
        node.driver!.resolveSplitBrain(volumeId, "local", (error) => {
          note(`operator: resolve split brain of v${volumeId} keeping ${keeper}: ${error ? error.message : "accepted"}`);
          if (!error) {
            oracle.disturb(scheduler.now);
            const discarded = oracle.discard(volumeId, victim);
            // Writes the victim still had in flight are gone as well.
            for (const record of oracle.writes.values()) if (record.volumeId === volumeId && record.node === victim && record.ok === undefined) record.discarded = true;
            note(`oracle: ${discarded} writes made alone by ${victim} are discarded`);
          }
        });
      });
      return;
    }
    const servingTarget = nodeNames.find((name, index) => statuses[index]?.refusal === "primaryWouldBeTarget" && isPrimary(name, volumeId));
    if (servingTarget && primaries.length === 1 && linkUp("a") && linkUp("b")) {
      // The peer holds newer data but the primary serves IO: the operator either demotes the
      // primary (it takes the peer's data) or keeps the primary's data (the peer's is discarded).
      resolving.set(volumeId, scheduler.now);
      const other = peerOf(servingTarget);
      if (operatorRandom.chance(0.5)) {
        note(`operator: ${other} holds newer data of v${volumeId}: demoting ${servingTarget}`);
        oracle.disturb(scheduler.now);
        setRole(servingTarget, volumeId, false);
        return;
      }
      nodes.get(servingTarget)!.driver!.resolveSplitBrain(volumeId, "local", (error) => {
        note(`operator: keep ${servingTarget}'s data of v${volumeId} over ${other}'s: ${error ? error.message : "accepted"}`);
        if (!error) {
          oracle.disturb(scheduler.now);
          const discarded = oracle.discard(volumeId, other);
          note(`oracle: ${discarded} writes made alone by ${other} are discarded`);
        }
      });
      return;
    }
    if (primaries.length === 2 && (final || statuses.some((state) => state?.sync === "refused"))) {
      resolving.set(volumeId, scheduler.now);
      setRole(operatorRandom.pick(nodeNames), volumeId, false);
      return;
    }
    if (final && primaries.length === 0) {
      resolving.set(volumeId, scheduler.now);
      const candidates = nodeNames.filter((name, index) => statuses[index]?.dataState === "consistent");
      if (candidates.length > 0) setRole(candidates.includes("a") ? "a" : candidates[0]!, volumeId, true);
    }
  };

  const operatorLoop = (final: boolean, untilUs: number) => {
    if (scheduler.now >= untilUs) return;
    operatorStep(final);
    scheduler.after(20_000, () => operatorLoop(final, untilUs));
  };

  // ---------------------------------------------------------------- the run

  const converged = () => {
    if (!nodeNames.every((name) => linkUp(name))) return false;
    for (const volumeId of volumeIds) {
      if (workload.count(volumeId) > 0) return false;
      if (nodeNames.filter((name) => isPrimary(name, volumeId)).length !== 1) return false;
      for (const name of nodeNames) {
        const state = status(name, volumeId);
        if (!state || state.sync !== "synced" || state.dirtyBytes > 0 || state.writesInFlight > 0 || state.queued > 0 || state.dataState !== "consistent") return false;
      }
    }
    return true;
  };

  const describeState = () =>
    volumeIds
      .map((volumeId) =>
        nodeNames
          .map((name) => {
            const node = nodes.get(name)!;
            if (!node.alive) return `${name}: down`;
            const state = node.driver!.status(volumeId);
            const link = node.driver!.link();
            const pending = node.driver!.inFlight(volumeId);
            const work = pending ? JSON.stringify({ ...pending.io, ...pending.requests }) : "{}";
            return `${name}: ${isPrimary(name, volumeId) ? "primary" : "secondary"}, link ${link.state}${link.lastError ? ` (${link.lastError})` : ""}, ${state ? `${state.sync} (${state.reason}), data ${state.dataState}, dirty ${state.dirtyBytes} B, in flight ${state.writesInFlight}, queued ${state.queued}${state.resync ? `, resync ${state.resync.direction} ${state.resync.bitsRemaining}/${state.resync.bitsTotal}` : ""}, pending ${work}` : "no volume"}`;
          })
          .join("; "),
      )
      .map((line, index) => `v${volumeIds[index]}: ${line}`)
      .join(" | ");

  const guarded = (run: () => void): boolean => {
    try {
      run();
      return true;
    } catch (error) {
      if (error instanceof EventBudgetExceeded) {
        checkers.fail("liveness", "bounded work", `${error.message}: the nodes keep exchanging messages without making progress (${describeState()})`);
        return false;
      }
      const text = error instanceof Error ? `${error.name}: ${error.message}\n${(error.stack ?? "").split("\n").slice(1, 6).join("\n")}` : String(error);
      checkers.fail("crash", "no crash", text);
      return false;
    }
  };

  const waitConverged = (deadlineUs: number, what: string): boolean => {
    operatorLoop(true, deadlineUs);
    const ok = guarded(() => scheduler.runUntil(deadlineUs, () => converged() || checkers.failures.some((failure) => failure.class === "crash")));
    if (!ok) return false;
    if (!converged()) {
      checkers.fail("liveness", "converges", `${what}: not converged ${((deadlineUs - scheduler.now) / 1000).toFixed(0)} ms past the deadline: ${describeState()}`);
      return false;
    }
    return true;
  };

  const finalChecks = (when: string) => {
    checkers.checkEpochs();
    for (const volumeId of volumeIds) {
      const imageA = nodes.get("a")!.disks.get(volumeId)!.data.visible;
      const imageB = nodes.get("b")!.disks.get(volumeId)!.data.visible;
      checkers.checkIdentical(volumeId, ["a", imageA], ["b", imageB], when);
      const rotCopied = (block: number) => rotEver.get(volumeId)!.has(block);
      checkers.checkImage(volumeId, "a", imageA, when, rotCopied);
      checkers.checkImage(volumeId, "b", imageB, when, rotCopied);
    }
  };

  const flushPrimary = (done: () => void) => {
    let pending = volumeIds.length;
    for (const volumeId of volumeIds) {
      const name = nodeNames.find((candidate) => isPrimary(candidate, volumeId))!;
      const covered = oracle.flushSnapshot(volumeId, name);
      nodes.get(name)!.driver!.flush(volumeId, (error, info) => {
        if (!error) oracle.flushCompleted(volumeId, name, covered, scheduler.now, info?.mirrored === true);
        if (--pending === 0) done();
      });
    }
  };

  const run = () => {
    for (const node of nodes.values()) startNode(node);
    const chaosEnd = mix.chaosMs * 1000;
    workload.loop();
    // A crash of a resync source waits for its moment from the start (it comes rarely).
    if (mix.aimedCrashes && mix.crashes !== "none") aimAtSource(faultRandom.fork("source").range(20_000, 300_000));
    faultLoop(chaosEnd);
    operatorLoop(false, chaosEnd);
    for (let index = 0; index < mix.pauses; index++) scheduler.at(faultRandom.range(Math.round(chaosEnd / 4), chaosEnd), () => pause(chaosEnd));
    if (!guarded(() => scheduler.runUntil(chaosEnd, () => checkers.failures.some((failure) => failure.class === "crash")))) return;

    // Final phase: no more faults, no new IO; a single primary; everything must converge.
    note("final phase: faults stop, the operator restores one primary");
    faultsStopped = true;
    paused = false;
    workload.stopped = true;
    network.heal();
    network.calm();
    for (const node of nodes.values()) {
      for (const disks of node.disks.values()) {
        disks.data.errorsEnabled = false;
        disks.meta.errorsEnabled = false;
      }
      if (!node.alive) startNode(node);
    }
    const deadline = scheduler.now + (options.long ? 120_000_000 : 30_000_000);
    if (!waitConverged(deadline, "after the faults stopped")) return;
    if (volumeIds.some((volumeId) => rotted.get(volumeId)!.size > 0)) {
      // Let a verify the operator started during the chaos finish, then repair what rot is left.
      guarded(() => scheduler.runUntil(deadline, () => !verifyBusy));
      for (const volumeId of volumeIds) {
        // A verify that stops early (the link dropped under it, a switchover) is run again, as an
        // operator would, until one compares the whole volume.
        for (let attempt = 0; attempt < 5; attempt++) {
          let finished: boolean | undefined;
          startVerify(volumeId, true, (complete) => (finished = complete));
          guarded(() => scheduler.runUntil(deadline, () => finished !== undefined));
          if (finished) break;
          if (!waitConverged(deadline, "before verifying again")) return;
        }
      }
      if (!waitConverged(deadline, "after the final verify")) return;
      for (const volumeId of volumeIds) {
        const left = rotted.get(volumeId)!;
        // Rot later overwritten by writes or a resync is gone too; what is left must now be identical.
        left.clear();
      }
    }
    let flushed = false;
    flushPrimary(() => (flushed = true));
    guarded(() => scheduler.runUntil(deadline, () => flushed));
    finalChecks("after the run converged");
    if (checkers.failed || !mix.finalPowerLoss) return;
    note("final power loss on both nodes");
    for (const node of nodes.values()) crashNode(node, "final power loss");
    for (const node of nodes.values()) restartLater(node, 1000);
    if (!waitConverged(scheduler.now + (options.long ? 120_000_000 : 30_000_000), "after a final power loss")) return;
    finalChecks("after a power loss at the end");
  };
  run();
  stats.events = scheduler.executed;
  stats.simulatedMs = Math.round(scheduler.now / 1000);
  return { seed: options.seed, ok: !checkers.failed, failures: checkers.failures, mix, stats, timeline };
}

/** A dialer's Hello with a forged admission tag and a forged Auth, from a node that does not know the pairing secret. */
function intruderHandshake(random: SimRandom, clusterId: Uint8Array, claims: string): Uint8Array {
  // Built with the real codec so it passes framing and fails where it must: at the admission tag.
  const nonce = new Uint8Array(32);
  random.fill(nonce);
  const admission = new Uint8Array(32);
  random.fill(admission);
  const mac = new Uint8Array(32);
  random.fill(mac);
  return joinParts([
    ...encodeMessage({ type: MessageType.Hello, volumeId: 0, requestId: 0, versionMin: protocolVersionMin, versionMax: protocolVersionMax, clusterId, nodeId: claims, nonce, role: LinkRole.Dialer, flags: 0, admission }),
    ...encodeMessage({ type: MessageType.Auth, volumeId: 0, requestId: 0, mac }),
  ]);
}

export interface SeedRunOptions {
  from: number;
  count: number;
  long?: boolean;
  bugs?: ReplicaBugs;
  /** Stop at the first failing seed (to show a planted bug is caught). */
  stopAtFirstFailure?: boolean;
  /** Told of each failing seed as it happens (long runs print as they go). */
  onFailure?: (seed: number, failure: Failure) => void;
}

export interface SeedRunSummary {
  /** Each failing seed with its first failure. */
  failing: { seed: number; failure: Failure }[];
  ran: number;
  events: number;
  seconds: number;
}

/** Run seeds `from`..`from + count - 1`: what the command line and the CI test both do. */
export function runSeeds(options: SeedRunOptions): SeedRunSummary {
  const started = performance.now();
  const failing: SeedRunSummary["failing"] = [];
  let events = 0;
  let ran = 0;
  for (let seed = options.from; seed < options.from + options.count; seed++) {
    const result = runSimulation({ seed, long: options.long, bugs: options.bugs });
    ran++;
    events += result.stats.events ?? 0;
    if (!result.ok) {
      const failure = result.failures[0]!;
      failing.push({ seed, failure });
      options.onFailure?.(seed, failure);
      if (options.stopAtFirstFailure) break;
    }
  }
  return { failing, ran, events, seconds: (performance.now() - started) / 1000 };
}
