// Online verify of one volume (DESIGN.md §3): the primary compares its replica with the peer's by
// CRC32C per extent while IO continues (each extent under a range lock, so no write interleaves;
// a verify stops when the peer becomes the primary, whose writes those locks do not hold back),
// reports the differing extents and, asked to repair, copies each from this side. This module also
// answers the peer's verify: a checksum of a local extent, and the repair writes.
import { checksum } from "../checksum.ts";
import type { IoError, VerifyResult, VerifyStatus } from "../types.ts";
import { type Message, MessageType, type ResyncDataMessage, type ResyncRequestMessage, WireStatus } from "../wire.ts";
import { replicaVerifyMismatchesReportedMax } from "../../constants.ts";
import type { Parts } from "./context.ts";
import type { PendingIo, PendingRequest, VerifyExtent } from "./model.ts";
import type { VerifyRun } from "./state.ts";
import { errorToStatus } from "./write-path.ts";

type VerifyRequest = Extract<PendingRequest, { kind: "verify" | "repair" }>;

export class Verifier {
  run: VerifyRun | undefined;
  private rounds = 0;
  /**
   * Bytes verify may read now: its own budget, refilled every tick at the resync rate, so it
   * neither floods the disks nor starves while client IO runs (one extent is in flight at most).
   */
  private tokens = 0;

  constructor(private readonly v: Parts) {}

  /**
   * Why a comparison would prove nothing now, if it would not. The peer holds the write grant (a
   * switchover while this verify ran): its writes do not wait for this node's range locks, so an
   * extent read here may have changed there before the peer's checksum of it, and a repair from here
   * would carry older bytes. Or the pair is no longer in sync (the link dropped, or regions went
   * dirty, as after a failed flush, and a resync copies them): those differences are the resync's.
   * Checked before each extent and again when its answer arrives.
   */
  private stopReason(): string | undefined {
    const v = this.v;
    if (v.negotiation.peerHello?.mayWrite === true) return "the peer became the volume's primary";
    if (!v.negotiation.mirroring() || v.resync.round) return "the replicas are no longer in sync";
    return undefined;
  }

  /** The run has IO in flight (a flush, or an extent under comparison). */
  get busy(): boolean {
    return this.run !== undefined && this.run.stage.kind !== "idle";
  }

  start(request: number, repair: boolean): void {
    const v = this.v;
    const context = v.context;
    const fail = (message: string) => context.emit({ kind: "complete", request, error: "EINVAL", message });
    if (this.run) return fail("a verify is already running on this volume");
    if (!v.negotiation.mirroring() || v.resync.round) return fail("verify needs the peer connected and in sync (no resync running)");
    if (!context.mayWrite && v.negotiation.peerHello?.mayWrite) return fail("run verify on the volume's primary node");
    const extentsTotal = Math.ceil(context.sizeBytes / context.config.verifyExtentBytes);
    const run: VerifyRun = { request, repair, round: ++this.rounds, cursor: 0, stage: { kind: "flushing" }, extentsTotal, extentsDone: 0, mismatches: [], mismatchCount: 0, repaired: 0 };
    this.run = run;
    this.tokens = context.config.resyncRateBytesPerTick;
    // Repairs copy from here: make this side's data durable first (see the resync's source flush).
    this.v.writes.flushLocal({ kind: "verifyFlush", run });
  }

  flushed(run: VerifyRun, error: IoError | null): void {
    if (this.run !== run) return this.v.context.ignore("ignoreCompletionOfAbortedWork", "verify flush finished after the verify stopped");
    run.stage = { kind: "idle" };
    if (error) return this.abort("flushing the local replica failed");
    this.pump();
  }

  private result(run: VerifyRun, complete: boolean): VerifyResult {
    return { extentsCompared: run.extentsDone, mismatches: run.mismatches, mismatchCount: run.mismatchCount, repaired: run.repaired, complete };
  }

  abort(reason: string): void {
    const run = this.run;
    if (!run) return;
    this.run = undefined;
    this.v.context.emit({ kind: "complete", request: run.request, error: "EIO", message: `verify stopped: ${reason}`, result: this.result(run, false) });
  }

  tick(): void {
    if (!this.run) return;
    const config = this.v.context.config;
    this.tokens = Math.min(this.tokens + config.resyncRateBytesPerTick, Math.max(config.resyncRateBytesPerTick, config.verifyExtentBytes) * 2);
    if (!this.busy) this.pump();
  }

  pump(): void {
    const run = this.run;
    if (!run || run.stage.kind !== "idle") return;
    const v = this.v;
    const context = v.context;
    if (run.cursor >= context.sizeBytes) {
      this.run = undefined;
      context.emit({ kind: "complete", request: run.request, error: null, result: this.result(run, true) });
      return;
    }
    const stop = this.stopReason();
    if (stop) return this.abort(stop);
    if (this.tokens <= 0) return; // over budget: the next tick refills
    const offset = run.cursor;
    const length = Math.min(context.config.verifyExtentBytes, context.sizeBytes - offset);
    if (context.ranges.conflicts(offset, offset + length)) return;
    this.tokens -= length;
    run.stage = { kind: "comparing" };
    const extent: VerifyExtent = { offset, length, rangeId: context.ranges.hold(offset, offset + length, "verify"), data: new Uint8Array(length), localCrc: 0 };
    context.issue({ kind: "storageRead", volumeId: context.volumeId, io: 0, offset, target: extent.data }, { kind: "verifyRead", run, extent });
  }

  private finishExtent(run: VerifyRun, extent: VerifyExtent, advance: boolean): void {
    const v = this.v;
    v.context.ranges.release(extent.rangeId);
    run.stage = { kind: "idle" };
    if (advance) {
      run.cursor += extent.length;
      run.extentsDone++;
    }
    if (this.run === run) this.pump();
    v.writes.pump();
    v.lifecycle.tryFinish();
  }

  readDone(pending: Extract<PendingIo, { kind: "verifyRead" }>, error: IoError | null): void {
    const { run, extent } = pending;
    const context = this.v.context;
    if (this.run !== run) return this.finishExtent(run, extent, false);
    if (error) {
      context.report({ kind: "ioError", volumeId: context.volumeId, what: `verify read at ${extent.offset}`, error });
      return this.finishExtent(run, extent, true);
    }
    extent.localCrc = checksum(extent.data);
    const request: VerifyRequest = { kind: "verify", requestId: context.requestId(), run, extent };
    context.expect(request);
    context.send(this.requestMessage(request));
  }

  requestMessage(request: VerifyRequest): Message {
    const volumeId = this.v.context.volumeId;
    const { requestId, run, extent } = request;
    if (request.kind === "verify") return { type: MessageType.VerifyRequest, volumeId, requestId, round: run.round, offset: extent.offset, length: extent.length };
    return { type: MessageType.RepairData, volumeId, requestId, round: run.round, offset: extent.offset, length: extent.length, zero: false, status: WireStatus.Ok, data: extent.data };
  }

  answer(request: VerifyRequest, message: Message): void {
    const context = this.v.context;
    const peer = this.v.peer;
    const { run, extent } = request;
    if (request.kind === "verify") {
      if (message.type !== MessageType.VerifyReply) return peer.protocolError("expected VerifyReply");
      const stop = this.stopReason();
      if (stop) {
        // The comparison proves nothing now (see stopReason): no verdict on this extent.
        this.abort(stop);
        return this.finishExtent(run, extent, false);
      }
      if (message.status !== WireStatus.Ok) return this.finishExtent(run, extent, true);
      if (message.crc === extent.localCrc) return this.finishExtent(run, extent, true);
      run.mismatchCount++;
      if (run.mismatches.length < replicaVerifyMismatchesReportedMax) run.mismatches.push({ offset: extent.offset, length: extent.length });
      if (!run.repair) {
        context.report({ kind: "verifyMismatch", volumeId: context.volumeId, offset: extent.offset, length: extent.length, repaired: false });
        return this.finishExtent(run, extent, true);
      }
      // Repair from this side (the primary, the up-to-date one) while the range is still held.
      const repair: VerifyRequest = { kind: "repair", requestId: context.requestId(), run, extent };
      context.expect(repair);
      context.send(this.requestMessage(repair));
      return;
    }
    if (message.type !== MessageType.RepairAck) return peer.protocolError("expected RepairAck");
    const ok = message.status === WireStatus.Ok;
    if (ok) run.repaired++;
    context.report({ kind: "verifyMismatch", volumeId: context.volumeId, offset: extent.offset, length: extent.length, repaired: ok });
    this.finishExtent(run, extent, true);
  }

  lost(request: VerifyRequest): void {
    this.finishExtent(request.run, request.extent, false);
  }

  // ---------------------------------------------------------------- answering the peer's verify

  onVerifyRequest(message: ResyncRequestMessage): void {
    const context = this.v.context;
    if (message.offset + message.length > context.sizeBytes || message.length > context.config.resyncChunkBytesMax) {
      context.send({ type: MessageType.VerifyReply, volumeId: context.volumeId, requestId: message.requestId, round: message.round, offset: message.offset, status: WireStatus.Refused, crc: 0 });
      return;
    }
    const data = new Uint8Array(message.length);
    context.issue(
      { kind: "storageRead", volumeId: context.volumeId, io: 0, offset: message.offset, target: data },
      { kind: "verifyAnswerRead", requestId: message.requestId, round: message.round, offset: message.offset, linkEpoch: this.v.negotiation.linkEpoch, data },
    );
  }

  answerReadDone(pending: Extract<PendingIo, { kind: "verifyAnswerRead" }>, error: IoError | null): void {
    const context = this.v.context;
    if (pending.linkEpoch !== this.v.negotiation.linkEpoch) return context.ignore("ignoreAnswerOnOldLink", `verify read at ${pending.offset} finished after its link was lost`);
    context.send({ type: MessageType.VerifyReply, volumeId: context.volumeId, requestId: pending.requestId, round: pending.round, offset: pending.offset, status: errorToStatus(error), crc: error ? 0 : checksum(pending.data) });
  }

  onRepairData(message: ResyncDataMessage): void {
    const context = this.v.context;
    if (context.mayWrite || message.offset + message.length > context.sizeBytes || message.status !== WireStatus.Ok || message.zero) {
      context.send({ type: MessageType.RepairAck, volumeId: context.volumeId, requestId: message.requestId, status: WireStatus.Refused });
      return;
    }
    // Durable before it is acknowledged: nothing else (no bitmap bit, no transfer log that survives
    // a power loss of both nodes) would remember that this region was repaired.
    context.issue({ kind: "storageWrite", volumeId: context.volumeId, io: 0, offset: message.offset, data: message.data, fua: true }, { kind: "repairWrite", requestId: message.requestId, linkEpoch: this.v.negotiation.linkEpoch });
  }

  repairWritten(pending: Extract<PendingIo, { kind: "repairWrite" }>, error: IoError | null): void {
    const context = this.v.context;
    if (pending.linkEpoch !== this.v.negotiation.linkEpoch) return context.ignore("ignoreAnswerOnOldLink", "repair write finished after its link was lost");
    context.send({ type: MessageType.RepairAck, volumeId: context.volumeId, requestId: pending.requestId, status: errorToStatus(error) });
  }

  status(): VerifyStatus | undefined {
    const run = this.run;
    return run ? { extentsTotal: run.extentsTotal, extentsDone: run.extentsDone, mismatches: run.mismatchCount, repaired: run.repaired } : undefined;
  }
}
