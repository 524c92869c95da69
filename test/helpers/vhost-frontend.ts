// A vhost-user front-end written for the tests: it plays QEMU's part against the back-end over a
// real unix socket, with guest memory in a memfd shared through SCM_RIGHTS, kick and call eventfds,
// and split virtqueues it lays out in that memory itself. It can build any descriptor chain —
// including broken ones — so tests can drive every request and every malformed case, and it reads
// results straight from guest memory (used ring, status bytes, data buffers).
import {
  closeFd,
  eventFdConsume,
  eventFdCreate,
  eventFdSignal,
  mapShared,
  mappedBytes,
  memoryFileCreate,
  receiveWithFds,
  sendWithFds,
  unixConnect,
  unmap,
  type Mapping,
} from "../../src/common/ffi-socket.ts";
import {
  FeatureBit,
  HeaderFlag,
  MessageFramer,
  ProtocolFeatureBit,
  Request,
  bit,
  encodeMessage,
  type Body,
  type Message,
} from "../../src/node/export/vhost/protocol.ts";
import { BlkFeatureBit, BlkRequestType } from "../../src/node/export/vhost/blk.ts";
import { queueAreaBytes } from "../../src/node/export/vhost/virtqueue.ts";
import { until } from "./until.ts";

export const VIRTQ_DESC_F_NEXT = 1;
export const VIRTQ_DESC_F_WRITE = 2;
export const VIRTQ_DESC_F_INDIRECT = 4;

/** The front-end's virtual address of guest physical 0, as QEMU would have it (any value works). */
const userBase = 0x7f00_0000_0000;
const pageBytes = 4096;

export interface GuestBuffer {
  address: number;
  length: number;
  write: boolean;
}

export interface Descriptor {
  address: number;
  length: number;
  flags: number;
  next: number;
}

export interface UsedElement {
  head: number;
  length: number;
}

export interface FrontEndOptions {
  memoryBytes?: number;
  /** Split guest memory into this many regions (separate SET_MEM_TABLE entries, contiguous in guest space). */
  regions?: number;
  /** Seal the memfd against resizing, as QEMU's memfd backend does (default true). */
  sealed?: boolean;
}

export { until };

export class TestQueue {
  readonly kickFd = eventFdCreate();
  readonly callFd = eventFdCreate();
  nextAvailable = 0;
  lastUsedSeen = 0;
  private free: number[];
  private chains = new Map<number, number[]>();
  constructor(
    private readonly frontEnd: VhostTestFrontEnd,
    readonly index: number,
    readonly size: number,
    readonly descriptorAddress: number,
    readonly availableAddress: number,
    readonly usedAddress: number,
  ) {
    this.free = Array.from({ length: size }, (_, i) => i);
  }

  writeDescriptor(table: number, index: number, descriptor: Descriptor): void {
    const view = this.frontEnd.view(table + 16 * index, 16);
    view.setBigUint64(0, BigInt(descriptor.address), true);
    view.setUint32(8, descriptor.length, true);
    view.setUint16(12, descriptor.flags, true);
    view.setUint16(14, descriptor.next, true);
  }

  /** Lay `buffers` out as a chain in the descriptor table (or one indirect table) and return its head. */
  addChain(buffers: GuestBuffer[], options: { indirect?: boolean } = {}): number {
    if (options.indirect) {
      const table = this.frontEnd.allocate(16 * buffers.length, 16);
      buffers.forEach((buffer, i) =>
        this.writeDescriptor(table, i, {
          address: buffer.address,
          length: buffer.length,
          flags: (buffer.write ? VIRTQ_DESC_F_WRITE : 0) | (i < buffers.length - 1 ? VIRTQ_DESC_F_NEXT : 0),
          next: i + 1,
        }),
      );
      return this.addRaw([{ address: table, length: 16 * buffers.length, flags: VIRTQ_DESC_F_INDIRECT, next: 0 }]);
    }
    return this.addRaw(buffers.map((buffer) => ({ address: buffer.address, length: buffer.length, flags: buffer.write ? VIRTQ_DESC_F_WRITE : 0, next: 0 })));
  }

  /** Chain raw descriptors (NEXT flags and next indexes are filled in for all but the last). */
  addRaw(descriptors: Descriptor[], linkNext = true): number {
    if (this.free.length < descriptors.length) throw new Error("test queue out of descriptors");
    const indexes = this.free.splice(0, descriptors.length);
    descriptors.forEach((descriptor, i) => {
      const last = i === descriptors.length - 1;
      this.writeDescriptor(this.descriptorAddress, indexes[i]!, linkNext ? { ...descriptor, flags: descriptor.flags | (last ? 0 : VIRTQ_DESC_F_NEXT), next: last ? 0 : indexes[i + 1]! } : descriptor);
    });
    this.chains.set(indexes[0]!, indexes);
    return indexes[0]!;
  }

  /** Put `head` on the available ring (without publishing the new index). */
  offer(head: number): void {
    const view = this.frontEnd.view(this.availableAddress, 4 + 2 * this.size + 2);
    view.setUint16(4 + 2 * (this.nextAvailable % this.size), head, true);
    this.nextAvailable = (this.nextAvailable + 1) & 0xffff;
  }

  /** Publish the available index (memory only; no kick). */
  publish(): void {
    Atomics.store(new Uint16Array(this.frontEnd.guest.buffer, this.frontEnd.guest.byteOffset + this.availableAddress, 2), 1, this.nextAvailable);
  }

  kick(): void {
    eventFdSignal(this.kickFd);
  }

  /** Offer, publish and kick. */
  push(...heads: number[]): void {
    for (const head of heads) this.offer(head);
    this.publish();
    this.kick();
  }

  setAvailableFlags(flags: number): void {
    this.frontEnd.view(this.availableAddress, 2).setUint16(0, flags, true);
  }

  /** Driver's used_event (event index: interrupt me when used->idx passes this). */
  setUsedEvent(value: number): void {
    this.frontEnd.view(this.availableAddress + 4 + 2 * this.size, 2).setUint16(0, value, true);
  }

  /** Device's avail_event (event index: the device wants a kick when avail->idx passes this). */
  availableEvent(): number {
    return this.frontEnd.view(this.usedAddress + 4 + 8 * this.size, 2).getUint16(0, true);
  }

  usedIndex(): number {
    return Atomics.load(new Uint16Array(this.frontEnd.guest.buffer, this.frontEnd.guest.byteOffset + this.usedAddress, 2), 1);
  }

  /** Used elements published since the last call, in order; their descriptors are freed. */
  takeUsed(): UsedElement[] {
    const out: UsedElement[] = [];
    const view = this.frontEnd.view(this.usedAddress, 4 + 8 * this.size);
    const used = this.usedIndex();
    while (this.lastUsedSeen !== used) {
      const slot = this.lastUsedSeen % this.size;
      const head = view.getUint32(4 + 8 * slot, true);
      out.push({ head, length: view.getUint32(8 + 8 * slot, true) });
      const chain = this.chains.get(head);
      if (chain) {
        this.free.push(...chain);
        this.chains.delete(head);
      }
      this.lastUsedSeen = (this.lastUsedSeen + 1) & 0xffff;
    }
    return out;
  }

  async waitUsed(count: number, timeoutMs = 5000): Promise<UsedElement[]> {
    const got: UsedElement[] = [];
    await until(`${count} used entries on queue ${this.index}`, () => {
      got.push(...this.takeUsed());
      return got.length >= count;
    }, timeoutMs);
    return got;
  }

  /** Interrupts received (eventfd counter, reset by reading). */
  interrupts(): number {
    return eventFdConsume(this.callFd);
  }

  close(): void {
    closeFd(this.kickFd);
    closeFd(this.callFd);
  }
}

export interface BlkResult {
  status: number;
  usedLength: number;
}

export class VhostTestFrontEnd {
  readonly memoryFd: number;
  readonly mapping: Mapping;
  readonly guest: Uint8Array;
  readonly memoryBytes: number;
  readonly regionCount: number;
  private fd: number;
  private readonly framer = new MessageFramer();
  private readonly receiveBuffer = new Uint8Array(65536);
  private replies: { message: Message; fds: number[] }[] = [];
  private allocation = 0;
  readonly queues: TestQueue[] = [];
  closedByPeer = false;

  private constructor(fd: number, memoryBytes: number, regions: number, sealed: boolean) {
    this.fd = fd;
    this.memoryBytes = memoryBytes;
    this.regionCount = regions;
    this.memoryFd = memoryFileCreate("test-guest-ram", memoryBytes, { sealSize: sealed });
    this.mapping = mapShared(this.memoryFd, memoryBytes, 0);
    this.guest = mappedBytes(this.mapping, 0, memoryBytes);
    // Keep page 0 unused so that address 0 is never a valid buffer by accident.
    this.allocation = pageBytes;
  }

  static connect(socketPath: string, options: FrontEndOptions = {}): VhostTestFrontEnd {
    return new VhostTestFrontEnd(unixConnect(socketPath), options.memoryBytes ?? 16 * 1024 * 1024, options.regions ?? 1, options.sealed ?? true);
  }

  /** Connect again (same guest memory and queues), as QEMU does after a back-end restart. */
  reconnect(socketPath: string): void {
    closeFd(this.fd);
    this.fd = unixConnect(socketPath);
    this.closedByPeer = false;
    this.replies = [];
  }

  view(address: number, length: number): DataView {
    return new DataView(this.guest.buffer, this.guest.byteOffset + address, length);
  }

  bytes(address: number, length: number): Uint8Array {
    return this.guest.subarray(address, address + length);
  }

  allocate(bytes: number, alignment = 16): number {
    const address = Math.ceil(this.allocation / alignment) * alignment;
    if (address + bytes > this.memoryBytes) throw new Error("test guest memory exhausted");
    this.allocation = address + bytes;
    return address;
  }

  /** Send raw bytes (for malformed messages). */
  sendRaw(bytes: Uint8Array, fds: number[] = []): void {
    const sent = sendWithFds(this.fd, bytes, fds);
    if (sent !== bytes.length) throw new Error(`short send ${sent}`);
  }

  send(request: number, body: Body = { kind: "none" }, options: { fds?: number[]; needReply?: boolean } = {}): void {
    const flags = HeaderFlag.Version | (options.needReply ? HeaderFlag.NeedReply : 0);
    this.sendRaw(encodeMessage({ request, flags, body }), options.fds ?? []);
  }

  private poll(): void {
    for (;;) {
      const received = receiveWithFds(this.fd, this.receiveBuffer);
      if (received.kind === "again") return;
      if (received.kind === "closed") {
        this.closedByPeer = true;
        return;
      }
      this.framer.push(this.receiveBuffer.subarray(0, received.bytes), received.fds);
      for (let framed = this.framer.next(); framed; framed = this.framer.next()) this.replies.push(framed);
    }
  }

  async reply(timeoutMs = 5000): Promise<{ message: Message; fds: number[] }> {
    return until("a reply", () => {
      this.poll();
      if (this.replies.length > 0) return this.replies.shift();
      if (this.closedByPeer) throw new Error("back-end closed the connection");
      return undefined;
    }, timeoutMs);
  }

  /** Send and wait for the reply body. */
  async call(request: number, body: Body = { kind: "none" }, options: { fds?: number[]; needReply?: boolean } = {}): Promise<Body> {
    this.send(request, body, options);
    const { message, fds } = await this.reply();
    for (const fd of fds) closeFd(fd);
    if (message.request !== request) throw new Error(`reply to ${message.request}, expected ${request}`);
    if ((message.flags & HeaderFlag.Reply) === 0) throw new Error("reply without the reply flag");
    return message.body;
  }

  async callU64(request: number, body: Body = { kind: "none" }): Promise<bigint> {
    const reply = await this.call(request, body);
    if (reply.kind !== "u64") throw new Error(`expected a u64 reply, got ${reply.kind}`);
    return reply.value;
  }

  /** Resolves when the back-end closes the connection. */
  async waitClosed(timeoutMs = 5000): Promise<void> {
    await until("the back-end to close the connection", () => {
      this.poll();
      return this.closedByPeer;
    }, timeoutMs);
  }

  isClosed(): boolean {
    this.poll();
    return this.closedByPeer;
  }

  /** SET_MEM_TABLE describing guest memory (optionally as several contiguous regions, or claiming more than there is). */
  async setMemoryTable(needReply = true, claimedBytes = this.memoryBytes): Promise<void> {
    const regionBytes = claimedBytes / this.regionCount;
    const regions = Array.from({ length: this.regionCount }, (_, i) => ({
      guestAddress: i * regionBytes,
      sizeBytes: regionBytes,
      userAddress: userBase + i * regionBytes,
      mmapOffset: i * regionBytes,
    }));
    const fds = regions.map(() => this.memoryFd);
    if (needReply) {
      const ack = await this.call(Request.SetMemTable, { kind: "memory", regions }, { fds, needReply: true });
      if (ack.kind !== "u64" || ack.value !== 0n) throw new Error("SET_MEM_TABLE refused");
    } else {
      this.send(Request.SetMemTable, { kind: "memory", regions }, { fds });
    }
  }

  /** Feature handshake as QEMU does it; returns what the back-end offered. */
  async negotiate(options: { features?: bigint; protocolFeatures?: bigint } = {}): Promise<{ features: bigint; protocolFeatures: bigint }> {
    const features = await this.callU64(Request.GetFeatures);
    const protocolFeatures = await this.callU64(Request.GetProtocolFeatures);
    const wantedProtocol = options.protocolFeatures ?? protocolFeatures;
    this.send(Request.SetProtocolFeatures, { kind: "u64", value: wantedProtocol });
    this.send(Request.SetOwner);
    this.send(Request.SetFeatures, { kind: "u64", value: options.features ?? features });
    return { features, protocolFeatures };
  }

  /** Lay out a queue in guest memory and configure it (NUM, BASE, ADDR, CALL, then KICK starts it). */
  async setupQueue(index: number, size = 64, options: { eventIndex?: boolean; base?: number } = {}): Promise<TestQueue> {
    const sizes = queueAreaBytes(size, true);
    const descriptors = this.allocate(sizes.descriptors, 16);
    const available = this.allocate(sizes.available, 2);
    const used = this.allocate(sizes.used, 4);
    const queue = new TestQueue(this, index, size, descriptors, available, used);
    this.queues[index] = queue;
    await this.startQueue(queue, options.base ?? 0);
    return queue;
  }

  /** SET_VRING_NUM, BASE, ADDR, CALL (`callFd`: another descriptor than the queue's own, as QEMU's masked notifier), then KICK. */
  async startQueue(queue: TestQueue, base: number, options: { callFd?: number } = {}): Promise<void> {
    this.send(Request.SetVringNum, { kind: "state", index: queue.index, num: queue.size });
    this.send(Request.SetVringBase, { kind: "state", index: queue.index, num: base });
    this.send(Request.SetVringAddr, {
      kind: "address",
      address: { index: queue.index, flags: 0, descriptor: userBase + queue.descriptorAddress, used: userBase + queue.usedAddress, available: userBase + queue.availableAddress, log: 0 },
    });
    this.send(Request.SetVringCall, { kind: "vringFile", index: queue.index, noFd: false }, { fds: [options.callFd ?? queue.callFd] });
    const ack = await this.call(Request.SetVringKick, { kind: "vringFile", index: queue.index, noFd: false }, { fds: [queue.kickFd], needReply: true });
    if (ack.kind !== "u64" || ack.value !== 0n) throw new Error("SET_VRING_KICK refused");
  }

  /** A full session as QEMU sets it up, optionally with the in-flight region. */
  async setup(options: { queues?: number; size?: number; inflight?: boolean; features?: bigint } = {}): Promise<TestQueue[]> {
    const { features } = await this.negotiate({ features: options.features });
    void features;
    await this.setMemoryTable();
    if (options.inflight) await this.setupInflight(options.queues ?? 1, options.size ?? 64);
    const queues: TestQueue[] = [];
    for (let i = 0; i < (options.queues ?? 1); i++) queues.push(await this.setupQueue(i, options.size ?? 64));
    return queues;
  }

  inflightFd = -1;
  inflightBytes = 0;

  async setupInflight(queues: number, queueSize: number): Promise<void> {
    this.send(Request.GetInflightFd, { kind: "inflight", inflight: { mmapSizeBytes: 0, mmapOffset: 0, queues, queueSize } });
    const { message, fds } = await this.reply();
    if (message.body.kind !== "inflight" || fds.length !== 1) throw new Error("GET_INFLIGHT_FD reply without a region");
    if (this.inflightFd >= 0) closeFd(this.inflightFd);
    this.inflightFd = fds[0]!;
    this.inflightBytes = message.body.inflight.mmapSizeBytes;
    await this.sendInflight(queues, queueSize);
  }

  async sendInflight(queues: number, queueSize: number): Promise<void> {
    const ack = await this.call(
      Request.SetInflightFd,
      { kind: "inflight", inflight: { mmapSizeBytes: this.inflightBytes, mmapOffset: 0, queues, queueSize } },
      { fds: [this.inflightFd], needReply: true },
    );
    if (ack.kind !== "u64" || ack.value !== 0n) throw new Error("SET_INFLIGHT_FD refused");
  }

  // ---- virtio-blk requests ----

  /** Header + data + status in guest memory; returns the chain buffers and where the status byte is. */
  blkRequest(type: number, sector: number, data: { length: number; write: boolean; segments?: number } | undefined): { buffers: GuestBuffer[]; status: number; data: number } {
    const header = this.allocate(16, 16);
    const view = this.view(header, 16);
    view.setUint32(0, type, true);
    view.setUint32(4, 0, true);
    view.setBigUint64(8, BigInt(sector), true);
    const buffers: GuestBuffer[] = [{ address: header, length: 16, write: false }];
    let dataAddress = 0;
    if (data && data.length > 0) {
      dataAddress = this.allocate(data.length, pageBytes);
      const segments = data.segments ?? 1;
      const per = Math.ceil(data.length / segments);
      for (let offset = 0; offset < data.length; offset += per) {
        buffers.push({ address: dataAddress + offset, length: Math.min(per, data.length - offset), write: data.write });
      }
    }
    const status = this.allocate(1, 1);
    this.guest[status] = 0xff;
    buffers.push({ address: status, length: 1, write: true });
    return { buffers, status, data: dataAddress };
  }

  async blk(queue: TestQueue, type: number, sector: number, data?: { length: number; write: boolean; segments?: number; fill?: Uint8Array }, options: { indirect?: boolean } = {}): Promise<BlkResult & { data: Uint8Array }> {
    const request = this.blkRequest(type, sector, data);
    if (data?.fill) this.guest.set(data.fill, request.data);
    const head = queue.addChain(request.buffers, options);
    queue.push(head);
    const [used] = await queue.waitUsed(1);
    if (used!.head !== head) throw new Error(`used head ${used!.head}, expected ${head}`);
    return { status: this.guest[request.status]!, usedLength: used!.length, data: data ? this.bytes(request.data, data.length).slice() : new Uint8Array(0) };
  }

  read(queue: TestQueue, sector: number, length: number, options: { segments?: number; indirect?: boolean } = {}) {
    return this.blk(queue, BlkRequestType.In, sector, { length, write: true, segments: options.segments }, options);
  }

  write(queue: TestQueue, sector: number, bytes: Uint8Array, options: { segments?: number; indirect?: boolean } = {}) {
    return this.blk(queue, BlkRequestType.Out, sector, { length: bytes.length, write: false, segments: options.segments, fill: bytes }, options);
  }

  /** DISCARD or WRITE_ZEROES with {sector, sectors, flags} ranges. */
  ranges(queue: TestQueue, type: number, ranges: { sector: number; sectors: number; flags?: number }[]) {
    const bytes = new Uint8Array(16 * ranges.length);
    const view = new DataView(bytes.buffer);
    ranges.forEach((range, i) => {
      view.setBigUint64(16 * i, BigInt(range.sector), true);
      view.setUint32(16 * i + 8, range.sectors, true);
      view.setUint32(16 * i + 12, range.flags ?? 0, true);
    });
    return this.blk(queue, type, 0, { length: bytes.length, write: false, fill: bytes });
  }

  close(): void {
    for (const queue of this.queues) queue?.close();
    closeFd(this.fd);
    if (this.inflightFd >= 0) closeFd(this.inflightFd);
    unmap(this.mapping);
    closeFd(this.memoryFd);
  }
}

export const allFeatures = {
  version1: bit(FeatureBit.version1),
  indirect: bit(FeatureBit.ringIndirectDescriptors),
  eventIndex: bit(FeatureBit.ringEventIndex),
  protocol: bit(FeatureBit.protocolFeatures),
  flush: bit(BlkFeatureBit.flush),
  discard: bit(BlkFeatureBit.discard),
  writeZeroes: bit(BlkFeatureBit.writeZeroes),
  readOnly: bit(BlkFeatureBit.readOnly),
  multipleQueues: bit(BlkFeatureBit.multipleQueues),
  replyAck: bit(ProtocolFeatureBit.replyAck),
};
