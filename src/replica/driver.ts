// The thin driver that runs the replica cores against real interfaces: it turns client calls,
// transport callbacks, IO completions and clock ticks into core events, feeds them one at a time to
// the NodeCore, and performs the actions it returns, in order (CONVENTIONS.md §1). It holds no
// replication logic; the daemon and the simulator construct it with their own BlockStorage,
// MetadataStore, PeerTransport, Clock, Random and WriteAuthority. Events raised while actions run
// (a storage callback that fires synchronously, say) are queued and handled after the current
// event's actions, so the core is never re-entered.
//
// Ticks. The core counts ticks of tickMs; the driver does not wake for each. After the ticks it
// feeds, it asks the core for the first tick that will act (NodeCore.nextActionTick: a keepalive, a
// timeout, a barrier) and sleeps until then, so an idle node wakes a few times a second, not a
// hundred. An event that comes while it sleeps is preceded by the ticks that passed (up to, never
// including, that tick), so the core sees the same sequence as when ticked every tick; the first
// such event in a tick asks the core again, and when events come faster the driver ticks every tick
// until a tick passes without one. A timer callback feeds the ticks up to the one it slept for and
// no further: a process that was stalled resumes at most at its next acting tick, not with a burst
// of link timeouts before it has read what its peer sent meanwhile. The ticks the core called
// quiet must act on nothing: the driver checks, and in the simulator a tick that acts is a failure.
import type { Payload } from "../common/bytes.ts";
import { BlockError } from "../common/errors.ts";
import type { Logger } from "../common/log.ts";
import { defaultReplicaConfig, type ReplicaConfig } from "./config.ts";
import type { BlockStorage, Clock, MetadataStore, PeerTransport, PeerTransportHandler, Random, WriteAuthority } from "./io.ts";
import { formatMetadata, type FormatOptions, loadMetadata, type MetadataWrite } from "./metadata-format.ts";
import { type LinkStatus, NodeCore, type NodeIdentity } from "./node.ts";
import type { CoreAction, CoreEvent, IoError, RemoteAddress, ReplicaReport, VerifyResult, VolumeStatus } from "./types.ts";
import { DecodeError } from "./wire.ts";

/** What the core said about a finished client request besides its error. */
export interface CompletionInfo {
  /** A write's completion included the peer's acknowledgement (false: this node alone has it). */
  mirrored: boolean | undefined;
  /** The write epoch the request was admitted in. */
  epoch: number | undefined;
}

export type Completion = (error: BlockError | null, info: CompletionInfo) => void;

/** Everything the driver tells the outside besides completions: for logs, status, the simulator. */
export interface ReplicaObserver {
  report?(report: ReplicaReport): void;
  /** A client request finished (the simulator's checkers watch acknowledgements here). */
  completed?(volumeId: number, request: number, error: IoError | null, mirrored: boolean | undefined, epoch: number | undefined): void;
}

export interface ReplicaDriverOptions {
  identity: NodeIdentity;
  transport: PeerTransport;
  clock: Clock;
  random: Random;
  authority: WriteAuthority;
  config?: ReplicaConfig;
  logger?: Logger;
  observer?: ReplicaObserver;
  /** The peer's daemon asks ours something (control plane); `reply` once, ok=false for "cannot". */
  onPeerRequest?(payload: Uint8Array, reply: (ok: boolean, payload: Uint8Array) => void): void;
  /** The peer's quorum core sent a message on the authenticated link (src/quorum/ decodes it). */
  onQuorumMessage?(payload: Uint8Array): void;
  /** Throw when a tick the core called quiet acts (simulators and tests); else it is logged. */
  strictQuietTicks?: boolean;
}

interface PendingRequest {
  volumeId: number;
  done: (error: BlockError | null, result: unknown, info: CompletionInfo) => void;
}

interface VolumeIo {
  storage: BlockStorage;
  metadata: MetadataStore;
}

export class ReplicaDriver implements PeerTransportHandler {
  readonly core: NodeCore;
  private readonly config: ReplicaConfig;
  private readonly events: CoreEvent[] = [];
  private draining = false;
  private readonly pending = new Map<number, PendingRequest>();
  private nextRequest = 1;
  private readonly volumes = new Map<number, VolumeIo>();
  private timer: { cancel(): void } | undefined;
  /** The clock time of the core's last tick (the start, before the first). */
  private tickedAtMs = 0;
  /** Sleeping until this tick (the core's next acting tick); undefined: ticking every tick. */
  private sleepingUntil: number | undefined;
  /** The core's tick when an event last woke the driver from sleep. */
  private wokeAtTick = -1;
  private quietTickActed = false;
  private unsubscribe: (() => void) | undefined;
  private stopped = false;

  constructor(private readonly options: ReplicaDriverOptions) {
    this.config = options.config ?? defaultReplicaConfig();
    this.core = new NodeCore(options.identity, this.config, options.random);
    options.transport.attach(this);
  }

  /** Begin ticking (and so dialling the peer). */
  start(): void {
    if (this.timer || this.stopped) return;
    this.unsubscribe = this.options.authority.subscribe((volumeId) => {
      if (this.volumes.has(volumeId)) this.feed({ kind: "grant", volumeId, grant: this.options.authority.grant(volumeId) });
    });
    this.tickedAtMs = this.options.clock.now();
    this.armTimer(this.config.tickMs);
  }

  /** Say goodbye to the peer and stop ticking. Close volumes first for a clean metadata state. */
  stop(): void {
    if (this.stopped) return;
    this.feed({ kind: "shutdown" });
    this.stopped = true;
    this.timer?.cancel();
    this.timer = undefined;
    this.unsubscribe?.();
  }

  /** Send the quorum core's message to the peer (nothing while the link is down). */
  sendQuorum(payload: Uint8Array): void {
    this.feed({ kind: "quorumSend", payload });
  }

  /** Close the replication connection now (the quorum judged the peer gone). */
  dropLink(reason: string): void {
    this.feed({ kind: "dropLink", reason });
  }

  /** Write a fresh metadata area (volume creation, or a replaced disk when no initial generation is given). */
  static format(metadata: MetadataStore, options: FormatOptions, done: (error: BlockError | null) => void): void {
    writeAll(metadata, formatMetadata(options), true, (error) => done(error ? new BlockError(error, "formatting the replication metadata failed") : null));
  }

  /** Read a volume's metadata, recover after a crash if needed, and attach it. `done` once it is usable. */
  openVolume(volumeId: number, storage: BlockStorage, metadata: MetadataStore, done: (error: BlockError | null) => void): void {
    if (this.volumes.has(volumeId)) return done(new BlockError("EINVAL", `volume ${volumeId} is already open`));
    metadata.read(0, metadata.sizeBytes(), (error, bytes) => {
      if (error || !bytes) return done(new BlockError(error ?? "EIO", "reading the replication metadata failed"));
      let loaded;
      try {
        loaded = loadMetadata(bytes);
      } catch (decodeError) {
        if (decodeError instanceof DecodeError) return done(new BlockError("EIO", `replication metadata is damaged: ${decodeError.message}`));
        throw decodeError;
      }
      if (loaded === "blank") return done(new BlockError("EINVAL", "replication metadata was never formatted"));
      if (loaded.superblock.volumeId !== volumeId) return done(new BlockError("EINVAL", `metadata belongs to volume ${loaded.superblock.volumeId}, not ${volumeId}`));
      this.volumes.set(volumeId, { storage, metadata });
      const opened = (report: ReplicaReport) => report.kind === "volumeOpened" && report.volumeId === volumeId;
      this.waitForReport(opened, () => done(null));
      // The ticks that passed go first: the core's quiet claim did not cover a volume it lacked.
      if (this.sleepingUntil !== undefined && !this.draining) this.catchUpQuiet();
      this.run(this.core.attachVolume(volumeId, loaded));
      this.feed({ kind: "grant", volumeId, grant: this.options.authority.grant(volumeId) });
    });
  }

  private readonly reportWaiters = new Set<{ match: (report: ReplicaReport) => boolean; callback: () => void }>();
  private waitForReport(match: (report: ReplicaReport) => boolean, callback: () => void): void {
    this.reportWaiters.add({ match, callback });
  }

  closeVolume(volumeId: number, done: (error: BlockError | null) => void): void {
    this.request(volumeId, (error) => {
      this.core.detachVolume(volumeId);
      this.volumes.delete(volumeId);
      done(error);
    }, (request) => ({ kind: "closeVolume", volumeId, request }));
  }

  /**
   * A read the core would serve from the local replica at once (NodeCore.readsLocally) goes to the
   * local storage directly: no request, event or completion action through the core, which has
   * nothing to order or record for it. Only between events (none queued: a grant or a link change
   * waiting to be handled could change the answer). A failed local read goes to the core with its
   * error, which reports it and asks the peer, as when its own read fails.
   */
  read(volumeId: number, offset: number, target: Uint8Array, done: Completion): void {
    if (!this.readsLocally(volumeId, offset, target.length)) return this.coreRead(volumeId, offset, target, done);
    const request = this.nextRequest++;
    const drops = this.localDrops(volumeId);
    this.volumes.get(volumeId)!.storage.read(offset, target, (error) => {
      if (error) return this.readAfterLocalError(volumeId, offset, target, error, done);
      if (this.localDrops(volumeId) !== drops) return this.coreRead(volumeId, offset, target, done); // read again by the rules in force now
      this.options.observer?.completed?.(volumeId, request, null, undefined, undefined);
      done(null, { mirrored: undefined, epoch: undefined });
    });
  }

  /**
   * A client read of the range would be served from the local replica now (NodeCore.readsLocally,
   * asked between events only), so the caller may read the local storage itself: read() does, and
   * the mirror layer reads the layer below it.
   */
  readsLocally(volumeId: number, offset: number, length: number): boolean {
    return !this.stopped && !this.draining && this.events.length === 0 && this.volumes.has(volumeId) && this.core.readsLocally(volumeId, offset, length);
  }

  /** NodeCore.localDrops: a local read whose count moved while it ran goes through the core. */
  localDrops(volumeId: number): number {
    return this.stopped ? -1 : this.core.localDrops(volumeId);
  }

  /** A local read made after readsLocally failed: the core reports it and asks the peer (or fails the read). */
  readAfterLocalError(volumeId: number, offset: number, target: Uint8Array, error: IoError, done: Completion): void {
    this.coreRead(volumeId, offset, target, done, error);
  }

  private coreRead(volumeId: number, offset: number, target: Uint8Array, done: Completion, localError?: IoError): void {
    this.request(volumeId, (error, _result, info) => done(error, info), (request) => ({ kind: "clientRead", volumeId, request, offset, target, localError }));
  }

  /** `stable`: the caller never changes nor reuses `data` (WriteFlags.stable), so the core keeps it instead of a copy. */
  write(volumeId: number, offset: number, data: Payload, fua: boolean, done: Completion, stable = false): void {
    this.request(volumeId, (error, _result, info) => done(error, info), (request) => ({ kind: "clientWrite", volumeId, request, offset, data, fua, stable }));
  }

  flush(volumeId: number, done: Completion): void {
    this.request(volumeId, (error, _result, info) => done(error, info), (request) => ({ kind: "clientFlush", volumeId, request }));
  }

  trim(volumeId: number, offset: number, length: number, fua: boolean, done: Completion): void {
    this.request(volumeId, (error, _result, info) => done(error, info), (request) => ({ kind: "clientTrim", volumeId, request, offset, length, fua }));
  }

  zero(volumeId: number, offset: number, length: number, flags: { fua: boolean; noHole: boolean }, done: Completion): void {
    this.request(volumeId, (error, _result, info) => done(error, info), (request) => ({ kind: "clientZero", volumeId, request, offset, length, fua: flags.fua, noHole: flags.noHole }));
  }

  /** Compare both replicas by CRC32C per extent; with `repair`, copy differing extents from this (primary) side. */
  verify(volumeId: number, repair: boolean, done: (error: BlockError | null, result: VerifyResult | undefined) => void): void {
    this.request(volumeId, (error, result) => done(error, result as VerifyResult | undefined), (request) => ({ kind: "verify", volumeId, request, repair }));
  }

  /** Operator: end a split brain by choosing which side keeps its data; the other is overwritten. */
  resolveSplitBrain(volumeId: number, keep: "local" | "peer", done: (error: BlockError | null) => void): void {
    this.request(volumeId, done, (request) => ({ kind: "resolveSplitBrain", volumeId, request, keep }));
  }

  /** Ask the peer's daemon something over the authenticated link; fails at once when the link is down. */
  peerRequest(payload: Uint8Array, done: (error: BlockError | null, reply: Uint8Array | undefined) => void): void {
    this.request(0, (error, result) => done(error, result as Uint8Array | undefined), (request) => ({ kind: "peerRequest", request, payload }));
  }

  status(volumeId: number): VolumeStatus | undefined {
    return this.core.volumeStatus(volumeId);
  }

  role(volumeId: number): VolumeStatus["role"] | undefined {
    return this.core.volumeRole(volumeId);
  }

  /** A volume's IO and peer requests in flight, by kind. */
  inFlight(volumeId: number): { io: Record<string, number>; requests: Record<string, number> } | undefined {
    return this.core.volumePending(volumeId);
  }

  link(): LinkStatus {
    return this.core.linkStatus();
  }

  // ---- transport handler

  connected(connection: number, dialled: boolean, remote: RemoteAddress): void {
    this.feed({ kind: "connected", connection, dialled, remote });
  }
  dialFailed(reason: string): void {
    this.feed({ kind: "dialFailed", reason });
  }
  data(connection: number, bytes: Uint8Array): void {
    this.feed({ kind: "data", connection, bytes });
  }
  closed(connection: number, reason: string): void {
    this.feed({ kind: "closed", connection, reason });
  }

  // ---- the loop

  private request(volumeId: number, done: (error: BlockError | null, result: unknown, info: CompletionInfo) => void, make: (request: number) => CoreEvent): void {
    if (this.stopped) return done(new BlockError("ESHUTDOWN", "replication is stopped"), undefined, { mirrored: undefined, epoch: undefined });
    const request = this.nextRequest++;
    this.pending.set(request, { volumeId, done });
    this.feed(make(request));
  }

  private feed(event: CoreEvent): void {
    if (this.stopped) return;
    if (this.draining) {
      this.events.push(event);
      return;
    }
    const sleeping = this.sleepingUntil !== undefined;
    if (sleeping) this.catchUpQuiet();
    this.events.push(event);
    this.drain();
    if (sleeping) this.afterWake();
  }

  /** Handle the queued events, and those their actions raise, in order. */
  private drain(): void {
    this.draining = true;
    try {
      for (let next = this.events.shift(); next; next = this.events.shift()) this.run(this.core.step(next));
    } finally {
      this.draining = false;
    }
  }

  // ---- ticks (see the top of the file)

  private armTimer(delayMs: number): void {
    this.timer?.cancel();
    this.timer = this.options.clock.after(Math.max(0, delayMs), () => this.onTimer());
  }

  /**
   * Feed the ticks due (up to the one the core acts on), then sleep until its next acting tick. The
   * next timer is set even when a tick throws (a bug, reported by the caller's handler), as a
   * periodic timer would go on: a node whose clock stopped would never time out or redial again.
   */
  private onTimer(): void {
    this.timer = undefined;
    if (this.stopped) return;
    const now = this.options.clock.now();
    const last = this.sleepingUntil ?? this.core.now + 1;
    try {
      this.tickTo(last, last);
    } finally {
      this.tickedAtMs = now;
      if (!this.stopped) this.sleepUntil(this.core.nextActionTick());
    }
  }

  /** Infinity: no tick will act, only an event wakes the driver. */
  private sleepUntil(tick: number): void {
    this.sleepingUntil = tick;
    if (tick === Infinity) {
      this.timer?.cancel();
      this.timer = undefined;
      return;
    }
    this.armTimer(this.tickedAtMs + (tick - this.core.now) * this.config.tickMs - this.options.clock.now());
  }

  /** Before an event that comes while sleeping: the ticks that passed (all claimed quiet). */
  private catchUpQuiet(): void {
    const passed = Math.floor((this.options.clock.now() - this.tickedAtMs) / this.config.tickMs);
    const quiet = Math.min(passed, this.sleepingUntil! - 1 - this.core.now);
    if (quiet <= 0) return;
    this.tickTo(this.core.now + quiet, this.sleepingUntil!);
    this.tickedAtMs += quiet * this.config.tickMs;
  }

  /**
   * After an event that came while sleeping: it may have brought the core's next acting tick
   * closer. The first such event in a tick asks the core again; a second one in the same tick
   * means events are coming fast, and the driver ticks every tick until a tick passes without one.
   */
  private afterWake(): void {
    if (this.stopped || this.sleepingUntil === undefined) return;
    if (this.wokeAtTick === this.core.now) {
      this.sleepingUntil = undefined;
      this.armTimer(this.tickedAtMs + this.config.tickMs - this.options.clock.now());
      return;
    }
    this.wokeAtTick = this.core.now;
    const next = this.core.nextActionTick();
    if (next < this.sleepingUntil) this.sleepUntil(next);
  }

  /** Feed ticks up to `last`, each with the events its actions raise; those before `actsAt` were claimed quiet. */
  private tickTo(last: number, actsAt: number): void {
    while (this.core.now < last && !this.stopped) {
      this.draining = true;
      try {
        const actions = this.core.step({ kind: "tick" });
        if (this.core.now < actsAt && actions.length > 0) this.quietActed(actions);
        this.run(actions);
      } finally {
        this.draining = false;
      }
      if (this.events.length > 0) this.drain();
    }
  }

  private quietActed(actions: CoreAction[]): void {
    const detail = `tick ${this.core.now}, claimed quiet, acted: ${actions.map((action) => action.kind).join(", ")}`;
    if (this.options.strictQuietTicks) throw new Error(detail);
    if (this.quietTickActed) return;
    this.quietTickActed = true;
    this.options.logger?.error("replica core: a tick it called quiet acted (its action ran late); not reported again", { detail });
  }

  private run(actions: CoreAction[]): void {
    for (const action of actions) this.execute(action);
  }

  private execute(action: CoreAction): void {
    const transport = this.options.transport;
    switch (action.kind) {
      case "send":
        return transport.send(action.connection, action.parts);
      case "close":
        return transport.close(action.connection);
      case "dial":
        return transport.dial();
      case "storageRead":
      case "storageWrite":
      case "storageFlush":
      case "storageTrim":
      case "storageZero": {
        const volume = this.volumes.get(action.volumeId);
        const volumeId = action.volumeId;
        const io = action.io;
        const done = (error: IoError | null) => this.feed({ kind: "storageDone", volumeId, io, error });
        if (!volume) return done("ESHUTDOWN");
        const storage = volume.storage;
        if (action.kind === "storageRead") return storage.read(action.offset, action.target, done);
        if (action.kind === "storageWrite") return storage.write(action.offset, action.data, action.fua, done);
        if (action.kind === "storageFlush") return storage.flush(done);
        if (action.kind === "storageTrim") return storage.trim(action.offset, action.length, action.fua, done);
        return storage.zero(action.offset, action.length, action.fua, action.noHole, done);
      }
      case "metadataWrite": {
        const volume = this.volumes.get(action.volumeId);
        const { volumeId, io } = action;
        const done = (error: IoError | null) => this.feed({ kind: "metadataDone", volumeId, io, error });
        if (!volume) return done("ESHUTDOWN");
        const { metadata } = volume;
        const commit = action.commit;
        if (!commit) return writeAll(metadata, action.writes, action.flush, done);
        // The superblock only once the pages and the activity log it goes with are durable: a
        // power loss between the two leaves the old record beside the new pages, never the new
        // record (a resync under way, say) beside the old pages.
        return writeAll(metadata, action.writes, true, (error) => (error ? done(error) : writeAll(metadata, [commit], true, done)));
      }
      case "complete": {
        const pending = this.pending.get(action.request);
        if (!pending) return;
        this.pending.delete(action.request);
        this.options.observer?.completed?.(pending.volumeId, action.request, action.error, action.mirrored, action.epoch);
        pending.done(action.error ? new BlockError(action.error, action.message ?? action.error) : null, action.result, { mirrored: action.mirrored, epoch: action.epoch });
        return;
      }
      case "peerCall": {
        const call = action.call;
        let answered = false;
        const reply = (ok: boolean, payload: Uint8Array) => {
          if (answered) return;
          answered = true;
          this.feed({ kind: "peerCallReply", call, ok, payload });
        };
        const handler = this.options.onPeerRequest;
        if (!handler) return reply(false, new TextEncoder().encode("this node does not answer control-plane requests"));
        try {
          handler(action.payload, reply);
        } catch (error) {
          reply(false, new TextEncoder().encode(`request failed: ${(error as Error)?.message ?? String(error)}`));
        }
        return;
      }
      case "quorumReceived":
        this.options.onQuorumMessage?.(action.payload);
        return;
      case "report": {
        const report = action.report;
        this.log(report);
        if (report.kind === "linkUp") this.options.authority.linkChanged(true);
        if (report.kind === "linkDown") this.options.authority.linkChanged(false);
        this.options.observer?.report?.(report);
        for (const waiter of [...this.reportWaiters]) {
          if (waiter.match(report)) {
            this.reportWaiters.delete(waiter);
            waiter.callback();
          }
        }
        return;
      }
    }
  }

  private log(report: ReplicaReport): void {
    const logger = this.options.logger;
    if (!logger) return;
    const { kind, ...fields } = report;
    switch (kind) {
      case "connectionRefused":
      case "frameRejected":
      case "reportsSuppressed":
      case "protocolError":
      case "ioError":
      case "splitBrain":
        return logger.warn(kind, fields);
      case "verifyMismatch":
      case "linkDown":
        return logger.warn(kind, fields);
      case "ignored":
        return logger.debug(kind, fields);
      default:
        return logger.info(kind, fields);
    }
  }
}

/** Perform metadata writes (in parallel), then flush when asked; report the first error once. */
function writeAll(metadata: MetadataStore, writes: readonly MetadataWrite[], flush: boolean, done: (error: IoError | null) => void): void {
  let remaining = writes.length;
  let failed: IoError | null = null;
  const afterWrites = () => {
    if (failed) return done(failed);
    if (flush) metadata.flush(done);
    else done(null);
  };
  if (remaining === 0) return afterWrites();
  for (const write of writes) {
    metadata.write(write.offset, write.bytes, (error) => {
      if (error && !failed) failed = error;
      if (--remaining === 0) afterWrites();
    });
  }
}
