// `tandem volume create NAME --size 10G [--backing PATH] [--direct] [--wait]`. On a pair the
// replicas may need an initial sync (an imported disk that holds data is copied in full); --wait
// stays until both are synced, with the sync's progress on the spinner.
import { Command, Option } from "clipanion";
import { TandemError } from "../../../common/errors.ts";
import { parseSize } from "../../../common/size.ts";
import { cliInitialSyncWaitMsMax, cliProgressPollIntervalMs } from "../../../constants.ts";
import type { ControlClient } from "../../../node/control/client.ts";
import type { VolumeView } from "../../../node/volumes.ts";
import { TandemCommand } from "../../base.ts";
import { withSpinner } from "../../progress.ts";

const settled = (view: VolumeView) => view.nodes.every((replica) => replica.state === "synced" || replica.state === "standalone");

/** Poll the volume until both replicas are synced; `progress` gets the resync's progress text. */
async function waitSynced(client: ControlClient, name: string, progress: (text: string) => void): Promise<VolumeView> {
  const deadline = Date.now() + cliInitialSyncWaitMsMax;
  for (;;) {
    const view = await client.request<VolumeView>("GET", `/volumes/${encodeURIComponent(name)}`);
    if (settled(view)) return view;
    const detail = view.nodes[0]?.detail?.progress;
    progress(typeof detail === "string" ? `initial sync ${detail}` : `initial sync: ${view.nodes.map((replica) => `${replica.node} ${replica.state}`).join(", ")}`);
    if (Date.now() > deadline) throw new TandemError("unavailable", `${name} is not synced after ${cliInitialSyncWaitMsMax / 3_600_000} h; the sync goes on (tandem status)`);
    await Bun.sleep(cliProgressPollIntervalMs);
  }
}

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
      ["Import a disk with data and wait for its copy on the peer", "tandem volume create old --backing /dev/vg0/old --wait"],
    ],
  });

  name = Option.String({ name: "name" });
  size = Option.String("--size", { description: "Size with a binary unit: 512M, 10G, 1T" });
  backing = Option.String("--backing", { description: "File or block device to keep the volume on" });
  direct = Option.Boolean("--direct", false, { description: "Use O_DIRECT instead of the page cache" });
  wait = Option.Boolean("--wait", false, { description: "On a pair, wait until both replicas are synced (progress on a terminal)" });

  async run(): Promise<void> {
    const sizeBytes = this.size === undefined ? undefined : parseSize(this.size);
    const client = this.client();
    const volume = await withSpinner(this, `creating volume ${this.name}`, async (progress) => {
      const created = await client.request<VolumeView>("POST", "/volumes", {
        name: this.name,
        size: sizeBytes,
        backing: this.backing === undefined ? undefined : this.resolvePath(this.backing),
        direct: this.direct,
      });
      return this.wait && !settled(created) ? waitSynced(client, created.name, progress) : created;
    });
    this.output(volume, (v) => {
      const line = `created volume ${v.name}: ${v.sizeHuman} on ${v.backing}${v.direct ? " (O_DIRECT)" : ""}`;
      return settled(v) ? line : `${line}\nthe replicas are still syncing (${v.nodes.map((replica) => `${replica.node}: ${replica.state}`).join(", ")}); watch with tandem status, or pass --wait`;
    });
  }

  private resolvePath(path: string): string {
    return path.startsWith("/") ? path : `${process.cwd()}/${path}`;
  }
}
