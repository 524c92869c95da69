// `tandem volume delete NAME [--force]`
import { Command, Option } from "clipanion";
import { TandemCommand } from "../../base.ts";

export class VolumeDeleteCommand extends TandemCommand {
  static override paths = [["volume", "delete"], ["volume", "rm"]];
  static override usage = Command.Usage({
    category: "Volumes",
    description: "Delete a volume and its data",
    details: `
      Refused while the volume is exported over vhost-user or has client sessions, unless --force:
      then the sessions are cut and the exports removed first. A backing file the node created is
      removed; a file or device named with --backing is left in place.
    `,
    examples: [
      ["Delete an unused volume", "tandem volume delete scratch"],
      ["Delete even while a client is connected", "tandem volume delete scratch --force"],
    ],
  });

  name = Option.String({ name: "name" });
  force = Option.Boolean("--force", false, { description: "Cut sessions and remove exports first" });

  async run(): Promise<void> {
    const reply = await this.client().request<{ deleted: string }>("DELETE", `/volumes/${encodeURIComponent(this.name)}${this.force ? "?force=true" : ""}`);
    this.output(reply, (r) => `deleted volume ${r.deleted}`);
  }
}
