// Readiness of the descriptors a vhost-user back-end waits on, delivered to the main thread (where
// block IO must run, because the volume's layer stack lives there). Two mechanisms, each where it
// measured best:
//
//  - Kick eventfds (the hot path: one per request batch) are read by Bun's own event loop through
//    `Bun.file(fd).stream()`, which polls a non-blocking eventfd on the main thread and consumes its
//    counter. Measured on the lab machine against the worker hop below: wake-up p50 6–18 µs
//    against 12–23 µs, p99 about 50 µs against 600–700 µs (the extra thread competes for the CPU
//    with the guest). Cancelling the reader stops the polling before the fd is closed, so a reused
//    descriptor number is never read by a stale stream.
//  - Sockets (the listening socket and each control socket) cannot be read that way: the stream
//    would consume the bytes and drop the file descriptors passed with them. One Worker per process
//    sits in epoll_wait(2) through bun:ffi and never touches any descriptor but the epoll one; the
//    main thread owns every descriptor and adds/removes them with epoll_ctl, which is safe while the
//    worker waits. Everything is edge-triggered, so a handler must drain its source (read to
//    EAGAIN) when it runs. Wake-ups are coalesced: the worker marks ready sources in a shared
//    array and posts a message only if the main thread is not already due to look. A handler may
//    run when nothing is ready (a slot reused after a source was removed): handlers tolerate that.
//
// The worker is created from an inline module (a Blob URL), so a `bun build --compile` binary needs
// no separate worker entry point. It lives while anything is watched through an acquired Poller and
// is stopped when the last user releases it, so tests and short-lived processes exit cleanly.
import { assert } from "../../../common/assert.ts";
import {
  EPOLLET,
  EPOLLIN,
  EPOLL_CTL_ADD,
  EPOLL_CTL_DEL,
  closeFd,
  epollControl,
  epollCreate,
  epollEventBytes,
  epollEventDataOffset,
  eventFdCreate,
  eventFdSignal,
} from "../../../common/ffi-socket.ts";
import { vhostWatchedDescriptorsMax } from "../../../constants.ts";

const workerSource = `
import { dlopen, FFIType, read } from "bun:ffi";
self.onmessage = (event) => {
  const { epollFd, pending, scheduled, eventBytes, dataOffset, stopToken } = event.data;
  const libc = dlopen("libc.so.6", {
    epoll_wait: { args: [FFIType.i32, FFIType.ptr, FFIType.i32, FFIType.i32], returns: FFIType.i32 },
    __errno_location: { args: [], returns: FFIType.ptr },
  }).symbols;
  postMessage({ ready: true });
  const batch = 64;
  const events = new Uint8Array(eventBytes * batch);
  const view = new DataView(events.buffer);
  for (;;) {
    const count = libc.epoll_wait(epollFd, events, batch, -1);
    if (count < 0) {
      const errno = read.i32(libc.__errno_location(), 0);
      if (errno === 4) continue; // EINTR
      postMessage({ error: "epoll_wait failed with errno " + errno });
      return;
    }
    let stop = false;
    for (let index = 0; index < count; index++) {
      const token = view.getUint32(index * eventBytes + dataOffset, true);
      if (token === stopToken) stop = true;
      else Atomics.store(pending, token, 1);
    }
    if (stop) {
      postMessage({ stopped: true });
      return;
    }
    if (count > 0 && Atomics.exchange(scheduled, 0, 1) === 0) postMessage(0);
  }
};
`;

export interface Watch {
  /**
   * Stop watching. Await it before closing the descriptor: the front-end shares the open file, so
   * closing ours does not stop a poll that is still registered, and the number could be reused.
   * Idempotent.
   */
  cancel(): Promise<void>;
}

export class Poller {
  private static shared: Poller | undefined;

  private users = 0;
  private readonly epollFd: number;
  private readonly stopFd: number;
  private readonly pending: Int32Array;
  private readonly scheduled: Int32Array;
  private readonly handlers: (((() => void) | undefined))[] = [];
  private readonly freeSlots: number[] = [];
  private readonly worker: Worker;
  private stopped: Promise<void> | undefined;
  private resolveStopped: (() => void) | undefined;
  /** Wake-ups the main thread has handled, for tests and benchmarks. */
  wakeups = 0;

  /** The process-wide poller; every acquire needs a release. */
  static acquire(): Poller {
    if (!Poller.shared) Poller.shared = new Poller();
    Poller.shared.users++;
    return Poller.shared;
  }

  private constructor() {
    this.epollFd = epollCreate();
    this.stopFd = eventFdCreate();
    this.pending = new Int32Array(new SharedArrayBuffer(4 * vhostWatchedDescriptorsMax));
    this.scheduled = new Int32Array(new SharedArrayBuffer(4));
    epollControl(this.epollFd, EPOLL_CTL_ADD, this.stopFd, EPOLLIN, BigInt(vhostWatchedDescriptorsMax));
    const url = URL.createObjectURL(new Blob([workerSource], { type: "application/javascript" }));
    this.worker = new Worker(url);
    // The worker loads its source from the Blob URL asynchronously: revoke it only once it runs.
    this.worker.onerror = (event) => {
      throw new Error(`vhost poller worker failed: ${event.message}`);
    };
    this.worker.onmessage = (event: MessageEvent) => {
      const data = event.data as 0 | { ready?: true; stopped?: true; error?: string };
      if (data === 0) return this.dispatch();
      if (data.ready) return URL.revokeObjectURL(url);
      if (data.stopped) {
        this.worker.terminate();
        closeFd(this.epollFd);
        closeFd(this.stopFd);
        this.resolveStopped?.();
        return;
      }
      // The worker cannot wait any more: nothing would ever be served again. That is a bug or a
      // broken kernel, not an operating condition, so it stops the process like an assertion.
      throw new Error(`vhost poller: ${data.error}`);
    };
    this.worker.postMessage({
      epollFd: this.epollFd,
      pending: this.pending,
      scheduled: this.scheduled,
      eventBytes: epollEventBytes,
      dataOffset: epollEventDataOffset,
      stopToken: vhostWatchedDescriptorsMax,
    });
  }

  /** Call `handler` on the main thread whenever `fd` becomes readable (edge-triggered). */
  watch(fd: number, handler: () => void, events = EPOLLIN): Watch {
    assert(!this.stopped, "watch on a stopped poller");
    const slot = this.freeSlots.pop() ?? this.handlers.length;
    if (slot >= vhostWatchedDescriptorsMax) {
      throw Object.assign(new Error(`more than ${vhostWatchedDescriptorsMax} descriptors watched`), { code: "EMFILE" });
    }
    this.handlers[slot] = handler;
    Atomics.store(this.pending, slot, 0);
    try {
      epollControl(this.epollFd, EPOLL_CTL_ADD, fd, events | EPOLLET, BigInt(slot));
    } catch (error) {
      this.handlers[slot] = undefined;
      this.freeSlots.push(slot);
      throw error;
    }
    let active = true;
    return {
      cancel: async () => {
        if (!active) return;
        active = false;
        try {
          epollControl(this.epollFd, EPOLL_CTL_DEL, fd, 0, 0n);
        } catch {
          // Already closed by the kernel's side (the fd was closed elsewhere): nothing to remove.
        }
        this.handlers[slot] = undefined;
        this.freeSlots.push(slot);
      },
    };
  }

  /**
   * Call `handler` on the main thread each time eventfd `fd` is signalled (its counter is consumed).
   * `fd` must be non-blocking. Cancel before closing the descriptor.
   */
  watchEventFd(fd: number, handler: () => void): Watch {
    assert(!this.stopped, "watch on a stopped poller");
    const reader = Bun.file(fd).stream().getReader();
    let active = true;
    void (async () => {
      for (;;) {
        let chunk: Awaited<ReturnType<typeof reader.read>>;
        try {
          chunk = await reader.read();
        } catch {
          return; // cancelled, or the descriptor went away under us: nothing more to report
        }
        if (chunk.done || !active) return;
        this.wakeups++;
        handler();
      }
    })();
    return {
      cancel: async () => {
        if (!active) return;
        active = false;
        await reader.cancel().catch(() => {});
      },
    };
  }

  private dispatch(): void {
    this.wakeups++;
    Atomics.store(this.scheduled, 0, 0);
    let failure: unknown;
    for (let slot = 0; slot < this.handlers.length; slot++) {
      if (Atomics.load(this.pending, slot) === 0) continue;
      Atomics.store(this.pending, slot, 0);
      const handler = this.handlers[slot];
      if (!handler) continue;
      try {
        handler();
      } catch (error) {
        failure ??= error;
      }
    }
    if (failure !== undefined) throw failure;
  }

  /** Drop one user; the last one stops the worker and closes the epoll descriptor. */
  release(): Promise<void> {
    assert(this.users > 0, "poller released more often than acquired");
    if (--this.users > 0) return Promise.resolve();
    if (Poller.shared === this) Poller.shared = undefined;
    this.stopped = new Promise<void>((resolve) => (this.resolveStopped = resolve));
    eventFdSignal(this.stopFd);
    return this.stopped;
  }
}
