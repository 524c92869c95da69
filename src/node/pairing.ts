// What a paired node adds to the volume manager: each volume's stack gets the mirror (through the
// node's replication service), and the volume lifecycle spans both nodes. Creating a volume makes
// both replicas, formatted with one shared initial generation so they start in sync without a copy
// (or, when the creator imports a backing that already holds data, the peer's replica is formatted
// as new so the replica layer fills it with a full copy); deleting one removes both. The two daemons
// agree on these through requests over the authenticated replication link (JSON payloads,
// `PeerRequestBody` below); nothing else crosses.
//
// Both operations are atomic across the pair: each step is announced by a persistent intent
// (state.ts; the rules are in intents.ts) and an unfinished operation completes or rolls back by
// itself — at start-up for this node's own half, and whenever the link is up for the peer's half —
// so a kill -9 at any moment or a delete while the link is down never leaves a volume that neither
// node can remove. Volume ids are allocated from this node's half of the id space and never reused,
// so the two nodes can create at the same moment and a leftover can never collide with a new volume.
// Roles: the creating node is the volume's primary; the peer holds the secondary, which refuses
// writes. Until the witness quorum exists, roles change only by operator action.
import type { FailoverPeerOp } from "./failover.ts";
import fs from "node:fs";
import path from "node:path";
import { TandemError } from "../common/errors.ts";
import type { Logger } from "../common/log.ts";
import { linkRttStaleAfterMs, pairingReconcileIntervalMs, volumeIdMax } from "../constants.ts";
import type { VolumeStatus } from "../replica/types.ts";
import type { BlockLayer } from "./block/layer.ts";
import type { FileLayer } from "./block/file.ts";
import { type PairSnapshot, type PendingVolume, pendingVolumes, planReconcile, type ReconcileStep } from "./intents.ts";
import type { IntentRecord, NodeState, VolumeRecord } from "./state.ts";
import { type CreateVolumeRequest, type ReplicaView, validateVolumeName, type VolumeManager, type VolumeReplication, type VolumeView } from "./volumes.ts";

/** What the daemon needs of the node's replication service (src/node/replica/replication.ts). */
export interface ReplicationService {
  formatVolume(volumeId: number, metadataPath: string, sizeBytes: number, initialGeneration: bigint | undefined): Promise<void>;
  openVolume(volumeId: number, local: BlockLayer, metadataPath: string, role: { primary: boolean; epoch: number }): Promise<BlockLayer>;
  closeVolume(volumeId: number): Promise<void>;
  status(volumeId: number): VolumeStatus | undefined;
  /** The role status() would report (asked on every client write, so without the rest). */
  role(volumeId: number): VolumeStatus["role"] | undefined;
  link(): Record<string, unknown>;
  /** Called (from the replication driver) each time the link to the peer comes up. */
  onLinkUp(listener: () => void): void;
  verify(volumeId: number, repair: boolean): Promise<unknown>;
  resolveSplitBrain(volumeId: number, keep: "local" | "peer"): Promise<void>;
  peerRequest(payload: Uint8Array): Promise<Uint8Array>;
  onPeerRequest(handler: (payload: Uint8Array) => Promise<Uint8Array>): void;
  newGeneration(): bigint;
}

export type PeerRequestBody =
  /** Make the secondary replica of a volume the asker created. `generation` null: the asker's replica
   * holds data this one does not (an imported disk), so this one starts as new and is filled by a copy. */
  | { op: "create"; name: string; id: number; sizeBytes: number; primary: string; generation: string | null }
  /** The asker committed the create of (name, id): the replica intent can go. */
  | { op: "commit"; name: string; id: number }
  /** Remove the replica of (name, id), if there is one; `force` even while it is in use. */
  | { op: "delete"; name: string; id: number; force: boolean }
  | { op: "describe" }
  /** A switchover's steps on this node (src/node/failover.ts). */
  | FailoverPeerOp;

type PeerReplyBody = { ok: true; result: unknown } | { ok: false; code: TandemError["code"]; message: string };

export interface PeerVolume {
  name: string;
  id: number;
  backing: string;
  sizeBytes: number;
}

interface PeerDescription {
  volumes: PeerVolume[];
  intents: IntentRecord[];
}

/** What the pairing needs of the daemon, handed over once the exports exist (`attach`). */
export interface PairingHooks {
  volumes: VolumeManager;
  /** The daemon's delete of this node's replica, which also drops the volume's exports here. */
  deleteLocal(name: string, force: boolean): Promise<void>;
  /** The exports holding a volume on this node (an unforced delete is refused while there are any). */
  exportsOf(name: string): string[];
}

const encoder = new TextEncoder();
const decoder = new TextDecoder();

export class PairedVolumes implements VolumeReplication {
  private hooks: PairingHooks | undefined;
  /** Serving peer requests and reconciling: set once the daemon is fully up. */
  private started = false;
  /** Volume names with a pair-wide operation in progress on this node (create, delete, a reconcile step). */
  private readonly running = new Set<string>();
  /** What the peer last said it holds (for `volume list`, `status` and one-sided leftovers). */
  private peer: { description: PeerDescription; fresh: boolean } | undefined;
  private reconciling: Promise<void> | undefined;
  private timer: ReturnType<typeof setInterval> | undefined;
  /** The ids this node hands out: the name that sorts first takes the odd ones, the other the even. */
  private readonly idShare: { stride: number; residue: number };
  /** The last describe's round trip (ms), and when the oldest describe still unanswered started. */
  private rttMs: number | null = null;
  private describeStartedMs: number | undefined;

  constructor(
    private readonly nodeName: string,
    private readonly peerName: string,
    private readonly dataDir: string,
    private readonly service: ReplicationService,
    private readonly state: NodeState,
    private readonly log: Logger,
  ) {
    this.idShare = { stride: 2, residue: nodeName < peerName ? 1 : 0 };
    fs.mkdirSync(this.metadataDir, { recursive: true, mode: 0o700 });
    service.onPeerRequest((payload) => this.answer(payload));
    service.onLinkUp(() => {
      if (this.peer) this.peer.fresh = false;
      // Not from inside the replication driver's report: let it finish its turn first.
      setTimeout(() => void this.reconcile(), 0);
    });
  }

  attach(hooks: PairingHooks): void {
    this.hooks = hooks;
  }

  get metadataDir(): string {
    return path.join(this.dataDir, "replica");
  }

  private metadataPath(name: string): string {
    return path.join(this.metadataDir, `${name}.meta`);
  }

  private get volumes(): VolumeManager {
    if (!this.hooks) throw new TandemError("unavailable", "the node is still starting");
    return this.hooks.volumes;
  }

  // ---- VolumeReplication

  async create(record: VolumeRecord, options: unknown): Promise<void> {
    const generation = (options as { generation?: bigint } | undefined)?.generation;
    fs.rmSync(this.metadataPath(record.name), { force: true });
    await this.service.formatVolume(record.id, this.metadataPath(record.name), record.sizeBytes, generation);
  }

  async destroy(record: VolumeRecord): Promise<void> {
    fs.rmSync(this.metadataPath(record.name), { force: true });
  }

  open(record: VolumeRecord, local: FileLayer): Promise<BlockLayer> {
    return this.service.openVolume(record.id, local, this.metadataPath(record.name), { primary: record.primary === this.nodeName, epoch: record.epoch });
  }

  close(record: VolumeRecord): Promise<void> {
    return this.service.closeVolume(record.id);
  }

  mayWrite(record: VolumeRecord): boolean {
    // Asked on every client write: the role alone, not the whole status.
    const role = this.service.role(record.id);
    // A frozen primary (the quorum deciding after a link loss) stays writable to its clients: their
    // IO waits at the gate or in the replica core and goes on, or fails, once the quorum decides.
    return record.primary === this.nodeName && (role === "primary" || role === "frozen");
  }

  replicas(record: VolumeRecord, localBacking: string): ReplicaView[] {
    const status = this.service.status(record.id);
    const connected = this.connected();
    const localState = stateName(status);
    const resync = status?.resync;
    const detail: Record<string, unknown> = { ...status };
    if (resync) {
      const total = resync.bytesCopied + resync.bytesRemaining;
      detail.progress = `${total === 0 ? 100 : Math.floor((resync.bytesCopied / total) * 100)}% at ${(resync.rateBytesPerSecond / 1048576).toFixed(1)} MiB/s${resync.etaSeconds !== undefined ? `, ETA ${Math.ceil(resync.etaSeconds)}s` : ""}`;
    }
    const peerVolume = this.peer?.description.volumes.find((volume) => volume.name === record.name && volume.id === record.id);
    let peerState = connected ? (localState === "resyncing" ? "resyncing" : localState === "synced" ? "synced" : localState) : "unknown";
    const intent = this.state.intent(record.name);
    if (intent?.id === record.id && intent.operation !== "delete") peerState = "create-pending";
    else if (connected && this.peer?.fresh && !peerVolume) peerState = "missing";
    const peerRole = record.primary === this.peerName ? "primary" : "secondary";
    return [
      { node: this.nodeName, backing: localBacking, role: record.primary === this.nodeName ? "primary" : "secondary", state: localState, detail },
      { node: this.peerName, backing: peerVolume?.backing, role: peerRole, state: peerState },
    ];
  }

  // ---- start-up, reconciliation, reporting

  /**
   * This node's half of every unfinished operation, before the volumes are opened: an interrupted
   * create is rolled back here (its intent becomes a delete for the peer's half), a replica whose
   * making was interrupted is removed, an interrupted delete is finished here.
   */
  async recover(): Promise<void> {
    for (const intent of this.state.intents()) {
      try {
        await this.recoverOne(intent);
      } catch (error) {
        // The node still starts; the reconcile rounds try again (a delete, a roll-back) later.
        this.log.error("an unfinished volume operation could not be finished at start-up", { volume: intent.volume, id: intent.id, operation: intent.operation, error });
        this.state.addEvent("error", "volume-operation-stuck", intent.volume, `the ${intent.operation} of ${intent.volume} could not be finished here: ${(error as Error).message}`);
      }
    }
  }

  private async recoverOne(intent: IntentRecord): Promise<void> {
    const record = this.state.volume(intent.volume);
    const here = record?.id === intent.id;
    switch (intent.operation) {
      case "create":
        if (here) await this.hooks!.deleteLocal(intent.volume, true);
        else this.removePartial(intent);
        this.state.transaction(() => {
          this.state.putIntent({ ...intent, operation: "delete", force: true });
          this.state.addEvent("warn", "create-rolled-back", intent.volume, `the create of ${intent.volume} was interrupted: removed here; ${this.peerName}'s replica (if made) is removed when it is reachable`);
        });
        break;
      case "replica":
        if (!here) {
          this.removePartial(intent);
          this.state.deleteIntent(intent.volume, intent.id);
        }
        break;
      case "delete":
        if (here) await this.hooks!.deleteLocal(intent.volume, true);
        else this.removePartial(intent); // the record went, the files may not have
        break;
    }
    this.log.info("unfinished volume operation found at start-up", { volume: intent.volume, id: intent.id, operation: intent.operation, replicaHere: here });
  }

  /** The files of a volume whose record is gone (or never came): an interrupted create or delete. */
  private removePartial(intent: IntentRecord): void {
    // Files named after a volume that exists belong to it, whatever this intent was about.
    if (this.state.volume(intent.volume)) return;
    if (intent.ownedBacking) fs.rmSync(intent.ownedBacking, { force: true });
    fs.rmSync(this.metadataPath(intent.volume), { force: true });
  }

  /** The daemon is up: answer the peer and finish what is pending, now and whenever the link is up. */
  start(): void {
    this.started = true;
    // Also keeps the peer's description fresh for status (one small request per interval).
    this.timer = setInterval(() => void this.reconcile(), pairingReconcileIntervalMs);
    void this.reconcile();
  }

  stop(): void {
    this.started = false;
    clearInterval(this.timer);
  }

  private connected(): boolean {
    return this.service.link().connected === true;
  }

  private snapshot(): PairSnapshot {
    return { volumes: this.state.volumes().map((volume) => ({ name: volume.name, id: volume.id })), intents: this.state.intents() };
  }

  /** Move every pending intent forward with the peer; one run at a time, each step under its volume's lock. */
  reconcile(): Promise<void> {
    if (!this.started || !this.connected()) return Promise.resolve();
    this.reconciling ??= (async () => {
      try {
        // Our holdings before the peer's: an intent we hold was then already answered for by the
        // peer's state (a replica intent, say, exists only after its creator recorded its own), so a
        // create that starts while we ask is never mistaken for one rolled back.
        const local = this.snapshot();
        const peer = await this.describePeer();
        for (const step of planReconcile(local, peer, this.running)) {
          await this.exclusive(step.volume, () => this.apply(step)).catch((error) =>
            this.log.info("a pending volume operation did not finish yet; retrying later", { volume: step.volume, step: step.kind, error }),
          );
        }
      } catch (error) {
        this.log.debug("reconciling with the peer failed; retrying later", { error });
      } finally {
        this.reconciling = undefined;
      }
    })();
    return this.reconciling;
  }

  private async apply(step: ReconcileStep): Promise<void> {
    if (!this.started) return; // the node is stopping: its volumes are closing
    const intent = this.state.intent(step.volume);
    const operation = { finishLocalDelete: "delete", askPeerDelete: "delete", commitReplica: "replica", abortReplica: "replica", rollBackCreate: "create" }[step.kind];
    if (intent?.id !== step.id || intent.operation !== operation) return; // moved on meanwhile
    switch (step.kind) {
      case "finishLocalDelete":
        if (this.state.volume(step.volume)?.id === step.id) await this.hooks!.deleteLocal(step.volume, true);
        return;
      case "askPeerDelete":
        await this.ask({ op: "delete", name: step.volume, id: step.id, force: step.force });
        this.state.transaction(() => {
          this.state.deleteIntent(step.volume, step.id);
          this.state.addEvent("info", "volume-delete-completed", step.volume, `${this.peerName} removed its replica of ${step.volume}: the delete is complete on both nodes`);
        });
        return;
      case "commitReplica":
        this.state.deleteIntent(step.volume, step.id);
        this.log.info("the creator committed the volume", { volume: step.volume, id: step.id });
        return;
      case "abortReplica":
        if (this.state.volume(step.volume)?.id === step.id) await this.hooks!.deleteLocal(step.volume, true);
        else this.removePartial(intent);
        this.state.transaction(() => {
          this.state.deleteIntent(step.volume, step.id);
          this.state.addEvent("warn", "create-rolled-back", step.volume, `${this.peerName} rolled back its create of ${step.volume}: this replica is removed`);
        });
        return;
      case "rollBackCreate":
        if (this.state.volume(step.volume)?.id === step.id) await this.hooks!.deleteLocal(step.volume, true);
        else this.removePartial(intent);
        this.state.putIntent({ ...intent, operation: "delete", force: true });
        return;
    }
  }

  /** Unfinished creates and deletes, and one-sided leftovers, for `volume list` and `status`. */
  pending(): PendingVolume[] {
    return pendingVolumes(this.snapshot(), this.peer?.fresh ? this.peer.description : undefined, { local: this.nodeName, peer: this.peerName }, this.connected());
  }

  // ---- lifecycle across both nodes

  private async exclusive<T>(name: string, work: () => Promise<T>): Promise<T> {
    if (this.running.has(name)) throw new TandemError("failed_precondition", `volume ${name} is busy with another operation on ${this.nodeName}; try again`);
    this.running.add(name);
    try {
      return await work();
    } finally {
      this.running.delete(name);
    }
  }

  /** One request to the peer. `unavailable`: no answer (it may or may not have acted); any other code: it refused and changed nothing. */
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

  private async describePeer(): Promise<PeerDescription> {
    const started = performance.now();
    this.describeStartedMs ??= started;
    try {
      const description = (await this.ask({ op: "describe" })) as PeerDescription;
      this.peer = { description, fresh: true };
      this.rttMs = performance.now() - started;
      return description;
    } finally {
      if (this.describeStartedMs === started) this.describeStartedMs = undefined;
    }
  }

  /**
   * The link's round trip, as status and the dashboard show it: the time the last `describe`
   * request took over the authenticated link (the reconcile loop asks every
   * pairingReconcileIntervalMs; the figure includes both daemons' event-loop turns, as every
   * mirrored write does). Null while the link is down, before the first answer, and while a
   * describe has waited longer than linkRttStaleAfterMs (the last figure no longer describes the link).
   */
  linkRttMs(): number | null {
    if (!this.connected()) return null;
    if (this.describeStartedMs !== undefined && performance.now() - this.describeStartedMs > linkRttStaleAfterMs) return null;
    return this.rttMs;
  }

  /** Refresh what the peer holds (for volume list); failures leave the last answer in place. */
  async refreshPeer(): Promise<void> {
    if (!this.connected()) return;
    try {
      await this.describePeer();
    } catch (error) {
      this.log.debug("peer describe failed", { error });
    }
  }

  /**
   * `volume create` on a paired node: this node's replica first (it becomes the primary), then the
   * peer's; committed when both exist. A failure on the way rolls back both (the peer's later, if
   * it could not be reached).
   */
  async createMirrored(request: CreateVolumeRequest): Promise<VolumeView> {
    const volumes = this.volumes;
    validateVolumeName(request.name);
    return this.exclusive(request.name, async () => {
      const name = request.name;
      const pendingIntent = this.state.intent(name);
      if (pendingIntent) throw new TandemError("already_exists", `volume ${name} has a ${pendingIntent.operation} pending (see tandem volume list); try again once it completes`);
      if (this.state.volume(name)) throw new TandemError("already_exists", `a volume named ${name} already exists`);
      if (!this.connected()) {
        throw new TandemError("unavailable", `peer ${this.peerName} is not connected; a mirrored volume is created on both nodes at once, so try again when the link is up`);
      }
      const backing = path.resolve(request.backing ?? path.join(volumes.volumeDir, `${name}.img`));
      const imported = fs.existsSync(backing);
      const generation = this.service.newGeneration();
      const id = this.state.transaction(() => {
        const allocated = this.state.allocateVolumeId(this.idShare);
        this.state.putIntent({ volume: name, id: allocated, operation: "create", ownedBacking: imported ? null : backing, force: false, sinceMs: Date.now() });
        return allocated;
      });
      let created: VolumeView;
      try {
        created = await volumes.create({ ...request, id, primary: this.nodeName, replication: { generation } });
      } catch (error) {
        this.state.deleteIntent(name, id); // the manager undid its own steps
        throw error;
      }
      try {
        // An imported backing holds data the peer's new file does not: no shared generation, so the
        // replica layer sees a new peer replica and copies everything to it.
        await this.ask({ op: "create", name, id, sizeBytes: created.size, primary: this.nodeName, generation: imported ? null : generation.toString(16) });
      } catch (error) {
        await this.rollBackCreate(name, id, error);
        throw error instanceof TandemError && error.code === "unavailable"
          ? new TandemError("unavailable", `${error.message}; the create is rolled back here, and on ${this.peerName} when it is reachable`)
          : error;
      }
      this.state.transaction(() => {
        this.state.deleteIntent(name, id);
        this.state.addEvent("info", "volume-mirrored", name, `created on ${this.nodeName} (primary) and ${this.peerName}${imported ? "; the existing data is copied to the peer" : ""}`);
      });
      // Best effort: without it the peer learns of the commit when it next reconciles.
      await this.ask({ op: "commit", name, id }).catch(() => {});
      await this.refreshPeer();
      return volumes.view(name);
    });
  }

  private async rollBackCreate(name: string, id: number, cause: unknown): Promise<void> {
    const answered = !(cause instanceof TandemError && cause.code === "unavailable");
    this.log.warn("the peer did not create its replica; rolling back", { volume: name, id, error: cause });
    // The peer refused (it undid its own steps), or may have made its replica: then the intent
    // stays as a delete until the peer confirms it has none.
    this.state.transaction(() => {
      const intent = this.state.intent(name)!;
      this.state.putIntent({ ...intent, operation: "delete", force: true });
    });
    try {
      await this.hooks!.deleteLocal(name, true);
    } catch (error) {
      // The delete intent finishes it at the next reconcile (or start).
      this.log.error("rolling back the local replica failed", { volume: name, id, error });
      return;
    }
    if (answered) this.state.deleteIntent(name, id);
  }

  /**
   * `volume delete` on a paired node: the peer's replica first (an unforced delete it refuses
   * changes nothing), then this node's; with the link down, --force deletes here now and the
   * intent removes the peer's replica when it is back. A volume only the peer holds (a leftover)
   * is removed there with --force.
   */
  async deleteMirrored(name: string, force: boolean): Promise<{ peer: "deleted" | "pending" }> {
    const volumes = this.volumes;
    return this.exclusive(name, async () => {
      const record = this.state.volume(name);
      const previous = this.state.intent(name);
      if (!record) {
        if (previous?.operation === "delete") return { peer: await this.finishPeerDelete(previous) };
        await this.refreshPeer();
        const leftover = this.peer?.description.volumes.find((volume) => volume.name === name);
        if (!leftover) throw new TandemError("not_found", `no volume named ${name}`);
        if (!force) throw new TandemError("failed_precondition", `volume ${name} exists only on ${this.peerName} (a leftover); tandem volume delete ${name} --force removes it there`);
        const intent: IntentRecord = { volume: name, id: leftover.id, operation: "delete", ownedBacking: null, force: true, sinceMs: Date.now() };
        this.state.transaction(() => {
          this.state.noteVolumeId(leftover.id);
          this.state.putIntent(intent);
          this.state.addEvent("warn", "volume-deleted", name, `${this.peerName}'s leftover replica of ${name} (id ${leftover.id}) deleted (forced)`);
        });
        return { peer: await this.finishPeerDelete(intent) };
      }
      if (record.primary !== this.nodeName && !force) throw new TandemError("failed_precondition", `${this.nodeName} is not the primary of ${name}; delete it on ${record.primary}, or pass --force`);
      if (!force) {
        volumes.refuseInUse(name, this.hooks!.exportsOf(name));
        if (!this.connected()) {
          throw new TandemError("unavailable", `peer ${this.peerName} is not connected; a mirrored volume is deleted on both nodes at once. Pass --force to delete it here now and on ${this.peerName} when it is reachable`);
        }
      }
      const intent: IntentRecord = { volume: name, id: record.id, operation: "delete", ownedBacking: record.owned ? record.backing : null, force, sinceMs: Date.now() };
      this.state.putIntent(intent);
      let peer: "deleted" | "pending" = "pending";
      if (this.connected()) {
        try {
          await this.ask({ op: "delete", name, id: record.id, force });
          peer = "deleted";
        } catch (error) {
          if (!(error instanceof TandemError) || error.code !== "unavailable") {
            // Refused: nothing was deleted anywhere.
            this.state.transaction(() => (previous ? this.state.putIntent(previous) : this.state.deleteIntent(name, record.id)));
            throw error;
          }
          // No answer: the peer may have deleted its replica already, so the delete can only go on.
        }
      }
      await this.hooks!.deleteLocal(name, true);
      this.state.transaction(() => {
        if (peer === "deleted") this.state.deleteIntent(name, record.id);
        else this.state.addEvent("warn", "volume-delete-pending", name, `${this.peerName} was not reachable: its replica of ${name} is removed when it is`);
      });
      if (this.peer) this.peer.description.volumes = this.peer.description.volumes.filter((volume) => volume.name !== name);
      return { peer };
    });
  }

  /** Ask the peer to drop (name, id) for a delete intent; the intent goes when it has. */
  private async finishPeerDelete(intent: IntentRecord): Promise<"deleted" | "pending"> {
    if (!this.connected()) return "pending";
    try {
      await this.ask({ op: "delete", name: intent.volume, id: intent.id, force: intent.force });
    } catch (error) {
      if (error instanceof TandemError && error.code === "unavailable") return "pending";
      throw error;
    }
    this.state.deleteIntent(intent.volume, intent.id);
    await this.refreshPeer();
    return "deleted";
  }

  // ---- the peer's requests

  private async answer(payload: Uint8Array): Promise<Uint8Array> {
    let reply: PeerReplyBody;
    try {
      if (!this.started) throw new TandemError("unavailable", `${this.nodeName} is still starting`);
      const body = JSON.parse(decoder.decode(payload)) as PeerRequestBody;
      reply = { ok: true, result: await this.handle(body) };
    } catch (error) {
      reply = error instanceof TandemError ? { ok: false, code: error.code, message: error.message } : { ok: false, code: "internal", message: (error as Error)?.message ?? String(error) };
      if (!(error instanceof TandemError)) this.log.error("peer request failed", { error });
    }
    return encoder.encode(JSON.stringify(reply));
  }

  /** Answers the peer's switchover steps (set by the daemon). */
  failover: { answer(op: FailoverPeerOp): Promise<unknown> } | undefined;

  /** A switchover step on the peer. */
  askPeer(op: FailoverPeerOp): Promise<unknown> {
    return this.ask(op);
  }

  private async handle(body: PeerRequestBody): Promise<unknown> {
    switch (body.op) {
      case "release":
      case "adopt":
      case "thaw":
        if (!this.failover) throw new TandemError("unavailable", `${this.nodeName} cannot take part in a failover yet`);
        return this.failover.answer(body);
      case "describe":
        return {
          volumes: this.state.volumes().map((record) => ({ name: record.name, id: record.id, backing: record.backing, sizeBytes: record.sizeBytes })),
          intents: this.state.intents(),
        } satisfies PeerDescription;
      case "create":
        return this.exclusive(body.name, () => this.createReplica(body));
      case "commit": {
        const intent = this.state.intent(body.name);
        if (intent?.operation === "replica" && intent.id === body.id) this.state.deleteIntent(body.name, body.id);
        return { committed: body.name };
      }
      case "delete": {
        const record = this.state.volume(body.name);
        if (record?.id !== body.id) {
          // Nothing of that volume here (or only a partial replica, or our own finished delete).
          const intent = this.state.intent(body.name);
          if (intent?.id === body.id && !this.running.has(body.name)) {
            if (intent.operation !== "delete") this.removePartial(intent);
            this.state.deleteIntent(body.name, body.id);
          }
          return { deleted: false };
        }
        return this.exclusive(body.name, () => this.deleteReplica(record, body.force));
      }
      default:
        throw new TandemError("invalid_argument", `unknown peer request ${(body as { op?: string }).op}`);
    }
  }

  private async createReplica(body: Extract<PeerRequestBody, { op: "create" }>): Promise<unknown> {
    if (body.primary !== this.peerName) throw new TandemError("invalid_argument", `a replica request from ${this.peerName} names ${body.primary} as primary`);
    validateVolumeName(body.name);
    if (!Number.isSafeInteger(body.id) || body.id < 1 || body.id > volumeIdMax) throw new TandemError("invalid_argument", `volume id ${body.id} is not valid`);
    if (body.generation !== null && !/^[0-9a-f]{1,16}$/.test(String(body.generation))) throw new TandemError("invalid_argument", `generation ${body.generation} is not 1-16 hex digits`);
    const existing = this.state.volume(body.name);
    if (existing?.id === body.id) return { backing: existing.backing }; // asked again: already made
    if (existing) throw new TandemError("already_exists", `a volume named ${body.name} already exists on ${this.nodeName} (id ${existing.id}); if it is a leftover, tandem volume delete ${body.name} --force removes it`);
    const pending = this.state.intent(body.name);
    if (pending) throw new TandemError("already_exists", `volume ${body.name} has a ${pending.operation} pending on ${this.nodeName}; try again once it completes`);
    const clash = this.state.volumeById(body.id);
    if (clash) throw new TandemError("already_exists", `volume id ${body.id} is already used on ${this.nodeName} by ${clash.name}`);
    const backing = path.join(this.volumes.volumeDir, `${body.name}.img`);
    this.state.transaction(() => {
      this.state.noteVolumeId(body.id);
      this.state.putIntent({ volume: body.name, id: body.id, operation: "replica", ownedBacking: backing, force: false, sinceMs: Date.now() });
    });
    try {
      const generation = body.generation === null ? undefined : BigInt(`0x${body.generation}`);
      const view = await this.volumes.create({ name: body.name, sizeBytes: body.sizeBytes, id: body.id, primary: body.primary, replication: { generation } });
      this.log.info("created the secondary replica the peer asked for", { volume: body.name, id: body.id, fullCopy: generation === undefined });
      return { backing: view.backing };
    } catch (error) {
      this.state.deleteIntent(body.name, body.id); // the manager undid its own steps
      throw error;
    }
  }

  private async deleteReplica(record: VolumeRecord, force: boolean): Promise<unknown> {
    if (!force) this.volumes.refuseInUse(record.name, this.hooks!.exportsOf(record.name));
    // Our own intent for the local removal, so a crash half-way is finished at the next start.
    const previous = this.state.intent(record.name);
    this.state.putIntent({ volume: record.name, id: record.id, operation: "delete", ownedBacking: record.owned ? record.backing : null, force: true, sinceMs: previous?.sinceMs ?? Date.now() });
    await this.hooks!.deleteLocal(record.name, true);
    this.state.deleteIntent(record.name, record.id);
    return { deleted: true };
  }
}

function stateName(status: VolumeStatus | undefined): string {
  if (!status) return "unknown";
  switch (status.sync) {
    case "splitBrain":
      return "split-brain";
    case "degraded":
      return status.dataState === "inconsistent" ? "outdated" : "degraded";
    default:
      return status.sync;
  }
}
