// The negotiation between this replica of a volume and the peer's (DESIGN.md §4): while the link is
// up each side announces its state in a VolumeHello (generations, data state, grant, dirty bits);
// the node with the lower name decides with `decide` (generations.ts) and sends the verdict, and the
// other follows. The phase of the link for this volume is one tagged union (state.ts) changed only
// through `move`. A verdict that answers a state the follower has since left is ignored by name.
import { assert, unreachable } from "../../common/assert.ts";
import { type Decision, decide, finishAsSource, formatGeneration, noGeneration, type ReplicaState } from "../generations.ts";
import type { Grant } from "../types.ts";
import { type Message, MessageType, type VolumeDecisionMessage, type VolumeHelloMessage } from "../wire.ts";
import { replicaGenerationHistoryLength } from "../../constants.ts";
import type { Parts } from "./context.ts";
import { checkTransition, type LinkPhase, linkPhaseTransitions, type Refusal } from "./state.ts";
import { DataState, DecisionKind } from "../model.ts";

const decisionNames: Record<DecisionKind, string> = {
  [DecisionKind.InSync]: "inSync",
  [DecisionKind.Resync]: "resync",
  [DecisionKind.SplitBrain]: "splitBrain",
  [DecisionKind.Unrelated]: "unrelated",
  [DecisionKind.NoGoodData]: "noGoodData",
  [DecisionKind.Mismatch]: "mismatch",
  [DecisionKind.DualPrimary]: "dualPrimary",
  [DecisionKind.PrimaryWouldBeTarget]: "primaryWouldBeTarget",
};

/** Refusals an operator ends by choosing whose data survives (`resolveSplitBrain`). */
const resolvable: ReadonlySet<Refusal> = new Set(["splitBrain", "unrelated", "primaryWouldBeTarget"]);

export class Negotiation {
  phase: LinkPhase = { kind: "down", reason: "the peer is not connected" };
  linkUp = false;
  /** Bumped whenever the link comes up or goes down: answers from an older link are stale. */
  linkEpoch = 0;
  /** The peer's latest announcement on this link. */
  peerHello: VolumeHelloMessage | undefined;
  private helloSeq = 0;
  /** Seq of our last hello that asked for a decision: the decider answers it (or a later one). */
  private redecideHelloSeq = 0;
  /** The state our last hello announced (a decision answers that state). */
  private announced: { dataState: DataState; current: bigint; bitmapBase: bigint } | undefined;
  /** A decision was dropped because our state had changed: the next hello asks again. */
  private askAgain = false;
  private decideWanted = false;
  private decisionRounds = 0;
  private splitBrainKeeper: "local" | "peer" | undefined;

  constructor(private readonly v: Parts) {}

  private move(next: LinkPhase): void {
    checkTransition("link phase", linkPhaseTransitions, this.phase.kind, next.kind);
    assert(next.kind === "down" || this.linkUp, "a volume negotiates only while the link is up");
    this.phase = next;
  }

  get refusal(): Refusal | undefined {
    return this.phase.kind === "refused" ? this.phase.refusal : undefined;
  }

  private get isDecider(): boolean {
    const host = this.v.context.host;
    return host.nodeId < host.peerNodeId;
  }

  /** Whether writes go to the peer as well. */
  mirroring(): boolean {
    return this.linkUp && this.phase.kind === "replicating" && this.peerHello !== undefined && !this.peerHello.mayWrite;
  }

  /** Whether writes may proceed on this node alone (the peer is away or refuses to replicate). */
  aloneAllowed(): boolean {
    if (!this.linkUp) return true;
    if (this.phase.kind === "absent") return true;
    const refusal = this.refusal;
    // A primary refused as a resync target keeps serving its own data (and marks what it writes).
    return refusal === "splitBrain" || refusal === "unrelated" || refusal === "mismatch" || refusal === "primaryWouldBeTarget";
  }

  /** Whether the peer can serve reads of a range we cannot. */
  peerCanServe(): boolean {
    if (!this.linkUp || this.phase.kind !== "replicating" || !this.peerHello) return false;
    const round = this.v.resync.round;
    if (round) return round.localIsSource === false && round.stage.kind !== "exchange";
    return this.peerHello.dataState === DataState.Consistent;
  }

  /** A replica that serves IO: it holds the write grant and its data is complete. */
  private servesIo(state: ReplicaState): boolean {
    return state.mayWrite && state.dataState === DataState.Consistent;
  }

  ownState(): ReplicaState {
    const context = this.v.context;
    return { nodeId: context.host.nodeId, generations: context.generations, dataState: context.dataState, mayWrite: context.mayWrite, bitsSet: context.bitmap.setCount };
  }

  // ---------------------------------------------------------------- events

  /** The volume is open ("not clean" is on disk): announce it. */
  opened(): void {
    if (this.linkUp) {
      this.sendHello(true);
      this.decideWanted = true;
    }
    this.maybeDecide();
  }

  grantChanged(before: Grant, grant: Grant): void {
    const same = before.kind === grant.kind && (before.kind !== "write" || grant.kind !== "write" || before.epoch === grant.epoch);
    if (!same && this.linkUp && this.v.lifecycle.isOpened) {
      this.sendHello(true);
      this.decideWanted = true;
      this.maybeDecide();
    }
    this.v.writes.pump();
  }

  linkUpEvent(): void {
    assert(!this.linkUp, "link up once per link");
    this.linkUp = true;
    this.linkEpoch++;
    this.peerHello = undefined;
    if (this.v.lifecycle.leaving) {
      this.move({ kind: "absent", reason: "this node is closing the volume" });
      this.sendNotice();
      return;
    }
    this.move({ kind: "negotiating", reason: "waiting for the peer's volume state" });
    if (this.v.lifecycle.isOpened) this.sendHello(true);
  }

  linkDownEvent(): void {
    if (!this.linkUp) return;
    const v = this.v;
    this.linkUp = false;
    if (this.splitBrainKeeper !== undefined) {
      // A resolution judged the two replicas as they were while connected. Before they meet again
      // either side may be promoted and write alone: the operator decides again then.
      this.splitBrainKeeper = undefined;
      v.context.report({ kind: "notice", volumeId: v.context.volumeId, message: "split brain resolution void: the link dropped before it took effect; resolve again when the peer is back" });
    }
    this.linkEpoch++;
    this.peerHello = undefined;
    this.move({ kind: "down", reason: "the peer is not connected" });
    v.writes.peerStoppedServing();
    // Writes from the peer that we had not acknowledged: the primary may not have them.
    v.writes.peerRequestsDropped();
    this.endPeerSession();
    v.writes.pump();
  }

  /**
   * The peer no longer answers our requests (link lost, or it closed the volume): everything we
   * asked of it is lost, the resync and verify stop, and writes waiting for it complete alone.
   */
  private endPeerSession(): void {
    const v = this.v;
    // The resync and verify stop first: what the lost requests complete below (a chunk finishing as
    // failed, say) must not start new requests of a round that is over. Such a request would wait
    // for an answer that never comes, and a close would wait for it for ever.
    v.resync.abort();
    v.verify.abort(this.linkUp ? "the peer closed the volume" : "the link to the peer was lost");
    for (const request of v.context.retireRequests()) v.peer.lost(request);
    for (const op of [...v.writes.running]) v.writes.finishWrite(op);
  }

  /** This node closes the volume: tell the peer to send nothing more for it. */
  leave(): void {
    const v = this.v;
    v.resync.abort();
    v.verify.abort("the volume is closing");
    if (!this.linkUp) return;
    this.peerHello = undefined;
    this.move({ kind: "absent", reason: "this node is closing the volume" });
    this.sendNotice();
  }

  /** The peer said hello while this node closes the volume: tell it again that the volume is closing here. */
  tellClosing(): void {
    if (this.linkUp) this.sendNotice();
  }

  private sendNotice(): void {
    const context = this.v.context;
    context.send({ type: MessageType.VolumeClosed, volumeId: context.volumeId, requestId: 0 });
  }

  /**
   * Tell the peer our replica's state. `redecide`: we want a new decision (our role changed, or
   * regions went out of sync); otherwise the peer just learns a state change a decision caused.
   * Every change of data state or generations is announced, so the deciding node never decides on
   * a state we have left.
   */
  sendHello(redecide: boolean): void {
    if (this.v.lifecycle.leaving) return; // the peer was told we are gone: nothing more to negotiate
    const persistence = this.v.persistence;
    if (persistence.generationPending) {
      // A new generation is being persisted: announce it once it is on disk, never before.
      persistence.deferHello(redecide);
      return;
    }
    const context = this.v.context;
    redecide ||= this.askAgain;
    this.askAgain = false;
    this.helloSeq++;
    if (redecide) this.redecideHelloSeq = this.helloSeq;
    this.announced = { dataState: context.dataState, current: context.generations.current, bitmapBase: context.generations.bitmapBase };
    context.send({
      type: MessageType.VolumeHello,
      volumeId: context.volumeId,
      requestId: 0,
      seq: this.helloSeq,
      sizeBytes: context.sizeBytes,
      granuleBytes: context.granuleBytes,
      generations: context.generations,
      dataState: context.dataState,
      mayWrite: context.mayWrite,
      bitsSet: context.bitmap.setCount,
      redecide,
    });
  }

  /** Ask for a fresh decision (our state changed in a way that matters to the peer). */
  requestRedecide(): void {
    if (!this.linkUp || !this.v.lifecycle.isOpened) return;
    if (this.isDecider) {
      this.decideWanted = true;
      this.maybeDecide();
    } else this.sendHello(true);
  }

  /** A resync finished: a decision asked for meanwhile is made now. */
  afterResync(): void {
    if (this.decideWanted) this.maybeDecide();
  }

  // ---------------------------------------------------------------- the decision

  maybeDecide(): void {
    const v = this.v;
    if (!this.isDecider || !this.linkUp || !v.lifecycle.isOpened || !this.peerHello || !this.decideWanted || v.lifecycle.leaving) return;
    if (v.persistence.generationPending) return; // decide on generations that are on disk (called again after)
    this.decideWanted = false;
    const context = v.context;
    const peer = this.peerHello;
    const local = this.ownState();
    const peerState: ReplicaState = { nodeId: context.host.peerNodeId, generations: peer.generations, dataState: peer.dataState, mayWrite: peer.mayWrite, bitsSet: peer.bitsSet };
    let decision: Decision;
    let byOperator = false;
    if (peer.sizeBytes !== context.sizeBytes || peer.granuleBytes !== context.granuleBytes) {
      const reason = `volume geometry differs: local ${context.sizeBytes} bytes / ${context.granuleBytes}-byte granules, peer ${peer.sizeBytes} / ${peer.granuleBytes}`;
      return this.sendAndApply(peer.seq, DecisionKind.Mismatch, false, false, false, reason);
    }
    decision = decide(local, peerState);
    // A replica that serves IO (it holds the write grant and has complete data) never becomes a
    // resync target because of what the peer claims: only an operator decides that it loses.
    const servingTarget = decision.kind === "resync" && this.servesIo(decision.source === "local" ? peerState : local);
    if ((decision.kind === "splitBrain" || decision.kind === "unrelated" || servingTarget) && this.splitBrainKeeper) {
      const keeper = this.splitBrainKeeper;
      const victimMayWrite = keeper === "local" ? peer.mayWrite : local.mayWrite;
      if (victimMayWrite) {
        // The resolution was accepted while the discarded side was demoted; it holds the write grant
        // again (promoted since), so it may have acknowledged writes the resolution never meant to
        // discard. It is void: the operator decides again.
        this.splitBrainKeeper = undefined;
        context.report({ kind: "notice", volumeId: context.volumeId, message: `split brain resolution void: ${keeper === "local" ? context.host.peerNodeId : context.host.nodeId}, whose changes it discarded, holds the write grant again; resolve again once it is demoted` });
      } else {
        const full = decision.kind === "unrelated" || (decision.kind !== "noGoodData" && decision.kind !== "inSync" && decision.full);
        const what = decision.kind === "splitBrain" ? "split brain" : decision.kind === "unrelated" ? "unrelated data" : "newer data on the node that does not serve IO";
        decision = { kind: "resync", source: keeper, full, reason: `operator resolved the ${what}: ${keeper === "local" ? context.host.nodeId : context.host.peerNodeId} keeps its data` };
        this.splitBrainKeeper = undefined;
        byOperator = true;
      }
    }
    if (decision.kind !== "splitBrain" && decision.kind !== "unrelated" && local.mayWrite && peer.mayWrite) {
      return this.sendAndApply(peer.seq, DecisionKind.DualPrimary, false, false, false, "both nodes hold the write grant for this volume: IO waits until one is demoted");
    }
    if (decision.kind === "resync" && !byOperator && this.servesIo(decision.source === "local" ? peerState : local)) {
      const primary = decision.source === "local" ? context.host.peerNodeId : context.host.nodeId;
      const other = decision.source === "local" ? context.host.nodeId : context.host.peerNodeId;
      const reason = `${other} holds newer data (${decision.reason}), but ${primary} serves IO and is not resynced from what its peer claims: demote ${primary} to take ${other}'s data, or resolve keeping ${primary}'s`;
      return this.sendAndApply(peer.seq, DecisionKind.PrimaryWouldBeTarget, false, false, decision.full, reason);
    }
    switch (decision.kind) {
      case "inSync":
        return this.sendAndApply(peer.seq, DecisionKind.InSync, false, false, false, decision.reason);
      case "resync": {
        const sourceIsLocal = decision.source === "local";
        // The primary leads (it alone originates writes, so its range locks order everything);
        // with no primary, the source leads.
        const leaderIsLocal = local.mayWrite !== peerState.mayWrite ? local.mayWrite : sourceIsLocal;
        return this.sendAndApply(peer.seq, DecisionKind.Resync, sourceIsLocal, leaderIsLocal, decision.full, decision.reason, byOperator);
      }
      case "splitBrain":
        return this.sendAndApply(peer.seq, DecisionKind.SplitBrain, false, false, decision.full, decision.reason);
      case "unrelated":
        return this.sendAndApply(peer.seq, DecisionKind.Unrelated, false, false, true, decision.reason);
      case "noGoodData":
        return this.sendAndApply(peer.seq, DecisionKind.NoGoodData, false, false, false, decision.reason);
      default:
        unreachable(decision);
    }
  }

  private sendAndApply(followerHelloSeq: number, kind: DecisionKind, deciderIsSource: boolean, deciderLeads: boolean, full: boolean, reason: string, byOperator = false): void {
    const round = ++this.decisionRounds;
    const message: VolumeDecisionMessage = { type: MessageType.VolumeDecision, volumeId: this.v.context.volumeId, requestId: 0, followerHelloSeq, round, kind, deciderIsSource, deciderLeads, full, byOperator, reason };
    this.v.context.send(message);
    this.apply(kind, round, deciderIsSource, deciderLeads, full, reason, byOperator);
  }

  private apply(kind: DecisionKind, round: number, localIsSource: boolean, localLeads: boolean, full: boolean, reason: string, byOperator: boolean): void {
    const v = this.v;
    const context = v.context;
    const peerBits = this.peerHello?.bitsSet ?? 0;
    v.resync.abort();
    context.report({
      kind: "decision",
      volumeId: context.volumeId,
      decision: decisionNames[kind],
      sourceIsLocal: kind === DecisionKind.Resync ? localIsSource : undefined,
      full,
      reason,
      localBits: context.bitmap.setCount,
      peerBits,
      byOperator,
    });
    switch (kind) {
      case DecisionKind.InSync: {
        this.move({ kind: "replicating", reason: "in sync" });
        if (context.generations.bitmapBase !== noGeneration) {
          context.superblock.generations = finishAsSource(context.generations, replicaGenerationHistoryLength);
          v.persistence.persist({ superblock: true, pages: false }, { kind: "inSync" });
        }
        context.report({ kind: "synced", volumeId: context.volumeId, current: formatGeneration(context.generations.current), asTarget: false });
        break;
      }
      case DecisionKind.Resync:
        this.move({ kind: "replicating", reason: localIsSource ? "resync source" : "resync target" });
        v.resync.begin(round, localIsSource, localLeads, full);
        break;
      case DecisionKind.SplitBrain:
        this.move({ kind: "refused", refusal: "splitBrain", reason });
        context.report({ kind: "splitBrain", volumeId: context.volumeId, reason });
        break;
      case DecisionKind.Unrelated:
        this.move({ kind: "refused", refusal: "unrelated", reason });
        break;
      case DecisionKind.NoGoodData:
        this.move({ kind: "refused", refusal: "noGoodData", reason });
        break;
      case DecisionKind.Mismatch:
        this.move({ kind: "refused", refusal: "mismatch", reason });
        break;
      case DecisionKind.DualPrimary:
        this.move({ kind: "refused", refusal: "dualPrimary", reason });
        break;
      case DecisionKind.PrimaryWouldBeTarget:
        this.move({ kind: "refused", refusal: "primaryWouldBeTarget", reason });
        context.report({ kind: "notice", volumeId: context.volumeId, message: reason });
        break;
    }
    v.writes.pump();
  }

  inSyncPersisted(error: unknown): void {
    if (!error && this.linkUp) this.sendHello(false);
  }

  /** The resync finished on this side: the replicas are in sync. */
  resyncFinished(): void {
    this.move({ kind: "replicating", reason: "in sync" });
  }

  /** Operator: resolve a split brain (or unrelated data) by choosing whose data survives. */
  resolveSplitBrain(request: number, keep: "local" | "peer"): void {
    const context = this.v.context;
    const refusal = this.refusal;
    if (!this.linkUp || refusal === undefined || !resolvable.has(refusal)) {
      context.emit({ kind: "complete", request, error: "EINVAL", message: "the volume is not in split brain (or not connected to its peer)" });
      return;
    }
    // A side that holds the write grant may acknowledge writes alone (a split brain refuses to
    // replicate) right up to its demotion; a resolution given before that would discard them too.
    const victimMayWrite = keep === "peer" ? context.mayWrite : this.peerHello?.mayWrite === true;
    if (victimMayWrite) {
      const victim = keep === "peer" ? "this node" : context.host.peerNodeId;
      context.emit({ kind: "complete", request, error: "EPERM", message: `${victim}'s changes would be discarded but it holds the write grant: demote it first` });
      return;
    }
    if (this.isDecider) {
      this.splitBrainKeeper = keep;
      this.decideWanted = true;
      this.maybeDecide();
    } else {
      context.send({ type: MessageType.SplitBrainResolve, volumeId: context.volumeId, requestId: 0, senderKeeps: keep === "local" });
    }
    context.emit({ kind: "complete", request, error: null, message: "resolution sent: the discarded side becomes the resync target" });
  }

  // ---------------------------------------------------------------- messages

  onVolumeHello(message: VolumeHelloMessage): void {
    this.peerHello = message;
    if (this.phase.kind === "absent") {
      // The peer did not have the volume when we said hello: say it again.
      this.move({ kind: "negotiating", reason: "the peer opened the volume" });
      if (this.v.lifecycle.isOpened) this.sendHello(true);
    }
    if (this.isDecider) {
      if (message.redecide || this.phase.kind === "negotiating" || this.phase.kind === "down") this.decideWanted = true;
      this.maybeDecide();
    } else if (this.phase.kind === "down" || this.phase.kind === "absent") this.move({ kind: "negotiating", reason: "waiting for the decision" });
    this.v.writes.pump();
  }

  onDecision(message: VolumeDecisionMessage): void {
    if (this.isDecider) return this.v.peer.protocolError("a decision from the node that does not decide");
    if (message.followerHelloSeq !== this.helloSeq) {
      // It answers a state of ours we have since left. When a later hello of ours already asked
      // for a decision, that answer is on its way; otherwise ask again with the current state.
      // (Asking again on every stale answer would keep two questions in flight for ever.)
      this.v.context.ignore("ignoreStaleDecision", `decision ${message.round} answers our hello ${message.followerHelloSeq}, we have sent ${this.helloSeq}`);
      if (message.followerHelloSeq >= this.redecideHelloSeq) this.sendHello(true);
      return;
    }
    const context = this.v.context;
    const announced = this.announced;
    if (announced && (announced.dataState !== context.dataState || announced.current !== context.generations.current || announced.bitmapBase !== context.generations.bitmapBase)) {
      // It answers the state our last hello announced, which we have left since (the new one is
      // being persisted and will be announced): ask again then.
      context.ignore("ignoreStaleDecision", `decision ${message.round} answers a state we have left since hello ${message.followerHelloSeq}`);
      this.askAgain = true;
      return;
    }
    const resync = message.kind === DecisionKind.Resync;
    if (resync && message.deciderIsSource && this.servesIo(this.ownState())) {
      // The decider would make this node, which serves IO with complete data, its resync target.
      // An honest decider never does (it refuses the same way); this one's word is not enough.
      const reason = `${this.v.context.host.peerNodeId}'s decision would make this node, which serves IO, a resync target (${message.reason}): refused`;
      return this.apply(DecisionKind.PrimaryWouldBeTarget, message.round, false, false, message.full, reason, false);
    }
    this.apply(message.kind, message.round, resync ? !message.deciderIsSource : false, resync ? !message.deciderLeads : false, message.full, message.reason, message.byOperator);
  }

  /**
   * VolumeUnknown or VolumeClosed: the peer has no open replica of this volume (or is closing it).
   * It answers nothing more we ask, so what we asked is lost; what it asked of us is still
   * answered (a closing primary waits for its last writes and its final barrier).
   */
  onPeerGone(message: Message): void {
    const v = this.v;
    const unknown = message.type === MessageType.VolumeUnknown;
    // The phase changes first: what completes below must not start new writes towards the peer.
    this.peerHello = undefined;
    this.move({ kind: "absent", reason: unknown ? "the peer does not have this volume" : "the peer closed this volume" });
    v.writes.peerStoppedServing();
    this.endPeerSession();
    if (unknown) v.context.report({ kind: "volumeUnknownOnPeer", volumeId: v.context.volumeId });
    v.writes.pump();
  }

  onSplitBrainResolve(senderKeeps: boolean): void {
    if (!this.isDecider) return this.v.peer.protocolError("a resolution sent to the node that does not decide");
    this.splitBrainKeeper = senderKeeps ? "peer" : "local";
    this.decideWanted = true;
    this.maybeDecide();
  }
}
