// `tandem volume on-freeze NAME suspend|error`: what a volume's IO does while the quorum freezes it.
import { Command, Option, UsageError } from "clipanion";
import { type FreezeMode, freezeModes } from "../../../node/block/gate.ts";
import type { VolumeView } from "../../../node/volumes.ts";
import { TandemCommand } from "../../base.ts";

export class VolumeOnFreezeCommand extends TandemCommand {
  static override paths = [["volume", "on-freeze"]];
  static override usage = Command.Usage({
    category: "Volumes",
    description: "Choose what a volume's IO does while the quorum freezes it",
    details: `
      While the quorum forbids IO on this node (the link is lost and the lease is being decided,
      this node lost it, or the link and the witness are both gone), requests either wait —
      suspend, the default: the VM sees latency, never an error, and goes on once the node may
      write again — or fail at once with EIO — error: for a VM or cluster manager that must notice
      and move. Kept per volume on this node (set it on both nodes); takes effect at once.
    `,
    examples: [["Fail IO at once on vm1 while frozen", "tandem volume on-freeze vm1 error"]],
  });

  name = Option.String({ name: "name" });
  mode = Option.String({ name: "suspend|error" });

  async run(): Promise<void> {
    if (!freezeModes.includes(this.mode as FreezeMode)) throw new UsageError(`on-freeze must be suspend or error, not "${this.mode}"`);
    const volume = await this.client().request<VolumeView>("POST", `/volumes/${encodeURIComponent(this.name)}/on-freeze`, { mode: this.mode });
    this.output(volume, (v) => `volume ${v.name}: while frozen, IO ${v.onFreeze === "error" ? "fails with EIO at once" : "waits"}`);
  }
}
