// The status report (`GET /v1/status`, `tandem status --json`): its types, its schema version, and
// the pure assessment that turns the node's raw views into what an operator or a monitoring script
// needs without parsing: the node's health (healthy / degraded / no quorum, with reasons) and, per
// volume, whether this node can write it and, when not, why and the next safe step. The contract is
// docs/status.schema.json; fields are only ever added (a rename or removal bumps schemaVersion).
// `quorum` is a tagged record so the witness quorum slots its states (epoch, witness, lease) in
// beside "not-configured" without moving anything else.
import type { ExportSessionInfo } from "../export/types.ts";
import type { PendingVolume } from "../intents.ts";
import type { VolumeView } from "../volumes.ts";
import type { WitnessStatus } from "../witness.ts";

/** Bumped only when a field changes meaning or disappears; added fields keep the version. */
export const statusSchemaVersion = 1;

export type HealthState = "healthy" | "degraded" | "no-quorum";

export interface Health {
  state: HealthState;
  /** One sentence per thing that is not right; empty when healthy. */
  reasons: string[];
}

export interface LinkReport {
  state: "up" | "down" | "connecting";
  connected: boolean;
  peer: string;
  /** Wall-clock time (ms since the epoch) the link last went up or down. */
  sinceMs: number;
  /** Round trip of the last control request over the link (ms); null when none was measured yet. */
  rttMs: number | null;
  lastError?: string;
  [more: string]: unknown;
}

/** The lease's view when the quorum governs writes (a node whose config names a witness and a peer). */
export interface QuorumLeaseReport {
  /** shared: connected to the peer; solo: owns the lease alone; frozen: deciding or outdated; no-quorum: link and witness both lost. */
  state: "shared" | "solo" | "frozen" | "no-quorum";
  /** The epoch of the newest decided record. */
  epoch: number;
  /** The core's phase (starting, connected, deciding, owner, outdated, selfFenced). */
  phase: string;
  reason: string;
  version: number;
  /** The newest decided record, in words ("SOLO(a) epoch 3, data on a"). */
  record: string;
  /** The nodes that hold the latest data. */
  dataHolders: string[];
  /** This node lost an epoch and resyncs before it may write again. */
  outdated: boolean;
  /** What an operator can do when this node waits (cold start without the data holder, outdated). */
  nextSafeAction: string | null;
  /** How long this node may still serve alone before it must fence itself (owner only). */
  leaseRemainingMs: number | null;
  peerHeartbeat: { value: string | null; stillForMs: number; fencedEpoch: string };
  witness: WitnessStatus & { lastWriteAgeMs: number | null; lastHeartbeatAgeMs: number | null; writeLatency: WitnessStatus["latency"] };
  /** The configured timings (ms, and ρ) and the current lease margin. */
  timing: Record<string, number>;
}

/**
 * The witness quorum's view: "not-configured" on a node without a witness (or without a peer); a
 * node whose config names only a witness reports what it sees of it in `witness`.
 */
export type QuorumReport = { state: "not-configured"; witness?: WitnessStatus } | QuorumLeaseReport;

export interface VolumeAccess {
  /** Whether this node accepts writes to the volume now. */
  write: boolean;
  /** Why not (or what limits it: unmirrored writes); null when all is well. */
  reason: string | null;
  /** The next safe step for an operator; null when there is nothing to do. */
  next: string | null;
}

export interface VolumeReport extends VolumeView {
  access: VolumeAccess;
}

export interface NodeReport {
  name: string;
  version: string;
  pid: number;
  uptimeMs: number;
  dataDir: string;
  config: string;
  controlSocket: string;
  nbdSocket: string;
  nbdTcp: string | null;
  peer: { name: string; address: string } | null;
  link: LinkReport | null;
}

export interface ExportReport {
  kind: string;
  socket?: string;
  path?: string;
  volume?: string;
  tcp?: string | null;
  queues?: number;
  [more: string]: unknown;
}

export type SessionReport = ExportSessionInfo;

export interface StatusReport {
  schemaVersion: typeof statusSchemaVersion;
  /** When the daemon made this report (ms since the epoch). */
  timeMs: number;
  health: Health;
  node: NodeReport;
  quorum: QuorumReport;
  volumes: VolumeReport[];
  /** Mirrored creates and deletes not finished on both nodes, and one-sided leftovers (intents.ts). */
  pending: PendingVolume[];
  broken: { name: string; backing: string }[];
  exports: ExportReport[];
  sessions: SessionReport[];
}

export interface AssessInput {
  nodeName: string;
  /** The configured peer's name; null on a standalone node. */
  peerName: string | null;
  link: LinkReport | null;
  volumes: VolumeView[];
  pending: PendingVolume[];
  broken: { name: string; backing: string }[];
  /** The quorum's summary when it governs writes. */
  quorum?: { state: QuorumLeaseReport["state"]; reason: string; nextSafeAction: string | null; witnessReachable: boolean; witnessFailure: string | null };
}

function detailReason(view: VolumeView): string | undefined {
  const reason = view.nodes[0]?.detail?.reason;
  return typeof reason === "string" && reason !== "" ? reason : undefined;
}

/** Whether this node can write `view` now, why not, and what to do next. */
export function volumeAccess(view: VolumeView, input: AssessInput): VolumeAccess {
  const local = view.nodes[0];
  const peer = input.peerName;
  const linkUp = input.link?.connected === true;
  const progress = typeof local?.detail?.progress === "string" ? ` (${local.detail.progress})` : "";
  if (view.gate === "closed") return { write: false, reason: "the volume is closing (the node is stopping or deleting it)", next: "tandem status once the node is back" };
  if (view.gate === "frozen") return { write: false, reason: "IO is frozen on this node (clients wait, they get no errors)", next: "tandem events (IO resumes when the node may write again)" };
  const hold = view.quorumHold;
  if (hold) {
    const clients = hold.mode === "suspend" ? "clients wait, they get no errors" : "clients get EIO (onFreeze error)";
    return { write: false, reason: `frozen by the quorum: ${hold.reason} (${clients})`, next: input.quorum?.nextSafeAction ?? "tandem status (IO resumes once this node may write again)" };
  }
  if (local?.state === "split-brain") {
    const other = peer ?? "the peer";
    return {
      write: view.writable,
      reason: `split brain: ${input.nodeName} and ${other} both wrote while apart`,
      next: `tandem volume resolve ${view.name} --keep ${view.writable ? input.nodeName : other} (the other side's writes since the split are discarded)`,
    };
  }
  if (local?.state === "refused") return { write: view.writable, reason: `the pair refused to reconcile: ${detailReason(view) ?? "see the events"}`, next: "tandem events" };
  if (!view.writable) {
    if (local?.role === "secondary") {
      const why = local.state === "synced" ? "synced" : local.state === "resyncing" ? `resyncing from ${view.primary}${progress}` : local.state;
      return { write: false, reason: `secondary replica (${why}); ${view.primary} is the primary`, next: `serve it from ${view.primary}` };
    }
    return { write: false, reason: `the replication core holds writes: ${detailReason(view) ?? local?.state ?? "unknown"}`, next: "tandem events" };
  }
  if (peer !== null && !linkUp) return { write: true, reason: `peer ${peer} unreachable: writes are not mirrored (kept in the dirty bitmap)`, next: `restore the link to ${peer}; it resyncs on its own` };
  if (local?.state === "resyncing") return { write: true, reason: `resyncing to ${peer ?? "the peer"}${progress}: the peer's replica is not yet a full copy`, next: null };
  if (local?.state === "degraded") return { write: true, reason: `${peer ?? "the peer"} does not hold this volume's writes: they are not mirrored`, next: "tandem events" };
  return { write: true, reason: null, next: null };
}

/** The node's health and each volume's access, from plain views (no IO). */
export function assessStatus(input: AssessInput): { health: Health; volumes: VolumeReport[] } {
  const reasons: string[] = [];
  let noQuorum = false;
  if (input.peerName !== null && input.link?.connected !== true) reasons.push(`replication link to ${input.peerName} is ${input.link?.state ?? "down"}`);
  const volumes = input.volumes.map((view) => {
    const access = volumeAccess(view, input);
    const local = view.nodes[0];
    if (view.primary === input.nodeName && !access.write) {
      noQuorum = true;
      reasons.push(`${view.name}: ${input.nodeName} is its primary but cannot write (${access.reason})`);
    } else if (local && local.state !== "synced" && local.state !== "standalone") {
      reasons.push(`${view.name}: ${local.state}`);
    }
    return { ...view, access };
  });
  const quorum = input.quorum;
  if (quorum) {
    if (quorum.state === "no-quorum") {
      noQuorum = true;
      reasons.push(`NO QUORUM: ${quorum.reason}`);
    } else if (quorum.state === "frozen") {
      if (volumes.length > 0) noQuorum = true;
      reasons.push(`quorum frozen: ${quorum.reason}`);
    } else if (quorum.state === "solo") reasons.push(`writing alone: ${quorum.reason}`);
    if (!quorum.witnessReachable && quorum.state !== "no-quorum") reasons.push(`witness lost: ${quorum.witnessFailure ?? "unreachable"}`);
  }
  for (const entry of input.pending) reasons.push(`${entry.volume}: ${entry.state} on ${entry.node}: ${entry.next}`);
  for (const broken of input.broken) reasons.push(`${broken.name}: could not be opened (backing ${broken.backing})`);
  const state: HealthState = noQuorum ? "no-quorum" : reasons.length > 0 ? "degraded" : "healthy";
  return { health: { state, reasons }, volumes };
}
