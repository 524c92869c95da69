// The replication core of one node: the link to the peer (connections, authentication, keepalive,
// redial with backoff) and the volume cores it carries. One link carries every volume; frames name
// their volume and are routed to its VolumeCore. Pure (CONVENTIONS.md §1): `step(event)` returns the
// actions to perform; time is the count of ticks the driver delivered; randomness (nonces,
// generation ids, backoff jitter) comes from the injected Random.
//
// Link rules: the node with the lower name dials, the other accepts (no crossed connections). Each
// side sends a Hello with a fresh nonce and proves the pairing secret with an HMAC over both nonces
// (auth.ts); until then only Hello and Auth are accepted, frames are limited to 4 KiB, and anything
// else closes the connection with a report. A newly authenticated connection replaces an older one
// (the peer restarted). No bytes for linkTimeout: the link is lost. Idle: Pings keep it proven.
import { assert } from "../common/assert.ts";
import { authMac, verifyMac } from "./auth.ts";
import type { ReplicaConfig } from "./config.ts";
import type { LoadedMetadata } from "./metadata-format.ts";
import type { CoreAction, CoreEvent, ReplicaReport, VolumeStatus } from "./types.ts";
import { VolumeCore, type VolumeHost } from "./volume.ts";
import {
  clusterIdBytes,
  DecodeError,
  decodeMessage,
  encodeMessage,
  type Frame,
  Framer,
  type HelloMessage,
  type Message,
  MessageType,
  negotiateVersion,
  protocolVersionMax,
  protocolVersionMin,
  WireStatus,
} from "./wire.ts";
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
}

const handshakeFrameBytesMax = 4096;

interface Connection {
  id: number;
  dialled: boolean;
  framer: Framer;
  localNonce: Uint8Array;
  peerHello: HelloMessage | undefined;
  version: number;
  authenticated: boolean;
  openedTick: number;
  lastReceivedTick: number;
  lastSentTick: number;
}

export interface LinkStatus {
  state: "up" | "down" | "connecting";
  peer: string;
  version: number | undefined;
  sinceTick: number;
  connectionsPending: number;
  lastError: string | undefined;
}

export class NodeCore {
  private tickCount = 0;
  private out: CoreAction[] = [];
  private readonly connections = new Map<number, Connection>();
  private active: Connection | undefined;
  private readonly volumes = new Map<number, VolumeCore>();
  private readonly dialer: boolean;
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
    this.dialer = identity.nodeId < identity.peerNodeId;
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

  linkStatus(): LinkStatus {
    return {
      state: this.active ? "up" : this.connections.size > 0 || this.dialing ? "connecting" : "down",
      peer: this.identity.peerNodeId,
      version: this.active?.version,
      sinceTick: this.linkSinceTick,
      connectionsPending: [...this.connections.values()].filter((connection) => !connection.authenticated).length,
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
        return this.connected(event.connection, event.dialled);
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
        this.forget(connection, event.reason);
        return;
      }
      case "clientRead":
        return this.volumeOrFail(event.volumeId, event.request)?.clientRequest("read", event.request, event.offset, event.target.length, { target: event.target });
      case "clientWrite":
        return this.volumeOrFail(event.volumeId, event.request)?.clientRequest("write", event.request, event.offset, event.data.length, { data: event.data, fua: event.fua });
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
    for (const connection of [...this.connections.values()]) {
      if (!connection.authenticated) {
        if (now - connection.openedTick >= this.config.handshakeTimeoutTicks) this.refuse(connection, "handshake timed out");
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

  private scheduleRedial(): void {
    const jitter = new Uint8Array(1);
    this.random.fill(jitter);
    const delay = Math.max(1, Math.round(this.backoffTicks * (0.5 + jitter[0]! / 512)));
    this.nextDialTick = this.tickCount + delay;
    this.backoffTicks = Math.min(this.backoffTicks * 2, this.config.reconnectDelayTicksMax);
  }

  private connected(id: number, dialled: boolean): void {
    if (dialled) this.dialing = false;
    if (this.stopped) {
      this.out.push({ kind: "close", connection: id, reason: "node shutting down" });
      return;
    }
    const pending = [...this.connections.values()].filter((connection) => !connection.authenticated).length;
    if (pending >= this.config.pendingConnectionsMax) {
      this.report({ kind: "connectionRefused", reason: `too many connections in their handshake (${pending})` });
      this.out.push({ kind: "close", connection: id, reason: "too many pending connections" });
      return;
    }
    const localNonce = new Uint8Array(replicaNonceBytes);
    this.random.fill(localNonce);
    const connection: Connection = {
      id,
      dialled,
      framer: new Framer(handshakeFrameBytesMax),
      localNonce,
      peerHello: undefined,
      version: 0,
      authenticated: false,
      openedTick: this.tickCount,
      lastReceivedTick: this.tickCount,
      lastSentTick: this.tickCount,
    };
    this.connections.set(id, connection);
    this.sendOn(connection, {
      type: MessageType.Hello,
      volumeId: 0,
      requestId: 0,
      versionMin: protocolVersionMin,
      versionMax: protocolVersionMax,
      clusterId: this.identity.clusterId,
      nodeId: this.identity.nodeId,
      nonce: localNonce,
    });
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
        if (connection.authenticated) this.report({ kind: "protocolError", reason: `malformed frame from the peer: ${error.message}` });
        return connection.authenticated ? this.closeConnection(connection, `malformed frame: ${error.message}`) : this.refuse(connection, `malformed frame: ${error.message}`);
      }
      if (!frame) return;
      if (!connection.authenticated) this.handshakeFrame(connection, frame);
      else this.linkFrame(connection, frame);
    }
  }

  private decodeOrClose(connection: Connection, frame: Frame): Message | undefined {
    try {
      return decodeMessage(frame);
    } catch (error) {
      if (!(error instanceof DecodeError)) throw error;
      const reason = `malformed message of type ${frame.type}: ${error.message}`;
      if (connection.authenticated) {
        this.report({ kind: "protocolError", reason });
        this.closeConnection(connection, reason);
      } else this.refuse(connection, reason);
      return undefined;
    }
  }

  private handshakeFrame(connection: Connection, frame: Frame): void {
    if (!frame.payloadIntact) return this.refuse(connection, "handshake frame failed its checksum");
    if (frame.type !== MessageType.Hello && frame.type !== MessageType.Auth) return this.refuse(connection, `message type ${frame.type} before authentication`);
    const message = this.decodeOrClose(connection, frame);
    if (!message) return;
    if (message.type === MessageType.Hello) {
      if (connection.peerHello) return this.refuse(connection, "second Hello");
      if (!message.clusterId.every((byte, index) => byte === this.identity.clusterId[index])) return this.refuse(connection, "Hello from another cluster");
      if (message.nodeId === this.identity.nodeId) return this.refuse(connection, `peer claims this node's own name "${message.nodeId}"`);
      if (message.nodeId !== this.identity.peerNodeId) return this.refuse(connection, `unexpected peer "${message.nodeId}" (paired with "${this.identity.peerNodeId}")`);
      const version = negotiateVersion(protocolVersionMin, protocolVersionMax, message.versionMin, message.versionMax);
      if (version === undefined) return this.refuse(connection, `no common protocol version (ours ${protocolVersionMin}..${protocolVersionMax}, peer ${message.versionMin}..${message.versionMax})`);
      connection.peerHello = message;
      connection.version = version;
      const mac = authMac(
        this.identity.secret,
        this.identity.clusterId,
        version,
        { nodeId: this.identity.nodeId, nonce: connection.localNonce },
        { nodeId: message.nodeId, nonce: message.nonce },
      );
      this.sendOn(connection, { type: MessageType.Auth, volumeId: 0, requestId: 0, mac });
      return;
    }
    if (message.type !== MessageType.Auth) return this.refuse(connection, "unexpected handshake message");
    const hello = connection.peerHello;
    if (!hello) return this.refuse(connection, "Auth before Hello");
    const expected = authMac(
      this.identity.secret,
      this.identity.clusterId,
      connection.version,
      { nodeId: hello.nodeId, nonce: hello.nonce },
      { nodeId: this.identity.nodeId, nonce: connection.localNonce },
    );
    if (!verifyMac(expected, message.mac)) return this.refuse(connection, "authentication failed: the peer does not know the pairing secret");
    connection.authenticated = true;
    connection.framer.setFrameBytesMax(this.config.frameBytesMax);
    this.linkUp(connection);
  }

  private linkUp(connection: Connection): void {
    if (this.active && this.active !== connection) this.closeConnection(this.active, "replaced by a newer connection from the peer");
    this.active = connection;
    this.backoffTicks = this.config.reconnectDelayTicksMin;
    this.linkSinceTick = this.tickCount;
    this.lastError = undefined;
    this.report({ kind: "linkUp", peer: this.identity.peerNodeId, version: connection.version });
    for (const volume of this.volumes.values()) volume.linkUpEvent();
  }

  private linkFrame(connection: Connection, frame: Frame): void {
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
    this.out.push({ kind: "send", connection: connection.id, parts: encodeMessage(message) });
  }

  private refuse(connection: Connection, reason: string): void {
    this.report({ kind: "connectionRefused", reason });
    this.lastError = reason;
    this.closeConnection(connection, reason);
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
