// The volume's side of the conversation with the peer: every message for this volume is routed
// here to the part that owns it; answers to our requests find their record (model.ts) and go to
// the part that sent them; a resend request (the peer saw our frame corrupt) re-sends from the
// record; and this node answers the peer's flushes and reads. A message the protocol does not
// allow is a protocol error, which drops the link.
import type { IoError } from "../types.ts";
import { type Message, MessageType, WireStatus } from "../wire.ts";
import type { Parts } from "./context.ts";
import type { PendingIo, PendingRequest } from "./model.ts";
import { errorToStatus } from "./write-path.ts";

export class PeerService {
  /** Set by the node core: a protocol violation drops the link. */
  onProtocolError: ((reason: string) => void) | undefined;

  constructor(private readonly v: Parts) {}

  protocolError(reason: string): void {
    const context = this.v.context;
    context.emit({ kind: "report", report: { kind: "protocolError", reason: `volume ${context.volumeId}: ${reason}` } });
    this.onProtocolError?.(reason);
  }

  message(message: Message): void {
    const v = this.v;
    const context = v.context;
    if (v.lifecycle.closed) return context.ignore("ignoreAfterClose", `message type ${message.type} after the volume closed`);
    if (v.lifecycle.leaving && !this.answersUs(message)) {
      // A hello gets the answer a closed volume gives (VolumeClosed): the peer, which may have opened
      // its replica after our notice went out, then knows we missed its state and says hello again
      // when we reopen. Unanswered, both would wait for the other's state for ever.
      if (message.type === MessageType.VolumeHello) v.negotiation.tellClosing();
      return context.ignore("ignoreRequestWhileClosing", `message type ${message.type} while the volume closes`);
    }
    switch (message.type) {
      case MessageType.VolumeHello:
        return v.negotiation.onVolumeHello(message);
      case MessageType.VolumeDecision:
        return v.negotiation.onDecision(message);
      case MessageType.VolumeUnknown:
      case MessageType.VolumeClosed:
        return v.negotiation.onPeerGone(message);
      case MessageType.SplitBrainResolve:
        return v.negotiation.onSplitBrainResolve(message.senderKeeps);
      case MessageType.Write:
      case MessageType.Trim:
      case MessageType.Zero:
        return v.writes.peerWrite(message);
      case MessageType.Flush:
        this.v.writes.flushLocal({ kind: "peerFlush", requestId: message.requestId, linkEpoch: v.negotiation.linkEpoch, round: undefined });
        return;
      case MessageType.ReadRequest: {
        if (message.offset + message.length > context.sizeBytes || !v.writes.localValid(message.offset, message.length)) {
          context.send({ type: MessageType.ReadReply, volumeId: context.volumeId, requestId: message.requestId, status: WireStatus.Refused, data: new Uint8Array(0) });
          return;
        }
        const target = new Uint8Array(message.length);
        context.issue({ kind: "storageRead", volumeId: context.volumeId, io: 0, offset: message.offset, target }, { kind: "peerRead", requestId: message.requestId, linkEpoch: v.negotiation.linkEpoch, target });
        return;
      }
      case MessageType.BitmapRuns:
      case MessageType.BitmapDone:
      case MessageType.ResyncReady:
      case MessageType.ResyncProgress:
      case MessageType.ResyncComplete:
      case MessageType.ResyncCompleteAck:
      case MessageType.ResyncRequest:
      case MessageType.ResyncData:
      case MessageType.ResyncFlush:
        return v.resync.onMessage(message);
      case MessageType.VerifyRequest:
        return v.verify.onVerifyRequest(message);
      case MessageType.RepairData:
        return v.verify.onRepairData(message);
      case MessageType.WriteAck:
      case MessageType.FlushAck:
      case MessageType.ReadReply:
      case MessageType.ResyncAck:
      case MessageType.ResyncFlushAck:
      case MessageType.VerifyReply:
      case MessageType.RepairAck: {
        const request = context.requests.get(message.requestId);
        if (!request) return this.unknownRequest(message);
        context.requests.delete(message.requestId);
        return this.answer(request, message);
      }
      case MessageType.Nack: {
        const request = context.requests.get(message.requestId);
        if (!request) return this.unknownRequest(message);
        return this.resend(request);
      }
      default:
        return this.protocolError(`message type ${message.type} is not a volume message`);
    }
  }

  /** Whether a message answers something we asked (still handled while the volume closes). */
  private answersUs(message: Message): boolean {
    switch (message.type) {
      case MessageType.WriteAck:
      case MessageType.FlushAck:
      case MessageType.ReadReply:
      case MessageType.ResyncAck:
      case MessageType.ResyncFlushAck:
      case MessageType.VerifyReply:
      case MessageType.RepairAck:
      case MessageType.Nack:
      case MessageType.VolumeUnknown:
      case MessageType.VolumeClosed:
        return true;
      case MessageType.ResyncData:
        return this.v.context.requests.has(message.requestId);
      default:
        return false;
    }
  }

  /** An answer (or resend request) for a request we do not have: stale, or a protocol error. */
  private unknownRequest(message: Message): void {
    const context = this.v.context;
    if (context.retired(message.requestId)) return context.ignore("ignoreAnswerToRetiredRequest", `message type ${message.type} for request ${message.requestId}, sent before the peer stopped serving us`);
    this.protocolError(`answer to unknown request ${message.requestId} (type ${message.type})`);
  }

  /** A frame for this volume arrived with a payload that failed its checksum. */
  corruptFrame(type: number, requestId: number): void {
    const context = this.v.context;
    if (type === MessageType.Write || type === MessageType.Trim || type === MessageType.Zero || type === MessageType.RepairData || (type === MessageType.ResyncData && !this.v.resync.round?.localLeads)) {
      // Never written: ask for it again.
      context.send({ type: MessageType.Nack, volumeId: context.volumeId, requestId, corruptType: type });
      return;
    }
    const request = context.requests.get(requestId);
    if (request && (type === MessageType.ReadReply || type === MessageType.ResyncData || type === MessageType.VerifyReply)) {
      // An answer to us was damaged: ask again (the request is idempotent).
      this.resend(request);
      return;
    }
    this.protocolError(`corrupt frame of type ${type} that cannot be retried`);
  }

  // ---------------------------------------------------------------- our requests, by kind

  answer(request: PendingRequest, message: Message): void {
    const v = this.v;
    switch (request.kind) {
      case "write":
      case "read":
      case "barrier":
        return v.writes.answer(request, message);
      case "resyncPush":
      case "resyncPull":
      case "resyncFlush":
        return v.resync.answer(request, message);
      case "verify":
      case "repair":
        return v.verify.answer(request, message);
    }
  }

  resend(request: PendingRequest): void {
    const v = this.v;
    switch (request.kind) {
      case "write":
      case "read":
      case "barrier":
        return v.context.send(v.writes.requestMessage(request));
      case "resyncPush":
      case "resyncPull":
      case "resyncFlush":
        return v.context.send(v.resync.requestMessage(request));
      case "verify":
      case "repair":
        return v.context.send(v.verify.requestMessage(request));
    }
  }

  /** The link went down before an answer. */
  lost(request: PendingRequest): void {
    const v = this.v;
    switch (request.kind) {
      case "write":
      case "read":
      case "barrier":
        return v.writes.lost(request);
      case "resyncPush":
      case "resyncPull":
      case "resyncFlush":
        return v.resync.lost(request);
      case "verify":
      case "repair":
        return v.verify.lost(request);
    }
  }

  // ---------------------------------------------------------------- answering the peer

  flushed(pending: Extract<PendingIo, { kind: "peerFlush" }>, error: IoError | null): void {
    const v = this.v;
    const context = v.context;
    if (pending.linkEpoch !== v.negotiation.linkEpoch) return context.ignore("ignoreAnswerOnOldLink", "a flush for the peer finished after its link was lost");
    if (pending.round === undefined) context.send({ type: MessageType.FlushAck, volumeId: context.volumeId, requestId: pending.requestId, status: errorToStatus(error) });
    else context.send({ type: MessageType.ResyncFlushAck, volumeId: context.volumeId, requestId: pending.requestId, round: pending.round, offset: 0, status: errorToStatus(error) });
  }

  readDone(pending: Extract<PendingIo, { kind: "peerRead" }>, error: IoError | null): void {
    const v = this.v;
    const context = v.context;
    if (pending.linkEpoch !== v.negotiation.linkEpoch) return context.ignore("ignoreAnswerOnOldLink", "a read for the peer finished after its link was lost");
    context.send({ type: MessageType.ReadReply, volumeId: context.volumeId, requestId: pending.requestId, status: errorToStatus(error), data: error ? new Uint8Array(0) : pending.target });
  }
}
