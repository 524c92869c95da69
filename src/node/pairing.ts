// What a paired node adds to the volume manager: each volume's stack gets the mirror (through the
// node's replication service), and the volume lifecycle spans both nodes. Creating a volume makes
// both replicas, formatted with one shared initial generation so they start in sync without a copy;
// deleting one removes both. The two daemons agree on these through requests over the
// authenticated replication link (JSON payloads, `PeerRequestBody` below); nothing else crosses.
// Roles: the creating node is the volume's primary; the peer holds the secondary, which refuses
// writes. Until the witness quorum exists, roles change only by operator action.
import fs from "node:fs";
import path from "node:path";
import { TandemError } from "../common/errors.ts";
import type { Logger } from "../common/log.ts";
import type { BlockLayer } from "./block/layer.ts";
import type { FileLayer } from "./block/file.ts";
import type { NodeState, VolumeRecord } from "./state.ts";
import type { CreateVolumeRequest, ReplicaView, VolumeManager, VolumeReplication, VolumeView } from "./volumes.ts";

/** What the daemon needs of the node's replication service (src/node/replica/replication.ts). */
export interface ReplicationService {
  formatVolume(volumeId: number, metadataPath: string, sizeBytes: number, initialGeneration: bigint | undefined): Promise<void>;
  openVolume(volumeId: number, local: BlockLayer, metadataPath: string, role: { primary: boolean; epoch: number }): Promise<BlockLayer>;
  closeVolume(volumeId: number): Promise<void>;
  status(volumeId: number): Record<string, unknown> | undefined;
  link(): Record<string, unknown>;
  verify(volumeId: number, repair: boolean): Promise<unknown>;
  resolveSplitBrain(volumeId: number, keep: "local" | "peer"): Promise<void>;
  peerRequest(payload: Uint8Array): Promise<Uint8Array>;
  onPeerRequest(handler: (payload: Uint8Array) => Promise<Uint8Array>): void;
  newGeneration(): bigint;
}

export type PeerRequestBody =
  | { op: "create"; name: string; id: number; sizeBytes: number; primary: string; generation: string }
  | { op: "delete"; name: string; force: boolean }
  | { op: "describe" };

type PeerReplyBody = { ok: true; result: unknown } | { ok: false; code: TandemError["code"]; message: string };

interface PeerVolume {
  name: string;
  id: number;
  backing: string;
  sizeBytes: number;
}

const encoder = new TextEncoder();
const decoder = new TextDecoder();

export class PairedVolumes implements VolumeReplication {
  private volumes: VolumeManager | undefined;
  /** The daemon's delete (which also drops the volume's exports on this node). */
  private deleteLocal: (name: string, force: boolean) => Promise<void> = async () => {};
  /** What the peer last said it holds (for `volume list`). */
  private peerVolumes = new Map<string, PeerVolume>();

  constructor(
    private readonly nodeName: string,
    private readonly peerName: string,
    private readonly dataDir: string,
    private readonly service: ReplicationService,
    private readonly state: NodeState,
    private readonly log: Logger,
  ) {
    fs.mkdirSync(this.metadataDir, { recursive: true, mode: 0o700 });
    service.onPeerRequest((payload) => this.answer(payload));
  }

  attach(volumes: VolumeManager, deleteLocal: (name: string, force: boolean) => Promise<void>): void {
    this.volumes = volumes;
    this.deleteLocal = deleteLocal;
  }

  get metadataDir(): string {
    return path.join(this.dataDir, "replica");
  }

  private metadataPath(record: VolumeRecord): string {
    return path.join(this.metadataDir, `${record.name}.meta`);
  }

  // ---- VolumeReplication

  async create(record: VolumeRecord, options: unknown): Promise<void> {
    const generation = (options as { generation?: bigint } | undefined)?.generation;
    fs.rmSync(this.metadataPath(record), { force: true });
    await this.service.formatVolume(record.id, this.metadataPath(record), record.sizeBytes, generation);
  }

  async destroy(record: VolumeRecord): Promise<void> {
    fs.rmSync(this.metadataPath(record), { force: true });
  }

  open(record: VolumeRecord, local: FileLayer): Promise<BlockLayer> {
    return this.service.openVolume(record.id, local, this.metadataPath(record), { primary: record.primary === this.nodeName, epoch: record.epoch });
  }

  close(record: VolumeRecord): Promise<void> {
    return this.service.closeVolume(record.id);
  }

  mayWrite(record: VolumeRecord): boolean {
    const status = this.service.status(record.id);
    return record.primary === this.nodeName && status?.role === "primary";
  }

  replicas(record: VolumeRecord, localBacking: string): ReplicaView[] {
    const status = this.service.status(record.id);
    const link = this.service.link();
    const localState = stateName(status);
    const resync = status?.resync as { bytesRemaining: number; bytesCopied: number; rateBytesPerSecond: number; etaSeconds?: number; direction: string } | undefined;
    const detail: Record<string, unknown> = { ...status };
    if (resync) {
      const total = resync.bytesCopied + resync.bytesRemaining;
      detail.progress = `${total === 0 ? 100 : Math.floor((resync.bytesCopied / total) * 100)}% at ${(resync.rateBytesPerSecond / 1048576).toFixed(1)} MiB/s${resync.etaSeconds !== undefined ? `, ETA ${Math.ceil(resync.etaSeconds)}s` : ""}`;
    }
    const peerState = link.connected ? (localState === "resyncing" ? "resyncing" : localState === "synced" ? "synced" : localState) : "unknown";
    const peerRole = record.primary === this.peerName ? "primary" : "secondary";
    return [
      { node: this.nodeName, backing: localBacking, role: record.primary === this.nodeName ? "primary" : "secondary", state: localState, detail },
      { node: this.peerName, backing: this.peerVolumes.get(record.name)?.backing, role: peerRole, state: peerState },
    ];
  }

  // ---- lifecycle across both nodes

  private async ask(body: PeerRequestBody): Promise<unknown> {
    let reply: Uint8Array;
    try {
      reply = await this.service.peerRequest(encoder.encode(JSON.stringify(body)));
    } catch (error) {
      throw new TandemError("unavailable", `peer ${this.peerName} did not answer: ${(error as Error).message}`);
    }
    const parsed = JSON.parse(decoder.decode(reply)) as PeerReplyBody;
    if (!parsed.ok) throw new TandemError(parsed.code, `peer ${this.peerName}: ${parsed.message}`);
    return parsed.result;
  }

  /** Refresh what the peer holds (for volume list); failures leave the last answer in place. */
  async refreshPeer(): Promise<void> {
    try {
      const result = (await this.ask({ op: "describe" })) as { volumes: PeerVolume[] };
      this.peerVolumes = new Map(result.volumes.map((volume) => [volume.name, volume]));
    } catch (error) {
      this.log.debug("peer describe failed", { error });
    }
  }

  /** `volume create` on a paired node: this node's replica first (primary), then the peer's. */
  async createMirrored(request: CreateVolumeRequest): Promise<VolumeView> {
    const volumes = this.volumes!;
    if (!this.service.link().connected) {
      throw new TandemError("unavailable", `peer ${this.peerName} is not connected; a mirrored volume is created on both nodes at once, so try again when the link is up`);
    }
    const generation = this.service.newGeneration();
    const created = await volumes.create({ ...request, primary: this.nodeName, replication: { generation } });
    try {
      await this.ask({ op: "create", name: created.name, id: created.id, sizeBytes: created.size, primary: this.nodeName, generation: generation.toString(16) });
    } catch (error) {
      this.log.warn("peer could not create its replica; removing ours", { volume: created.name, error });
      await this.deleteLocal(created.name, true).catch(() => {});
      throw error;
    }
    await this.refreshPeer();
    return volumes.view(created.name);
  }

  /** `volume delete` on a paired node: the peer's replica too (when it answers). */
  async deleteMirrored(name: string, force: boolean): Promise<{ peer: "deleted" | "unreachable" }> {
    const record = this.volumes!.record(name);
    if (record.primary !== this.nodeName && !force) throw new TandemError("failed_precondition", `${this.nodeName} is not the primary of ${name}; delete it on ${record.primary}, or pass --force`);
    let peer: "deleted" | "unreachable" = "deleted";
    try {
      await this.ask({ op: "delete", name, force });
    } catch (error) {
      if (!(error instanceof TandemError) || error.code !== "unavailable" || !force) throw error;
      peer = "unreachable";
      this.state.addEvent("warn", "peer-replica-left", name, `peer ${this.peerName} was unreachable: its replica of ${name} remains`);
    }
    await this.deleteLocal(name, force);
    this.peerVolumes.delete(name);
    return { peer };
  }

  private async answer(payload: Uint8Array): Promise<Uint8Array> {
    let reply: PeerReplyBody;
    try {
      const body = JSON.parse(decoder.decode(payload)) as PeerRequestBody;
      reply = { ok: true, result: await this.handle(body) };
    } catch (error) {
      reply = error instanceof TandemError ? { ok: false, code: error.code, message: error.message } : { ok: false, code: "internal", message: (error as Error)?.message ?? String(error) };
      if (!(error instanceof TandemError)) this.log.error("peer request failed", { error });
    }
    return encoder.encode(JSON.stringify(reply));
  }

  private async handle(body: PeerRequestBody): Promise<unknown> {
    const volumes = this.volumes!;
    switch (body.op) {
      case "describe":
        return { volumes: volumes.names().map((name) => ({ name, id: volumes.record(name).id, backing: volumes.record(name).backing, sizeBytes: volumes.record(name).sizeBytes })) };
      case "create": {
        if (body.primary !== this.peerName) throw new TandemError("invalid_argument", `a replica request from ${this.peerName} names ${body.primary} as primary`);
        const view = await volumes.create({ name: body.name, sizeBytes: body.sizeBytes, id: body.id, primary: body.primary, replication: { generation: BigInt(`0x${body.generation}`) } });
        this.log.info("created the secondary replica the peer asked for", { volume: body.name, id: body.id });
        return { backing: view.backing };
      }
      case "delete": {
        await this.deleteLocal(body.name, body.force);
        return { deleted: body.name };
      }
      default:
        throw new TandemError("invalid_argument", `unknown peer request ${(body as { op?: string }).op}`);
    }
  }
}

function stateName(status: Record<string, unknown> | undefined): string {
  if (!status) return "unknown";
  switch (status.sync) {
    case "splitBrain":
      return "split-brain";
    case "degraded":
      return status.dataState === "inconsistent" ? "outdated" : "degraded";
    default:
      return String(status.sync);
  }
}
