// The node's replication service: one ReplicaDriver (src/replica/, the pure cores with their thin
// driver) over a TCP transport, the process clock and randomness, and a write authority: the
// witness quorum (quorum-authority.ts) when the config names a witness — link loss freezes, the
// lease decides who writes, promotions move roles — else the static one (roles set by configuration
// and operator; a primary that loses its peer goes on alone, DEGRADED). The daemon asks it
// to format, open and close volumes (each gets a MirrorLayer for its stack), for status, verify
// and split-brain resolution, and it carries the daemons' control-plane requests over the
// authenticated link. Each volume's replication metadata (superblock, activity log, dirty bitmap)
// lives in its own small file in the data directory, sized by the metadata layout.
import fs from "node:fs";
import { fastCrc32c } from "../../common/crc32c-native.ts";
import { BlockError } from "../../common/errors.ts";
import type { Logger } from "../../common/log.ts";
import { replicaActivityLogExtentBytes, replicaBitmapBytesPerTiBMax, replicaBitmapGranuleBytesMax, replicaBitmapGranuleBytesMin, replicaTickMs } from "../../constants.ts";
import { StaticWriteAuthority } from "../../replica/authority.ts";
import { installChecksum } from "../../replica/checksum.ts";
import type { WriteAuthority } from "../../replica/io.ts";
import type { Grant } from "../../replica/types.ts";
import { initialDecided, nodeIndexOf } from "../../quorum/format.ts";
import type { QuorumPersisted, QuorumReport } from "../../quorum/lease.ts";
import type { NodeState } from "../state.ts";
import type { WitnessService } from "../witness.ts";
import { QuorumWriteAuthority } from "./quorum-authority.ts";
import { defaultReplicaConfig } from "../../replica/config.ts";
import { ReplicaDriver } from "../../replica/driver.ts";
import { BlockLayerMetadataStore, BlockLayerStorage, systemClock, systemRandom } from "./io-adapters.ts";
import { granuleBytesFor, metadataLayout } from "../../replica/metadata-format.ts";
import type { ReplicaReport, VolumeStatus } from "../../replica/types.ts";
import { FileLayer } from "../block/file.ts";
import type { BlockLayer } from "../block/layer.ts";
import type { NodeConfig } from "../config.ts";
import type { ReplicationService } from "../pairing.ts";
import { type LinkEvent, linkEventOf } from "./link-events.ts";
import { MirrorLayer } from "./mirror-layer.ts";
import { installNativeFrameTags } from "./gmac-native.ts";
import { TcpPeerTransport } from "./tcp-transport.ts";

function promised<T>(run: (done: (error: BlockError | null, value?: T) => void) => void): Promise<T> {
  return new Promise((resolve, reject) => run((error, value) => (error ? reject(error) : resolve(value as T))));
}

/** The environment variable, and the one value of it, that make a node ask for untagged frames. */
export const untaggedFramesVariable = "TANDEM_BENCHMARK_UNTAGGED_FRAMES";
export const untaggedFramesConsent = "frames-can-be-forged";

/**
 * Whether this node asks its peer for untagged link frames: only for the A/B of bench/replica.ts.
 * Never in the compiled binary that packaging installs, only from the sources with the variable set
 * to its exact consent value, and only when the peer asks too (the handshake refuses a mismatch).
 */
function benchmarkUntaggedFrames(log: Logger): boolean {
  const value = process.env[untaggedFramesVariable];
  if (value === undefined) return false;
  const compiled = Bun.main.startsWith("/$bunfs/") || Bun.main.includes("~BUN");
  if (compiled || value !== untaggedFramesConsent) {
    log.error(`${untaggedFramesVariable} ignored: frames stay authenticated`, { reason: compiled ? "the installed binary never runs untagged frames" : `the only accepted value is "${untaggedFramesConsent}"` });
    return false;
  }
  log.warn("benchmark mode: this node asks its peer for untagged replication frames; anyone on the link can forge them", { variable: untaggedFramesVariable });
  return true;
}

/** What the quorum needs from the node besides the config: its state database and its witness. */
export interface ReplicationDependencies {
  state?: NodeState;
  witness?: WitnessService;
}

/** What the node hears from the quorum (the daemon freezes gates, logs, runs hooks). */
export interface QuorumListener {
  grantsChanged?(changes: { volumeId: number; grant: Grant }[]): void;
  roleChanged?(volumeId: number, primary: boolean, epoch: bigint): void;
  report?(report: QuorumReport): void;
}

const quorumStateKey = "quorum";

/** The quorum's persisted state, as the state database keeps it (bigints as decimal strings). */
export function loadQuorumState(state: NodeState): QuorumPersisted | undefined {
  const text = state.meta(quorumStateKey);
  if (!text) return undefined;
  const raw = JSON.parse(text) as { outdatedEpoch: string; promotionEpoch: string; lastDecided: { version: string; value: { epoch: string; mode: number; owner: number; holders: number[]; forced: boolean } } };
  const value = raw.lastDecided.value;
  return {
    outdatedEpoch: BigInt(raw.outdatedEpoch),
    promotionEpoch: BigInt(raw.promotionEpoch),
    lastDecided: { version: BigInt(raw.lastDecided.version), value: { ...initialDecided.value, ...value, epoch: BigInt(value.epoch) } as QuorumPersisted["lastDecided"]["value"] },
  };
}

function saveQuorumState(state: NodeState, persisted: QuorumPersisted): void {
  state.setMeta(quorumStateKey, JSON.stringify(persisted, (_key, value) => (typeof value === "bigint" ? value.toString() : value)));
}

export class NodeReplication implements ReplicationService {
  private readonly transport: TcpPeerTransport;
  private readonly authority: WriteAuthority;
  private readonly staticAuthority: StaticWriteAuthority | undefined;
  readonly quorum: QuorumWriteAuthority | undefined;
  private readonly quorumListeners = new Set<QuorumListener>();
  private lastSynced: boolean | undefined;
  private readonly driver: ReplicaDriver;
  private readonly metadataLayers = new Map<number, FileLayer>();
  private peerHandler: ((payload: Uint8Array) => Promise<Uint8Array>) | undefined;
  private linkSinceMs = Date.now();
  private readonly reportListeners = new Set<(report: ReplicaReport) => void>();

  constructor(config: NodeConfig, log: Logger, dependencies: ReplicationDependencies = {}) {
    const peer = config.peer;
    if (!peer) throw new BlockError("EINVAL", "replication needs a [peer] section in the config");
    // Every frame and block on the link carries a CRC32C: use the processor's where it is faster.
    const crc32c = fastCrc32c();
    const refused = crc32c.name === "native" ? installChecksum(crc32c.crc32c, "native") : undefined;
    log.info("replication checksum", { crc32c: refused ? "typescript" : crc32c.name, reason: refused ?? crc32c.reason });
    // Every frame after the handshake carries a tag: libcrypto's GMAC with one context per direction where it loads.
    log.info("replication frame tags", installNativeFrameTags());
    this.transport = new TcpPeerTransport({ listen: peer.listen, peer: peer.address, log: log.child("link") });
    const { state, witness } = dependencies;
    if (config.witness && witness && state) {
      const me = nodeIndexOf(config.name, peer.name);
      const quorumLog = log.child("quorum");
      this.quorum = new QuorumWriteAuthority({
        me,
        names: me === 0 ? [config.name, peer.name] : [peer.name, config.name],
        clusterId: peer.clusterId,
        timing: config.witness.timing,
        disk: witness.quorumDisk(),
        clock: systemClock,
        random: systemRandom,
        persisted: loadQuorumState(state),
        logger: quorumLog,
        host: {
          sendPeer: (payload) => this.driver.sendQuorum(payload),
          dropLink: (reason) => this.driver.dropLink(reason),
          grantsChanged: (changes) => {
            for (const listener of this.quorumListeners) listener.grantsChanged?.(changes);
          },
          roleChanged: (volumeId, primary, epoch) => {
            const record = state.volumeById(volumeId);
            if (record) state.setVolumeRole(record.name, primary ? config.name : peer.name, Number(epoch));
            for (const listener of this.quorumListeners) listener.roleChanged?.(volumeId, primary, epoch);
          },
          persist: (persisted) => saveQuorumState(state, persisted),
          feedWatchdog: () => witness.feedWatchdog(),
          report: (report) => {
            quorumLog.info(report.kind, JSON.parse(JSON.stringify(report, (_key, value) => (typeof value === "bigint" ? value.toString() : value))));
            if (report.kind === "lost") {
              // The core demoted the volumes it knows; a volume not open yet gives up its role too,
              // so that it opens as the peer's secondary.
              for (const record of state.volumes()) {
                if (record.primary !== config.name) continue;
                state.setVolumeRole(record.name, peer.name, Number(report.epoch));
                for (const listener of this.quorumListeners) listener.roleChanged?.(record.id, false, report.epoch);
              }
            }
            for (const listener of this.quorumListeners) listener.report?.(report);
          },
        },
      });
      this.authority = this.quorum;
    } else {
      this.staticAuthority = new StaticWriteAuthority();
      this.authority = this.staticAuthority;
    }
    this.driver = new ReplicaDriver({
      identity: { nodeId: config.name, peerNodeId: peer.name, clusterId: peer.clusterId, secret: peer.secret, connect: peer.connect, untaggedFrames: benchmarkUntaggedFrames(log) },
      transport: this.transport,
      clock: systemClock,
      random: systemRandom,
      authority: this.authority,
      config: defaultReplicaConfig({ resyncRateBytesPerTick: Math.ceil((peer.resyncRateBytesPerSecond * replicaTickMs) / 1000), freezeOnLinkLoss: this.quorum !== undefined }),
      logger: log.child("replica"),
      observer: { report: (report) => this.observe(report) },
      onQuorumMessage: (payload) => this.quorum?.peerMessage(payload),
      onPeerRequest: (payload, reply) => {
        const handler = this.peerHandler;
        if (!handler) return reply(false, new TextEncoder().encode("the node is still starting"));
        handler(payload).then(
          (answer) => reply(true, answer),
          (error: Error) => reply(false, new TextEncoder().encode(error?.message ?? String(error))),
        );
      },
    });
  }

  private observe(report: ReplicaReport): void {
    // The core counts ticks; status shows wall-clock time since the link last went up or down.
    if (report.kind === "linkUp" || report.kind === "linkDown") this.linkSinceMs = Date.now();
    for (const listener of this.reportListeners) listener(report);
    this.updateSynced();
  }

  /** Tell the quorum whether every volume is in sync with the peer (it records SHARED once both say so). */
  private updateSynced(): void {
    if (!this.quorum) return;
    const ids = [...this.metadataLayers.keys()];
    const synced = this.driver.link().state === "up" && ids.every((id) => this.driver.status(id)?.sync === "synced");
    if (synced === this.lastSynced) return;
    this.lastSynced = synced;
    this.quorum.synced(synced);
  }

  /** An operator moved the volume's role (a switchover step): the authority follows. */
  setRole(volumeId: number, primary: boolean, epoch: number): void {
    if (this.quorum) this.quorum.setVolume(volumeId, primary);
    else this.staticAuthority!.setRole(volumeId, { primary, epoch });
  }

  /** Watch the quorum's decisions (no-op without a witness). */
  onQuorum(listener: QuorumListener): void {
    this.quorumListeners.add(listener);
  }

  /** Watch the driver's reports. */
  onReport(listener: (report: ReplicaReport) => void): void {
    this.reportListeners.add(listener);
  }

  onLinkUp(listener: () => void): void {
    this.onReport((report) => {
      if (report.kind === "linkUp") listener();
    });
  }

  /** The reports that belong in the node's event log, as events (link-events.ts). */
  onEvent(listener: (event: LinkEvent) => void): void {
    this.onReport((report) => {
      const event = linkEventOf(report);
      if (event) listener(event);
    });
  }

  start(): void {
    this.transport.listen();
    this.driver.start();
    this.quorum?.start();
  }

  async stop(): Promise<void> {
    this.quorum?.stop();
    this.driver.stop();
    this.transport.stop();
    await Promise.all([...this.metadataLayers.values()].map((layer) => layer.close().catch(() => {})));
    this.metadataLayers.clear();
  }

  newGeneration(): bigint {
    const bytes = new Uint8Array(8);
    crypto.getRandomValues(bytes);
    bytes[0]! |= 0x01; // never the "no generation" value 0
    return new DataView(bytes.buffer).getBigUint64(0, true);
  }

  private granuleFor(sizeBytes: number): number {
    return granuleBytesFor(sizeBytes, replicaBitmapGranuleBytesMin, replicaBitmapGranuleBytesMax, replicaBitmapBytesPerTiBMax);
  }

  async formatVolume(volumeId: number, metadataPath: string, sizeBytes: number, initialGeneration: bigint | undefined): Promise<void> {
    const granuleBytes = this.granuleFor(sizeBytes);
    const layout = metadataLayout(sizeBytes, granuleBytes);
    FileLayer.createSparse(metadataPath, layout.totalBytes);
    const layer = FileLayer.open({ path: metadataPath });
    try {
      await promised<void>((done) =>
        ReplicaDriver.format(new BlockLayerMetadataStore(layer), { volumeId, sizeBytes, granuleBytes, activityLogExtentBytes: replicaActivityLogExtentBytes, initialGeneration }, done),
      );
    } finally {
      await layer.close();
    }
  }

  async openVolume(volumeId: number, local: BlockLayer, metadataPath: string, role: { primary: boolean; epoch: number }): Promise<BlockLayer> {
    if (!fs.existsSync(metadataPath)) throw new BlockError("EINVAL", `replication metadata ${metadataPath} is missing`);
    if (this.quorum) this.quorum.setVolume(volumeId, role.primary);
    else this.staticAuthority!.setRole(volumeId, role);
    const metadata = FileLayer.open({ path: metadataPath });
    try {
      await promised<void>((done) => this.driver.openVolume(volumeId, new BlockLayerStorage(local), new BlockLayerMetadataStore(metadata), done));
    } catch (error) {
      this.quorum?.removeVolume(volumeId);
      await metadata.close();
      throw error;
    }
    this.metadataLayers.set(volumeId, metadata);
    this.updateSynced();
    return new MirrorLayer(this.driver, volumeId, local);
  }

  async closeVolume(volumeId: number): Promise<void> {
    try {
      await promised<void>((done) => this.driver.closeVolume(volumeId, done));
    } finally {
      this.quorum?.removeVolume(volumeId);
      const metadata = this.metadataLayers.get(volumeId);
      this.metadataLayers.delete(volumeId);
      await metadata?.close();
    }
  }

  status(volumeId: number): VolumeStatus | undefined {
    return this.driver.status(volumeId);
  }

  role(volumeId: number): VolumeStatus["role"] | undefined {
    return this.driver.role(volumeId);
  }

  link(): Record<string, unknown> {
    const link = this.driver.link();
    return { ...link, connected: link.state === "up", sinceMs: this.linkSinceMs };
  }

  verify(volumeId: number, repair: boolean): Promise<unknown> {
    return promised((done) => this.driver.verify(volumeId, repair, done));
  }

  resolveSplitBrain(volumeId: number, keep: "local" | "peer"): Promise<void> {
    return promised<void>((done) => this.driver.resolveSplitBrain(volumeId, keep, done));
  }

  peerRequest(payload: Uint8Array): Promise<Uint8Array> {
    return promised<Uint8Array>((done) => this.driver.peerRequest(payload, (error, reply) => done(error, reply)));
  }

  onPeerRequest(handler: (payload: Uint8Array) => Promise<Uint8Array>): void {
    this.peerHandler = handler;
  }
}

/** The daemon's ReplicationFactory. */
export async function createNodeReplication(config: NodeConfig, log: Logger, dependencies: ReplicationDependencies = {}): Promise<NodeReplication> {
  return new NodeReplication(config, log, dependencies);
}
