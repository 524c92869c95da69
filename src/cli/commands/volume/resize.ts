// `tandem volume resize NAME --size 20G`: grow a volume online.
import { Command, Option } from "clipanion";
import { parseSize } from "../../../common/size.ts";
import type { VolumeView } from "../../../node/volumes.ts";
import { TandemCommand } from "../../base.ts";

export class VolumeResizeCommand extends TandemCommand {
  static override paths = [["volume", "resize"]];
  static override usage = Command.Usage({
    category: "Volumes",
    description: "Grow a volume online",
    details: `
      Grows the volume's backing (and, when paired, the peer's replica) while it stays in use.
      Shrinking is refused: it would cut off data. NBD clients see the new size when they
      reconnect.
    `,
    examples: [["Grow vm1 to 20 GiB", "tandem volume resize vm1 --size 20G"]],
  });

  name = Option.String({ name: "name" });
  size = Option.String("--size", { required: true, description: "New size with a binary unit" });

  async run(): Promise<void> {
    const volume = await this.client().request<VolumeView>("POST", `/volumes/${encodeURIComponent(this.name)}/resize`, { size: parseSize(this.size) });
    this.output(volume, (v) => `volume ${v.name} is now ${v.sizeHuman}`);
  }
}
