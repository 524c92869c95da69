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
      both nodes and volumes only one node holds, each with the next safe action ("next"). With a
      witness, "quorum" says the quorum state (shared, solo, frozen, no-quorum), its epoch and why,
      and each volume says whether this node can write it ("writable", and "quorumHold" with the
      reason while the quorum freezes it; "onFreeze": suspend or error).
    `,
    examples: [["List volumes as JSON", "tandem volume list --json"]],
  });

  async run(): Promise<void> {
    const reply = await this.client().request<{ volumes: VolumeView[]; pending?: PendingVolume[]; quorum?: { state: string; epoch?: number; reason?: string } }>("GET", "/volumes");
    this.output(reply, ({ volumes, pending, quorum }) => {
      const lines = pendingLines(pending);
      const head = quorum && quorum.state !== "not-configured" ? [`quorum ${quorum.state.toUpperCase()}, epoch ${quorum.epoch}: ${quorum.reason}`] : [];
      if (volumes.length === 0) return [...head, "no volumes", ...lines].join("\n");
      const write = (v: VolumeView) => (v.quorumHold ? `NO: frozen (${v.quorumHold.reason}; IO ${v.onFreeze === "error" ? "fails" : "waits"})` : v.writable ? "yes" : "no");
      const rows = table([
        ["NAME", "SIZE", "PRIMARY", "EPOCH", "STATE", "SESSIONS", "WRITE", "BACKING"],
        ...volumes.map((v) => [v.name, v.sizeHuman, v.primary, String(v.epoch), replicaSummary(v), String(v.sessions), write(v), v.backing]),
      ]);
      return [...head, rows, ...lines].join("\n");
    });
  }
}
