// The replication core of one node: the link to the peer (connections, authentication, keepalive,
// redial with backoff) and the volume cores it carries. One link carries every volume; frames name
// their volume and are routed to its VolumeCore. Pure (CONVENTIONS.md §1): `step(event)` returns the
// actions to perform; time is the count of ticks the driver delivered; randomness (nonces,
// generation ids, backoff jitter) comes from the injected Random.
//
// Link rules (docs/security.md): one node dials and the other accepts, fixed by configuration; the
// dialer refuses every inbound connection. Each connection runs the handshake of handshake.ts; until
// it is established only Hello and Auth are accepted, frames are limited to 4 KiB and untagged, and
// anything else closes the connection with a report. After it, every frame in both directions is
// tagged with the session's keys and an implicit sequence number; a frame whose tag does not check
// is never acted on and closes the connection. The acceptor keeps room for its peer: unidentified
// connections (no signed Hello yet) are bounded per source and in total, and a new one evicts the
// oldest of the busiest source instead of being refused; a connection with a correctly signed Hello
// can only be pushed out by a newer one. Every handshake times out. Refusals are reported through a
// rate limit that summarises what it held back. A newly authenticated connection replaces an older
// one (the peer restarted). No bytes for linkTimeout: the link is lost. Idle: Pings keep it proven.
import { assert } from "../common/assert.ts";
import { joinPayload } from "../common/bytes.ts";
import type { ReplicaConfig } from "./config.ts";
import { type ConnectRole, Handshake, type HandshakeStep, type LinkSession, type RefusalCode } from "./handshake.ts";
import type { LoadedMetadata } from "./metadata-format.ts";
import { ReportLimiter } from "./report-limiter.ts";
import type { CoreAction, CoreEvent, RemoteAddress, ReplicaReport, VolumeStatus } from "./types.ts";
import { VolumeCore, type VolumeHost } from "./volume/core.ts";
import { clusterIdBytes, DecodeError, decodeMessage, encodeMessage, type Frame, Framer, type Message, MessageType, WireStatus } from "./wire.ts";
import { replicaNonceBytes } from "../constants.ts";

/** Source of randomness, injected (the simulator's is seeded). */
export interface Random {
  fill(bytes: Uint8Array): void;
}

export interface NodeIdentity {
  nodeId: string;
  peerNodeId: string;
  /** 16 bytes naming the pair; both nodes must agree. */
  clusterId: Uint8Array;
  /** The pairing secret set at install. */
  secret: Uint8Array;
  /** Whether this node dials its peer or accepts its connection (the peer must have the other). */
  connect: ConnectRole;
  /** Benchmarks only: ask for untagged frames (the peer must ask too, see docs/security.md). */
  untaggedFrames?: boolean;
}

const handshakeFrameBytesMax = 4096;

type ConnectionState = { kind: "handshake"; handshake: Handshake } | { kind: "established"; session: LinkSession };

interface Connection {
  id: number;
  dialled: boolean;
  remote: RemoteAddress;
  framer: Framer;
  state: ConnectionState;
  openedTick: number;
  lastReceivedTick: number;
  lastSentTick: number;
}

export interface LinkStatus {
  state: "up" | "down" | "connecting";
  peer: string;
  /** This node's half of the link: it dials the peer, or accepts the peer's connection. */
  role: ConnectRole;
  version: number | undefined;
  /** False only when both nodes asked for untagged frames (benchmarks). */
  framesTagged: boolean | undefined;
  sinceTick: number;
  connectionsPending: number;
  /** Connections refused or handshakes failed since the node started (reported or not). */
  refusedConnections: number;
  lastError: string | undefined;
}

function formatRemote(remote: RemoteAddress): string {
  return remote.host.includes(":") ? `[${remote.host}]:${remote.port}` : `${remote.host}:${remote.port}`;
}

export class NodeCore {
  private tickCount = 0;
  private out: CoreAction[] = [];
  private readonly connections = new Map<number, Connection>();
  private active: Connection | undefined;
  private readonly volumes = new Map<number, VolumeCore>();
  private readonly dialer: boolean;
  /** Dialer nonces seen by this acceptor, oldest first (a replayed Hello is refused). */
  private readonly recentDialerNonces = new Set<string>();
  private readonly refusalLimiter: ReportLimiter;
  private refusedConnections = 0;
  private dialing = false;
  private dialStartedTick = 0;
  private nextDialTick = 0;
  private backoffTicks: number;
  private stopped = false;
  private linkSinceTick = 0;
  private lastError: string | undefined;
  private readonly volumeHost: VolumeHost;
  /** Our control-plane requests waiting for the peer's reply: request id → client request. */
  private readonly peerRequests = new Map<number, number>();
  private nextPeerRequestId = 1;
  /** The peer's requests our daemon is answering: call id → (connection, the peer's request id). */
  private readonly peerCalls = new Map<number, { connection: Connection; requestId: number }>();
  private nextPeerCall = 1;

  constructor(
    readonly identity: NodeIdentity,
    readonly config: ReplicaConfig,
    private readonly random: Random,
  ) {
    assert(identity.nodeId !== identity.peerNodeId, "the two nodes have different names");
    assert(identity.clusterId.length === clusterIdBytes, "cluster ids are 16 bytes");
    this.dialer = identity.connect === "dial";
    this.refusalLimiter = new ReportLimiter(config.refusalReportsPerWindowMax, config.refusalReportsPerCodeMax, config.refusalReportWindowTicks);
    this.backoffTicks = config.reconnectDelayTicksMin;
    this.volumeHost = {
      nodeId: identity.nodeId,
      peerNodeId: identity.peerNodeId,
      config,
      now: () => this.tickCount,
      send: (message) => this.send(message),
      emit: (action) => this.out.push(action),
      randomId: () => this.randomId(),
    };
  }

  get now(): number {
    return this.tickCount;
  }

  /** Feed one event; returns the actions to perform, in order. */
  step(event: CoreEvent): CoreAction[] {
    this.out = [];
    this.handle(event);
    return this.out;
  }

  /** Attach a volume whose metadata was read (see metadata-format.ts loadMetadata). */
  attachVolume(volumeId: number, loaded: LoadedMetadata): CoreAction[] {
    this.out = [];
    assert(!this.volumes.has(volumeId), `volume ${volumeId} attached once`);
    const volume = new VolumeCore(this.volumeHost, volumeId, loaded);
    volume.onProtocolError = (reason) => this.dropActive(`protocol error: ${reason}`);
    this.volumes.set(volumeId, volume);
    volume.open(loaded);
    if (this.active) volume.linkUpEvent();
    return this.out;
  }

  /** Forget a volume after its close completed. */
  detachVolume(volumeId: number): void {
    this.volumes.delete(volumeId);
  }

  hasVolume(volumeId: number): boolean {
    return this.volumes.has(volumeId);
  }

  volumeStatus(volumeId: number): VolumeStatus | undefined {
    return this.volumes.get(volumeId)?.status();
  }

  /** A volume's role as its status says it, without the rest of the status. */
  volumeRole(volumeId: number): VolumeStatus["role"] | undefined {
    return this.volumes.get(volumeId)?.role();
  }

  /** A client read of the volume's range would be served from the local replica at once (a query: nothing changes). */
  readsLocally(volumeId: number, offset: number, length: number): boolean {
    return this.volumes.get(volumeId)?.readsLocally(offset, length) ?? false;
  }

  /**
   * A count raised whenever a failed local flush may have dropped regions of the volume: a read of
   * the local replica that readsLocally allowed, and that finishes after the count moved, may hold
   * what the flush evicted and goes through the core instead (a pure query).
   */
  localDrops(volumeId: number): number {
    return this.volumes.get(volumeId)?.drops ?? -1;
  }

  /** A volume's IO and peer requests in flight, by kind (for tests and diagnostics). */
  volumePending(volumeId: number): { io: Record<string, number>; requests: Record<string, number> } | undefined {
    return this.volumes.get(volumeId)?.pending();
  }

  linkStatus(): LinkStatus {
    const session = this.active?.state.kind === "established" ? this.active.state.session : undefined;
    return {
      state: this.active ? "up" : this.connections.size > 0 || this.dialing ? "connecting" : "down",
      peer: this.identity.peerNodeId,
      role: this.identity.connect,
      version: session?.version,
      framesTagged: session?.tagged,
      sinceTick: this.linkSinceTick,
      connectionsPending: [...this.connections.values()].filter((connection) => connection.state.kind === "handshake").length,
      refusedConnections: this.refusedConnections,
      lastError: this.lastError,
    };
  }

  private randomId(): bigint {
    const bytes = new Uint8Array(8);
    for (;;) {
      this.random.fill(bytes);
      const id = new DataView(bytes.buffer).getBigUint64(0, true);
      if (id !== 0n) return id;
    }
  }

  private report(report: ReplicaReport): void {
    this.out.push({ kind: "report", report });
  }

  private handle(event: CoreEvent): void {
    switch (event.kind) {
      case "tick":
        return this.tick();
      case "connected":
        return this.connected(event.connection, event.dialled, event.remote);
      case "dialFailed":
        this.dialing = false;
        this.lastError = event.reason;
        this.scheduleRedial();
        return;
      case "data":
        return this.data(event.connection, event.bytes);
      case "closed": {
        const connection = this.connections.get(event.connection);
        if (!connection) return; // we closed it already
        if (connection.dialled && connection.state.kind === "handshake") {
          // The acceptor refused us: it says nothing to a dialer it does not trust, so this is all we learn.
          this.refusal(connection, "closed-by-peer", `${this.identity.peerNodeId} closed the connection during the handshake (${event.reason}): unless the network broke, it refused this node; its events say why (wrong secret, cluster, name or role?)`, true);
        }
        this.forget(connection, event.reason);
        return;
      }
      case "clientRead":
        return this.volumeOrFail(event.volumeId, event.request)?.clientRequest("read", event.request, event.offset, event.target.length, { target: event.target, localError: event.localError });
      case "clientWrite":
        return this.volumeOrFail(event.volumeId, event.request)?.clientRequest("write", event.request, event.offset, event.data.length, { data: event.data, fua: event.fua, stable: event.stable === true });
      case "clientFlush":
        return this.volumeOrFail(event.volumeId, event.request)?.clientRequest("flush", event.request, 0, 0, {});
      case "clientTrim":
        return this.volumeOrFail(event.volumeId, event.request)?.clientRequest("trim", event.request, event.offset, event.length, { fua: event.fua });
      case "clientZero":
        return this.volumeOrFail(event.volumeId, event.request)?.clientRequest("zero", event.request, event.offset, event.length, { fua: event.fua, noHole: event.noHole });
      case "storageDone":
        return this.volumes.get(event.volumeId)?.storageDone(event.io, event.error);
      case "metadataDone":
        return this.volumes.get(event.volumeId)?.metadataDone(event.io, event.error);
      case "grant":
        return this.volumes.get(event.volumeId)?.setGrant(event.grant);
      case "verify":
        return this.volumeOrFail(event.volumeId, event.request)?.startVerify(event.request, event.repair);
      case "resolveSplitBrain":
        return this.volumeOrFail(event.volumeId, event.request)?.resolveSplitBrain(event.request, event.keep);
      case "closeVolume":
        return this.volumeOrFail(event.volumeId, event.request)?.close(event.request);
      case "peerRequest": {
        if (!this.active) {
          this.out.push({ kind: "complete", request: event.request, error: "ESHUTDOWN", message: `the link to ${this.identity.peerNodeId} is down` });
          return;
        }
        const requestId = this.nextPeerRequestId++;
        this.peerRequests.set(requestId, event.request);
        this.sendOn(this.active, { type: MessageType.PeerRequest, volumeId: 0, requestId, payload: event.payload });
        return;
      }
      case "peerCallReply": {
        const call = this.peerCalls.get(event.call);
        if (!call) return;
        this.peerCalls.delete(event.call);
        // Answer only on the connection the request came on; a newer link means the asker gave up.
        if (this.active === call.connection) this.sendOn(call.connection, { type: MessageType.PeerReply, volumeId: 0, requestId: call.requestId, ok: event.ok, payload: event.payload });
        return;
      }
      case "quorumSend":
        if (this.active) this.sendOn(this.active, { type: MessageType.Quorum, volumeId: 0, requestId: 0, payload: event.payload });
        return;
      case "dropLink":
        return this.dropActive(event.reason);
      case "shutdown":
        this.stopped = true;
        if (this.active) this.send({ type: MessageType.Goodbye, volumeId: 0, requestId: 0, reason: "node shutting down" });
        for (const connection of [...this.connections.values()]) this.closeConnection(connection, "node shutting down");
        return;
    }
  }

  private volumeOrFail(volumeId: number, request: number): VolumeCore | undefined {
    const volume = this.volumes.get(volumeId);
    if (!volume) this.out.push({ kind: "complete", request, error: "EINVAL", message: `no volume ${volumeId} on this node` });
    return volume;
  }

  // ---------------------------------------------------------------- link

  private tick(): void {
    this.tickCount++;
    const now = this.tickCount;
    const summary = this.refusalLimiter.roll(now);
    if (summary) this.report({ kind: "reportsSuppressed", count: summary.count, byCode: summary.byCode, windowMs: summary.windowTicks * this.config.tickMs });
    for (const connection of [...this.connections.values()]) {
      if (connection.state.kind === "handshake") {
        if (now - connection.openedTick >= this.config.handshakeTimeoutTicks) {
          this.refuse(connection, "handshake-timeout", `no complete handshake within ${this.config.handshakeTimeoutTicks * this.config.tickMs} ms (phase ${connection.state.handshake.phase.kind})`);
        }
        continue;
      }
      if (now - connection.lastReceivedTick >= this.config.linkTimeoutTicks) {
        this.closeConnection(connection, `nothing received from the peer for ${this.config.linkTimeoutTicks * this.config.tickMs} ms`);
        continue;
      }
      if (now - connection.lastSentTick >= this.config.keepaliveIntervalTicks) this.sendOn(connection, { type: MessageType.Ping, volumeId: 0, requestId: 0 });
    }
    if (this.dialing && now - this.dialStartedTick >= this.config.handshakeTimeoutTicks) {
      // The transport never answered the dial: give up on it and try again later.
      this.dialing = false;
      this.lastError = "dialling the peer timed out";
      this.scheduleRedial();
    }
    if (this.dialer && !this.stopped && !this.active && !this.dialing && now >= this.nextDialTick && ![...this.connections.values()].some((connection) => connection.dialled)) {
      this.dialing = true;
      this.dialStartedTick = now;
      this.out.push({ kind: "dial" });
    }
    for (const volume of this.volumes.values()) volume.tick();
  }

  /**
   * The first tick after now at which `tick` may act (send, report, dial, ask for IO), if no other
   * event comes first. The ticks before it change nothing anyone could see, so a driver may let them
   * pass unfed and sleep until then (it feeds them before the next event, and checks that they act
   * on nothing). Infinity: no tick will act until some other event.
   */
  nextActionTick(): number {
    const config = this.config;
    let at = this.refusalLimiter.summaryDueTick ?? Infinity;
    let dialledPending = false;
    for (const connection of this.connections.values()) {
      if (connection.dialled) dialledPending = true;
      if (connection.state.kind === "handshake") {
        at = Math.min(at, connection.openedTick + config.handshakeTimeoutTicks);
        continue;
      }
      at = Math.min(at, connection.lastReceivedTick + config.linkTimeoutTicks, connection.lastSentTick + config.keepaliveIntervalTicks);
    }
    if (this.dialing) at = Math.min(at, this.dialStartedTick + config.handshakeTimeoutTicks);
    else if (this.dialer && !this.stopped && !this.active && !dialledPending) at = Math.min(at, this.nextDialTick);
    for (const volume of this.volumes.values()) at = Math.min(at, volume.nextActionTick(this.tickCount));
    return Math.max(at, this.tickCount + 1);
  }

  private scheduleRedial(): void {
    const jitter = new Uint8Array(1);
    this.random.fill(jitter);
    const delay = Math.max(1, Math.round(this.backoffTicks * (0.5 + jitter[0]! / 512)));
    this.nextDialTick = this.tickCount + delay;
    this.backoffTicks = Math.min(this.backoffTicks * 2, this.config.reconnectDelayTicksMax);
  }

  private connected(id: number, dialled: boolean, remote: RemoteAddress): void {
    if (dialled) this.dialing = false;
    if (this.stopped) {
      this.out.push({ kind: "close", connection: id, reason: "node shutting down" });
      return;
    }
    if (!dialled && this.dialer) {
      // Nothing is said to it: a dialer proves itself only on connections it made.
      this.out.push({ kind: "close", connection: id, reason: "this node dials its peer" });
      this.refusalReport(remote, "inbound-on-dialer", `connection from ${formatRemote(remote)} refused: this node dials ${this.identity.peerNodeId} and accepts no connection (peer.connect = "dial")`);
      return;
    }
    assert(dialled || !this.dialer, "only a dialer's own dials come back as dialled");
    if (!dialled) this.makeRoomFor(remote);
    const nonce = new Uint8Array(replicaNonceBytes);
    this.random.fill(nonce);
    const handshake = new Handshake(this.identity.connect, { ...this.identity, untaggedFrames: this.identity.untaggedFrames === true }, nonce, (dialerNonce) => this.freshDialerNonce(dialerNonce));
    const connection: Connection = {
      id,
      dialled,
      remote,
      framer: new Framer(handshakeFrameBytesMax, this.config.framePiecesBytesMin),
      state: { kind: "handshake", handshake },
      openedTick: this.tickCount,
      lastReceivedTick: this.tickCount,
      lastSentTick: this.tickCount,
    };
    this.connections.set(id, connection);
    for (const message of handshake.start()) this.sendOn(connection, message);
  }

  /** Unidentified connections (accepted, no signed Hello yet), oldest first. */
  private unidentified(): Connection[] {
    return [...this.connections.values()].filter((connection) => connection.state.kind === "handshake" && connection.state.handshake.phase.kind === "awaitingDialerHello");
  }

  /**
   * Before accepting one more connection from `remote`: when its source or all sources are at their
   * bound of unidentified connections, evict the oldest of that source, or of the source holding the
   * most. A stranger's flood thus only pushes out its own connections (or, sharing an address with
   * the peer, connections that have not shown a signed Hello); the peer's own is never refused.
   */
  private makeRoomFor(remote: RemoteAddress): void {
    const pending = this.unidentified();
    const sameSource = pending.filter((connection) => connection.remote.host === remote.host);
    let victim: Connection | undefined;
    if (sameSource.length >= this.config.pendingConnectionsPerSourceMax) victim = sameSource[0];
    else if (pending.length >= this.config.pendingConnectionsMax) {
      const bySource = new Map<string, Connection[]>();
      for (const connection of pending) bySource.set(connection.remote.host, [...(bySource.get(connection.remote.host) ?? []), connection]);
      victim = [...bySource.values()].sort((left, right) => right.length - left.length)[0]![0];
    }
    if (victim) this.refuse(victim, "evicted", `evicted to make room: ${pending.length} connections without a signed Hello, ${sameSource.length} of them from ${remote.host}`);
  }

  /** Admitted handshakes (a signed Hello) beyond the bound: the oldest give way to the newest. */
  private limitAdmitted(): void {
    const admitted = [...this.connections.values()].filter((connection) => connection.state.kind === "handshake" && connection.state.handshake.phase.kind === "awaitingDialerProof");
    for (const connection of admitted.slice(0, Math.max(0, admitted.length - this.config.admittedConnectionsMax))) {
      this.refuse(connection, "superseded", "a newer connection with a signed Hello took this handshake's place");
    }
  }

  /** Remember a dialer nonce; false when it was seen already (a replayed Hello). */
  private freshDialerNonce(nonce: Uint8Array): boolean {
    let key = "";
    for (const byte of nonce) key += byte.toString(16).padStart(2, "0");
    if (this.recentDialerNonces.has(key)) return false;
    this.recentDialerNonces.add(key);
    if (this.recentDialerNonces.size > this.config.recentDialerNoncesMax) this.recentDialerNonces.delete(this.recentDialerNonces.values().next().value!);
    return true;
  }

  private data(id: number, bytes: Uint8Array): void {
    const connection = this.connections.get(id);
    if (!connection) return;
    connection.lastReceivedTick = this.tickCount;
    connection.framer.push(bytes);
    for (;;) {
      if (this.connections.get(id) !== connection) return; // closed while handling a frame
      let frame: Frame | undefined;
      try {
        frame = connection.framer.next();
      } catch (error) {
        if (!(error instanceof DecodeError)) throw error;
        if (connection.state.kind === "handshake") return this.refuse(connection, "malformed", `malformed frame: ${error.message}`);
        this.report({ kind: "protocolError", reason: `malformed frame from the peer: ${error.message}` });
        return this.closeConnection(connection, `malformed frame: ${error.message}`);
      }
      if (!frame) return;
      if (connection.state.kind === "handshake") this.handshakeFrame(connection, connection.state.handshake, frame);
      else this.linkFrame(connection, connection.state.session, frame);
    }
  }

  private decodeOrClose(connection: Connection, frame: Frame): Message | undefined {
    try {
      return decodeMessage(frame);
    } catch (error) {
      if (!(error instanceof DecodeError)) throw error;
      const reason = `malformed message of type ${frame.type}: ${error.message}`;
      if (connection.state.kind === "handshake") this.refuse(connection, "malformed", reason);
      else {
        this.report({ kind: "protocolError", reason });
        this.closeConnection(connection, reason);
      }
      return undefined;
    }
  }

  private handshakeFrame(connection: Connection, handshake: Handshake, frame: Frame): void {
    if (frame.tag) return this.refuse(connection, "malformed", "a tagged frame before the handshake finished");
    if (!frame.payloadIntact) return this.refuse(connection, "malformed", "handshake frame failed its checksum");
    if (frame.type !== MessageType.Hello && frame.type !== MessageType.Auth) return this.refuse(connection, "unexpected-message", `message type ${frame.type} before authentication`);
    const message = this.decodeOrClose(connection, frame);
    if (!message) return;
    const step: HandshakeStep = handshake.receive(message, joinPayload(frame.payload));
    if (step.kind === "refused") return this.refuse(connection, step.code, step.reason, step.claimsPeer);
    // Sent while the connection is still in its handshake: these frames go untagged.
    for (const reply of step.send) this.sendOn(connection, reply);
    if (step.kind === "continue") {
      if (step.admitted) this.limitAdmitted();
      return;
    }
    connection.state = { kind: "established", session: step.session };
    connection.framer.setFrameBytesMax(this.config.frameBytesMax);
    this.linkUp(connection);
  }

  private linkUp(connection: Connection): void {
    if (this.active && this.active !== connection) this.closeConnection(this.active, "replaced by a newer connection from the peer");
    this.active = connection;
    this.backoffTicks = this.config.reconnectDelayTicksMin;
    this.linkSinceTick = this.tickCount;
    this.lastError = undefined;
    const session = connection.state.kind === "established" ? connection.state.session : undefined;
    assert(session !== undefined, "the link goes up on an established connection");
    this.report({ kind: "linkUp", peer: this.identity.peerNodeId, version: session.version, framesTagged: session.tagged });
    for (const volume of this.volumes.values()) volume.linkUpEvent();
  }

  private linkFrame(connection: Connection, session: LinkSession, frame: Frame): void {
    const opened = session.opener.open(frame);
    if (opened !== "ok") {
      // Not acted on, whatever it says: a forged, replayed, reordered, dropped, altered or spliced frame
      // (or one damaged on the way: a tag cannot tell, and the reconnect resyncs what was in flight).
      const reasons = { missing: "an untagged frame on an authenticated link", unexpected: "a tagged frame on a link that agreed on untagged frames", bad: "a frame whose tag does not check" };
      const reason = `${reasons[opened]} (type ${frame.type}, volume ${frame.volumeId}): closing the connection`;
      const code = `${opened}-tag` as const;
      if (this.admitReport(code)) this.report({ kind: "frameRejected", code, reason, remote: formatRemote(connection.remote) });
      this.lastError = reason;
      return this.closeConnection(connection, reason);
    }
    if (frame.volumeId !== 0) {
      const volume = this.volumes.get(frame.volumeId);
      if (!frame.payloadIntact) {
        if (volume) volume.corruptFrame(frame.type, frame.requestId);
        else this.closeConnection(connection, "corrupt frame for an unknown volume");
        return;
      }
      const message = this.decodeOrClose(connection, frame);
      if (!message) return;
      if (volume) volume.peerMessage(message);
      else this.unknownVolume(message);
      return;
    }
    if (!frame.payloadIntact) return this.closeConnection(connection, `link frame of type ${frame.type} failed its checksum`);
    const message = this.decodeOrClose(connection, frame);
    if (!message) return;
    switch (message.type) {
      case MessageType.Ping:
        this.sendOn(connection, { type: MessageType.Pong, volumeId: 0, requestId: 0 });
        return;
      case MessageType.Pong:
        return;
      case MessageType.Goodbye:
        return this.closeConnection(connection, `the peer said goodbye: ${message.reason}`);
      case MessageType.PeerRequest: {
        const call = this.nextPeerCall++;
        this.peerCalls.set(call, { connection, requestId: message.requestId });
        this.out.push({ kind: "peerCall", call, payload: message.payload });
        return;
      }
      case MessageType.Quorum:
        // Only the current link speaks for the peer's quorum core.
        if (connection === this.active) this.out.push({ kind: "quorumReceived", payload: message.payload });
        return;
      case MessageType.PeerReply: {
        const request = this.peerRequests.get(message.requestId);
        if (request === undefined) return; // answers a request that already failed
        this.peerRequests.delete(message.requestId);
        this.out.push(message.ok ? { kind: "complete", request, error: null, result: message.payload } : { kind: "complete", request, error: "EIO", message: new TextDecoder().decode(message.payload) });
        return;
      }
      default:
        this.report({ kind: "protocolError", reason: `message type ${message.type} without a volume` });
        return this.closeConnection(connection, `message type ${message.type} without a volume`);
    }
  }

  /** The peer talks about a volume this node does not have: say so, and refuse what needs an answer. */
  private unknownVolume(message: Message): void {
    const base = { volumeId: message.volumeId, requestId: message.requestId };
    switch (message.type) {
      case MessageType.VolumeHello:
        return this.send({ type: MessageType.VolumeUnknown, ...base, requestId: 0 });
      case MessageType.Write:
      case MessageType.Trim:
      case MessageType.Zero:
        return this.send({ type: MessageType.WriteAck, ...base, status: WireStatus.Refused });
      case MessageType.Flush:
        return this.send({ type: MessageType.FlushAck, ...base, status: WireStatus.Refused });
      case MessageType.ReadRequest:
        return this.send({ type: MessageType.ReadReply, ...base, status: WireStatus.Refused, data: new Uint8Array(0) });
      case MessageType.VerifyRequest:
        return this.send({ type: MessageType.VerifyReply, ...base, round: message.round, offset: message.offset, status: WireStatus.Refused, crc: 0 });
      case MessageType.ResyncRequest:
        return this.send({ type: MessageType.ResyncData, ...base, round: message.round, offset: message.offset, length: message.length, zero: false, status: WireStatus.Refused, data: new Uint8Array(0) });
      default:
        return; // answers and notices for a volume we closed: nothing to do
    }
  }

  private send(message: Message): void {
    if (this.active) this.sendOn(this.active, message);
  }

  private sendOn(connection: Connection, message: Message): void {
    connection.lastSentTick = this.tickCount;
    if (connection.state.kind !== "established") return void this.out.push({ kind: "send", connection: connection.id, parts: encodeMessage(message) });
    const sealer = connection.state.session.sealer;
    this.out.push({ kind: "send", connection: connection.id, parts: sealer.seal(encodeMessage(message, sealer.mode)) });
  }

  /** Close a connection in its handshake, and report why (rate-limited). */
  private refuse(connection: Connection, code: RefusalCode, reason: string, claimsPeer = false): void {
    this.refusal(connection, code, reason, claimsPeer);
    this.closeConnection(connection, reason);
  }

  /** Count and report a failed handshake; it concerns the real link when we dialled or the other side claimed to be the peer. */
  private refusal(connection: Connection, code: RefusalCode, reason: string, claimsPeer: boolean): void {
    if (connection.dialled || claimsPeer) this.lastError = reason;
    this.refusalReport(connection.remote, code, reason);
  }

  private refusalReport(remote: RemoteAddress, code: RefusalCode, reason: string): void {
    this.refusedConnections++;
    if (this.admitReport(code)) this.report({ kind: "connectionRefused", code, reason, remote: formatRemote(remote) });
  }

  private admitReport(code: string): boolean {
    const summary = this.refusalLimiter.roll(this.tickCount);
    if (summary) this.report({ kind: "reportsSuppressed", count: summary.count, byCode: summary.byCode, windowMs: summary.windowTicks * this.config.tickMs });
    return this.refusalLimiter.admit(code, this.tickCount);
  }

  private dropActive(reason: string): void {
    if (this.active) this.closeConnection(this.active, reason);
  }

  private closeConnection(connection: Connection, reason: string): void {
    if (this.connections.get(connection.id) !== connection) return;
    this.out.push({ kind: "close", connection: connection.id, reason });
    this.forget(connection, reason);
  }

  private forget(connection: Connection, reason: string): void {
    this.connections.delete(connection.id);
    if (this.active === connection) {
      this.active = undefined;
      this.linkSinceTick = this.tickCount;
      this.lastError = reason;
      this.report({ kind: "linkDown", reason });
      for (const volume of this.volumes.values()) volume.linkDownEvent();
      // Control-plane requests in flight will not be answered on this link.
      for (const request of this.peerRequests.values()) this.out.push({ kind: "complete", request, error: "ESHUTDOWN", message: `the link to ${this.identity.peerNodeId} dropped: ${reason}` });
      this.peerRequests.clear();
    }
    if (connection.dialled && this.dialer) this.scheduleRedial();
  }
}
