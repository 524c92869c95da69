// `tandem volume resolve NAME --keep NODE`: end a split brain by choosing whose data survives.
import { Command, Option } from "clipanion";
import { TandemCommand } from "../../base.ts";

export class VolumeResolveCommand extends TandemCommand {
  static override paths = [["volume", "resolve"]];
  static override usage = Command.Usage({
    category: "Volumes",
    description: "Resolve a split brain by choosing which node's data to keep",
    details: `
      After both nodes wrote a volume while they could not see each other, Tandem stops and asks.
      This keeps the data of the node named by --keep: the other node's writes since the split are
      overwritten by a resync from the kept side. There is no undo; copy the other side out first
      (its NBD export stays readable) if its writes matter.
    `,
    examples: [["Keep node a's data of vm1", "tandem volume resolve vm1 --keep a"]],
  });

  name = Option.String({ name: "name" });
  keep = Option.String("--keep", { required: true, description: "The node whose data survives" });

  async run(): Promise<void> {
    const reply = await this.client().request<{ volume: string; kept: string; discarded: string }>("POST", `/volumes/${encodeURIComponent(this.name)}/resolve`, { keep: this.keep });
    this.output(reply, (r) => `split brain of ${r.volume} resolved: keeping ${r.kept}'s data; ${r.discarded} resyncs from it`);
  }
}
