// Status reports for the dashboard's tests, built the way the daemon builds them (assessStatus over
// volume views), for the states an operator meets: healthy, degraded (link cut), resyncing at a
// given progress, split brain, a standalone node.
import { assessStatus, type LinkReport, type StatusReport, statusSchemaVersion } from "../../src/node/control/status.ts";
import type { EventRecord } from "../../src/node/state.ts";
import type { ReplicaView, VolumeView } from "../../src/node/volumes.ts";

export const fixtureTimeMs = Date.UTC(2026, 0, 15, 12, 0, 0);

export interface VolumeFixture {
  name: string;
  primary?: string;
  local: string;
  remote?: string;
  readBytes?: number;
  writeBytes?: number;
  resync?: { direction: "source" | "target"; bytesCopied: number; bytesRemaining: number; rateBytesPerSecond: number; etaSeconds?: number };
  dirtyBytes?: number;
}

export function statusFixture(options: { node?: string; peer?: string | null; linkUp?: boolean; volumes: VolumeFixture[]; timeMs?: number; linkSinceMs?: number }): StatusReport {
  const node = options.node ?? "a";
  const peer = options.peer === undefined ? "b" : options.peer;
  const link: LinkReport | null = peer === null ? null : { state: options.linkUp === false ? "down" : "up", connected: options.linkUp !== false, peer, sinceMs: options.linkSinceMs ?? fixtureTimeMs - 60_000, rttMs: options.linkUp === false ? null : 0.4 };
  const views: VolumeView[] = options.volumes.map((volume, index) => {
    const primary = volume.primary ?? node;
    const detail: Record<string, unknown> = { dirtyBytes: volume.dirtyBytes ?? 0 };
    if (volume.resync) detail.resync = volume.resync;
    const nodes: ReplicaView[] = [{ node, backing: `/var/lib/tandem/volumes/${volume.name}.img`, role: primary === node ? "primary" : "secondary", state: volume.local, detail }];
    if (peer !== null) nodes.push({ node: peer, backing: undefined, role: primary === peer ? "primary" : "secondary", state: volume.remote ?? volume.local });
    return {
      name: volume.name,
      id: index + 1,
      size: 1 << 30,
      sizeHuman: "1 GiB",
      backing: `/var/lib/tandem/volumes/${volume.name}.img`,
      direct: false,
      primary,
      epoch: 0,
      createdMs: fixtureTimeMs - 3_600_000,
      writable: primary === node,
      gate: "open",
      onFreeze: "suspend",
      quorumHold: null,
      sessions: 0,
      io: { readOps: (volume.readBytes ?? 0) / 4096, readBytes: volume.readBytes ?? 0, writeOps: (volume.writeBytes ?? 0) / 4096, writeBytes: volume.writeBytes ?? 0, flushOps: 0, trimOps: 0, zeroOps: 0, errors: 0 },
      nodes,
    };
  });
  const assessed = assessStatus({ nodeName: node, peerName: peer, link, volumes: views, pending: [], broken: [] });
  return {
    schemaVersion: statusSchemaVersion,
    timeMs: options.timeMs ?? fixtureTimeMs,
    health: assessed.health,
    quorum: { state: "not-configured" },
    node: { name: node, version: "0.1.0", pid: 1, uptimeMs: 3_600_000, dataDir: "/var/lib/tandem", config: "/etc/tandem/node.toml", controlSocket: "/run/tandem/control.sock", nbdSocket: "/run/tandem/nbd.sock", nbdTcp: null, peer: peer === null ? null : { name: peer, address: "10.99.0.2:7788" }, link },
    volumes: assessed.volumes,
    pending: [],
    broken: [],
    exports: [],
    sessions: [],
  };
}

export function eventsFixture(count: number): EventRecord[] {
  return Array.from({ length: count }, (_, index) => ({ id: index + 1, timeMs: fixtureTimeMs - (count - index) * 1000, level: index % 5 === 4 ? "warn" : "info", kind: "test-event", volume: null, message: `event number ${index + 1}` }));
}
