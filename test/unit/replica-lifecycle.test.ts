// A volume's lifecycle on one node — open after a crash or a clean stop, close, graceful shutdown —
// stepped as scripted scenarios over two real replica drivers (test/sim/scenario.ts). Each test
// names the rule it checks: what the clients are told, what the other node does, and what the
// pair needs to copy afterwards.
import { describe, expect, test } from "bun:test";
import { Scenario } from "../sim/scenario.ts";

describe("close and reopen", () => {
  test("a clean close and reopen of the primary finds the pair in sync with nothing to copy", () => {
    const scenario = new Scenario();
    scenario.waitSynced();
    for (const block of [1, 2, 3]) scenario.complete(scenario.write("a", block));
    const close = scenario.complete(scenario.closeVolume("a", 1));
    expect(close.error).toBeNull();
    const since = scenario.nowUs;
    scenario.complete(scenario.openVolume("a", 1));
    scenario.waitSynced();
    const decisions = scenario.reportsOf("a", "decision", since);
    expect(decisions.map((report) => report.kind === "decision" && report.decision)).toEqual(["inSync"]);
    expect(scenario.differingBlocks()).toEqual([]);
  });

  test("closing the primary completes its writes in flight, mirrored, before the close completes", () => {
    const scenario = new Scenario();
    scenario.waitSynced();
    for (const block of [1, 2, 3]) scenario.complete(scenario.write("a", block)); // the log covers them
    const writes = [1, 2, 3].map((block) => scenario.write("a", block));
    const close = scenario.closeVolume("a", 1);
    scenario.complete(close);
    expect(writes.map((write) => ({ done: write.done, error: write.error, mirrored: write.info?.mirrored }))).toEqual(writes.map(() => ({ done: true, error: null, mirrored: true })));
    expect(close.error).toBeNull();
    expect(scenario.differingBlocks()).toEqual([]);
  });

  test("a request after the close began is refused with ESHUTDOWN", () => {
    const scenario = new Scenario();
    scenario.waitSynced();
    const close = scenario.closeVolume("a", 1);
    const write = scenario.complete(scenario.write("a", 1));
    expect(write.error?.code).toBe("ESHUTDOWN");
    scenario.complete(close);
  });

  test("a graceful shutdown of both nodes and a restart needs no resync", () => {
    const scenario = new Scenario();
    scenario.waitSynced();
    for (const block of [4, 5]) scenario.complete(scenario.write("a", block));
    scenario.complete(scenario.shutdown("b"));
    scenario.complete(scenario.write("a", 6)); // alone: a starts a generation of its own
    scenario.complete(scenario.shutdown("a"));
    const since = scenario.nowUs;
    scenario.start("a");
    scenario.start("b");
    scenario.waitSynced();
    const decision = scenario.reportsOf("a", "decision", since)[0];
    // Only what a wrote alone moves: the incremental resync of block 6.
    expect(decision?.kind === "decision" && { decision: decision.decision, full: decision.full, peerBits: decision.peerBits }).toEqual({ decision: "resync", full: false, peerBits: 0 });
    expect(scenario.differingBlocks()).toEqual([]);
  });
});
