// `tandem volume list`: every volume with its size and, per node, backing, role and sync state.
import { Command } from "clipanion";
import type { VolumeView } from "../../../node/volumes.ts";
import { table, TandemCommand } from "../../base.ts";
import type { PendingVolume } from "../../../node/intents.ts";
import { pendingLines, replicaSummary } from "../../render.ts";

export class VolumeListCommand extends TandemCommand {
  static override paths = [["volume", "list"], ["volume", "ls"]];
  static override usage = Command.Usage({
    category: "Volumes",
    description: "List volumes",
    details: `
      With --json prints {"volumes": [...], "pending": [...]}, each volume with at least name, size
      (bytes) and nodes: one entry per node holding a replica with node, backing, role and state.
      These fields are stable. On a pair, "pending" lists creates and deletes not yet finished on
      both nodes and volumes only one node holds, each with the next safe action ("next").
    `,
    examples: [["List volumes as JSON", "tandem volume list --json"]],
  });

  async run(): Promise<void> {
    const reply = await this.client().request<{ volumes: VolumeView[]; pending?: PendingVolume[] }>("GET", "/volumes");
    this.output(reply, ({ volumes, pending }) => {
      const lines = pendingLines(pending);
      if (volumes.length === 0) return ["no volumes", ...lines].join("\n");
      const rows = table([
        ["NAME", "SIZE", "PRIMARY", "STATE", "SESSIONS", "BACKING"],
        ...volumes.map((v) => [v.name, v.sizeHuman, v.primary, replicaSummary(v), String(v.sessions), v.backing]),
      ]);
      return [rows, ...lines].join("\n");
    });
  }
}
