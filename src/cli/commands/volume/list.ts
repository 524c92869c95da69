// `tandem volume list`: every volume with its size and, per node, backing, role and sync state.
import { Command } from "clipanion";
import type { VolumeView } from "../../../node/volumes.ts";
import { table, TandemCommand } from "../../base.ts";
import { replicaSummary } from "../../render.ts";

export class VolumeListCommand extends TandemCommand {
  static override paths = [["volume", "list"], ["volume", "ls"]];
  static override usage = Command.Usage({
    category: "Volumes",
    description: "List volumes",
    details: `
      With --json prints {"volumes": [...]}, each with at least name, size (bytes) and nodes: one
      entry per node holding a replica with node, backing, role and state. These fields are stable.
    `,
    examples: [["List volumes as JSON", "tandem volume list --json"]],
  });

  async run(): Promise<void> {
    const reply = await this.client().request<{ volumes: VolumeView[] }>("GET", "/volumes");
    this.output(reply, ({ volumes }) => {
      if (volumes.length === 0) return "no volumes";
      return table([
        ["NAME", "SIZE", "PRIMARY", "STATE", "SESSIONS", "BACKING"],
        ...volumes.map((v) => [v.name, v.sizeHuman, v.primary, replicaSummary(v), String(v.sessions), v.backing]),
      ]);
    });
  }
}
