// `tandem lab pause|resume NODE [--dir DIR]`: stop and continue a lab node's daemon (SIGSTOP /
// SIGCONT): a hung daemon, for drills. Its sockets stay open; it answers nothing while paused.
import { Command, Option } from "clipanion";
import { signalLabNode } from "../../../node/lab/lab.ts";
import { TandemCommand } from "../../base.ts";
import { labDirOption } from "../../lab-common.ts";

const render = (result: { node: string; paused: boolean }) => `node ${result.node} ${result.paused ? "paused (SIGSTOP)" : "resumed (SIGCONT)"}`;

export class LabPauseCommand extends TandemCommand {
  static override paths = [["lab", "pause"]];
  static override usage = Command.Usage({
    category: "Lab",
    description: "Pause a lab node's daemon (SIGSTOP): a hung node",
    details: "The process stops where it is, holding its sockets and files; `tandem lab resume NODE` continues it.",
    examples: [["Hang node a", "tandem lab pause a"]],
  });
  node = Option.String({ name: "node" });
  dir = labDirOption();
  async run(): Promise<void> {
    this.output(signalLabNode(this.dir, this.node, "SIGSTOP"), render);
  }
}

export class LabResumeCommand extends TandemCommand {
  static override paths = [["lab", "resume"]];
  static override usage = Command.Usage({
    category: "Lab",
    description: "Resume a paused lab node (SIGCONT)",
    examples: [["Continue node a", "tandem lab resume a"]],
  });
  node = Option.String({ name: "node" });
  dir = labDirOption();
  async run(): Promise<void> {
    this.output(signalLabNode(this.dir, this.node, "SIGCONT"), render);
  }
}
