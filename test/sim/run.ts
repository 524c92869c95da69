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
import { runSimulatorCommand } from "./command.ts";

runSimulatorCommand<ReplicaBugs>({ script: "test/sim/run.ts", runOne: runSimulation, runMany: runSeeds });
