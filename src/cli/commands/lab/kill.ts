// `tandem lab kill NODE [--dir DIR]`: SIGKILL one lab node (a crash or power loss, for drills).
import { Command, Option } from "clipanion";
import { stopLabNode } from "../../../node/lab/lab.ts";
import { TandemCommand } from "../../base.ts";
import { labDirOption } from "../../lab-common.ts";

export class LabKillCommand extends TandemCommand {
  static override paths = [["lab", "kill"]];
  static override usage = Command.Usage({
    category: "Lab",
    description: "Kill a lab node's daemon with SIGKILL",
    details: "Simulates a crash: no drain, no goodbye to the peer. `tandem lab start NODE` brings it back on the same data.",
    examples: [["Crash node b", "tandem lab kill b"]],
  });

  node = Option.String({ name: "node" });
  dir = labDirOption();

  async run(): Promise<void> {
    const killed = await stopLabNode(this.dir, this.node, "SIGKILL");
    this.output({ node: this.node, killed }, (r) => (r.killed ? `killed node ${r.node}` : `node ${r.node} was not running`));
  }
}
