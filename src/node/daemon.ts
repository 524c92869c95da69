// The node daemon (`tandem node run`): owns the data directory, opens the state database and every
// volume, serves NBD on the node's unix socket (and TCP when configured), brings back the vhost-user
// exports recorded in the state, and answers the control API. Start-up order is the reverse of
// shutdown: state → volumes → exports → control API; on SIGTERM the control API stops first, the
// exports drain (in-flight requests finish and are answered), then the volumes close (their gates
// wait for IO below them), then the state closes. A second daemon on the same data directory is
// refused (node-lock.ts: an flock on node.lock, which dies with its process).
import fs from "node:fs";
import path from "node:path";
import { TandemError } from "../common/errors.ts";
import { tandemVersion } from "../common/version.ts";
import type { Logger } from "../common/log.ts";
import { parseSize } from "../common/size.ts";
import { shutdownDrainTimeoutMs, vhostQueuesMax } from "../constants.ts";
import type { NodeConfig } from "./config.ts";
import { formatHostPort } from "./config.ts";
import { type ControlRequest, type ControlServer, type Route, startControlServer } from "./control/server.ts";
import { assessStatus, type ExportReport, type LinkReport, type QuorumReport, type StatusReport, statusSchemaVersion } from "./control/status.ts";
import { CopyOuts } from "./copy-out.ts";
import { startNbdServer, type NbdServer } from "./export/nbd/server.ts";
import type { ExportSessionInfo } from "./export/types.ts";
import { startVhostExport, type VhostExport, vhostSocketPathFor } from "./export/vhost/server.ts";
import { lockDataDir } from "./node-lock.ts";
import { PairedVolumes, type ReplicationService } from "./pairing.ts";
import { type EventRecord, NodeState, type VhostExportRecord } from "./state.ts";
import { VolumeManager } from "./volumes.ts";
import { WitnessService } from "./witness.ts";
import type { QuorumListener } from "./replica/replication.ts";
import type { QuorumWriteAuthority as QuorumNodeAuthority } from "./replica/quorum-authority.ts";
import { quorumEvent } from "./quorum-events.ts";
import { Failover } from "./failover.ts";
import { Hooks } from "./hooks.ts";
import { type FreezeMode, freezeModes } from "./block/gate.ts";

/** Makes the node's replication service when the config names a peer (the daemon's only link to src/node/replica). */
export type ReplicationFactory = (
  config: NodeConfig,
  log: Logger,
  dependencies: { state: NodeState; witness: WitnessService | undefined },
) => Promise<
  ReplicationService & {
    start(): void;
    stop(): Promise<void>;
    onEvent(listener: (event: { level: EventRecord["level"]; kind: string; message: string }) => void): void;
    /** The witness quorum, when the config names a witness (absent: static roles). */
    quorum?: QuorumNodeAuthority;
    onQuorum?(listener: QuorumListener): void;
    /** A switchover moved this node's role for a volume. */
    setRole?(volumeId: number, primary: boolean, epoch: number): void;
  }
>;

export { tandemVersion };

export interface RunningNode {
  readonly config: NodeConfig;
  readonly volumes: VolumeManager;
  /** Resolves when the node has stopped (after `stop`, or a fatal error); `clean`: every step of the shutdown succeeded. */
  readonly stopped: Promise<{ clean: boolean }>;
  stop(reason: string): Promise<void>;
}

function stringField(body: Record<string, unknown>, field: string, required: true): string;
function stringField(body: Record<string, unknown>, field: string, required: false): string | undefined;
function stringField(body: Record<string, unknown>, field: string, required: boolean): string | undefined {
  const value = body[field];
  if (value === undefined || value === null) {
    if (required) throw new TandemError("invalid_argument", `${field} is required`);
    return undefined;
  }
  if (typeof value !== "string" || value === "") throw new TandemError("invalid_argument", `${field} must be a non-empty string`);
  return value;
}

/** Sizes arrive as a byte count or as text like "10G". */
function sizeField(body: Record<string, unknown>, field: string): number | undefined {
  const value = body[field];
  if (value === undefined || value === null) return undefined;
  if (typeof value === "number") {
    if (!Number.isSafeInteger(value) || value <= 0) throw new TandemError("invalid_argument", `${field} must be a positive whole number of bytes`);
    return value;
  }
  if (typeof value === "string") {
    try {
      return parseSize(value);
    } catch (error) {
      throw new TandemError("invalid_argument", `${field}: ${(error as Error).message}`);
    }
  }
  throw new TandemError("invalid_argument", `${field} must be a size`);
}

function booleanField(body: Record<string, unknown>, field: string): boolean {
  const value = body[field];
  if (value === undefined || value === null) return false;
  if (typeof value !== "boolean") throw new TandemError("invalid_argument", `${field} must be true or false`);
  return value;
}

/** The vhost-user exports of this node: started from the state at boot, added and removed by the API. */
class VhostExports {
  private readonly running = new Map<string, VhostExport>();

  constructor(
    private readonly config: NodeConfig,
    private readonly state: NodeState,
    private readonly volumes: VolumeManager,
    private readonly log: Logger,
  ) {}

  async startRecorded(): Promise<void> {
    for (const record of this.state.vhostExports()) {
      try {
        await this.start(record);
      } catch (error) {
        this.log.error("vhost export could not be restored", { volume: record.volume, socket: record.socketPath, error });
        this.state.addEvent("error", "export-failed", record.volume, `vhost export on ${record.socketPath} could not start: ${(error as Error).message}`);
      }
    }
  }

  private async start(record: VhostExportRecord): Promise<VhostExport> {
    const directory = path.dirname(record.socketPath);
    if (!fs.existsSync(directory)) {
      fs.mkdirSync(directory, { recursive: true, mode: 0o750 });
      // The socket's group must be able to reach it.
      if (this.config.vhostSocketGroup) fs.chownSync(directory, -1, this.config.vhostSocketGroup.gid);
    }
    const started = await startVhostExport({
      socketPath: record.socketPath,
      volume: record.volume,
      exports: this.volumes,
      queues: record.queues,
      log: this.log,
      socketGid: this.config.vhostSocketGroup?.gid,
    });
    this.running.set(record.volume, started);
    return started;
  }

  async add(volume: string, socketPath: string | undefined, queues: number | undefined): Promise<unknown> {
    this.volumes.record(volume); // not_found for an unknown volume
    if (this.state.vhostExports().some((record) => record.volume === volume)) {
      throw new TandemError("already_exists", `volume ${volume} already has a vhost-user export`);
    }
    const record: VhostExportRecord = {
      volume,
      socketPath: vhostSocketPathFor({ volume, requested: socketPath, socketDir: this.config.vhostSocketDir, allowAnyPath: this.config.vhostAllowAnyPath }),
      queues: queues ?? 1,
    };
    if (!Number.isInteger(record.queues) || record.queues < 1 || record.queues > vhostQueuesMax) {
      throw new TandemError("invalid_argument", `queues must be 1..${vhostQueuesMax}`);
    }
    if (this.state.vhostExports().some((other) => other.socketPath === record.socketPath)) {
      throw new TandemError("already_exists", `${record.socketPath} is already used by another export`);
    }
    await this.start(record);
    try {
      this.state.transaction(() => {
        this.state.insertVhostExport(record);
        this.state.addEvent("info", "export-added", volume, `vhost-user-blk on ${record.socketPath} (${record.queues} queues)`);
      });
    } catch (error) {
      await this.running.get(volume)?.close({ drain: false });
      this.running.delete(volume);
      throw error;
    }
    return this.describe(record);
  }

  async remove(volume: string, required: boolean): Promise<void> {
    const record = this.state.vhostExports().find((entry) => entry.volume === volume);
    if (!record) {
      if (required) throw new TandemError("not_found", `volume ${volume} has no vhost-user export`);
      return;
    }
    await this.running.get(volume)?.close({ drain: true });
    this.running.delete(volume);
    this.state.transaction(() => {
      this.state.deleteVhostExport(volume);
      this.state.addEvent("info", "export-removed", volume, `vhost-user-blk on ${record.socketPath} removed`);
    });
  }

  of(volume: string): string[] {
    return this.state.vhostExports().filter((record) => record.volume === volume).map((record) => `vhost ${record.socketPath}`);
  }

  describe(record: VhostExportRecord): Record<string, unknown> {
    const running = this.running.get(record.volume);
    return { kind: "vhost", volume: record.volume, path: record.socketPath, queues: record.queues, running: running !== undefined, sessions: running?.sessions() ?? [] };
  }

  list(): Record<string, unknown>[] {
    return this.state.vhostExports().map((record) => this.describe(record));
  }

  sessions(): ExportSessionInfo[] {
    return [...this.running.values()].flatMap((running) => running.sessions());
  }

  async closeAll(): Promise<void> {
    await Promise.all([...this.running.values()].map((running) => running.close({ drain: true })));
    this.running.clear();
  }
}

export async function startNode(config: NodeConfig, log: Logger, replicationFactory?: ReplicationFactory): Promise<RunningNode> {
  try {
    fs.mkdirSync(config.dataDir, { recursive: true, mode: 0o700 });
  } catch (error) {
    throw new TandemError("invalid_argument", `${config.source}: dataDir: cannot create ${config.dataDir}: ${(error as Error).message}`);
  }
  const lock = lockDataDir(config.dataDir);
  const startedMs = Date.now();
  let state: NodeState | undefined;
  let volumes: VolumeManager | undefined;
  let nbd: NbdServer | undefined;
  let vhost: VhostExports | undefined;
  let copyOuts: CopyOuts | undefined;
  let control: ControlServer | undefined;
  let paired: PairedVolumes | undefined;
  let replication: (ReplicationService & { start(): void; stop(): Promise<void>; quorum?: QuorumNodeAuthority; setRole?(volumeId: number, primary: boolean, epoch: number): void }) | undefined;
  let witness: WitnessService | undefined;
  let nodeHooks: Hooks | undefined;
  let resolveStopped!: (outcome: { clean: boolean }) => void;
  const stopped = new Promise<{ clean: boolean }>((resolve) => (resolveStopped = resolve));
  let stopping: Promise<void> | undefined;

  const stop = (reason: string): Promise<void> => {
    stopping ??= (async () => {
      log.info("node stopping", { reason });
      const timer = setTimeout(() => {
        log.error("shutdown did not finish in time; exiting with IO possibly in flight", { timeoutMs: shutdownDrainTimeoutMs });
        process.exit(1);
      }, shutdownDrainTimeoutMs);
      // Each step runs even when an earlier one failed (the volumes must still close, the state
      // and the lock must still be released); a failure is logged and makes the exit non-zero.
      let clean = true;
      const step = async (what: string, run: () => unknown) => {
        try {
          await run();
        } catch (error) {
          clean = false;
          log.error("shutdown step failed", { step: what, error });
        }
      };
      await step("control API", () => control?.stop());
      await step("pairing", () => paired?.stop());
      await step("NBD server", () => nbd?.close({ drain: true }));
      await step("vhost exports", () => vhost?.closeAll());
      await step("copy-outs", () => copyOuts?.endAll());
      await step("volumes", () => volumes?.closeAll());
      await step("replication", () => replication?.stop());
      await step("witness", () => witness?.stop());
      await step("state", () => {
        state?.addEvent("info", "node-stopped", null, `node stopped: ${reason}`);
        state?.close();
      });
      clearTimeout(timer);
      lock.release();
      log.info("node stopped", { reason, clean });
      resolveStopped({ clean });
    })();
    return stopping;
  };

  try {
    state = new NodeState(path.join(config.dataDir, "state.db"));
    const nodeState = state;
    witness = WitnessService.start(config, log.child("witness"));
    const witnessService = witness;
    const requireWitness = () => witnessService ?? fail404("this node has no witness configured ([witness] path in the config)");
    volumes = new VolumeManager({ nodeName: config.name, dataDir: config.dataDir, state, log });
    const manager = volumes;
    if (config.peer) {
      if (!replicationFactory) throw new TandemError("invalid_argument", "this build cannot pair nodes");
      const pair = await replicationFactory(config, log, { state, witness });
      replication = pair;
      // Link events (up, down, refused connections, rejected frames) go to `tandem events`.
      pair.onEvent((event) => nodeState.addEvent(event.level, event.kind, null, event.message));
      const quorum = pair.quorum;
      const hooks = new Hooks(config.hooks, log.child("hooks"), (level, kind, volume, message) => nodeState.addEvent(level, kind, volume, message));
      nodeHooks = hooks;
      if (quorum) {
        // DESIGN.md §5 rule 2: a volume the quorum freezes stops at its gate at once (IO waits, or
        // fails with EIO when its onFreeze says so), before anything reaches the replica layer.
        const holdOf = (id: number) => {
          const grant = quorum.grant(id);
          return grant.kind === "frozen" ? grant.reason : null;
        };
        manager.quorumHoldOf = holdOf;
        // A node that was stopped must see its lease run out before it serves what queued meanwhile.
        manager.beforeRequest = () => quorum.catchUp();
        pair.onQuorum?.({
          grantsChanged: (changes) => {
            for (const { volumeId } of changes) manager.quorumHold(volumeId, holdOf(volumeId));
          },
          roleChanged: (volumeId, primary, epoch) => {
            manager.reloadRecord(volumeId);
            const record = nodeState.volumeById(volumeId);
            if (record) void hooks.fire({ event: primary ? "promoted" : "fenced", node: config.name, volume: record.name, volumeId, epoch: Number(epoch), reason: primary ? "the quorum promoted this node" : "this node lost the lease", timeMs: Date.now() });
          },
          report: (report) => {
            const event = quorumEvent(report, config.peer!.name);
            if (event) nodeState.addEvent(event.level, event.kind, null, event.message);
            if (report.kind === "selfFenced") {
              // Every volume this node served is stopped: the hypervisor should stop its VMs.
              for (const record of nodeState.volumes()) if (record.primary === config.name) void hooks.fire({ event: "fenced", node: config.name, volume: record.name, volumeId: record.id, epoch: record.epoch, reason: "self-fenced: own heartbeat writes stalled while the link was down", timeMs: Date.now() });
            }
          },
        });
      }
      paired = new PairedVolumes(config.name, config.peer.name, config.dataDir, replication, state, log.child("pairing"));
      manager.setReplication(paired);
      replication.start();
    }
    vhost = new VhostExports(config, state, manager, log);
    const vhostExports = vhost;
    const deleteLocal = (name: string, force: boolean) =>
      manager.delete(name, { force, exportsOf: (volume) => vhostExports.of(volume), dropExports: (volume) => vhostExports.remove(volume, false) });
    const pair = paired;
    const replicationService = replication;
    const failover =
      pair && replicationService && config.peer
        ? new Failover({
            nodeName: config.name,
            peerName: config.peer.name,
            state,
            volumes: manager,
            quorum: replicationService.quorum,
            setRole: (volumeId, primary, epoch) => {
              replicationService.setRole?.(volumeId, primary, epoch);
              const record = nodeState.volumeById(volumeId);
              if (record) void nodeHooks?.fire({ event: primary ? "promoted" : "fenced", node: config.name, volume: record.name, volumeId, epoch, reason: "planned switchover", timeMs: Date.now() });
            },
            linkUp: () => replicationService.link().connected === true,
            askPeer: (op) => pair.askPeer(op),
            log: log.child("failover"),
          })
        : undefined;
    if (pair) pair.failover = failover;
    pair?.attach({ volumes: manager, deleteLocal, exportsOf: (volume) => vhostExports.of(volume) });
    // This node's half of a create or delete a crash interrupted, before anything is opened.
    await pair?.recover();
    await manager.openAll();

    fs.mkdirSync(path.dirname(config.nbdSocket), { recursive: true, mode: 0o750 });
    copyOuts = new CopyOuts(manager, config.dataDir, state, log.child("copy-out"));
    const copyOutSessions = copyOuts;
    copyOutSessions.startSweeper();
    nbd = await startNbdServer({ unixPath: config.nbdSocket, tcp: config.nbdTcp, exports: copyOutSessions.resolver(manager), log, memoryBudgetBytes: config.nbdMemoryBudgetBytes });
    const nbdServer = nbd;
    await vhostExports.startRecorded();
    const service = replication;
    const volumeId = (name: string) => manager.record(name).id;
    const requirePair = (what: string) => {
      if (!service || !pair) throw new TandemError("failed_precondition", `${what} needs a paired node; this one is standalone`);
      return { service, paired: pair };
    };

    const report = (): StatusReport => {
      const link = service ? ({ ...service.link(), rttMs: paired?.linkRttMs() ?? null } as LinkReport) : null;
      const quorumReport = quorumStatus();
      const quorumSummary = quorumReport.state === "not-configured" ? undefined : { state: quorumReport.state, reason: quorumReport.reason, nextSafeAction: quorumReport.nextSafeAction, witnessReachable: quorumReport.witness.reachable, witnessFailure: quorumReport.witness.failure };
      const assessed = assessStatus({ nodeName: config.name, peerName: config.peer?.name ?? null, link, volumes: manager.views(), pending: pair?.pending() ?? [], broken: manager.broken(), quorum: quorumSummary });
      const base = status();
      return {
        schemaVersion: statusSchemaVersion,
        timeMs: Date.now(),
        health: assessed.health,
        quorum: quorumReport,
        ...base,
        exports: base.exports as ExportReport[],
        node: { ...base.node, link },
        volumes: assessed.volumes,
      };
    };
    const quorumStatus = (): QuorumReport => {
      const quorum = service?.quorum;
      if (!quorum || !witnessService || !config.witness) return witnessService ? { state: "not-configured", witness: witnessService.status() } : { state: "not-configured" };
      const lease = quorum.status();
      const witnessStatus = witnessService.status();
      return {
        state: lease.quorum,
        epoch: Number(lease.epoch),
        phase: lease.phase,
        reason: lease.reason,
        version: Number(lease.version),
        record: lease.record,
        dataHolders: lease.dataHolders,
        outdated: lease.outdated,
        nextSafeAction: lease.nextSafeAction,
        leaseRemainingMs: lease.leaseRemainingMs,
        peerHeartbeat: lease.peerHeartbeat,
        witness: {
          ...witnessStatus,
          reachable: lease.witness.reachable,
          // An IO outstanding past its deadline is the witness hanging, whatever the core's last failure says ("busy").
          failure: lease.ioOutstandingMs !== null && lease.ioOutstandingMs > config.witness.timing.ioTimeoutMs ? `no answer within ${config.witness.timing.ioTimeoutMs} ms (the witness hangs)` : lease.witness.failure,
          lastReadAgeMs: lease.witness.lastReadAgeMs,
          lastWriteAgeMs: lease.witness.lastWriteAgeMs,
          lastHeartbeatAgeMs: lease.witness.lastHeartbeatAgeMs,
          outstandingMs: lease.ioOutstandingMs === null ? null : Math.round(lease.ioOutstandingMs),
          latency: lease.latency.read,
          writeLatency: lease.latency.write,
        },
        timing: { ...config.witness.timing, leaseMarginMs: witnessStatus.timing.leaseMarginMs },
      };
    };
    const status = () => ({
      node: {
        name: config.name,
        version: tandemVersion,
        pid: process.pid,
        uptimeMs: Date.now() - startedMs,
        dataDir: config.dataDir,
        config: config.source,
        controlSocket: config.controlSocket,
        nbdSocket: config.nbdSocket,
        nbdTcp: nbdServer.tcpAddress ?? null,
        peer: config.peer ? { name: config.peer.name, address: formatHostPort(config.peer.address) } : null,
        link: service ? service.link() : null,
      },
      volumes: manager.views(),
      pending: pair?.pending() ?? [],
      broken: manager.broken(),
      exports: [
        { kind: "nbd", socket: config.nbdSocket, tcp: nbdServer.tcpAddress ?? null, volumes: manager.names(), connections: nbdServer.connectionCount(), memory: nbdServer.memory() },
        ...vhostExports.list(),
      ],
      sessions: [...nbdServer.sessions(), ...vhostExports.sessions()],
    });

    const routes: Route[] = [
      { method: "GET", path: "/status", handler: report },
      {
        method: "GET",
        path: "/volumes",
        handler: async () => {
          await pair?.refreshPeer();
          const quorum = quorumStatus();
          // The quorum in brief (the whole of it is in /status): whether it lets this node write, and why not.
          const brief = quorum.state === "not-configured" ? { state: quorum.state } : { state: quorum.state, epoch: quorum.epoch, reason: quorum.reason, dataHolders: quorum.dataHolders, nextSafeAction: quorum.nextSafeAction };
          return { volumes: manager.views(), pending: pair?.pending() ?? [], quorum: brief };
        },
      },
      { method: "GET", path: "/volumes/:name", handler: ({ params }) => manager.view(params.name!) },
      {
        method: "POST",
        path: "/volumes",
        handler: ({ body }) => {
          const request = {
            name: stringField(body, "name", true),
            sizeBytes: sizeField(body, "size"),
            backing: stringField(body, "backing", false),
            direct: booleanField(body, "direct"),
          };
          return pair ? pair.createMirrored(request) : manager.create(request);
        },
      },
      {
        method: "POST",
        path: "/volumes/:name/resize",
        handler: ({ params, body }) => {
          const size = sizeField(body, "size") ?? fail("size is required");
          if (pair) throw new TandemError("failed_precondition", `growing a mirrored volume is not supported yet (both replicas and their bitmaps must grow together)`);
          return manager.resize(params.name!, size);
        },
      },
      {
        method: "POST",
        path: "/volumes/:name/on-freeze",
        handler: ({ params, body }) => {
          const mode = stringField(body, "mode", true);
          if (!freezeModes.includes(mode as FreezeMode)) throw new TandemError("invalid_argument", `mode must be suspend or error, not "${mode}"`);
          manager.setFreezeMode(params.name!, mode as FreezeMode);
          return manager.view(params.name!);
        },
      },
      {
        method: "POST",
        path: "/volumes/:name/failover",
        handler: ({ params, body }) => {
          if (!failover) throw new TandemError("failed_precondition", "failover needs a paired node; this one is standalone");
          return failover.run({ volume: params.name!, to: stringField(body, "to", true), wait: booleanField(body, "wait"), force: booleanField(body, "force") });
        },
      },
      {
        method: "POST",
        path: "/volumes/:name/verify",
        handler: async ({ params, body }) => {
          const { service: pair } = requirePair("verify");
          const started = performance.now();
          const result = (await pair.verify(volumeId(params.name!), booleanField(body, "repair"))) as Record<string, unknown>;
          nodeState.addEvent(Number(result.mismatchCount) > 0 ? "warn" : "info", "verify", params.name!, `verify: ${result.extentsCompared} extents, ${result.mismatchCount} differ, ${result.repaired} repaired`);
          return { volume: params.name, ...result, seconds: (performance.now() - started) / 1000 };
        },
      },
      {
        method: "POST",
        path: "/volumes/:name/resolve",
        handler: async ({ params, body }) => {
          const { service: pair } = requirePair("resolving a split brain");
          const keep = stringField(body, "keep", true);
          if (keep !== config.name && keep !== config.peer!.name) throw new TandemError("invalid_argument", `--keep must be ${config.name} or ${config.peer!.name}`);
          await pair.resolveSplitBrain(volumeId(params.name!), keep === config.name ? "local" : "peer");
          const discarded = keep === config.name ? config.peer!.name : config.name;
          nodeState.addEvent("warn", "split-brain-resolved", params.name!, `operator kept ${keep}'s data; ${discarded}'s writes since the split are overwritten`);
          return { volume: params.name, kept: keep, discarded };
        },
      },
      {
        method: "POST",
        path: "/volumes/:name/copy-out",
        handler: ({ params }) => copyOutSessions.begin(params.name!),
      },
      { method: "GET", path: "/copy-outs/:id", handler: ({ params }) => copyOutSessions.info(params.id!) },
      { method: "DELETE", path: "/copy-outs/:id", handler: ({ params }) => copyOutSessions.end(params.id!) },
      {
        method: "DELETE",
        path: "/volumes/:name",
        handler: async ({ params, query }: ControlRequest) => {
          const name = params.name!;
          const force = query.get("force") === "true";
          await copyOutSessions.endFor(name, force);
          if (pair) return { deleted: name, ...(await pair.deleteMirrored(name, force)) };
          await deleteLocal(name, force);
          return { deleted: name };
        },
      },
      { method: "GET", path: "/witness", handler: () => requireWitness().view() },
      { method: "GET", path: "/witness/identity", handler: () => requireWitness().identity() },
      { method: "GET", path: "/exports", handler: () => ({ exports: status().exports, sessions: status().sessions }) },
      {
        method: "POST",
        path: "/exports/vhost",
        handler: ({ body }) => {
          const queues = body.queues;
          if (queues !== undefined && typeof queues !== "number") throw new TandemError("invalid_argument", "queues must be a number");
          return vhostExports.add(stringField(body, "volume", true), stringField(body, "path", false), queues as number | undefined);
        },
      },
      {
        method: "DELETE",
        path: "/exports/vhost/:volume",
        handler: async ({ params }) => {
          await vhostExports.remove(params.volume!, true);
          return { removed: params.volume };
        },
      },
      {
        method: "GET",
        path: "/events",
        handler: ({ query }) => {
          const limit = Number(query.get("limit") ?? "100");
          if (!Number.isInteger(limit) || limit < 1 || limit > 10_000) throw new TandemError("invalid_argument", "limit must be 1..10000");
          return { events: nodeState.events(limit) };
        },
      },
    ];
    control = await startControlServer({ socketPath: config.controlSocket, routes, log });
    pair?.start();
    state.addEvent("info", "node-started", null, `node ${config.name} started (pid ${process.pid})`);
    log.info("node started", { name: config.name, dataDir: config.dataDir, control: config.controlSocket, nbd: config.nbdSocket, volumes: manager.names().length });
    return { config, volumes: manager, stopped, stop };
  } catch (error) {
    await stop("start-up failed").catch(() => {});
    throw error;
  }
}

function fail(message: string): never {
  throw new TandemError("invalid_argument", message);
}

function fail404(message: string): never {
  throw new TandemError("not_found", message);
}
