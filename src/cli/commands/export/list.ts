// `tandem export list`: the NBD listener, the vhost-user exports and the client sessions.
import { Command } from "clipanion";
import { table, TandemCommand } from "../../base.ts";

interface ExportsReply {
  exports: { kind: string; socket?: string; tcp?: string | null; volume?: string; path?: string; queues?: number; volumes?: string[] }[];
  sessions: { id: string; kind: string; volume: string; client: string; requestsInFlight: number }[];
}

export class ExportListCommand extends TandemCommand {
  static override paths = [["export", "list"], ["export", "ls"]];
  static override usage = Command.Usage({
    category: "Exports",
    description: "List exports and client sessions",
    examples: [["List exports", "tandem export list"]],
  });

  async run(): Promise<void> {
    const reply = await this.client().request<ExportsReply>("GET", "/exports");
    this.output(reply, (r) => {
      const rows = [["KIND", "VOLUME", "SOCKET"]];
      for (const e of r.exports) {
        if (e.kind === "nbd") rows.push(["nbd", (e.volumes ?? []).join(",") || "-", `${e.socket}${e.tcp ? ` tcp ${e.tcp}` : ""}`]);
        else rows.push([e.kind, e.volume ?? "", `${e.path} (${e.queues} queues)`]);
      }
      const sessions = r.sessions.length === 0 ? "no client sessions" : table([["SESSION", "KIND", "VOLUME", "CLIENT"], ...r.sessions.map((s) => [s.id, s.kind, s.volume, s.client])]);
      return `${table(rows)}\n\n${sessions}`;
    });
  }
}
