// The node's persistent state: its volumes (name, id, size, backing, options, role), the intents of
// mirrored creates and deletes still to be finished on the peer (pairing.ts), the volume id counter,
// the exports that must come back after a restart, and an event log. One SQLite database in the data directory,
// in WAL mode with synchronous=FULL, so a committed change survives a crash or power loss and a
// half-made change is never seen (each operation is one transaction). Volume data never goes here.
import { Database } from "bun:sqlite";
import { assert } from "../common/assert.ts";
import { eventLogEntriesMax, volumeIdMax } from "../constants.ts";

export interface VolumeRecord {
  name: string;
  /** Stable number naming the volume on the replication link; the same on both nodes. */
  id: number;
  sizeBytes: number;
  /** Path of the backing file or block device. */
  backing: string;
  /** The node created the backing file (and deletes it with the volume). */
  owned: boolean;
  direct: boolean;
  /** Name of the node that is the volume's primary. */
  primary: string;
  /** Epoch of the current role assignment; each promotion starts a new one. */
  epoch: number;
  createdMs: number;
}

/**
 * A mirrored create or delete that is not finished on both nodes (see intents.ts for what each
 * operation means and how it completes). At most one per volume name; written in the same
 * transaction as the step it announces comes before, so a crash never leaves work without its intent.
 */
export interface IntentRecord {
  volume: string;
  id: number;
  operation: "create" | "replica" | "delete";
  /** The backing file this node made for the volume and removes with it (on a roll-back or a
   * delete); null when the backing existed before (an operator's file or device is never removed). */
  ownedBacking: string | null;
  /** delete: the operator forced it, so the peer drops its replica even while it is in use. */
  force: boolean;
  sinceMs: number;
}

export interface VhostExportRecord {
  volume: string;
  socketPath: string;
  queues: number;
}

export interface EventRecord {
  id: number;
  timeMs: number;
  level: "info" | "warn" | "error";
  kind: string;
  volume: string | null;
  message: string;
}

const schema = [
  `CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)`,
  `CREATE TABLE IF NOT EXISTS volumes (
     name TEXT PRIMARY KEY, id INTEGER NOT NULL UNIQUE, size_bytes INTEGER NOT NULL, backing TEXT NOT NULL,
     owned INTEGER NOT NULL, direct INTEGER NOT NULL, primary_node TEXT NOT NULL, epoch INTEGER NOT NULL,
     created_ms INTEGER NOT NULL)`,
  `CREATE TABLE IF NOT EXISTS vhost_exports (
     volume TEXT PRIMARY KEY REFERENCES volumes(name) ON DELETE CASCADE, socket_path TEXT NOT NULL UNIQUE,
     queues INTEGER NOT NULL)`,
  `CREATE TABLE IF NOT EXISTS intents (
     volume TEXT PRIMARY KEY, id INTEGER NOT NULL, operation TEXT NOT NULL CHECK (operation IN ('create', 'replica', 'delete')),
     owned_backing TEXT, force INTEGER NOT NULL, since_ms INTEGER NOT NULL)`,
  `CREATE TABLE IF NOT EXISTS events (
     id INTEGER PRIMARY KEY AUTOINCREMENT, time_ms INTEGER NOT NULL, level TEXT NOT NULL, kind TEXT NOT NULL,
     volume TEXT, message TEXT NOT NULL)`,
];

/** 2 added the intents table and the volume id counter (meta `volumeIdNext`); a version 1 database is upgraded in place. */
const schemaVersion = "2";
const upgradableVersions = new Set(["1"]);

interface VolumeRow {
  name: string;
  id: number;
  size_bytes: number;
  backing: string;
  owned: number;
  direct: number;
  primary_node: string;
  epoch: number;
  created_ms: number;
}

interface IntentRow {
  volume: string;
  id: number;
  operation: IntentRecord["operation"];
  owned_backing: string | null;
  force: number;
  since_ms: number;
}

function toIntent(row: IntentRow): IntentRecord {
  return { volume: row.volume, id: row.id, operation: row.operation, ownedBacking: row.owned_backing, force: row.force === 1, sinceMs: row.since_ms };
}

function toVolume(row: VolumeRow): VolumeRecord {
  return {
    name: row.name,
    id: row.id,
    sizeBytes: row.size_bytes,
    backing: row.backing,
    owned: row.owned === 1,
    direct: row.direct === 1,
    primary: row.primary_node,
    epoch: row.epoch,
    createdMs: row.created_ms,
  };
}

export class NodeState {
  private readonly db: Database;

  constructor(file: string, private readonly now: () => number = Date.now) {
    this.db = new Database(file, { create: true, strict: true });
    this.db.run("PRAGMA journal_mode = WAL");
    this.db.run("PRAGMA synchronous = FULL");
    this.db.run("PRAGMA foreign_keys = ON");
    this.db.transaction(() => {
      for (const statement of schema) this.db.run(statement);
      const version = this.db.query<{ value: string }, []>("SELECT value FROM meta WHERE key = 'schema'").get();
      if (!version) this.db.run("INSERT INTO meta (key, value) VALUES ('schema', ?)", [schemaVersion]);
      else if (upgradableVersions.has(version.value)) this.db.run("UPDATE meta SET value = ? WHERE key = 'schema'", [schemaVersion]);
      else if (version.value !== schemaVersion) throw new Error(`state database has schema ${version.value}, this build knows ${schemaVersion}`);
    })();
  }

  close(): void {
    this.db.close();
  }

  /** A value kept across restarts (the node's identity, say). */
  meta(key: string): string | undefined {
    return this.db.query<{ value: string }, [string]>("SELECT value FROM meta WHERE key = ?").get(key)?.value;
  }

  setMeta(key: string, value: string): void {
    this.db.run("INSERT INTO meta (key, value) VALUES (?, ?) ON CONFLICT(key) DO UPDATE SET value = excluded.value", [key, value]);
  }

  volumes(): VolumeRecord[] {
    return this.db.query<VolumeRow, []>("SELECT * FROM volumes ORDER BY name").all().map(toVolume);
  }

  volume(name: string): VolumeRecord | undefined {
    const row = this.db.query<VolumeRow, [string]>("SELECT * FROM volumes WHERE name = ?").get(name);
    return row ? toVolume(row) : undefined;
  }

  volumeById(id: number): VolumeRecord | undefined {
    const row = this.db.query<VolumeRow, [number]>("SELECT * FROM volumes WHERE id = ?").get(id);
    return row ? toVolume(row) : undefined;
  }

  /**
   * Take a new volume id: above every id this node has handed out, received or seen in an intent
   * (the counter only grows, so a deleted volume's id is never used again), and in this node's share
   * of the ids, `id % stride === residue` (a pair splits the ids between its nodes, so the two can
   * create volumes at the same moment without ever choosing the same id). Call inside a transaction
   * with the write that uses the id.
   */
  allocateVolumeId(share: { stride: number; residue: number }): number {
    assert(share.stride >= 1 && share.residue >= 0 && share.residue < share.stride, "a volume id share is a residue class");
    let id = this.volumeIdFloor();
    id += (share.residue - (id % share.stride) + share.stride) % share.stride;
    if (id > volumeIdMax) throw new Error(`volume ids are exhausted (the largest is ${volumeIdMax})`);
    this.noteVolumeId(id);
    return id;
  }

  /** Remember that `id` is taken (a peer allocated it), so this node never hands it out. */
  noteVolumeId(id: number): void {
    if (id + 1 > this.volumeIdFloor()) this.setMeta("volumeIdNext", String(id + 1));
  }

  private volumeIdFloor(): number {
    const used = this.db.query<{ id: number | null }, []>("SELECT MAX(id) AS id FROM (SELECT id FROM volumes UNION ALL SELECT id FROM intents)").get();
    return Math.max(Number(this.meta("volumeIdNext") ?? "1"), (used?.id ?? 0) + 1);
  }

  intents(): IntentRecord[] {
    return this.db.query<IntentRow, []>("SELECT * FROM intents ORDER BY volume").all().map(toIntent);
  }

  intent(volume: string): IntentRecord | undefined {
    const row = this.db.query<IntentRow, [string]>("SELECT * FROM intents WHERE volume = ?").get(volume);
    return row ? toIntent(row) : undefined;
  }

  /** Record (or replace) the intent on `intent.volume`. */
  putIntent(intent: IntentRecord): void {
    this.db.run(
      `INSERT INTO intents (volume, id, operation, owned_backing, force, since_ms) VALUES (?, ?, ?, ?, ?, ?)
       ON CONFLICT(volume) DO UPDATE SET id = excluded.id, operation = excluded.operation, owned_backing = excluded.owned_backing,
         force = excluded.force, since_ms = excluded.since_ms`,
      [intent.volume, intent.id, intent.operation, intent.ownedBacking, intent.force ? 1 : 0, intent.sinceMs],
    );
  }

  /** Drop the intent on `volume`, only if it is still the one for volume id `id`. */
  deleteIntent(volume: string, id: number): void {
    this.db.run("DELETE FROM intents WHERE volume = ? AND id = ?", [volume, id]);
  }

  insertVolume(volume: VolumeRecord): void {
    this.db.run(
      `INSERT INTO volumes (name, id, size_bytes, backing, owned, direct, primary_node, epoch, created_ms)
       VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)`,
      [volume.name, volume.id, volume.sizeBytes, volume.backing, volume.owned ? 1 : 0, volume.direct ? 1 : 0, volume.primary, volume.epoch, volume.createdMs],
    );
  }

  setVolumeSize(name: string, sizeBytes: number): void {
    this.db.run("UPDATE volumes SET size_bytes = ? WHERE name = ?", [sizeBytes, name]);
  }

  setVolumeRole(name: string, primary: string, epoch: number): void {
    this.db.run("UPDATE volumes SET primary_node = ?, epoch = ? WHERE name = ?", [primary, epoch, name]);
  }

  deleteVolume(name: string): void {
    this.db.run("DELETE FROM volumes WHERE name = ?", [name]);
  }

  vhostExports(): VhostExportRecord[] {
    return this.db
      .query<{ volume: string; socket_path: string; queues: number }, []>("SELECT * FROM vhost_exports ORDER BY volume")
      .all()
      .map((row) => ({ volume: row.volume, socketPath: row.socket_path, queues: row.queues }));
  }

  insertVhostExport(record: VhostExportRecord): void {
    this.db.run("INSERT INTO vhost_exports (volume, socket_path, queues) VALUES (?, ?, ?)", [record.volume, record.socketPath, record.queues]);
  }

  deleteVhostExport(volume: string): void {
    this.db.run("DELETE FROM vhost_exports WHERE volume = ?", [volume]);
  }

  addEvent(level: EventRecord["level"], kind: string, volume: string | null, message: string): void {
    this.db.run("INSERT INTO events (time_ms, level, kind, volume, message) VALUES (?, ?, ?, ?, ?)", [this.now(), level, kind, volume, message]);
    this.db.run("DELETE FROM events WHERE id <= (SELECT MAX(id) FROM events) - ?", [eventLogEntriesMax]);
  }

  events(limit: number): EventRecord[] {
    return this.db
      .query<{ id: number; time_ms: number; level: EventRecord["level"]; kind: string; volume: string | null; message: string }, [number]>(
        "SELECT * FROM (SELECT * FROM events ORDER BY id DESC LIMIT ?) ORDER BY id",
      )
      .all(limit)
      .map((row) => ({ id: row.id, timeMs: row.time_ms, level: row.level, kind: row.kind, volume: row.volume, message: row.message }));
  }

  /** Run `work` as one transaction: all of it is committed, or none. */
  transaction<T>(work: () => T): T {
    return this.db.transaction(work)();
  }
}
