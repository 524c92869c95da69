// `tandem lab up [--dir DIR] [--json]`: a whole cluster on this machine, returning once it serves.
import { Command, Option } from "clipanion";
import { labUp, type LabInfo } from "../../../node/lab/lab.ts";
import { TandemCommand } from "../../base.ts";
import { labDirOption } from "../../lab-common.ts";
import { withSpinner } from "../../progress.ts";
import { renderLabWitness } from "./witness.ts";

export class LabUpCommand extends TandemCommand {
  static override paths = [["lab", "up"]];
  static override usage = Command.Usage({
    category: "Lab",
    description: "Start a local demo cluster",
    details: `
      Starts, on this one machine, Tandem's node daemons with a demo volume exported over NBD, and
      returns once they serve. Each node lives in DIR/<node>/ (config, data, log, control.sock,
      nbd.sock); reach one with --socket DIR/<node>/control.sock. Running it again on a lab that is
      up changes nothing and prints the same. With --json prints {"dir", "nodes": [{"name",
      "control", "nbd", "dataDir"}], "volumes": [{"name", "size"}]}.

      The nodes link through a relay that \`tandem lab cut|heal|delay\` act on. With --direct they
      dial each other's listener instead, as nodes on two machines do: no extra hop (benchmarks
      use this), and no fault drills. The choice is made when the lab is created.
    `,
    examples: [
      ["Start the demo", "tandem lab up"],
      ["Then read the demo volume", "nbdinfo 'nbd+unix:///demo?socket=/tmp/tandem-lab/a/nbd.sock'"],
      ["A lab whose nodes link directly", "tandem lab up --direct --dir /tmp/tandem-lab-direct"],
    ],
  });

  dir = labDirOption();
  direct = Option.Boolean("--direct", { description: "Link the nodes directly instead of through the relay (no cut/heal/delay); only when the lab is created" });

  async run(): Promise<void> {
    const info = await withSpinner(this, "starting the lab", (progress) => labUp(this.dir, progress, this.direct === undefined ? {} : { direct: this.direct }));
    this.output(info, renderLab);
  }
}

export function renderLab(info: LabInfo): string {
  const lines = [`lab in ${info.dir}`];
  for (const node of info.nodes) {
    lines.push(`  node ${node.name}: ${node.running ? `running (pid ${node.pid})${node.paused ? ", paused" : ""}` : "stopped"}`);
    lines.push(`    control ${node.control}`);
    lines.push(`    nbd     ${node.nbd}`);
  }
  lines.push(`  ${renderLabWitness(info.witness)}`);
  for (const volume of info.volumes) lines.push(`  volume ${volume.name}: ${volume.size} bytes, nbd+unix:///${volume.name}?socket=${info.nodes[0]?.nbd}`);
  lines.push(`try: tandem status --socket ${info.nodes[0]?.control}`);
  return lines.join("\n");
}
