// The quorum core and the replica core together in CI (test/sim/quorum-replica.ts):
// TANDEM_QUORUM_REPLICA_SEEDS seeds (default 2000) in batches, each a seeded mix of link partitions,
// one-way stalls, crashes and restarts, pauses (some longer than the lease), watchdog resets, witness
// errors, tears and hangs, and clock drift within ρ, under FUA writes to both volumes; the named
// checkers (singleWriter, ackedWriteKept, onlyHoldersWin, replicasIdentical, ioResumes) must all
// hold. A failing seed replays with `bun test/sim/quorum-replica.ts --seed N --trace`; the long
// setting is `--long` (2 minutes of chaos).
// Three planted bugs show the checkers can fail: the replica core degrading instead of freezing on
// link loss, a node without the latest data winning an epoch, and a node promoting its peer's
// volumes without fence evidence (which needs a peer that is paused while it holds the lease).
import { describe, expect, test } from "bun:test";
import { type CombinedBug, runCombined } from "./quorum-replica.ts";
import { seedBatches } from "./seed-batches.ts";

const seeds = Number(process.env.TANDEM_QUORUM_REPLICA_SEEDS ?? 2000);
const from = Number(process.env.TANDEM_QUORUM_REPLICA_FROM ?? 1);

describe(`quorum and replica cores together: ${seeds} seeds from ${from}`, () => {
  for (const { first, count } of seedBatches(seeds, from)) {
    test(`seeds ${first}..${first + count - 1}: one writer per volume, no acknowledged write lost, only holders win, converged and identical`, () => {
      const started = performance.now();
      const failing: string[] = [];
      let acked = 0;
      for (let seed = first; seed < first + count; seed++) {
        const result = runCombined({ seed });
        acked += result.stats.writesAcked;
        if (result.failures.length > 0) failing.push(`seed ${seed}: ${result.failures[0]} — replay: bun test/sim/quorum-replica.ts --seed ${seed}`);
      }
      console.log(`quorum+replica sim: seeds ${first}..${first + count - 1} in ${((performance.now() - started) / 1000).toFixed(1)} s, ${acked} writes acknowledged`);
      expect(failing).toEqual([]);
    }, 600_000);
  }
});

describe("the checkers catch deliberately broken cores", () => {
  const cases: [CombinedBug, string, string[]][] = [
    ["noFreezeOnLinkLoss", "a primary that goes on alone when its link drops writes beside the winner (split brain, lost writes)", ["ioResumes", "ackedWriteKept", "singleWriter", "replicasIdentical"]],
    ["nonHolderWins", "a node without the latest data wins an epoch", ["onlyHoldersWin", "ackedWriteKept"]],
    ["promoteWithoutFence", "a node promotes its paused peer's volumes while the peer still holds the lease (two writers)", ["singleWriter", "ackedWriteKept"]],
  ];
  for (const [bug, what, checkers] of cases) {
    test(`${bug}: ${what}`, () => {
      let caught: { seed: number; failure: string } | undefined;
      for (let seed = 1; seed <= 100 && !caught; seed++) {
        const result = runCombined({ seed, bug });
        if (result.failures.length > 0) caught = { seed, failure: result.failures[0]! };
      }
      console.log(`quorum+replica sim: --bug ${bug} caught at seed ${caught?.seed}: ${caught?.failure.split("\n")[0]}`);
      expect(caught).toBeDefined();
      expect(checkers.some((checker) => caught!.failure.startsWith(`${checker}:`))).toBe(true);
    }, 120_000);
  }
});
