// What an export (NBD server, vhost-user-blk back-end) needs from the node, and nothing more: a way
// to open a volume by name for the duration of a client session, and a list of what can be opened.
// The volume manager implements ExportResolver; tests implement it over a MemoryLayer or FileLayer.
// An export holds an ExportHandle per client session and releases it when the session ends, so the
// node knows which volumes are in use (delete is refused while they are) and can revoke a handle
// (forced delete, shutdown), which must end that session.
import type { BlockLayer } from "../block/layer.ts";

export interface ExportHandle {
  readonly volume: string;
  /** Top of the volume's stack. Every request goes through it. */
  readonly layer: BlockLayer;
  /** Whether this node may write the volume now (a secondary replica is read-only). */
  readOnly(): boolean;
  /** End of the session: the export will not use `layer` again. Idempotent. */
  release(): void;
  /**
   * Register the session's teardown: the node calls it when the volume is deleted by force or the
   * node shuts down. The export must stop issuing IO and close the session, then call `release`.
   */
  onRevoke(callback: (reason: string) => void): void;
}

export interface ExportInfo {
  name: string;
  description: string;
  sizeBytes: number;
}

export interface ExportResolver {
  /** Open a session on a volume; undefined when no such volume is exported on this node. */
  open(name: string, client: string): ExportHandle | undefined;
  list(): ExportInfo[];
}

/** One client session, as status reports it. */
export interface ExportSessionInfo {
  id: string;
  kind: "nbd" | "vhost";
  volume: string;
  client: string;
  sinceMs: number;
  requestsInFlight: number;
  /** NBD: the session has stopped reading requests (replies the client does not read, the in-flight limit, memory). */
  inputPaused?: boolean;
  /** vhost-user: each virtqueue's state and the kicks it has handled. */
  queues?: VhostQueueInfo[];
}

/** One vhost-user virtqueue, as status reports it. */
export interface VhostQueueInfo {
  index: number;
  /** stopped: no ring (never started, or stopped by GET_VRING_BASE); draining: being stopped; disabled: SET_VRING_ENABLE 0. */
  state: "stopped" | "running" | "draining" | "disabled";
  /** Kick notifications read from the front-end's eventfd since the session began (each one looks at the ring). */
  kicks: number;
}
