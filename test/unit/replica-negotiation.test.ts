// The negotiation between two replicas of a volume (DESIGN.md §4, docs/replication.md "Generations
// and the decision"), stepped as scripted scenarios over two real replica drivers: who decides,
// what each side may claim, and that a question and its answer cannot chase each other for ever.
import { describe, expect, test } from "bun:test";
import { defaultReplicaConfig } from "../../src/replica/config.ts";
import { formatMetadata, loadMetadata, metadataLayout } from "../../src/replica/metadata-format.ts";
import type { CoreAction } from "../../src/replica/types.ts";
import { VolumeCore, type VolumeHost } from "../../src/replica/volume/core.ts";
import { type Message, MessageType } from "../../src/replica/wire.ts";
import { Scenario } from "../sim/scenario.ts";
import { DataState, DecisionKind } from "../../src/replica/model.ts";

describe("what a peer claims", () => {
  /** b is forced to primary while the link is cut, writes alone, and is demoted: a never stopped serving. */
  function peerWroteAlone(): { scenario: Scenario; before: number; alone: number } {
    const scenario = new Scenario();
    scenario.waitSynced();
    const before = scenario.complete(scenario.write("a", 2)).tag;
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
    return { scenario, before, alone: alone.tag };
  }

  test("a primary never becomes a resync target because its peer claims it wrote alone since", () => {
    const { scenario, before } = peerWroteAlone();
    // a keeps its data and keeps serving: it is no resync target, whatever b says.
    expect(scenario.status("a")?.resync).toBeUndefined();
    expect(scenario.blockValue("a", 2)).toBe(before);
    expect(scenario.status("a")?.refusal).toBe("primaryWouldBeTarget");
    expect(scenario.status("b")?.refusal).toBe("primaryWouldBeTarget");
    const read = scenario.complete(scenario.read("a", 2));
    expect(read.error).toBeNull();
    const after = scenario.complete(scenario.write("a", 3));
    expect({ error: after.error, mirrored: after.info?.mirrored }).toEqual({ error: null, mirrored: false });
  });

  test("an operator keeping the primary's data resyncs the peer from it", () => {
    const { scenario, before } = peerWroteAlone();
    expect(scenario.complete(scenario.resolve("a", "local")).error).toBeNull();
    scenario.waitSynced();
    expect([scenario.blockValue("a", 2), scenario.blockValue("b", 2)]).toEqual([before, before]);
  });

  test("an operator demoting the primary lets it take the peer's newer data", () => {
    const { scenario, alone } = peerWroteAlone();
    scenario.setRole("a", 1, false);
    scenario.waitSynced();
    expect([scenario.blockValue("a", 2), scenario.blockValue("b", 2)]).toEqual([alone, alone]);
  });

  test("keeping the peer's data is refused on the primary until it is demoted", () => {
    const { scenario } = peerWroteAlone();
    expect(scenario.complete(scenario.resolve("a", "peer")).error?.code).toBe("EPERM");
  });
});

describe("split brain resolution", () => {
  test("a resolution is refused while the side it would discard holds the write grant: what that side acknowledges until its demotion is never discarded by it", () => {
    // Found by the simulator (test/sim/run.ts, seed 54065): a resolution keeping a was accepted while
    // b still held the write grant ("waits: demote it first"); the link dropped, b was forced to
    // primary and acknowledged writes alone, and when it was demoted the old resolution took effect
    // and discarded those writes too.
    const scenario = new Scenario();
    scenario.waitSynced();
    scenario.network.cut(60_000_000);
    scenario.runUntil(() => !scenario.linkUp("a") && !scenario.linkUp("b"), "both nodes see the link down");
    scenario.complete(scenario.write("a", 1));
    scenario.setRole("b", 1, true);
    scenario.complete(scenario.write("b", 2));
    scenario.network.heal();
    scenario.runUntil(() => scenario.status("a")?.sync === "splitBrain" && scenario.status("b")?.sync === "splitBrain", "both report the split brain");
    // b still holds the grant: keeping a's data now would also discard what b writes until demoted.
    expect(scenario.complete(scenario.resolve("a", "local")).error?.code).toBe("EPERM");
    const late = scenario.complete(scenario.write("b", 3));
    expect({ error: late.error, mirrored: late.info?.mirrored }).toEqual({ error: null, mirrored: false });
    scenario.setRole("b", 1, false);
    scenario.runFor(500);
    expect(scenario.status("a")?.sync).toBe("splitBrain");
    expect(scenario.blockValue("b", 3)).toBe(late.tag);
    // Demoted, b's changes can be discarded knowingly.
    expect(scenario.complete(scenario.resolve("a", "local")).error).toBeNull();
    scenario.waitSynced();
    expect(scenario.differingBlocks()).toEqual([]);
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

describe("a decider that lies", () => {
  // One volume core on its own (node b, the follower), fed messages as if from a decider that
  // does not follow the rules: the follower checks what it can itself.
  function follower() {
    const sent: Message[] = [];
    const actions: CoreAction[] = [];
    let tick = 0;
    const host: VolumeHost = { nodeId: "b", peerNodeId: "a", config: defaultReplicaConfig(), now: () => tick++, send: (message) => sent.push(message), emit: (action) => actions.push(action), randomId: () => 77n };
    const area = new Uint8Array(metadataLayout(1 << 20, 4096).totalBytes);
    for (const write of formatMetadata({ volumeId: 1, sizeBytes: 1 << 20, granuleBytes: 4096, activityLogExtentBytes: 65536, initialGeneration: 5n })) area.set(write.bytes, write.offset);
    const loaded = loadMetadata(area);
    if (loaded === "blank") throw new Error("formatted metadata reads as blank");
    const core = new VolumeCore(host, 1, loaded);
    const drain = () => {
      for (let action = actions.shift(); action; action = actions.shift()) if (action.kind === "metadataWrite" || action.kind === "storageFlush") core.storageDone(action.io, null);
    };
    core.open(loaded);
    drain();
    core.setGrant({ kind: "write", epoch: 2 });
    core.linkUpEvent();
    drain();
    return { core, sent, drain };
  }

  test("a follower that serves IO refuses a decision that would make it the resync target", () => {
    const { core, sent, drain } = follower();
    const hello = sent.filter((message) => message.type === MessageType.VolumeHello).at(-1);
    if (hello?.type !== MessageType.VolumeHello) throw new Error("the follower announced itself");
    core.peerMessage({ type: MessageType.VolumeHello, volumeId: 1, requestId: 0, seq: 1, sizeBytes: 1 << 20, granuleBytes: 4096, generations: { current: 9n, bitmapBase: 5n, history: [] }, dataState: DataState.Consistent, mayWrite: false, bitsSet: 3, redecide: false });
    core.peerMessage({ type: MessageType.VolumeDecision, volumeId: 1, requestId: 0, followerHelloSeq: hello.seq, round: 1, kind: DecisionKind.Resync, deciderIsSource: true, deciderLeads: false, full: true, byOperator: true, reason: "I wrote alone since your generation" });
    drain();
    const status = core.status();
    expect({ sync: status.sync, refusal: status.refusal, resync: status.resync, dataState: status.dataState }).toEqual({ sync: "refused", refusal: "primaryWouldBeTarget", resync: undefined, dataState: "consistent" });
  });
});
