// The replica cores' tunables in core units (ticks, bytes, counts), built once from the limits in
// src/constants.ts. Production runs the defaults; the simulator shrinks them (fewer ticks to a link
// timeout, tiny activity-log extents) so a whole run of faults fits a few thousand events. The
// relations between them are checked here for any configuration, not only for the defaults.
// `bugs` are debug switches that make the core deliberately wrong: only the simulator's
// "can it catch a bug" tests set them, to prove the checkers fail when the protocol is broken.
import { assert } from "../common/assert.ts";
import {
  replicaActivityLogExtentBytes,
  replicaAdmittedConnectionsMax,
  replicaActivityLogExtentsMax,
  replicaBarrierIntervalMs,
  replicaBitmapWritebackIntervalMs,
  replicaFrameBytesMax,
  replicaFramePiecesBytesMin,
  replicaHandshakeTimeoutMs,
  replicaKeepaliveIntervalMs,
  replicaLinkTimeoutMs,
  replicaPendingConnectionsMax,
  replicaPendingConnectionsPerSourceMax,
  replicaQueuedOperationsPerVolumeMax,
  replicaRateWindowMs,
  replicaRecentDialerNoncesMax,
  replicaReconnectDelayMsMax,
  replicaReconnectDelayMsMin,
  replicaRefusalReportsPerCodeMax,
  replicaRefusalReportsPerWindowMax,
  replicaRefusalReportWindowMs,
  replicaResyncCheckpointChunks,
  replicaResyncChunkBytesMax,
  replicaResyncRateBytesPerSecondDefault,
  replicaResyncRetryDelayMs,
  replicaResyncWindowChunks,
  replicaTickMs,
  replicaTransferLogGranulesMax,
  replicaVerifyExtentBytes,
  replicaWritesInFlightPerVolumeMax,
} from "../constants.ts";

/** Known-wrong behaviours, switched on only by the simulator's bug-detection tests. */
export interface ReplicaBugs {
  /** Complete a client write when the local write is done, without waiting for the peer's ack. */
  ackBeforePeer?: boolean;
  /** On link loss, forget writes the peer acknowledged but has not yet made durable. */
  forgetTransferLog?: boolean;
  /** Resync only the source's dirty regions instead of the union of both sides'. */
  skipDirtyUnion?: boolean;
  /** The resync source does not make its data durable before the target copies it. */
  skipSourceFlush?: boolean;
  /** The resync target is not marked inconsistent while it holds half-copied data. */
  targetStaysConsistent?: boolean;
  /** When the peer stops answering, a barrier in flight forgets the writes it covered. */
  barrierDropsCovered?: boolean;
  /** A client write's buffer is used as it is, not copied at admission. */
  shareClientBuffer?: boolean;
}

export interface ReplicaConfig {
  tickMs: number;
  keepaliveIntervalTicks: number;
  linkTimeoutTicks: number;
  handshakeTimeoutTicks: number;
  reconnectDelayTicksMin: number;
  reconnectDelayTicksMax: number;
  /** Unidentified connections (no signed Hello yet) in their handshake, all sources / one source. */
  pendingConnectionsMax: number;
  pendingConnectionsPerSourceMax: number;
  /** Handshakes past a signed Hello, waiting for the dialer's proof. */
  admittedConnectionsMax: number;
  recentDialerNoncesMax: number;
  refusalReportsPerWindowMax: number;
  refusalReportsPerCodeMax: number;
  refusalReportWindowTicks: number;
  frameBytesMax: number;
  /** Received frames from this size on that span receive chunks keep their data in pieces (wire.ts Framer). */
  framePiecesBytesMin: number;
  writesInFlightMax: number;
  queuedOperationsMax: number;
  activityLogExtentBytes: number;
  activityLogExtentsMax: number;
  resyncChunkBytesMax: number;
  resyncWindowChunks: number;
  resyncRateBytesPerTick: number;
  resyncCheckpointChunks: number;
  resyncRetryDelayTicks: number;
  verifyExtentBytes: number;
  transferLogGranulesMax: number;
  barrierIntervalTicks: number;
  bitmapWritebackIntervalTicks: number;
  rateWindowTicks: number;
  /**
   * Link loss freezes a primary's IO until its WriteAuthority grants again (the witness quorum,
   * DESIGN.md §5 rule 2); false: the primary goes on alone, DEGRADED (the static authority).
   */
  freezeOnLinkLoss: boolean;
  bugs: ReplicaBugs;
}

function ticks(ms: number, tickMs: number): number {
  return Math.max(1, Math.ceil(ms / tickMs));
}

export function defaultReplicaConfig(overrides: Partial<ReplicaConfig> = {}): ReplicaConfig {
  const tickMs = overrides.tickMs ?? replicaTickMs;
  const config: ReplicaConfig = {
    tickMs,
    keepaliveIntervalTicks: ticks(replicaKeepaliveIntervalMs, tickMs),
    linkTimeoutTicks: ticks(replicaLinkTimeoutMs, tickMs),
    handshakeTimeoutTicks: ticks(replicaHandshakeTimeoutMs, tickMs),
    reconnectDelayTicksMin: ticks(replicaReconnectDelayMsMin, tickMs),
    reconnectDelayTicksMax: ticks(replicaReconnectDelayMsMax, tickMs),
    pendingConnectionsMax: replicaPendingConnectionsMax,
    pendingConnectionsPerSourceMax: replicaPendingConnectionsPerSourceMax,
    admittedConnectionsMax: replicaAdmittedConnectionsMax,
    recentDialerNoncesMax: replicaRecentDialerNoncesMax,
    refusalReportsPerWindowMax: replicaRefusalReportsPerWindowMax,
    refusalReportsPerCodeMax: replicaRefusalReportsPerCodeMax,
    refusalReportWindowTicks: ticks(replicaRefusalReportWindowMs, tickMs),
    frameBytesMax: replicaFrameBytesMax,
    framePiecesBytesMin: replicaFramePiecesBytesMin,
    writesInFlightMax: replicaWritesInFlightPerVolumeMax,
    queuedOperationsMax: replicaQueuedOperationsPerVolumeMax,
    activityLogExtentBytes: replicaActivityLogExtentBytes,
    activityLogExtentsMax: replicaActivityLogExtentsMax,
    resyncChunkBytesMax: replicaResyncChunkBytesMax,
    resyncWindowChunks: replicaResyncWindowChunks,
    resyncRateBytesPerTick: Math.ceil((replicaResyncRateBytesPerSecondDefault * tickMs) / 1000),
    resyncCheckpointChunks: replicaResyncCheckpointChunks,
    resyncRetryDelayTicks: ticks(replicaResyncRetryDelayMs, tickMs),
    verifyExtentBytes: replicaVerifyExtentBytes,
    transferLogGranulesMax: replicaTransferLogGranulesMax,
    barrierIntervalTicks: ticks(replicaBarrierIntervalMs, tickMs),
    bitmapWritebackIntervalTicks: ticks(replicaBitmapWritebackIntervalMs, tickMs),
    rateWindowTicks: ticks(replicaRateWindowMs, tickMs),
    freezeOnLinkLoss: false,
    bugs: {},
    ...overrides,
  };
  validateReplicaConfig(config);
  return config;
}

/** Relations every configuration must keep; a violation is a programming or packaging error. */
export function validateReplicaConfig(config: ReplicaConfig): void {
  const positive = (value: number, name: string) => assert(Number.isSafeInteger(value) && value > 0, `${name} must be a positive integer`);
  for (const [name, value] of Object.entries(config)) if (typeof value === "number") positive(value, name);
  assert(config.keepaliveIntervalTicks * 2 <= config.linkTimeoutTicks, "two keepalives fit in the link timeout");
  assert(config.reconnectDelayTicksMin <= config.reconnectDelayTicksMax, "reconnect delays ordered");
  assert(config.pendingConnectionsPerSourceMax <= config.pendingConnectionsMax, "per-source pending bound within the total");
  assert(config.refusalReportsPerCodeMax <= config.refusalReportsPerWindowMax, "per-code refusal reports within the total");
  assert(config.activityLogExtentsMax >= 2, "the activity log holds at least two extents");
  assert(config.activityLogExtentsMax * 4 + 64 <= 4096, "an activity-log transaction fits one metadata slot");
  assert(config.resyncChunkBytesMax + 4096 <= config.frameBytesMax, "a resync chunk fits a frame");
  assert(config.verifyExtentBytes <= config.resyncChunkBytesMax, "a verify extent is repaired in one chunk");
  assert(config.resyncWindowChunks >= 1 && config.resyncCheckpointChunks >= 1, "resync window and checkpoint are at least one chunk");
}
