// How the simulators' CI tests split their seeds: at most ten batches of about 200, so progress
// shows and a failing batch names the seeds to replay; and how they replay the seeds that found bugs.
import { describe, expect, test } from "bun:test";

/** The runs of consecutive seeds covering `seeds` seeds from `from`, none empty. */
export function seedBatches(seeds: number, from: number): { first: number; count: number }[] {
  const batches = Math.max(1, Math.min(10, Math.ceil(seeds / 200)));
  const batchSize = Math.ceil(seeds / batches);
  const runs: { first: number; count: number }[] = [];
  for (let batch = 0; batch < batches; batch++) {
    const first = from + batch * batchSize;
    const count = Math.min(batchSize, from + seeds - first);
    if (count > 0) runs.push({ first, count });
  }
  return runs;
}

/** A seed that found a bug: the seed, whether it ran the long setting, what it found. */
export type FoundSeed = [seed: number, long: boolean, what: string];

/** One test per seed that found a bug, each failing before its fix: it runs again and no checker fails. */
export function replayFoundSeeds(found: FoundSeed[], run: (options: { seed: number; long: boolean }) => { failures: { class: string; checker: string; message: string }[] }): void {
  describe("seeds beyond the CI range that found bugs, each failing before its fix", () => {
    for (const [seed, long, what] of found) {
      test(`seed ${seed}${long ? " (long)" : ""}: ${what}`, () => {
        const result = run({ seed, long });
        expect(result.failures.map((failure) => `${failure.class} [${failure.checker}]: ${failure.message.split("\n")[0]}`)).toEqual([]);
      }, 120_000);
    }
  });
}
