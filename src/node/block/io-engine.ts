// The engine that runs a direct (O_DIRECT) volume's reads, writes and data syncs asynchronously: the
// seam between the file layer (file.ts, which owns descriptors, alignment, bounce buffers and
// range locks) and the kernel interface that moves the bytes. Two engines:
//  - io_uring (io-uring.ts): requests go into a submission ring shared with the kernel and come back
//    on a completion ring, with an eventfd waking the event loop; no thread hop per request.
//  - threadpool: node:fs's asynchronous calls, each run on a libuv pool thread (UV_THREADPOOL_SIZE
//    threads), then handed back to the JavaScript thread. Works everywhere.
// `auto` (the default) takes io_uring when the kernel offers it and falls back to the pool when it
// does not (an old kernel, io_uring disabled by sysctl, a seccomp filter in a container), saying why.
// TANDEM_IO_ENGINE=threadpool|io_uring|auto overrides the default for a process, and
// TANDEM_IO_POLL_US the longest an io_uring request is waited for on the CPU (io-uring.ts, poll).
// Each call transfers at most the whole buffer and resolves with the count moved (a short count is
// the caller's to continue), or rejects with an Error whose `code` is the errno name, like node:fs.
import fs from "node:fs";
import { TandemError } from "../../common/errors.ts";
import { ioUringPollMicrosDefault, ioUringPollMicrosLimit } from "../../constants.ts";
import { IoUring } from "./io-uring.ts";

export type IoEnginePreference = "auto" | "io_uring" | "threadpool";

export interface IoEngine {
  readonly name: "io_uring" | "threadpool";
  read(fd: number, target: Uint8Array, offset: number): Promise<number>;
  write(fd: number, source: Uint8Array, offset: number): Promise<number>;
  /** fdatasync(2). */
  datasync(fd: number): Promise<void>;
  /** Requests submitted and not yet completed. */
  inFlight(): number;
  /** Drop this user's hold; the engine's resources go once every user released it and its IO finished. */
  release(): Promise<void>;
}

export const ioEnginePreferences: readonly IoEnginePreference[] = ["auto", "io_uring", "threadpool"];

/** The process's preference: TANDEM_IO_ENGINE, or auto. A wrong value is an operator's mistake, said plainly. */
export function ioEnginePreferenceFromEnvironment(environment: Record<string, string | undefined> = process.env): IoEnginePreference {
  const value = environment.TANDEM_IO_ENGINE;
  if (value === undefined || value === "") return "auto";
  if (!(ioEnginePreferences as readonly string[]).includes(value)) {
    throw new TandemError("invalid_argument", `TANDEM_IO_ENGINE=${value}: expected one of ${ioEnginePreferences.join(", ")}`);
  }
  return value as IoEnginePreference;
}

/**
 * The process's io_uring polling budget in µs: TANDEM_IO_POLL_US (0 turns polling off), or the
 * default. A wrong value is said plainly, like a wrong engine.
 */
export function ioUringPollFromEnvironment(environment: Record<string, string | undefined> = process.env): number {
  const value = environment.TANDEM_IO_POLL_US;
  if (value === undefined || value === "") return ioUringPollMicrosDefault;
  const micros = /^[0-9]+$/.test(value) ? Number(value) : Number.NaN;
  if (!(micros <= ioUringPollMicrosLimit)) {
    throw new TandemError("invalid_argument", `TANDEM_IO_POLL_US=${value}: expected a whole number of microseconds from 0 (no polling) to ${ioUringPollMicrosLimit}`);
  }
  return micros;
}

class ThreadPoolEngine implements IoEngine {
  readonly name = "threadpool";
  private pending = 0;
  private drained: (() => void) | undefined;

  private track<T>(promise: Promise<T>): Promise<T> {
    this.pending++;
    return promise.finally(() => {
      if (--this.pending === 0) this.drained?.();
    });
  }

  read(fd: number, target: Uint8Array, offset: number): Promise<number> {
    return this.track(new Promise((resolve, reject) => fs.read(fd, target, 0, target.length, offset, (error, count) => (error ? reject(error) : resolve(count)))));
  }

  write(fd: number, source: Uint8Array, offset: number): Promise<number> {
    return this.track(new Promise((resolve, reject) => fs.write(fd, source, 0, source.length, offset, (error, count) => (error ? reject(error) : resolve(count)))));
  }

  datasync(fd: number): Promise<void> {
    return this.track(new Promise((resolve, reject) => fs.fdatasync(fd, (error) => (error ? reject(error) : resolve()))));
  }

  inFlight(): number {
    return this.pending;
  }

  /** Wait for the calls in flight: a descriptor closed under a queued call could be reused by another file. */
  async release(): Promise<void> {
    if (this.pending > 0) await new Promise<void>((resolve) => (this.drained = resolve));
  }
}

export interface IoEngineChoice {
  engine: IoEngine;
  /** Why io_uring is not used, when it is not and it was not refused by preference. */
  fallbackReason?: string;
}

/**
 * An engine for direct IO. `io_uring` insists (and throws a TandemError when the kernel refuses);
 * `auto` falls back to the thread pool with the reason; `threadpool` never tries io_uring.
 * `privateRingEntries` asks for a ring of its own of that size instead of the shared one (tests).
 */
export function acquireIoEngine(preference: IoEnginePreference = ioEnginePreferenceFromEnvironment(), privateRingEntries?: number, pollMicrosMax = ioUringPollFromEnvironment()): IoEngineChoice {
  if (preference === "threadpool") return { engine: new ThreadPoolEngine() };
  const ring = IoUring.acquire(privateRingEntries, pollMicrosMax);
  if (ring.ok) return { engine: ring.engine };
  if (preference === "io_uring") throw new TandemError("failed_precondition", `io_uring is not available: ${ring.reason}`);
  return { engine: new ThreadPoolEngine(), fallbackReason: ring.reason };
}
