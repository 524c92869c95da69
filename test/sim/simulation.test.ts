// The deterministic simulation in CI: TANDEM_SIM_SEEDS seeds (default 2000), split into batches so
// progress shows and a batch fails with the seeds to replay. Each seed runs the replica cores of two
// nodes under a seeded fake network and disk (drops, reorders, delays, duplicates, corruption,
// partitions, crashes, lost unflushed writes, forced promotions) and checks the invariants after
// the run (checkers.ts). A failing seed replays with `bun test/sim/run.ts --seed N`.
// The planted bugs show the checkers can fail: each must be caught within a bounded number of seeds.
import { describe, expect, test } from "bun:test";
import type { ReplicaBugs } from "../../src/replica/config.ts";
import { runSimulation } from "./simulation.ts";

const seeds = Number(process.env.TANDEM_SIM_SEEDS ?? 2000);
const from = Number(process.env.TANDEM_SIM_FROM ?? 1);
const batches = Math.max(1, Math.min(10, Math.ceil(seeds / 200)));
const batchSize = Math.ceil(seeds / batches);

interface BatchOutcome {
  failing: { seed: number; line: string }[];
  events: number;
}

function runBatch(first: number, count: number, bugs: ReplicaBugs = {}): BatchOutcome {
  const failing: { seed: number; line: string }[] = [];
  let events = 0;
  for (let seed = first; seed < first + count; seed++) {
    const result = runSimulation({ seed, bugs });
    events += result.stats.events ?? 0;
    if (!result.ok) {
      const failure = result.failures[0]!;
      failing.push({ seed, line: `seed ${seed}: ${failure.class} [${failure.checker}]: ${failure.message.split("\n")[0]} — replay: bun test/sim/run.ts --seed ${seed}` });
    }
  }
  return { failing, events };
}

describe(`replication under faults: ${seeds} seeds from ${from}`, () => {
  for (let batch = 0; batch < batches; batch++) {
    const first = from + batch * batchSize;
    const count = Math.min(batchSize, from + seeds - first);
    if (count <= 0) continue;
    test(`seeds ${first}..${first + count - 1}: every invariant holds`, () => {
      const started = performance.now();
      const outcome = runBatch(first, count);
      const seconds = (performance.now() - started) / 1000;
      console.log(`sim: seeds ${first}..${first + count - 1} in ${seconds.toFixed(1)} s (${(count / seconds).toFixed(0)} seeds/s, ${(outcome.events / seconds / 1000).toFixed(0)}k events/s)`);
      expect(outcome.failing.map((failure) => failure.line)).toEqual([]);
    }, 600_000);
  }
});

describe("the checkers catch deliberately broken cores", () => {
  const cases: [keyof ReplicaBugs, string][] = [
    ["ackBeforePeer", "acknowledging a write before the peer has it loses it when the primary dies"],
    ["forgetTransferLog", "forgetting the writes the peer had not flushed when the link drops leaves them out of the resync"],
    ["skipDirtyUnion", "resyncing from the source's bitmap alone misses the target's own dirty regions"],
  ];
  for (const [bug, what] of cases) {
    test(`${bug}: ${what}`, () => {
      // Run seeds until one fails; each bug is caught within the first few dozen seeds today.
      let caught: number | undefined;
      for (let seed = 1; seed <= 400 && caught === undefined; seed++) {
        const result = runSimulation({ seed, bugs: { [bug]: true } });
        if (!result.ok) {
          expect(result.failures[0]!.class).toBe("correctness");
          caught = seed;
        }
      }
      console.log(`sim: --bug ${bug} caught at seed ${caught}`);
      expect(caught).toBeDefined();
    }, 300_000);
  }
});
