// Scripted scenarios of the lease (src/quorum/lease.ts through its driver), one per rule or per bug
// the simulator found, on two nodes with manual clocks and an in-memory witness
// (test/helpers/quorum-pair.ts). Each asserts what the nodes do — which volumes they may write, in
// which epoch, what is on the witness, what they persist — and the times the failure table promises
// (DESIGN.md §5), measured in simulated milliseconds.
import { describe, expect, test } from "bun:test";
import { defaultQuorumTiming } from "../../src/quorum/config.ts";
import { encodePaxosBlock, LeaseMode, witnessLayout } from "../../src/quorum/format.ts";
import { type PairNode, QuorumPair } from "../helpers/quorum-pair.ts";

const timing = defaultQuorumTiming;

/** Start a pair, let it record SHARED (both in sync), and return it. */
function sharedPair(options: ConstructorParameters<typeof QuorumPair>[0] = {}): QuorumPair {
  const pair = new QuorumPair(options);
  pair.start();
  for (const node of pair.nodes) node.driver.synced(true);
  pair.until("SHARED is recorded and both know it", () => pair.nodes.every((node) => node.driver.core.latestRecord.value.mode === LeaseMode.Shared && node.driver.core.latestRecord.value.holders.length === 2));
  return pair;
}

const epochOf = (node: PairNode) => node.driver.core.latestRecord.value.epoch;

/** Cut the link of a pair and wait until `winner` owns the lease and the other node knows it lost. */
function cutAndDecide(pair: QuorumPair, winner: PairNode): void {
  const loser = pair.nodes[1 - winner.index]!;
  const name = (node: PairNode) => ["a", "b"][node.index];
  pair.cut();
  pair.until(`${name(winner)} owns the lease`, () => winner.driver.status().quorum === "solo");
  pair.until(`${name(loser)} knows it is outdated`, () => loser.driver.core.phaseName === "outdated");
}

/** Whether an encoded Paxos block sector carries an accepted value (a phase-2 write): byte 72 of the record. */
function decodePaxosValueSet(sector: Uint8Array): boolean {
  void encodePaxosBlock;
  return sector[72] === 1;
}

describe("link cut with a healthy witness", () => {
  test("both freeze at once; the node serving more volumes wins at once and resumes; the loser's volumes follow its fenced(epoch)", () => {
    const pair = sharedPair({ primariesOnA: [1, 2], volumes: [1, 2, 3] });
    const { a, b } = pair;
    expect(a.writable()).toEqual([1, 2]);
    expect(b.writable()).toEqual([3]);
    pair.cut();
    // Rule 2: the moment a node notices, it writes nothing.
    pair.until("b notices the cut", () => b.driver.core.phaseName !== "connected");
    expect(b.writable()).toEqual([]);
    const resumedMs = pair.until("a owns a new epoch and writes its primaries again", () => a.driver.status().quorum === "solo" && a.writable().length === 2);
    expect(resumedMs).toBeLessThanOrEqual(timing.linkTimeoutMs + timing.heartbeatIntervalMs + 100);
    expect(a.report("won")[0]?.forced).toBe(false);
    expect(b.report("won")).toEqual([]);
    // The loser: outdated, persisted, its primaries given up, fenced(epoch) in its slot.
    const epoch = epochOf(a);
    pair.until("b knows it lost", () => b.driver.core.phaseName === "outdated");
    expect(b.persisted.outdatedEpoch).toBe(epoch);
    expect(b.roles.get(3)).toBe(false);
    const promotedMs = pair.until("a promotes b's volume", () => a.writable().length === 3);
    expect(pair.state().slots[1].newest?.record.fencedEpoch).toBe(epoch);
    expect(a.report("promoted")[0]).toMatchObject({ epoch, volumes: [3], evidence: "fenced" });
    expect(resumedMs + promotedMs).toBeLessThanOrEqual(timing.linkTimeoutMs + 3 * timing.heartbeatIntervalMs + 100);
    expect(b.writable()).toEqual([]);
    // The decided record on the witness says so.
    const decided = pair.state().decided[0].newest?.record;
    expect(decided?.value).toMatchObject({ mode: LeaseMode.Solo, owner: 0, holders: [0], forced: false, epoch });
  });

  test("the node serving fewer volumes proposes only after headStart", () => {
    const pair = sharedPair({ primariesOnA: [1, 2], volumes: [1, 2, 3] });
    const { a, b } = pair;
    a.witness = "fail"; // a cannot win: b, the less preferred, must take over — but not at once
    pair.cut();
    const lostMs = pair.until("b notices the cut", () => b.driver.core.phaseName === "deciding");
    const wonMs = pair.until("b wins", () => b.report("won").length === 1);
    expect(wonMs).toBeGreaterThanOrEqual(timing.headStartMs - 10);
    expect(wonMs).toBeLessThanOrEqual(timing.headStartMs + timing.heartbeatIntervalMs);
    expect(lostMs).toBeLessThanOrEqual(timing.linkTimeoutMs + timing.heartbeatIntervalMs);
  });
});

describe("rule 6: the witness alone", () => {
  test("losing only the witness changes nothing while the link is up; status says the witness is unreachable", () => {
    const pair = sharedPair();
    const { a, b } = pair;
    a.witness = b.witness = "fail";
    pair.advance(20_000);
    expect(a.writable()).toEqual([1, 2]);
    expect(b.writable()).toEqual([3]);
    const status = a.driver.status();
    expect(status.quorum).toBe("shared");
    expect(status.witness.reachable).toBe(false);
    expect(status.witness.failure).toBe("EIO");
  });

  test("losing the link and the witness together freezes both and says no quorum", () => {
    const pair = sharedPair();
    const { a, b } = pair;
    a.witness = b.witness = "fail";
    pair.cut();
    pair.advance(30_000);
    expect(a.writable()).toEqual([]);
    expect(b.writable()).toEqual([]);
    for (const node of [a, b]) {
      expect(node.driver.status().quorum).toBe("no-quorum");
      expect(node.grants.get(1)).toMatchObject({ kind: "frozen" });
    }
    expect((a.grants.get(1) as { reason: string }).reason).toContain("no quorum");
  });
});

describe("rules 4 and 7: the owner's lease", () => {
  test("an owner whose heartbeat writes stall fences itself by selfFenceTimeout, and writes again only in a new epoch", () => {
    const pair = sharedPair();
    const { a } = pair;
    pair.cut();
    pair.until("a owns the lease", () => a.driver.status().quorum === "solo");
    const owned = epochOf(a);
    a.witness = "fail";
    const fencedMs = pair.until("a stops writing", () => a.writable().length === 0);
    // From the start of its last good heartbeat (at most one interval before the failure) to the fence.
    expect(fencedMs).toBeGreaterThanOrEqual(timing.selfFenceTimeoutMs - timing.heartbeatIntervalMs);
    expect(fencedMs).toBeLessThanOrEqual(timing.selfFenceTimeoutMs + 50);
    expect(a.driver.core.phaseName).toBe("selfFenced");
    expect(a.grants.get(1)).toMatchObject({ kind: "frozen" });
    a.witness = "ok";
    pair.until("a writes again", () => a.writable().length > 0);
    expect(epochOf(a)).toBe(owned + 1n);
    expect(a.grants.get(1)).toEqual({ kind: "write", epoch: Number(owned + 1n) });
  });

  test("a stopped process that resumes after its lease ran out writes nothing in its old epoch, not even for one event", () => {
    const pair = sharedPair();
    const { a } = pair;
    pair.cut();
    pair.until("a owns the lease", () => a.driver.status().quorum === "solo");
    const owned = epochOf(a);
    pair.stop(a);
    pair.advance(timing.selfFenceTimeoutMs + 500);
    const logged = a.grantLog.length;
    pair.resume(a);
    // The first thing it does is freeze everything; it may write again only in an epoch it wins anew.
    const after = a.grantLog.slice(logged);
    expect(after.slice(0, 2).map((change) => change.grant.kind)).toEqual(["frozen", "frozen"]);
    expect(a.report("selfFenced").length).toBe(1);
    for (const change of after) if (change.grant.kind === "write") expect(BigInt(change.grant.epoch)).toBeGreaterThan(owned);
  });

  test("the watchdog is fed while the lease holds and never while the owner serves past it", () => {
    const pair = sharedPair();
    const { a } = pair;
    pair.advance(5_000);
    expect(a.watchdogFeeds).toBeGreaterThanOrEqual(9);
    pair.cut();
    pair.until("a owns the lease", () => a.driver.status().quorum === "solo");
    a.witness = "fail";
    pair.until("a fences itself", () => a.writable().length === 0);
    // Every feed of the interval was given while a's lease still held.
    const feedsWhileServing = a.watchdogFeeds;
    pair.advance(2_000);
    expect(a.watchdogFeeds).toBeGreaterThan(feedsWhileServing); // frozen, it serves nothing: the machine need not be reset
  });
});

describe("rule 5 and forced promotion", () => {
  test("a forced promotion is refused while the peer heartbeats, and wins once the peer has been still for deadTimeout", () => {
    const pair = sharedPair({ primariesOnA: [1, 2, 3], volumes: [1, 2, 3] });
    const { a, b } = pair;
    cutAndDecide(pair, a);
    let answer: string | null | undefined;
    b.driver.forcePromotion((error) => (answer = error));
    expect(answer).toContain("not provably fenced");
    pair.stop(a); // a dies (and never comes back in this test)
    pair.advance(timing.deadTimeoutMs + timing.heartbeatIntervalMs * 2);
    answer = undefined;
    b.driver.forcePromotion((error) => (answer = error));
    pair.until("the forced ballot finishes", () => answer !== undefined);
    expect(answer).toBeNull();
    expect(b.driver.core.latestRecord.value).toMatchObject({ mode: LeaseMode.Solo, owner: 1, forced: true });
    pair.until("b writes every volume", () => b.writable().length === 3);
    expect(b.report("promoted")[0]?.evidence).toBe("heartbeat still");
  });

  test("a forced promotion asked while the node is still starting is refused with a reason, then wins once it has decided", () => {
    // Found by the quorum simulator (seed 530087): b, restarted, was asked to force a promotion
    // within linkTimeout of its start (its peer provably fenced by its slot); the forced ballot won
    // and the core stopped on its own assertion (no phase starting → owner): the daemon would exit.
    const pair = sharedPair({ primariesOnA: [1, 2, 3], volumes: [1, 2, 3] });
    const { a, b } = pair;
    cutAndDecide(pair, a);
    const owned = epochOf(a);
    // a's heartbeat writes fail until it fences itself; then only its slot writes land, so it says
    // fenced(epoch) on the witness and can run no ballot; then it goes down.
    const slotOfA = witnessLayout.slot(0);
    let fenced = false;
    a.ioFate = (io) => (io.kind === "read" ? "ok" : fenced && io.sector >= slotOfA && io.sector <= slotOfA + 1 ? "ok" : "fail");
    pair.until("a fences itself", () => a.driver.core.phaseName === "selfFenced");
    fenced = true;
    pair.until("the witness says a is fenced", () => (pair.state().slots[0].newest?.record.fencedEpoch ?? 0n) >= owned);
    a.driver.stop();
    // b restarts and reads the witness; it is still waiting for a to connect.
    b.driver.stop();
    b.start();
    pair.advance(200);
    expect(b.driver.core.phaseName).toBe("starting");
    let answer: string | null | undefined;
    b.driver.forcePromotion((error) => (answer = error));
    expect(answer).toMatch(/starting/);
    expect(b.driver.core.phaseName).toBe("starting");
    pair.until("b has decided it is alone", () => b.driver.core.phaseName !== "starting");
    answer = undefined;
    b.driver.forcePromotion((error) => (answer = error));
    pair.until("the forced ballot finishes", () => answer !== undefined);
    expect(answer).toBeNull();
    expect(b.driver.core.latestRecord.value).toMatchObject({ mode: LeaseMode.Solo, owner: 1, forced: true, epoch: owned + 1n });
    pair.until("b writes every volume", () => b.writable().length === 3);
  });

  test("a winner that learns its win from the witness (its own commit's answer was lost) still promotes the loser's volumes", () => {
    // Found by the simulator (seed 1977): a's phase-2 write landed, the read that would have told a
    // it committed failed; b adopted a's value and committed it; a learned SOLO(a) from the witness
    // only, never took on the promotion, and b's demoted volumes were left without a primary.
    const pair = sharedPair({ primariesOnA: [1], volumes: [1, 2, 3] });
    const { a, b } = pair;
    b.witness = "fail"; // b cannot propose yet; a proposes after its head start
    let phase2Written = false;
    a.ioFate = (io) => {
      if (io.kind === "write" && io.sector >= witnessLayout.paxos(0) && io.sector <= witnessLayout.paxos(0) + 1 && io.bytes && decodePaxosValueSet(io.bytes)) {
        phase2Written = true;
        return "ok";
      }
      return phase2Written ? "fail" : "ok";
    };
    pair.cut();
    pair.until("a's phase-2 write lands", () => phase2Written);
    pair.advance(200);
    expect(a.report("won")).toEqual([]); // a does not know it won
    b.witness = "ok";
    pair.until("b adopts a's value and loses", () => b.driver.core.phaseName === "outdated");
    expect(b.driver.core.latestRecord.value).toMatchObject({ mode: LeaseMode.Solo, owner: 0 });
    expect([...b.roles.values()]).toEqual([false, false, false]);
    // The link returns while a's witness still fails: a is connected before it can run another ballot.
    pair.connect();
    pair.until("a is connected", () => a.driver.core.phaseName === "connected");
    a.ioFate = undefined;
    pair.until("every volume has a writer again", () => a.writable().length + b.writable().length === 3, 20_000);
    expect(a.writable()).toEqual([1, 2, 3]);
    expect(a.report("won")).toEqual([]); // it never won a ballot of its own in this process
  });

  test("stillness proves nothing while a connection is up, even one still in its handshake", () => {
    // Found by the simulator (seed 240): the peer had finished its side of a handshake and wrote as
    // connected while this node, not yet connected, counted the peer's still heartbeat as death.
    const pair = sharedPair({ primariesOnA: [1, 2], volumes: [1, 2, 3] });
    const { a, b } = pair;
    b.witness = "fail";
    pair.cut();
    pair.until("a owns the lease", () => a.driver.status().quorum === "solo");
    pair.stop(b);
    // Connection attempts that never complete their handshake keep resetting the count.
    for (let attempt = 0; attempt < 12; attempt++) {
      a.driver.linkUp();
      pair.advance(1_000);
    }
    expect(a.report("promoted")).toEqual([]);
    // Once the link stays down, the full deadTimeout from the last attempt is needed.
    const promotedMs = pair.until("a promotes b's volume", () => a.writable().length === 3);
    expect(promotedMs).toBeGreaterThanOrEqual(timing.deadTimeoutMs - 1_000 - timing.linkTimeoutMs);
    expect(a.report("promoted")[0]?.evidence).toBe("heartbeat still");
  });
});

describe("rule 5: what stillness proves", () => {
  test("a peer that wins an epoch while its heartbeat stands still is not judged fenced for it: its ballot is a sign of life", () => {
    // Found by the quorum simulator (seed 511922): b came back from a crash with its witness path
    // failing, won the next epoch as soon as the path worked (Paxos and decided records), and its
    // first heartbeat landed just after. a's read between the two showed b's win beside a heartbeat
    // that had stood still since before the ballot, and a judged b fenced for the epoch b had just
    // won; b renewed in time and wrote in it. (A forced promotion by a would have made two writers.)
    const pair = sharedPair({ primariesOnA: [], volumes: [1, 2, 3] });
    const { a, b } = pair;
    cutAndDecide(pair, b);
    const first = epochOf(b);
    // b crashes and stays down past the dead timeout: a may count it fenced for that epoch.
    b.driver.stop();
    pair.advance(timing.deadTimeoutMs + 2 * timing.heartbeatIntervalMs);
    expect(a.report("peerFenced")).toEqual([{ kind: "peerFenced", epoch: first, evidence: "heartbeat still" }]);
    // b comes back; its slot (heartbeat) writes fail, everything else it writes lands.
    const slotOfB = witnessLayout.slot(1);
    b.ioFate = (io) => (io.kind === "write" && (io.sector === slotOfB || io.sector === slotOfB + 1) ? "fail" : "ok");
    const wins = b.report("won").length;
    b.start();
    pair.until("b wins the next epoch", () => b.report("won").length > wins);
    const second = epochOf(b);
    expect(second).toBe(first + 1n);
    pair.until("a reads b's win", () => epochOf(a) === second);
    pair.advance(4 * timing.heartbeatIntervalMs);
    expect(a.report("peerFenced").filter((report) => report.epoch === second)).toEqual([]);
    let answer: string | null | undefined;
    a.driver.forcePromotion((error) => (answer = error));
    expect(answer).toContain("not provably fenced");
    // Here b's heartbeats keep failing, so it fences itself in that epoch; once they land it wins
    // the next one and writes. When it stops for good, its stillness counts again, from its last
    // sign of life.
    b.ioFate = undefined;
    pair.until("b writes its volumes", () => b.writable().length === 3);
    const current = epochOf(b);
    b.driver.stop();
    const judgedMs = pair.until("a judges b fenced for its epoch", () => a.report("peerFenced").some((report) => report.epoch === current), 3 * timing.deadTimeoutMs);
    expect(judgedMs).toBeGreaterThanOrEqual(timing.deadTimeoutMs - timing.heartbeatIntervalMs);
    expect(a.report("peerFenced").at(-1)).toEqual({ kind: "peerFenced", epoch: current, evidence: "heartbeat still" });
  });
});

describe("stale messages", () => {
  test("messages that waited while a process was stopped do not pass for the peer's current state", () => {
    // Found by the simulator (seed 194): a stopped node resumed, read the peer's old messages on a
    // new connection, believed itself connected in the old epoch and wrote beside the new owner.
    const pair = sharedPair({ primariesOnA: [1, 2, 3], volumes: [1, 2, 3] });
    const { a, b } = pair;
    pair.stop(a);
    pair.until("b drops the silent link", () => !pair.linkUp);
    pair.connect(); // the peer redials; the stopped node's kernel accepts the connection
    pair.advance(600); // b says hello (still in the old epoch) on the new connection
    pair.until("b owns a new epoch and writes a's volumes", () => b.writable().length === 3, timing.deadTimeoutMs + 5_000);
    const logged = a.grantLog.length;
    // A real witness read takes a while: the queued messages are handled before it answers.
    a.witness = "hang";
    pair.resume(a);
    pair.advance(2_000);
    a.witness = "ok";
    for (const release of a.hungIo.splice(0)) release();
    pair.advance(1_000);
    // Not one write grant, not even while a works through the queued messages.
    expect(a.grantLog.slice(logged).filter((change) => change.grant.kind === "write")).toEqual([]);
    expect(a.writable()).toEqual([]);
    expect(a.driver.core.latestRecord.value).toMatchObject({ mode: LeaseMode.Solo, owner: 1 });
  });
});

describe("stale 'in sync'", () => {
  test("a stopped node that resumes before it notices its link is gone does not record SHARED on the peer's old 'in sync'", () => {
    // Found by the combined simulator (test/sim/quorum-replica.ts, seed 18463): a was stopped while
    // the link was silently cut; b won epoch 2 alone and wrote. a resumed still connected in its own
    // view, learned epoch 2 from the witness, and on the peer's last message (in sync, sent in epoch
    // 1) recorded SHARED with both as data holders. That made it a holder again without b's writes:
    // it won the next epoch, wrote alone over the same generation, and the pair met in split brain.
    const pair = sharedPair({ primariesOnA: [1], volumes: [1, 2, 3] });
    const { a, b } = pair;
    pair.stop(a);
    pair.cut();
    // b's replica link notices the silence long before the quorum's own linkTimeout would; b serves
    // more volumes, so it proposes at once.
    b.driver.linkDown("nothing received from the peer for 150 ms");
    pair.until("b owns a new epoch alone", () => b.driver.status().quorum === "solo" && b.writable().includes(2));
    const soloEpoch = epochOf(b);
    const logged = a.grantLog.length;
    // a's process continues less than a linkTimeout after b's last message, so its quorum still counts
    // the link up; the first thing it handles is its replica saying (still) in sync.
    a.running = true;
    a.driver.synced(true);
    pair.until("a reads b's epoch on the witness", () => epochOf(a) >= soloEpoch, timing.heartbeatIntervalMs + 100);
    pair.advance(100);
    expect(a.driver.core.phaseName).toBe("connected");
    expect(epochOf(a)).toBe(soloEpoch);
    expect(a.driver.core.latestRecord.value).toMatchObject({ mode: LeaseMode.Solo, owner: 1, holders: [1] });
    expect(pair.state().decided[0].newest?.record.value).toMatchObject({ mode: LeaseMode.Solo, owner: 1, holders: [1] });
    expect(a.grantLog.slice(logged).filter((change) => change.grant.kind === "write")).toEqual([]);
    // It notices the silence, is no data holder, and waits; b keeps writing in its epoch.
    pair.until("a notices the cut", () => a.driver.core.phaseName !== "connected");
    pair.advance(timing.deadTimeoutMs);
    expect(a.report("won")).toEqual([]);
    expect(a.writable()).toEqual([]);
    expect(b.writable()).toEqual(expect.arrayContaining([2, 3]));
    expect(epochOf(b)).toBe(soloEpoch);
  });
});

describe("rule 3 and cold start", () => {
  test("after both lost power, the node that does not hold the latest data waits for the one that does, and says so", () => {
    const pair = sharedPair();
    const { a, b } = pair;
    cutAndDecide(pair, a);
    // Both lose power; only b comes back.
    for (const node of [a, b]) node.driver.stop();
    pair.stop(a);
    b.start();
    pair.advance(20_000);
    expect(b.writable()).toEqual([]);
    expect(b.report("won")).toEqual([]);
    const status = b.driver.status();
    expect(status.quorum).toBe("frozen");
    expect(status.reason).toContain("waiting for a, the only node with the latest data");
    expect(status.nextSafeAction).toContain("tandem failover --force");
  });
});

describe("a hung witness", () => {
  test("IO past its deadline counts as failed, later IO is refused as busy at once, and the witness comes back when the stuck IO returns", () => {
    const pair = sharedPair();
    const { a } = pair;
    a.witness = "hang";
    const lostMs = pair.until("a counts the witness as lost", () => !a.driver.status().witness.reachable);
    expect(lostMs).toBeLessThanOrEqual(timing.heartbeatIntervalMs + timing.ioTimeoutMs + 20);
    expect(a.report("witness").find((report) => !report.reachable)?.reason).toBe(`no answer within ${timing.ioTimeoutMs} ms`);
    pair.advance(timing.heartbeatIntervalMs * 2);
    const status = a.driver.status();
    expect(status.witness.failure).toContain("busy: the previous witness IO has not returned");
    expect(status.ioOutstandingMs).toBeGreaterThan(timing.ioTimeoutMs);
    expect(a.hungIo.length).toBe(1); // one stuck request, never a pile of them
    expect(a.writable()).toEqual([1, 2]); // the link is up: nothing stops (rule 6)
    a.witness = "ok";
    for (const release of a.hungIo.splice(0)) release();
    pair.until("the witness is reachable again", () => a.driver.status().witness.reachable);
    expect(a.driver.status().latency.write.count + a.driver.status().latency.read.count).toBeGreaterThan(10);
  });
});

describe("rule 5 across a restart", () => {
  test("a loser whose fenced(epoch) never reached the witness before it went down says fenced(epoch) when it comes back, so the winner promotes its volumes", () => {
    // Found by the combined simulation (test/sim/quorum-replica.ts): without this, the winner waits
    // for fence evidence forever, and once the pair is SHARED again no node is primary of b's volume.
    const pair = sharedPair({ primariesOnA: [1, 2], volumes: [1, 2, 3] });
    const { a, b } = pair;
    // b's slot writes fail: it learns that it lost, but its fenced(epoch) never lands; nor does a's
    // fence request in b's mailbox (a paused or hung then, as in the simulation).
    b.ioFate = (io) => (io.kind === "write" && io.sector === witnessLayout.slot(1) ? "fail" : "ok");
    a.ioFate = (io) => (io.kind === "write" && io.sector === witnessLayout.mailbox(1) ? "fail" : "ok");
    pair.cut();
    pair.until("a owns the lease", () => a.driver.status().quorum === "solo");
    const epoch = epochOf(a);
    pair.until("b knows it lost", () => b.driver.core.phaseName === "outdated");
    expect(b.persisted.outdatedEpoch).toBe(epoch);
    expect(a.writable()).toEqual([1, 2]);
    // b loses power and comes back with a healthy witness; the link returns.
    b.driver.stop();
    b.ioFate = undefined;
    expect(pair.state().slots[1].newest?.record.fencedEpoch ?? 0n).toBeLessThan(epoch);
    b.start();
    pair.connect();
    pair.until("a promotes b's volume", () => a.writable().length === 3, 3 * timing.deadTimeoutMs);
    expect(a.report("promoted")[0]).toMatchObject({ epoch, volumes: [3], evidence: "fenced" });
    expect(b.writable()).toEqual([]);
  });
});
