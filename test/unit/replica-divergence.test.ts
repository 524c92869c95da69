// The ways two replicas could silently diverge or hang, each pinned as a scripted scenario
// (test/sim/scenario.ts: two real replica drivers over the simulator's disks, network and
// scheduler, faults only where the script puts them). Each test names the rule it keeps and fails
// when the core breaks it: after the schedule the pair must converge with both replicas holding the
// same bytes, the clients told the truth, and no request left hanging.
import { describe, expect, test } from "bun:test";
import { metadataLayout } from "../../src/replica/metadata-format.ts";
import { MessageType } from "../../src/replica/wire.ts";
import { blockBytes, identifyBlock } from "../sim/oracle.ts";
import { Scenario } from "../sim/scenario.ts";

/** Converged: synced on both nodes with nothing dirty, and the two replicas byte-identical. */
function expectConverged(scenario: Scenario, limitMs = 5000): void {
  scenario.waitSynced(undefined, limitMs);
  expect({ differing: scenario.differingBlocks(), state: scenario.describe() }).toEqual({ differing: [], state: scenario.describe() });
}

describe("resync completion", () => {
  test("a dirty mark made between ResyncComplete and its Ack survives the completion", () => {
    // b is the primary and an interrupted resync target, so it leads the resync as its target.
    // Metadata is quick and data slower, so the peer's failed write is answered before the Ack.
    const scenario = new Scenario({ primary: "b", format: { b: "interruptedTarget" }, diskLatencyUs: 30, metadataLatencyUs: 40 });
    scenario.runUntil(() => scenario.status("b")?.sync === "resyncing", "the resync runs"); scenario.complete(scenario.write("b", 5)); // its activity-log extent is hot: the next write goes out at once
    scenario.waitMessage("b", MessageType.ResyncComplete, "the leading target announces the end of the resync");
    scenario.disk("a").inject({ op: "write", error: "EIO" });
    const write = scenario.complete(scenario.write("b", 5));
    expect(write.error?.code).toBe("EIO"); // the peer failed it: the client is told
    expectConverged(scenario);
  });
});

describe("closing a volume", () => {
  test("the secondary closing while the primary writes: every write completes and a reopen resyncs what it missed", () => {
    const scenario = new Scenario();
    scenario.waitSynced();
    const close = scenario.closeVolume("b", 1);
    const writes = [scenario.write("a", 1), scenario.write("a", 2)];
    scenario.complete(close);
    writes.push(scenario.write("a", 3));
    scenario.runUntil(() => writes.every((write) => write.done), "every write answered", 2000);
    expect(writes.map((write) => write.error ?? null)).toEqual([null, null, null]);
    scenario.complete(scenario.openVolume("b", 1));
    expectConverged(scenario);
  });

  test("a write queued behind one the peer's close ends is not sent to the closing peer", () => {
    // a wrote alone while b was down (it is on a generation of its own, so a write it completes
    // alone completes at once), and a slow resync to b still runs when b closes the volume.
    const scenario = new Scenario({ networkLatencyUs: 500, blocks: 64, config: { resyncRateBytesPerTick: 1 } });
    scenario.waitSynced();
    scenario.crash("b");
    for (const block of [2, 30, 40, 50]) scenario.complete(scenario.write("a", block));
    scenario.start("b");
    scenario.runUntil(() => scenario.status("a")?.sync === "resyncing", "the resync runs");
    // The second write overlaps the first: it waits for it, and starts when the first ends.
    const writes = [scenario.write("a", 2), scenario.write("a", 2)];
    scenario.closeVolume("b", 1);
    scenario.runUntil(() => writes.every((write) => write.done), "both writes answered", 2000);
    expect(writes.map((write) => write.error ?? null)).toEqual([null, null]);
  });

  test("a hello that reaches a node while it closes the volume is answered, so the pair negotiates when it reopens", () => {
    // Found by the simulator (test/sim/run.ts, seed 51485): b reopened the volume while a was
    // closing it; a ignored b's hello and b never heard that a closed (a's notice reached b before
    // b's volume existed). When a reopened and said hello, b — not knowing a had missed its state —
    // waited for a decision and a for b's state, both "negotiating" for ever.
    const scenario = new Scenario({ diskLatencyUs: 10_000, metadataLatencyUs: 200 });
    scenario.waitSynced(undefined, 10_000);
    scenario.complete(scenario.closeVolume("b", 1), 10_000);
    const closing = scenario.closeVolume("a", 1); // its flushes take a while on the slow data disk
    scenario.complete(scenario.openVolume("b", 1), 10_000);
    scenario.complete(closing, 10_000);
    expect(scenario.reportsOf("a", "ignored").some((report) => report.kind === "ignored" && report.check === "ignoreRequestWhileClosing" && report.reason.startsWith(`message type ${MessageType.VolumeHello} `))).toBe(true);
    scenario.complete(scenario.openVolume("a", 1), 10_000);
    expectConverged(scenario, 10_000);
  });

  test("the primary's close completes after a write in the last barrier interval", () => {
    const scenario = new Scenario();
    scenario.waitSynced();
    scenario.complete(scenario.write("a", 4));
    const close = scenario.complete(scenario.closeVolume("a", 1), 1000);
    expect(close.error).toBeNull();
  });

  test("a close whose local flush fails does not call the volume clean: the activity log is replayed", () => {
    const scenario = new Scenario();
    scenario.waitSynced();
    scenario.complete(scenario.write("a", 4));
    scenario.disk("a").inject({ op: "flush", error: "EIO" });
    const close = scenario.complete(scenario.closeVolume("a", 1), 1000);
    expect(close.error?.code).toBe("EIO"); // the daemon logs that the volume was not closed clean
    scenario.crash("a");
    scenario.start("a");
    scenario.runUntil(() => scenario.reportsOf("a", "volumeOpened").length === 2, "a reopens the volume");
    const reopened = scenario.reportsOf("a", "volumeOpened")[1]!;
    expect(reopened.kind === "volumeOpened" && reopened.recoveredExtents).toBeGreaterThan(0);
    expectConverged(scenario);
  });

  test("a close whose barrier fails on the peer marks the region dirty", () => {
    const scenario = new Scenario({ diskFaults: { flushFailureDropsCache: true, flushFailureEvicts: true } });
    scenario.waitSynced();
    scenario.complete(scenario.write("a", 4));
    scenario.disk("b").inject({ op: "flush", error: "EIO" });
    scenario.complete(scenario.closeVolume("a", 1), 1000);
    scenario.complete(scenario.openVolume("a", 1));
    expectConverged(scenario);
  });
});

describe("what a failed flush leaves behind", () => {
  test("a write waiting to complete alone whose local copy a failed flush dropped is not acknowledged", () => {
    // Found by the simulator (test/sim/run.ts, seed 80370): the write was done locally and waited for
    // the generation this node needs to write alone; a failed flush dropped it (Linux) meanwhile, and
    // it was then acknowledged although reads returned the older data.
    const scenario = new Scenario({ metadataLatencyUs: 20_000, diskFaults: { flushFailureDropsCache: true, flushFailureEvicts: true } });
    scenario.waitSynced(undefined, 10_000);
    const before = scenario.complete(scenario.write("a", 5, { fua: true }), 10_000);
    scenario.network.cut(60_000_000);
    scenario.runUntil(() => !scenario.linkUp("a"), "a sees the link down");
    const write = scenario.write("a", 5);
    scenario.runUntil(() => (scenario.inFlight("a")?.io.clientWrite ?? 0) === 0 && !write.done, "a's local write is done and waits for its generation", 5_000);
    scenario.disk("a").inject({ op: "flush", error: "EIO" });
    scenario.complete(scenario.flush("a"), 10_000);
    scenario.complete(write, 10_000);
    const read = scenario.complete(scenario.read("a", 5), 10_000);
    const readBack = identifyBlock(read.data!, 1, 5);
    expect(write.error === null ? readBack : "not acknowledged").toEqual(write.error === null ? { kind: "write", id: write.tag } : "not acknowledged");
    expect(write.error?.code).toBe("EIO");
    expect(before.error).toBeNull();
  });

  test("a primary that became a resync target for what its failed flush dropped does not vouch for it alone in a later flush", () => {
    // Found by the simulator (test/sim/run.ts, seed 124021): the primary's failed flush dropped a
    // mirrored write, so it became a resync target for that region (the peer held it, in its cache).
    // The link dropped; the next client FLUSH succeeded on the primary alone, promising durable a
    // write that was on no disk; the peer then lost power, and with it the write.
    const scenario = new Scenario({ diskFaults: { flushFailureDropsCache: true, flushFailureEvicts: true }, config: { barrierIntervalTicks: 100_000 } });
    scenario.waitSynced();
    scenario.complete(scenario.write("a", 5)); // in both caches
    scenario.disk("a").inject({ op: "flush", error: "EIO" });
    expect(scenario.complete(scenario.flush("a")).error?.code).toBe("EIO"); // drops block 5 here
    scenario.runUntil(() => scenario.status("a")?.dataState === "inconsistent", "a becomes a resync target for what it dropped");
    scenario.network.cut(60_000_000);
    scenario.runUntil(() => !scenario.linkUp("a"), "a sees the link down");
    expect(scenario.complete(scenario.flush("a")).error?.code).toBe("EIO");
  });

  test("a secondary whose failed flush dropped acknowledged writes does not serve reads of them", () => {
    // Found by the simulator (test/sim/run.ts, seed 81670): the secondary kept serving reads from its
    // own copy of regions its failed flush had dropped, older than what it had acknowledged, until
    // the resync from the primary began.
    const scenario = new Scenario({ diskFaults: { flushFailureDropsCache: true, flushFailureEvicts: true } });
    scenario.waitSynced();
    const write = scenario.complete(scenario.write("a", 6)); // in b's cache
    scenario.disk("b").inject({ op: "flush", error: "EIO" });
    scenario.complete(scenario.flush("a")); // the barrier: b's flush fails and drops block 6
    const read = scenario.complete(scenario.read("b", 6));
    // Served by the primary, or refused: never the older bytes.
    if (read.error === null) expect(identifyBlock(read.data!, 1, 6)).toEqual({ kind: "write", id: write.tag });
    expectConverged(scenario);
  });

  test("a flush that fails while another is in flight loses what both cover, and the other's success does not count", () => {
    // Found by the simulator (test/sim/run.ts, seed 54272): two local flushes in flight on the
    // primary; the later one failed first and (Linux) dropped every cached write before it, among
    // them those the earlier flush covered. The earlier one then reported success (on one file, a
    // writeback error reaches one fsync only), so nothing marked those regions: the primary read
    // back older data than the peer held, while both said in sync.
    const scenario = new Scenario({ diskFaults: { flushFailureDropsCache: true, flushFailureEvicts: true } });
    scenario.waitSynced();
    const before = scenario.complete(scenario.write("a", 5));
    scenario.complete(scenario.flush("a"));
    const write = scenario.complete(scenario.write("a", 5)); // cached on a, not yet durable
    const faults = scenario.disk("a").faults;
    const [min, max] = [faults.latencyUsMin, faults.latencyUsMax];
    faults.latencyUsMin = faults.latencyUsMax = 20_000;
    const first = scenario.flush("a"); // slow: still in flight when the second fails
    scenario.runFor(1);
    faults.latencyUsMin = faults.latencyUsMax = 1_000;
    scenario.disk("a").inject({ op: "flush", error: "EIO" });
    const second = scenario.flush("a");
    scenario.complete(second);
    scenario.complete(first, 10_000);
    [faults.latencyUsMin, faults.latencyUsMax] = [min, max];
    expect({ first: first.error?.code ?? null, second: second.error?.code ?? null }).toEqual({ first: "EIO", second: "EIO" });
    expectConverged(scenario);
    expect([scenario.blockValue("a", 5), scenario.blockValue("b", 5)]).toEqual([write.tag, write.tag]);
    expect(write.tag).not.toBe(before.tag);
  });

  test("writes a failed flush dropped while no other replica held them are written again, so a power loss keeps what reads returned", () => {
    const scenario = new Scenario({ diskFaults: { flushFailureDropsCache: true } });
    scenario.waitSynced();
    scenario.crash("b"); // a writes alone from here
    const write = scenario.complete(scenario.write("a", 6));
    scenario.disk("a").inject({ op: "flush", error: "EIO" });
    expect(scenario.complete(scenario.flush("a")).error?.code).toBe("EIO");
    scenario.runFor(50); // the dropped region is read back and written again
    expect(scenario.complete(scenario.flush("a")).error).toBeNull();
    scenario.crash("a");
    expect(scenario.blockValue("a", 6)).toBe(write.tag);
  });

  test("a close whose bitmap cannot be written does not record the volume clean", () => {
    const scenario = new Scenario();
    scenario.waitSynced();
    scenario.crash("b");
    scenario.complete(scenario.write("a", 1)); // alone: its bit is set
    const bitmapOffset = metadataLayout(scenario.blocks * blockBytes, blockBytes).bitmapOffset;
    scenario.metadataDisk("a").inject({ op: "write", offset: bitmapOffset, length: 4096, error: "EIO" });
    expect(scenario.complete(scenario.closeVolume("a", 1)).error).not.toBeNull();
    scenario.complete(scenario.openVolume("a", 1));
    expect(scenario.status("a")?.dirtyBytes).toBeGreaterThan(0); // recovered from the activity log
    scenario.start("b");
    expectConverged(scenario);
  });
});

describe("activity log", () => {
  test("a transaction that fails but reached the disk does not leave its evicted extent hot", () => {
    // 64 blocks, extents of 4 blocks, 4 extents in the log.
    const scenario = new Scenario({ blocks: 64 });
    scenario.waitSynced();
    for (const block of [0, 4, 8, 12]) scenario.complete(scenario.write("a", block));
    // The transaction that evicts extent 0 for extent 4 fails, yet its bytes are on the medium.
    const layoutActivityLog = 2 * 4096;
    scenario.metadataDisk("a").inject({ op: "write", offset: layoutActivityLog, length: 8 * 4096, error: "EIO", landed: "durable" });
    scenario.complete(scenario.write("a", 16));
    // A write into extent 0, which the log on disk no longer covers, reaches a but never b.
    scenario.network.hold("a");
    const inFlight = scenario.write("a", 1, { fua: true });
    scenario.runUntil(() => scenario.blockValue("a", 1, { image: "durable" }) === inFlight.tag, "the write is durable on a");
    scenario.crash("a");
    scenario.network.release("a");
    scenario.start("a");
    expectConverged(scenario);
  });
});

describe("resync progress", () => {
  test("a full resync to a new disk resumes where it stopped after the link drops", () => {
    const scenario = new Scenario({ blocks: 64, format: { b: "new" }, config: { resyncRateBytesPerTick: 2 * blockBytes, resyncCheckpointChunks: 1 } });
    scenario.runUntil(() => {
      const resync = scenario.status("b")?.resync;
      return resync !== undefined && resync.bitsRemaining > 0 && resync.bitsRemaining <= 40;
    }, "the full resync is under way");
    scenario.network.resetAll();
    const since = scenario.nowUs;
    scenario.runUntil(() => scenario.reportsOf("a", "decision", since).length > 0, "a decides again after the link is back");
    const decision = scenario.reportsOf("a", "decision", since)[0]!;
    expect(decision.kind === "decision" && { decision: decision.decision, full: decision.full }).toEqual({ decision: "resync", full: false });
    expectConverged(scenario);
  });
});

describe("a resync's record and its bitmap", () => {
  test("a power loss that keeps the superblock of a full resync's start but not its bitmap does not leave the target half copied", () => {
    // Simulator seed 294078: both nodes lost power 1.5 ms after a full resync to b's new disk
    // began. b's superblock (resync target, inconsistent) reached the disk, the bitmap pages
    // written beside it (every region to copy) did not; a's did not either. After the restart the
    // pair continued "an interrupted resync" from the bitmaps on the disks, which named nothing, and
    // both said synced with b's new disk never copied. The superblock is now written only once the
    // pages are durable. Here its write fails but lands (the same disk state as that power loss).
    const blocks = 32;
    const scenario = new Scenario({ blocks, format: { b: "new" }, preload: { a: Array.from({ length: blocks }, (_, block) => block) } });
    scenario.runUntil(() => scenario.reportsOf("b", "resyncStarted").length > 0, "b starts the full resync");
    scenario.metadataDisk("b").inject({ op: "write", offset: 0, length: 2 * blockBytes, error: "EIO", landed: "durable" });
    scenario.runUntil(() => scenario.reportsOf("b", "ioError").length > 0, "b's record of the resync's start failed");
    scenario.crash("a");
    scenario.crash("b");
    scenario.start("a");
    scenario.start("b");
    expectConverged(scenario);
    for (let block = 0; block < blocks; block++) expect(scenario.blockValue("b", block)).toBe(scenario.blockValue("a", block));
  });
});

describe("verify", () => {
  test("a verify repair is durable on the peer before it counts as repaired", () => {
    const scenario = new Scenario();
    scenario.waitSynced();
    // Block 9 was never written (the activity log does not cover it): bit rot on b's medium.
    scenario.disk("b").rot(9 * blockBytes + 100, 16);
    const verify = scenario.complete(scenario.verify("a", true));
    expect(verify.error).toBeNull();
    expect((verify.result as { repaired: number }).repaired).toBe(1);
    // Power loss of both nodes at once, before anything else reaches either disk.
    scenario.crash("a");
    scenario.crash("b");
    scenario.start("a");
    scenario.start("b");
    expectConverged(scenario);
    expect(scenario.blockValue("b", 9)).toBe(0);
  });

  test("verify finishes while client writes keep the volume busy", () => {
    // Slow disks: a client write is in flight at every instant of the run.
    const scenario = new Scenario({ blocks: 32, diskLatencyUs: 20_000 });
    scenario.waitSynced(undefined, 10_000);
    const verify = scenario.verify("a", false);
    let next = 0;
    const outstanding = new Set<ReturnType<Scenario["write"]>>();
    const deadlineUs = scenario.nowUs + 10_000_000;
    while (!verify.done && scenario.nowUs < deadlineUs) {
      for (const write of [...outstanding]) if (write.done) outstanding.delete(write);
      // Blocks 28..31: one activity-log extent, so no write ever waits for the log.
      while (outstanding.size < 2) outstanding.add(scenario.write("a", 28 + (next++ % 4)));
      scenario.runFor(1);
    }
    expect(verify.done).toBe(true);
    expect(verify.error).toBeNull();
  });
});

describe("verify across a switchover", () => {
  test("a verify whose node stops being the primary stops, and counts no extent the new primary may have written", () => {
    // Found by the simulator (test/sim/run.ts, seed 50522): a verify's read of an extent was still at
    // the disk when the roles switched; the new primary wrote that extent, answered the checksum with
    // its new bytes, and the verify reported the extent as differing while the pair was in sync.
    // With repair it would have tried to copy its older bytes over the new primary's (who refuses).
    const scenario = new Scenario({ blocks: 16, diskLatencyUs: 5_000 });
    scenario.waitSynced(undefined, 10_000);
    const verify = scenario.verify("a", true);
    scenario.runUntil(() => (scenario.inFlight("a")?.io.verifyRead ?? 0) > 0, "the verify reads an extent");
    scenario.setRole("a", 1, false);
    scenario.setRole("b", 1, true, 2);
    scenario.runUntil(() => scenario.status("b")?.sync === "synced" && scenario.status("a")?.sync === "synced", "the pair is in sync again under the new primary");
    // The new primary writes every block, the one under the verify's read among them.
    const writes = Array.from({ length: 16 }, (_, block) => ({ block, op: scenario.write("b", block) }));
    scenario.complete(verify, 10_000);
    for (const { op } of writes) expect(scenario.complete(op, 10_000).error).toBeNull();
    const result = verify.result as { mismatchCount: number; repaired: number } | undefined;
    expect({ mismatches: result?.mismatchCount ?? 0, repaired: result?.repaired ?? 0, error: verify.error?.message }).toEqual({ mismatches: 0, repaired: 0, error: "verify stopped: the peer became the volume's primary" });
    expectConverged(scenario, 10_000);
    for (const { block, op } of writes) expect([scenario.blockValue("a", block), scenario.blockValue("b", block)]).toEqual([op.tag, op.tag]);
  });
});

describe("verify while regions go dirty", () => {
  test("an extent whose answer comes after the pair left sync (a failed flush on the peer) gets no verdict", () => {
    // Found by the simulator (test/sim/run.ts, seed 52873): the peer's flush failed and dropped
    // cached writes (Linux) while a verify's extent was under comparison; the peer's checksum of
    // the dropped bytes came back after a resync of them had begun, and the verify counted (and
    // repaired) a difference that was the resync's to copy.
    const scenario = new Scenario({ blocks: 16, diskLatencyUs: 5_000, diskFaults: { flushFailureDropsCache: true, flushFailureEvicts: true } });
    scenario.waitSynced(undefined, 10_000);
    scenario.complete(scenario.write("a", 0), 10_000); // in b's cache, not yet flushed there
    scenario.disk("b").inject({ op: "flush", error: "EIO" });
    const verify = scenario.verify("a", false);
    scenario.runUntil(() => (scenario.inFlight("a")?.io.verifyRead ?? 0) > 0, "the verify reads its first extent");
    scenario.flush("a"); // the barrier reaches b, whose flush fails and drops block 0
    scenario.complete(verify, 10_000);
    const result = verify.result as { mismatchCount: number } | undefined;
    expect({ mismatches: result?.mismatchCount ?? 0, error: verify.error?.message }).toEqual({ mismatches: 0, error: "verify stopped: the replicas are no longer in sync" });
    expectConverged(scenario, 10_000);
  });
});

describe("client buffers and backings", () => {
  test("a guest changing its buffer while the write is in flight still leaves identical replicas", () => {
    const scenario = new Scenario();
    scenario.waitSynced();
    scenario.complete(scenario.write("a", 3)); // the activity log covers block 3: the next write starts at once
    const buffer = scenario.tagged(900, 1, 3);
    const write = scenario.writeBuffer("a", 3, buffer);
    buffer.fill(0xee, 0, 64); // virtio has no stable pages: the guest may reuse the page at once
    scenario.complete(write);
    expect(write.error).toBeNull();
    expectConverged(scenario);
    expect(scenario.blockValue("a", 3)).toBe(900); // what the buffer held when the write was submitted
  });

  test("the same with a Buffer (whose slice is a view, not a copy): the replicas still hold what it held at submission", () => {
    const scenario = new Scenario();
    scenario.waitSynced();
    scenario.complete(scenario.write("a", 3));
    const buffer = Buffer.from(scenario.tagged(901, 1, 3));
    const write = scenario.writeBuffer("a", 3, buffer);
    buffer.fill(0xee, 0, 64);
    scenario.complete(write);
    expect(write.error).toBeNull();
    expectConverged(scenario);
    expect(scenario.blockValue("a", 3)).toBe(901);
  });

  test("a failed flush that drops cached writes (Linux) on the primary is repaired from the peer", () => {
    const scenario = new Scenario({ diskFaults: { flushFailureDropsCache: true, flushFailureEvicts: true } });
    scenario.waitSynced();
    const write = scenario.complete(scenario.write("a", 6));
    scenario.disk("a").inject({ op: "flush", error: "EIO" });
    const flush = scenario.complete(scenario.flush("a"));
    expect(flush.error?.code).toBe("EIO");
    expectConverged(scenario);
    expect(scenario.blockValue("a", 6)).toBe(write.tag);
  });

  test("a failed barrier that drops cached writes (Linux) on the secondary is resynced to it", () => {
    const scenario = new Scenario({ diskFaults: { flushFailureDropsCache: true, flushFailureEvicts: true } });
    scenario.waitSynced();
    const write = scenario.complete(scenario.write("a", 6));
    scenario.disk("b").inject({ op: "flush", error: "EIO" });
    scenario.complete(scenario.flush("a"));
    scenario.complete(scenario.flush("a"));
    expectConverged(scenario);
    expect(scenario.blockValue("b", 6)).toBe(write.tag);
  });

  test("TRIM on a backing that keeps the data leaves both replicas with the same bytes", () => {
    const scenario = new Scenario();
    scenario.disk("b").faults.trimKeepsDataProbability = 1;
    scenario.waitSynced();
    scenario.complete(scenario.write("a", 7));
    const trim = scenario.complete(scenario.trim("a", 7));
    expect(trim.error).toBeNull();
    expectConverged(scenario);
  });
});

describe("resync sources", () => {
  test("a resync source makes what it copies durable first: data it held as a secondary survives its crash", () => {
    // No periodic barrier: what b receives as the secondary stays in its cache.
    const scenario = new Scenario({ blocks: 64, config: { barrierIntervalTicks: 100_000 } });
    scenario.waitSynced();
    const mirrored = scenario.complete(scenario.write("a", 5));
    // The link is cut, the roles switch (a demoted, b promoted), b writes alone.
    scenario.network.cut(60_000_000);
    scenario.runUntil(() => !scenario.linkUp("a") && !scenario.linkUp("b"), "both nodes see the link down");
    scenario.setRole("a", 1, false);
    scenario.setRole("b", 1, true);
    scenario.complete(scenario.write("b", 40));
    scenario.network.heal();
    // b resyncs a (from b's cache, where block 5 still sits), then loses power.
    scenario.waitSynced();
    scenario.crash("b");
    scenario.start("b");
    expectConverged(scenario);
    expect([scenario.blockValue("a", 5), scenario.blockValue("b", 5)]).toEqual([mirrored.tag, mirrored.tag]);
  });
});

describe("a primary that is a resync target", () => {
  test("its writes are durable on the source before they count, so the source's crash cannot undo them", () => {
    // b serves IO while its own replica is an interrupted resync target; a is the source.
    const scenario = new Scenario({ primary: "b", format: { b: "interruptedTarget" }, config: { resyncRateBytesPerTick: 4096 } });
    scenario.runUntil(() => scenario.status("b")?.sync === "resyncing", "the resync runs");
    const write = scenario.complete(scenario.write("b", 12));
    expect({ error: write.error, mirrored: write.info?.mirrored }).toEqual({ error: null, mirrored: true });
    scenario.crash("a"); // its cache is gone
    scenario.start("a");
    expectConverged(scenario);
    expect([scenario.blockValue("a", 12), scenario.blockValue("b", 12)]).toEqual([write.tag, write.tag]);
  });
});

describe("a generation that could not be recorded", () => {
  test("a superblock write that failed yet reached the disk is not taken for writes made alone", () => {
    // Simulator seed 161915: the write recording a's generation of its own failed, but its bytes
    // were on the medium. a went on with the generation it had; after a crash it read the other one
    // back and called the pair a split brain against a peer that alone had written since.
    const scenario = new Scenario();
    scenario.waitSynced();
    scenario.crash("b");
    scenario.metadataDisk("a").inject({ op: "write", offset: 0, length: 2 * blockBytes, error: "EIO", landed: "durable" });
    expect(scenario.complete(scenario.write("a", 1)).error?.code).toBe("EIO"); // its generation was not recorded
    scenario.runFor(50);
    scenario.crash("a");
    scenario.start("b");
    scenario.runUntil(() => scenario.status("b") !== undefined, "b opened its volume");
    scenario.setRole("a", 1, false);
    scenario.setRole("b", 1, true, 2);
    const alone = scenario.complete(scenario.write("b", 2)); // b starts a generation of its own
    expect(alone.error).toBeNull();
    const since = scenario.nowUs;
    scenario.start("a");
    expectConverged(scenario);
    expect(scenario.reportsOf("a", "splitBrain", since)).toEqual([]);
    expect(scenario.blockValue("a", 2)).toBe(alone.tag);
  });
});

describe("a close whose flush fails", () => {
  test("leaves on the disk what the volume reads: a failed write's cached bytes are written again", () => {
    // Simulator seed 170767. On Linux a failed flush marks the cached pages it covered clean
    // without writing them: they read back, and survive a restart of the daemon, but never reach
    // the disk. b's mirrored write failed after some of it reached b's cache, then b's close flush
    // failed: b closed with bytes it would serve (and, as a resync source, send) that a power loss
    // would take away; after a resync from it the replicas differed on disk while both were in sync.
    const scenario = new Scenario({ diskFaults: { flushFailureDropsCache: true } });
    scenario.waitSynced();
    scenario.disk("b").inject({ op: "write", offset: 3 * blockBytes, length: blockBytes, error: "EIO", landed: "all" });
    scenario.complete(scenario.write("a", 3));
    scenario.disk("b").inject({ op: "flush", error: "EIO" });
    expect(scenario.complete(scenario.closeVolume("b", 1)).error).not.toBeNull(); // not closed clean
    const served = scenario.blockValue("b", 3);
    scenario.crash("b"); // power loss: only what is on the disk remains
    expect(scenario.blockValue("b", 3)).toBe(served);
  });
});

describe("a daemon killed after a failed flush", () => {
  test("does not send as a resync source bytes that read back but are not on its disk", () => {
    // On Linux a failed flush marks the cached pages clean without writing them: they read back,
    // and outlive the daemon, but never reach the disk. a writes alone, its flush fails, and the
    // daemon dies before it has written those regions again.
    const scenario = new Scenario({ diskFaults: { flushFailureDropsCache: true } });
    scenario.waitSynced();
    scenario.crash("b");
    const write = scenario.complete(scenario.write("a", 3));
    expect(write.error).toBeNull();
    scenario.disk("a").inject({ op: "flush", error: "EIO" });
    expect(scenario.complete(scenario.flush("a")).error?.code).toBe("EIO");
    scenario.kill("a"); // the rewrite it started is still reading
    scenario.start("a");
    scenario.start("b");
    scenario.setRole("a", 1, true, 2);
    expectConverged(scenario);
    scenario.crash("a");
    scenario.crash("b");
    expect(scenario.blockValue("a", 3)).toBe(scenario.blockValue("b", 3));
  });

  test("a rewrite whose read-back fails is tried again, not dropped", () => {
    const scenario = new Scenario({ diskFaults: { flushFailureDropsCache: true } });
    scenario.waitSynced();
    scenario.crash("b");
    expect(scenario.complete(scenario.write("a", 3)).error).toBeNull();
    scenario.disk("a").inject({ op: "flush", error: "EIO" });
    scenario.disk("a").inject({ op: "read", offset: 3 * blockBytes, length: blockBytes, error: "EIO" });
    expect(scenario.complete(scenario.flush("a")).error?.code).toBe("EIO");
    scenario.runFor(100); // a tick queues the rewrite again
    expect(scenario.complete(scenario.flush("a")).error).toBeNull();
    const served = scenario.blockValue("a", 3);
    scenario.crash("a"); // power loss: what the flush made durable remains
    expect(scenario.blockValue("a", 3)).toBe(served);
  });
});

describe("a read in flight when a failed flush drops its region", () => {
  test("does not return what the failed flush evicted", () => {
    // Simulator seed 211012: a read on the secondary was issued before its flush failed and
    // evicted the cached copy of a write it had acknowledged; it completed after, with older data.
    const scenario = new Scenario({ diskFaults: { flushFailureDropsCache: true, flushFailureEvicts: true } });
    scenario.waitSynced();
    const write = scenario.complete(scenario.write("a", 3)); // b holds it in its cache only
    scenario.disk("b").inject({ op: "flush", error: "EIO" });
    const flush = scenario.flush("a"); // b flushes for it, and fails
    scenario.runUntil(() => Object.keys(scenario.inFlight("b")?.io ?? {}).some((kind) => /flush/i.test(kind)), "b is flushing");
    const read = scenario.read("b", 3);
    scenario.complete(flush);
    scenario.complete(read);
    // Read again from the peer, which holds it: never the older bytes.
    expect(read.error).toBeNull();
    expect(identifyBlock(read.data!.subarray(0, blockBytes), 1, 3)).toEqual({ kind: "write", id: write.tag });
  });
});
