// The status assessment (src/node/control/status.ts) from plain views: the health a monitoring
// script reads (and `tandem status` exits with), and per volume whether this node can write it,
// why not, and the next safe step; plus the text rendering's one line per volume.
import { describe, expect, test } from "bun:test";
import { renderStatus, statusExitCodes, writeSummary } from "../../src/cli/commands/status.ts";
import { type AssessInput, assessStatus, type LinkReport, type StatusReport, statusSchemaVersion } from "../../src/node/control/status.ts";
import type { ReplicaView, VolumeView } from "../../src/node/volumes.ts";

const io = { readOps: 0, readBytes: 0, writeOps: 0, writeBytes: 0, flushOps: 0, trimOps: 0, zeroOps: 0, errors: 0 };

function view(name: string, nodes: ReplicaView[], options: Partial<VolumeView> = {}): VolumeView {
  return { name, id: 1, size: 1 << 20, sizeHuman: "1 MiB", backing: `/d/${name}.img`, direct: false, primary: "a", epoch: 0, createdMs: 0, writable: true, gate: "open", onFreeze: "suspend", quorumHold: null, sessions: 0, io, nodes, ...options };
}
const link = (connected: boolean): LinkReport => ({ state: connected ? "up" : "down", connected, peer: "b", sinceMs: 0, rttMs: connected ? 0.4 : null });
const pair = (a: string, b: string, options: Partial<VolumeView> = {}, detail?: Record<string, unknown>) =>
  view("vm", [{ node: "a", backing: "/d/vm.img", role: options.primary === "b" ? "secondary" : "primary", state: a, detail }, { node: "b", backing: undefined, role: options.primary === "b" ? "primary" : "secondary", state: b }], options);
const paired = (volumes: VolumeView[], connected = true, broken: AssessInput["broken"] = []): AssessInput => ({ nodeName: "a", peerName: "b", link: link(connected), volumes, pending: [], broken });

describe("health", () => {
  test("a standalone node with open volumes is healthy; everything writable", () => {
    const result = assessStatus({ nodeName: "a", peerName: null, link: null, volumes: [view("x", [{ node: "a", backing: "/d/x.img", role: "primary", state: "standalone" }])], pending: [], broken: [] });
    expect(result.health).toEqual({ state: "healthy", reasons: [] });
    expect(result.volumes[0]!.access).toEqual({ write: true, reason: null, next: null });
  });

  test("a synced pair is healthy on the primary and on the secondary, which cannot write and says where to go", () => {
    expect(assessStatus(paired([pair("synced", "synced")])).health.state).toBe("healthy");
    const secondary = assessStatus(paired([pair("synced", "synced", { primary: "b", writable: false })]));
    expect(secondary.health.state).toBe("healthy");
    expect(secondary.volumes[0]!.access).toEqual({ write: false, reason: "secondary replica (synced); b is the primary", next: "serve it from b" });
  });

  test("the link down: degraded, the primary still writes but says its writes are not mirrored and what to do", () => {
    const result = assessStatus(paired([pair("degraded", "unknown")], false));
    expect(result.health.state).toBe("degraded");
    expect(result.health.reasons).toEqual(["replication link to b is down", "vm: degraded"]);
    expect(result.volumes[0]!.access.write).toBe(true);
    expect(result.volumes[0]!.access.reason).toContain("not mirrored");
    expect(result.volumes[0]!.access.next).toBe("restore the link to b; it resyncs on its own");
  });

  test("resyncing is degraded, with the progress in the reason", () => {
    const result = assessStatus(paired([pair("resyncing", "resyncing", {}, { progress: "42% at 10.0 MiB/s, ETA 3s" })]));
    expect(result.health).toEqual({ state: "degraded", reasons: ["vm: resyncing"] });
    expect(result.volumes[0]!.access.reason).toBe("resyncing to b (42% at 10.0 MiB/s, ETA 3s): the peer's replica is not yet a full copy");
  });

  test("a primary whose IO is frozen has no quorum", () => {
    const result = assessStatus(paired([pair("synced", "synced", { gate: "frozen", writable: true })]));
    expect(result.health.state).toBe("no-quorum");
    expect(result.volumes[0]!.access.write).toBe(false);
    expect(result.health.reasons[0]).toStartWith("vm: a is its primary but cannot write (IO is frozen");
  });

  test("split brain names the resolve command, keeping the side that still writes", () => {
    const result = assessStatus(paired([pair("split-brain", "split-brain")]));
    expect(result.health.state).toBe("degraded");
    expect(result.volumes[0]!.access.next).toBe("tandem volume resolve vm --keep a (the other side's writes since the split are discarded)");
  });

  test("an unfinished mirrored create is degraded, with its next step", () => {
    const input = { ...paired([]), pending: [{ volume: "vm9", id: 9, state: "create-pending" as const, node: "b", sinceMs: null, next: "finishes when b is reachable again" }] };
    expect(assessStatus(input).health).toEqual({ state: "degraded", reasons: ["vm9: create-pending on b: finishes when b is reachable again"] });
  });

  test("a volume that could not be opened is degraded", () => {
    const result = assessStatus(paired([], true, [{ name: "gone", backing: "/d/gone.img" }]));
    expect(result.health).toEqual({ state: "degraded", reasons: ["gone: could not be opened (backing /d/gone.img)"] });
  });

  test("exit codes: healthy 0, degraded 6, no quorum 7", () => {
    expect(statusExitCodes).toEqual({ healthy: 0, degraded: 6, "no-quorum": 7 });
  });
});

describe("text", () => {
  test("one line per volume: whether it can write, why not, and the next step", () => {
    const assessed = assessStatus(paired([pair("degraded", "unknown"), { ...pair("synced", "synced", { primary: "b", writable: false }), name: "db" }], false));
    const report: StatusReport = {
      schemaVersion: statusSchemaVersion,
      timeMs: 0,
      health: assessed.health,
      quorum: { state: "not-configured" },
      node: { name: "a", version: "0.1.0", pid: 1, uptimeMs: 61_000, dataDir: "/d", config: "/c", controlSocket: "/c.sock", nbdSocket: "/n.sock", nbdTcp: null, peer: { name: "b", address: "h:1" }, link: link(false) },
      volumes: assessed.volumes,
      pending: [],
      broken: [],
      exports: [],
      sessions: [],
    };
    const text = renderStatus(report);
    expect(text.split("\n")[0]).toBe("node a (tandem 0.1.0, pid 1, up 1m01s): DEGRADED");
    expect(text).toContain("  ! replication link to b is down");
    const vm = text.split("\n").find((line) => line.startsWith("vm "))!;
    expect(vm).toContain(writeSummary(assessed.volumes[0]!));
    expect(vm).toEndWith("yes, but peer b unreachable: writes are not mirrored (kept in the dirty bitmap); next: restore the link to b; it resyncs on its own");
    const db = text.split("\n").find((line) => line.startsWith("db "))!;
    expect(db).toEndWith("NO: secondary replica (synced); b is the primary; next: serve it from b");
  });
});
