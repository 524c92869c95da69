// Shared memory the front-end hands us as file descriptors — guest RAM regions (SET_MEM_TABLE) and
// the in-flight region (SET_INFLIGHT_FD) — mapped with mmap through bun:ffi, and sliced into views
// for the pure modules. A JS ArrayBuffer over foreign memory is limited to a few GiB, so a region is
// seen through 1 GiB windows that overlap by 64 MiB: any buffer up to the overlap lies inside one
// window and costs only a subarray; anything larger gets a view of its own. The mapping is
// process-wide, so views made on the main thread serve the IO path directly.
//
// A mapping must outlive every view of it that IO may still use: unmapping memory a pending pread
// writes into would fault the whole daemon. The session counts references (see session.ts) and
// calls `unmap` only once none are left.
//
// Touching a mapped page past the end of its file raises SIGBUS, which would kill the daemon, so a
// region is mapped only if the file really holds it. A front-end could still shrink its file
// afterwards; QEMU's memfd memory backend seals against that by default (seal=on), and
// `shrinkable` tells the session to warn when the seal is missing.
import fs from "node:fs";
import { F_SEAL_SHRINK, fileSeals, mappedBytes, mapShared, unmap, type Mapping } from "../../../common/ffi-socket.ts";
import type { RegionBytes } from "./memory.ts";

const pageBytes = 4096;
const windowBytes = 1024 * 1024 * 1024;
const windowOverlapBytes = 64 * 1024 * 1024;

export class MappedRegion implements RegionBytes {
  private readonly mapping: Mapping;
  /** Offset of the region's first byte inside the mapping (the fd offset rounded down to a page). */
  private readonly skew: number;
  private readonly windows: (Uint8Array | undefined)[] = [];
  private mapped = true;

  /** The file can be shrunk under the mapping (a memfd without F_SEAL_SHRINK). */
  readonly shrinkable: boolean;

  /**
   * Map `sizeBytes` of `fd` from `offset` (any alignment). The fd may be closed afterwards. Throws
   * (code EINVAL) when the file is shorter than the region.
   */
  constructor(fd: number, readonly sizeBytes: number, offset: number) {
    const stat = fs.fstatSync(fd);
    if (stat.isFile() && stat.size < offset + sizeBytes) {
      throw Object.assign(new Error(`shared memory file holds ${stat.size} bytes, the region needs ${offset + sizeBytes}`), { code: "EINVAL" });
    }
    const seals = fileSeals(fd);
    this.shrinkable = seals !== undefined && (seals & F_SEAL_SHRINK) === 0;
    this.skew = offset % pageBytes;
    this.mapping = mapShared(fd, sizeBytes + this.skew, offset - this.skew);
  }

  slice(offset: number, length: number): Uint8Array {
    const index = Math.floor(offset / windowBytes);
    const windowStart = index * windowBytes;
    const windowLength = Math.min(this.sizeBytes - windowStart, windowBytes + windowOverlapBytes);
    if (offset + length <= windowStart + windowLength) {
      let window = this.windows[index];
      if (!window) this.windows[index] = window = mappedBytes(this.mapping, this.skew + windowStart, windowLength);
      return window.subarray(offset - windowStart, offset - windowStart + length);
    }
    return mappedBytes(this.mapping, this.skew + offset, length);
  }

  /** The whole region as one view (regions known to be small, such as the in-flight region). */
  all(): Uint8Array {
    return this.slice(0, this.sizeBytes);
  }

  unmap(): void {
    if (!this.mapped) return;
    this.mapped = false;
    this.windows.length = 0;
    unmap(this.mapping);
  }
}
