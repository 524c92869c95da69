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

      On a pair both replicas go. With the link down the delete is refused unless --force: then this
      node's replica goes now and the peer's as soon as the link is back ("peer": "pending"; see
      tandem volume list). --force also removes a leftover that only one node holds.
    `,
    examples: [
      ["Delete an unused volume", "tandem volume delete scratch"],
      ["Delete even while a client is connected (or the peer is away)", "tandem volume delete scratch --force"],
    ],
  });

  name = Option.String({ name: "name" });
  force = Option.Boolean("--force", false, { description: "Cut sessions and remove exports first" });

  async run(): Promise<void> {
    const reply = await this.client().request<{ deleted: string; peer?: "deleted" | "pending" }>("DELETE", `/volumes/${encodeURIComponent(this.name)}${this.force ? "?force=true" : ""}`);
    this.output(reply, (r) => `deleted volume ${r.deleted}${r.peer === "pending" ? "; the peer's replica is removed as soon as the peer is reachable" : ""}`);
  }
}
