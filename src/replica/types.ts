// The vocabulary between the replica cores and their driver: events in, actions out, reports for
// the operator, and the status snapshot. The cores never perform IO; every effect is one of these
// actions, executed by the driver (src/replica/driver.ts) in the order given. See
// docs/replication.md for the contract of each.
import type { Payload } from "../common/bytes.ts";
import type { BlockErrorCode } from "../common/errors.ts";
import type { MetadataWrite } from "./metadata-format.ts";

/** The write-authority's answer for one volume (who may write is decided outside the core). */
export type Grant =
  /** This node may accept writes for the volume in `epoch`. */
  | { kind: "write"; epoch: number }
  /** Reads only; writes fail with EPERM (a secondary). */
  | { kind: "read"; reason: string }
  /** All IO waits, neither failing nor completing (quorum lost; a later issue). */
  | { kind: "frozen"; reason: string };

export type IoError = BlockErrorCode;

/** The other end of a connection as the transport sees it. */
export interface RemoteAddress {
  host: string;
  port: number;
}

export type CoreEvent =
  | { kind: "tick" }
  /** `remote`: where the connection comes from (the transport's address; per-source limits key on `host`). */
  | { kind: "connected"; connection: number; dialled: boolean; remote: RemoteAddress }
  | { kind: "dialFailed"; reason: string }
  | { kind: "data"; connection: number; bytes: Uint8Array }
  | { kind: "closed"; connection: number; reason: string }
  | { kind: "clientRead"; volumeId: number; request: number; offset: number; target: Uint8Array; localError?: IoError }
  | { kind: "clientWrite"; volumeId: number; request: number; offset: number; data: Payload; fua: boolean; stable?: boolean }
  | { kind: "clientFlush"; volumeId: number; request: number }
  | { kind: "clientTrim"; volumeId: number; request: number; offset: number; length: number; fua: boolean }
  | { kind: "clientZero"; volumeId: number; request: number; offset: number; length: number; fua: boolean; noHole: boolean }
  | { kind: "storageDone"; volumeId: number; io: number; error: IoError | null }
  | { kind: "metadataDone"; volumeId: number; io: number; error: IoError | null }
  | { kind: "grant"; volumeId: number; grant: Grant }
  | { kind: "verify"; volumeId: number; request: number; repair: boolean }
  | { kind: "resolveSplitBrain"; volumeId: number; request: number; keep: "local" | "peer" }
  | { kind: "closeVolume"; volumeId: number; request: number }
  /** Send a control-plane request to the peer's daemon; completes with its reply as `result`. */
  | { kind: "peerRequest"; request: number; payload: Uint8Array }
  /** The daemon answered a `peerCall`. */
  | { kind: "peerCallReply"; call: number; ok: boolean; payload: Uint8Array }
  /** Send the quorum core's message to the peer on the authenticated link (dropped when the link is down). */
  | { kind: "quorumSend"; payload: Uint8Array }
  /** Close the replication connection (the quorum counts the peer as gone). */
  | { kind: "dropLink"; reason: string }
  | { kind: "shutdown" };

export type CoreAction =
  | { kind: "send"; connection: number; parts: Uint8Array[] }
  | { kind: "close"; connection: number; reason: string }
  | { kind: "dial" }
  | { kind: "storageRead"; volumeId: number; io: number; offset: number; target: Uint8Array }
  | { kind: "storageWrite"; volumeId: number; io: number; offset: number; data: Payload; fua: boolean }
  | { kind: "storageFlush"; volumeId: number; io: number }
  | { kind: "storageTrim"; volumeId: number; io: number; offset: number; length: number; fua: boolean }
  | { kind: "storageZero"; volumeId: number; io: number; offset: number; length: number; fua: boolean; noHole: boolean }
  /**
   * Perform every write, then (when `flush`) make them durable; then, with `commit`, write the
   * commit record (the superblock) and make it durable too: the record never reaches the disk
   * before what it refers to. Report once with metadataDone.
   */
  | { kind: "metadataWrite"; volumeId: number; io: number; writes: MetadataWrite[]; commit?: MetadataWrite; flush: boolean }
  /** A client (or operator) request is finished. `mirrored`: the peer took part in a write's completion. */
  | { kind: "complete"; request: number; error: IoError | null; message?: string; mirrored?: boolean; epoch?: number; result?: unknown }
  | { kind: "report"; report: ReplicaReport }
  /** The peer's daemon asks ours something: answer with a `peerCallReply` event for `call`. */
  | { kind: "peerCall"; call: number; payload: Uint8Array }
  /** The peer's quorum core sent ours a message (on the authenticated link). */
  | { kind: "quorumReceived"; payload: Uint8Array };

export type SyncState =
  /** Both replicas hold the same data and writes are mirrored. */
  | "synced"
  /** The peer is away (or refuses this volume): writes go to this node only and mark the bitmap. */
  | "degraded"
  /** Connected; the two sides are agreeing what to do. */
  | "negotiating"
  /** Connected; a resync is moving dirty regions (see `resync`). */
  | "resyncing"
  /** Both replicas wrote alone: waiting for an operator to choose (`resolveSplitBrain`). */
  | "splitBrain"
  /** The replicas cannot be reconciled automatically (unrelated data, no good data, size mismatch). */
  | "refused";

/** Why two connected replicas do not replicate. */
export type Refusal =
  /** Both wrote alone since they last agreed: an operator chooses whose data survives. */
  | "splitBrain"
  /** The replicas share no generation: an operator chooses. */
  | "unrelated"
  /** Neither holds complete data (new, or an interrupted resync target). */
  | "noGoodData"
  /** Geometry differs (size, granule). */
  | "mismatch"
  /** Both hold the write grant: IO waits until one is demoted. */
  | "dualPrimary"
  /** The peer holds newer data, but this side serves IO: demote it, or resolve keeping its data. */
  | "primaryWouldBeTarget";

export interface ResyncStatus {
  direction: "source" | "target";
  leader: boolean;
  bitsTotal: number;
  bitsRemaining: number;
  bytesRemaining: number;
  bytesCopied: number;
  rateBytesPerSecond: number;
  /** Seconds to finish at the measured rate; undefined until a rate is known. */
  etaSeconds: number | undefined;
}

export interface VerifyStatus {
  extentsTotal: number;
  extentsDone: number;
  mismatches: number;
  repaired: number;
}

export interface VolumeStatus {
  volumeId: number;
  role: "primary" | "secondary" | "frozen";
  epoch: number | undefined;
  sync: SyncState;
  /** Why the replicas do not replicate, when `sync` is "refused" or "splitBrain". */
  refusal: Refusal | undefined;
  reason: string;
  dataState: "new" | "consistent" | "inconsistent";
  current: string;
  bitmapBase: string;
  dirtyBytes: number;
  activityLogExtents: number;
  resync: ResyncStatus | undefined;
  verify: VerifyStatus | undefined;
  writesInFlight: number;
  queued: number;
}

export interface VerifyResult {
  extentsCompared: number;
  mismatches: { offset: number; length: number }[];
  mismatchCount: number;
  repaired: number;
  complete: boolean;
}

export type ReplicaReport =
  /** `framesTagged`: false only when both nodes asked for untagged frames (benchmarks). */
  | { kind: "linkUp"; peer: string; version: number; framesTagged: boolean }
  | { kind: "linkDown"; reason: string }
  /** A connection was refused or its handshake failed (`code`: handshake.ts RefusalCode). Rate-limited. */
  | { kind: "connectionRefused"; code: string; reason: string; remote: string }
  /** An authenticated connection received a frame whose tag does not check; it was closed. Rate-limited. */
  | { kind: "frameRejected"; code: "missing-tag" | "unexpected-tag" | "bad-tag"; reason: string; remote: string }
  /** Refusals and rejections held back by the rate limit in the window that just ended. */
  | { kind: "reportsSuppressed"; count: number; byCode: Record<string, number>; windowMs: number }
  | { kind: "protocolError"; reason: string }
  | { kind: "volumeOpened"; volumeId: number; findings: string[]; recoveredExtents: number }
  | { kind: "decision"; volumeId: number; decision: string; sourceIsLocal: boolean | undefined; full: boolean; reason: string; localBits: number; peerBits: number; byOperator: boolean }
  | { kind: "splitBrain"; volumeId: number; reason: string }
  | { kind: "generationStarted"; volumeId: number; current: string; base: string }
  | { kind: "resyncStarted"; volumeId: number; sourceIsLocal: boolean; bits: number; full: boolean }
  /** In sync with the peer; `asTarget`: this replica just received a complete resync. */
  | { kind: "synced"; volumeId: number; current: string; asTarget: boolean }
  | { kind: "volumeUnknownOnPeer"; volumeId: number }
  | { kind: "ioError"; volumeId: number; what: string; error: IoError }
  | { kind: "verifyMismatch"; volumeId: number; offset: number; length: number; repaired: boolean }
  /** A stale message or completion was ignored by the named check (for the debug log). */
  | { kind: "ignored"; volumeId: number; check: string; reason: string }
  | { kind: "notice"; volumeId?: number; message: string };
