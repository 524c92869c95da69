// The negotiation between two replicas of a volume (DESIGN.md §4, docs/replication.md "Generations
// and the decision"), stepped as scripted scenarios over two real replica drivers: who decides,
// what each side may claim, and that a question and its answer cannot chase each other for ever.
import { describe, expect, test } from "bun:test";
import { MessageType } from "../../src/replica/wire.ts";
import { Scenario } from "../sim/scenario.ts";

describe("what a peer claims", () => {
  test.failing("a primary never becomes a resync target because its peer claims it wrote alone since", () => {
    const scenario = new Scenario();
    scenario.waitSynced();
    const before = scenario.complete(scenario.write("a", 2));
    // The link is cut; b is forced to primary, writes alone, and is demoted again. a, the primary
    // all along, never stopped serving.
    scenario.network.cut(60_000_000);
    scenario.runUntil(() => !scenario.linkUp("a") && !scenario.linkUp("b"), "both nodes see the link down");
    scenario.setRole("b", 1, true);
    const alone = scenario.complete(scenario.write("b", 2));
    expect({ error: alone.error, mirrored: alone.info?.mirrored }).toEqual({ error: null, mirrored: false });
    scenario.setRole("b", 1, false);
    const since = scenario.nowUs;
    scenario.network.heal();
    scenario.runUntil(() => scenario.reportsOf("a", "decision", since).length > 0, "a decides once the link is back");
    scenario.runFor(500);
    // a keeps its data and keeps serving: it is no resync target, whatever b says.
    expect(scenario.status("a")?.resync).toBeUndefined();
    expect(scenario.blockValue("a", 2)).toBe(before.tag);
    const read = scenario.complete(scenario.read("a", 2));
    expect(read.error).toBeNull();
    expect(scenario.status("a")?.sync).toBe("refused");
    const after = scenario.complete(scenario.write("a", 3));
    expect(after.error).toBeNull();
  });
});

describe("questions and answers", () => {
  test("a stale decision does not start a storm of hellos (two questions in flight at once)", () => {
    const scenario = new Scenario();
    scenario.waitSynced();
    // Two grant changes at one instant: b asks for a decision twice before the first answer.
    scenario.setRole("b", 1, true);
    scenario.setRole("b", 1, false);
    const since = scenario.nowUs;
    scenario.runFor(1000);
    const hellos = scenario.sent("b", MessageType.VolumeHello, since).length;
    const decisions = scenario.sent("a", MessageType.VolumeDecision, since).length;
    expect({ hellos: hellos <= 6, decisions: decisions <= 6 }).toEqual({ hellos: true, decisions: true });
    scenario.waitSynced();
  });
});
