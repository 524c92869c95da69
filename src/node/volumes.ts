// The volume manager: creates, opens, resizes and deletes volumes, builds each volume's layer stack
// (file or device → [mirror, when paired] → gate), and hands sessions on them to the exports
// through the ExportResolver interface, counting who holds what so a delete in use is refused and a
// forced one revokes the sessions first. What persists (name, id, size, backing, role) is in the
// node's SQLite state; the order of each operation is chosen so a crash at any point leaves either
// the old volume or the new one, never a record without its backing:
//   create: backing file first (fsynced), then the record; an orphan file is reported at start-up.
//   resize: grow the backing first, then the record; at start-up a backing larger than its record
//           means the record write was lost, and the backing's size is adopted.
//   delete: the record first, then the backing file.
import fs from "node:fs";
import path from "node:path";
import { BlockError, TandemError } from "../common/errors.ts";
import type { Logger } from "../common/log.ts";
import { isInside, realPathOfExisting } from "../common/paths.ts";
import { formatSize } from "../common/size.ts";
import { volumeCountMax, volumeNamePattern, volumeSizeAlignmentBytes, volumeSizeBytesMax, volumeSizeBytesMin } from "../constants.ts";
import { describeFileType, FileLayer } from "./block/file.ts";
import { type FreezeMode, GateLayer, type GateCounters, type GateState, type QuorumHold } from "./block/gate.ts";
import type { BlockLayer } from "./block/layer.ts";
import { PointInTimeLayer } from "./block/point-in-time.ts";
import type { ExportHandle, ExportInfo, ExportResolver } from "./export/types.ts";
import type { NodeState, VolumeRecord } from "./state.ts";

/** How a volume's replica on one node stands, as `volume list` and `status` report it. */
export interface ReplicaView {
  node: string;
  /** Backing path on that node (undefined when the peer has not said). */
  backing: string | undefined;
  role: "primary" | "secondary";
  /** standalone (not paired) | synced | degraded | resyncing | outdated | split-brain | unknown ... */
  state: string;
  /** Free-form details for status: resync progress, dirty bytes, reasons. */
  detail?: Record<string, unknown>;
}

/**
 * What pairing adds to a volume. Without a peer the node uses `standaloneReplication`: no mirror,
 * the node is every volume's primary. The daemon swaps in the replication-backed implementation.
 */
export interface VolumeReplication {
  /** A new volume's record is written: prepare its replication state (format metadata). */
  create(record: VolumeRecord, options: unknown): Promise<void>;
  /** The volume's record is gone: remove its replication state. */
  destroy(record: VolumeRecord): Promise<void>;
  /** Layers between the local backing and the gate; `local` is returned as-is when unpaired. */
  open(record: VolumeRecord, local: FileLayer): Promise<BlockLayer>;
  /** Called before the stack is closed (the volume is deleted or the node stops). */
  close(record: VolumeRecord): Promise<void>;
  /** Whether this node may write the volume now. */
  mayWrite(record: VolumeRecord): boolean;
  /** One entry per node holding a replica, this node first. */
  replicas(record: VolumeRecord, localBacking: string): ReplicaView[];
}

export function standaloneReplication(nodeName: string): VolumeReplication {
  return {
    create: async () => {},
    destroy: async () => {},
    open: async (_record, local) => local,
    close: async () => {},
    mayWrite: () => true,
    replicas: (_record, backing) => [{ node: nodeName, backing, role: "primary", state: "standalone" }],
  };
}

interface OpenVolume {
  record: VolumeRecord;
  file: FileLayer;
  gate: GateLayer;
  /** Under the gate: holds a copy-out's point-in-time view (src/node/copy-out.ts). */
  pointInTime: PointInTimeLayer;
  handles: Set<Handle>;
}

class Handle implements ExportHandle {
  private released = false;
  private revokeCallbacks: ((reason: string) => void)[] = [];
  readonly sinceMs = Date.now();

  constructor(
    private readonly volumeEntry: OpenVolume,
    readonly client: string,
    private readonly writable: () => boolean,
  ) {}

  get volume(): string {
    return this.volumeEntry.record.name;
  }
  get layer(): BlockLayer {
    return this.volumeEntry.gate;
  }
  readOnly(): boolean {
    return !this.writable();
  }
  release(): void {
    if (this.released) return;
    this.released = true;
    this.volumeEntry.handles.delete(this);
  }
  onRevoke(callback: (reason: string) => void): void {
    this.revokeCallbacks.push(callback);
  }
  revoke(reason: string): void {
    for (const callback of this.revokeCallbacks.splice(0)) callback(reason);
  }
  /** Resolves once the session let go of the handle (or after `timeoutMs`). */
  async waitReleased(timeoutMs: number): Promise<boolean> {
    const deadline = Date.now() + timeoutMs;
    while (!this.released && Date.now() < deadline) await Bun.sleep(10);
    return this.released;
  }
}

export interface CreateVolumeRequest {
  name: string;
  /** Required unless `backing` names an existing file or device. */
  sizeBytes?: number;
  backing?: string;
  direct?: boolean;
  /** Defaults to this node. */
  primary?: string;
  /** Fixed by the node that created the volume when a peer creates its replica. */
  id?: number;
  /** Passed to VolumeReplication.create (the pair's shared initial generation, say). */
  replication?: unknown;
}

export interface VolumeView {
  name: string;
  id: number;
  size: number;
  sizeHuman: string;
  backing: string;
  direct: boolean;
  primary: string;
  epoch: number;
  createdMs: number;
  /** Whether this node may write the volume now. */
  writable: boolean;
  gate: GateState["kind"];
  /** What IO does while the quorum forbids it: wait (suspend) or fail with EIO (error). */
  onFreeze: FreezeMode;
  /** The quorum's hold on the volume now (IO waits or fails), or null. */
  quorumHold: QuorumHold | null;
  sessions: number;
  io: GateCounters;
  nodes: ReplicaView[];
}

export interface VolumeManagerOptions {
  nodeName: string;
  dataDir: string;
  state: NodeState;
  log: Logger;
  replication?: VolumeReplication;
}

export function validateVolumeName(name: string): void {
  if (!volumeNamePattern.test(name)) {
    throw new TandemError("invalid_argument", `invalid volume name "${name}": use 1-63 of a-z 0-9 . _ -, starting with a letter or digit`);
  }
}

export function validateVolumeSize(sizeBytes: number): void {
  if (!Number.isSafeInteger(sizeBytes) || sizeBytes < volumeSizeBytesMin || sizeBytes > volumeSizeBytesMax) {
    throw new TandemError("invalid_argument", `volume size must be between ${formatSize(volumeSizeBytesMin)} and ${formatSize(volumeSizeBytesMax)}`);
  }
  if (sizeBytes % volumeSizeAlignmentBytes !== 0) {
    throw new TandemError("invalid_argument", `volume size must be a multiple of ${formatSize(volumeSizeAlignmentBytes)} (got ${sizeBytes} bytes)`);
  }
}

export class VolumeManager implements ExportResolver {
  private readonly opened = new Map<string, OpenVolume>();
  private readonly busy = new Set<string>();
  private replication: VolumeReplication;
  private readonly log: Logger;
  private closing = false;

  constructor(private readonly options: VolumeManagerOptions) {
    this.replication = options.replication ?? standaloneReplication(options.nodeName);
    this.log = options.log.child("volumes");
    fs.mkdirSync(this.volumeDir, { recursive: true, mode: 0o700 });
  }

  get volumeDir(): string {
    return path.join(this.options.dataDir, "volumes");
  }

  /** Open every recorded volume. A volume whose backing is missing is reported, not fatal. */
  async openAll(): Promise<void> {
    const state = this.options.state;
    const known = new Set<string>();
    for (const record of state.volumes()) {
      known.add(path.resolve(record.backing));
      try {
        await this.openRecord(record);
      } catch (error) {
        this.log.error("volume could not be opened", { volume: record.name, backing: record.backing, error });
        state.addEvent("error", "volume-open-failed", record.name, `cannot open ${record.backing}: ${(error as Error).message}`);
      }
    }
    for (const entry of fs.readdirSync(this.volumeDir)) {
      const file = path.join(this.volumeDir, entry);
      if (entry.endsWith(".img") && !known.has(file)) {
        this.log.warn("backing file without a volume record (an interrupted create); left in place", { file });
      }
    }
  }

  private async openRecord(record: VolumeRecord): Promise<OpenVolume> {
    // The state database is the truth for the role: the quorum may have moved it since the caller
    // read the record (a node that learns at start-up that its peer won demotes every volume).
    record = this.options.state.volumeById(record.id) ?? record;
    const file = FileLayer.open({ path: record.backing, direct: record.direct });
    if (file.ioEngineFallbackReason) this.log.warn("direct IO runs on the thread pool", { volume: record.name, reason: file.ioEngineFallbackReason });
    try {
      if (file.size() > record.sizeBytes && !file.isBlockDevice) {
        // A grow reached the backing but not the record: finish it.
        this.log.warn("backing is larger than its record: completing an interrupted resize", { volume: record.name, from: record.sizeBytes, to: file.size() });
        this.options.state.setVolumeSize(record.name, file.size());
        record = { ...record, sizeBytes: file.size() };
      } else if (file.size() < record.sizeBytes) {
        throw new TandemError("failed_precondition", `backing ${record.backing} is ${file.size()} bytes, smaller than the volume (${record.sizeBytes})`);
      }
      const top = await this.replication.open(record, file);
      const pointInTime = new PointInTimeLayer(top);
      const entry: OpenVolume = { record, file, gate: new GateLayer(pointInTime), pointInTime, handles: new Set() };
      const hold = this.quorumHoldOf?.(record.id);
      if (hold) entry.gate.holdForQuorum(hold, this.freezeMode(record.name));
      entry.gate.beforeRequest = this.beforeRequest;
      this.opened.set(record.name, entry);
      entry.record = this.options.state.volumeById(record.id) ?? record; // moved while it opened?
      return entry;
    } catch (error) {
      await file.close().catch(() => {});
      throw error;
    }
  }

  /** Swap the pairing implementation (the daemon does this once, before `openAll`). */
  setReplication(replication: VolumeReplication): void {
    this.replication = replication;
  }

  private async exclusive<T>(name: string, work: () => Promise<T>): Promise<T> {
    if (this.busy.has(name)) throw new TandemError("failed_precondition", `volume ${name} is busy with another operation; try again`);
    this.busy.add(name);
    try {
      return await work();
    } finally {
      this.busy.delete(name);
    }
  }

  private entry(name: string): OpenVolume {
    const entry = this.opened.get(name);
    if (entry) return entry;
    if (this.options.state.volume(name)) throw new TandemError("failed_precondition", `volume ${name} exists but could not be opened; see the event log`);
    throw new TandemError("not_found", `no volume named ${name}`);
  }

  async create(request: CreateVolumeRequest): Promise<VolumeView> {
    if (this.closing) throw new TandemError("unavailable", "the node is shutting down");
    validateVolumeName(request.name);
    const state = this.options.state;
    return this.exclusive(request.name, async () => {
      if (state.volume(request.name)) throw new TandemError("already_exists", `a volume named ${request.name} already exists`);
      if (state.volumes().length >= volumeCountMax) throw new TandemError("failed_precondition", `this node already has the most volumes it holds (${volumeCountMax})`);
      if (request.id !== undefined && state.volumeById(request.id)) throw new TandemError("already_exists", `volume id ${request.id} is already used here by ${state.volumeById(request.id)!.name}`);
      const owned = request.backing === undefined;
      const backing = path.resolve(request.backing ?? path.join(this.volumeDir, `${request.name}.img`));
      if (!owned) this.checkNamedBacking(backing);
      const taken = state.volumes().find((volume) => path.resolve(volume.backing) === backing);
      if (taken) throw new TandemError("already_exists", `${backing} is already the backing of volume ${taken.name}`);
      let created = false;
      let sizeBytes: number;
      if (fs.existsSync(backing)) {
        if (owned) throw new TandemError("already_exists", `${backing} already exists (left by an interrupted create?); remove it or name it with --backing`);
        const probe = FileLayer.open({ path: backing, readOnly: true });
        const actual = probe.size();
        await probe.close();
        if (actual < volumeSizeBytesMin) throw new TandemError("invalid_argument", `${backing} is too small: it holds ${formatSize(actual)}, the smallest volume is ${formatSize(volumeSizeBytesMin)}`);
        sizeBytes = request.sizeBytes ?? actual - (actual % volumeSizeAlignmentBytes);
        if (sizeBytes > actual) throw new TandemError("invalid_argument", `${backing} is too small for --size ${formatSize(sizeBytes)}: it holds ${formatSize(actual)}`);
        validateVolumeSize(sizeBytes);
      } else {
        if (request.sizeBytes === undefined) throw new TandemError("invalid_argument", "--size is required for a new volume");
        sizeBytes = request.sizeBytes;
        validateVolumeSize(sizeBytes);
        if (!fs.existsSync(path.dirname(backing))) throw new TandemError("invalid_argument", `directory ${path.dirname(backing)} does not exist`);
        try {
          FileLayer.createSparse(backing, sizeBytes);
        } catch (error) {
          throw new TandemError("io_error", `cannot create ${backing}: ${(error as Error).message}`);
        }
        created = true;
      }
      const record: VolumeRecord = {
        name: request.name,
        id: request.id ?? state.allocateVolumeId({ stride: 1, residue: 0 }),
        sizeBytes,
        backing,
        owned: owned || created,
        direct: request.direct === true,
        primary: request.primary ?? this.options.nodeName,
        epoch: 1,
        createdMs: Date.now(),
      };
      try {
        state.transaction(() => {
          state.insertVolume(record);
          state.addEvent("info", "volume-created", record.name, `created ${formatSize(sizeBytes)} on ${backing}`);
        });
      } catch (error) {
        if (created) fs.rmSync(backing, { force: true });
        throw error;
      }
      try {
        await this.replication.create(record, request.replication);
        await this.openRecord(record);
      } catch (error) {
        state.transaction(() => state.deleteVolume(record.name));
        await this.replication.destroy(record).catch(() => {});
        if (created) fs.rmSync(backing, { force: true });
        if (error instanceof TandemError) throw error;
        throw new TandemError("io_error", `volume ${record.name} could not be opened: ${(error as Error).message}`);
      }
      this.log.info("volume created", { volume: record.name, id: record.id, sizeBytes, backing, direct: record.direct });
      return this.view(record.name);
    });
  }

  /**
   * A backing the operator named: a regular file or a block device, outside the node's data
   * directory (state, metadata and default backings live there), and not another volume's backing
   * under another name (real paths are compared, so a symbolic link or a second hard path is caught).
   */
  private checkNamedBacking(backing: string): void {
    let stat: fs.Stats | undefined;
    try {
      stat = fs.statSync(backing);
    } catch {
      // A new file: created below, if its directory exists.
    }
    if (stat && !stat.isFile() && !stat.isBlockDevice()) throw new TandemError("invalid_argument", `${backing} is ${describeFileType(stat)}; a volume needs a regular file or a block device`);
    const real = realPathOfExisting(backing);
    if (isInside(realPathOfExisting(this.options.dataDir), real)) {
      throw new TandemError("invalid_argument", `${backing} is inside the node's data directory ${this.options.dataDir}; name a file or device elsewhere (volumes without --backing are kept there)`);
    }
    for (const volume of this.options.state.volumes()) {
      if (realPathOfExisting(volume.backing) !== real) continue;
      const via = real === backing ? "" : ` (${backing} resolves to ${real})`;
      throw new TandemError("already_exists", `${backing} is already the backing of volume ${volume.name}${via}`);
    }
  }

  async resize(name: string, sizeBytes: number): Promise<VolumeView> {
    validateVolumeSize(sizeBytes);
    return this.exclusive(name, async () => {
      const entry = this.entry(name);
      const current = entry.record.sizeBytes;
      if (sizeBytes < current) throw new TandemError("failed_precondition", `shrinking ${name} from ${formatSize(current)} to ${formatSize(sizeBytes)} would cut off data; only growing is supported`);
      if (sizeBytes === current) return this.view(name);
      if (entry.file.isBlockDevice) {
        if (entry.file.size() < sizeBytes) throw new TandemError("failed_precondition", `device ${entry.record.backing} holds ${formatSize(entry.file.size())}; grow the device first`);
      } else {
        try {
          await entry.gate.resize(sizeBytes);
        } catch (error) {
          throw new TandemError(error instanceof BlockError && error.code === "ENOSPC" ? "no_space" : "io_error", `cannot grow ${entry.record.backing}: ${(error as Error).message}`);
        }
      }
      this.options.state.transaction(() => {
        this.options.state.setVolumeSize(name, sizeBytes);
        this.options.state.addEvent("info", "volume-resized", name, `grown from ${formatSize(current)} to ${formatSize(sizeBytes)}`);
      });
      entry.record = { ...entry.record, sizeBytes };
      this.log.info("volume grown", { volume: name, from: current, to: sizeBytes });
      return this.view(name);
    });
  }

  /**
   * Delete a volume. In use (sessions, or `inUse` says an export holds it) it is refused unless
   * `force`: then sessions are revoked first. `beforeClose` lets the daemon drop exports it owns.
   */
  async delete(name: string, options: { force: boolean; exportsOf: (name: string) => string[]; dropExports: (name: string) => Promise<void> }): Promise<void> {
    return this.exclusive(name, async () => {
      const state = this.options.state;
      const record = state.volume(name);
      if (!record) throw new TandemError("not_found", `no volume named ${name}`);
      const entry = this.opened.get(name);
      if (!options.force) this.refuseInUse(name, options.exportsOf(name));
      await options.dropExports(name);
      if (entry) {
        await this.revokeAll(entry, "volume deleted");
        await this.closeEntry(entry);
      }
      state.transaction(() => {
        state.deleteVolume(name);
        state.addEvent("info", "volume-deleted", name, `deleted${options.force ? " (forced)" : ""}`);
      });
      if (record.owned) fs.rmSync(record.backing, { force: true });
      await this.replication.destroy(record).catch((error) => this.log.warn("removing replication state failed", { volume: name, error }));
      this.log.info("volume deleted", { volume: name, force: options.force, backingRemoved: record.owned });
    });
  }

  /** in_use naming the exports and client sessions that hold the volume, if any do. */
  refuseInUse(name: string, exports: string[]): void {
    const users = [...(this.opened.get(name)?.handles ?? [])].map((handle) => handle.client);
    if (users.length === 0 && exports.length === 0) return;
    const what = [...exports.map((e) => `export ${e}`), ...users.map((u) => `session ${u}`)].join(", ");
    throw new TandemError("in_use", `volume ${name} is in use (${what}); stop them or pass --force`, { exports, sessions: users });
  }

  private async revokeAll(entry: OpenVolume, reason: string): Promise<void> {
    const handles = [...entry.handles];
    for (const handle of handles) handle.revoke(reason);
    await Promise.all(handles.map((handle) => handle.waitReleased(5_000)));
    for (const handle of handles) handle.release();
  }

  private async closeEntry(entry: OpenVolume): Promise<void> {
    this.opened.delete(entry.record.name);
    await entry.gate.shutdown();
    await this.replication.close(entry.record).catch((error) => this.log.error("closing replication failed", { volume: entry.record.name, error }));
    await entry.gate.close();
  }

  /** Shutdown: refuse new sessions, wait for IO below the gates, close every stack. */
  async closeAll(): Promise<void> {
    this.closing = true;
    for (const entry of [...this.opened.values()]) {
      await this.revokeAll(entry, "node shutting down");
      await this.closeEntry(entry);
    }
  }

  /** Runs before every client request on every volume (the quorum catches up with the clock). */
  beforeRequest: (() => void) | undefined;

  /** Why the quorum forbids IO on a volume now (null: it does not); asked when a volume opens. */
  quorumHoldOf: ((id: number) => string | null) | undefined;

  /** The quorum forbids IO on the volume (`reason`), or allows it again (null). Unknown ids are ignored. */
  quorumHold(id: number, reason: string | null): void {
    const entry = this.entryById(id);
    if (!entry) return;
    if (reason === null) entry.gate.releaseQuorumHold();
    else entry.gate.holdForQuorum(reason, this.freezeMode(entry.record.name));
  }

  /** Per volume: what IO does while the quorum forbids it (kept in the state database; default suspend). */
  freezeMode(name: string): FreezeMode {
    return this.options.state.meta(`onFreeze:${name}`) === "error" ? "error" : "suspend";
  }

  setFreezeMode(name: string, mode: FreezeMode): void {
    const entry = this.entry(name);
    this.options.state.setMeta(`onFreeze:${name}`, mode);
    const hold = entry.gate.hold;
    if (hold) entry.gate.holdForQuorum(hold.reason, mode);
  }

  /** The record changed in the state database (the quorum moved the role): reload it. */
  reloadRecord(id: number): void {
    const entry = this.entryById(id);
    const record = this.options.state.volumeById(id);
    if (entry && record) entry.record = record;
  }

  private entryById(id: number): OpenVolume | undefined {
    for (const entry of this.opened.values()) if (entry.record.id === id) return entry;
    return undefined;
  }

  /** The clients with a session on the volume now (export sessions and copy-outs). */
  clientsOf(name: string): string[] {
    return [...this.entry(name).handles].map((handle) => handle.client);
  }

  /**
   * Stop new IO at the gate, wait for the IO in flight, and flush what is below it (a switchover:
   * everything acknowledged is then durable on both replicas). The gate stays frozen until `thaw`.
   */
  async quiesce(name: string, reason: string, timeoutMs: number): Promise<void> {
    const entry = this.entry(name);
    entry.gate.freeze(reason);
    try {
      let timer: ReturnType<typeof setTimeout> | undefined;
      const timedOut = new Promise<"timeout">((resolve) => (timer = setTimeout(() => resolve("timeout"), timeoutMs)));
      const outcome = await Promise.race([entry.gate.idle().then(() => "idle" as const), timedOut]);
      clearTimeout(timer);
      if (outcome === "timeout") throw new TandemError("failed_precondition", `${name}: IO in flight did not drain within ${timeoutMs} ms`);
      await entry.pointInTime.flush();
    } catch (error) {
      entry.gate.thaw();
      throw error;
    }
  }

  freeze(name: string, reason: string): void {
    this.entry(name).gate.freeze(reason);
  }
  thaw(name: string): void {
    this.entry(name).gate.thaw();
  }

  record(name: string): VolumeRecord {
    return this.entry(name).record;
  }

  /** The gate and the point-in-time layer of a volume, for a copy-out to take its point. */
  copyOutLayers(name: string): { gate: GateLayer; pointInTime: PointInTimeLayer } {
    const entry = this.entry(name);
    return { gate: entry.gate, pointInTime: entry.pointInTime };
  }

  names(): string[] {
    return [...this.opened.keys()].sort();
  }

  view(name: string): VolumeView {
    const entry = this.entry(name);
    const record = entry.record;
    return {
      name: record.name,
      id: record.id,
      size: record.sizeBytes,
      sizeHuman: formatSize(record.sizeBytes),
      backing: record.backing,
      direct: record.direct,
      primary: record.primary,
      epoch: record.epoch,
      createdMs: record.createdMs,
      writable: this.replication.mayWrite(record),
      gate: entry.gate.state.kind,
      onFreeze: this.freezeMode(record.name),
      quorumHold: entry.gate.hold ?? null,
      sessions: entry.handles.size,
      io: { ...entry.gate.counters },
      nodes: this.replication.replicas(record, record.backing),
    };
  }

  views(): VolumeView[] {
    return this.names().map((name) => this.view(name));
  }

  /** Volumes recorded but not open (their backing failed), for status. */
  broken(): { name: string; backing: string }[] {
    return this.options.state
      .volumes()
      .filter((record) => !this.opened.has(record.name))
      .map((record) => ({ name: record.name, backing: record.backing }));
  }

  // ---- ExportResolver

  open(name: string, client: string): ExportHandle | undefined {
    if (this.closing) return undefined;
    const entry = this.opened.get(name);
    if (!entry || entry.gate.state.kind === "closed") return undefined;
    const handle = new Handle(entry, client, () => this.replication.mayWrite(entry.record));
    entry.handles.add(handle);
    return handle;
  }

  list(): ExportInfo[] {
    return this.names().map((name) => {
      const record = this.opened.get(name)!.record;
      return { name, description: `Tandem volume ${name}`, sizeBytes: record.sizeBytes };
    });
  }
}
