// The drivers sleep until their core's next acting tick (src/replica/driver.ts, src/quorum/driver.ts):
// an idle mirrored pair under the quorum wakes a few times a second instead of every 10 ms tick,
// and still keeps its link alive, heartbeats the witness, feeds the watchdog, barriers after a
// write and finds a silent peer out on time. A core that leaves a deadline out of nextActionTick
// is caught: the ticks it called quiet act, and the drivers (strict in the scenarios) throw.
import { afterEach, describe, expect, test } from "bun:test";
import { defaultReplicaConfig } from "../../src/replica/config.ts";
import { NodeCore } from "../../src/replica/node.ts";
import { MessageType } from "../../src/replica/wire.ts";
import { QuorumCore } from "../../src/quorum/lease.ts";
import { QuorumPair } from "../helpers/quorum-pair.ts";
import { Scenario } from "../sim/scenario.ts";

// The daemon's timers (the scenarios' defaults are shorter, to run faster).
const daemon = defaultReplicaConfig();
const timers = {
  keepaliveIntervalTicks: daemon.keepaliveIntervalTicks,
  linkTimeoutTicks: daemon.linkTimeoutTicks,
  barrierIntervalTicks: daemon.barrierIntervalTicks,
  bitmapWritebackIntervalTicks: daemon.bitmapWritebackIntervalTicks,
};

const sharedPair = () => {
  const scenario = new Scenario({ quorum: {}, config: timers });
  const shared = (name: "a" | "b") => scenario.quorumOf(name).status().quorum === "shared";
  scenario.runUntil(() => shared("a") && shared("b") && scenario.isSynced(), "both nodes connected, in sync and SHARED", 10_000);
  // Let the start-up's barriers and bitmap writebacks pass.
  scenario.runFor(daemon.bitmapWritebackIntervalTicks * daemon.tickMs + 1_000);
  return scenario;
};

const restore: (() => void)[] = [];
afterEach(() => {
  for (const undo of restore.splice(0)) undo();
});

/** Replace a method of a core's prototype for one test (put back after it); `replacement` gets the original. */
function plant<T, K extends keyof T>(prototype: T, method: K, replacement: (original: T[K]) => T[K]): void {
  const original = prototype[method];
  prototype[method] = replacement(original);
  restore.push(() => (prototype[method] = original));
}

describe("idle drivers sleep until their core's next acting tick", () => {
  test("an idle pair wakes a few times a second, keeps its link and heartbeats, and feeds the watchdog", () => {
    const scenario = sharedPair();
    const since = scenario.nowUs;
    const callbacks = { ...scenario.timerCallbacks };
    const seconds = 10;
    let worstUnfedMs = 0;
    for (let step = 0; step < seconds * 10; step++) {
      scenario.runFor(100);
      worstUnfedMs = Math.max(worstUnfedMs, scenario.watchdogUnfedMs("a"), scenario.watchdogUnfedMs("b"));
    }
    for (const name of ["a", "b"] as const) {
      const perSecond = (scenario.timerCallbacks[name] - callbacks[name]) / seconds;
      console.log(`${name}: ${perSecond.toFixed(1)} timer callbacks a second while idle (a 10 ms tick: 100 per core)`);
      expect(perSecond).toBeLessThan(15);
      // Something goes to the peer at least every keepalive interval (a ping, or the quorum's message).
      const sentUs = scenario.messages.filter((entry) => entry.from === name && entry.atUs >= since).map((entry) => entry.atUs);
      let widestGapMs = 0;
      for (let i = 1; i < sentUs.length; i++) widestGapMs = Math.max(widestGapMs, (sentUs[i]! - sentUs[i - 1]!) / 1000);
      expect(sentUs.length).toBeGreaterThanOrEqual(seconds * 2);
      expect(widestGapMs).toBeLessThanOrEqual((daemon.keepaliveIntervalTicks + 1) * daemon.tickMs);
      expect(scenario.sent(name, MessageType.Ping, since).length).toBeGreaterThan(0);
    }
    expect(scenario.reportsOf("a", "linkDown", since)).toHaveLength(0);
    expect(scenario.reportsOf("b", "linkDown", since)).toHaveLength(0);
    expect(scenario.quorumOf("a").status().quorum).toBe("shared");
    expect(worstUnfedMs).toBeLessThanOrEqual(600);
  });

  test("a node with nothing to time (an acceptor without volumes or connections) sets no timer, and still answers its peer", () => {
    const scenario = new Scenario({ volumes: [1], config: timers, start: false });
    scenario.start("b", []);
    scenario.runFor(50);
    const callbacks = scenario.timerCallbacks.b;
    scenario.runFor(10_000);
    expect(scenario.timerCallbacks.b - callbacks).toBe(0);
    scenario.start("a", []);
    scenario.runUntil(() => scenario.linkUp("a") && scenario.linkUp("b"), "the dialer's connection is accepted", 5_000);
  });

  test("a write after a long sleep is mirrored, and its background barrier follows on time", () => {
    const scenario = sharedPair();
    scenario.runFor(5_000);
    const write = scenario.complete(scenario.write("a", 3));
    expect(write.error).toBeNull();
    expect(write.info?.mirrored).toBe(true);
    expect(scenario.blockValue("b", 3)).toBe(write.tag);
    const writtenUs = scenario.nowUs;
    scenario.waitMessage("a", MessageType.Flush, "the background barrier (a flush of the peer) after the write", undefined, 3_000);
    expect((scenario.nowUs - writtenUs) / 1000).toBeLessThanOrEqual(scenario.config.barrierIntervalTicks * scenario.config.tickMs + 2 * scenario.config.tickMs);
  });

  test("a peer that goes silent is found out within the link timeout, not a sleep later", () => {
    const scenario = sharedPair();
    const pausedUs = scenario.nowUs;
    scenario.pause("b");
    scenario.runUntil(() => scenario.reportsOf("a", "linkDown", pausedUs).length > 0, "a drops the silent link", 5_000);
    const afterMs = (scenario.nowUs - pausedUs) / 1000;
    const timeoutMs = scenario.config.linkTimeoutTicks * scenario.config.tickMs;
    // The last thing b sent came at most a keepalive interval before the pause.
    expect(afterMs).toBeLessThanOrEqual(timeoutMs + 2 * scenario.config.tickMs);
    expect(afterMs).toBeGreaterThanOrEqual(timeoutMs - scenario.config.keepaliveIntervalTicks * scenario.config.tickMs - scenario.config.tickMs);
    scenario.resume("b");
  });

  test("a tick that throws (a bug) does not stop the node's clock: alone, it goes on dialling and links once its peer starts", () => {
    const scenario = new Scenario({ config: timers, start: false });
    scenario.start("a");
    let thrown = false;
    plant(NodeCore.prototype as unknown as { tick(this: NodeCore): void }, "tick", (original) =>
      function (this: NodeCore) {
        if (!thrown && this.now > 20) {
          thrown = true;
          throw new Error("a planted bug in a tick");
        }
        return original.call(this);
      },
    );
    expect(() => scenario.runFor(2_000)).toThrow(/planted bug/);
    // Nothing but its own timer can wake a lone dialer now: no peer, no client.
    scenario.runFor(3_000);
    scenario.start("b");
    scenario.runUntil(() => scenario.linkUp("a") && scenario.linkUp("b"), "a dials b once b is up", 10_000);
  });

  test("a quorum tick that throws (a bug) does not stop its clock: alone, it heartbeats and feeds the watchdog", () => {
    // The quorum driver alone (no replica link, no peer, no client): only its own timer wakes it.
    const pair = new QuorumPair();
    pair.a.start();
    pair.advance(2_000);
    let thrown = false;
    plant(QuorumCore.prototype, "handle", (original) =>
      function (this: QuorumCore, event) {
        if (!thrown && event.kind === "tick") {
          thrown = true;
          throw new Error("a planted bug in a quorum tick");
        }
        return original.call(this, event);
      },
    );
    expect(() => pair.advance(2_000)).toThrow(/planted bug/);
    const feeds = pair.a.watchdogFeeds;
    pair.advance(5_000);
    // A heartbeat every 500 ms feeds it.
    expect(pair.a.watchdogFeeds - feeds).toBeGreaterThanOrEqual(9);
  });

  test("a quorum driver started at a fractional millisecond sets one timer per acting tick, even where start + tick·tickMs rounds short", () => {
    // Timers run at their exact instant, as in the simulator (found by quorum seed 700244): started
    // at 1000.1 ms, (1000.1 + 30) − 1000.1 comes out below 30, so tick 3 looked not yet due at its
    // own deadline and its timer set itself again for the same instant, for ever.
    const pair = new QuorumPair();
    const node = pair.a;
    node.nowMs = 1000.1;
    node.start();
    let callbacks = 0;
    const endMs = node.nowMs + 10_000;
    for (;;) {
      node.timers = node.timers.filter((timer) => !timer.cancelled);
      const next = node.timers.reduce<(typeof node.timers)[number] | undefined>((first, timer) => (!first || timer.atMs < first.atMs ? timer : first), undefined);
      if (!next || next.atMs > endMs || callbacks > 10_000) break;
      node.timers.splice(node.timers.indexOf(next), 1);
      node.nowMs = Math.max(node.nowMs, next.atMs);
      callbacks++;
      next.callback();
    }
    // Alone, it heartbeats every 500 ms: a few timers a second, and its ticks keep up with its clock.
    expect(callbacks).toBeLessThan(200);
    expect(node.watchdogFeeds).toBeGreaterThanOrEqual(18);
  });

  // Each core claims its next acting tick is a second away, which hides a keepalive or heartbeat.
  const lateClaims = [
    ["a replica core that leaves its keepalive", () => plant(NodeCore.prototype, "nextActionTick", () => function (this: NodeCore) { return this.now + 1_000; })],
    ["a quorum core that leaves its heartbeat", () => plant(QuorumCore.prototype, "nextActionTick", () => function (this: QuorumCore) { return this.nowTicks + 1_000; })],
  ] as const;
  for (const [what, plantIt] of lateClaims) {
    test(`${what} out of nextActionTick is caught by the driver`, () => {
      const scenario = sharedPair();
      plantIt();
      expect(() => scenario.runFor(12_000)).toThrow(/claimed quiet/);
    });
  }
});
