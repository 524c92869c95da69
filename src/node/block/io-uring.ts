// An io_uring instance driven from JavaScript through bun:ffi, the io_uring engine of io-engine.ts.
// The kernel and this process share three mappings of the ring descriptor: the submission queue
// (SQ) ring, the completion queue (CQ) ring and the array of submission entries (SQEs). A request
// is written into a free SQE, its index published by moving the SQ tail, and every request of one
// event-loop turn is handed over with a single io_uring_enter(2). Completions are read from the CQ
// ring: right after each io_uring_enter (requests that completed while it ran), and whenever the
// eventfd registered with the ring fires, which Bun's event loop watches on the main thread like
// any other readable descriptor (Bun.file(fd).stream(), as the vhost poller does for kicks). No
// pool thread sits between a request and the disk.
//
// Memory rules. The kernel reads the SQ tail and writes the CQ tail; we publish and read them with
// Atomics (sequentially consistent on any architecture), after writing the SQE / before reading the
// CQE. A request's buffer is the caller's memory, read or written by the kernel until the
// completion arrives: it is kept referenced in the request's slot until then, and the ring is
// unmapped only when nothing is in flight. Requests in flight never exceed the SQ size and the CQ
// holds twice that, so the CQ cannot overflow; more requests wait in a queue in JavaScript.
//
// One ring serves the whole process (every direct volume), shared through handles: each handle
// counts its own requests, so closing one volume waits for its IO alone, and the last release
// tears the ring down (and lets the process exit). Linux ≥ 5.6 (IORING_OP_READ/WRITE); layouts
// are those of include/uapi/linux/io_uring.h, the same on x86-64 and arm64 (little-endian, where
// the 64-bit fields are written as two 32-bit halves).
import { ptr } from "bun:ffi";
import { assert } from "../../common/assert.ts";
import { closeFd, eventFdCreate, mapShared, mappedBytes, unmap, type Mapping } from "../../common/ffi-socket.ts";
import { errno, errnoName, systemCall, systemError } from "../../common/libc.ts";
import { ioUringEntries, ioUringPollInFlightMax, ioUringPollMicrosDefault } from "../../constants.ts";

// System call numbers: io_uring came late enough to have the same numbers on every architecture.
const SYS_io_uring_setup = 425;
const SYS_io_uring_enter = 426;
const SYS_io_uring_register = 427;
// io_uring_setup flags, features, register opcodes, operations.
const IORING_SETUP_CLAMP = 1 << 4;
const IORING_FEAT_SINGLE_MMAP = 1 << 0;
const IORING_FEAT_NODROP = 1 << 1;
const IORING_FEAT_SUBMIT_STABLE = 1 << 2;
const IORING_FEAT_RW_CUR_POS = 1 << 3; // 5.6, with IORING_OP_READ and IORING_OP_WRITE
const requiredFeatures = IORING_FEAT_SINGLE_MMAP | IORING_FEAT_NODROP | IORING_FEAT_SUBMIT_STABLE | IORING_FEAT_RW_CUR_POS;
const IORING_REGISTER_EVENTFD = 4;
const IORING_OP_FSYNC = 3;
const IORING_OP_READ = 22;
const IORING_OP_WRITE = 23;
const IORING_FSYNC_DATASYNC = 1;
/** cq_ring flags: the kernel does not signal the registered eventfd while this is set (5.8). */
const IORING_CQ_EVENTFD_DISABLED = 1 << 0;
const IORING_OFF_SQ_RING = 0;
const IORING_OFF_SQES = 0x10000000;
const EINTR = 4;
const EAGAIN = 11;
const EBUSY = 16;
/** sizeof(struct io_uring_params), struct io_uring_sqe, struct io_uring_cqe. */
const paramsBytes = 120;
const sqeBytes = 64;
const cqeBytes = 16;

type Operation = typeof IORING_OP_READ | typeof IORING_OP_WRITE | typeof IORING_OP_FSYNC;

interface Request {
  operation: Operation;
  fd: number;
  buffer: Uint8Array | undefined;
  offset: number;
  /** Called with the CQE's result: a count, or a negated errno. */
  complete: (result: number) => void;
}

function splitLow(value: number): number {
  return value % 0x1_0000_0000;
}

function splitHigh(value: number): number {
  return Math.floor(value / 0x1_0000_0000);
}

export type IoUringAcquired = { ok: true; engine: IoUringHandle } | { ok: false; reason: string };

export class IoUring {
  private static shared: IoUring | undefined;

  private users = 0;
  private readonly sqRing: Uint32Array;
  private readonly sqRingAtomics: Int32Array;
  private readonly sqes: Uint32Array;
  private readonly cqRing: Uint32Array;
  private readonly cqRingAtomics: Int32Array;
  private readonly sqTailIndex: number;
  private readonly sqMask: number;
  private readonly cqHeadIndex: number;
  private readonly cqTailIndex: number;
  private readonly cqMask: number;
  private readonly cqesIndex: number;
  private readonly cqFlagsIndex: number;
  /**
   * The request timed for the service-time estimate (its slot, -1 for none) and when it was handed
   * over: only a request placed while nothing else was in flight, so the estimate is the device's
   * own latency, not a queue's, and a busy ring reads no clock.
   */
  private timedSlot = -1;
  private timedAt = 0;
  /** Recent service time of a lone request, µs (an exponentially weighted mean; 0 until one completes). */
  private serviceMicros = 0;
  /** The longest a completion is waited for on the CPU, µs (0: never; see poll). */
  pollMicrosMax = ioUringPollMicrosDefault;
  /** Requests in flight at most: the SQ size (the CQ holds twice that). */
  readonly capacity: number;
  private sqTail: number;
  private cqHead: number;
  private unsubmitted = 0;
  private flushScheduled = false;
  private readonly slots: (Request | undefined)[];
  private readonly freeSlots: number[];
  private readonly waiting: Request[] = [];
  private readonly reader: { read(): Promise<{ done: boolean }>; cancel(): Promise<void> };
  private closed = false;
  /** Completions read, io_uring_enter calls and eventfd wake-ups, for tests and benchmarks. */
  readonly counters = { completions: 0, enters: 0, wakeups: 0, polls: 0, polledCompletions: 0 };

  /**
   * Acquire the process's ring (created on first use). With `entries`, a private ring of that many
   * SQ entries instead (tests: a size the kernel refuses shows the fallback).
   */
  static acquire(entries?: number, pollMicrosMax = ioUringPollMicrosDefault): IoUringAcquired {
    let ring = entries === undefined ? IoUring.shared : undefined;
    if (!ring) {
      const created = IoUring.create(entries ?? ioUringEntries);
      if (!created.ok) return created;
      ring = created.ring;
      if (entries === undefined) IoUring.shared = ring;
    }
    ring.pollMicrosMax = pollMicrosMax;
    ring.users++;
    return { ok: true, engine: new IoUringHandle(ring) };
  }

  private static create(entries: number): { ok: true; ring: IoUring } | { ok: false; reason: string } {
    const params = new Uint32Array(paramsBytes / 4);
    params[2] = IORING_SETUP_CLAMP;
    let fd: number;
    try {
      fd = systemCall(SYS_io_uring_setup, entries, ptr(params));
    } catch (error) {
      return { ok: false, reason: `libc could not be loaded: ${(error as Error).message}` };
    }
    if (fd < 0) {
      const value = errno();
      const hint = value === 38 ? " (the kernel has no io_uring)" : value === 1 ? " (io_uring is disabled: kernel.io_uring_disabled, or a seccomp filter)" : "";
      return { ok: false, reason: `io_uring_setup(${entries}) failed: ${errnoName(value)}${hint}` };
    }
    const cleanup: (() => void)[] = [() => closeFd(fd)];
    try {
      const features = params[5]!;
      if ((features & requiredFeatures) !== requiredFeatures) {
        throw new Error(`the kernel's io_uring lacks features this engine needs (has 0x${features.toString(16)}, needs 0x${requiredFeatures.toString(16)}: Linux 5.6 or later)`);
      }
      const sqEntries = params[0]!;
      const cqEntries = params[1]!;
      const sqOff = { head: params[10]!, tail: params[11]!, mask: params[12]!, array: params[16]! };
      const cqOff = { head: params[20]!, tail: params[21]!, mask: params[22]!, cqes: params[25]!, flags: params[26]! };
      // One mapping holds both rings (IORING_FEAT_SINGLE_MMAP); the SQEs are a second one.
      const rings = mapShared(fd, Math.max(sqOff.array + sqEntries * 4, cqOff.cqes + cqEntries * cqeBytes), IORING_OFF_SQ_RING);
      cleanup.push(() => unmap(rings));
      const sqes = mapShared(fd, sqEntries * sqeBytes, IORING_OFF_SQES);
      cleanup.push(() => unmap(sqes));
      const eventFd = eventFdCreate();
      cleanup.push(() => closeFd(eventFd));
      if (systemCall(SYS_io_uring_register, fd, IORING_REGISTER_EVENTFD, ptr(new Int32Array([eventFd])), 1) < 0) throw systemError("registering the eventfd with io_uring");
      return { ok: true, ring: new IoUring({ fd, eventFd, rings, sqes, sqEntries, sqOff, cqOff }) };
    } catch (error) {
      for (const step of cleanup.reverse()) step();
      return { ok: false, reason: (error as Error).message };
    }
  }

  private constructor(
    private readonly setup: {
      fd: number;
      eventFd: number;
      rings: Mapping;
      sqes: Mapping;
      sqEntries: number;
      sqOff: { head: number; tail: number; mask: number; array: number };
      cqOff: { head: number; tail: number; mask: number; cqes: number; flags: number };
    },
  ) {
    const { sqOff, cqOff, sqEntries } = setup;
    const ringBuffer = mappedBytes(setup.rings, 0, setup.rings.sizeBytes).buffer;
    const sqesBuffer = mappedBytes(setup.sqes, 0, setup.sqes.sizeBytes).buffer;
    this.sqRing = new Uint32Array(ringBuffer);
    this.sqRingAtomics = new Int32Array(ringBuffer);
    this.cqRing = this.sqRing;
    this.cqRingAtomics = this.sqRingAtomics;
    this.sqes = new Uint32Array(sqesBuffer);
    this.sqTailIndex = sqOff.tail / 4;
    this.sqMask = this.sqRing[sqOff.mask / 4]!;
    this.cqHeadIndex = cqOff.head / 4;
    this.cqTailIndex = cqOff.tail / 4;
    this.cqMask = this.cqRing[cqOff.mask / 4]!;
    this.cqesIndex = cqOff.cqes / 4;
    // Kernels before 5.8 have no CQ flags word (offset 0): polling then leaves the eventfd alone.
    this.cqFlagsIndex = cqOff.flags > 0 ? cqOff.flags / 4 : -1;
    this.sqTail = Atomics.load(this.sqRingAtomics, this.sqTailIndex) >>> 0;
    this.cqHead = Atomics.load(this.cqRingAtomics, this.cqHeadIndex) >>> 0;
    // SQ array slot i always names SQE i: the SQE for a request is the one at the tail's index.
    for (let index = 0; index < sqEntries; index++) this.sqRing[sqOff.array / 4 + index] = index;
    this.capacity = sqEntries;
    this.slots = new Array<Request | undefined>(sqEntries).fill(undefined);
    this.freeSlots = Array.from({ length: sqEntries }, (_, index) => sqEntries - 1 - index);
    // Bun's event loop polls the non-blocking eventfd and consumes its counter on each read.
    this.reader = Bun.file(setup.eventFd).stream().getReader();
    void this.watchCompletions();
  }

  private async watchCompletions(): Promise<void> {
    for (;;) {
      // Rejects or ends only when cancelled at teardown.
      const chunk = await this.reader.read().catch(() => undefined);
      if (!chunk || chunk.done || this.closed) return;
      this.counters.wakeups++;
      this.reap();
    }
  }

  /** Queue one request; it is handed to the kernel at the end of this turn (one io_uring_enter for all). */
  submit(request: Request): void {
    assert(!this.closed, "request on a closed io_uring");
    const slot = this.freeSlots.pop();
    if (slot === undefined) {
      this.waiting.push(request);
      return;
    }
    this.place(slot, request);
  }

  inFlight(): number {
    return this.atDevice + this.waiting.length;
  }

  /** Requests placed in the ring and not yet completed (those waiting for a slot are not among them). */
  private get atDevice(): number {
    return this.capacity - this.freeSlots.length;
  }

  private place(slot: number, request: Request): void {
    // `slot` is taken already: this request is alone at the device, and none waits behind it.
    if (this.atDevice === 1 && this.waiting.length === 0) {
      this.timedSlot = slot;
      this.timedAt = performance.now();
    }
    this.slots[slot] = request;
    const base = (this.sqTail & this.sqMask) * (sqeBytes / 4);
    const sqes = this.sqes;
    const address = request.buffer && request.buffer.length > 0 ? ptr(request.buffer) : 0;
    sqes[base] = request.operation; // opcode, flags 0, ioprio 0
    sqes[base + 1] = request.fd;
    sqes[base + 2] = splitLow(request.offset);
    sqes[base + 3] = splitHigh(request.offset);
    sqes[base + 4] = splitLow(address);
    sqes[base + 5] = splitHigh(address);
    sqes[base + 6] = request.buffer?.length ?? 0;
    sqes[base + 7] = request.operation === IORING_OP_FSYNC ? IORING_FSYNC_DATASYNC : 0; // rw_flags / fsync_flags
    sqes[base + 8] = slot; // user_data
    sqes[base + 9] = 0;
    sqes.fill(0, base + 10, base + sqeBytes / 4);
    this.sqTail = (this.sqTail + 1) >>> 0;
    this.unsubmitted++;
    if (!this.flushScheduled) {
      this.flushScheduled = true;
      queueMicrotask(() => this.flush());
    }
  }

  private flush(): void {
    this.flushScheduled = false;
    if (this.closed || this.unsubmitted === 0) return;
    Atomics.store(this.sqRingAtomics, this.sqTailIndex, this.sqTail | 0);
    for (;;) {
      const submitted = systemCall(SYS_io_uring_enter, this.setup.fd, this.unsubmitted, 0, 0);
      this.counters.enters++;
      if (submitted >= 0) {
        this.unsubmitted -= submitted;
        break;
      }
      const value = errno();
      if (value === EINTR) continue;
      if (value === EAGAIN || value === EBUSY) {
        // The kernel is short of memory for requests, or wants its completions read first: try
        // again after reaping (the requests stay in the ring until a later enter takes them).
        this.reap();
        setTimeout(() => this.flush(), 1);
        return;
      }
      // Anything else (EBADF, EFAULT, EINVAL) means the ring itself is broken: no request could
      // ever complete, so stop like an assertion rather than hang every volume.
      throw systemError("io_uring_enter", value);
    }
    if (this.unsubmitted > 0 && !this.flushScheduled) {
      this.flushScheduled = true;
      queueMicrotask(() => this.flush());
    }
    if (this.reap() === 0) this.poll();
  }

  /**
   * Wait for the next completion on the CPU instead of in the event loop, when the device answers
   * fast: an O_DIRECT read of a fast disk takes a few tens of µs, and going to sleep in the event
   * loop and being woken through the eventfd costs a good part of that again (an idle virtual CPU
   * is woken by an interrupt from the host). So, with a request in flight and none completed yet,
   * the CQ tail is watched for up to twice the recent service time of a lone request, never more
   * than pollMicrosMax (TANDEM_IO_POLL_US); a slower device is never polled. Only a lone request is
   * polled for (ioUringPollInFlightMax): with more in flight, completions and new requests keep the
   * loop busy, and a spin would hold back the requests waiting on sockets. The eventfd is silenced
   * meanwhile (the wake-up would find nothing), and the CQ looked at once more after it is armed
   * again, so a completion posted in between is not left waiting for a signal that never comes.
   * The same idea as QEMU's adaptive polling of its event loops (poll-max-ns).
   */
  private poll(): void {
    const service = this.serviceMicros;
    const inFlight = this.atDevice;
    if (service === 0 || service > this.pollMicrosMax || inFlight === 0 || inFlight > ioUringPollInFlightMax) return;
    const budgetMs = Math.min(this.pollMicrosMax, 2 * service) / 1000;
    const atomics = this.cqRingAtomics;
    const flags = this.cqFlagsIndex;
    if (flags >= 0) Atomics.or(atomics, flags, IORING_CQ_EVENTFD_DISABLED);
    const head = this.cqHead | 0;
    const started = performance.now();
    this.counters.polls++;
    while (Atomics.load(atomics, this.cqTailIndex) === head && performance.now() - started < budgetMs) {
      // spin: the completion is expected within the budget
    }
    if (flags >= 0) Atomics.and(atomics, flags, ~IORING_CQ_EVENTFD_DISABLED);
    this.counters.polledCompletions += this.reap();
  }

  /** Read every completion the kernel has posted, free their slots, start waiting requests; how many. */
  private reap(): number {
    if (this.closed) return 0;
    const tail = Atomics.load(this.cqRingAtomics, this.cqTailIndex) >>> 0;
    let head = this.cqHead;
    if (head === tail) return 0;
    const done: { request: Request; result: number }[] = [];
    while (head !== tail) {
      const base = this.cqesIndex + (head & this.cqMask) * (cqeBytes / 4);
      const slot = this.cqRing[base]!; // user_data, low half
      const result = this.cqRingAtomics[base + 2]!;
      const request = this.slots[slot];
      assert(request !== undefined, "io_uring completion for a slot with no request");
      this.slots[slot] = undefined;
      this.freeSlots.push(slot);
      if (slot === this.timedSlot) {
        this.timedSlot = -1;
        const micros = (performance.now() - this.timedAt) * 1000;
        this.serviceMicros = this.serviceMicros === 0 ? micros : this.serviceMicros + (micros - this.serviceMicros) / 8;
      }
      done.push({ request, result });
      head = (head + 1) >>> 0;
    }
    this.cqHead = head;
    Atomics.store(this.cqRingAtomics, this.cqHeadIndex, head | 0);
    this.counters.completions += done.length;
    for (const { request, result } of done) {
      // A read or write the kernel could not start right now is simply asked again.
      if (result === -EAGAIN || result === -EINTR) this.submit(request);
      else request.complete(result);
    }
    while (this.waiting.length > 0 && this.freeSlots.length > 0) this.place(this.freeSlots.pop()!, this.waiting.shift()!);
    return done.length;
  }

  /** One user fewer; the last one unmaps the ring once nothing is in flight. */
  async release(): Promise<void> {
    assert(this.users > 0, "io_uring released more often than acquired");
    if (--this.users > 0) return;
    if (IoUring.shared === this) IoUring.shared = undefined;
    // Every handle waited for its own requests before releasing, so nothing can be in flight.
    assert(this.inFlight() === 0, "io_uring torn down with requests in flight");
    this.closed = true;
    await this.reader.cancel().catch(() => {});
    unmap(this.setup.sqes);
    unmap(this.setup.rings);
    closeFd(this.setup.eventFd);
    closeFd(this.setup.fd);
  }
}

/** One user's view of the shared ring: the IoEngine a file layer holds. */
export class IoUringHandle {
  readonly name = "io_uring";
  private pending = 0;
  private drained: (() => void) | undefined;
  private released = false;

  constructor(readonly ring: IoUring) {}

  private request(operation: Operation, fd: number, buffer: Uint8Array | undefined, offset: number): Promise<number> {
    if (this.released) return Promise.reject(Object.assign(new Error("io_uring engine released"), { code: "ESHUTDOWN" }));
    this.pending++;
    return new Promise<number>((resolve, reject) => {
      this.ring.submit({
        operation,
        fd,
        buffer,
        offset,
        complete: (result) => {
          if (--this.pending === 0) this.drained?.();
          if (result >= 0) resolve(result);
          else reject(systemError(operation === IORING_OP_READ ? "read" : operation === IORING_OP_WRITE ? "write" : "fdatasync", -result));
        },
      });
    });
  }

  read(fd: number, target: Uint8Array, offset: number): Promise<number> {
    return this.request(IORING_OP_READ, fd, target, offset);
  }

  write(fd: number, source: Uint8Array, offset: number): Promise<number> {
    return this.request(IORING_OP_WRITE, fd, source, offset);
  }

  async datasync(fd: number): Promise<void> {
    await this.request(IORING_OP_FSYNC, fd, undefined, 0);
  }

  inFlight(): number {
    return this.pending;
  }

  /** Wait for this handle's requests to complete (their buffers belong to the kernel until then), then let go of the ring. */
  async release(): Promise<void> {
    if (this.released) return;
    this.released = true;
    if (this.pending > 0) await new Promise<void>((resolve) => (this.drained = resolve));
    await this.ring.release();
  }
}
