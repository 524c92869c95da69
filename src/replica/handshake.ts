// One connection's authentication handshake, as a state machine with a transition table
// (CONVENTIONS.md §11). The dial/accept role is fixed by configuration; the exchange is
//
//   dialer                                              acceptor
//     Hello(role dialer, versions, cluster, name, nonce D, flags, admission tag) ──▶
//                                                       checks role, cluster, name, version, the
//                                                       admission tag and that nonce D is new
//     ◀── Hello(role acceptor, versions, cluster, name, nonce A, flags)
//     Auth(dialer proof over the transcript) ──▶
//                                                       checks the dialer's proof, and only then
//     ◀── Auth(acceptor proof over the transcript and the dialer's proof)
//   checks the acceptor's proof
//   both: session keys from the transcript; every later frame is tagged (auth.ts)
//
// The acceptor says nothing until a correctly signed Hello arrived and proves nothing until the
// dialer proved itself over both nonces, so neither side ever produces a proof someone else chose
// the input of (the reflection of issue #8 is impossible), and a relay that forwards the exchange
// learns no key. Pure: messages in, messages out; the nonce comes from the caller's Random and the
// replay memory of dialer nonces is the caller's (it outlives one connection).
import { assert } from "../common/assert.ts";
import { acceptorProof, admissionTag, dialerProof, FrameOpener, FrameSealer, sessionKeys, transcriptHash, verifyMac } from "./auth.ts";
import { frameHeaderBytes, type HelloMessage, HelloFlags, joinParts, encodeMessage, LinkRole, type Message, MessageType, negotiateVersion, protocolVersionMax, protocolVersionMin } from "./wire.ts";

export type ConnectRole = "dial" | "accept";

/** Why a handshake was refused: stable codes for events, logs and tests (docs/security.md). */
export type RefusalCode =
  /** This node dials; it accepts no connection. */
  | "inbound-on-dialer"
  /** Too many connections in their handshake: the oldest of the busiest source made room. */
  | "evicted"
  /** A newer correctly signed Hello took this handshake's place. */
  | "superseded"
  | "handshake-timeout"
  /** Bytes that are not frames, a failed checksum, an undecodable message, an old protocol. */
  | "malformed"
  /** A message other than the next one of the handshake. */
  | "unexpected-message"
  | "wrong-role"
  | "wrong-cluster"
  | "wrong-name"
  | "version"
  /** The dialer's Hello is not signed with this pair's secret. */
  | "wrong-secret"
  /** A Hello whose nonce this node has seen before: a recording played back. */
  | "replayed-hello"
  /** A proof over the transcript does not check: a replayed or relayed Hello, an altered handshake, or a wrong secret. */
  | "proof-failed"
  /** One side asked for untagged frames (benchmarks) and the other did not. */
  | "frame-authentication-mismatch"
  /** The peer closed our connection during the handshake: it refused us. */
  | "closed-by-peer";

export interface HandshakeIdentity {
  nodeId: string;
  peerNodeId: string;
  clusterId: Uint8Array;
  secret: Uint8Array;
  /** Ask for untagged frames (benchmarks only; both sides must ask). */
  untaggedFrames: boolean;
}

/** What an established connection authenticates its frames with. */
export interface LinkSession {
  version: number;
  sealer: FrameSealer;
  opener: FrameOpener;
  /** False only when both sides asked for untagged frames. */
  tagged: boolean;
}

export type HandshakePhase =
  /** Acceptor: connection accepted, nothing received yet (an unidentified connection). */
  | { kind: "awaitingDialerHello" }
  /** Dialer: our Hello is sent. */
  | { kind: "awaitingAcceptorHello"; ownHelloPayload: Uint8Array }
  /** Acceptor: a correctly signed Hello arrived and ours is sent (an admitted connection). */
  | { kind: "awaitingDialerProof"; transcript: Uint8Array; version: number; untagged: boolean }
  /** Dialer: our proof is sent. */
  | { kind: "awaitingAcceptorProof"; transcript: Uint8Array; proof: Uint8Array; version: number; untagged: boolean }
  | { kind: "established" }
  | { kind: "refused" };

const transitions: Record<HandshakePhase["kind"], readonly HandshakePhase["kind"][]> = {
  awaitingDialerHello: ["awaitingDialerProof", "refused"],
  awaitingAcceptorHello: ["awaitingAcceptorProof", "refused"],
  awaitingDialerProof: ["established", "refused"],
  awaitingAcceptorProof: ["established", "refused"],
  established: [],
  refused: [],
};

export type HandshakeStep =
  | { kind: "continue"; send: Message[]; admitted: boolean }
  | { kind: "established"; send: Message[]; session: LinkSession }
  /** `claimsPeer`: the connection had named itself as our peer (its failure concerns the real link). */
  | { kind: "refused"; code: RefusalCode; reason: string; claimsPeer: boolean };

function helloPayload(hello: HelloMessage): Uint8Array {
  return joinParts(encodeMessage(hello)).subarray(frameHeaderBytes);
}

function sameBytes(left: Uint8Array, right: Uint8Array): boolean {
  return left.length === right.length && left.every((byte, index) => byte === right[index]);
}

export class Handshake {
  private phaseValue: HandshakePhase;
  private readonly opening: Message[];
  private claimsPeer = false;

  /**
   * `nonce`: fresh random bytes for this connection. `freshDialerNonce`: the acceptor's replay
   * memory; true (and remembered) when the nonce was never seen.
   */
  constructor(
    readonly role: ConnectRole,
    private readonly identity: HandshakeIdentity,
    private readonly nonce: Uint8Array,
    private readonly freshDialerNonce: (nonce: Uint8Array) => boolean,
  ) {
    if (role === "accept") {
      this.phaseValue = { kind: "awaitingDialerHello" };
      this.opening = [];
    } else {
      const hello = this.ownHello(LinkRole.Dialer);
      this.phaseValue = { kind: "awaitingAcceptorHello", ownHelloPayload: helloPayload(hello) };
      this.opening = [hello];
    }
  }

  get phase(): HandshakePhase {
    return this.phaseValue;
  }

  private move(next: HandshakePhase): void {
    assert(transitions[this.phaseValue.kind].includes(next.kind), `handshake cannot move from ${this.phaseValue.kind} to ${next.kind}`);
    this.phaseValue = next;
  }

  private refuse(code: RefusalCode, reason: string): HandshakeStep {
    this.move({ kind: "refused" });
    return { kind: "refused", code, reason, claimsPeer: this.claimsPeer };
  }

  private ownHello(role: LinkRole): HelloMessage {
    const hello: HelloMessage = {
      type: MessageType.Hello,
      volumeId: 0,
      requestId: 0,
      versionMin: protocolVersionMin,
      versionMax: protocolVersionMax,
      clusterId: this.identity.clusterId,
      nodeId: this.identity.nodeId,
      nonce: this.nonce,
      role,
      flags: this.identity.untaggedFrames ? HelloFlags.UntaggedFrames : 0,
      admission: new Uint8Array(0),
    };
    if (role === LinkRole.Dialer) hello.admission = admissionTag(this.identity.secret, hello);
    return hello;
  }

  /** The messages to send when the connection opens: the dialer's Hello; nothing from the acceptor. */
  start(): Message[] {
    return this.opening;
  }

  /** A decoded handshake message and its payload bytes as received (Hellos enter the transcript as sent). */
  receive(message: Message, payload: Uint8Array): HandshakeStep {
    const phase = this.phaseValue;
    switch (phase.kind) {
      case "awaitingDialerHello":
        if (message.type !== MessageType.Hello) return this.refuse("unexpected-message", `message type ${message.type} instead of the dialer's Hello`);
        return this.dialerHello(message, payload);
      case "awaitingAcceptorHello":
        if (message.type !== MessageType.Hello) return this.refuse("unexpected-message", `message type ${message.type} instead of the acceptor's Hello`);
        return this.acceptorHello(message, payload, phase.ownHelloPayload);
      case "awaitingDialerProof": {
        if (message.type !== MessageType.Auth) return this.refuse("unexpected-message", `message type ${message.type} instead of the dialer's proof`);
        const expected = dialerProof(this.identity.secret, phase.transcript);
        if (!verifyMac(expected, message.mac)) return this.refuse("proof-failed", `the dialer's proof does not check: its Hello was signed with our secret but it cannot prove this connection (a replayed or relayed Hello, or an altered handshake)`);
        const keys = sessionKeys(this.identity.secret, phase.transcript);
        this.move({ kind: "established" });
        return {
          kind: "established",
          send: [{ type: MessageType.Auth, volumeId: 0, requestId: 0, mac: acceptorProof(this.identity.secret, phase.transcript, message.mac) }],
          session: this.session(phase.version, phase.untagged, keys.acceptorToDialer, keys.dialerToAcceptor),
        };
      }
      case "awaitingAcceptorProof": {
        if (message.type !== MessageType.Auth) return this.refuse("unexpected-message", `message type ${message.type} instead of the acceptor's proof`);
        const expected = acceptorProof(this.identity.secret, phase.transcript, phase.proof);
        if (!verifyMac(expected, message.mac)) return this.refuse("proof-failed", `the acceptor's proof does not check: it does not know the pairing secret, or the handshake was altered on the way`);
        const keys = sessionKeys(this.identity.secret, phase.transcript);
        this.move({ kind: "established" });
        return { kind: "established", send: [], session: this.session(phase.version, phase.untagged, keys.dialerToAcceptor, keys.acceptorToDialer) };
      }
      case "established":
      case "refused":
        assert(false, `no handshake message is taken in phase ${phase.kind}`);
    }
  }

  private session(version: number, untagged: boolean, sendKey: Uint8Array, receiveKey: Uint8Array): LinkSession {
    return { version, sealer: new FrameSealer(untagged ? undefined : sendKey, version), opener: new FrameOpener(untagged ? undefined : receiveKey), tagged: !untagged };
  }

  /** Checks common to both Hellos; returns a refusal or the agreed version and frame mode. */
  private checkHello(hello: HelloMessage, expectedRole: LinkRole): HandshakeStep | { version: number; untagged: boolean } {
    const roleName = (role: LinkRole) => (role === LinkRole.Dialer ? "dialer" : "acceptor");
    if (hello.role !== expectedRole) return this.refuse("wrong-role", `a Hello from a ${roleName(hello.role)} where the ${roleName(expectedRole)} was expected (reflected, or both nodes configured to ${this.role})`);
    if (!sameBytes(hello.clusterId, this.identity.clusterId)) return this.refuse("wrong-cluster", `a Hello from another cluster`);
    if (hello.nodeId === this.identity.nodeId) return this.refuse("wrong-name", `the Hello claims this node's own name "${hello.nodeId}"`);
    if (hello.nodeId !== this.identity.peerNodeId) return this.refuse("wrong-name", `a Hello from "${hello.nodeId}" (paired with "${this.identity.peerNodeId}")`);
    this.claimsPeer = true;
    const version = negotiateVersion(protocolVersionMin, protocolVersionMax, hello.versionMin, hello.versionMax);
    if (version === undefined) return this.refuse("version", `no common protocol version (ours ${protocolVersionMin}..${protocolVersionMax}, peer ${hello.versionMin}..${hello.versionMax})`);
    return { version, untagged: (hello.flags & HelloFlags.UntaggedFrames) !== 0 };
  }

  private untaggedMismatch(peerUntagged: boolean): HandshakeStep | undefined {
    if (peerUntagged === this.identity.untaggedFrames) return undefined;
    return this.refuse("frame-authentication-mismatch", peerUntagged ? "the peer asks for untagged frames (a benchmark setting) and this node does not" : "this node asks for untagged frames (a benchmark setting) and the peer does not");
  }

  private dialerHello(hello: HelloMessage, payload: Uint8Array): HandshakeStep {
    const checked = this.checkHello(hello, LinkRole.Dialer);
    if ("kind" in checked) return checked;
    if (!verifyMac(admissionTag(this.identity.secret, hello), hello.admission)) return this.refuse("wrong-secret", `the dialer's Hello is not signed with this pair's secret (wrong pairing secret, or not the peer)`);
    if (!this.freshDialerNonce(hello.nonce)) return this.refuse("replayed-hello", `a Hello this node has seen before (a recording played back)`);
    const mismatch = this.untaggedMismatch(checked.untagged);
    if (mismatch) return mismatch;
    const own = this.ownHello(LinkRole.Acceptor);
    const transcript = transcriptHash(payload, helloPayload(own), checked.version);
    this.move({ kind: "awaitingDialerProof", transcript, version: checked.version, untagged: checked.untagged });
    return { kind: "continue", send: [own], admitted: true };
  }

  private acceptorHello(hello: HelloMessage, payload: Uint8Array, ownHelloPayload: Uint8Array): HandshakeStep {
    const checked = this.checkHello(hello, LinkRole.Acceptor);
    if ("kind" in checked) return checked;
    if (sameBytes(hello.nonce, this.nonce)) return this.refuse("replayed-hello", "the acceptor's Hello carries this node's own nonce (reflected)");
    const mismatch = this.untaggedMismatch(checked.untagged);
    if (mismatch) return mismatch;
    const transcript = transcriptHash(ownHelloPayload, payload, checked.version);
    const proof = dialerProof(this.identity.secret, transcript);
    this.move({ kind: "awaitingAcceptorProof", transcript, proof, version: checked.version, untagged: checked.untagged });
    return { kind: "continue", send: [{ type: MessageType.Auth, volumeId: 0, requestId: 0, mac: proof }], admitted: false };
  }
}
