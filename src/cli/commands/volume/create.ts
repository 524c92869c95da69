// `tandem volume create NAME --size 10G [--backing PATH] [--direct]`
import { Command, Option } from "clipanion";
import { parseSize } from "../../../common/size.ts";
import type { VolumeView } from "../../../node/volumes.ts";
import { TandemCommand } from "../../base.ts";

export class VolumeCreateCommand extends TandemCommand {
  static override paths = [["volume", "create"]];
  static override usage = Command.Usage({
    category: "Volumes",
    description: "Create a volume",
    details: `
      Creates a volume: by default a sparse file in the node's data directory, or the file or block
      device named with --backing (an existing one is used as it is, its size taken from it unless
      --size says less; a missing file is created sparse). When the node is paired, the peer creates
      its replica too and this node becomes the volume's primary. Writes go to the page cache and
      are made durable by FLUSH/FUA; --direct uses O_DIRECT instead.
    `,
    examples: [
      ["A 10 GiB volume in the data directory", "tandem volume create vm1 --size 10G"],
      ["On a block device, bypassing the page cache", "tandem volume create db --backing /dev/vg0/db --direct"],
    ],
  });

  name = Option.String({ name: "name" });
  size = Option.String("--size", { description: "Size with a binary unit: 512M, 10G, 1T" });
  backing = Option.String("--backing", { description: "File or block device to keep the volume on" });
  direct = Option.Boolean("--direct", false, { description: "Use O_DIRECT instead of the page cache" });

  async run(): Promise<void> {
    const sizeBytes = this.size === undefined ? undefined : parseSize(this.size);
    const volume = await this.client().request<VolumeView>("POST", "/volumes", {
      name: this.name,
      size: sizeBytes,
      backing: this.backing === undefined ? undefined : this.resolvePath(this.backing),
      direct: this.direct,
    });
    this.output(volume, (v) => `created volume ${v.name}: ${v.sizeHuman} on ${v.backing}${v.direct ? " (O_DIRECT)" : ""}`);
  }

  private resolvePath(path: string): string {
    return path.startsWith("/") ? path : `${process.cwd()}/${path}`;
  }
}
