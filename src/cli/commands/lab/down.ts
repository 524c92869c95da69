// `tandem lab down [--dir DIR]`: stop everything the lab started; the data stays for the next `up`.
import { Command } from "clipanion";
import { labDown } from "../../../node/lab/lab.ts";
import { TandemCommand } from "../../base.ts";
import { labDirOption } from "../../lab-common.ts";
import { withSpinner } from "../../progress.ts";

export class LabDownCommand extends TandemCommand {
  static override paths = [["lab", "down"]];
  static override usage = Command.Usage({
    category: "Lab",
    description: "Stop the local demo cluster",
    details: "Sends SIGTERM to every process the lab started (they drain their IO and exit) and waits for them. The lab's directory and data stay; remove the directory to start afresh.",
    examples: [["Stop the demo", "tandem lab down"]],
  });

  dir = labDirOption();

  async run(): Promise<void> {
    const result = await withSpinner(this, "stopping the lab", (progress) => labDown(this.dir, progress));
    this.output(result, (r) => (r.stopped.length === 0 ? `nothing was running in ${r.dir}` : `stopped ${r.stopped.join(", ")} in ${r.dir}`));
  }
}
