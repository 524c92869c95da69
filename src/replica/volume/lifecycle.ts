// The lifecycle of a volume on this node: open (recover after an unclean stop, persist "not clean"
// before any IO), serve, close (let the work in flight finish, make every completed write durable
// on both nodes, persist "clean"). The state is one tagged union (state.ts) changed only through
// `move`, which checks the table of allowed transitions.
import type { LoadedMetadata } from "../metadata-format.ts";
import type { IoError } from "../types.ts";
import type { Parts } from "./context.ts";
import { checkTransition, type Lifecycle, lifecycleTransitions } from "./state.ts";

export class VolumeLifecycle {
  state: Lifecycle = { kind: "opening", retry: false };
  /** "Not clean" is on disk: IO may flow (stays true through the close). */
  private opened = false;
  private findings: string[] = [];
  private recovered = 0;

  constructor(private readonly v: Parts) {}

  private move(next: Lifecycle): void {
    checkTransition("volume lifecycle", lifecycleTransitions, this.state.kind, next.kind);
    this.state = next;
  }

  /** The volume takes part in IO and negotiation (opened, and not yet past the start of its close). */
  get serving(): boolean {
    return this.opened && (this.state.kind === "open" || this.state.kind === "closing");
  }

  /** A close is under way or done: the peer's requests are no longer served, only its answers. */
  get leaving(): boolean {
    return this.state.kind !== "opening" && this.state.kind !== "open";
  }

  /** Closed: nothing more happens for this volume. */
  get closed(): boolean {
    return this.state.kind === "closed";
  }

  get isOpened(): boolean {
    return this.opened;
  }

  /** New client requests are refused (a close is under way or done). */
  get refusesRequests(): boolean {
    return this.leaving;
  }

  /** Recover after an unclean stop, then persist "not clean" before any IO. */
  open(loaded: LoadedMetadata): void {
    const context = this.v.context;
    let recovered = 0;
    if (!loaded.superblock.cleanShutdown && loaded.activityLog) {
      for (const extent of loaded.activityLog.extents) {
        const start = Math.floor((extent * loaded.activityLog.extentBytes) / context.granuleBytes);
        const end = Math.min(context.layout.bitCount, Math.ceil(((extent + 1) * loaded.activityLog.extentBytes) / context.granuleBytes));
        if (start < end) {
          context.bitmap.setRange(start, end);
          recovered++;
        }
      }
    }
    this.findings = loaded.findings;
    this.recovered = recovered;
    context.superblock.cleanShutdown = false;
    this.v.persistence.persist({ superblock: true, pages: true }, { kind: "open" });
  }

  /** The "not clean" record is persisted (or failed: the next tick tries again). */
  persisted(error: IoError | null): void {
    if (error) {
      if (this.state.kind === "opening" && !this.state.retry) this.v.context.report({ kind: "ioError", volumeId: this.v.context.volumeId, what: "marking the volume in use at open (retrying)", error });
      if (this.state.kind === "opening") this.move({ kind: "opening", retry: true });
      return;
    }
    this.opened = true;
    if (this.state.kind === "opening") this.move({ kind: "open" });
    this.v.context.report({ kind: "volumeOpened", volumeId: this.v.context.volumeId, findings: this.findings, recoveredExtents: this.recovered });
    this.v.writes.rewriteAfterRestart();
    this.v.negotiation.opened();
    this.v.writes.pump();
  }

  /** The next tick retries the open record. */
  get tickActsNext(): boolean {
    return this.state.kind === "opening" && this.state.retry;
  }

  tick(): void {
    if (this.state.kind === "opening" && this.state.retry && !this.v.persistence.busy) {
      this.move({ kind: "opening", retry: false });
      this.v.persistence.persist({ superblock: true, pages: true }, { kind: "open" });
    }
  }

  close(request: number): void {
    if (this.leaving) {
      this.v.context.emit({ kind: "complete", request, error: "ESHUTDOWN", message: "volume is already closing" });
      return;
    }
    this.move({ kind: "closing", request }); // from opening too: the open record finishes first
    this.v.writes.failQueuedClientOps("ESHUTDOWN", "volume is closing");
    // The peer stops sending for this volume now, and treats what it sent and we did not answer
    // as not reaching us; what it already sent is answered or ignored, never left hanging.
    this.v.negotiation.leave();
    this.tryFinish();
  }

  /** Move the close on once nothing is in flight. */
  tryFinish(): void {
    const state = this.state;
    if (state.kind !== "closing") return;
    const v = this.v;
    const context = v.context;
    if (v.writes.running.size > 0 || v.writes.queue.length > 0 || v.writes.rewritesPending || context.io.size > 0 || context.requests.size > 0 || v.persistence.busy || v.persistence.activityBusy) return;
    this.move({ kind: "flushingForClose", request: state.request, localFlushFailed: state.flushFailed === true });
    // Make every completed write durable here and on the peer before calling the close clean.
    this.v.writes.flushLocal({ kind: "closeFlush" });
  }

  /** The local flush of the close is done. */
  flushed(error: IoError | null): void {
    const state = this.state;
    if (state.kind !== "flushingForClose") return;
    const v = this.v;
    if (error) {
      const again = state.localFlushFailed; // the flush after the rewrites below: no second round
      state.localFlushFailed = true;
      v.context.report({ kind: "ioError", volumeId: v.context.volumeId, what: "flushing the volume at close (its activity log will be replayed at the next open)", error });
      if (v.writes.rewritesPending && !again) {
        // Regions the failed flush may have dropped with nothing else holding them still read back
        // here (Linux marks the pages clean, and they outlive a restart of the daemon) but would
        // never reach the disk: served or sent to a resync target later, they would vanish in a
        // power loss. Write them again and flush once more before the close is recorded (still
        // not clean).
        this.move({ kind: "closing", request: state.request, flushFailed: true });
        v.writes.pump();
        return;
      }
    }
    // The peer still answers a flush of what it acknowledged, even after our notice.
    if (v.negotiation.linkUp && v.writes.transferLog.size > 0) v.writes.barrier({ kind: "close" });
    else {
      v.writes.markTransferLogDirty();
      this.record();
    }
  }

  /** The close's barrier on the peer is answered (or lost): what it did not cover is marked dirty. */
  barrierDone(): void {
    this.record();
  }

  private record(): void {
    const state = this.state;
    if (state.kind !== "flushingForClose") return;
    const clean = !state.localFlushFailed;
    this.move({ kind: "recordingClose", request: state.request, clean });
    // The dirty bitmap first: "clean" promises it is complete on disk (no activity-log replay at
    // the next open), so it is written only once the pages are durable.
    this.v.persistence.persist({ superblock: false, pages: true }, { kind: "closePages" });
  }

  /** The bitmap is durable (or not): record the shutdown. */
  pagesRecorded(error: IoError | null): void {
    const state = this.state;
    if (state.kind !== "recordingClose") return;
    if (error || !state.clean) return this.recorded(error);
    this.v.context.superblock.cleanShutdown = true;
    this.v.persistence.persist({ superblock: true, pages: true }, { kind: "close" });
  }

  /** The shutdown is persisted (or not): the close is complete. */
  recorded(error: IoError | null): void {
    const state = this.state;
    if (state.kind !== "recordingClose") return;
    this.move({ kind: "closed" });
    const message = error ? "could not record the close" : state.clean ? undefined : "a flush failed: the volume was not closed clean";
    this.v.context.emit({ kind: "complete", request: state.request, error: error ?? (state.clean ? null : "EIO"), message });
  }
}
