// `tandem lab status [--dir DIR]`: which lab processes run, and where to reach them.
import { Command } from "clipanion";
import { labInfo } from "../../../node/lab/lab.ts";
import { TandemCommand } from "../../base.ts";
import { labDirOption } from "../../lab-common.ts";
import { renderLab } from "./up.ts";

export class LabStatusCommand extends TandemCommand {
  static override paths = [["lab", "status"]];
  static override usage = Command.Usage({
    category: "Lab",
    description: "Show the local demo cluster's processes and sockets",
    examples: [["Where is everything?", "tandem lab status --json"]],
  });

  dir = labDirOption();

  async run(): Promise<void> {
    this.output(await labInfo(this.dir), renderLab);
  }
}
