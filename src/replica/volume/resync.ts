// The resync engine of one volume (DESIGN.md §4). After a decision both sides send their dirty
// bitmaps and the union becomes the work list; the target is persisted "inconsistent" and the
// source makes its data durable; then the leader — the primary if there is one, else the source —
// copies dirty chunks under range locks (pushing them as the source, pulling them as the target),
// checkpoints with a flush of the target and clears the copied bits on both sides, so a resync
// resumes where it stopped; finally the source records the end and the target adopts the source's
// generation. One round is one ResyncRound (state.ts) whose stage changes only through the table.
import { finishAsSource, finishAsTarget, formatGeneration, noGeneration, startAsTarget } from "../generations.ts";
import type { IoError, ResyncStatus } from "../types.ts";
import { type Message, MessageType, type ResyncDataMessage, WireStatus } from "../wire.ts";
import { replicaBitmapRunsPerMessageMax, replicaGenerationHistoryLength } from "../../constants.ts";
import type { Parts } from "./context.ts";
import type { Checkpoint, Chunk, PeerOp, PendingIo, PendingRequest, ResyncEndThen } from "./model.ts";
import { moveResync, newPass, passOf, type ResyncRound } from "./state.ts";
import { errorToStatus } from "./write-path.ts";
import { DataState } from "../model.ts";

export function isAllZero(bytes: Uint8Array): boolean {
  const words = bytes.byteOffset % 4 === 0 && bytes.length % 4 === 0 ? new Uint32Array(bytes.buffer, bytes.byteOffset, bytes.length / 4) : undefined;
  if (words) {
    for (let index = 0; index < words.length; index++) if (words[index] !== 0) return false;
    return true;
  }
  for (let index = 0; index < bytes.length; index++) if (bytes[index] !== 0) return false;
  return true;
}

type ResyncRequest = Extract<PendingRequest, { kind: "resyncPush" | "resyncPull" | "resyncFlush" }>;

export class ResyncEngine {
  round: ResyncRound | undefined;
  /** Bytes the leader may still copy now (refilled each tick up to the configured rate). */
  tokens = 0;

  constructor(private readonly v: Parts) {}

  /** Chunks of the current round in flight (their ranges are held). */
  chunksInFlight(): number {
    return this.round ? (passOf(this.round)?.chunks.size ?? 0) : 0;
  }

  /** A region was marked dirty while a round runs: a checkpoint must not clear it. */
  remarked(first: number, last: number): void {
    this.round?.remarked.push({ start: first, length: last - first });
  }

  begin(roundNumber: number, localIsSource: boolean, localLeads: boolean, full: boolean): void {
    const context = this.v.context;
    const round: ResyncRound = {
      round: roundNumber,
      localIsSource,
      localLeads,
      full,
      peerReady: false,
      remarked: [],
      bitsTotal: 0,
      bitsDone: 0,
      bytesCopied: 0,
      samples: [],
      stage: { kind: "exchange", peerDone: false, peerRuns: [] },
    };
    this.round = round;
    const volumeId = context.volumeId;
    if (!full) {
      const runs = context.bitmap.runs();
      for (let index = 0; index < runs.length; index += replicaBitmapRunsPerMessageMax) {
        context.send({ type: MessageType.BitmapRuns, volumeId, requestId: 0, round: roundNumber, runs: runs.slice(index, index + replicaBitmapRunsPerMessageMax) });
      }
    }
    context.send({ type: MessageType.BitmapDone, volumeId, requestId: 0, round: roundNumber });
    context.report({ kind: "resyncStarted", volumeId, sourceIsLocal: localIsSource, bits: context.bitmap.setCount, full });
    this.v.writes.resyncRoundStarted();
    this.exchangeProgress();
  }

  private exchangeProgress(): void {
    const round = this.round;
    if (!round || round.stage.kind !== "exchange" || !round.stage.peerDone) return;
    const context = this.v.context;
    const bitmap = context.bitmap;
    if (round.full) bitmap.setAll();
    else if (context.config.bugs.skipDirtyUnion) {
      // Deliberately wrong (simulator bug switch): only the source's bitmap is copied.
      if (!round.localIsSource) {
        bitmap.clearRange(0, bitmap.bitCount);
        bitmap.setRuns(round.stage.peerRuns);
      }
    } else bitmap.setRuns(round.stage.peerRuns);
    const sourceFlush = round.localIsSource && !context.config.bugs.skipSourceFlush;
    moveResync(round, { kind: "persisting", pending: sourceFlush ? 2 : 1, failure: null });
    round.bitsTotal = bitmap.setCount;
    if (!round.localIsSource) {
      if (!context.config.bugs.targetStaysConsistent) context.superblock.dataState = DataState.Inconsistent;
      const sourceCurrent = this.v.negotiation.peerHello?.generations.current ?? noGeneration;
      context.superblock.generations = startAsTarget(context.superblock.generations, sourceCurrent, replicaGenerationHistoryLength);
    }
    context.superblock.resync = { active: true, target: !round.localIsSource, bitsTotal: round.bitsTotal, bitsDone: 0 };
    // The source's copy of what it is about to send may still sit in its volatile cache (writes it
    // received as a secondary, an earlier resync): were it to crash after the target made that copy
    // durable, the source would lose it and nothing would mark the region dirty. So the source
    // makes its data durable first; what it writes afterwards is covered by the activity log or the
    // primary's transfer log as usual.
    this.v.persistence.persist({ superblock: true, pages: true }, { kind: "resyncStart", round });
    // Regions a failed flush left to be written again read back here but may not be on the disk:
    // the flush that makes the source's data durable waits until they are written.
    if (sourceFlush) this.v.writes.whenRewritten(() => this.round === round && this.v.writes.flushLocal({ kind: "sourceFlush", round }));
    this.v.writes.pump();
  }

  /** The work list is on disk (and, on the source, its data is durable): one step of the preparation. */
  workListPersisted(round: ResyncRound, error: IoError | null): void {
    this.preparationStep(round, error);
  }

  sourceFlushed(round: ResyncRound, error: IoError | null): void {
    this.preparationStep(round, error);
  }

  private preparationStep(round: ResyncRound, error: IoError | null): void {
    const stage = round.stage;
    if (stage.kind !== "persisting") return;
    stage.failure ??= error;
    if (--stage.pending > 0) return;
    if (this.round !== round) return this.v.context.ignore("ignoreCompletionOfAbortedWork", `preparation of resync round ${round.round} finished after it was aborted`);
    const context = this.v.context;
    if (stage.failure) {
      context.report({ kind: "ioError", volumeId: context.volumeId, what: "preparing the resync (work list or source flush)", error: stage.failure });
      this.abort();
      this.v.negotiation.requestRedecide();
      return;
    }
    moveResync(round, { kind: "ready" });
    if (!round.localIsSource) this.v.negotiation.sendHello(false); // we are inconsistent now
    context.send({ type: MessageType.ResyncReady, volumeId: context.volumeId, requestId: 0, round: round.round });
    this.startRunning();
  }

  private startRunning(): void {
    const round = this.round;
    if (!round || round.stage.kind !== "ready" || !round.peerReady) return;
    moveResync(round, { kind: "running", pass: newPass() });
    if (round.localLeads) this.pump();
  }

  abort(): void {
    const round = this.round;
    if (!round) return;
    this.round = undefined;
    // Chunks in flight keep their range until their IO finishes; their bits stay set.
    const superblock = this.v.context.superblock;
    if (superblock.resync.active) superblock.resync = { ...superblock.resync, bitsDone: superblock.resync.bitsDone + round.bitsDone };
  }

  /** Each tick refills this node's copy budget (a round it leads is running). */
  get ticking(): boolean {
    const round = this.round;
    return round !== undefined && round.stage.kind === "running" && round.localLeads;
  }

  tick(): void {
    const round = this.round;
    if (round && round.stage.kind === "running" && round.localLeads) {
      const config = this.v.context.config;
      this.tokens = Math.min(this.tokens + config.resyncRateBytesPerTick, Math.max(config.resyncRateBytesPerTick, config.resyncChunkBytesMax) * 2);
      this.pump();
    }
  }

  // ---------------------------------------------------------------- messages

  onMessage(message: Message): void {
    const context = this.v.context;
    const round = this.round;
    const stale = (number: number) => {
      if (round && round.round === number) return false;
      context.ignore("ignoreStaleRound", `resync message ${message.type} of round ${number}, ${round ? `round ${round.round} runs` : "no resync runs"}`);
      return true;
    };
    switch (message.type) {
      case MessageType.BitmapRuns: {
        if (stale(message.round)) return;
        const stage = round!.stage;
        if (stage.kind !== "exchange") return context.ignore("ignoreResyncMessageInWrongStage", `bitmap runs in stage ${stage.kind}`);
        for (const run of message.runs) {
          if (run.start + run.length > context.bitmap.bitCount) return this.v.peer.protocolError("bitmap run beyond the volume");
          stage.peerRuns.push(run);
        }
        return;
      }
      case MessageType.BitmapDone: {
        if (stale(message.round)) return;
        const stage = round!.stage;
        if (stage.kind !== "exchange") return context.ignore("ignoreResyncMessageInWrongStage", `bitmap done in stage ${stage.kind}`);
        stage.peerDone = true;
        this.exchangeProgress();
        return;
      }
      case MessageType.ResyncReady:
        if (stale(message.round)) return;
        round!.peerReady = true;
        this.startRunning();
        return;
      case MessageType.ResyncProgress:
        if (stale(message.round)) return;
        if (round!.localLeads) return context.ignore("ignoreResyncMessageInWrongStage", "progress sent to the leader");
        for (const run of message.runs) if (run.start + run.length > context.bitmap.bitCount) return this.v.peer.protocolError("progress run beyond the volume");
        context.bitmap.clearRuns(message.runs);
        for (const run of message.runs) round!.bitsDone += run.length;
        return;
      case MessageType.ResyncFlush:
        this.v.writes.flushLocal({ kind: "peerFlush", requestId: message.requestId, linkEpoch: this.v.negotiation.linkEpoch, round: message.round });
        return;
      case MessageType.ResyncRequest: {
        // We are the source of a resync the peer (the primary) leads: read and send.
        if (stale(message.round) || !round!.localIsSource || message.offset + message.length > context.sizeBytes || message.length > context.config.resyncChunkBytesMax) {
          context.send({ type: MessageType.ResyncData, volumeId: context.volumeId, requestId: message.requestId, round: message.round, offset: message.offset, length: message.length, zero: false, status: WireStatus.Refused, data: new Uint8Array(0) });
          return;
        }
        const target = new Uint8Array(message.length);
        context.issue(
          { kind: "storageRead", volumeId: context.volumeId, io: 0, offset: message.offset, target },
          { kind: "sourceRead", requestId: message.requestId, round: message.round, offset: message.offset, length: message.length, linkEpoch: this.v.negotiation.linkEpoch, target },
        );
        return;
      }
      case MessageType.ResyncData: {
        const request = context.requests.get(message.requestId);
        // The answer to a chunk we pulled: in this round, or in one that has ended since (its chunk
        // still holds its range; answering releases it). A push from the peer never matches: the
        // peer pushes only in a round it leads, and one round has one leader.
        if (request && ((request.kind === "resyncPull" && request.round.round === message.round) || round?.localLeads)) {
          context.requests.delete(message.requestId);
          this.v.peer.answer(request, message);
          return;
        }
        // We are the target of a resync the peer pushes.
        const refuse = () => context.send({ type: MessageType.ResyncAck, volumeId: context.volumeId, requestId: message.requestId, round: message.round, offset: message.offset, status: WireStatus.Refused });
        if (stale(message.round) || round!.localIsSource || round!.localLeads || context.mayWrite || message.status !== WireStatus.Ok || message.offset + message.length > context.sizeBytes) return refuse();
        const op: PeerOp = {
          source: "peer",
          kind: "resync",
          requestId: message.requestId,
          offset: message.offset,
          length: message.length,
          data: message.zero ? undefined : message.data,
          fua: false,
          noHole: false,
          zero: message.zero,
          round: message.round,
          linkEpoch: this.v.negotiation.linkEpoch,
          rangeId: 0,
        };
        this.v.writes.queuePeerOp(op);
        return;
      }
      case MessageType.ResyncComplete:
        // From the leader: as the target, adopt its generation; as the source, record the end.
        if (stale(message.round)) return;
        if (round!.localLeads) return context.ignore("ignoreResyncMessageInWrongStage", "ResyncComplete sent to the leader");
        this.finishLocally(message.sourceCurrent, "acknowledge");
        return;
      case MessageType.ResyncCompleteAck:
        // To the leader. A leading target adopts now (its source has recorded the end).
        if (stale(message.round)) return;
        if (!round!.localLeads || round!.localIsSource) return context.ignore("ignoreResyncMessageInWrongStage", "ResyncCompleteAck sent to a node that did not ask");
        this.finishLocally(message.sourceCurrent, "nothing");
        return;
      default:
        return this.v.peer.protocolError(`unexpected resync message ${message.type}`);
    }
  }

  /** A chunk the leader pushed is written here (or failed). */
  pushedChunkWritten(op: PeerOp, error: IoError | null): void {
    const context = this.v.context;
    if (op.linkEpoch !== this.v.negotiation.linkEpoch) return context.ignore("ignoreAnswerOnOldLink", `resync chunk at ${op.offset} written after its link was lost`);
    context.send({ type: MessageType.ResyncAck, volumeId: context.volumeId, requestId: op.requestId, round: op.round, offset: op.offset, status: errorToStatus(error) });
  }

  /** The source read a chunk the leader asked for. */
  sourceReadDone(pending: Extract<PendingIo, { kind: "sourceRead" }>, error: IoError | null): void {
    const context = this.v.context;
    if (pending.linkEpoch !== this.v.negotiation.linkEpoch) return context.ignore("ignoreAnswerOnOldLink", `resync read at ${pending.offset} finished after its link was lost`);
    const reply = (status: WireStatus, zero: boolean, data: Uint8Array) =>
      context.send({ type: MessageType.ResyncData, volumeId: context.volumeId, requestId: pending.requestId, round: pending.round, offset: pending.offset, length: pending.length, zero, status, data });
    if (error) return reply(errorToStatus(error), false, new Uint8Array(0));
    const zero = isAllZero(pending.target);
    reply(WireStatus.Ok, zero, zero ? new Uint8Array(0) : pending.target);
  }

  // ---------------------------------------------------------------- the leader's copy loop

  /** Leader: issue chunks within the window and the rate budget; checkpoint; finish. */
  pump(): void {
    const round = this.round;
    if (!round || round.stage.kind !== "running" || !round.localLeads || !this.v.negotiation.linkUp) return;
    const pass = round.stage.pass;
    const context = this.v.context;
    const bitmap = context.bitmap;
    const writes = this.v.writes;
    const now = context.now();
    const clientBusy = writes.running.size > 0 || writes.queue.some((op) => op.source === "client");
    const window = clientBusy ? 1 : context.config.resyncWindowChunks;
    const chunkGranules = Math.max(1, Math.floor(context.config.resyncChunkBytesMax / context.granuleBytes));
    while (pass.chunks.size < window && this.tokens > 0 && pass.cursor < bitmap.bitCount && now >= pass.nextPassTick) {
      const startBit = bitmap.nextSet(pass.cursor);
      if (startBit === -1) {
        pass.cursor = bitmap.bitCount;
        break;
      }
      const endBit = Math.min(bitmap.nextClear(startBit), startBit + chunkGranules);
      pass.cursor = endBit;
      const offset = startBit * context.granuleBytes;
      const length = Math.min(endBit * context.granuleBytes, context.sizeBytes) - offset;
      if (context.ranges.conflicts(offset, offset + length)) {
        pass.passSkipped = true; // client IO there: leave it for the next pass
        continue;
      }
      const chunk: Chunk = { startBit, endBit, offset, length, rangeId: context.ranges.hold(offset, offset + length, "resync") };
      pass.chunks.add(chunk);
      this.tokens -= length;
      if (round.localIsSource) {
        const data = new Uint8Array(length);
        context.issue({ kind: "storageRead", volumeId: context.volumeId, io: 0, offset, target: data }, { kind: "chunkRead", round, chunk, data });
      } else this.pull(round, chunk);
    }
    this.checkpoint();
    if (pass.cursor >= bitmap.bitCount && pass.chunks.size === 0 && !pass.checkpointBusy && pass.doneRuns.length === 0) {
      if (bitmap.setCount === 0) return this.complete(round);
      // Another pass for what failed, was skipped, or was marked again meanwhile.
      pass.cursor = 0;
      if (pass.passHadFailures) pass.nextPassTick = now + context.config.resyncRetryDelayTicks;
      pass.passHadFailures = false;
      pass.passSkipped = false;
    }
  }

  private chunkFinished(round: ResyncRound, chunk: Chunk, ok: boolean): void {
    const context = this.v.context;
    context.ranges.release(chunk.rangeId);
    const pass = passOf(round);
    pass?.chunks.delete(chunk);
    if (this.round !== round || !pass) {
      this.v.writes.pump();
      return;
    }
    if (ok) {
      pass.doneRuns.push({ start: chunk.startBit, length: chunk.endBit - chunk.startBit });
      round.bytesCopied += chunk.length;
      round.samples.push({ tick: context.now(), bytes: chunk.length });
      const horizon = context.now() - context.config.rateWindowTicks;
      while (round.samples.length > 0 && round.samples[0]!.tick < horizon) round.samples.shift();
    } else pass.passHadFailures = true;
    this.pump();
    this.v.writes.pump();
  }

  /** The source read a chunk to push. */
  chunkRead(pending: Extract<PendingIo, { kind: "chunkRead" }>, error: IoError | null): void {
    const { round, chunk, data: target } = pending;
    const context = this.v.context;
    if (error || this.round !== round || !this.v.negotiation.linkUp) {
      if (error) context.report({ kind: "ioError", volumeId: context.volumeId, what: `resync read at ${chunk.offset}`, error });
      return this.chunkFinished(round, chunk, false);
    }
    const zero = isAllZero(target);
    const request: ResyncRequest = { kind: "resyncPush", requestId: context.requestId(), round, chunk, data: zero ? new Uint8Array(0) : target, zero };
    context.expect(request);
    context.send(this.requestMessage(request));
  }

  private pull(round: ResyncRound, chunk: Chunk): void {
    const context = this.v.context;
    const request: ResyncRequest = { kind: "resyncPull", requestId: context.requestId(), round, chunk };
    context.expect(request);
    context.send(this.requestMessage(request));
  }

  chunkWritten(pending: Extract<PendingIo, { kind: "chunkWrite" }>, error: IoError | null): void {
    const context = this.v.context;
    if (error) context.report({ kind: "ioError", volumeId: context.volumeId, what: `resync write at ${pending.chunk.offset}`, error });
    this.v.writes.wroteLocally(pending.chunk.offset, pending.chunk.length); // failed, it may have reached the cache in part
    this.chunkFinished(pending.round, pending.chunk, error === null);
  }

  /** Make copied chunks durable on the target, then clear their bits on both sides. */
  private checkpoint(): void {
    const round = this.round;
    const pass = round && passOf(round);
    if (!round || !pass || pass.checkpointBusy || pass.doneRuns.length === 0) return;
    const context = this.v.context;
    const passEnded = pass.cursor >= context.bitmap.bitCount && pass.chunks.size === 0;
    if (!passEnded && pass.doneRuns.length < context.config.resyncCheckpointChunks) return;
    const checkpoint: Checkpoint = { runs: pass.doneRuns, remarkedBefore: round.remarked.length };
    pass.doneRuns = [];
    pass.checkpointBusy = true;
    if (round.localIsSource) {
      const request: ResyncRequest = { kind: "resyncFlush", requestId: context.requestId(), round, checkpoint };
      context.expect(request);
      context.send(this.requestMessage(request));
    } else {
      this.v.writes.flushLocal({ kind: "checkpointFlush", round, checkpoint });
    }
  }

  checkpointFlushed(pending: Extract<PendingIo, { kind: "checkpointFlush" }>, error: IoError | null): void {
    if (error) this.checkpointFailed(pending.round);
    else this.checkpointCleared(pending.round, pending.checkpoint);
  }

  private checkpointCleared(round: ResyncRound, checkpoint: Checkpoint): void {
    const pass = passOf(round);
    if (pass) pass.checkpointBusy = false;
    if (this.round !== round) return;
    const context = this.v.context;
    // Regions marked again after their chunk was copied stay dirty.
    const remarked = round.remarked.splice(0, checkpoint.remarkedBefore);
    context.bitmap.clearRuns(checkpoint.runs);
    context.bitmap.setRuns(remarked);
    context.bitmap.setRuns(round.remarked);
    let bits = 0;
    for (const run of checkpoint.runs) bits += run.length;
    round.bitsDone += bits;
    context.superblock.resync = { ...context.superblock.resync, bitsDone: round.bitsDone };
    for (let index = 0; index < checkpoint.runs.length; index += replicaBitmapRunsPerMessageMax) {
      context.send({ type: MessageType.ResyncProgress, volumeId: context.volumeId, requestId: 0, round: round.round, runs: checkpoint.runs.slice(index, index + replicaBitmapRunsPerMessageMax) });
    }
    this.pump();
  }

  private checkpointFailed(round: ResyncRound): void {
    const pass = passOf(round);
    if (pass) {
      pass.checkpointBusy = false;
      pass.passHadFailures = true;
    }
    this.pump();
  }

  // ---------------------------------------------------------------- the end

  /**
   * The work list is empty. The source records the end first (its bitmap base becomes history, so
   * the next write it makes alone starts a new generation), then the target adopts the source's
   * generation. In the other order a source that died in between would keep writing alone under a
   * generation the target already shares, and a later split brain would go unseen.
   */
  private complete(round: ResyncRound): void {
    if (round.stage.kind !== "running") return;
    moveResync(round, { kind: "completing", pass: round.stage.pass });
    if (round.localIsSource) this.finishLocally(noGeneration, "announce");
    else {
      // We lead as the target: the source records its side first and answers with its generation.
      const context = this.v.context;
      context.send({ type: MessageType.ResyncComplete, volumeId: context.volumeId, requestId: 0, round: round.round, sourceCurrent: noGeneration });
    }
  }

  /** Persist the end of a resync on this side: the target adopts, the source forgets its base. */
  private finishLocally(sourceCurrent: bigint, then: ResyncEndThen): void {
    const round = this.round;
    if (!round) return;
    if (round.stage.kind === "running") moveResync(round, { kind: "completing", pass: round.stage.pass });
    else if (round.stage.kind !== "completing") return this.v.context.ignore("ignoreResyncMessageInWrongStage", `the end of resync round ${round.round} in stage ${round.stage.kind}`);
    const context = this.v.context;
    const superblock = context.superblock;
    // The work list is empty here: the leader completes only then, and the follower's copy was
    // cleared by the leader's progress. A bit set now was marked after the last chunk (a write that
    // failed on one side, say) and must survive the end of the resync: it is copied next.
    if (round.localIsSource) {
      if (superblock.generations.current === noGeneration) {
        // Two new replicas: the source names the first generation both will share.
        superblock.generations = { ...superblock.generations, current: context.host.randomId() };
        superblock.dataState = DataState.Consistent;
      }
      superblock.generations = finishAsSource(superblock.generations, replicaGenerationHistoryLength);
    } else {
      if (sourceCurrent === noGeneration) return; // a leading source always names its generation
      superblock.generations = finishAsTarget(superblock.generations, sourceCurrent, replicaGenerationHistoryLength);
      superblock.dataState = DataState.Consistent;
    }
    superblock.resync = { active: false, target: false, bitsTotal: 0, bitsDone: 0 };
    this.v.persistence.persist({ superblock: true, pages: true }, { kind: "resyncEnd", round, then });
  }

  endPersisted(round: ResyncRound, then: ResyncEndThen, error: IoError | null): void {
    const context = this.v.context;
    if (this.round !== round) {
      // The link dropped while the end was being recorded: it is recorded all the same (the data
      // is complete and the generations say so), so say it, though the next decision comes first.
      if (!error) context.report({ kind: "synced", volumeId: context.volumeId, current: formatGeneration(context.generations.current), asTarget: !round.localIsSource });
      return context.ignore("ignoreCompletionOfAbortedWork", `the end of resync round ${round.round} was recorded after it was aborted`);
    }
    if (error) {
      context.report({ kind: "ioError", volumeId: context.volumeId, what: "recording the end of the resync", error });
      if (round.stage.kind === "completing") moveResync(round, { kind: "running", pass: round.stage.pass });
      this.v.negotiation.requestRedecide();
      return;
    }
    this.finished();
    if (then === "announce") context.send({ type: MessageType.ResyncComplete, volumeId: context.volumeId, requestId: 0, round: round.round, sourceCurrent: context.generations.current });
    else if (then === "acknowledge") context.send({ type: MessageType.ResyncCompleteAck, volumeId: context.volumeId, requestId: 0, round: round.round, sourceCurrent: context.generations.current });
    if (this.v.negotiation.linkUp) this.v.negotiation.sendHello(false); // our generations changed
  }

  private finished(): void {
    const round = this.round;
    if (!round) return;
    this.round = undefined;
    const context = this.v.context;
    this.v.negotiation.resyncFinished();
    context.report({ kind: "synced", volumeId: context.volumeId, current: formatGeneration(context.generations.current), asTarget: !round.localIsSource });
    this.v.negotiation.afterResync();
    if (context.bitmap.setCount > 0) this.v.negotiation.requestRedecide();
    this.v.writes.pump();
  }

  // ---------------------------------------------------------------- requests to the peer

  requestMessage(request: ResyncRequest): Message {
    const volumeId = this.v.context.volumeId;
    const { requestId, round } = request;
    switch (request.kind) {
      case "resyncPush":
        return { type: MessageType.ResyncData, volumeId, requestId, round: round.round, offset: request.chunk.offset, length: request.chunk.length, zero: request.zero, status: WireStatus.Ok, data: request.data };
      case "resyncPull":
        return { type: MessageType.ResyncRequest, volumeId, requestId, round: round.round, offset: request.chunk.offset, length: request.chunk.length };
      case "resyncFlush":
        return { type: MessageType.ResyncFlush, volumeId, requestId, round: round.round };
    }
  }

  answer(request: ResyncRequest, message: Message): void {
    const peer = this.v.peer;
    switch (request.kind) {
      case "resyncPush":
        if (message.type !== MessageType.ResyncAck) return peer.protocolError("expected ResyncAck");
        return this.chunkFinished(request.round, request.chunk, message.status === WireStatus.Ok);
      case "resyncPull": {
        if (message.type !== MessageType.ResyncData) return peer.protocolError("expected ResyncData");
        const data = message as ResyncDataMessage;
        const { round, chunk } = request;
        // A round that has ended since: its data is not written (the next decision says who copies
        // what); the chunk only gives its range back.
        if (this.round !== round || data.status !== WireStatus.Ok || data.offset !== chunk.offset || data.length !== chunk.length) return this.chunkFinished(round, chunk, false);
        const context = this.v.context;
        const pending: PendingIo = { kind: "chunkWrite", round, chunk };
        if (data.zero) context.issue({ kind: "storageZero", volumeId: context.volumeId, io: 0, offset: chunk.offset, length: chunk.length, fua: false, noHole: false }, pending);
        else context.issue({ kind: "storageWrite", volumeId: context.volumeId, io: 0, offset: chunk.offset, data: data.data, fua: false }, pending);
        return;
      }
      case "resyncFlush":
        if (message.type !== MessageType.ResyncFlushAck) return peer.protocolError("expected ResyncFlushAck");
        if (message.status === WireStatus.Ok) this.checkpointCleared(request.round, request.checkpoint);
        else {
          this.v.writes.peerFlushFailed(new Set());
          this.checkpointFailed(request.round);
        }
        return;
    }
  }

  lost(request: ResyncRequest): void {
    switch (request.kind) {
      case "resyncPush":
      case "resyncPull":
        return this.chunkFinished(request.round, request.chunk, false);
      case "resyncFlush":
        return this.checkpointFailed(request.round);
    }
  }

  // ---------------------------------------------------------------- status

  status(): ResyncStatus | undefined {
    const round = this.round;
    if (!round) return undefined;
    const context = this.v.context;
    const remaining = context.bitmap.setCount;
    let windowBytes = 0;
    for (const sample of round.samples) windowBytes += sample.bytes;
    const first = round.samples[0];
    const spanTicks = first ? Math.max(1, context.now() - first.tick) : 0;
    const rate = first ? (windowBytes * 1000) / (spanTicks * context.config.tickMs) : 0;
    const bytesRemaining = Math.min(remaining * context.granuleBytes, context.sizeBytes);
    return {
      direction: round.localIsSource ? "source" : "target",
      leader: round.localLeads,
      bitsTotal: round.bitsTotal,
      bitsRemaining: remaining,
      bytesRemaining,
      bytesCopied: round.bytesCopied,
      rateBytesPerSecond: Math.round(rate),
      etaSeconds: rate > 0 ? Math.ceil(bytesRemaining / rate) : undefined,
    };
  }
}

