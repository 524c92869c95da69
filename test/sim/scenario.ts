// Scripted scenarios (CONVENTIONS.md §12): two real replica drivers (ReplicaDriver → NodeCore →
// VolumeCore) over the simulator's disks, network and scheduler, with fixed latencies and no random
// fault, so a test states a schedule — "hold b's replies, write block 3, fail b's next write,
// release" — and asserts what each node reported, what its clients were told and what each disk
// holds. The seeded simulation (simulation.ts) finds schedules; a schedule that matters becomes a
// named scenario here. Nothing in this file decides anything about replication: it only drives the
// cores and looks at what they did.
import type { BlockError } from "../../src/common/errors.ts";
import { StaticWriteAuthority } from "../../src/replica/authority.ts";
import { defaultReplicaConfig, type ReplicaConfig } from "../../src/replica/config.ts";
import { type CompletionInfo, ReplicaDriver } from "../../src/replica/driver.ts";
import type { Clock, PeerTransport, WriteAuthority } from "../../src/replica/io.ts";
import { DirtyBitmap } from "../../src/replica/bitmap.ts";
import { bitmapPageWrite, formatMetadata, metadataLayout, superblockWrite } from "../../src/replica/metadata-format.ts";
import type { ReplicaReport, VolumeStatus } from "../../src/replica/types.ts";
import { DecodeError, decodeMessage, Framer, type Message, MessageType } from "../../src/replica/wire.ts";
import { type DiskFaults, SimDisk } from "./disk.ts";
import { SimNetwork } from "./network.ts";
import { blockBytes, fillBlock, identifyBlock } from "./oracle.ts";
import { SimRandom } from "./random.ts";
import { Scheduler } from "./scheduler.ts";
import { DataState } from "../../src/replica/model.ts";
import { witnessRecordBytes } from "../../src/constants.ts";
import { defaultQuorumTiming, type QuorumTiming, timingToWitness } from "../../src/quorum/config.ts";
import { encodeFormattedArea, witnessLayout } from "../../src/quorum/format.ts";
import type { QuorumPersisted, QuorumReport } from "../../src/quorum/lease.ts";
import { QuorumWriteAuthority } from "../../src/node/replica/quorum-authority.ts";
import { SimWitness, type WitnessFaults } from "./quorum-witness.ts";
import type { QuorumBugs } from "../../src/quorum/lease.ts";

export type NodeName = "a" | "b";
export const nodeNames: readonly NodeName[] = ["a", "b"];
export const peerOf = (name: NodeName): NodeName => (name === "a" ? "b" : "a");

/**
 * How a node's replica of a volume starts: in sync with the other ("shared"), a new disk, a
 * generation of its own, the target of a resync from the shared generation that was interrupted
 * before it copied anything ("interruptedTarget": inconsistent, every region dirty), or any
 * metadata state spelled out (generations, data state, dirty blocks).
 */
export type FormatChoice =
  | "shared"
  | "new"
  | "interruptedTarget"
  | { generation: bigint }
  | { current: bigint; bitmapBase?: bigint; history?: bigint[]; dataState?: "new" | "consistent" | "inconsistent"; dirty?: number[] | "all" };

/** The generation "shared" replicas start from. */
export const sharedGeneration = 0x5ce7a7105ce7a710n;

export interface ScenarioOptions {
  volumes?: number[];
  blocks?: number;
  /** The primary of every volume (null: both secondary). */
  primary?: NodeName | null;
  /** The primary of each volume named here (overrides `primary` for it). */
  primaries?: Record<number, NodeName>;
  format?: Partial<Record<NodeName, FormatChoice>>;
  /** Blocks a node's disk holds before the run (data imported with the volume), as tagged writes. */
  preload?: Partial<Record<NodeName, number[]>>;
  config?: Partial<ReplicaConfig>;
  diskLatencyUs?: number;
  metadataLatencyUs?: number;
  networkLatencyUs?: number;
  diskFaults?: Partial<DiskFaults>;
  /** Start both nodes at once (default true). */
  start?: boolean;
  /**
   * Run the witness quorum as each node's write authority (src/node/replica/quorum-authority.ts)
   * over a simulated witness: link loss freezes, the lease decides, promotions move roles.
   */
  quorum?: { timing?: QuorumTiming; witnessLatencyUs?: number; witnessFaults?: Partial<WitnessFaults>; bugs?: QuorumBugs; seed?: number };
  /** Each node's clock rate (1: real time; 1.01: 1% fast), for drift within the quorum's bound. */
  clockRates?: Partial<Record<NodeName, number>>;
}

/** A request a scenario made; `done` once the node answered. */
export interface Op {
  what: string;
  done: boolean;
  error: BlockError | null | undefined;
  info: CompletionInfo | undefined;
  result: unknown;
  /** The tag a write wrote (identifyBlock names it when read back). */
  tag: number;
  /** What a read returned. */
  data: Uint8Array | undefined;
}

export interface SeenMessage {
  atUs: number;
  from: NodeName;
  connection: number;
  message: Message;
}

interface ScenarioNode {
  name: NodeName;
  alive: boolean;
  incarnation: number;
  driver: ReplicaDriver | undefined;
  authority: StaticWriteAuthority;
  disks: Map<number, { data: SimDisk; meta: SimDisk }>;
  open: Set<number>;
  /** Under the quorum: the authority of the running incarnation, and what survives a crash. */
  quorum: QuorumWriteAuthority | undefined;
  quorumPersisted: QuorumPersisted | undefined;
  roles: Map<number, boolean>;
  /** A stopped process (SIGSTOP, a long GC): it runs nothing; what reaches it waits in `deferred`. */
  paused: boolean;
  deferred: (() => void)[];
  /** Under the quorum: when the running incarnation last fed its watchdog, on its own clock (ms). */
  watchdogFedMs: number;
}

const initialGeneration = sharedGeneration;

export class Scenario {
  readonly scheduler = new Scheduler(5_000_000);
  readonly network: SimNetwork;
  readonly config: ReplicaConfig;
  readonly volumeIds: number[];
  readonly blocks: number;
  readonly reports: { atUs: number; node: NodeName; report: ReplicaReport }[] = [];
  readonly messages: SeenMessage[] = [];
  private readonly nodes = new Map<NodeName, ScenarioNode>();
  private readonly random = new SimRandom(1);
  private readonly framers = new Map<string, Framer>();
  private nextTag = 1;
  /** The shared witness when the scenario runs the quorum. */
  readonly witness: SimWitness | undefined;
  readonly quorumTiming: QuorumTiming | undefined;
  readonly quorumReports: { atUs: number; node: NodeName; report: QuorumReport }[] = [];
  /** Timer callbacks each node's drivers (replica and quorum) have run: how often the process woke for time. */
  readonly timerCallbacks: Record<NodeName, number> = { a: 0, b: 0 };
  private readonly quorumBugs: QuorumBugs | undefined;
  private readonly clockRates: Partial<Record<NodeName, number>>;

  constructor(options: ScenarioOptions = {}) {
    this.volumeIds = options.volumes ?? [1];
    this.quorumBugs = options.quorum?.bugs;
    this.clockRates = options.clockRates ?? {};
    this.blocks = options.blocks ?? 16;
    this.config = defaultReplicaConfig({
      tickMs: 10,
      keepaliveIntervalTicks: 5,
      linkTimeoutTicks: 15,
      handshakeTimeoutTicks: 50,
      reconnectDelayTicksMin: 2,
      reconnectDelayTicksMax: 20,
      activityLogExtentBytes: 4 * blockBytes,
      activityLogExtentsMax: 4,
      resyncChunkBytesMax: 2 * blockBytes,
      resyncWindowChunks: 2,
      resyncRateBytesPerTick: 1 << 20,
      resyncCheckpointChunks: 2,
      resyncRetryDelayTicks: 5,
      verifyExtentBytes: blockBytes,
      transferLogGranulesMax: 64,
      barrierIntervalTicks: 10,
      bitmapWritebackIntervalTicks: 30,
      rateWindowTicks: 100,
      frameBytesMax: 1 << 20,
      ...(options.quorum ? { freezeOnLinkLoss: true } : {}),
      ...options.config,
    });
    if (options.quorum) {
      const timing = options.quorum.timing ?? defaultQuorumTiming;
      this.quorumTiming = timing;
      const area = encodeFormattedArea(new Uint8Array(16).fill(7), { recordBytes: witnessRecordBytes, areaBytes: 128 * 1024, formattedAtMs: 0, timing: timingToWitness(timing) }).slice(0, witnessLayout.sectors * witnessRecordBytes);
      const latencyUs = options.quorum.witnessLatencyUs ?? 500;
      this.witness = new SimWitness(area, this.scheduler, this.random.fork("witness"), { latencyUs: [latencyUs, latencyUs], errorProbability: 0, tearProbability: 0, ...options.quorum.witnessFaults }, (node, incarnation, run) => {
        this.onNode(this.nodes.get(nodeNames[node]!)!, incarnation, run);
      });
    }
    const latency = options.networkLatencyUs ?? 50;
    this.network = new SimNetwork(
      this.scheduler,
      this.random.fork("network"),
      { latencyUsMin: latency, latencyUsMax: latency, chunkBytesMax: 1 << 24, corruptProbability: 0, duplicateProbability: 0, resetOnCrashProbability: 1 },
      ["a", "b"],
    );
    this.network.tap = (from, connection, bytes) => this.observe(from as NodeName, connection, bytes);
    const sizeBytes = this.blocks * blockBytes;
    const layout = metadataLayout(sizeBytes, blockBytes);
    const primary = options.primary === undefined ? "a" : options.primary;
    for (const name of nodeNames) {
      const disks = new Map<number, { data: SimDisk; meta: SimDisk }>();
      for (const volumeId of this.volumeIds) {
        const faults: DiskFaults = {
          latencyUsMin: options.diskLatencyUs ?? 100,
          latencyUsMax: options.diskLatencyUs ?? 100,
          readErrorProbability: 0,
          writeErrorProbability: 0,
          flushErrorProbability: 0,
          tearBytes: blockBytes,
          // A crash loses every write that was not made durable: deterministic, and the worst case.
          crashKeepProbability: 0,
          crashTearProbability: 0,
          ...options.diskFaults,
        };
        const data = new SimDisk(`${name}.v${volumeId}.data`, sizeBytes, this.scheduler, this.random.fork(`${name}${volumeId}`), faults);
        const metaLatency = options.metadataLatencyUs ?? 200;
        const meta = new SimDisk(`${name}.v${volumeId}.meta`, layout.totalBytes, this.scheduler, this.random.fork(`${name}${volumeId}m`), { ...faults, latencyUsMin: metaLatency, latencyUsMax: metaLatency, tearBytes: 512 });
        const choice = options.format?.[name] ?? "shared";
        const spelled = typeof choice === "object" && "current" in choice ? choice : choice === "interruptedTarget" ? { current: initialGeneration, dataState: "inconsistent" as const, dirty: "all" as const } : undefined;
        const generation = choice === "shared" || choice === "interruptedTarget" ? initialGeneration : choice === "new" ? undefined : "generation" in choice ? choice.generation : choice.current || undefined;
        const writes = formatMetadata({ volumeId, sizeBytes, granuleBytes: blockBytes, activityLogExtentBytes: this.config.activityLogExtentBytes, initialGeneration: generation });
        if (spelled) {
          const bitmap = new DirtyBitmap(layout.bitCount);
          if (spelled.dirty === "all") bitmap.setAll();
          else for (const block of spelled.dirty ?? []) bitmap.setRange(block, block + 1);
          for (let page = 0; page < layout.pageCount; page++) writes.push(bitmapPageWrite(layout, bitmap, page));
          const dataState = spelled.dataState === "new" ? DataState.New : spelled.dataState === "inconsistent" ? DataState.Inconsistent : DataState.Consistent;
          writes.push(
            superblockWrite({
              sequence: 2,
              volumeId,
              sizeBytes,
              granuleBytes: blockBytes,
              activityLogExtentBytes: this.config.activityLogExtentBytes,
              dataState,
              cleanShutdown: true,
              generations: { current: spelled.current, bitmapBase: spelled.bitmapBase ?? 0n, history: spelled.history ?? [] },
              resync: { active: dataState === DataState.Inconsistent, target: dataState === DataState.Inconsistent, bitsTotal: bitmap.setCount, bitsDone: 0 },
              rewritePending: false,
            }),
          );
        }
        for (const write of writes) {
          meta.visible.set(write.bytes, write.offset);
          meta.durable.set(write.bytes, write.offset);
        }
        for (const block of options.preload?.[name] ?? []) {
          const bytes = new Uint8Array(blockBytes);
          fillBlock(bytes, this.nextTag++, volumeId, block);
          data.visible.set(bytes, block * blockBytes);
          data.durable.set(bytes, block * blockBytes);
        }
        disks.set(volumeId, { data, meta });
      }
      const primaryOf = (id: number) => (options.primaries?.[id] ?? primary) === name;
      const authority = new StaticWriteAuthority(this.volumeIds.map((id) => [id, { primary: primaryOf(id), epoch: 1 }]));
      this.nodes.set(name, { name, alive: false, incarnation: 0, driver: undefined, authority, disks, open: new Set(), quorum: undefined, quorumPersisted: undefined, roles: new Map(this.volumeIds.map((id) => [id, primaryOf(id)])), paused: false, deferred: [], watchdogFedMs: 0 });
    }
    if (options.start !== false) for (const name of nodeNames) this.start(name);
  }

  get nowUs(): number {
    return this.scheduler.now;
  }

  private node(name: NodeName): ScenarioNode {
    return this.nodes.get(name)!;
  }

  private observe(from: NodeName, connection: number, bytes: Uint8Array): void {
    const key = `${from}:${connection}`;
    let framer = this.framers.get(key);
    if (!framer) {
      framer = new Framer(1 << 24);
      this.framers.set(key, framer);
    }
    framer.push(bytes);
    for (;;) {
      let frame;
      try {
        frame = framer.next();
      } catch (error) {
        if (error instanceof DecodeError) return;
        throw error;
      }
      if (!frame) return;
      try {
        this.messages.push({ atUs: this.nowUs, from, connection, message: decodeMessage(frame) });
      } catch (error) {
        if (!(error instanceof DecodeError)) throw error;
      }
    }
  }

  // ---------------------------------------------------------------- nodes

  /** Runs `run` on a node's incarnation: at once, deferred while the node is paused, dropped once it is gone. */
  private onNode(node: ScenarioNode, incarnation: number, run: () => void): void {
    if (!node.alive || node.incarnation !== incarnation) return;
    if (node.paused) node.deferred.push(run);
    else run();
  }

  /** `target` with every callback it is handed delivered through onNode (disk completions, link events). */
  private gated<T extends object>(node: ScenarioNode, incarnation: number, target: T): T {
    const wrap = (value: unknown) => (typeof value === "function" ? (...args: unknown[]) => this.onNode(node, incarnation, () => value(...args)) : value);
    return new Proxy(target, {
      get: (object, property) => {
        const member = Reflect.get(object, property, object);
        if (typeof member !== "function") return member;
        return (...args: unknown[]) => member.apply(object, args.map(wrap));
      },
    });
  }

  /** A client request reaching a node: as the daemon does, the lease catches up before it is admitted; a paused node takes it when it resumes. */
  private submit(name: NodeName, run: (driver: ReplicaDriver) => void): void {
    const node = this.node(name);
    const driver = node.driver!;
    this.onNode(node, node.incarnation, () => {
      node.quorum?.catchUp();
      run(driver);
    });
  }

  /** Start a node's process and open its volumes (all, or those named). */
  start(name: NodeName, volumes: number[] = this.volumeIds): void {
    const node = this.node(name);
    if (node.alive) return;
    node.alive = true;
    node.paused = false;
    node.deferred = [];
    node.incarnation++;
    const incarnation = node.incarnation;
    const scheduler = this.scheduler;
    const rate = this.clockRates[name] ?? 1;
    const timerCallbacks = this.timerCallbacks;
    const timer = (counted: boolean) => (delayMs: number, callback: () => void) => {
      // A process's timer fires at once for a delay it cannot hold (setTimeout: Infinity → 1 ms).
      if (!Number.isFinite(delayMs) || delayMs > 2 ** 31 - 1) throw new Error(`a timer of ${delayMs} ms`);
      let cancelled = false;
      const run = () => {
        if (cancelled) return;
        if (counted) timerCallbacks[name]++;
        callback();
      };
      scheduler.after((delayMs * 1000) / rate, () => {
        if (cancelled || node.incarnation !== incarnation || !node.alive) return;
        // A stopped process gets no timer callbacks; it runs the late one when it resumes.
        if (!node.paused) run();
        else node.deferred.push(run);
      });
      return { cancel: () => (cancelled = true) };
    };
    const clock: Clock = { now: () => this.localMs(name), after: timer(true) };
    const quorum = this.witness ? this.startQuorum(node, incarnation, clock) : undefined;
    const source: WriteAuthority = quorum ?? node.authority;
    const authority: WriteAuthority = {
      grant: (volumeId) => source.grant(volumeId),
      subscribe: (listener) =>
        source.subscribe((volumeId) => {
          if (node.incarnation === incarnation && node.alive) listener(volumeId);
        }),
      linkChanged: (up) => source.linkChanged(up),
    };
    const driver = new ReplicaDriver({
      identity: { nodeId: name, peerNodeId: peerOf(name), clusterId: new Uint8Array(16).fill(7), secret: new TextEncoder().encode("scenario secret"), connect: name === "a" ? "dial" : "accept" },
      transport: this.gatedTransport(node, incarnation),
      clock,
      random: this.random.fork(`${name}-${incarnation}`),
      authority,
      config: this.config,
      strictQuietTicks: true,
      observer: {
        report: (report) => {
          if (node.incarnation !== incarnation) return;
          this.reports.push({ atUs: this.nowUs, node: name, report });
          if (quorum) reportSynced();
        },
      },
      onQuorumMessage: (payload) => {
        if (node.incarnation === incarnation && node.alive) quorum?.peerMessage(payload);
      },
    });
    const reportSynced = () => quorum?.synced(driver.link().state === "up" && [...node.open].every((id) => driver.status(id)?.sync === "synced"));
    if (quorum) {
      // The daemon's own poll (not the drivers' timers).
      const poll = timer(false);
      const every = () => {
        reportSynced();
        poll(100, every);
      };
      poll(100, every);
    }
    node.driver = driver;
    node.open.clear();
    for (const volumeId of volumes) this.openVolume(name, volumeId);
    driver.start();
    quorum?.start();
  }

  private gatedTransport(node: ScenarioNode, incarnation: number): PeerTransport {
    const transport = this.network.endpoint(node.name, incarnation);
    const on = (run: () => void) => this.onNode(node, incarnation, run);
    return {
      ...transport,
      attach: (handler) =>
        transport.attach({
          connected: (connection, dialled, remote) => on(() => handler.connected(connection, dialled, remote)),
          dialFailed: (reason) => on(() => handler.dialFailed(reason)),
          data: (connection, bytes) => on(() => handler.data(connection, bytes)),
          closed: (connection, reason) => on(() => handler.closed(connection, reason)),
        }),
    };
  }

  private startQuorum(node: ScenarioNode, incarnation: number, clock: Clock): QuorumWriteAuthority {
    const name = node.name;
    const index = nodeNames.indexOf(name) as 0 | 1;
    const live = () => node.alive && node.incarnation === incarnation;
    // The daemon arms its watchdog as it starts, before the quorum runs.
    node.watchdogFedMs = this.localMs(name);
    const quorum = new QuorumWriteAuthority({
      me: index,
      names: ["a", "b"],
      clusterId: new Uint8Array(16).fill(7),
      timing: this.quorumTiming!,
      disk: this.witness!.endpoint(index, incarnation),
      clock,
      strictQuietTicks: true,
      bugs: this.quorumBugs,
      random: this.random.fork(`${name}-quorum-${incarnation}`),
      persisted: node.quorumPersisted,
      host: {
        sendPeer: (payload) => {
          if (live()) node.driver?.sendQuorum(payload);
        },
        dropLink: (reason) => {
          if (live()) node.driver?.dropLink(reason);
        },
        roleChanged: (volumeId, primary) => {
          if (live()) node.roles.set(volumeId, primary);
        },
        persist: (state) => {
          if (live()) node.quorumPersisted = state;
        },
        feedWatchdog: () => {
          if (live()) node.watchdogFedMs = this.localMs(name);
        },
        report: (report) => {
          if (!live()) return;
          this.quorumReports.push({ atUs: this.nowUs, node: name, report });
          // As the daemon does: losing the lease gives up the role of every volume, open or not.
          if (report.kind === "lost") for (const volumeId of node.roles.keys()) node.roles.set(volumeId, false);
        },
      },
    });
    node.quorum = quorum;
    return quorum;
  }

  /** A node's own clock, in ms (it runs at its clock rate). */
  localMs(name: NodeName): number {
    return (this.scheduler.now / 1000) * (this.clockRates[name] ?? 1);
  }

  /** How long a running node's watchdog has gone unfed, on the node's clock (scenarios with `quorum`). */
  watchdogUnfedMs(name: NodeName): number {
    return this.localMs(name) - this.node(name).watchdogFedMs;
  }

  /** The quorum authority of a running node (scenarios with `quorum`). */
  quorumOf(name: NodeName): QuorumWriteAuthority {
    const quorum = this.node(name).quorum;
    if (!quorum || !this.node(name).alive) throw new Error(`${name} runs no quorum now`);
    return quorum;
  }

  /** This node's role for a volume as last persisted (under the quorum). */
  roleOf(name: NodeName, volumeId = this.volumeIds[0]!): boolean | undefined {
    return this.node(name).roles.get(volumeId);
  }

  /**
   * Stop a node's process (SIGSTOP, a long GC pause): no ticks, no messages, no disk or witness
   * completions, no client requests are processed until `resume`; they wait, as in a stopped
   * process's sockets and completion queues. Its peer sees nothing but silence.
   */
  pause(name: NodeName): void {
    const node = this.node(name);
    if (node.alive) node.paused = true;
  }

  /** Continue a paused node: its clock has advanced, so the lease catches up first (as the quorum driver does before any event), then what arrived meanwhile runs in order. */
  resume(name: NodeName): void {
    const node = this.node(name);
    if (!node.alive || !node.paused) return;
    node.paused = false;
    const incarnation = node.incarnation;
    node.quorum?.catchUp();
    for (const run of node.deferred.splice(0)) {
      if (!node.alive || node.incarnation !== incarnation) break;
      run();
    }
  }

  paused(name: NodeName): boolean {
    return this.node(name).paused;
  }

  /** Power loss of one node: unflushed writes may vanish (the disks' crash rules), nothing pending completes. */
  /** A power loss of `name`: its disks keep only what was durable. */
  crash(name: NodeName): void {
    this.die(name, false);
  }

  /** The daemon of `name` is killed (kill -9): the machine's page cache keeps what reached it. */
  kill(name: NodeName): void {
    this.die(name, true);
  }

  private die(name: NodeName, kill: boolean): void {
    const node = this.node(name);
    if (!node.alive) return;
    node.alive = false;
    node.paused = false;
    node.deferred = [];
    node.driver = undefined;
    node.open.clear();
    node.quorum?.stop();
    node.quorum = undefined;
    this.witness?.crash(nodeNames.indexOf(name));
    this.network.crash(name);
    for (const disks of node.disks.values()) {
      disks.data.die(kill);
      disks.meta.die(kill);
    }
  }

  /** A daemon's graceful stop: close every open volume, then say goodbye to the peer and stop. */
  shutdown(name: NodeName): Op {
    const op = this.op(`shutdown ${name}`);
    const node = this.node(name);
    const driver = node.driver!;
    const volumes = [...node.open];
    let pending = volumes.length;
    const errors: string[] = [];
    const finish = () => {
      driver.stop();
      node.alive = false;
      node.driver = undefined;
      this.network.crash(name); // the process is gone: nothing more reaches it
      op.done = true;
      op.error = errors.length > 0 ? ({ code: "EIO", message: errors.join("; ") } as BlockError) : null;
    };
    if (pending === 0) finish();
    for (const volumeId of volumes) {
      driver.closeVolume(volumeId, (error) => {
        node.open.delete(volumeId);
        if (error) errors.push(`volume ${volumeId}: ${error.message}`);
        if (--pending === 0) finish();
      });
    }
    return op;
  }

  openVolume(name: NodeName, volumeId: number): Op {
    const op = this.op(`open v${volumeId} on ${name}`);
    const node = this.node(name);
    const disks = node.disks.get(volumeId)!;
    // Under the quorum, the volume's persisted role goes to the authority first (as the daemon does).
    node.quorum?.setVolume(volumeId, node.roles.get(volumeId) ?? false);
    const incarnation = node.incarnation;
    this.submit(name, (driver) =>
      driver.openVolume(volumeId, this.gated(node, incarnation, disks.data), this.gated(node, incarnation, disks.meta.asMetadataStore()), (error) => {
        if (!error) node.open.add(volumeId);
        this.settle(op, error);
      }),
    );
    return op;
  }

  closeVolume(name: NodeName, volumeId: number): Op {
    const op = this.op(`close v${volumeId} on ${name}`);
    const node = this.node(name);
    this.submit(name, (driver) =>
      driver.closeVolume(volumeId, (error) => {
        node.open.delete(volumeId);
        this.settle(op, error);
      }),
    );
    return op;
  }

  setRole(name: NodeName, volumeId: number, primary: boolean, epoch?: number): void {
    const authority = this.node(name).authority;
    authority.setRole(volumeId, { primary, epoch: epoch ?? (authority.role(volumeId)?.epoch ?? 1) + (primary ? 1 : 0) });
  }

  alive(name: NodeName): boolean {
    return this.node(name).alive;
  }

  disk(name: NodeName, volumeId = this.volumeIds[0]!): SimDisk {
    return this.node(name).disks.get(volumeId)!.data;
  }

  metadataDisk(name: NodeName, volumeId = this.volumeIds[0]!): SimDisk {
    return this.node(name).disks.get(volumeId)!.meta;
  }

  /** A volume's IO and peer requests in flight on a node, as its core counts them, by kind. */
  inFlight(name: NodeName, volumeId = this.volumeIds[0]!): { io: Record<string, number>; requests: Record<string, number> } | undefined {
    return this.node(name).driver?.inFlight(volumeId);
  }

  status(name: NodeName, volumeId = this.volumeIds[0]!): VolumeStatus | undefined {
    const node = this.node(name);
    return node.alive ? node.driver?.status(volumeId) : undefined;
  }

  linkUp(name: NodeName): boolean {
    const node = this.node(name);
    return node.alive && node.driver?.link().state === "up";
  }

  // ---------------------------------------------------------------- client IO

  private op(what: string): Op {
    return { what, done: false, error: undefined, info: undefined, result: undefined, tag: 0, data: undefined };
  }

  private settle(op: Op, error: BlockError | null, info?: CompletionInfo, result?: unknown): void {
    op.done = true;
    op.error = error;
    op.info = info;
    op.result = result;
  }

  /** Write `count` tagged blocks from `block`; the op's tag names what was written. */
  write(name: NodeName, block: number, options: { count?: number; fua?: boolean; volumeId?: number } = {}): Op {
    const volumeId = options.volumeId ?? this.volumeIds[0]!;
    const count = options.count ?? 1;
    const op = this.op(`write block ${block}${count > 1 ? `+${count}` : ""} on ${name}`);
    op.tag = this.nextTag++;
    const data = this.tagged(op.tag, volumeId, block, count);
    this.submit(name, (driver) => driver.write(volumeId, block * blockBytes, data, options.fua === true, (error, info) => this.settle(op, error, info)));
    return op;
  }

  /** The bytes of `count` blocks written by tag `tag`. */
  tagged(tag: number, volumeId: number, block: number, count = 1): Uint8Array {
    const data = new Uint8Array(count * blockBytes);
    for (let index = 0; index < count; index++) fillBlock(data.subarray(index * blockBytes, (index + 1) * blockBytes), tag, volumeId, block + index);
    return data;
  }

  /**
   * A write whose buffer the test keeps (to change it while the write is in flight, as a guest may);
   * with `stable` the caller promises never to change it, as the NBD server does (no admission copy).
   */
  writeBuffer(name: NodeName, block: number, data: Uint8Array, options: { volumeId?: number; stable?: boolean } = {}): Op {
    const volumeId = options.volumeId ?? this.volumeIds[0]!;
    const op = this.op(`write block ${block} on ${name}`);
    this.submit(name, (driver) => driver.write(volumeId, block * blockBytes, data, false, (error, info) => this.settle(op, error, info), options.stable === true));
    return op;
  }

  read(name: NodeName, block: number, options: { count?: number; volumeId?: number } = {}): Op {
    const volumeId = options.volumeId ?? this.volumeIds[0]!;
    const op = this.op(`read block ${block} on ${name}`);
    const target = new Uint8Array((options.count ?? 1) * blockBytes);
    op.data = target;
    this.submit(name, (driver) => driver.read(volumeId, block * blockBytes, target, (error, info) => this.settle(op, error, info)));
    return op;
  }

  flush(name: NodeName, volumeId = this.volumeIds[0]!): Op {
    const op = this.op(`flush on ${name}`);
    this.submit(name, (driver) => driver.flush(volumeId, (error, info) => this.settle(op, error, info)));
    return op;
  }

  trim(name: NodeName, block: number, options: { count?: number; fua?: boolean; volumeId?: number } = {}): Op {
    const volumeId = options.volumeId ?? this.volumeIds[0]!;
    const op = this.op(`trim block ${block} on ${name}`);
    this.submit(name, (driver) => driver.trim(volumeId, block * blockBytes, (options.count ?? 1) * blockBytes, options.fua === true, (error, info) => this.settle(op, error, info)));
    return op;
  }

  zero(name: NodeName, block: number, options: { count?: number; fua?: boolean; volumeId?: number } = {}): Op {
    const volumeId = options.volumeId ?? this.volumeIds[0]!;
    const op = this.op(`zero block ${block} on ${name}`);
    this.submit(name, (driver) => driver.zero(volumeId, block * blockBytes, (options.count ?? 1) * blockBytes, { fua: options.fua === true, noHole: false }, (error, info) => this.settle(op, error, info)));
    return op;
  }

  verify(name: NodeName, repair: boolean, volumeId = this.volumeIds[0]!): Op {
    const op = this.op(`verify on ${name}`);
    this.submit(name, (driver) => driver.verify(volumeId, repair, (error, result) => this.settle(op, error, undefined, result)));
    return op;
  }

  resolve(name: NodeName, keep: "local" | "peer", volumeId = this.volumeIds[0]!): Op {
    const op = this.op(`resolve on ${name} keeping ${keep}`);
    this.submit(name, (driver) => driver.resolveSplitBrain(volumeId, keep, (error) => this.settle(op, error)));
    return op;
  }

  // ---------------------------------------------------------------- time

  /** Run until `check()` holds; fail with the state of both nodes if it does not within `limitMs`. */
  runUntil(check: () => boolean, what: string, limitMs = 5000): void {
    if (check()) return;
    this.scheduler.runUntil(this.nowUs + limitMs * 1000, check);
    if (!check()) throw new Error(`${what}: not reached within ${limitMs} ms of simulated time (${this.describe()})`);
  }

  /** Let `ms` of simulated time pass. */
  runFor(ms: number): void {
    this.scheduler.runUntil(this.nowUs + ms * 1000);
  }

  /** Run until the op completes. */
  complete(op: Op, limitMs = 5000): Op {
    this.runUntil(() => op.done, op.what, limitMs);
    return op;
  }

  /** Both nodes connected, the volume synced on both with nothing dirty, in flight or resyncing. */
  isSynced(volumeId = this.volumeIds[0]!): boolean {
    return nodeNames.every((name) => {
      const state = this.status(name, volumeId);
      return this.linkUp(name) && state !== undefined && state.sync === "synced" && state.dirtyBytes === 0 && state.writesInFlight === 0 && state.resync === undefined;
    });
  }

  waitSynced(volumeId = this.volumeIds[0]!, limitMs = 5000): void {
    this.runUntil(() => this.isSynced(volumeId), `v${volumeId} synced on both nodes`, limitMs);
  }

  /** Run until `from` has sent a message matching `match` (counting only messages sent from now on). */
  waitMessage(from: NodeName, type: MessageType, what: string, match: (message: Message) => boolean = () => true, limitMs = 5000): Message {
    const seen = this.messages.length;
    const find = () => this.messages.slice(seen).find((entry) => entry.from === from && entry.message.type === type && match(entry.message));
    this.runUntil(() => find() !== undefined, what, limitMs);
    return find()!.message;
  }

  sent(from: NodeName, type: MessageType, sinceUs = 0): Message[] {
    return this.messages.filter((entry) => entry.from === from && entry.message.type === type && entry.atUs >= sinceUs).map((entry) => entry.message);
  }

  reportsOf(name: NodeName, kind: ReplicaReport["kind"], sinceUs = 0): ReplicaReport[] {
    return this.reports.filter((entry) => entry.node === name && entry.report.kind === kind && entry.atUs >= sinceUs).map((entry) => entry.report);
  }

  // ---------------------------------------------------------------- disks

  /** Which write a block holds on a node's disk: its tag, 0 for zeroes, or "corrupt". */
  blockValue(name: NodeName, block: number, options: { volumeId?: number; image?: "visible" | "durable" } = {}): number | "corrupt" {
    const volumeId = options.volumeId ?? this.volumeIds[0]!;
    const disk = this.disk(name, volumeId);
    const image = options.image === "durable" ? disk.durable : disk.visible;
    const value = identifyBlock(image.subarray(block * blockBytes, (block + 1) * blockBytes), volumeId, block);
    return value.kind === "zero" ? 0 : value.kind === "write" ? value.id : "corrupt";
  }

  /** Blocks whose bytes differ between the two replicas' visible images. */
  differingBlocks(volumeId = this.volumeIds[0]!, image: "visible" | "durable" = "visible"): number[] {
    const first = image === "visible" ? this.disk("a", volumeId).visible : this.disk("a", volumeId).durable;
    const second = image === "visible" ? this.disk("b", volumeId).visible : this.disk("b", volumeId).durable;
    const differing: number[] = [];
    for (let block = 0; block < this.blocks; block++) {
      const start = block * blockBytes;
      for (let index = start; index < start + blockBytes; index++) {
        if (first[index] !== second[index]) {
          differing.push(block);
          break;
        }
      }
    }
    return differing;
  }

  describe(): string {
    return nodeNames
      .map((name) => {
        const node = this.node(name);
        if (!node.alive) return `${name}: down`;
        const link = node.driver!.link();
        const volumes = this.volumeIds.map((volumeId) => {
          const state = node.driver!.status(volumeId);
          if (!state) return `v${volumeId} closed`;
          return `v${volumeId} ${state.role} ${state.sync} (${state.reason}) data ${state.dataState} dirty ${state.dirtyBytes} B in flight ${state.writesInFlight} queued ${state.queued}${state.resync ? ` resync ${state.resync.direction} ${state.resync.bitsRemaining}/${state.resync.bitsTotal}` : ""}`;
        });
        return `${name}: link ${link.state}; ${volumes.join("; ")}`;
      })
      .join(" | ");
  }
}
