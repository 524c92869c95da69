// The status assessment under the witness quorum (src/node/control/status.ts): the health — and so
// `tandem status`'s exit code (0 healthy, 6 degraded, 7 no quorum) — follows the quorum; a volume the
// quorum freezes says it cannot write, why, and the next safe step; the text rendering shows the
// state, epoch, data holders, witness and timings with the lease margin.
import { describe, expect, test } from "bun:test";
import { forceDiscards } from "../../src/cli/commands/failover.ts";
import { quorumLines, statusExitCodes } from "../../src/cli/commands/status.ts";
import { type AssessInput, assessStatus, type QuorumLeaseReport } from "../../src/node/control/status.ts";
import type { VolumeView } from "../../src/node/volumes.ts";
import { screenLines } from "../../src/tui/lines.ts";
import { initialState, reduce } from "../../src/tui/state.ts";
import { fixtureTimeMs, statusFixture } from "../helpers/status-fixtures.ts";

const io = { readOps: 0, readBytes: 0, writeOps: 0, writeBytes: 0, flushOps: 0, trimOps: 0, zeroOps: 0, errors: 0 };
const volume = (options: Partial<VolumeView> = {}): VolumeView => ({
  name: "vm",
  id: 1,
  size: 1 << 20,
  sizeHuman: "1 MiB",
  backing: "/d/vm.img",
  direct: false,
  primary: "a",
  epoch: 2,
  createdMs: 0,
  writable: true,
  gate: "open",
  onFreeze: "suspend",
  quorumHold: null,
  sessions: 1,
  io,
  nodes: [
    { node: "a", backing: "/d/vm.img", role: "primary", state: "synced" },
    { node: "b", backing: undefined, role: "secondary", state: "synced" },
  ],
  ...options,
});
const input = (quorum: AssessInput["quorum"], volumes = [volume()], connected = true): AssessInput => ({
  nodeName: "a",
  peerName: "b",
  link: { state: connected ? "up" : "down", connected, peer: "b", sinceMs: 0, rttMs: null },
  volumes,
  pending: [],
  broken: [],
  quorum,
});
const quorum = (state: QuorumLeaseReport["state"], witnessReachable = true, reason = "connected to b", nextSafeAction: string | null = null) => ({ state, reason, nextSafeAction, witnessReachable, witnessFailure: witnessReachable ? null : "EIO" });
const exitOf = (assessInput: AssessInput) => statusExitCodes[assessStatus(assessInput).health.state];

describe("health follows the quorum", () => {
  test("shared with the witness reachable: healthy, exit 0", () => {
    expect(assessStatus(input(quorum("shared"))).health).toEqual({ state: "healthy", reasons: [] });
    expect(exitOf(input(quorum("shared")))).toBe(0);
  });

  test("witness lost with the link up: IO goes on, degraded (exit 6) and says so", () => {
    const result = assessStatus(input(quorum("shared", false)));
    expect(result.health.state).toBe("degraded");
    expect(result.health.reasons).toContain("witness lost: EIO");
    expect(result.volumes[0]!.access.write).toBe(true);
    expect(exitOf(input(quorum("shared", false)))).toBe(6);
  });

  test("solo (this node won the lease): degraded, exit 6", () => {
    const solo = input(quorum("solo", true, "owns epoch 3 alone"), [volume({ nodes: [{ node: "a", backing: "/d/vm.img", role: "primary", state: "degraded" }] })], false);
    expect(assessStatus(solo).health.state).toBe("degraded");
    expect(exitOf(solo)).toBe(6);
  });

  test("frozen (the loser, outdated): no quorum, exit 7; the volume says why and what to do", () => {
    const hold = { reason: "a won epoch 3: this node is outdated until it resyncs", mode: "suspend" as const, sinceMs: 0 };
    const next = "wait for a (the only data holder) to return";
    const frozen = input(quorum("frozen", true, hold.reason, next), [volume({ primary: "a", writable: false, quorumHold: hold })], false);
    const result = assessStatus(frozen);
    expect(result.health.state).toBe("no-quorum");
    expect(exitOf(frozen)).toBe(7);
    expect(result.volumes[0]!.access).toEqual({ write: false, reason: `frozen by the quorum: ${hold.reason} (clients wait, they get no errors)`, next });
  });

  test("link and witness lost: NO QUORUM, exit 7", () => {
    const lost = input(quorum("no-quorum", false, "no quorum: the link to b and the witness are both lost"), [volume({ quorumHold: { reason: "no quorum", mode: "error", sinceMs: 0 } })], false);
    const result = assessStatus(lost);
    expect(result.health.state).toBe("no-quorum");
    expect(result.health.reasons.some((reason) => reason.startsWith("NO QUORUM: "))).toBe(true);
    expect(result.volumes[0]!.access.reason).toContain("clients get EIO (onFreeze error)");
    expect(exitOf(lost)).toBe(7);
  });
});

test("the text shows the quorum state, epoch, data holders, witness, timings and lease margin", () => {
  const report = {
    state: "solo",
    epoch: 3,
    phase: "owner",
    reason: "owns epoch 3 alone",
    version: 3,
    record: "SOLO(a), epoch 3, data holders: a",
    dataHolders: ["a"],
    outdated: false,
    nextSafeAction: null,
    leaseRemainingMs: 2400,
    peerHeartbeat: { value: "9", stillForMs: 600, fencedEpoch: "3" },
    witness: { path: "/dev/disk/by-id/witness", reachable: true, failure: null, lastReadAgeMs: 120, lastWriteAgeMs: 80, lastHeartbeatAgeMs: 80, outstandingMs: null, latency: { count: 9, lastMs: 0.4, p50Ms: 0.4, p99Ms: 1.2, maxMs: 1.2, failures: 0 }, writeLatency: { count: 9, lastMs: 0.9, p50Ms: 0.9, p99Ms: 2, maxMs: 2, failures: 0 } },
    timing: { heartbeatIntervalMs: 500, linkTimeoutMs: 1500, headStartMs: 1000, selfFenceTimeoutMs: 3000, deadTimeoutMs: 5000, leaseMarginMs: 1361 },
  } as unknown as QuorumLeaseReport;
  const text = quorumLines(report).join("\n");
  expect(text).toContain("SOLO, epoch 3 (SOLO(a), epoch 3, data holders: a): owns epoch 3 alone");
  expect(text).toContain("holders  a");
  expect(text).toContain("/dev/disk/by-id/witness: reachable, last write 80 ms ago, read p50 0.4 ms p99 1.2 ms, write p50 0.9 ms");
  expect(text).toContain("lease margin 1361 ms; lease left 2400 ms");
});

test("the TUI dashboard shows the quorum state, epoch, data holders, witness and margin", () => {
  const status = statusFixture({ volumes: [{ name: "vm1", local: "degraded" }], linkUp: false });
  const solo = { state: "solo", epoch: 3, reason: "owns epoch 3 alone", dataHolders: ["a"], witness: { reachable: true, lastWriteAgeMs: 80 }, timing: { leaseMarginMs: 1361 } } as unknown as QuorumLeaseReport;
  const state = reduce(initialState("/s", fixtureTimeMs), { kind: "snapshot", status: { ...status, quorum: solo }, events: [], atMs: fixtureTimeMs });
  const text = screenLines(state, 100, 30)
    .map((line) => line.map((part) => part.text).join(""))
    .join("\n");
  expect(text).toContain("quorum SOLO epoch 3   data a   witness ok (write 80 ms ago)   margin 1361 ms");
});

test("tandem failover --force states what it discards, from the status report", () => {
  const base = statusFixture({ node: "b", peer: "a", linkUp: false, volumes: [{ name: "vm1", primary: "a", local: "degraded", dirtyBytes: 8192 }] });
  const waiting = { state: "frozen", epoch: 5, dataHolders: ["a"] } as unknown as QuorumLeaseReport;
  expect(forceDiscards({ ...base, quorum: waiting }, "vm1")).toBe("every write a made since epoch 5 — an unknown number of regions while a is unreachable; they are overwritten by this node's data when a returns. This node's own unmirrored data: 8192 bytes");
  for (const holders of [["a", "b"], ["b"]]) {
    const holder = { state: "frozen", epoch: 5, dataHolders: holders } as unknown as QuorumLeaseReport;
    expect(forceDiscards({ ...base, quorum: holder }, "vm1")).toBe("nothing: b holds the latest data (epoch 5)");
  }
});
