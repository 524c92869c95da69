// `tandem lab witness-fail|witness-hang|witness-heal [--dir DIR]`: fault drills on the lab's witness.
// The faults are real IO faults on the witness file the nodes use (see src/node/lab/witness.ts).
import { Command } from "clipanion";
import { labWitnessDrill, type LabWitnessState } from "../../../node/lab/witness.ts";
import { TandemCommand } from "../../base.ts";
import { labDirOption } from "../../lab-common.ts";

export const renderLabWitness = (state: LabWitnessState) =>
  `witness ${state.path}: ${state.mode === "fuse" ? (state.running ? (state.hung ? "hangs (every IO blocks)" : state.failing ? "fails (every IO returns EIO)" : "healthy") : "server not running") : state.mode === "file" ? "a plain file (no drills)" : "absent"}`;

export class LabWitnessFailCommand extends TandemCommand {
  static override paths = [["lab", "witness-fail"]];
  static override usage = Command.Usage({
    category: "Lab",
    description: "Make every IO on the lab's witness fail with EIO",
    details: "The witness server points the exported file at a node that fails every request. `tandem lab witness-heal` undoes it.",
    examples: [["Fail the witness", "tandem lab witness-fail"]],
  });
  dir = labDirOption();
  async run(): Promise<void> {
    this.output(await labWitnessDrill(this.dir, "fail"), renderLabWitness);
  }
}

export class LabWitnessHangCommand extends TandemCommand {
  static override paths = [["lab", "witness-hang"]];
  static override usage = Command.Usage({
    category: "Lab",
    description: "Make every IO on the lab's witness hang",
    details: "The witness server is stopped (SIGSTOP): IO on the witness file blocks in the kernel until `tandem lab witness-heal`.",
    examples: [["Hang the witness", "tandem lab witness-hang"]],
  });
  dir = labDirOption();
  async run(): Promise<void> {
    this.output(await labWitnessDrill(this.dir, "hang"), renderLabWitness);
  }
}

export class LabWitnessHealCommand extends TandemCommand {
  static override paths = [["lab", "witness-heal"]];
  static override usage = Command.Usage({
    category: "Lab",
    description: "Undo witness-fail and witness-hang",
    details: "Continues the witness server and points the exported file at the witness image again; IO that waited completes.",
    examples: [["Heal the witness", "tandem lab witness-heal"]],
  });
  dir = labDirOption();
  async run(): Promise<void> {
    this.output(await labWitnessDrill(this.dir, "heal"), renderLabWitness);
  }
}
