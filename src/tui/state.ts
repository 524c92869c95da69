// The dashboard's state and its reducer (CONVENTIONS.md §9): everything `tandem tui` shows is
// derived from this plain data, fed by control-API snapshots, failed polls, clock ticks and keys.
// No IO here and no rendering: the driver (src/tui/run.tsx) polls the daemon and dispatches; the
// components (src/tui/screens.tsx) draw a state. Time comes in with the actions (`atMs`, `nowMs`),
// so a test steps the dashboard through healthy → degraded → stale without a daemon or a clock.
import type { EventRecord } from "../node/state.ts";
import type { StatusReport, VolumeReport } from "../node/control/status.ts";
import { tuiEventsKept, tuiStaleAfterMs } from "../constants.ts";

/** One successful poll: the status report and the newest events, and when they arrived. */
export interface Snapshot {
  status: StatusReport;
  events: EventRecord[];
  atMs: number;
}

export interface IoRates {
  readBytesPerSecond: number;
  writeBytesPerSecond: number;
  readOpsPerSecond: number;
  writeOpsPerSecond: number;
}

/** A resync as the bar shows it: done fraction, rate and time left. */
export interface ResyncProgress {
  direction: "source" | "target";
  fraction: number;
  bytesCopied: number;
  bytesTotal: number;
  rateBytesPerSecond: number;
  etaSeconds: number | undefined;
}

/** How fresh the data on screen is. */
export type Freshness =
  | { kind: "connecting"; sinceMs: number; error: string | undefined }
  | { kind: "live"; ageMs: number }
  | { kind: "stale"; ageMs: number; error: string | undefined };

export type FailoverStep = "review" | "confirm" | "requested";

/** What became of the failover the operator confirmed: running (the request is out), then done or failed. */
export type FailoverOutcome = { kind: "running"; to: string; force: boolean } | { kind: "done"; message: string } | { kind: "failed"; error: string };

export type Screen =
  | { kind: "dashboard" }
  | { kind: "help" }
  | { kind: "failover"; volume: string; step: FailoverStep; typed: string; outcome?: FailoverOutcome }
  | { kind: "quit" };

export type KeyName = "up" | "down" | "enter" | "escape" | "backspace" | "help" | "failover" | "quit" | "refresh" | "yes" | "char";

export type Action =
  | { kind: "snapshot"; status: StatusReport; events: EventRecord[]; atMs: number }
  | { kind: "pollFailed"; error: string; atMs: number }
  | { kind: "tick"; nowMs: number }
  | { kind: "key"; key: KeyName; char?: string }
  /** The failover request the screen made has answered. */
  | { kind: "failoverResult"; volume: string; ok: boolean; message: string };

export interface DashboardState {
  /** The control socket the dashboard watches (shown when it cannot be reached). */
  socket: string;
  startedMs: number;
  nowMs: number;
  latest: Snapshot | undefined;
  /** IO per volume between the two latest snapshots. */
  rates: Record<string, IoRates>;
  /** The last failed poll since the latest snapshot (cleared by the next success). */
  failure: { error: string; atMs: number } | undefined;
  selected: number;
  screen: Screen;
  /** Set by the `r` key; the driver polls at once and clears it with its next action. */
  refreshRequested: boolean;
}

export function initialState(socket: string, nowMs: number): DashboardState {
  return { socket, startedMs: nowMs, nowMs, latest: undefined, rates: {}, failure: undefined, selected: 0, screen: { kind: "dashboard" }, refreshRequested: false };
}

function ratesBetween(from: Snapshot, to: Snapshot): Record<string, IoRates> {
  const seconds = (to.atMs - from.atMs) / 1000;
  const rates: Record<string, IoRates> = {};
  if (seconds <= 0) return rates;
  for (const volume of to.status.volumes) {
    const before = from.status.volumes.find((candidate) => candidate.name === volume.name && candidate.id === volume.id);
    // Counters restart with the volume (a daemon restart): a drop means no rate for this interval.
    if (!before || volume.io.readBytes < before.io.readBytes || volume.io.writeBytes < before.io.writeBytes) continue;
    rates[volume.name] = {
      readBytesPerSecond: (volume.io.readBytes - before.io.readBytes) / seconds,
      writeBytesPerSecond: (volume.io.writeBytes - before.io.writeBytes) / seconds,
      readOpsPerSecond: (volume.io.readOps - before.io.readOps) / seconds,
      writeOpsPerSecond: (volume.io.writeOps - before.io.writeOps) / seconds,
    };
  }
  return rates;
}

function clampSelection(selected: number, state: DashboardState): number {
  const count = state.latest?.status.volumes.length ?? 0;
  return count === 0 ? 0 : Math.min(Math.max(selected, 0), count - 1);
}

export function selectedVolume(state: DashboardState): VolumeReport | undefined {
  return state.latest?.status.volumes[state.selected];
}

function onKey(state: DashboardState, key: KeyName, char: string | undefined): DashboardState {
  const screen = state.screen;
  if (screen.kind === "failover") {
    if (key === "escape") return { ...state, screen: screen.step === "review" ? { kind: "dashboard" } : { ...screen, step: "review", typed: "" } };
    if (screen.step === "requested") return key === "enter" && screen.outcome?.kind !== "running" ? { ...state, screen: { kind: "dashboard" } } : state;
    const plan = state.latest ? planFailover(state.latest.status, screen.volume) : undefined;
    if (screen.step === "review") {
      if (key === "enter" && plan && plan.kind !== "impossible") return { ...state, screen: { ...screen, step: "confirm", typed: "" } };
      if (key === "quit" || (key === "enter" && (!plan || plan.kind === "impossible"))) return { ...state, screen: { kind: "dashboard" } };
      return state;
    }
    // confirm: a planned switchover takes `y`; a forced promotion takes the volume's name typed out.
    if (plan?.kind === "switchover") return key === "yes" ? { ...state, screen: { ...screen, step: "requested", outcome: { kind: "running", to: plan.to, force: false } } } : state;
    if (key === "backspace") return { ...state, screen: { ...screen, typed: screen.typed.slice(0, -1) } };
    if (key === "enter") return screen.typed === screen.volume && plan?.kind === "forced" ? { ...state, screen: { ...screen, step: "requested", outcome: { kind: "running", to: plan.to, force: true } } } : state;
    // Every printable key types itself here, whatever it means elsewhere (q, f, j, k...).
    const typedChar = char !== undefined && char.length === 1 && char >= " " && char !== "\u007f" ? char : undefined;
    return typedChar && screen.typed.length < 64 ? { ...state, screen: { ...screen, typed: screen.typed + typedChar } } : state;
  }
  if (screen.kind === "help") return key === "escape" || key === "help" || key === "enter" ? { ...state, screen: { kind: "dashboard" } } : key === "quit" ? { ...state, screen: { kind: "quit" } } : state;
  switch (key) {
    case "up":
      return { ...state, selected: clampSelection(state.selected - 1, state) };
    case "down":
      return { ...state, selected: clampSelection(state.selected + 1, state) };
    case "help":
      return { ...state, screen: { kind: "help" } };
    case "quit":
      return { ...state, screen: { kind: "quit" } };
    case "refresh":
      return { ...state, refreshRequested: true };
    case "failover": {
      const volume = selectedVolume(state);
      return volume ? { ...state, screen: { kind: "failover", volume: volume.name, step: "review", typed: "" } } : state;
    }
    default:
      return state;
  }
}

export function reduce(state: DashboardState, action: Action): DashboardState {
  switch (action.kind) {
    case "snapshot": {
      const snapshot: Snapshot = { status: action.status, events: action.events.slice(-tuiEventsKept), atMs: action.atMs };
      const rates = state.latest ? ratesBetween(state.latest, snapshot) : {};
      const next = { ...state, latest: snapshot, rates, failure: undefined, nowMs: Math.max(state.nowMs, action.atMs), refreshRequested: false };
      return { ...next, selected: clampSelection(state.selected, next) };
    }
    case "pollFailed":
      return { ...state, failure: { error: action.error, atMs: action.atMs }, nowMs: Math.max(state.nowMs, action.atMs), refreshRequested: false };
    case "tick":
      return { ...state, nowMs: Math.max(state.nowMs, action.nowMs) };
    case "key":
      return onKey(state, action.key, action.char);
    case "failoverResult": {
      const screen = state.screen;
      if (screen.kind !== "failover" || screen.volume !== action.volume || screen.outcome?.kind !== "running") return state;
      const outcome: FailoverOutcome = action.ok ? { kind: "done", message: action.message } : { kind: "failed", error: action.message };
      return { ...state, screen: { ...screen, outcome }, refreshRequested: true };
    }
  }
}

/** How fresh the data is: live while the last snapshot is recent and no poll failed since. */
export function freshness(state: DashboardState): Freshness {
  if (!state.latest) return { kind: "connecting", sinceMs: state.startedMs, error: state.failure?.error };
  const ageMs = Math.max(0, state.nowMs - state.latest.atMs);
  if (state.failure || ageMs > tuiStaleAfterMs) return { kind: "stale", ageMs, error: state.failure?.error };
  return { kind: "live", ageMs };
}

/** The resync of a volume on this node, from the replication detail in its status. */
export function resyncProgress(volume: VolumeReport): ResyncProgress | undefined {
  const resync = volume.nodes[0]?.detail?.resync as { direction?: "source" | "target"; bytesCopied?: number; bytesRemaining?: number; rateBytesPerSecond?: number; etaSeconds?: number } | undefined;
  if (!resync || typeof resync.bytesCopied !== "number" || typeof resync.bytesRemaining !== "number") return undefined;
  const bytesTotal = resync.bytesCopied + resync.bytesRemaining;
  return {
    direction: resync.direction ?? "source",
    fraction: bytesTotal === 0 ? 1 : resync.bytesCopied / bytesTotal,
    bytesCopied: resync.bytesCopied,
    bytesTotal,
    rateBytesPerSecond: resync.rateBytesPerSecond ?? 0,
    etaSeconds: resync.etaSeconds,
  };
}

/** What a failover of `volumeName` would do, judged from this node's report. */
export type FailoverPlan =
  | { kind: "impossible"; volume: string; reason: string }
  | { kind: "switchover"; volume: string; from: string; to: string; happens: string; freezes: string; command: string }
  | { kind: "forced"; volume: string; from: string; to: string; happens: string; freezes: string; discards: string; command: string };

export function planFailover(status: StatusReport, volumeName: string): FailoverPlan {
  const volume = status.volumes.find((candidate) => candidate.name === volumeName);
  const impossible = (reason: string): FailoverPlan => ({ kind: "impossible", volume: volumeName, reason });
  if (!volume) return impossible(`no volume ${volumeName} on ${status.node.name}`);
  const peer = status.node.peer?.name;
  if (!peer) return impossible(`${status.node.name} is standalone: there is no other replica to fail over to`);
  const here = status.node.name;
  const from = volume.primary;
  const to = from === here ? peer : here;
  const local = volume.nodes[0];
  const remote = volume.nodes[1];
  const linkUp = status.node.link?.connected === true;
  if (local?.state === "split-brain") return impossible(`split brain: first choose whose data to keep (tandem volume resolve ${volume.name} --keep NODE)`);
  const command = `tandem failover --to ${to} ${volume.name}`;
  if (linkUp) {
    const targetState = to === here ? local?.state : remote?.state;
    if (targetState !== "synced") {
      const progress = resyncProgress(volume);
      return impossible(`${to} is ${targetState ?? "unknown"}${progress ? ` (${Math.floor(progress.fraction * 100)}%)` : ""}: a planned switchover waits until both replicas are synced`);
    }
    return {
      kind: "switchover",
      volume: volume.name,
      from,
      to,
      happens: `${to} becomes the primary of ${volume.name}; ${from} becomes its secondary. Both replicas are synced: nothing is lost.`,
      freezes: `IO on ${volume.name} pauses on ${from} while the role moves (clients wait, they see no errors); clients then connect to ${to}.`,
      command,
    };
  }
  if (to !== here) return impossible(`${to} is unreachable from ${here}: a forced promotion is decided on ${to} (with the witness, automatically)`);
  const since = status.node.link ? new Date(status.node.link.sinceMs).toISOString().replace("T", " ").slice(0, 19) : "the link went down";
  const outdated = local?.state === "outdated" ? `${here} is outdated: it missed writes even before the link went down. ` : "";
  return {
    kind: "forced",
    volume: volume.name,
    from,
    to,
    happens: `${here} becomes the primary of ${volume.name} with the data it holds, without ${from}.`,
    freezes: `${from} must be stopped or fenced first, or both would write (split brain); its clients lose the volume.`,
    discards: `${outdated}Every write ${from} acknowledged after ${since} UTC and ${here} never received is discarded when ${from} rejoins (it resyncs from ${here}).`,
    command: `${command} --force`,
  };
}
