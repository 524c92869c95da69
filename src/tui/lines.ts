// The dashboard's screens as lines of styled segments, computed from a DashboardState alone. Each
// screen is at most `height` lines and each line is cut to `width` when drawn, so the layout fits
// the terminal (80x24 at least) by construction. Nothing here depends on colour: states are words
// ("DEGRADED", "link DOWN"), the selection is a ">" and the progress bar is characters, so the
// screens read the same with NO_COLOR, where the components drop every style.
import { formatSize } from "../common/size.ts";
import type { VolumeReport } from "../node/control/status.ts";
import { type DashboardState, type FailoverPlan, freshness, planFailover, resyncProgress, type ResyncProgress } from "./state.ts";

export type Tone = "good" | "warn" | "bad" | "dim" | "title";

export interface Segment {
  text: string;
  tone?: Tone;
}

export type Line = Segment[];

export const plain = (text: string, tone?: Tone): Line => [{ text, tone }];

export function formatRate(bytesPerSecond: number): string {
  if (bytesPerSecond < 1) return "0";
  return `${formatSize(Math.round(bytesPerSecond)).replace(" ", "")}/s`;
}

export function formatSeconds(seconds: number): string {
  const whole = Math.ceil(seconds);
  if (whole < 60) return `${whole}s`;
  if (whole < 3600) return `${Math.floor(whole / 60)}m${String(whole % 60).padStart(2, "0")}s`;
  return `${Math.floor(whole / 3600)}h${String(Math.floor((whole % 3600) / 60)).padStart(2, "0")}m`;
}

function formatAge(ms: number): string {
  return ms < 10_000 ? `${(ms / 1000).toFixed(1)}s` : formatSeconds(ms / 1000);
}

function clock(ms: number): string {
  return new Date(ms).toISOString().slice(11, 19);
}

/** `[#####.....] 42%` at `cells` cells. */
export function progressBar(fraction: number, cells: number): string {
  const clamped = Math.min(1, Math.max(0, fraction));
  const filled = Math.round(clamped * cells);
  return `[${"#".repeat(filled)}${".".repeat(cells - filled)}] ${String(Math.floor(clamped * 100)).padStart(3)}%`;
}

function resyncLine(progress: ResyncProgress, peer: string): Line {
  const direction = progress.direction === "source" ? `to ${peer}` : `from ${peer}`;
  const eta = progress.etaSeconds === undefined ? "ETA --" : `ETA ${formatSeconds(progress.etaSeconds)}`;
  return [{ text: `    resync ${direction} ` }, { text: progressBar(progress.fraction, 20), tone: "warn" }, { text: `  ${formatRate(progress.rateBytesPerSecond)}  ${eta}` }];
}

const healthTone = { healthy: "good", degraded: "warn", "no-quorum": "bad" } as const;
const healthWord = { healthy: "HEALTHY", degraded: "DEGRADED", "no-quorum": "NO QUORUM" } as const;

function headerLine(state: DashboardState): Line {
  const fresh = freshness(state);
  const status = state.latest?.status;
  const line: Line = [{ text: "TANDEM", tone: "title" }, { text: ` node ${status?.node.name ?? "?"}  ` }];
  if (status) line.push({ text: healthWord[status.health.state], tone: healthTone[status.health.state] });
  if (fresh.kind === "live") line.push({ text: `  live, ${formatAge(fresh.ageMs)} old`, tone: "dim" });
  else if (fresh.kind === "stale") line.push({ text: `  STALE: data ${formatAge(fresh.ageMs)} old`, tone: "bad" });
  else line.push({ text: `  connecting to ${state.socket} (${formatAge(state.nowMs - fresh.sinceMs)})`, tone: "warn" });
  return line;
}

function nodesLine(state: DashboardState): Line {
  const status = state.latest!.status;
  const here = status.node.name;
  const primaries = status.volumes.filter((volume) => volume.primary === here).length;
  const line: Line = [{ text: `nodes  ${here} (this node, primary of ${primaries})` }];
  const peer = status.node.peer;
  const link = status.node.link;
  if (!peer || !link) return [...line, { text: "  standalone: no peer configured", tone: "dim" }];
  line.push({ text: `  <->  ${peer.name}  ` });
  if (link.connected) line.push({ text: "link UP", tone: "good" }, { text: `  rtt ${link.rttMs === null ? "--" : `${link.rttMs.toFixed(1)} ms`}  since ${clock(link.sinceMs)}` });
  else line.push({ text: `link ${link.state.toUpperCase()}`, tone: "bad" }, { text: `  since ${clock(link.sinceMs)}` });
  return line;
}

function quorumLine(state: DashboardState): Line {
  const quorum = state.latest!.status.quorum;
  if (quorum.state === "not-configured") return [{ text: `quorum not configured   witness ${quorum.witness ? (quorum.witness.reachable ? "reachable" : "UNREACHABLE") : "not configured"}`, tone: "dim" }];
  const tone: Tone = quorum.state === "shared" ? "good" : quorum.state === "solo" ? "warn" : "bad";
  const witness = quorum.witness.reachable ? `witness ok (write ${quorum.witness.lastWriteAgeMs ?? "?"} ms ago)` : "witness LOST";
  return [
    { text: `quorum ${quorum.state.toUpperCase()} epoch ${quorum.epoch}`, tone },
    { text: `   data ${quorum.dataHolders.join("+") || "-"}   ${witness}   margin ${quorum.timing.leaseMarginMs ?? "?"} ms`, tone: quorum.witness.reachable ? "dim" : "bad" },
  ];
}

function volumeLine(volume: VolumeReport, selected: boolean, state: DashboardState): Line {
  const local = volume.nodes[0];
  const rates = state.rates[volume.name];
  const stateTone = local?.state === "synced" || local?.state === "standalone" ? "good" : local?.state === "split-brain" || local?.state === "refused" ? "bad" : "warn";
  const write = volume.access.write ? (volume.access.reason ? "yes*" : "yes") : "NO";
  return [
    { text: `${selected ? ">" : " "} ${volume.name.padEnd(14).slice(0, 14)} ${(local?.role ?? "?").padEnd(9)} ` },
    { text: (local?.state ?? "unknown").padEnd(11), tone: stateTone },
    { text: ` ${write.padEnd(5)}`, tone: volume.access.write ? undefined : "bad" },
    { text: ` ${(rates ? formatRate(rates.readBytesPerSecond) : "--").padStart(11)} ${(rates ? formatRate(rates.writeBytesPerSecond) : "--").padStart(11)}` },
  ];
}

export function wrap(text: string, width: number, indent = ""): string[] {
  const lines: string[] = [];
  let current = indent;
  for (const word of text.split(/\s+/)) {
    if (current.trim() !== "" && current.length + 1 + word.length > width) {
      lines.push(current);
      current = indent + word;
    } else current = current.trim() === "" ? indent + word : `${current} ${word}`;
  }
  if (current.trim() !== "") lines.push(current);
  return lines;
}

export const footerText = "? keys  up/down select  f failover  r refresh  q quit";

function dashboardLines(state: DashboardState, width: number, height: number): Line[] {
  const lines: Line[] = [headerLine(state)];
  const fresh = freshness(state);
  const footer = plain(footerText, "dim");
  if (!state.latest) {
    lines.push([]);
    lines.push(plain(`No answer from the daemon at ${state.socket} yet.`));
    if (fresh.kind === "connecting" && fresh.error) for (const text of wrap(fresh.error, width)) lines.push(plain(text, "bad"));
    lines.push(plain("Is it running? Choose another with --socket or TANDEM_SOCKET.", "dim"));
    return [...lines.slice(0, height - 1), footer];
  }
  if (fresh.kind === "stale") lines.push(plain(`! cannot reach the daemon: ${fresh.error ?? "no answer"}; showing the last data`, "bad"));
  const status = state.latest.status;
  lines.push(nodesLine(state), quorumLine(state));
  for (const reason of status.health.reasons.slice(0, 2)) lines.push(plain(`! ${reason}`, "warn"));
  if (status.health.reasons.length > 2) lines.push(plain(`! ... and ${status.health.reasons.length - 2} more (tandem status)`, "warn"));
  lines.push([]);
  lines.push(plain(`  ${"VOLUME".padEnd(14)} ${"ROLE".padEnd(9)} ${"STATE".padEnd(11)} WRITE ${"READ".padStart(11)} ${"WRITTEN".padStart(11)}`, "title"));
  if (status.volumes.length === 0) lines.push(plain("  no volumes (tandem volume create NAME --size 10G)", "dim"));
  const peer = status.node.peer?.name ?? "peer";
  status.volumes.forEach((volume, index) => {
    lines.push(volumeLine(volume, index === state.selected, state));
    const progress = resyncProgress(volume);
    if (progress && volume.nodes[0]?.state === "resyncing") lines.push(resyncLine(progress, peer));
  });
  const selected = status.volumes[state.selected];
  if (selected && (selected.access.reason || selected.access.next)) {
    const why = `${selected.name}: ${selected.access.write ? "writes, but" : "cannot write:"} ${selected.access.reason ?? ""}${selected.access.next ? `; next: ${selected.access.next}` : ""}`;
    for (const text of wrap(why, width, "  ").slice(0, 3)) lines.push(plain(text, selected.access.write ? "warn" : "bad"));
  }
  for (const broken of status.broken) lines.push(plain(`! ${broken.name} could not be opened (backing ${broken.backing})`, "bad"));
  // Events take what is left above the footer, newest last.
  const room = height - lines.length - 3;
  if (room > 0) {
    lines.push([]);
    lines.push(plain("EVENTS", "title"));
    const events = state.latest.events.slice(-room);
    if (events.length === 0) lines.push(plain("  none yet", "dim"));
    for (const event of events) {
      lines.push([
        { text: `${clock(event.timeMs)} ` },
        { text: event.level.padEnd(5), tone: event.level === "error" ? "bad" : event.level === "warn" ? "warn" : "dim" },
        { text: ` ${event.kind}${event.volume ? ` [${event.volume}]` : ""}: ${event.message}` },
      ]);
    }
  }
  return [...lines.slice(0, height - 1), ...Array.from({ length: Math.max(0, height - 1 - lines.length) }, () => [] as Line), footer];
}

export const helpKeys: [string, string][] = [
  ["up / k, down / j", "select a volume"],
  ["f", "failover screen for the selected volume (what would happen, then confirm)"],
  ["r", "ask the daemon now instead of at the next poll"],
  ["?", "this help; ? or Esc goes back"],
  ["Esc", "back / cancel"],
  ["q, Ctrl-C", "quit"],
];

function helpLines(state: DashboardState, width: number, height: number): Line[] {
  const lines: Line[] = [headerLine(state), [], plain("KEYS", "title")];
  for (const [keys, what] of helpKeys) lines.push([{ text: `  ${keys.padEnd(18)}` }, { text: what }]);
  lines.push([]);
  for (const text of wrap("The dashboard polls the daemon every second and never waits on it: when the daemon is slow or gone, the last data stays on screen marked STALE with its age.", width)) lines.push(plain(text, "dim"));
  return [...lines.slice(0, height - 1), ...Array.from({ length: Math.max(0, height - 1 - lines.length) }, () => [] as Line), plain("Esc or ? back  q quit", "dim")];
}

function planLines(plan: FailoverPlan, width: number): Line[] {
  if (plan.kind === "impossible") return [plain(`Failover of ${plan.volume} is not possible now:`, "bad"), ...wrap(plan.reason, width, "  ").map((text) => plain(text))];
  const lines: Line[] = [plain(plan.kind === "switchover" ? `Planned switchover of ${plan.volume}: ${plan.from} -> ${plan.to}` : `FORCED promotion of ${plan.volume} on ${plan.to}`, plan.kind === "forced" ? "bad" : "title"), []];
  lines.push(plain("What will happen", "title"), ...wrap(plan.happens, width, "  ").map((text) => plain(text)));
  lines.push(plain("What freezes", "title"), ...wrap(plan.freezes, width, "  ").map((text) => plain(text)));
  if (plan.kind === "forced") lines.push(plain("What is DISCARDED", "bad"), ...wrap(plan.discards, width, "  ").map((text) => plain(text, "bad")));
  else lines.push(plain("What is discarded", "title"), plain("  nothing: both replicas hold every acknowledged write"));
  return lines;
}

function failoverLines(state: DashboardState, width: number, height: number): Line[] {
  const screen = state.screen;
  if (screen.kind !== "failover") return [];
  const lines: Line[] = [headerLine(state), []];
  const plan = state.latest ? planFailover(state.latest.status, screen.volume) : ({ kind: "impossible", volume: screen.volume, reason: "no data from the daemon yet" } as const);
  lines.push(...planLines(plan, width), []);
  let footer = "Esc back";
  if (screen.step === "review") footer = plan.kind === "impossible" ? "Enter or Esc back" : "Enter continue  Esc cancel";
  else if (screen.step === "confirm" && plan.kind === "switchover") {
    lines.push(plain(`Move the primary role of ${plan.volume} to ${plan.to}? Press y to confirm, Esc to go back.`, "warn"));
    footer = "y confirm  Esc back";
  } else if (screen.step === "confirm" && plan.kind === "forced") {
    lines.push(plain(`Type the volume's name (${plan.volume}) and Enter to force it; Esc to go back.`, "bad"));
    lines.push([{ text: "  > " }, { text: screen.typed }, { text: "_", tone: "dim" }]);
    footer = "type the name, Enter force  Esc back";
  } else if (screen.step === "requested") {
    const outcome = screen.outcome;
    if (outcome?.kind === "running") {
      lines.push(plain(`${outcome.force ? "Forcing" : "Moving"} ${screen.volume} to ${outcome.to}...`, "warn"));
      footer = "waiting for the daemon";
    } else {
      if (outcome?.kind === "done") for (const text of wrap(`Done: ${outcome.message}`, width)) lines.push(plain(text, "good"));
      if (outcome?.kind === "failed") for (const text of wrap(`Failed: ${outcome.error}`, width)) lines.push(plain(text, "bad"));
      footer = "Enter or Esc back";
    }
  }
  return [...lines.slice(0, height - 1), ...Array.from({ length: Math.max(0, height - 1 - lines.length) }, () => [] as Line), plain(footer, "dim")];
}

/** The lines of whatever screen `state` is on, at most `height` of them. */
export function screenLines(state: DashboardState, width: number, height: number): Line[] {
  switch (state.screen.kind) {
    case "help":
      return helpLines(state, width, height);
    case "failover":
      return failoverLines(state, width, height);
    default:
      return dashboardLines(state, width, height);
  }
}
