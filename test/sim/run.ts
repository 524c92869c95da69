// Command line for the deterministic simulator.
//   bun test/sim/run.ts --seed 1234            replay one run, printing its timeline
//   bun test/sim/run.ts --seeds 2000           run seeds 1..2000 and print every failing seed
//   bun test/sim/run.ts --seeds 500 --from 9000 --long
//                                              the long setting: production timings, 10-30 s of
//                                              chaos and bigger volumes per run
//   --bug NAME (ackBeforePeer, forgetTransferLog, skipDirtyUnion, skipSourceFlush, targetStaysConsistent,
//              barrierDropsCovered, shareClientBuffer)   run with a deliberately broken core
// Exit status 1 when any run failed.
import type { ReplicaBugs } from "../../src/replica/config.ts";
import { runSeeds, runSimulation } from "./simulation.ts";

function argument(name: string): string | undefined {
  const index = process.argv.indexOf(`--${name}`);
  return index >= 0 ? process.argv[index + 1] : undefined;
}

const long = process.argv.includes("--long");
const bug = argument("bug");
const bugs: ReplicaBugs = bug ? { [bug]: true } : {};
const single = argument("seed");

if (single !== undefined) {
  const seed = Number(single);
  const started = performance.now();
  const result = runSimulation({ seed, long, bugs, trace: true });
  for (const line of result.timeline) console.log(line);
  console.log(`\nseed ${seed}: ${result.ok ? "ok" : "FAILED"} in ${(performance.now() - started).toFixed(0)} ms`);
  console.log(`fault mix: ${JSON.stringify(result.mix)}`);
  console.log(`stats: ${JSON.stringify(result.stats)}`);
  for (const failure of result.failures) console.log(`${failure.class} [${failure.checker}]: ${failure.message}`);
  process.exit(result.ok ? 0 : 1);
}

const count = Number(argument("seeds") ?? 100);
const from = Number(argument("from") ?? 1);
const classes: Record<string, number> = {};
const summary = runSeeds({
  from,
  count,
  long,
  bugs,
  onFailure: (seed, failure) => {
    classes[failure.class] = (classes[failure.class] ?? 0) + 1;
    console.log(`seed ${seed} FAILED: ${failure.class} [${failure.checker}]: ${failure.message.split("\n")[0]}`);
  },
});
const failing = summary.failing.map((entry) => entry.seed);
console.log(`${count} seeds from ${from}${long ? " (long)" : ""}: ${count - failing.length} ok, ${failing.length} failed ${JSON.stringify(classes)} in ${summary.seconds.toFixed(1)} s (${(summary.events / summary.seconds / 1000).toFixed(0)}k events/s)`);
if (failing.length > 0) console.log(`replay with: bun test/sim/run.ts --seed ${failing[0]}${long ? " --long" : ""}${bug ? ` --bug ${bug}` : ""}`);
process.exit(failing.length > 0 ? 1 : 0);
