// Small text renderings shared by commands (durations, a volume's replica summary).
import type { PendingVolume } from "../node/intents.ts";
import type { VolumeView } from "../node/volumes.ts";

export function formatDuration(ms: number): string {
  const seconds = Math.floor(ms / 1000);
  if (seconds < 60) return `${seconds}s`;
  const minutes = Math.floor(seconds / 60);
  if (minutes < 60) return `${minutes}m${String(seconds % 60).padStart(2, "0")}s`;
  const hours = Math.floor(minutes / 60);
  if (hours < 48) return `${hours}h${String(minutes % 60).padStart(2, "0")}m`;
  return `${Math.floor(hours / 24)}d${hours % 24}h`;
}

/** "synced", or each node's state when they differ ("a: degraded, b: outdated"). */
export function replicaSummary(volume: VolumeView): string {
  const states = volume.nodes.map((node) => node.state);
  const progress = volume.nodes[0]?.detail?.progress;
  const suffix = typeof progress === "string" ? ` ${progress}` : "";
  if (new Set(states).size <= 1) return (states[0] ?? "unknown") + suffix;
  return volume.nodes.map((node) => `${node.node}: ${node.state}`).join(", ") + suffix;
}

/** One line per unfinished create or delete, or one-sided leftover, with the next safe action. */
export function pendingLines(pending: PendingVolume[] | undefined, nowMs = Date.now()): string[] {
  const what: Record<PendingVolume["state"], string> = {
    "create-pending": "create pending on",
    "delete-pending": "delete pending on",
    "only-here": "no replica on the peer; only on",
    "only-on-peer": "leftover only on",
  };
  return (pending ?? []).map((entry) => {
    const since = entry.sinceMs === null ? "" : ` for ${formatDuration(Math.max(0, nowMs - entry.sinceMs))}`;
    return `! ${entry.volume} (id ${entry.id}): ${what[entry.state]} ${entry.node}${since}: ${entry.next}`;
  });
}
