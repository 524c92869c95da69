// The replication link's messages: their types, status codes, roles and limits, and each message's
// fields as TypeScript sees them (wire.ts describes how each is laid out in a frame). Types and
// constants only.
import type { BitRun, DataState, DecisionKind, Generations } from "./model.ts";
import type { Payload } from "../common/bytes.ts";

export const frameMagic = 0x314d4454; // "TDM1" read as little endian
export const frameHeaderBytes = 32;
/** Bytes of the tag an authenticated frame carries after its payload (AES-256-GCM's tag). */
export const frameTagBytes = 16;

/** Bits of the frame header's flags byte. */
export const enum FrameFlags {
  /** A tag of frameTagBytes follows the payload (every frame after the handshake). */
  Tagged = 1,
}

/** The protocol versions this build speaks. A newer node offers a wider range and both pick the
 * highest common version (see negotiateVersion); messages added later are only sent when agreed.
 * Version 1 had a handshake that could be reflected (each side proved itself to anyone who sent a
 * Hello) and unauthenticated frames: it is not spoken any more, so a version-1 node is refused.
 * Version 3 leaves the payload CRC of a tagged frame out (zero): its tag covers the same bytes and
 * is checked first, so the CRC never decided anything; a version-2 peer still gets it. */
export const protocolVersionMin = 2;
export const protocolVersionMax = 3;
/** The first version whose tagged frames carry no payload CRC. */
export const protocolVersionTagOnly = 3;

/** Largest control-plane payload (PeerRequest / PeerReply) between the daemons. */
export const peerPayloadBytesMax = 1024 * 1024;
/** Largest quorum payload the link carries (the quorum message is 48 bytes in its version 1). */
export const quorumPayloadBytesMax = 256;

export const NEED_MORE = Symbol("need more bytes");
export type NeedMore = typeof NEED_MORE;

export class DecodeError extends Error {
  override name = "DecodeError";
}

export const enum MessageType {
  // Link: authentication and liveness.
  Hello = 1,
  Auth = 2,
  Ping = 3,
  Pong = 4,
  Goodbye = 5,
  /** Control plane between the daemons (create a replica, describe volumes): opaque payloads. */
  PeerRequest = 8,
  PeerReply = 9,
  /** The quorum cores' message to each other (src/quorum/message.ts), carried opaquely. */
  Quorum = 10,
  // Volume negotiation and resync control.
  VolumeHello = 16,
  VolumeDecision = 17,
  VolumeUnknown = 18,
  VolumeClosed = 19,
  BitmapRuns = 20,
  BitmapDone = 21,
  ResyncReady = 22,
  ResyncProgress = 23,
  ResyncComplete = 24,
  ResyncCompleteAck = 25,
  SplitBrainResolve = 26,
  // The mirrored data path.
  Write = 32,
  Trim = 33,
  Zero = 34,
  WriteAck = 35,
  Flush = 36,
  FlushAck = 37,
  Nack = 38,
  ReadRequest = 39,
  ReadReply = 40,
  // Resync data.
  ResyncRequest = 48,
  ResyncData = 49,
  ResyncAck = 50,
  ResyncFlush = 51,
  ResyncFlushAck = 52,
  // Online verify.
  VerifyRequest = 56,
  VerifyReply = 57,
  RepairData = 58,
  RepairAck = 59,
}

/** Outcome codes carried by acks; anything but Ok means the operation failed on the sender's side. */
export const enum WireStatus {
  Ok = 0,
  IoError = 1,
  NoSpace = 2,
  Refused = 3,
}

/** What every message carries: the frame header's volume and request ids. */
export interface Base {
  volumeId: number;
  requestId: number;
}

/** Which end of the link a Hello comes from (the dial/accept role is fixed by configuration). */
export const enum LinkRole {
  Dialer = 1,
  Acceptor = 2,
}

/** Bits of a Hello's flags byte. */
export const enum HelloFlags {
  /** The sender asks for frames without tags (benchmarks only; both Hellos must carry it). */
  UntaggedFrames = 1,
}

export interface HelloMessage extends Base {
  type: MessageType.Hello;
  versionMin: number;
  versionMax: number;
  clusterId: Uint8Array;
  nodeId: string;
  nonce: Uint8Array;
  role: LinkRole;
  flags: number;
  /** The dialer's admission tag over the fields above (auth.ts); empty in the acceptor's Hello. */
  admission: Uint8Array;
}
export interface AuthMessage extends Base {
  type: MessageType.Auth;
  mac: Uint8Array;
}
export interface PingMessage extends Base {
  type: MessageType.Ping | MessageType.Pong;
}
export interface GoodbyeMessage extends Base {
  type: MessageType.Goodbye;
  reason: string;
}
export interface PeerRequestMessage extends Base {
  type: MessageType.PeerRequest;
  payload: Uint8Array;
}
export interface PeerReplyMessage extends Base {
  type: MessageType.PeerReply;
  /** False: the receiving daemon could not handle the request (no handler); payload says why. */
  ok: boolean;
  payload: Uint8Array;
}
export interface QuorumLinkMessage extends Base {
  type: MessageType.Quorum;
  payload: Uint8Array;
}
export interface VolumeHelloMessage extends Base {
  type: MessageType.VolumeHello;
  seq: number;
  sizeBytes: number;
  granuleBytes: number;
  generations: Generations;
  dataState: DataState;
  mayWrite: boolean;
  bitsSet: number;
  /** The sender asks the deciding node for a new decision (false: it only reports its new state). */
  redecide: boolean;
}
export interface VolumeDecisionMessage extends Base {
  type: MessageType.VolumeDecision;
  /** The follower hello the decision answers; a follower that has sent a newer one ignores it. */
  followerHelloSeq: number;
  round: number;
  kind: DecisionKind;
  /** Resync: whether the decider (sender) is the source. */
  deciderIsSource: boolean;
  /** Resync: whether the decider drives the chunks (holds the range locks). */
  deciderLeads: boolean;
  full: boolean;
  /** The verdict applies an operator's split-brain resolution. */
  byOperator: boolean;
  reason: string;
}
export interface EmptyVolumeMessage extends Base {
  type: MessageType.VolumeUnknown | MessageType.VolumeClosed | MessageType.Flush;
}
export interface BitmapRunsMessage extends Base {
  type: MessageType.BitmapRuns | MessageType.ResyncProgress;
  round: number;
  runs: BitRun[];
}
export interface RoundMessage extends Base {
  type: MessageType.BitmapDone | MessageType.ResyncReady | MessageType.ResyncFlush;
  round: number;
}
export interface ResyncCompleteMessage extends Base {
  type: MessageType.ResyncComplete | MessageType.ResyncCompleteAck;
  round: number;
  /** The source's current generation, which the target adopts. */
  sourceCurrent: bigint;
}
export interface SplitBrainResolveMessage extends Base {
  type: MessageType.SplitBrainResolve;
  /** True when the sender keeps its data and the receiver's changes are discarded. */
  senderKeeps: boolean;
}
export interface WriteMessage extends Base {
  type: MessageType.Write;
  offset: number;
  fua: boolean;
  data: Payload;
}
export interface TrimMessage extends Base {
  type: MessageType.Trim | MessageType.Zero;
  offset: number;
  length: number;
  fua: boolean;
  noHole: boolean;
}
export interface StatusMessage extends Base {
  type: MessageType.WriteAck | MessageType.FlushAck | MessageType.RepairAck;
  status: WireStatus;
}
export interface NackMessage extends Base {
  type: MessageType.Nack;
  /** Type of the frame whose payload failed its checksum. */
  corruptType: number;
}
export interface ReadRequestMessage extends Base {
  type: MessageType.ReadRequest;
  offset: number;
  length: number;
}
export interface ReadReplyMessage extends Base {
  type: MessageType.ReadReply;
  status: WireStatus;
  data: Payload;
}
export interface ResyncRequestMessage extends Base {
  type: MessageType.ResyncRequest | MessageType.VerifyRequest;
  round: number;
  offset: number;
  length: number;
}
export interface ResyncDataMessage extends Base {
  type: MessageType.ResyncData | MessageType.RepairData;
  round: number;
  offset: number;
  /** Length of the range; when `zero` is set the range reads as zeroes and `data` is empty. */
  length: number;
  zero: boolean;
  status: WireStatus;
  data: Payload;
}
export interface ResyncAckMessage extends Base {
  type: MessageType.ResyncAck | MessageType.ResyncFlushAck;
  round: number;
  offset: number;
  status: WireStatus;
}
export interface VerifyReplyMessage extends Base {
  type: MessageType.VerifyReply;
  round: number;
  offset: number;
  status: WireStatus;
  crc: number;
}

export type Message =
  | HelloMessage
  | AuthMessage
  | PingMessage
  | GoodbyeMessage
  | PeerRequestMessage
  | PeerReplyMessage
  | QuorumLinkMessage
  | VolumeHelloMessage
  | VolumeDecisionMessage
  | EmptyVolumeMessage
  | BitmapRunsMessage
  | RoundMessage
  | ResyncCompleteMessage
  | SplitBrainResolveMessage
  | WriteMessage
  | TrimMessage
  | StatusMessage
  | NackMessage
  | ReadRequestMessage
  | ReadReplyMessage
  | ResyncRequestMessage
  | ResyncDataMessage
  | ResyncAckMessage
  | VerifyReplyMessage;

/**
 * A frame whose header checked out; `payloadIntact` is false when the payload failed its CRC. A
 * tagged frame's payload is not checked here (its tag covers it, and version 3 sends no CRC for
 * it): `payloadIntact` is true and the frame must be opened (auth.ts) before it is acted on.
 */
export interface Frame {
  type: number;
  volumeId: number;
  requestId: number;
  /** Pieces only from a Framer told to keep large payloads in pieces. */
  payload: Payload;
  payloadIntact: boolean;
  /** The 32 header bytes as received (what a tag covers, with the payload). */
  header: Uint8Array;
  /** The tag after the payload when the frame is flagged Tagged. */
  tag: Uint8Array | undefined;
}

export const nodeIdBytesMax = 64;
export const clusterIdBytes = 16;
export const macBytes = 32;
/** Largest admission tag a Hello may carry (HMAC-SHA256 is 32 bytes). */
export const admissionBytesMax = 64;
/** Largest reason text a Nack or Goodbye carries. */
export const reasonBytesMax = 512;

