// Small text renderings shared by commands (durations, a volume's replica summary).
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
