// The rules of DESIGN.md §3–4 and every row of the decision table in docs/replication.md, each as
// a scripted scenario over two real replica drivers (test/sim/scenario.ts): the replicas start in
// the state a row names (generations, data state, dirty regions, data on disk), the link comes up,
// and the test checks the verdict both nodes report, what moved, and that the pair ends identical
// (or refuses, and says why). The decision function's own table test is replica-generations.test.ts.
import { describe, expect, test } from "bun:test";
import type { ReplicaReport } from "../../src/replica/types.ts";
import { MessageType } from "../../src/replica/wire.ts";
import { blockBytes, identifyBlock } from "../sim/oracle.ts";
import { type FormatChoice, type NodeName, Scenario, sharedGeneration as G } from "../sim/scenario.ts";

const H1 = 0x1111n;
const H2 = 0x2222n;

/** The decision each node reported first. */
function decisions(scenario: Scenario): Record<NodeName, { decision: string; full: boolean; sourceIsLocal: boolean | undefined } | undefined> {
  const first = (name: NodeName) => {
    const report = scenario.reportsOf(name, "decision")[0] as Extract<ReplicaReport, { kind: "decision" }> | undefined;
    return report && { decision: report.decision, full: report.full, sourceIsLocal: report.sourceIsLocal };
  };
  return { a: first("a"), b: first("b") };
}

function row(format: Partial<Record<NodeName, FormatChoice>>, preload: Partial<Record<NodeName, number[]>> = {}, primary: NodeName | null = "a"): Scenario {
  const scenario = new Scenario({ format, preload, primary });
  scenario.runUntil(() => decisions(scenario).a !== undefined && decisions(scenario).b !== undefined, "both nodes report a decision");
  return scenario;
}

/** The blocks a node pushed as resync data. */
function pushed(scenario: Scenario, from: NodeName): Set<number> {
  const blocks = new Set<number>();
  for (const message of scenario.sent(from, MessageType.ResyncData)) {
    if (message.type !== MessageType.ResyncData) continue;
    for (let block = message.offset / blockBytes; block < (message.offset + message.length) / blockBytes; block++) blocks.add(block);
  }
  return blocks;
}

function expectIdentical(scenario: Scenario): void {
  scenario.waitSynced();
  expect(scenario.differingBlocks()).toEqual([]);
}

describe("the decision table (docs/replication.md), row by row", () => {
  test("both new: adopt one generation, nothing to copy", () => {
    const scenario = row({ a: "new", b: "new" });
    expect(decisions(scenario)).toEqual({ a: { decision: "resync", full: false, sourceIsLocal: true }, b: { decision: "resync", full: false, sourceIsLocal: false } });
    expectIdentical(scenario);
    expect(scenario.status("a")?.current).toBe(scenario.status("b")?.current);
    expect(scenario.status("a")?.dataState).toBe("consistent");
  });

  test("one new: full copy from the other", () => {
    const scenario = row({ b: "new" }, { a: [1, 7, 12] });
    expect(decisions(scenario).a).toEqual({ decision: "resync", full: true, sourceIsLocal: true });
    expectIdentical(scenario);
    expect(scenario.blockValue("b", 7)).toBe(scenario.blockValue("a", 7));
  });

  test("neither has complete data: refused, no good data", () => {
    const scenario = row({ a: { current: G, dataState: "inconsistent", dirty: "all" }, b: "new" });
    expect(decisions(scenario).a?.decision).toBe("noGoodData");
    expect(scenario.status("a")?.refusal).toBe("noGoodData");
    expect(scenario.status("b")?.refusal).toBe("noGoodData");
  });

  test("an interrupted resync target meets its source: continue from the remaining bitmaps", () => {
    const scenario = row({ b: { current: G, dataState: "inconsistent", dirty: [2, 3] } }, { a: [2, 3, 9] });
    expect(decisions(scenario).a).toEqual({ decision: "resync", full: false, sourceIsLocal: true });
    scenario.waitSynced();
    expect([2, 3].map((block) => scenario.blockValue("b", block))).toEqual([2, 3].map((block) => scenario.blockValue("a", block)));
    expect(scenario.blockValue("b", 9)).toBe(0); // outside the work list: not copied
  });

  test("same generation, no dirty bits: in sync", () => {
    const scenario = row({});
    expect(decisions(scenario).a?.decision).toBe("inSync");
    expect(scenario.sent("a", MessageType.ResyncData)).toEqual([]);
    expectIdentical(scenario);
  });

  test("same generation, dirty bits (writes in flight at a crash): copy the dirty regions from the preferred side", () => {
    const scenario = row({ a: { current: G, dirty: [3] } }, { a: [3] });
    expect(decisions(scenario).a).toEqual({ decision: "resync", full: false, sourceIsLocal: true }); // the primary is preferred
    expectIdentical(scenario);
  });

  test("one wrote alone since the other's generation: incremental resync from both bitmaps", () => {
    const scenario = row({ a: { current: H1, bitmapBase: G, dirty: [5] }, b: { current: G, dirty: [6] } }, { a: [5, 6] });
    expect(decisions(scenario).a).toEqual({ decision: "resync", full: false, sourceIsLocal: true });
    expectIdentical(scenario);
    // Only the union of the two bitmaps moved.
    expect(pushed(scenario, "a")).toEqual(new Set([5, 6]));
  });

  test("both wrote alone since the same generation: split brain, reported and left to the operator", () => {
    const scenario = row({ a: { current: H1, bitmapBase: G, dirty: [1] }, b: { current: H2, bitmapBase: G, dirty: [2] } }, { a: [1], b: [2] });
    expect(decisions(scenario).a?.decision).toBe("splitBrain");
    expect(scenario.status("a")?.sync).toBe("splitBrain");
    expect(scenario.reportsOf("b", "splitBrain").length).toBe(1);
    // IO stays where it is: the primary keeps serving its own data.
    expect(scenario.complete(scenario.write("a", 4)).error).toBeNull();
  });

  test("one moved on and its bitmap does not cover the change: full copy", () => {
    const scenario = row({ a: { current: H1, history: [G] } }, { a: [4, 8] });
    expect(decisions(scenario).a).toEqual({ decision: "resync", full: true, sourceIsLocal: true });
    expectIdentical(scenario);
  });

  test("both moved on from a common generation: split brain (full)", () => {
    const scenario = row({ a: { current: H1, history: [G] }, b: { current: H2, history: [G] } });
    expect(decisions(scenario).a?.decision).toBe("splitBrain");
    expect(decisions(scenario).a?.full).toBe(true);
  });

  test("no common generation: unrelated data, refused", () => {
    const scenario = row({ a: { current: H1 }, b: { current: H2 } }, { a: [1], b: [1] });
    expect(decisions(scenario).a?.decision).toBe("unrelated");
    expect(scenario.status("b")?.refusal).toBe("unrelated");
  });

  test("an operator resolves unrelated data by choosing a side: a full copy from it", () => {
    const scenario = row({ a: { current: H1 }, b: { current: H2 } }, { a: [1, 2], b: [1, 3] });
    scenario.setRole("a", 1, true);
    expect(scenario.complete(scenario.resolve("a", "local")).error).toBeNull();
    expectIdentical(scenario);
    expect(scenario.blockValue("b", 3)).toBe(0);
  });
});

describe("the data path (DESIGN.md §3)", () => {
  test("a write is acknowledged only when both replicas have it (protocol C)", () => {
    const scenario = new Scenario();
    scenario.waitSynced();
    scenario.complete(scenario.write("a", 1)); // the activity log covers block 1 from here
    scenario.network.hold("b"); // b's acknowledgements wait
    const write = scenario.write("a", 1);
    scenario.runUntil(() => scenario.blockValue("b", 1) === write.tag, "b has the write");
    scenario.runFor(5);
    expect(write.done).toBe(false);
    scenario.network.release("b");
    scenario.complete(write);
    expect({ error: write.error, mirrored: write.info?.mirrored }).toEqual({ error: null, mirrored: true });
  });

  test("a mirrored write goes to the peer before the primary starts its own copy (the two halves overlap)", () => {
    const scenario = new Scenario();
    scenario.waitSynced();
    scenario.complete(scenario.write("a", 3)); // the activity log covers block 3 from here: the next write starts at once
    // Each time a's data disk is asked to write, note how many Write messages for block 3 a has sent.
    const disk = scenario.disk("a");
    const write = disk.write.bind(disk);
    const sentBeforeLocal: number[] = [];
    disk.write = (offset, data, fua, done) => {
      if (offset === 3 * blockBytes) sentBeforeLocal.push(scenario.sent("a", MessageType.Write).filter((message) => message.type === MessageType.Write && message.offset === offset).length);
      write(offset, data, fua, done);
    };
    scenario.complete(scenario.write("a", 3));
    // The first write of block 3 was sent earlier; the second was sent too before a started writing it.
    expect(sentBeforeLocal).toEqual([2]);
  });

  test("overlapping writes in flight are applied in the same order on both nodes", () => {
    const scenario = new Scenario({ networkLatencyUs: 2000 });
    scenario.waitSynced();
    const first = scenario.write("a", 4, { count: 2 });
    const second = scenario.write("a", 5, { count: 2 });
    scenario.complete(first);
    scenario.complete(second);
    expect([scenario.blockValue("a", 5), scenario.blockValue("b", 5)]).toEqual([second.tag, second.tag]);
    expect([scenario.blockValue("a", 4), scenario.blockValue("b", 4)]).toEqual([first.tag, first.tag]);
  });

  test("after a FLUSH completes, every write completed before it is durable on both nodes", () => {
    const scenario = new Scenario();
    scenario.waitSynced();
    const writes = [2, 3, 4].map((block) => scenario.complete(scenario.write("a", block)));
    expect(scenario.complete(scenario.flush("a")).error).toBeNull();
    for (const write of writes) for (const name of ["a", "b"] as const) expect(scenario.blockValue(name, [2, 3, 4][writes.indexOf(write)]!, { image: "durable" })).toBe(write.tag);
  });

  test("a FUA write is durable on both nodes before it completes", () => {
    const scenario = new Scenario();
    scenario.waitSynced();
    const write = scenario.complete(scenario.write("a", 6, { fua: true }));
    expect([scenario.blockValue("a", 6, { image: "durable" }), scenario.blockValue("b", 6, { image: "durable" })]).toEqual([write.tag, write.tag]);
  });

  test("TRIM and WRITE_ZEROES are replicated", () => {
    const scenario = new Scenario();
    scenario.waitSynced();
    for (const block of [1, 2]) scenario.complete(scenario.write("a", block));
    scenario.complete(scenario.trim("a", 1));
    scenario.complete(scenario.zero("a", 2));
    expect([1, 2].flatMap((block) => [scenario.blockValue("a", block), scenario.blockValue("b", block)])).toEqual([0, 0, 0, 0]);
  });

  test("reads come from the local replica when it is up to date there, from the peer while it resyncs that region", () => {
    const scenario = new Scenario({ primary: "b", format: { b: { current: G, dataState: "inconsistent", dirty: [3] } }, preload: { a: [3] }, config: { resyncRateBytesPerTick: 1 } });
    scenario.runUntil(() => scenario.status("b")?.resync?.direction === "target", "b resyncs as the target");
    const before = scenario.sent("b", MessageType.ReadRequest).length;
    const dirty = scenario.complete(scenario.read("b", 3));
    expect(dirty.error).toBeNull();
    expect(scenario.sent("b", MessageType.ReadRequest).length).toBe(before + 1); // served by a
    const clean = scenario.complete(scenario.read("b", 4));
    expect(clean.error).toBeNull();
    expect(scenario.sent("b", MessageType.ReadRequest).length).toBe(before + 1); // served locally
  });

  test("a read that fails on the local disk is reported and served by the peer", () => {
    const scenario = new Scenario();
    scenario.waitSynced();
    const write = scenario.complete(scenario.write("a", 6));
    scenario.disk("a").inject({ op: "read", offset: 6 * blockBytes, length: blockBytes, error: "EIO" });
    const before = scenario.sent("a", MessageType.ReadRequest).length;
    const read = scenario.complete(scenario.read("a", 6));
    expect({ error: read.error, block: identifyBlock(read.data!, 1, 6) }).toEqual({ error: null, block: { kind: "write", id: write.tag } });
    expect(scenario.sent("a", MessageType.ReadRequest).length).toBe(before + 1);
    expect(scenario.reportsOf("a", "ioError").map((report) => (report as { what: string }).what)).toEqual([`read ${6 * blockBytes}+${blockBytes}`]);
  });

  test("a read of data the primary holds goes to its disk without a request through the core", () => {
    const scenario = new Scenario();
    scenario.waitSynced();
    const write = scenario.complete(scenario.write("a", 2));
    const readsBefore = scenario.disk("a").counters.reads;
    const read = scenario.read("a", 2);
    // The disk read started at once, and the core has no IO of its own for it.
    expect({ diskReads: scenario.disk("a").counters.reads - readsBefore, coreIo: scenario.inFlight("a")?.io }).toEqual({ diskReads: 1, coreIo: {} });
    scenario.complete(read);
    expect({ error: read.error, block: identifyBlock(read.data!, 1, 2) }).toEqual({ error: null, block: { kind: "write", id: write.tag } });
    // Where the replica is not valid, reads still go through the core: the resync test above.
  });

  test("while the peer is away, writes mark the dirty bitmap; on its return only those regions move", () => {
    const scenario = new Scenario({ blocks: 32 });
    scenario.waitSynced();
    scenario.crash("b");
    for (const block of [3, 17]) expect(scenario.complete(scenario.write("a", block)).info?.mirrored).toBe(false);
    expect(scenario.status("a")?.dirtyBytes).toBe(2 * blockBytes);
    expect(scenario.status("a")?.sync).toBe("degraded");
    scenario.start("b");
    scenario.waitSynced();
    expect(pushed(scenario, "a")).toEqual(new Set([3, 17]));
    expect(scenario.differingBlocks()).toEqual([]);
  });

  test("online verify compares the replicas and repairs from the primary", () => {
    const scenario = new Scenario();
    scenario.waitSynced();
    scenario.disk("b").rot(5 * blockBytes + 10, 8);
    const check = scenario.complete(scenario.verify("a", false));
    expect((check.result as { mismatchCount: number }).mismatchCount).toBe(1);
    const repair = scenario.complete(scenario.verify("a", true));
    expect((repair.result as { repaired: number }).repaired).toBe(1);
    expect(scenario.differingBlocks()).toEqual([]);
  });
});

describe("generations and resync (DESIGN.md §4)", () => {
  test("a node writing without its peer starts a new generation before the write completes", () => {
    const scenario = new Scenario();
    scenario.waitSynced();
    scenario.crash("b");
    const before = scenario.status("a")!.current;
    const write = scenario.complete(scenario.write("a", 1));
    expect(write.error).toBeNull();
    expect(scenario.reportsOf("a", "generationStarted").length).toBe(1);
    expect(scenario.status("a")!.current).not.toBe(before);
    expect(scenario.status("a")!.bitmapBase).toBe(before);
  });

  test("both nodes reach the same verdict", () => {
    const scenario = row({ a: { current: H1, bitmapBase: G, dirty: [5] } }, { a: [5] });
    const { a, b } = decisions(scenario);
    expect(b).toEqual({ decision: a!.decision, full: a!.full, sourceIsLocal: !a!.sourceIsLocal });
  });

  test("a resync is throttled to the configured rate", () => {
    const scenario = new Scenario({ blocks: 64, format: { b: "new" }, config: { resyncRateBytesPerTick: 4 * blockBytes } });
    const started = scenario.nowUs;
    scenario.waitSynced(undefined, 10_000);
    // 64 blocks at 4 blocks per 10 ms tick: at least 150 ms.
    expect(scenario.nowUs - started).toBeGreaterThanOrEqual(150_000);
  });

  test("an interrupted incremental resync resumes after the target restarts", () => {
    const scenario = new Scenario({ blocks: 64, config: { resyncRateBytesPerTick: 2 * blockBytes, resyncCheckpointChunks: 1 } });
    scenario.waitSynced();
    scenario.crash("b");
    for (let block = 0; block < 40; block++) scenario.complete(scenario.write("a", block));
    scenario.start("b");
    scenario.runUntil(() => (scenario.status("b")?.resync?.bitsRemaining ?? 40) < 30, "part of the resync is done");
    scenario.crash("b");
    const since = scenario.nowUs;
    scenario.start("b");
    scenario.runUntil(() => scenario.reportsOf("a", "decision", since).length > 0, "a decides again");
    const decision = scenario.reportsOf("a", "decision", since)[0] as Extract<ReplicaReport, { kind: "decision" }>;
    expect({ decision: decision.decision, full: decision.full }).toEqual({ decision: "resync", full: false });
    expect(decision.peerBits).toBeLessThan(40); // what was copied and checkpointed is not copied again
    expectIdentical(scenario);
  });
});
