// Copy-out sessions (`tandem volume copy-out`): a consistent point of a live volume, served as a
// read-only NBD export `NAME@copyout-ID` on the node's NBD socket, so any tool that reads NBD
// (qemu-img convert, nbdcopy) copies the volume as it was at that point while VMs keep writing.
//
// Taking the point: the volume's gate freezes (new requests wait, clients see latency, not errors),
// requests in flight below it finish, the stack is flushed, the point-in-time layer starts
// preserving chunks before their first overwrite, and the gate thaws: every write completed before
// the point is in the view, none after. The freeze lasts one flush; requests in flight get at most
// copyOutPointDrainTimeoutMs to finish, past which no point is taken and IO resumes. The side store
// is a sparse file in the data directory, removed when the session ends: by the CLI, after
// copyOutIdleTimeoutMs with no reader, at shutdown, or (left by a crash) at the next start.
// Copy-out runs on the volume's primary: a secondary's data changes by replication below the
// layer, where no view can hold it.
import fs from "node:fs";
import path from "node:path";
import { customAlphabet } from "nanoid";
import { TandemError } from "../common/errors.ts";
import type { Logger } from "../common/log.ts";
import { copyOutIdleTimeoutMs, copyOutPointDrainTimeoutMs } from "../constants.ts";
import { FileLayer } from "./block/file.ts";
import type { PointInTimeLayer } from "./block/point-in-time.ts";
import type { ExportHandle, ExportInfo, ExportResolver } from "./export/types.ts";
import type { NodeState } from "./state.ts";
import type { VolumeManager } from "./volumes.ts";

const sessionId = customAlphabet("0123456789abcdefghijklmnopqrstuvwxyz", 10);
export const copyOutExportMarker = "@copyout-";

export interface CopyOutInfo {
  id: string;
  volume: string;
  /** The NBD export name of the view on the node's NBD socket. */
  export: string;
  /** When the point was taken (ms since the epoch): the view holds every write completed before it. */
  pointMs: number;
  sizeBytes: number;
  /** Bytes preserved in the side store so far (written to the volume since the point). */
  preservedBytes: number;
  readers: number;
}

interface Session {
  id: string;
  volume: string;
  pointMs: number;
  sizeBytes: number;
  layer: PointInTimeLayer;
  storePath: string;
  lastUsedMs: number;
  readers: Set<{ revoke(reason: string): void }>;
}

export class CopyOuts {
  private readonly sessions = new Map<string, Session>();
  private sweeper: ReturnType<typeof setInterval> | undefined;

  constructor(
    private readonly volumes: VolumeManager,
    private readonly dataDir: string,
    private readonly state: NodeState,
    private readonly log: Logger,
  ) {
    // Side stores left by a daemon that died during a copy-out: their sessions are gone.
    fs.mkdirSync(this.storeDir, { recursive: true, mode: 0o700 });
    for (const entry of fs.readdirSync(this.storeDir)) fs.rmSync(path.join(this.storeDir, entry), { force: true });
  }

  get storeDir(): string {
    return path.join(this.dataDir, "copy-out");
  }

  /** End sessions nobody has used for copyOutIdleTimeoutMs (checked every minute). */
  startSweeper(): void {
    this.sweeper ??= setInterval(() => void this.sweep(Date.now()), 60_000);
  }

  async sweep(nowMs: number): Promise<void> {
    for (const session of [...this.sessions.values()]) {
      if (session.readers.size === 0 && nowMs - session.lastUsedMs > copyOutIdleTimeoutMs) {
        this.log.warn("copy-out ended: nobody used it", { volume: session.volume, id: session.id });
        await this.end(session.id, "idle");
      }
    }
  }

  private describe(session: Session): CopyOutInfo {
    return { id: session.id, volume: session.volume, export: `${session.volume}${copyOutExportMarker}${session.id}`, pointMs: session.pointMs, sizeBytes: session.sizeBytes, preservedBytes: session.layer.preservedBytes(), readers: session.readers.size };
  }

  async begin(volume: string): Promise<CopyOutInfo> {
    const view = this.volumes.view(volume); // not_found for an unknown volume
    const { gate, pointInTime } = this.volumes.copyOutLayers(volume);
    const running = [...this.sessions.values()].find((session) => session.volume === volume);
    if (running || pointInTime.active) throw new TandemError("already_exists", `a copy-out of ${volume} is already running${running ? ` (${running.id})` : ""}`);
    if (!view.writable) throw new TandemError("failed_precondition", `copy-out runs on the primary of ${volume} (${view.primary}); this node's replica changes under it by replication`);
    const resync = view.nodes[0]?.detail?.resync as { direction?: string } | undefined;
    if (resync?.direction === "target") throw new TandemError("failed_precondition", `${volume} is receiving a resync on this node; copy it out once it is synced`);
    if (gate.state.kind !== "open") throw new TandemError("failed_precondition", `IO on ${volume} is ${gate.state.kind}; a copy-out needs it open`);

    const id = sessionId();
    const storePath = path.join(this.storeDir, `${volume}-${id}.img`);
    FileLayer.createSparse(storePath, view.size);
    const store = FileLayer.open({ path: storePath });
    let pointMs: number;
    try {
      gate.freeze(`copy-out ${id}: taking the point`);
      try {
        // A request that never completes below must not keep the volume frozen: give up instead.
        let timer: ReturnType<typeof setTimeout> | undefined;
        const drained = await Promise.race([gate.idle().then(() => true), new Promise<boolean>((resolve) => (timer = setTimeout(() => resolve(false), copyOutPointDrainTimeoutMs)))]);
        clearTimeout(timer);
        if (!drained) throw new TandemError("unavailable", `IO on ${volume} did not drain within ${copyOutPointDrainTimeoutMs / 1000} s; no point was taken, try again`);
        if (pointInTime.capabilities().flush) await pointInTime.flush();
        pointInTime.begin(store);
        pointMs = Date.now();
      } finally {
        gate.thaw();
      }
    } catch (error) {
      await store.close().catch(() => {});
      fs.rmSync(storePath, { force: true });
      throw error;
    }
    const session: Session = { id, volume, pointMs, sizeBytes: view.size, layer: pointInTime, storePath, lastUsedMs: pointMs, readers: new Set() };
    this.sessions.set(id, session);
    this.state.addEvent("info", "copy-out-started", volume, `copy-out ${id}: point taken at ${new Date(pointMs).toISOString()}`);
    return this.describe(session);
  }

  private session(id: string): Session {
    const session = this.sessions.get(id);
    if (!session) throw new TandemError("not_found", `no copy-out ${id} on this node (it ended, or the daemon restarted)`);
    return session;
  }

  info(id: string): CopyOutInfo {
    const session = this.session(id);
    session.lastUsedMs = Date.now();
    return this.describe(session);
  }

  async end(id: string, reason = "done"): Promise<CopyOutInfo> {
    const session = this.session(id);
    const info = this.describe(session);
    this.sessions.delete(id);
    for (const reader of [...session.readers]) reader.revoke(`copy-out ${id} ended`);
    const store = session.layer.end();
    await store?.close().catch(() => {});
    fs.rmSync(session.storePath, { force: true });
    this.state.addEvent("info", "copy-out-ended", session.volume, `copy-out ${id} ended (${reason}); ${info.preservedBytes} bytes were preserved`);
    return info;
  }

  /** Before a volume is deleted: refused while it is being copied out, unless forced (then the copy-out ends). */
  async endFor(volume: string, force: boolean): Promise<void> {
    for (const session of [...this.sessions.values()].filter((candidate) => candidate.volume === volume)) {
      if (!force) throw new TandemError("in_use", `${volume} is being copied out (${session.id}); wait for it, or delete with --force`);
      await this.end(session.id, "volume deleted");
    }
  }

  async endAll(): Promise<void> {
    if (this.sweeper) clearInterval(this.sweeper);
    this.sweeper = undefined;
    for (const id of [...this.sessions.keys()]) await this.end(id, "node stopping");
  }

  /** The node's exports plus the copy-out views (read-only) under their `NAME@copyout-ID` names. */
  resolver(base: ExportResolver): ExportResolver {
    return {
      open: (name, client) => {
        const at = name.indexOf(copyOutExportMarker);
        if (at < 0) return base.open(name, client);
        const session = this.sessions.get(name.slice(at + copyOutExportMarker.length));
        if (!session || session.volume !== name.slice(0, at)) return undefined;
        session.lastUsedMs = Date.now();
        const callbacks: ((reason: string) => void)[] = [];
        const reader = { revoke: (reason: string) => callbacks.splice(0).forEach((callback) => callback(reason)) };
        session.readers.add(reader);
        const layer = session.layer.view();
        const handle: ExportHandle = {
          volume: name,
          layer,
          readOnly: () => true,
          release: () => {
            session.readers.delete(reader);
            session.lastUsedMs = Date.now();
          },
          onRevoke: (callback) => callbacks.push(callback),
        };
        return handle;
      },
      list: (): ExportInfo[] => [
        ...base.list(),
        ...[...this.sessions.values()].map((session) => ({ name: `${session.volume}${copyOutExportMarker}${session.id}`, description: `${session.volume} as of ${new Date(session.pointMs).toISOString()} (copy-out, read-only)`, sizeBytes: session.sizeBytes })),
      ],
    };
  }
}
