// The bottom of a volume's stack: a sparse file in the data directory, or a file or block device
// the operator named. Two modes:
//  - buffered (default): writes land in the page cache and become durable on flush/FUA through
//    fdatasync. Reads and writes are synchronous syscalls (page-cache hits cost microseconds,
//    far less than a trip through a thread pool); fdatasync runs on the thread pool because it can
//    take milliseconds and must not stall the event loop. The page cache is kept in small folios,
//    because every small write into a large one costs kernel time in proportion to its size
//    (10–25 µs for a 4 KiB write into a folio of 1 MiB or more, against 1.5 µs): writes go to the
//    kernel in pieces of at most pageCacheWritePieceBytes, and the descriptor is advised
//    POSIX_FADV_RANDOM, so the kernel's readahead (whose folios are the largest) stays off. A
//    guest reads ahead for itself; NBD_CMD_CACHE still asks the kernel to read a range in.
//  - direct: O_DIRECT with 4 KiB-aligned buffers; reads, writes and data syncs go through the
//    process's IO engine (io-engine.ts: io_uring where the kernel has it, else the thread pool) so
//    many requests are at the disk at once. Unaligned requests go through a bounce buffer with
//    read-modify-write under a range lock. FUA uses a second descriptor opened O_DSYNC.
// Holes: TRIM punches them, WRITE_ZEROES punches them unless NO_HOLE asks to keep the allocation,
// and extents() finds them with SEEK_DATA/SEEK_HOLE, so thin volumes stay thin.
// Ownership: a regular file is held with an exclusive flock(2) for as long as the layer is open and a
// block device is opened O_EXCL (the kernel refuses it while mounted or held by another program), so
// two daemons (or two volumes) never write one backing; anything else (a character device, a
// directory, a FIFO) is refused by name.
import fs from "node:fs";
import { ptr } from "bun:ffi";
import { copyPayload, type Payload, Pieces } from "../../common/bytes.ts";
import { assert } from "../../common/assert.ts";
import { BlockError, blockErrorFromSystem, TandemError } from "../../common/errors.ts";
import {
  FALLOC_FL_KEEP_SIZE,
  FALLOC_FL_PUNCH_HOLE,
  FALLOC_FL_ZERO_RANGE,
  POSIX_FADV_RANDOM,
  POSIX_FADV_WILLNEED,
  SEEK_DATA,
  SEEK_HOLE,
  blockDeviceDiscard,
  blockDeviceLogicalSectorBytes,
  blockDeviceSizeBytes,
  blockDeviceZeroOut,
  fadvise,
  fallocate,
  lseek,
  tryLockExclusive,
} from "../../common/libc.ts";
import { directIoAlignmentBytes, directIoBounceBytesMax, pageCacheWritePieceBytes } from "../../constants.ts";
import { acquireIoEngine, type IoEngine, type IoEnginePreference } from "./io-engine.ts";
import type { BlockCapabilities, BlockLayer, Extent, WriteFlags, ZeroFlags } from "./layer.ts";
import { RangeLock } from "./range-lock.ts";

export interface FileLayerOptions {
  path: string;
  /** O_DIRECT with aligned buffers instead of the page cache. */
  direct?: boolean;
  readOnly?: boolean;
  /** The engine for direct IO (default: TANDEM_IO_ENGINE, else auto). Ignored without `direct`. */
  ioEngine?: IoEnginePreference;
}

/** Zero-filled chunk used when a layer must write zeroes because it cannot punch or zero a range. */
const zeroChunkBytes = 1024 * 1024;

/** A buffer whose address is a multiple of `alignment`; the parent array stays referenced by the view. */
export function alignedBuffer(bytes: number, alignment = directIoAlignmentBytes): Uint8Array {
  const raw = new Uint8Array(bytes + alignment);
  const skew = (alignment - (ptr(raw) % alignment)) % alignment;
  return raw.subarray(skew, skew + bytes);
}

function isAligned(buffer: Uint8Array, offset: number, alignment: number): boolean {
  return offset % alignment === 0 && buffer.length % alignment === 0 && (buffer.length === 0 || ptr(buffer) % alignment === 0);
}

/** What a path is, in the words an error message needs. */
export function describeFileType(stat: fs.Stats): string {
  if (stat.isFile()) return "a regular file";
  if (stat.isBlockDevice()) return "a block device";
  if (stat.isCharacterDevice()) return "a character device";
  if (stat.isDirectory()) return "a directory";
  if (stat.isFIFO()) return "a FIFO";
  if (stat.isSocket()) return "a socket";
  return "not a file";
}

function promisify(run: (done: (error: NodeJS.ErrnoException | null) => void) => void): Promise<void> {
  return new Promise((resolve, reject) => run((error) => (error ? reject(error) : resolve())));
}

export class FileLayer implements BlockLayer {
  readonly kind = "file";
  private readonly rangeLock = new RangeLock();
  private closed = false;
  /** Reads, writes, flushes and zeroes between their call and their end; `idle` fires when it drops to 0. */
  private running = 0;
  private idle: (() => void) | undefined;

  private constructor(
    readonly path: string,
    private readonly fd: number,
    /** O_DSYNC descriptor for FUA writes in direct mode. */
    private readonly syncFd: number | undefined,
    private sizeBytes: number,
    readonly isBlockDevice: boolean,
    readonly direct: boolean,
    readonly readOnly: boolean,
    private readonly alignment: number,
    /** Runs direct IO; undefined in buffered mode. */
    private readonly engine: IoEngine | undefined,
    /** Why a direct layer runs on the thread pool although io_uring was wanted. */
    readonly ioEngineFallbackReason: string | undefined,
  ) {}

  /** "io_uring" or "threadpool" for a direct layer, "sync" for a buffered one. */
  get ioEngineName(): string {
    return this.engine?.name ?? "sync";
  }

  /** Create a sparse backing file of `sizeBytes`; refuses to overwrite an existing file. */
  static createSparse(path: string, sizeBytes: number): void {
    const fd = fs.openSync(path, fs.constants.O_RDWR | fs.constants.O_CREAT | fs.constants.O_EXCL, 0o600);
    try {
      fs.ftruncateSync(fd, sizeBytes);
      fs.fsyncSync(fd);
    } finally {
      fs.closeSync(fd);
    }
  }

  /**
   * Open a backing file or block device for this process alone. Refusals are TandemErrors a caller
   * can pass on: `in_use` (another process holds it), `invalid_argument` (not a file or a device).
   */
  static open(options: FileLayerOptions): FileLayer {
    const direct = options.direct === true;
    const readOnly = options.readOnly === true;
    const stat = fs.statSync(options.path);
    const isBlockDevice = stat.isBlockDevice();
    if (!isBlockDevice && !stat.isFile()) throw new TandemError("invalid_argument", `${options.path} is ${describeFileType(stat)}; a volume needs a regular file or a block device`);
    let flags = readOnly ? fs.constants.O_RDONLY : fs.constants.O_RDWR;
    if (direct) flags |= fs.constants.O_DIRECT;
    // O_EXCL on a block device refuses a device that is mounted or held by another program.
    if (isBlockDevice) flags |= fs.constants.O_EXCL;
    let fd: number;
    try {
      fd = fs.openSync(options.path, flags);
    } catch (error) {
      if ((error as { code?: string }).code === "EBUSY") throw new TandemError("in_use", `${options.path} is in use: mounted, or held by another program`);
      throw error;
    }
    let syncFd: number | undefined;
    let engine: IoEngine | undefined;
    try {
      if (!isBlockDevice && !tryLockExclusive(fd)) throw new TandemError("in_use", `${options.path} is in use by another process (it holds a lock on the file)`);
      const sizeBytes = isBlockDevice ? blockDeviceSizeBytes(fd) : fs.fstatSync(fd).size;
      const alignment = direct ? Math.max(directIoAlignmentBytes, isBlockDevice ? blockDeviceLogicalSectorBytes(fd) : 0) : 512;
      if (direct && !readOnly) syncFd = fs.openSync(options.path, fs.constants.O_RDWR | fs.constants.O_DIRECT | fs.constants.O_DSYNC);
      let fallbackReason: string | undefined;
      if (direct) ({ engine, fallbackReason } = acquireIoEngine(options.ioEngine));
      else adviseRandomAccess(fd);
      return new FileLayer(options.path, fd, syncFd, sizeBytes, isBlockDevice, direct, readOnly, alignment, engine, fallbackReason);
    } catch (error) {
      void engine?.release();
      fs.closeSync(fd);
      if (syncFd !== undefined) fs.closeSync(syncFd);
      throw error;
    }
  }

  size(): number {
    return this.sizeBytes;
  }

  capabilities(): BlockCapabilities {
    return {
      readOnly: this.readOnly,
      flush: true,
      fua: true,
      trim: !this.readOnly,
      zero: !this.readOnly,
      fastZero: !this.readOnly,
      extents: !this.isBlockDevice,
      multiConn: true,
      cache: true,
      alignmentBytes: this.direct ? this.alignment : 4096,
    };
  }

  private checkOpen(): void {
    if (this.closed) throw new BlockError("ESHUTDOWN", `${this.path} is closed`);
  }

  private checkWritable(): void {
    this.checkOpen();
    if (this.readOnly) throw new BlockError("EPERM", `${this.path} is read-only`);
  }

  read(offset: number, target: Uint8Array): Promise<void> {
    if (!this.direct) {
      // From the page cache: one pread that is over before this returns, like a buffered write
      // below, so without the async frames of the general path.
      try {
        this.checkOpen();
        this.readSyncAll(this.fd, target, offset);
        return Promise.resolve();
      } catch (error) {
        return Promise.reject(blockErrorFromSystem(error, `read ${this.path} at ${offset}+${target.length}`));
      }
    }
    return this.whileRunning(() => this.readRange(offset, target));
  }

  write(offset: number, source: Payload, flags?: WriteFlags): Promise<void> {
    if (!this.direct && flags?.fua !== true) {
      // Into the page cache, not FUA: one pwrite that is over before this returns (nothing for a
      // close to wait for), so without the async frames and closures of the general path.
      try {
        this.checkWritable();
        this.writePiecesSync(source, offset);
        return Promise.resolve();
      } catch (error) {
        return Promise.reject(blockErrorFromSystem(error, `write ${this.path} at ${offset}+${source.length}`));
      }
    }
    return this.whileRunning(() => this.writeRange(offset, source, flags));
  }

  flush(): Promise<void> {
    return this.whileRunning(() => this.flushAll());
  }

  zero(offset: number, length: number, flags?: ZeroFlags): Promise<void> {
    return this.whileRunning(() => this.zeroRange(offset, length, flags));
  }

  /** Count an operation from its call to its end, so `close` can wait for every one still running. */
  private async whileRunning(operation: () => Promise<void>): Promise<void> {
    this.running++;
    try {
      await operation();
    } finally {
      if (--this.running === 0) this.idle?.();
    }
  }

  /** A read of a direct layer (page-cache reads are read()'s own). */
  private async readRange(offset: number, target: Uint8Array): Promise<void> {
    this.checkOpen();
    try {
      if (isAligned(target, offset, this.alignment)) return await this.readAsyncAll(this.fd, target, offset);
      const start = offset - (offset % this.alignment);
      const end = roundUp(offset + target.length, this.alignment);
      const bounce = this.bounce(end - start);
      await this.readAsyncAll(this.fd, bounce, start);
      target.set(bounce.subarray(offset - start, offset - start + target.length));
    } catch (error) {
      throw blockErrorFromSystem(error, `read ${this.path} at ${offset}+${target.length}`);
    }
  }

  private async writeRange(offset: number, source: Payload, flags?: WriteFlags): Promise<void> {
    this.checkWritable();
    const fua = flags?.fua === true;
    try {
      if (!this.direct) {
        this.writePiecesSync(source, offset);
        if (fua) await this.datasync();
        return;
      }
      const fd = fua ? this.syncFd! : this.fd;
      const start = offset - (offset % this.alignment);
      const end = roundUp(offset + source.length, this.alignment);
      const release = await this.rangeLock.acquire(start, end);
      try {
        if (!(source instanceof Pieces) && isAligned(source, offset, this.alignment)) return await this.writeAsyncAll(fd, source, offset);
        // Otherwise the bytes go through an aligned bounce buffer: a payload in pieces is copied
        // together there (its one copy), an unaligned range is completed from the disk around it.
        const bounce = this.bounce(end - start);
        // Read the partial head and tail blocks, then lay the new bytes over them.
        if (start !== offset) await this.readAsyncAll(this.fd, bounce.subarray(0, this.alignment), start);
        if (end !== offset + source.length && end - this.alignment >= start + (start !== offset ? this.alignment : 0)) {
          await this.readAsyncAll(this.fd, bounce.subarray(bounce.length - this.alignment), end - this.alignment);
        }
        copyPayload(source, bounce, offset - start);
        await this.writeAsyncAll(fd, bounce, start);
      } finally {
        release();
      }
    } catch (error) {
      throw blockErrorFromSystem(error, `write ${this.path} at ${offset}+${source.length}`);
    }
  }

  private async flushAll(): Promise<void> {
    this.checkOpen();
    try {
      await this.datasync();
    } catch (error) {
      throw blockErrorFromSystem(error, `flush ${this.path}`);
    }
  }

  async trim(offset: number, length: number, flags?: WriteFlags): Promise<void> {
    this.checkWritable();
    if (length === 0) return;
    try {
      if (this.isBlockDevice) blockDeviceDiscard(this.fd, offset, length);
      else fallocate(this.fd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, offset, length);
    } catch (error) {
      // TRIM is advisory: a filesystem or device that cannot discard simply keeps the data.
      const code = (error as { code?: string }).code;
      if (code !== "EOPNOTSUPP" && code !== "ENOTTY") throw blockErrorFromSystem(error, `trim ${this.path}`);
    }
    if (flags?.fua) await this.flush();
  }

  private async zeroRange(offset: number, length: number, flags?: ZeroFlags): Promise<void> {
    this.checkWritable();
    if (length === 0) return;
    const release = this.direct ? await this.rangeLock.acquire(offset - (offset % this.alignment), roundUp(offset + length, this.alignment)) : undefined;
    try {
      if (this.zeroInPlace(offset, length, flags?.noHole === true)) {
        if (flags?.fua) await this.datasync();
        return;
      }
      if (flags?.fastZero) throw new BlockError("ENOTSUP", `${this.path} cannot zero quickly`);
      await this.writeZeroes(offset, length);
      if (flags?.fua) await this.datasync();
    } catch (error) {
      throw blockErrorFromSystem(error, `zero ${this.path} at ${offset}+${length}`);
    } finally {
      release?.();
    }
  }

  /** Zero without moving data; false when neither the filesystem nor the device can. */
  private zeroInPlace(offset: number, length: number, keepAllocated: boolean): boolean {
    const modes = this.isBlockDevice
      ? [FALLOC_FL_ZERO_RANGE | FALLOC_FL_KEEP_SIZE]
      : keepAllocated
        ? [FALLOC_FL_ZERO_RANGE | FALLOC_FL_KEEP_SIZE]
        : [FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, FALLOC_FL_ZERO_RANGE | FALLOC_FL_KEEP_SIZE];
    for (const mode of modes) {
      try {
        fallocate(this.fd, mode, offset, length);
        return true;
      } catch (error) {
        const code = (error as { code?: string }).code;
        if (code !== "EOPNOTSUPP" && code !== "ENOSYS" && code !== "EINVAL") throw error;
      }
    }
    if (this.isBlockDevice) {
      try {
        blockDeviceZeroOut(this.fd, offset, length);
        return true;
      } catch (error) {
        const code = (error as { code?: string }).code;
        if (code !== "EOPNOTSUPP" && code !== "ENOTTY") throw error;
      }
    }
    return false;
  }

  private async writeZeroes(offset: number, length: number): Promise<void> {
    const chunk = alignedBuffer(Math.min(zeroChunkBytes, roundUp(length, this.alignment)));
    for (let done = 0; done < length; ) {
      const bytes = Math.min(chunk.length, length - done);
      if (this.direct && (offset + done) % this.alignment === 0 && bytes % this.alignment === 0) {
        await this.writeAsyncAll(this.fd, chunk.subarray(0, bytes), offset + done);
      } else {
        this.writeSyncAll(this.fd, chunk.subarray(0, bytes), offset + done);
      }
      done += bytes;
    }
  }

  async cache(offset: number, length: number): Promise<void> {
    this.checkOpen();
    try {
      fadvise(this.fd, offset, length, POSIX_FADV_WILLNEED);
    } catch (error) {
      throw blockErrorFromSystem(error, `cache ${this.path}`);
    }
  }

  async extents(offset: number, length: number): Promise<Extent[]> {
    this.checkOpen();
    const end = Math.min(offset + length, this.sizeBytes);
    if (this.isBlockDevice || offset >= end) return [{ offset, length: Math.max(end - offset, 0), hole: false, zero: false }];
    const extents: Extent[] = [];
    try {
      let position = offset;
      while (position < end) {
        const dataStart = lseek(this.fd, position, SEEK_DATA);
        if (dataStart < 0 || dataStart >= end) {
          extents.push({ offset: position, length: end - position, hole: true, zero: true });
          break;
        }
        if (dataStart > position) extents.push({ offset: position, length: dataStart - position, hole: true, zero: true });
        const holeStart = lseek(this.fd, dataStart, SEEK_HOLE);
        const dataEnd = Math.min(holeStart < 0 ? end : holeStart, end);
        extents.push({ offset: dataStart, length: dataEnd - dataStart, hole: false, zero: false });
        position = dataEnd;
      }
    } catch (error) {
      throw blockErrorFromSystem(error, `extents ${this.path}`);
    }
    return extents;
  }

  async resize(sizeBytes: number): Promise<void> {
    this.checkWritable();
    try {
      if (this.isBlockDevice) {
        const deviceBytes = blockDeviceSizeBytes(this.fd);
        if (sizeBytes > deviceBytes) throw new BlockError("ENOSPC", `${this.path} holds ${deviceBytes} bytes; grow the device first`);
      } else {
        fs.ftruncateSync(this.fd, sizeBytes);
        await this.datasync();
      }
      this.sizeBytes = sizeBytes;
    } catch (error) {
      throw blockErrorFromSystem(error, `resize ${this.path}`);
    }
  }

  async close(): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    // Requests still running own their buffers and name our descriptors: let them finish first.
    if (this.running > 0) await new Promise<void>((resolve) => (this.idle = resolve));
    await this.engine?.release();
    if (!this.readOnly) await promisify((done) => fs.fdatasync(this.fd, done)).catch(() => {});
    fs.closeSync(this.fd);
    if (this.syncFd !== undefined) fs.closeSync(this.syncFd);
  }

  private datasync(): Promise<void> {
    if (this.engine) return this.engine.datasync(this.fd);
    return promisify((done) => fs.fdatasync(this.fd, done));
  }

  private bounce(bytes: number): Uint8Array {
    assert(bytes <= directIoBounceBytesMax, "request larger than the bounce buffer bound");
    return alignedBuffer(bytes, this.alignment);
  }

  private readSyncAll(fd: number, target: Uint8Array, offset: number): void {
    let done = 0;
    while (done < target.length) {
      const bytes = fs.readSync(fd, target, done, target.length - done, offset + done);
      if (bytes === 0) {
        // Past the end of a file that shrank under us (or a device): the layer's size says the
        // range exists, so this is the medium failing, not a client error.
        throw new BlockError("EIO", `short read at ${offset + done}`);
      }
      done += bytes;
    }
  }

  /** A page-cache write of `source` at `offset`, piece after piece as it came, none joined. */
  private writePiecesSync(source: Payload, offset: number): void {
    if (!(source instanceof Pieces)) return this.writeSyncAll(this.fd, source, offset);
    for (const part of source.parts) {
      this.writeSyncAll(this.fd, part, offset);
      offset += part.length;
    }
  }

  /** All of `source` at `offset`; through the page cache, in pieces that end on multiples of pageCacheWritePieceBytes. */
  private writeSyncAll(fd: number, source: Uint8Array, offset: number): void {
    let done = 0;
    while (done < source.length) {
      const left = source.length - done;
      const bytes = this.direct ? left : Math.min(left, pageCacheWritePieceBytes - ((offset + done) % pageCacheWritePieceBytes));
      done += fs.writeSync(fd, source, done, bytes, offset + done);
    }
  }

  private async readAsyncAll(fd: number, target: Uint8Array, offset: number): Promise<void> {
    const engine = this.engine!;
    let done = 0;
    while (done < target.length) {
      const bytes = await engine.read(fd, done === 0 ? target : target.subarray(done), offset + done);
      if (bytes === 0) throw new BlockError("EIO", `short read at ${offset + done}`);
      done += bytes;
    }
  }

  private async writeAsyncAll(fd: number, source: Uint8Array, offset: number): Promise<void> {
    const engine = this.engine!;
    let done = 0;
    while (done < source.length) {
      const bytes = await engine.write(fd, done === 0 ? source : source.subarray(done), offset + done);
      if (bytes === 0) throw new BlockError("EIO", `short write at ${offset + done}`);
      done += bytes;
    }
  }
}

/**
 * Keep the kernel's readahead off a page-cache descriptor (see the head of this file). Advice only:
 * a kernel or filesystem that refuses it changes nothing else, so the volume opens anyway.
 */
function adviseRandomAccess(fd: number): void {
  try {
    fadvise(fd, 0, 0, POSIX_FADV_RANDOM);
  } catch {
    // Not every file accepts advice (ESPIPE, EINVAL): reads and writes work the same without it.
  }
}

function roundUp(value: number, alignment: number): number {
  return Math.ceil(value / alignment) * alignment;
}
