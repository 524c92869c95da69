// `tandem status`: the node, its volumes (role, sync state, sessions) and its exports.
import { Command } from "clipanion";
import type { VolumeView } from "../../node/volumes.ts";
import { table, TandemCommand } from "../base.ts";
import type { PendingVolume } from "../../node/intents.ts";
import { formatDuration, pendingLines, replicaSummary } from "../render.ts";

interface StatusReply {
  node: { name: string; version: string; pid: number; uptimeMs: number; dataDir: string; nbdSocket: string; nbdTcp: string | null; peer: { name: string; address: string } | null; link?: Record<string, unknown> };
  volumes: VolumeView[];
  pending?: PendingVolume[];
  broken: { name: string; backing: string }[];
  exports: { kind: string; socket?: string; path?: string; volume?: string; tcp?: string | null; queues?: number }[];
  sessions: { id: string; kind: string; volume: string; client: string; requestsInFlight: number }[];
}

export class StatusCommand extends TandemCommand {
  static override paths = [["status"]];
  static override usage = Command.Usage({
    description: "Show the node, its volumes and its exports",
    details: "Asks the daemon for its state: node identity and uptime, each volume with its size, role, sync state and sessions, the NBD socket and the vhost-user exports.",
    examples: [
      ["Human-readable status", "tandem status"],
      ["For scripts", "tandem status --json"],
    ],
  });

  async run(): Promise<void> {
    const status = await this.client().request<StatusReply>("GET", "/status");
    this.output(status, (s) => {
      const lines: string[] = [];
      lines.push(`node ${s.node.name} (tandem ${s.node.version}, pid ${s.node.pid}, up ${formatDuration(s.node.uptimeMs)})`);
      lines.push(`  data     ${s.node.dataDir}`);
      lines.push(`  nbd      ${s.node.nbdSocket}${s.node.nbdTcp ? ` and tcp ${s.node.nbdTcp}` : ""}`);
      lines.push(`  peer     ${s.node.peer ? `${s.node.peer.name} at ${s.node.peer.address}${s.node.link ? ` (${String(s.node.link.state ?? "")})` : ""}` : "none (standalone)"}`);
      lines.push("");
      if (s.volumes.length === 0) lines.push("no volumes");
      else {
        lines.push(
          table([
            ["VOLUME", "SIZE", "ROLE", "STATE", "SESSIONS", "GATE"],
            ...s.volumes.map((v) => [v.name, v.sizeHuman, v.nodes[0]?.role ?? "?", replicaSummary(v), String(v.sessions), v.gate]),
          ]),
        );
      }
      lines.push(...pendingLines(s.pending));
      for (const broken of s.broken) lines.push(`! volume ${broken.name} could not be opened (backing ${broken.backing}); see tandem events`);
      const vhost = s.exports.filter((e) => e.kind === "vhost");
      if (vhost.length > 0) {
        lines.push("");
        lines.push(table([["VHOST EXPORT", "SOCKET", "QUEUES"], ...vhost.map((e) => [e.volume ?? "", e.path ?? "", String(e.queues ?? "")])]));
      }
      if (s.sessions.length > 0) {
        lines.push("");
        lines.push(table([["SESSION", "KIND", "VOLUME", "CLIENT", "IN FLIGHT"], ...s.sessions.map((x) => [x.id, x.kind, x.volume, x.client, String(x.requestsInFlight)])]));
      }
      return lines.join("\n");
    });
  }
}
