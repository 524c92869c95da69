// The witness quorum wired to the replica core (DESIGN.md §5), row by row of its failure table, as
// scripted scenarios: two real replica drivers (test/sim/scenario.ts) whose write authority is the
// quorum (src/node/replica/quorum-authority.ts → src/quorum/driver.ts → lease core) over one
// simulated witness, with the quorum's messages riding the replication link. Each test states the
// fault, then checks who writes, who stays frozen, what the clients were told, the roles that moved
// and the data on both disks — and the simulated time from the fault to resumed IO against the
// targets of the default timings (link cut ≤ 3 s, node death ≤ 8 s).
import { describe, expect, test } from "bun:test";
import { TandemError } from "../../src/common/errors.ts";
import { Scenario } from "../sim/scenario.ts";

const quorumPair = (options: { volumes?: number[]; primaryB?: number[] } = {}) => {
  const scenario = new Scenario({ volumes: options.volumes ?? [1], quorum: {} });
  // Connected, in sync, and SHARED recorded on the witness with both nodes as data holders.
  const shared = (name: "a" | "b") => scenario.quorumOf(name).status().quorum === "shared" && scenario.quorumOf(name).status().dataHolders.length === 2;
  scenario.runUntil(() => shared("a") && shared("b") && scenario.isSynced(), "both nodes connected and SHARED under the quorum", 10_000);
  return scenario;
};

const grantOf = (scenario: Scenario, name: "a" | "b", volumeId = 1) => scenario.quorumOf(name).grant(volumeId);

describe("the failure table, under the quorum", () => {
  test("connected: the primary writes mirrored in the SHARED epoch; the secondary may only read", () => {
    const scenario = quorumPair();
    const epoch = Number(scenario.quorumOf("a").status().epoch);
    expect(epoch).toBeGreaterThan(0);
    expect(grantOf(scenario, "a")).toEqual({ kind: "write", epoch });
    expect(grantOf(scenario, "b").kind).toBe("read");
    const write = scenario.complete(scenario.write("a", 1));
    expect(write.error).toBeNull();
    expect(write.info?.mirrored).toBe(true);
    expect(scenario.blockValue("b", 1)).toBe(write.tag);
    expect(scenario.messages.some((entry) => entry.message.type === 10)).toBe(true); // MessageType.Quorum on the link
  });

  test("replication link cut: both freeze at once; the node serving more volumes wins and resumes; the other stays frozen, outdated", () => {
    const scenario = quorumPair();
    scenario.complete(scenario.write("a", 1));
    const cutAtUs = scenario.nowUs;
    scenario.network.partition(60_000_000);
    const during = scenario.write("a", 2);
    scenario.runUntil(() => grantOf(scenario, "a").kind === "frozen" || during.done, "a freezes");
    expect(during.done).toBe(false);
    scenario.complete(during, 10_000);
    const resumedMs = (scenario.nowUs - cutAtUs) / 1000;
    expect(during.error).toBeNull();
    expect(during.info?.mirrored).toBe(false);
    expect(resumedMs).toBeLessThanOrEqual(3000);
    expect(scenario.quorumOf("a").status().quorum).toBe("solo");
    scenario.runUntil(() => scenario.quorumOf("b").status().phase === "outdated", "b learns it lost");
    expect(grantOf(scenario, "b").kind).toBe("frozen");
    expect(scenario.quorumOf("b").status().outdated).toBe(true);
    // The loser's reads wait too (rule 2 freezes all IO, not only writes).
    const readOnB = scenario.read("b", 1);
    scenario.runFor(1000);
    expect(readOnB.done).toBe(false);
    console.log(`link cut: a resumed writing ${resumedMs.toFixed(0)} ms after the cut (simulated time, default timings)`);
  });

  test("node crash: the survivor wins, waits for fence evidence, promotes the dead node's volume; no acknowledged write lost", () => {
    const scenario = quorumPair();
    const acked = scenario.complete(scenario.write("a", 3));
    expect(acked.error).toBeNull();
    const crashAtUs = scenario.nowUs;
    scenario.crash("a");
    scenario.runUntil(() => grantOf(scenario, "b").kind === "write", "b promotes a's volume", 15_000);
    const promotedMs = (scenario.nowUs - crashAtUs) / 1000;
    expect(promotedMs).toBeLessThanOrEqual(8000);
    expect(scenario.roleOf("b")).toBe(true);
    expect(scenario.quorumReports.some((entry) => entry.node === "b" && entry.report.kind === "promoted")).toBe(true);
    const write = scenario.complete(scenario.write("b", 4));
    expect(write.error).toBeNull();
    expect(scenario.blockValue("b", 3)).toBe(acked.tag);
    console.log(`node death: b promoted a's volume ${promotedMs.toFixed(0)} ms after the crash (simulated time, default timings)`);
  });

  test("crashed node returns: it rejoins as outdated, resyncs from the bitmap and both are SHARED again", () => {
    const scenario = quorumPair();
    scenario.crash("a");
    scenario.runUntil(() => grantOf(scenario, "b").kind === "write", "b promotes", 15_000);
    const onB = scenario.complete(scenario.write("b", 5));
    scenario.start("a");
    scenario.runUntil(() => scenario.quorumOf("a").status().quorum === "shared" && scenario.isSynced(), "a rejoins and resyncs", 20_000);
    expect(scenario.roleOf("a")).toBe(false);
    expect(grantOf(scenario, "a").kind).toBe("read");
    expect(scenario.blockValue("a", 5)).toBe(onB.tag);
    expect(scenario.differingBlocks()).toEqual([]);
    scenario.runUntil(() => scenario.quorumOf("a").status().dataHolders.length === 2, "SHARED recorded with both holders", 10_000);
  });

  test("a primary that returns after the survivor promoted its volume, and opens it only after it learnt that, comes back as its secondary", () => {
    const scenario = quorumPair();
    scenario.crash("a");
    scenario.runUntil(() => grantOf(scenario, "b").kind === "write", "b promotes", 15_000);
    const onB = scenario.complete(scenario.write("b", 5));
    // The daemon starts its quorum before it opens its volumes: the role a recorded before it died
    // (primary) reaches the quorum after it learnt that b owns the lease.
    scenario.start("a", []);
    scenario.runUntil(() => scenario.quorumOf("a").status().phase !== "starting", "a learns that b won", 10_000);
    scenario.openVolume("a", 1);
    scenario.runUntil(() => scenario.quorumOf("a").status().quorum === "shared" && scenario.isSynced(), "a rejoins and resyncs", 20_000);
    expect(scenario.roleOf("a")).toBe(false);
    expect(grantOf(scenario, "a").kind).toBe("read");
    expect(grantOf(scenario, "b").kind).toBe("write");
    expect(scenario.blockValue("a", 5)).toBe(onB.tag);
  });

  test("witness lost, link up: nothing stops", () => {
    const scenario = quorumPair();
    scenario.witness!.setFailing([0, 1], true);
    scenario.runFor(3000);
    expect(scenario.quorumOf("a").status().witness.reachable).toBe(false);
    expect(grantOf(scenario, "a").kind).toBe("write");
    const write = scenario.complete(scenario.write("a", 6), 500);
    expect(write.error).toBeNull();
    expect(write.info?.mirrored).toBe(true);
  });

  test("link and witness lost: every node freezes and says NO QUORUM", () => {
    const scenario = quorumPair();
    scenario.witness!.setFailing([0, 1], true);
    scenario.network.partition(60_000_000);
    const write = scenario.write("a", 7);
    scenario.runFor(8000);
    expect(write.done).toBe(false);
    for (const name of ["a", "b"] as const) {
      expect(grantOf(scenario, name).kind).toBe("frozen");
      expect(scenario.quorumOf(name).status().quorum).toBe("no-quorum");
    }
  });

  test("after both lost power, the node that is not a data holder waits for the one that is, and says what to do", () => {
    const scenario = quorumPair();
    scenario.network.partition(5_000_000);
    scenario.runUntil(() => scenario.quorumOf("a").status().quorum === "solo", "a wins the cut");
    scenario.crash("a");
    scenario.crash("b");
    scenario.start("b");
    scenario.runFor(10_000);
    const status = scenario.quorumOf("b").status();
    expect(grantOf(scenario, "b").kind).toBe("frozen");
    expect(status.dataHolders).toEqual(["a"]);
    expect(status.nextSafeAction).toContain("wait for a");
    expect(status.nextSafeAction).toContain("tandem failover --force");
  });

  test("a forced promotion the quorum refuses is the operator's precondition (exit 1), with the core's reason, not an internal error", async () => {
    const scenario = quorumPair();
    scenario.network.partition(5_000_000);
    scenario.runUntil(() => scenario.quorumOf("b").status().phase === "outdated", "b learns it lost the cut");
    // a heartbeats on: b cannot prove it fenced.
    const refused = await scenario.quorumOf("b").forcePromotion().then(
      () => undefined,
      (error: unknown) => error,
    );
    expect(refused).toBeInstanceOf(TandemError);
    expect((refused as TandemError).code).toBe("failed_precondition");
    expect((refused as TandemError).message).toContain("not provably fenced");
    expect(scenario.quorumOf("b").status().phase).toBe("outdated");
  });
});
