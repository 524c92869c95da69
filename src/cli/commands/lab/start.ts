// `tandem lab start NODE [--dir DIR]`: start one lab node's daemon again (after kill or stop).
import { Command, Option } from "clipanion";
import { labInfo, startLabNode } from "../../../node/lab/lab.ts";
import { TandemCommand } from "../../base.ts";
import { labDirOption } from "../../lab-common.ts";

export class LabStartCommand extends TandemCommand {
  static override paths = [["lab", "start"]];
  static override usage = Command.Usage({
    category: "Lab",
    description: "Start a lab node's daemon",
    details: "Starts the node on its existing data and returns once it answers on its control socket. A running node is left as it is.",
    examples: [["Bring node b back", "tandem lab start b"]],
  });

  node = Option.String({ name: "node" });
  dir = labDirOption();

  async run(): Promise<void> {
    await startLabNode(this.dir, this.node);
    const info = await labInfo(this.dir);
    const node = info.nodes.find((entry) => entry.name === this.node)!;
    this.output(node, (n) => `node ${n.name} running (pid ${n.pid}), control ${n.control}`);
  }
}
