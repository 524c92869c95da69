// Proves the lease's timing checks (src/quorum/config.ts) and the peer message codec
// (src/quorum/message.ts): DESIGN.md §5's defaults hold every relation with the documented margin;
// each violated relation is named in the error with its numbers; the config tables are parsed from
// their fields with clear errors; ticks round on the safe side; the message round-trips, is pinned
// byte by byte, and anything malformed is refused.
import { describe, expect, test } from "bun:test";
import { TandemError } from "../../src/common/errors.ts";
import { checkTiming, defaultQuorumTiming, leaseMarginMs, parseWatchdogConfig, parseWitnessConfig, type QuorumTiming, timingRelations, timingTicks } from "../../src/quorum/config.ts";
import { LeaseMode } from "../../src/quorum/format.ts";
import { decodeQuorumMessage, encodeQuorumMessage, type QuorumMessage, QuorumMessageError } from "../../src/quorum/message.ts";

function errorOf(run: () => unknown): string {
  try {
    run();
  } catch (error) {
    expect(error).toBeInstanceOf(TandemError);
    expect((error as TandemError).code).toBe("invalid_argument");
    return (error as Error).message;
  }
  throw new Error("expected an error");
}

describe("timing relations", () => {
  test("DESIGN.md §5's defaults hold every relation, with a lease margin of about 1.4 s", () => {
    expect(() => checkTiming(defaultQuorumTiming)).not.toThrow();
    expect(timingRelations(defaultQuorumTiming).every((relation) => relation.holds)).toBe(true);
    // 5000·0.99 − (3000 + 500 + 10)·1.01 = 4950 − 3545.1
    expect(leaseMarginMs(defaultQuorumTiming)).toBeCloseTo(1404.9, 1);
  });

  const broken: [string, Partial<QuorumTiming>, string][] = [
    ["heartbeat as long as the self-fence", { heartbeatIntervalMs: 3000 }, "heartbeatInterval < selfFenceTimeout"],
    ["IO allowed longer than a heartbeat", { ioTimeoutMs: 600 }, "ioTimeout ≤ heartbeatInterval"],
    ["a watchdog slower than the self-fence", { watchdogTimeoutMs: 4000 }, "watchdogTimeout ≤ selfFenceTimeout"],
    ["a dead timeout without margin", { deadTimeoutMs: 3500 }, "(selfFenceTimeout + heartbeatInterval + tick)·(1+ρ) < deadTimeout·(1−ρ)"],
    // With deadTimeout 4200 ms: ρ = 0.01 holds (3545.1 < 4158), ρ = 0.1 does not (3861 < 3780 fails).
    ["a clock bound that eats the margin", { clockRateBound: 0.1, deadTimeoutMs: 4200 }, "(selfFenceTimeout + heartbeatInterval + tick)·(1+ρ) < deadTimeout·(1−ρ)"],
  ];
  for (const [what, change, relation] of broken) {
    test(`${what}: the error names the relation and its numbers`, () => {
      const message = errorOf(() => checkTiming({ ...defaultQuorumTiming, ...change }, "config.toml: witness"));
      expect(message).toContain("config.toml: witness: the lease is unsafe with these timings");
      expect(message).toContain(relation);
    });
  }

  test("the same timings hold with a tighter clock bound", () => {
    expect(() => checkTiming({ ...defaultQuorumTiming, deadTimeoutMs: 4200 })).not.toThrow();
  });

  test("the dead-timeout relation shows the worst case on both clocks", () => {
    const message = errorOf(() => checkTiming({ ...defaultQuorumTiming, deadTimeoutMs: 3500 }));
    expect(message).toContain("(3000 + 500 + 10)·1.01 = 3545.1 ms < 3500·0.99 = 3465 ms");
  });

  test("fields: whole milliseconds, multiples of the tick, positive", () => {
    expect(errorOf(() => checkTiming({ ...defaultQuorumTiming, selfFenceTimeoutMs: 3005 }))).toContain("selfFenceTimeoutMs must be a multiple of the 10 ms tick");
    expect(errorOf(() => checkTiming({ ...defaultQuorumTiming, heartbeatIntervalMs: 0 }))).toContain("heartbeatIntervalMs must be positive");
    expect(errorOf(() => checkTiming({ ...defaultQuorumTiming, deadTimeoutMs: 1e9 }))).toContain("deadTimeoutMs must be a whole number of milliseconds from 0 to 600000");
    expect(errorOf(() => checkTiming({ ...defaultQuorumTiming, clockRateBound: -0.1 }))).toContain("clockRateBound must be from 0 to 0.1");
    expect(() => checkTiming({ ...defaultQuorumTiming, headStartMs: 0 })).not.toThrow();
  });

  test("ticks round on the safe side: the owner fences no later, the peer waits no less", () => {
    const ticks = timingTicks({ ...defaultQuorumTiming, selfFenceTimeoutMs: 3000, deadTimeoutMs: 5000 }, 30);
    expect(ticks.selfFence).toBe(100); // floor(3000 / 30)
    expect(ticks.dead).toBe(167); // ceil(5000 / 30)
  });
});

describe("config tables", () => {
  const resolve = (value: string) => `/abs/${value}`;

  test("[witness]: a path and optional timing overrides", () => {
    expect(parseWitnessConfig({ path: "witness.img" }, "c.toml", resolve)).toEqual({ path: "/abs/witness.img", timing: defaultQuorumTiming });
    const custom = parseWitnessConfig({ path: "/dev/sdz", deadTimeoutMs: 8000, headStartMs: 2000 }, "c.toml", resolve);
    expect(custom.timing).toMatchObject({ deadTimeoutMs: 8000, headStartMs: 2000, heartbeatIntervalMs: 500 });
  });

  test("[witness]: mistakes name the field", () => {
    expect(errorOf(() => parseWitnessConfig({}, "c.toml", resolve))).toBe("c.toml: witness.path: is required (a block device, partition or file)");
    expect(errorOf(() => parseWitnessConfig({ path: "w", linkTimeoutMs: 2000 }, "c.toml", resolve))).toContain("witness.linkTimeoutMs: unknown field");
    expect(errorOf(() => parseWitnessConfig({ path: "w", deadTimeoutMs: "5s" }, "c.toml", resolve))).toBe("c.toml: witness.deadTimeoutMs: must be a number");
    expect(errorOf(() => parseWitnessConfig({ path: "w", watchdogTimeoutMs: 2500 }, "c.toml", resolve))).toContain("watchdogTimeoutMs must be whole seconds");
    expect(errorOf(() => parseWitnessConfig({ path: "w", deadTimeoutMs: 3000 }, "c.toml", resolve))).toContain("(selfFenceTimeout + heartbeatInterval + tick)·(1+ρ) < deadTimeout·(1−ρ) does not hold");
  });

  test("watchdog: a mode string or a table with a device", () => {
    expect(parseWatchdogConfig(undefined, "c")).toEqual({ mode: "auto", device: "/dev/watchdog" });
    expect(parseWatchdogConfig("off", "c")).toEqual({ mode: "off", device: "/dev/watchdog" });
    expect(parseWatchdogConfig({ mode: "required", device: "/tmp/fake" }, "c")).toEqual({ mode: "required", device: "/tmp/fake" });
    expect(errorOf(() => parseWatchdogConfig("sometimes", "c"))).toBe('c: watchdog.mode: must be auto, required or off, not "sometimes"');
    expect(errorOf(() => parseWatchdogConfig({ mode: "auto", timeout: 3 }, "c"))).toBe("c: watchdog.timeout: unknown field");
    expect(errorOf(() => parseWatchdogConfig(3, "c"))).toContain("watchdog: must be");
  });
});

describe("the peer message", () => {
  const message: QuorumMessage = {
    from: 1,
    sequence: 7,
    echo: 5,
    fencedEpoch: 3n,
    synced: true,
    primaryCount: 2,
    decided: { version: 4n, value: { epoch: 4n, mode: LeaseMode.Solo, owner: 1, holders: [1], forced: true } },
  };

  test("round trip and golden bytes", () => {
    const bytes = encodeQuorumMessage(message);
    expect(decodeQuorumMessage(bytes)).toEqual(message);
    expect(Buffer.from(bytes).toString("hex")).toBe(
      "01" + "01" + "01" + "00" + "02000000" + "0400000000000000" + "0400000000000000" + "02" + "01" + "02" + "01" + "07000000" + "05000000" + "00000000" + "0300000000000000",
    );
  });

  test("anything malformed is refused with a named error", () => {
    const bytes = encodeQuorumMessage(message);
    expect(() => decodeQuorumMessage(bytes.subarray(0, 40))).toThrow(QuorumMessageError);
    for (const [offset, value] of [[0, 2], [1, 2], [2, 2], [3, 1], [24, 3], [25, 2], [26, 4], [27, 2], [36, 1]] as const) {
      const bad = bytes.slice();
      bad[offset] = value;
      expect(() => decodeQuorumMessage(bad)).toThrow(QuorumMessageError);
    }
  });
});
