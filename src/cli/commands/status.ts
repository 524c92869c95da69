// `tandem status`: the node, its health, each volume (can this node write it; if not, why and what
// to do next) and its exports. The exit status is the health, so a monitoring script needs no
// parsing: 0 healthy, 6 degraded, 7 no quorum (3 when the daemon cannot be reached). The JSON is the
// versioned status report (docs/status.schema.json).
import { Command } from "clipanion";
import type { HealthState, StatusReport, VolumeReport } from "../../node/control/status.ts";
import { exitCodes, table, TandemCommand } from "../base.ts";
import { formatDuration, pendingLines, replicaSummary } from "../render.ts";

export const statusExitCodes: Record<HealthState, number> = { healthy: exitCodes.ok, degraded: exitCodes.degraded, "no-quorum": exitCodes.noQuorum };

const healthWords: Record<HealthState, string> = { healthy: "HEALTHY", degraded: "DEGRADED", "no-quorum": "NO QUORUM" };

/** The WRITE column: "yes", "yes, but <why>", or "NO: <why>; next: <step>". */
export function writeSummary(volume: VolumeReport): string {
  const { write, reason, next } = volume.access;
  const head = write ? (reason ? `yes, but ${reason}` : "yes") : `NO: ${reason ?? "unknown"}`;
  return next ? `${head}; next: ${next}` : head;
}

const ms = (value: number | null) => (value === null ? "never" : `${Math.round(value)} ms`);

/** The quorum in a few lines: state and epoch, who holds data, the witness, the timings and margin. */
export function quorumLines(quorum: StatusReport["quorum"]): string[] {
  if (quorum.state === "not-configured") return [`  quorum   not configured${quorum.witness ? ` (witness ${quorum.witness.path} watched: ${quorum.witness.reachable ? "reachable" : "UNREACHABLE"})` : ""}`];
  const lines = [`  quorum   ${quorum.state.toUpperCase()}, epoch ${quorum.epoch} (${quorum.record}): ${quorum.reason}`];
  lines.push(`  holders  ${quorum.dataHolders.length > 0 ? quorum.dataHolders.join(", ") : "nobody yet"}${quorum.outdated ? "; this node is OUTDATED" : ""}`);
  const w = quorum.witness;
  const latency = w.latency.p50Ms === null ? "" : `, read p50 ${w.latency.p50Ms} ms p99 ${w.latency.p99Ms} ms, write p50 ${w.writeLatency.p50Ms ?? "-"} ms`;
  lines.push(`  witness  ${w.path}: ${w.reachable ? "reachable" : `UNREACHABLE (${w.failure ?? "no answer"})`}, last write ${ms(w.lastWriteAgeMs)} ago${latency}`);
  const t = quorum.timing;
  lines.push(`  timing   heartbeat ${t.heartbeatIntervalMs} ms, link ${t.linkTimeoutMs} ms, head start ${t.headStartMs} ms, self-fence ${t.selfFenceTimeoutMs} ms, dead ${t.deadTimeoutMs} ms; lease margin ${t.leaseMarginMs} ms${quorum.leaseRemainingMs !== null ? `; lease left ${quorum.leaseRemainingMs} ms` : ""}`);
  if (quorum.nextSafeAction) lines.push(`  next     ${quorum.nextSafeAction}`);
  return lines;
}

export function renderStatus(s: StatusReport): string {
  const lines: string[] = [];
  lines.push(`node ${s.node.name} (tandem ${s.node.version}, pid ${s.node.pid}, up ${formatDuration(s.node.uptimeMs)}): ${healthWords[s.health.state]}`);
  lines.push(`  data     ${s.node.dataDir}`);
  lines.push(`  nbd      ${s.node.nbdSocket}${s.node.nbdTcp ? ` and tcp ${s.node.nbdTcp}` : ""}`);
  const link = s.node.link;
  const linkText = link ? ` (link ${link.state}${link.rttMs !== null ? `, rtt ${link.rttMs.toFixed(1)} ms` : ""})` : "";
  lines.push(`  peer     ${s.node.peer ? `${s.node.peer.name} at ${s.node.peer.address}${linkText}` : "none (standalone)"}`);
  lines.push(...quorumLines(s.quorum));
  for (const reason of s.health.reasons) lines.push(`  ! ${reason}`);
  lines.push("");
  if (s.volumes.length === 0) lines.push("no volumes");
  else {
    lines.push(
      table([
        ["VOLUME", "SIZE", "ROLE", "STATE", "SESSIONS", "WRITE"],
        ...s.volumes.map((v) => [v.name, v.sizeHuman, v.nodes[0]?.role ?? "?", replicaSummary(v), String(v.sessions), writeSummary(v)]),
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
}

export class StatusCommand extends TandemCommand {
  static override paths = [["status"]];
  static override usage = Command.Usage({
    description: "Show the node's health, its volumes and its exports",
    details: `
      Asks the daemon for its status report: node identity and uptime, health with its reasons, the
      replication link (state and round trip), and one line per volume saying whether this node can
      write it and, when not, why and the next safe step. --json prints the report as documented in
      docs/status.schema.json (schemaVersion 1).

      The exit status is the health: 0 healthy, 6 degraded (IO goes on but something is not
      mirrored, resyncing or broken), 7 no quorum (a volume this node is primary of cannot be
      written), 3 the daemon cannot be reached.
    `,
    examples: [
      ["Human-readable status", "tandem status"],
      ["For scripts", "tandem status --json"],
      ["A monitoring check", "tandem status >/dev/null; echo $?"],
    ],
  });

  async run(): Promise<number> {
    const status = await this.client().status();
    this.output(status, renderStatus);
    return statusExitCodes[status.health.state];
  }
}
