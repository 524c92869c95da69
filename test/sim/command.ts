// The shared command line of the simulators (test/sim/run.ts, test/sim/quorum-run.ts):
//   --seed N           replay one run, printing its timeline, fault mix, stats and failures
//   --seeds N --from F run seeds F..F+N-1 and print every failing seed, then how to replay the first
//   --long             the simulator's long setting
//   --bug NAME         run with a deliberately broken core
// Exits 1 when any run failed.

interface Failure {
  class: string;
  checker: string;
  message: string;
}

export interface SimulatorCommand<Bugs> {
  /** The script, as a replay line names it (e.g. "test/sim/run.ts"). */
  script: string;
  runOne(options: { seed: number; long: boolean; bugs: Bugs; trace: true }): { ok: boolean; timeline: string[]; mix: unknown; stats: unknown; failures: Failure[]; events?: number };
  runMany(options: { from: number; count: number; long: boolean; bugs: Bugs; onFailure: (seed: number, failure: Failure) => void }): { failing: { seed: number }[]; seconds: number; events: number };
}

function argument(name: string): string | undefined {
  const index = process.argv.indexOf(`--${name}`);
  return index >= 0 ? process.argv[index + 1] : undefined;
}

export function runSimulatorCommand<Bugs>(command: SimulatorCommand<Bugs>): never {
  const long = process.argv.includes("--long");
  const bug = argument("bug");
  const bugs = (bug ? { [bug]: true } : {}) as Bugs;
  const single = argument("seed");

  if (single !== undefined) {
    const seed = Number(single);
    const started = performance.now();
    const result = command.runOne({ seed, long, bugs, trace: true });
    for (const line of result.timeline) console.log(line);
    console.log(`\nseed ${seed}: ${result.ok ? "ok" : "FAILED"} in ${(performance.now() - started).toFixed(0)} ms${result.events !== undefined ? `, ${result.events} events` : ""}`);
    console.log(`fault mix: ${JSON.stringify(result.mix)}`);
    console.log(`stats: ${JSON.stringify(result.stats)}`);
    for (const failure of result.failures) console.log(`${failure.class} [${failure.checker}]: ${failure.message}`);
    process.exit(result.ok ? 0 : 1);
  }

  const count = Number(argument("seeds") ?? 100);
  const from = Number(argument("from") ?? 1);
  const classes: Record<string, number> = {};
  const summary = command.runMany({
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
  if (failing.length > 0) console.log(`replay with: bun ${command.script} --seed ${failing[0]}${long ? " --long" : ""}${bug ? ` --bug ${bug}` : ""}`);
  process.exit(failing.length > 0 ? 1 : 0);
}
