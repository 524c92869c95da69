// `tandem lab cut|heal|delay MS [--dir DIR]`: act on the lab's replication link relay.
import { Command, Option } from "clipanion";
import * as t from "typanion";
import { relayRequest } from "../../../node/lab/lab.ts";
import { TandemCommand } from "../../base.ts";
import { labDirOption } from "../../lab-common.ts";

interface RelayState {
  cut: boolean;
  delayMs: number;
}

const render = (state: RelayState) => `link ${state.cut ? "cut" : "up"}${state.delayMs > 0 ? `, ${state.delayMs} ms added each way` : ""}`;

export class LabCutCommand extends TandemCommand {
  static override paths = [["lab", "cut"]];
  static override usage = Command.Usage({
    category: "Lab",
    description: "Cut the replication link between the lab's nodes",
    details: "The relay drops every connection between the nodes and refuses new ones until `tandem lab heal`.",
    examples: [["Cut the link", "tandem lab cut"]],
  });
  dir = labDirOption();
  async run(): Promise<void> {
    this.output(await relayRequest<RelayState>(this.dir, "cut"), render);
  }
}

export class LabHealCommand extends TandemCommand {
  static override paths = [["lab", "heal"]];
  static override usage = Command.Usage({
    category: "Lab",
    description: "Heal the lab's replication link",
    examples: [["Heal the link", "tandem lab heal"]],
  });
  dir = labDirOption();
  async run(): Promise<void> {
    this.output(await relayRequest<RelayState>(this.dir, "heal"), render);
  }
}

export class LabDelayCommand extends TandemCommand {
  static override paths = [["lab", "delay"]];
  static override usage = Command.Usage({
    category: "Lab",
    description: "Add latency to the lab's replication link",
    details: "Each chunk the relay forwards waits MS milliseconds (order is kept), in both directions. 0 removes it.",
    examples: [["Add 5 ms each way", "tandem lab delay 5"]],
  });
  ms = Option.String({ name: "ms", validator: t.cascade(t.isNumber(), [t.isInteger(), t.isInInclusiveRange(0, 60_000)]) });
  dir = labDirOption();
  async run(): Promise<void> {
    this.output(await relayRequest<RelayState>(this.dir, "delay", { ms: this.ms }), render);
  }
}
