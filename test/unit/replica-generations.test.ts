// Proves the resync decision table (generations.ts) row by row with named scenarios, that it is
// symmetric (decide(b, a) is the mirror of decide(a, b) for thousands of random states, so both
// nodes always agree), and the generation update rules that feed it (start alone, finish a resync).
import { describe, expect, test } from "bun:test";
import { decide, type Decision, finishAsSource, finishAsTarget, type ReplicaState, startAlone, startAsTarget } from "../../src/replica/generations.ts";
import { DataState } from "../../src/replica/model.ts";

const G = (n: number) => BigInt(n);
function state(nodeId: string, current: number, bitmapBase = 0, history: number[] = [], options: Partial<ReplicaState> = {}): ReplicaState {
  return { nodeId, generations: { current: G(current), bitmapBase: G(bitmapBase), history: history.map(G) }, dataState: current === 0 ? DataState.New : DataState.Consistent, mayWrite: false, bitsSet: 0, ...options };
}
const summary = (decision: Decision) => (decision.kind === "resync" ? `resync from ${decision.source}${decision.full ? " (full)" : ""}` : decision.kind);

describe("decision table", () => {
  const rows: [string, ReplicaState, ReplicaState, string][] = [
    ["same generation, nothing dirty", state("a", 5), state("b", 5), "inSync"],
    ["same generation, writes in flight at a link loss: the primary's copy wins", state("a", 5, 0, [], { bitsSet: 2 }), state("b", 5, 0, [], { mayWrite: true, bitsSet: 1 }), "resync from peer"],
    ["same generation, dirty, nobody primary: the lower name is the source", state("b", 5, 0, [], { bitsSet: 1 }), state("a", 5), "resync from peer"],
    ["the peer wrote alone since our generation", state("a", 5), state("b", 9, 5, [4], { bitsSet: 10 }), "resync from peer"],
    ["we wrote alone since the peer's generation", state("a", 9, 5, [], { bitsSet: 10 }), state("b", 5, 0, [4]), "resync from local"],
    ["both wrote alone since the same generation", state("a", 9, 5), state("b", 11, 5), "splitBrain"],
    ["the peer moved on and its bitmap does not cover it", state("a", 5), state("b", 12, 0, [9, 5]), "resync from peer (full)"],
    ["both moved on from a common ancestor, bitmaps lost", state("a", 20, 0, [3]), state("b", 21, 0, [3]), "splitBrain"],
    ["nothing in common", state("a", 20, 0, [3]), state("b", 21, 0, [4]), "unrelated"],
    ["our disk is new", state("a", 0), state("b", 7), "resync from peer (full)"],
    ["the peer's disk is new", state("a", 7), state("b", 0), "resync from local (full)"],
    ["both disks new: adopt one generation, copy nothing", state("a", 0), state("b", 0, 0, [], { mayWrite: true }), "resync from peer"],
    ["an interrupted resync target continues from its bitmap", state("a", 5, 0, [], { dataState: DataState.Inconsistent, bitsSet: 30 }), state("b", 9, 5), "resync from peer"],
    ["an interrupted target with nothing in common gets a full copy", state("a", 5, 0, [], { dataState: DataState.Inconsistent }), state("b", 9, 8), "resync from peer (full)"],
    ["an interrupted target meeting the source that already finished", state("a", 5, 0, [], { dataState: DataState.Inconsistent, bitsSet: 3 }), state("b", 9, 0, [5]), "resync from peer"],
    ["both interrupted: no good data anywhere", state("a", 5, 0, [], { dataState: DataState.Inconsistent }), state("b", 5, 0, [], { dataState: DataState.Inconsistent }), "noGoodData"],
    ["new disk meets an interrupted target: no good data", state("a", 0), state("b", 5, 0, [], { dataState: DataState.Inconsistent }), "noGoodData"],
  ];
  for (const [name, local, peer, expected] of rows) {
    test(name, () => expect(summary(decide(local, peer))).toBe(expected));
  }
});

function mirror(decision: Decision): string {
  if (decision.kind !== "resync") return decision.kind;
  return `resync from ${decision.source === "local" ? "peer" : "local"}${decision.full ? " (full)" : ""}`;
}

test("the decision is symmetric for random states", () => {
  let seed = 12345;
  const random = (n: number) => {
    seed = (seed * 1103515245 + 12345) % 2 ** 31;
    return seed % n;
  };
  const pick = () => random(6); // small id space: many coincidences
  for (let trial = 0; trial < 20_000; trial++) {
    const make = (nodeId: string): ReplicaState => ({
      nodeId,
      generations: { current: G(pick()), bitmapBase: G(random(3) === 0 ? pick() : 0), history: [G(pick()), G(pick())].filter(() => random(2) === 0) },
      dataState: [DataState.New, DataState.Consistent, DataState.Consistent, DataState.Inconsistent][random(4)]!,
      mayWrite: random(3) === 0,
      bitsSet: random(3),
    });
    const a = make("a");
    const b = make("b");
    const forward = decide(a, b);
    const backward = decide(b, a);
    expect(summary(forward)).toBe(mirror(backward));
    // A side without complete data is never the source.
    if (forward.kind === "resync") {
      const source = forward.source === "local" ? a : b;
      if (!(a.dataState === DataState.New && b.dataState === DataState.New)) expect(source.dataState).toBe(DataState.Consistent);
    }
  }
});

describe("generation updates", () => {
  test("starting alone keeps the shared generation as the bitmap base, once", () => {
    const first = startAlone({ current: G(5), bitmapBase: G(0), history: [G(4)] }, G(9), 4);
    expect(first).toEqual({ current: G(9), bitmapBase: G(5), history: [G(4)] });
    expect(startAlone(first, G(10), 4)).toBe(first);
  });

  test("after a resync both sides hold the source's generation and remember the old ones", () => {
    const source = finishAsSource({ current: G(9), bitmapBase: G(5), history: [G(4)] }, 4);
    expect(source).toEqual({ current: G(9), bitmapBase: G(0), history: [G(5), G(4)] });
    const target = finishAsTarget({ current: G(5), bitmapBase: G(0), history: [G(4)] }, G(9), 4);
    expect(target).toEqual({ current: G(9), bitmapBase: G(0), history: [G(5), G(4)] });
    expect(summary(decide(state("a", 9, 0, [5, 4]), state("b", 9, 0, [5, 4])))).toBe("inSync");
    const bounded = finishAsTarget({ current: G(1), bitmapBase: G(2), history: [G(3), G(4), G(5), G(6)] }, G(9), 4);
    expect(bounded.history).toEqual([G(1), G(2), G(3), G(4)]);
  });

  test("a new disk that began a full resync continues it after an interruption instead of starting over", () => {
    const source = state("a", 7);
    const fresh = state("b", 0);
    expect(summary(decide(fresh, source))).toBe("resync from peer (full)");
    const begun = startAsTarget(fresh.generations, G(7), 4);
    expect(begun).toEqual({ current: G(0), bitmapBase: G(0), history: [G(7)] });
    const interrupted: ReplicaState = { ...fresh, generations: begun, dataState: DataState.Inconsistent, bitsSet: 40 };
    expect(summary(decide(interrupted, source))).toBe("resync from peer");
    // Even when the source wrote alone during the interruption.
    expect(summary(decide(interrupted, state("a", 8, 7, [], { bitsSet: 3 })))).toBe("resync from peer");
    // At the end the target holds the source's generation once, as its current one.
    expect(finishAsTarget(begun, G(7), 4)).toEqual({ current: G(7), bitmapBase: G(0), history: [] });
  });

  test("a split-brain victim resynced from the keeper ends on the keeper's generation", () => {
    const keeper = state("a", 9, 5);
    const victim = state("b", 11, 5);
    expect(decide(keeper, victim).kind).toBe("splitBrain");
    const after = finishAsTarget(victim.generations, keeper.generations.current, 4);
    const keeperAfter = finishAsSource(keeper.generations, 4);
    expect(summary(decide({ ...keeper, generations: keeperAfter }, { ...victim, generations: after }))).toBe("inSync");
  });
});
