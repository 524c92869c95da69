// Command line for the quorum simulator.
//   bun test/sim/quorum-run.ts --seed 1234           replay one run, printing its timeline
//   bun test/sim/quorum-run.ts --seeds 2000          run seeds 1..2000 and print every failing seed
//   bun test/sim/quorum-run.ts --seeds 500 --from 9000 --long
//                                                    the long setting: 10 ms ticks, 1-3 minutes of
//                                                    simulated chaos per seed
//   --bug promoteWithoutFence|renewWithoutMargin|nonHolderWins   run with a deliberately broken core
// Exit status 1 when any run failed.
import type { QuorumBugs } from "../../src/quorum/lease.ts";
import { runQuorumSeeds, runQuorumSimulation } from "./quorum-simulation.ts";
import { runSimulatorCommand } from "./command.ts";

runSimulatorCommand<QuorumBugs>({ script: "test/sim/quorum-run.ts", runOne: runQuorumSimulation, runMany: runQuorumSeeds });
