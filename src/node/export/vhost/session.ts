// One vhost-user-blk front-end connection: it answers the control messages, maps guest memory, runs
// the virtqueues and executes virtio-blk requests on the volume's BlockLayer. The pure modules do
// the decoding (protocol.ts, virtqueue.ts, blk.ts, inflight.ts, memory.ts); this driver owns the
// descriptors, the mappings and the order of effects:
//
//  - A request's data moves between the layer and guest memory through views of the mapping, so
//    guest data is never copied into the JS heap.
//  - A completion is published (status byte, in-flight mark, used ring, then maybe an interrupt)
//    only if its queue has not been stopped or restarted since the request was taken. Late
//    completions of a dead ring are dropped and stay marked in the in-flight region, to be
//    resubmitted by whoever runs the ring next.
//  - Memory is unmapped only when no request can still use it, and a restarted ring resubmits only
//    after every request of its previous life has settled, so an old write can never land after a
//    newer one to the same blocks.
//  - Anything malformed from the front-end or the guest (message, ring, chain) ends this session
//    with a logged reason; the export keeps listening and other sessions are not affected.
import { nanoid } from "nanoid";
import { BlockError } from "../../../common/errors.ts";
import {
  closeFd,
  eventFdSignal,
  isEventFd,
  memoryFileCreate,
  receiveWithFds,
  sendWithFds,
  setNonBlocking,
  shutdownSocket,
} from "../../../common/ffi-socket.ts";
import type { Logger } from "../../../common/log.ts";
import {
  discardBytesMax,
  requestBytesMax,
  requestBytesMinimum,
  requestsInFlightPerConnectionMax,
  vhostConfigBytesMax,
  vhostDiscardSegmentsMax,
  vhostIndirectDescriptorsMax,
  vhostQueueSizeMax,
  vhostSegmentsPerRequestMax,
  vhostStopDrainTimeoutMs,
} from "../../../constants.ts";
import { checkRange, type BlockLayer } from "../../block/layer.ts";
import { emulating } from "../../block/emulate.ts";
import type { ExportHandle, ExportSessionInfo, VhostQueueInfo } from "../types.ts";
import {
  BlkChainError,
  BlkFeatureBit,
  BlkStatus,
  blkDeviceId,
  decodeBlkRequest,
  encodeBlkConfig,
  sectorBytes,
  type BlkLimits,
  type BlkRequest,
} from "./blk.ts";
import { InflightError, InflightQueue, inflightQueueBytes } from "./inflight.ts";
import { MappedRegion } from "./mapping.ts";
import { GuestMemory, MemoryTableError, type MemoryRegion } from "./memory.ts";
import type { Poller, Watch } from "./poller.ts";
import {
  DecodeError,
  FeatureBit,
  HeaderFlag,
  MessageFramer,
  ProtocolFeatureBit,
  Request,
  bit,
  encodeReply,
  requestName,
  type Body,
  type FramedMessage,
  type VringAddress,
} from "./protocol.ts";
import { QueueError, SplitQueue, queueAreaAlignment, queueAreaBytes, type Chain } from "./virtqueue.ts";

/** A front-end broke the protocol: the session ends with this reason. */
class SessionError extends Error {
  override name = "SessionError";
}

/** A request we refuse without ending the session (REPLY_ACK gets a non-zero status). */
class Refused extends Error {
  override name = "Refused";
}

const receiveBufferBytes = 64 * 1024;
const protocolFeaturesOffered =
  bit(ProtocolFeatureBit.multipleQueues) | bit(ProtocolFeatureBit.replyAck) | bit(ProtocolFeatureBit.config) | bit(ProtocolFeatureBit.inflightSharedMemory);
/** SET_VRING_ADDR flag asking for used-ring logging (live migration), which we do not offer. */
const vringFlagLog = 1;

/** Guest memory as mapped for one SET_MEM_TABLE, kept until no request uses it. */
class MemoryMap {
  references = 0;
  retired = false;
  constructor(
    readonly guest: GuestMemory,
    private readonly regions: MappedRegion[],
  ) {}
  acquire(): void {
    this.references++;
  }
  release(): void {
    if (--this.references === 0 && this.retired) this.unmap();
  }
  retire(): void {
    this.retired = true;
    if (this.references === 0) this.unmap();
  }
  private unmap(): void {
    for (const region of this.regions) region.unmap();
  }
}

class Queue {
  size = 0;
  base = 0;
  address: VringAddress | undefined;
  ring: SplitQueue | undefined;
  kickFd = -1;
  callFd = -1;
  errorFd = -1;
  kickWatch: Watch | undefined;
  /** QEMU 7.2's vhost-user-blk never sends SET_VRING_ENABLE, so rings start enabled (as in libvhost-user). */
  enabled = true;
  /** False while GET_VRING_BASE drains the ring: requests in flight still complete, no new ones are taken. */
  accepting = false;
  /** Bumped whenever the ring stops or restarts; completions of older generations are dropped. */
  generation = 0;
  /** Requests of this queue whose IO has not settled, whatever their generation. */
  running = 0;
  idleWaiters: (() => void)[] = [];
  inflight: InflightQueue | undefined;
  notifyPending = false;
  /** Kick notifications read from the front-end's eventfd, for status. */
  kicks = 0;
  constructor(readonly index: number) {}

  get started(): boolean {
    return this.ring !== undefined;
  }

  info(): VhostQueueInfo {
    const state = !this.ring ? "stopped" : !this.accepting ? "draining" : !this.enabled ? "disabled" : "running";
    return { index: this.index, state, kicks: this.kicks };
  }

  whenIdle(): Promise<void> {
    if (this.running === 0) return Promise.resolve();
    return new Promise((resolve) => this.idleWaiters.push(resolve));
  }
}

export interface SessionOptions {
  fd: number;
  client: string;
  volume: string;
  handle: ExportHandle;
  queues: number;
  log: Logger;
  poller: Poller;
  /** Called once the session has released everything (handle, memory, descriptors). */
  onClosed: (session: VhostSession) => void;
}

export class VhostSession {
  readonly id = nanoid(10);
  readonly sinceMs = Date.now();
  private readonly log: Logger;
  private readonly layer: BlockLayer;
  private readonly framer = new MessageFramer();
  private readonly receiveBuffer = new Uint8Array(receiveBufferBytes);
  private readonly queues: Queue[];
  private readonly socketWatch: Watch;
  private readonly featuresOffered: bigint;
  private readonly config: Uint8Array;
  private readonly deviceId: Uint8Array;
  private featuresAcked = 0n;
  private protocolFeatures = 0n;
  private memory: MemoryMap | undefined;
  private inflightRegion: MappedRegion | undefined;
  private limits: BlkLimits;
  /** Requests whose IO has not settled, all queues. */
  private running = 0;
  private idleWaiters: (() => void)[] = [];
  /** A control message is being handled asynchronously; later ones wait. */
  private busy = false;
  private notifyScheduled = false;
  private ending: Promise<void> | undefined;
  /** Set when the session starts ending: no new requests or messages are taken. */
  private stopping = false;
  private socketOpen = true;
  private warnedShrinkable = false;

  constructor(private readonly options: SessionOptions) {
    this.log = options.log.child("session", { session: this.id, client: options.client });
    this.layer = options.handle.layer;
    this.queues = Array.from({ length: options.queues }, (_, index) => new Queue(index));
    const capabilities = this.layer.capabilities();
    const readOnly = options.handle.readOnly() || capabilities.readOnly;
    const discard = capabilities.trim && !readOnly;
    const writeZeroes = capabilities.zero && !readOnly;
    this.featuresOffered =
      bit(FeatureBit.version1) |
      bit(FeatureBit.ringIndirectDescriptors) |
      bit(FeatureBit.ringEventIndex) |
      bit(FeatureBit.protocolFeatures) |
      bit(BlkFeatureBit.segmentMax) |
      bit(BlkFeatureBit.blockSize) |
      bit(BlkFeatureBit.topology) |
      bit(BlkFeatureBit.multipleQueues) |
      (capabilities.flush ? bit(BlkFeatureBit.flush) : 0n) |
      (discard ? bit(BlkFeatureBit.discard) : 0n) |
      (writeZeroes ? bit(BlkFeatureBit.writeZeroes) : 0n) |
      (readOnly ? bit(BlkFeatureBit.readOnly) : 0n);
    const alignmentSectors = Math.max(1, Math.floor(capabilities.alignmentBytes / sectorBytes));
    const config = encodeBlkConfig({
      capacitySectors: Math.floor(this.layer.size() / sectorBytes),
      segmentsMax: vhostSegmentsPerRequestMax,
      blockSizeBytes: requestBytesMinimum,
      physicalBlockExponent: Math.round(Math.log2(alignmentSectors * sectorBytes / requestBytesMinimum)),
      minimumIoSectors: alignmentSectors,
      optimalIoSectors: 0,
      queues: options.queues,
      discardSectorsMax: discard ? discardBytesMax / sectorBytes : 0,
      discardSegmentsMax: discard ? vhostDiscardSegmentsMax : 0,
      discardAlignmentSectors: discard ? alignmentSectors : 0,
      writeZeroesSectorsMax: writeZeroes ? discardBytesMax / sectorBytes : 0,
      writeZeroesSegmentsMax: writeZeroes ? vhostDiscardSegmentsMax : 0,
      writeZeroesMayUnmap: writeZeroes && capabilities.trim,
    });
    // Fields past the write-zeroes ones belong to features we do not offer: they read as zero.
    this.config = new Uint8Array(vhostConfigBytesMax);
    this.config.set(config);
    this.deviceId = blkDeviceId(options.volume);
    this.limits = this.limitsFor(0n);
    options.handle.onRevoke((reason) => void this.end(`volume revoked: ${reason}`, "warn", false));
    this.socketWatch = options.poller.watch(options.fd, () => this.onSocketReadable());
    this.log.info("front-end connected", { volume: options.volume });
    // Data may have arrived before the watch was armed; edge-triggered polling would not report it.
    queueMicrotask(() => this.onSocketReadable());
  }

  info(): ExportSessionInfo {
    return { id: this.id, kind: "vhost", volume: this.options.volume, client: this.options.client, sinceMs: this.sinceMs, requestsInFlight: this.running, queues: this.queues.map((queue) => queue.info()) };
  }

  get ended(): boolean {
    return this.ending !== undefined;
  }

  private limitsFor(features: bigint): BlkLimits {
    return {
      requestBytesMax,
      segmentsMax: vhostSegmentsPerRequestMax,
      rangesMax: vhostDiscardSegmentsMax,
      rangeBytesMax: discardBytesMax,
      discard: (features & bit(BlkFeatureBit.discard)) !== 0n,
      writeZeroes: (features & bit(BlkFeatureBit.writeZeroes)) !== 0n,
      flush: (features & bit(BlkFeatureBit.flush)) !== 0n,
    };
  }

  // ---- control socket ----

  private onSocketReadable(): void {
    if (this.ending || this.busy) return;
    for (;;) {
      let received;
      try {
        received = receiveWithFds(this.options.fd, this.receiveBuffer);
      } catch (error) {
        void this.end(`control socket: ${(error as Error).message}`, "warn", false);
        return;
      }
      if (received.kind === "again") return;
      if (received.kind === "closed") {
        void this.end("front-end disconnected", "info", false);
        return;
      }
      try {
        this.framer.push(this.receiveBuffer.subarray(0, received.bytes), received.fds);
      } catch (error) {
        void this.end(`malformed message: ${(error as Error).message}`, "warn", false);
        return;
      }
      this.pump();
      if (this.busy || this.ending) return;
    }
  }

  private pump(): void {
    while (!this.busy && !this.ending) {
      let framed: FramedMessage | undefined;
      try {
        framed = this.framer.next();
      } catch (error) {
        void this.end(`malformed message: ${(error as Error).message}`, "warn", false);
        return;
      }
      if (!framed) return;
      const result = this.handleMessage(framed);
      if (result) {
        this.busy = true;
        result.then(
          () => {
            this.busy = false;
            if (this.ending) return;
            this.pump();
            this.onSocketReadable();
          },
          (error) => {
            this.busy = false;
            this.fail(error);
          },
        );
        return;
      }
    }
  }

  private send(bytes: Uint8Array, fds: number[] = []): void {
    // Replies are a few hundred bytes and the front-end waits for each one; a socket too full to
    // take one means the front-end stopped reading, which we do not buffer for.
    const sent = sendWithFds(this.options.fd, bytes, fds);
    if (sent !== bytes.length) throw new SessionError(sent < 0 ? "front-end is not reading replies (socket buffer full)" : `short send (${sent} of ${bytes.length} bytes)`);
  }

  private reply(request: number, body: Body, fds: number[] = []): void {
    this.send(encodeReply(request, body), fds);
  }

  private fail(error: unknown): void {
    if (error instanceof SessionError || error instanceof DecodeError || error instanceof QueueError || error instanceof BlkChainError || error instanceof MemoryTableError || error instanceof InflightError) {
      void this.end(error.message, "warn", false);
      return;
    }
    const code = (error as { code?: string }).code;
    if (code !== undefined) {
      // A system call failed on the front-end's behalf (mmap of a bad fd, a socket error).
      void this.end(`${(error as Error).message}`, "warn", false);
      return;
    }
    throw error;
  }

  /** Handle one message; a promise when the answer has to wait (queue drain). Ends the session on protocol errors. */
  private handleMessage(framed: FramedMessage): Promise<void> | undefined {
    const { message } = framed;
    const fds = framed.fds;
    const needsAck = (message.flags & HeaderFlag.NeedReply) !== 0;
    this.log.debug("message", { request: requestName(message.request), fds: fds.length, ...(message.body.kind === "state" ? { index: message.body.index, num: message.body.num } : {}) });
    try {
      const result = this.dispatch(message.request, message.body, fds);
      for (const fd of fds.splice(0)) closeFd(fd);
      if (result) return result.then(() => this.acknowledge(message.request, needsAck, true));
      this.acknowledge(message.request, needsAck, true);
    } catch (error) {
      for (const fd of fds.splice(0)) closeFd(fd);
      if (error instanceof Refused) {
        this.log.info("request refused", { request: requestName(message.request), reason: error.message });
        try {
          this.acknowledge(message.request, needsAck, false);
        } catch (sendError) {
          this.fail(sendError);
        }
        return undefined;
      }
      this.fail(error);
    }
    return undefined;
  }

  private acknowledge(request: number, needsAck: boolean, success: boolean): void {
    if (!needsAck || (this.protocolFeatures & bit(ProtocolFeatureBit.replyAck)) === 0n) return;
    switch (request) {
      case Request.GetFeatures:
      case Request.GetProtocolFeatures:
      case Request.GetQueueNum:
      case Request.GetVringBase:
      case Request.GetConfig:
      case Request.GetInflightFd:
        return; // These have their own reply.
    }
    this.reply(request, { kind: "u64", value: success ? 0n : 1n });
  }

  private queue(index: number, request: number): Queue {
    const queue = this.queues[index];
    if (!queue) throw new SessionError(`${requestName(request)} for queue ${index}; this export has ${this.queues.length}`);
    return queue;
  }

  private expectFds(request: number, fds: number[], count: number): void {
    if (fds.length !== count) throw new SessionError(`${requestName(request)} came with ${fds.length} file descriptors, expected ${count}`);
  }

  /**
   * Kick, call and error descriptors must be eventfds, and non-blocking: a kick is read by the
   * event loop and a call is written from the main thread, which must never block (a blocking
   * eventfd whose counter is full would stall every export of the daemon).
   */
  private eventFd(request: number, fds: number[]): number {
    const fd = fds.shift()!;
    if (!isEventFd(fd)) {
      closeFd(fd);
      throw new SessionError(`${requestName(request)} passed a descriptor that is not an eventfd`);
    }
    setNonBlocking(fd);
    return fd;
  }

  private dispatch(request: number, body: Body, fds: number[]): Promise<void> | undefined {
    const expectBody = <K extends Body["kind"]>(kind: K): Extract<Body, { kind: K }> => {
      if (body.kind !== kind) throw new SessionError(`${requestName(request)} with a ${body.kind} payload`);
      return body as Extract<Body, { kind: K }>;
    };
    if (request !== Request.SetMemTable && request !== Request.SetVringKick && request !== Request.SetVringCall && request !== Request.SetVringErr && request !== Request.SetInflightFd) {
      this.expectFds(request, fds, 0);
    }
    switch (request) {
      case Request.GetFeatures:
        this.reply(request, { kind: "u64", value: this.featuresOffered });
        return;
      case Request.SetFeatures: {
        const features = expectBody("u64").value;
        const unknown = features & ~this.featuresOffered;
        if (unknown !== 0n) throw new SessionError(`SET_FEATURES acknowledges features we did not offer: 0x${unknown.toString(16)}`);
        if ((features & bit(FeatureBit.version1)) === 0n) throw new SessionError("SET_FEATURES without VIRTIO_F_VERSION_1 (legacy devices are not supported)");
        this.featuresAcked = features;
        this.limits = this.limitsFor(features);
        return;
      }
      case Request.GetProtocolFeatures:
        this.reply(request, { kind: "u64", value: protocolFeaturesOffered });
        return;
      case Request.SetProtocolFeatures: {
        const features = expectBody("u64").value;
        const unknown = features & ~protocolFeaturesOffered;
        if (unknown !== 0n) throw new SessionError(`SET_PROTOCOL_FEATURES with features we did not offer: 0x${unknown.toString(16)}`);
        this.protocolFeatures = features;
        return;
      }
      case Request.SetOwner:
      case Request.ResetOwner:
        // SET_OWNER opens the session, which the connection already did. RESET_OWNER is deprecated;
        // the spec recommends ignoring it.
        return;
      case Request.GetQueueNum:
        this.reply(request, { kind: "u64", value: BigInt(this.queues.length) });
        return;
      case Request.SetMemTable:
        this.setMemoryTable(expectBody("memory").regions, fds);
        return;
      case Request.SetVringNum: {
        const { index, num } = expectBody("state");
        const queue = this.queue(index, request);
        if (num < 1 || num > vhostQueueSizeMax || (num & (num - 1)) !== 0) throw new SessionError(`queue size ${num} is not a power of two in 1..${vhostQueueSizeMax}`);
        if (queue.started) throw new SessionError(`SET_VRING_NUM on running queue ${index}`);
        queue.size = num;
        return;
      }
      case Request.SetVringAddr: {
        const { address } = expectBody("address");
        const queue = this.queue(address.index, request);
        if (address.flags & ~vringFlagLog) throw new SessionError(`SET_VRING_ADDR flags 0x${address.flags.toString(16)}`);
        if (address.descriptor % queueAreaAlignment.descriptors !== 0 || address.available % queueAreaAlignment.available !== 0 || address.used % queueAreaAlignment.used !== 0) {
          throw new SessionError(`queue ${address.index} ring addresses are misaligned`);
        }
        queue.address = address;
        if (queue.ring) queue.ring.remap(this.ringAreas(queue));
        return;
      }
      case Request.SetVringBase: {
        const { index, num } = expectBody("state");
        const queue = this.queue(index, request);
        if (queue.started) throw new SessionError(`SET_VRING_BASE on running queue ${index}`);
        if (num > 0xffff) throw new SessionError(`SET_VRING_BASE ${num} does not fit a split ring's 16-bit index`);
        queue.base = num;
        return;
      }
      case Request.GetVringBase: {
        const { index } = expectBody("state");
        return this.stopQueue(this.queue(index, request));
      }
      case Request.SetVringKick: {
        const file = expectBody("vringFile");
        const queue = this.queue(file.index, request);
        if (file.noFd) throw new SessionError(`SET_VRING_KICK without a descriptor (polling) is not supported`);
        this.expectFds(request, fds, 1);
        return this.startQueue(queue, this.eventFd(request, fds));
      }
      case Request.SetVringCall: {
        const file = expectBody("vringFile");
        const queue = this.queue(file.index, request);
        this.expectFds(request, fds, file.noFd ? 0 : 1);
        const fd = file.noFd ? -1 : this.eventFd(request, fds);
        closeFd(queue.callFd);
        queue.callFd = fd;
        // One interrupt on every new call descriptor. A reconnecting QEMU may start the queue
        // (SET_VRING_KICK) while its call descriptor is still an internal notifier nobody reads,
        // and send the real one after: requests resubmitted at the kick that complete in between
        // would never interrupt the guest, which then waits for completions already in its used
        // ring. A spurious interrupt costs the driver one look at the ring. (libvhost-user does
        // the same, "in case of I/O hang after reconnecting".)
        if (fd >= 0) eventFdSignal(fd);
        return;
      }
      case Request.SetVringErr: {
        const file = expectBody("vringFile");
        const queue = this.queue(file.index, request);
        this.expectFds(request, fds, file.noFd ? 0 : 1);
        const fd = file.noFd ? -1 : this.eventFd(request, fds);
        closeFd(queue.errorFd);
        queue.errorFd = fd;
        return;
      }
      case Request.SetVringEnable: {
        const { index, num } = expectBody("state");
        const queue = this.queue(index, request);
        if (num > 1) throw new SessionError(`SET_VRING_ENABLE ${num}`);
        queue.enabled = num === 1;
        if (queue.enabled) this.service(queue);
        return;
      }
      case Request.GetConfig: {
        const { config } = expectBody("config");
        if (config.offset + config.sizeBytes > this.config.length) {
          // The spec's error answer: the same header with an empty payload.
          this.reply(request, { kind: "config", config: { ...config, payload: new Uint8Array(0) } });
          return;
        }
        this.reply(request, { kind: "config", config: { ...config, payload: this.config.slice(config.offset, config.offset + config.sizeBytes) } });
        return;
      }
      case Request.SetConfig: {
        const { config } = expectBody("config");
        // Without VIRTIO_BLK_F_CONFIG_WCE nothing in our config space is writable.
        throw new Refused(`SET_CONFIG of ${config.sizeBytes} bytes at ${config.offset}: no writable fields`);
      }
      case Request.GetInflightFd:
        this.createInflight(expectBody("inflight").inflight.queues, expectBody("inflight").inflight.queueSize);
        return;
      case Request.SetInflightFd: {
        const { inflight } = expectBody("inflight");
        this.expectFds(request, fds, 1);
        this.setInflight(fds.shift()!, inflight.mmapSizeBytes, inflight.mmapOffset, inflight.queues, inflight.queueSize);
        return;
      }
      default:
        throw new SessionError(`unsupported request ${requestName(request)}`);
    }
  }

  // ---- memory ----

  private setMemoryTable(descriptions: { guestAddress: number; sizeBytes: number; userAddress: number; mmapOffset: number }[], fds: number[]): void {
    this.expectFds(Request.SetMemTable, fds, descriptions.length);
    const mapped: MappedRegion[] = [];
    try {
      const regions: MemoryRegion[] = descriptions.map((description, index) => {
        const region = new MappedRegion(fds[index]!, description.sizeBytes, description.mmapOffset);
        mapped.push(region);
        return { guestAddress: description.guestAddress, sizeBytes: description.sizeBytes, userAddress: description.userAddress, bytes: region };
      });
      if (mapped.some((region) => region.shrinkable) && !this.warnedShrinkable) {
        this.warnedShrinkable = true;
        this.log.warn("guest memory is a memfd without F_SEAL_SHRINK: a front-end that shrinks it would crash the back-end (QEMU seals it unless seal=off)");
      }
      const memory = new MemoryMap(new GuestMemory(regions), mapped);
      const previous = this.memory;
      this.memory = memory;
      previous?.retire();
      this.log.debug("memory table", { regions: descriptions.map((r) => ({ guest: r.guestAddress, size: r.sizeBytes })) });
    } catch (error) {
      for (const region of mapped) region.unmap();
      throw error;
    }
    // The mappings hold the memory; the descriptors are closed by the caller.
    for (const queue of this.queues) if (queue.ring) queue.ring.remap(this.ringAreas(queue));
  }

  private ringAreas(queue: Queue): { descriptors: Uint8Array; available: Uint8Array; used: Uint8Array } {
    const memory = this.memory;
    const address = queue.address;
    if (!memory) throw new SessionError(`queue ${queue.index} started before SET_MEM_TABLE`);
    if (!address) throw new SessionError(`queue ${queue.index} started before SET_VRING_ADDR`);
    if (queue.size === 0) throw new SessionError(`queue ${queue.index} started before SET_VRING_NUM`);
    const sizes = queueAreaBytes(queue.size, this.eventIndex);
    const descriptors = memory.guest.userView(address.descriptor, sizes.descriptors);
    const available = memory.guest.userView(address.available, sizes.available);
    const used = memory.guest.userView(address.used, sizes.used);
    if (!descriptors || !available || !used) throw new SessionError(`queue ${queue.index} rings lie outside the memory table`);
    return { descriptors, available, used };
  }

  private get eventIndex(): boolean {
    return (this.featuresAcked & bit(FeatureBit.ringEventIndex)) !== 0n;
  }

  // ---- in-flight region ----

  private createInflight(queues: number, queueSize: number): void {
    if (queues < 1 || queues > this.queues.length) throw new SessionError(`GET_INFLIGHT_FD for ${queues} queues; this export has ${this.queues.length}`);
    if (queueSize < 1 || queueSize > vhostQueueSizeMax || (queueSize & (queueSize - 1)) !== 0) throw new SessionError(`GET_INFLIGHT_FD for queues of ${queueSize}`);
    const perQueue = inflightQueueBytes(queueSize);
    const sizeBytes = perQueue * queues;
    const fd = memoryFileCreate("tandem-vhost-inflight", sizeBytes, { sealSize: true });
    try {
      const region = new MappedRegion(fd, sizeBytes, 0);
      try {
        const all = region.all();
        for (let index = 0; index < queues; index++) InflightQueue.initialize(all.subarray(index * perQueue, (index + 1) * perQueue), queueSize);
      } finally {
        region.unmap();
      }
      this.reply(Request.GetInflightFd, { kind: "inflight", inflight: { mmapSizeBytes: sizeBytes, mmapOffset: 0, queues, queueSize } }, [fd]);
    } finally {
      closeFd(fd);
    }
  }

  private setInflight(fd: number, sizeBytes: number, offset: number, queues: number, queueSize: number): void {
    try {
      if (this.queues.some((queue) => queue.started)) throw new SessionError("SET_INFLIGHT_FD while queues are running");
      if (queues < 1 || queues > this.queues.length) throw new SessionError(`SET_INFLIGHT_FD for ${queues} queues; this export has ${this.queues.length}`);
      if (queueSize < 1 || queueSize > vhostQueueSizeMax || (queueSize & (queueSize - 1)) !== 0) throw new SessionError(`SET_INFLIGHT_FD for queues of ${queueSize}`);
      const perQueue = inflightQueueBytes(queueSize);
      if (sizeBytes < perQueue * queues) throw new SessionError(`SET_INFLIGHT_FD region of ${sizeBytes} bytes is too small for ${queues} queues of ${queueSize}`);
      const region = new MappedRegion(fd, sizeBytes, offset);
      this.inflightRegion?.unmap();
      this.inflightRegion = region;
      const all = region.all();
      this.queues.forEach((queue, index) => {
        queue.inflight = index < queues ? new InflightQueue(all.subarray(index * perQueue, (index + 1) * perQueue), queueSize) : undefined;
      });
    } finally {
      closeFd(fd);
    }
  }

  // ---- queues ----

  private async startQueue(queue: Queue, kickFd: number): Promise<void> {
    // Take the old descriptor out of the queue before awaiting, so that nobody else closes it too.
    const previousWatch = queue.kickWatch;
    const previousFd = queue.kickFd;
    queue.kickWatch = undefined;
    queue.kickFd = kickFd;
    await previousWatch?.cancel();
    closeFd(previousFd);
    if (this.stopping) return;
    if (queue.ring) {
      // A new kick descriptor for a running ring: just watch the new one.
      queue.kickWatch = this.watchKick(queue, kickFd);
      this.service(queue);
      return;
    }
    // Requests of this ring's previous life must settle before anything is resubmitted, or an old
    // write could land after the guest's newer one to the same blocks.
    if (queue.running > 0) {
      this.log.info("queue restart waits for requests of its previous run", { queue: queue.index, running: queue.running });
      await queue.whenIdle();
      if (this.stopping) return;
    }
    const areas = this.ringAreas(queue);
    const generation = ++queue.generation;
    const ring = new SplitQueue(
      { size: queue.size, eventIndex: this.eventIndex, indirect: (this.featuresAcked & bit(FeatureBit.ringIndirectDescriptors)) !== 0n, indirectDescriptorsMax: vhostIndirectDescriptorsMax },
      areas,
      queue.base,
    );
    let resubmit: number[] = [];
    if (queue.inflight) {
      const usedIndex = ring.usedIndex;
      resubmit = queue.inflight.recover(usedIndex);
      // Every head taken from the available ring is either published on the used ring or still
      // marked in flight, so the next one to take is used->idx plus those in flight — whatever
      // base the front-end restored (after a crash it can only guess used->idx).
      const nextAvailable = (usedIndex + resubmit.length) & 0xffff;
      if (nextAvailable !== queue.base) this.log.info("queue base taken from the in-flight region", { queue: queue.index, frontEndBase: queue.base, base: nextAvailable });
      ring.restartAt(nextAvailable);
    }
    queue.ring = ring;
    queue.accepting = true;
    queue.kickWatch = this.watchKick(queue, kickFd);
    this.log.debug("queue started", { queue: queue.index, size: queue.size, base: ring.nextAvailableIndex, resubmitted: resubmit.length });
    if (resubmit.length > 0) {
      this.log.info("resubmitting requests left in flight", { queue: queue.index, requests: resubmit.length });
      for (const head of resubmit) {
        if (queue.generation !== generation || this.stopping) return;
        this.submit(queue, ring.walk(head, this.memory!.guest), false);
      }
    }
    this.service(queue);
  }

  /** GET_VRING_BASE: stop taking requests, let those in flight finish (bounded), report the base. */
  private async stopQueue(queue: Queue): Promise<void> {
    const ring = queue.ring;
    if (!ring) {
      this.reply(Request.GetVringBase, { kind: "state", index: queue.index, num: queue.base });
      return;
    }
    queue.accepting = false;
    while (queue.running > 0) {
      let timer: Timer | undefined;
      const timedOut = await Promise.race([
        queue.whenIdle().then(() => false),
        new Promise<boolean>((resolve) => (timer = setTimeout(() => resolve(true), vhostStopDrainTimeoutMs))),
      ]);
      clearTimeout(timer);
      if (!timedOut || this.ending) break;
      if (queue.inflight) {
        // Their heads stay marked in the in-flight region: the next start of this ring resubmits
        // them (after they have settled here), so nothing is lost or answered twice.
        this.log.warn("queue stopped with requests still running; they stay in flight for resubmission", { queue: queue.index, running: queue.running });
        break;
      }
      // Without an in-flight region an unanswered request could never be recovered: keep waiting.
      this.log.warn("queue stop is waiting for requests still running", { queue: queue.index, running: queue.running });
    }
    this.flushNotifications();
    queue.generation++;
    queue.ring = undefined;
    const { kickWatch, kickFd, callFd } = queue;
    queue.kickWatch = undefined;
    queue.kickFd = queue.callFd = -1;
    await kickWatch?.cancel();
    closeFd(kickFd);
    closeFd(callFd);
    queue.base = ring.nextAvailableIndex;
    if (this.ending) return;
    this.reply(Request.GetVringBase, { kind: "state", index: queue.index, num: ring.nextAvailableIndex });
  }

  private watchKick(queue: Queue, kickFd: number): Watch {
    return this.options.poller.watchEventFd(kickFd, () => {
      queue.kicks++;
      this.service(queue);
    });
  }

  /** Take every available request the in-flight limit allows, then arm the kick. */
  private service(queue: Queue): void {
    const ring = queue.ring;
    if (!ring || !queue.accepting || !queue.enabled || this.stopping || !this.memory) return;
    try {
      for (;;) {
        while (this.running < requestsInFlightPerConnectionMax && ring.pending() > 0) {
          const head = ring.take();
          const chain = ring.walk(head, this.memory.guest);
          queue.inflight?.taken(head);
          this.submit(queue, chain, true);
          if (this.stopping || queue.ring !== ring || !queue.accepting) return;
        }
        // At the in-flight limit, completions call service() again; otherwise wait for a kick.
        if (this.running >= requestsInFlightPerConnectionMax || !ring.armKick()) return;
      }
    } catch (error) {
      if (queue.errorFd >= 0) eventFdSignal(queue.errorFd);
      this.fail(error);
    }
  }

  private submit(queue: Queue, chain: Chain, fresh: boolean): void {
    const request = decodeBlkRequest(chain, this.limits);
    const memory = this.memory!;
    const generation = queue.generation;
    memory.acquire();
    queue.running++;
    this.running++;
    let promise: Promise<number>;
    try {
      promise = this.execute(request);
    } catch (error) {
      promise = Promise.reject(error);
    }
    promise.then(
      (written) => this.complete(queue, generation, chain.head, request.status, BlkStatus.Ok, written, memory),
      (error) => this.complete(queue, generation, chain.head, request.status, this.statusFor(error, request), 0, memory),
    );
    if (!fresh) this.log.debug("resubmitted", { queue: queue.index, head: chain.head, kind: request.kind });
  }

  private statusFor(error: unknown, request: BlkRequest): BlkStatus {
    if (error instanceof BlockError) {
      if (error.code !== "EINVAL") this.log.warn("request failed", { kind: request.kind, code: error.code, error: error.message });
      return error.code === "ENOTSUP" ? BlkStatus.Unsupported : BlkStatus.IoError;
    }
    this.log.error("request failed unexpectedly", { kind: request.kind, error });
    return BlkStatus.IoError;
  }

  /** Run a request on the layer; resolves to the bytes written into the guest's buffers (status excluded). */
  private execute(request: BlkRequest): Promise<number> {
    const layer = this.layer;
    switch (request.kind) {
      case "read": {
        checkRange(layer, request.offsetBytes, request.lengthBytes, "virtio-blk read");
        const segments = request.segments;
        if (segments.length === 1) return layer.read(request.offsetBytes, segments[0]!).then(() => request.lengthBytes);
        let offset = request.offsetBytes;
        return Promise.all(
          segments.map((segment) => {
            const at = offset;
            offset += segment.length;
            return layer.read(at, segment);
          }),
        ).then(() => request.lengthBytes);
      }
      case "write": {
        checkRange(layer, request.offsetBytes, request.lengthBytes, "virtio-blk write");
        this.checkWritable("write");
        const segments = request.segments;
        if (segments.length === 1) return layer.write(request.offsetBytes, segments[0]!).then(() => 0);
        let offset = request.offsetBytes;
        return Promise.all(
          segments.map((segment) => {
            const at = offset;
            offset += segment.length;
            return layer.write(at, segment);
          }),
        ).then(() => 0);
      }
      case "flush":
        // virtio-blk has no FUA: a FLUSH makes every completed write durable (CONVENTIONS §7).
        return emulating(layer).flush().then(() => 0);
      case "getId": {
        let offset = 0;
        for (const target of request.target) {
          target.set(this.deviceId.subarray(offset, offset + target.length));
          offset += target.length;
        }
        return Promise.resolve(offset);
      }
      case "discard":
      case "writeZeroes": {
        const discard = request.kind === "discard";
        this.checkWritable(request.kind);
        for (const range of request.ranges) checkRange(layer, range.offsetBytes, range.lengthBytes, `virtio-blk ${request.kind}`);
        return Promise.all(
          request.ranges.map((range) =>
            discard ? emulating(layer).trim(range.offsetBytes, range.lengthBytes) : emulating(layer).zero(range.offsetBytes, range.lengthBytes, { noHole: !range.unmap }),
          ),
        ).then(() => 0);
      }
      case "reject":
        if (request.code === BlkStatus.IoError) this.log.info("request rejected", { reason: request.reason });
        return Promise.reject(new BlockError(request.code === BlkStatus.Unsupported ? "ENOTSUP" : "EINVAL", request.reason));
    }
  }

  private checkWritable(what: string): void {
    if (this.options.handle.readOnly()) throw new BlockError("EPERM", `${what} on a read-only volume`);
  }

  private complete(queue: Queue, generation: number, head: number, status: Uint8Array, code: BlkStatus, written: number, memory: MemoryMap): void {
    this.running--;
    queue.running--;
    const ring = queue.ring;
    // Publish only into the ring life that took the request, and only while the front-end is
    // there to see it; otherwise the head stays marked in flight for resubmission.
    if (ring && queue.generation === generation && this.socketOpen) {
      status[0] = code;
      queue.inflight?.beforeUsed(head);
      ring.putUsed(head, written + 1);
      queue.inflight?.afterUsed(head, ring.usedIndex);
      queue.notifyPending = true;
      this.scheduleNotify();
    }
    memory.release();
    if (queue.running === 0) for (const wake of queue.idleWaiters.splice(0)) wake();
    if (this.running === 0) for (const wake of this.idleWaiters.splice(0)) wake();
    // Requests may be waiting in the ring because we were at the in-flight limit.
    if (this.running === requestsInFlightPerConnectionMax - 1) for (const other of this.queues) this.service(other);
  }

  private scheduleNotify(): void {
    if (this.notifyScheduled) return;
    this.notifyScheduled = true;
    queueMicrotask(() => this.flushNotifications());
  }

  /** One interrupt per queue for all completions published in this turn, if the driver wants one. */
  private flushNotifications(): void {
    this.notifyScheduled = false;
    for (const queue of this.queues) {
      if (!queue.notifyPending) continue;
      queue.notifyPending = false;
      const ring = queue.ring;
      if (!ring || queue.callFd < 0) continue;
      if (ring.takeNotification()) eventFdSignal(queue.callFd);
    }
  }

  // ---- teardown ----

  private whenIdle(): Promise<void> {
    if (this.running === 0) return Promise.resolve();
    return new Promise((resolve) => this.idleWaiters.push(resolve));
  }

  /**
   * End the session: stop taking requests; with `drain`, let those in flight complete to the guest
   * first (bounded); close the socket (the front-end sees the disconnect and, with reconnect, comes
   * back); wait until no IO can touch guest memory; unmap it; release the volume.
   */
  end(reason: string, level: "info" | "warn", drain: boolean): Promise<void> {
    if (this.ending) return this.ending;
    this.stopping = true;
    this.log[level]("session ended", { reason, requestsInFlight: this.running });
    this.ending = (async () => {
      if (drain && this.running > 0) {
        // Completions keep being published while the socket is open and the generations hold.
        let timer: Timer | undefined;
        await Promise.race([this.whenIdle(), new Promise<void>((resolve) => (timer = setTimeout(resolve, vhostStopDrainTimeoutMs)))]);
        clearTimeout(timer);
        this.flushNotifications();
      }
      for (const queue of this.queues) {
        queue.generation++;
        queue.ring = undefined;
        const kickWatch = queue.kickWatch;
        queue.kickWatch = undefined;
        await kickWatch?.cancel();
      }
      await this.socketWatch.cancel();
      this.socketOpen = false;
      shutdownSocket(this.options.fd);
      closeFd(this.options.fd);
      // No IO may still write into guest memory when it is unmapped.
      await this.whenIdle();
      this.memory?.retire();
      this.memory = undefined;
      this.inflightRegion?.unmap();
      this.inflightRegion = undefined;
      for (const queue of this.queues) {
        closeFd(queue.kickFd);
        closeFd(queue.callFd);
        closeFd(queue.errorFd);
        queue.kickFd = queue.callFd = queue.errorFd = -1;
      }
      for (const fd of this.framer.takeFds()) closeFd(fd);
      this.options.handle.release();
      this.options.onClosed(this);
    })();
    return this.ending;
  }
}
