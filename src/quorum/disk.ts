// The witness disk for real: O_DIRECT|O_DSYNC reads and writes of whole witness sectors, with
// aligned buffers, on a dedicated Worker thread. Why a thread of its own: a witness that hangs (a
// dead iSCSI path, a stalled FUSE server, a drive that stops answering) blocks the thread that does
// the IO inside the kernel, with no way to interrupt it. On Bun's shared thread pool that would take
// threads the data path needs, and IO issued from the main thread would stop the event loop — the
// control API, the exports and the replication link with it. Here only the witness thread waits;
// the main thread keeps running, the quorum core counts the IO as failed at its deadline, and the
// driver (driver.ts) refuses new witness IO until the stuck one returns.
//
// The worker opens the path on its first request (an open can hang too) and again after an IO
// error, so a witness that comes back (a re-attached LUN, a restarted storage server) is used again
// without restarting the daemon. Errors are reported by errno name (EIO, ENOENT, ...).
import { witnessRecordBytes } from "../constants.ts";
import type { WitnessDisk } from "./driver.ts";

const workerSource = `
import fs from "node:fs";
import { ptr } from "bun:ffi";
const align = ${witnessRecordBytes};
let fd = -1;
let path = "";
let buffer;
function aligned(bytes) {
  if (!buffer || buffer.length < bytes) {
    const raw = new Uint8Array(bytes + align);
    const offset = (align - (ptr(raw) % align)) % align;
    buffer = raw.subarray(offset, offset + bytes);
    buffer.keep = raw;
  }
  return buffer.subarray(0, bytes);
}
function ensureOpen() {
  if (fd < 0) fd = fs.openSync(path, fs.constants.O_RDWR | fs.constants.O_DIRECT | fs.constants.O_DSYNC);
}
function dropFd() {
  if (fd >= 0) { try { fs.closeSync(fd); } catch {} }
  fd = -1;
}
self.onmessage = (event) => {
  const request = event.data;
  if (request.op === "path") { path = request.path; dropFd(); return; }
  if (request.op === "close") { dropFd(); postMessage({ closed: true }); return; }
  try {
    ensureOpen();
    if (request.op === "size") {
      // A block device's stat says 0 bytes: its size is in sysfs (512-byte units), by major:minor.
      const stat = fs.fstatSync(fd);
      let size = stat.size;
      if (stat.isBlockDevice()) {
        const rdev = Number(stat.rdev);
        const major = ((rdev >> 8) & 0xfff) | (Math.floor(rdev / 2 ** 32) & ~0xfff);
        const minor = (rdev & 0xff) | ((rdev >> 12) & ~0xff);
        size = Number(fs.readFileSync("/sys/dev/block/" + major + ":" + minor + "/size", "utf8").trim()) * 512;
      }
      postMessage({ id: request.id, ok: true, size, blockDevice: stat.isBlockDevice() });
    } else if (request.op === "read") {
      const target = aligned(request.length);
      let done = 0;
      while (done < request.length) {
        const count = fs.readSync(fd, target, done, request.length - done, request.offset + done);
        if (count === 0) throw new Error("read past the end of the witness (the path is smaller than the witness area)");
        done += count;
      }
      const copy = new Uint8Array(target).buffer; // an exact copy (a Buffer's slice would be a view of a larger buffer)
      postMessage({ id: request.id, ok: true, bytes: copy }, [copy]);
    } else {
      const source = aligned(request.bytes.byteLength);
      source.set(new Uint8Array(request.bytes));
      let done = 0;
      while (done < source.length) done += fs.writeSync(fd, source, done, source.length - done, request.offset + done);
      postMessage({ id: request.id, ok: true });
    }
  } catch (error) {
    dropFd();
    // An errno name when the system gave one (EIO, ENOENT, ...), else what went wrong.
    const code = error && typeof error.code === "string" && /^E[A-Z0-9]+$/.test(error.code) ? error.code : undefined;
    postMessage({ id: request.id, ok: false, error: code || String(error && error.message || error) });
  }
};
`;

type Pending = (error: string | null, bytes?: Uint8Array, size?: { size: number; blockDevice: boolean }) => void;

export class DirectWitnessDisk implements WitnessDisk {
  private readonly worker: Worker;
  private readonly pending = new Map<number, Pending>();
  private nextId = 1;

  constructor(readonly path: string) {
    const url = URL.createObjectURL(new Blob([workerSource], { type: "application/javascript" }));
    this.worker = new Worker(url);
    // The worker must not keep a process alive on its own (a CLI command that met a hung witness exits).
    this.worker.unref();
    let loaded = false;
    this.worker.onmessage = (event: MessageEvent) => {
      const reply = event.data as { id?: number; ok?: boolean; bytes?: ArrayBuffer; error?: string; closed?: boolean; size?: number; blockDevice?: boolean };
      if (!loaded) {
        loaded = true; // the worker loads its source from the Blob URL asynchronously: revoke it only once it runs
        URL.revokeObjectURL(url);
      }
      if (reply.closed) {
        this.worker.terminate();
        return;
      }
      const done = this.pending.get(reply.id!);
      this.pending.delete(reply.id!);
      done?.(reply.ok ? null : (reply.error ?? "EIO"), reply.bytes ? new Uint8Array(reply.bytes) : undefined, reply.size === undefined ? undefined : { size: reply.size, blockDevice: reply.blockDevice ?? false });
    };
    this.worker.onerror = (event) => {
      // The worker cannot run at all (a broken build): every request fails; the quorum sees a lost witness.
      for (const [id, done] of this.pending) {
        this.pending.delete(id);
        done(`witness worker failed: ${event.message}`);
      }
    };
    this.worker.postMessage({ op: "path", path });
  }

  read(sector: number, count: number, done: (error: string | null, bytes?: Uint8Array) => void): void {
    const id = this.nextId++;
    this.pending.set(id, done);
    this.worker.postMessage({ op: "read", id, offset: sector * witnessRecordBytes, length: count * witnessRecordBytes });
  }

  write(sector: number, bytes: Uint8Array, done: (error: string | null) => void): void {
    const id = this.nextId++;
    this.pending.set(id, (error) => done(error));
    const copy = new Uint8Array(bytes).buffer; // an exact copy to transfer (a Buffer's slice would be a view of a larger buffer)
    this.worker.postMessage({ op: "write", id, offset: sector * witnessRecordBytes, bytes: copy }, [copy]);
  }

  /** The size of the path in bytes (sysfs for a block device), and whether it is a block device. */
  size(done: (error: string | null, size?: { size: number; blockDevice: boolean }) => void): void {
    const id = this.nextId++;
    this.pending.set(id, (error, _bytes, size) => done(error, size));
    this.worker.postMessage({ op: "size", id });
  }

  /** Requests still waiting for the worker (a hung witness keeps one here). */
  get outstanding(): number {
    return this.pending.size;
  }

  /**
   * Stop the worker. An idle one closes its descriptor first. One stuck in a hung IO cannot be
   * interrupted: it is abandoned with its descriptor (closing that would block on the witness too;
   * the process exit ends both), and its requests are answered as failed now.
   */
  close(): void {
    const busy = this.pending.size > 0;
    for (const [id, done] of this.pending) {
      this.pending.delete(id);
      done("the witness disk was closed");
    }
    if (busy) this.worker.terminate();
    else this.worker.postMessage({ op: "close" });
  }
}

/** One IO with a deadline, for the CLI (`tandem witness format|show`): a hung witness gives an error, not a hung command. */
export function withDeadline<T>(what: string, timeoutMs: number, start: (done: (error: string | null, value?: T) => void) => void): Promise<T> {
  return new Promise<T>((resolve, reject) => {
    const timer = setTimeout(() => reject(Object.assign(new Error(`${what}: no answer within ${timeoutMs} ms (the witness hangs)`), { code: "ETIMEDOUT" })), timeoutMs);
    start((error, value) => {
      clearTimeout(timer);
      if (error) reject(Object.assign(new Error(`${what}: ${error}`), { code: error }));
      else resolve(value as T);
    });
  });
}
