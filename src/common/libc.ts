// The few libc calls that node:fs does not expose, through bun:ffi: hole punching and zeroing
// (fallocate), extent discovery (lseek SEEK_DATA / SEEK_HOLE), device sizes and discards (ioctl),
// whole-file advisory locks (flock) for the data directory and backing files, and raw system calls
// that libc has no wrapper for (io_uring's, for the direct IO engine).
// Opened lazily so modules that import this for types do not load libc. Every wrapper returns a
// value or throws an Error carrying the errno name in `code`, like node:fs does, so callers map
// failures the same way whichever API produced them. The vhost-user export adds its socket, mmap
// and eventfd calls in its own module.
import { dlopen, FFIType, read } from "bun:ffi";

const { i32, i64, u64, ptr } = FFIType;

const symbols = {
  fallocate: { args: [i32, i32, i64, i64], returns: i32 },
  lseek: { args: [i32, i64, i32], returns: i64 },
  ioctl: { args: [i32, u64, ptr], returns: i32 },
  posix_fadvise: { args: [i32, i64, i64, i32], returns: i32 },
  flock: { args: [i32, i32], returns: i32 },
  syscall: { args: [i64, i64, i64, i64, i64, i64, i64], returns: i64 },
  __errno_location: { args: [], returns: ptr },
} as const;

type Library = ReturnType<typeof dlopen<typeof symbols>>["symbols"];
let library: Library | undefined;
function libc(): Library {
  library ??= dlopen("libc.so.6", symbols).symbols;
  return library;
}

/** errno numbers we name; anything else is reported as EIO-class with its number. */
const errnoNames: Record<number, string> = {
  1: "EPERM", 2: "ENOENT", 5: "EIO", 6: "ENXIO", 9: "EBADF", 11: "EAGAIN", 12: "ENOMEM", 13: "EACCES",
  4: "EINTR", 14: "EFAULT", 16: "EBUSY", 19: "ENODEV", 22: "EINVAL", 25: "ENOTTY", 27: "EFBIG", 28: "ENOSPC",
  30: "EROFS", 38: "ENOSYS", 95: "EOPNOTSUPP", 122: "EDQUOT",
};

export function errno(): number {
  return read.i32(libc().__errno_location()!, 0);
}

export function errnoName(value: number): string {
  return errnoNames[value] ?? `ERRNO${value}`;
}

export function systemError(what: string, value = errno()): Error & { code: string; errno: number } {
  const name = errnoName(value);
  return Object.assign(new Error(`${what}: ${name}`), { code: name, errno: value });
}

// fallocate(2) modes.
export const FALLOC_FL_KEEP_SIZE = 0x01;
export const FALLOC_FL_PUNCH_HOLE = 0x02;
export const FALLOC_FL_ZERO_RANGE = 0x10;

export function fallocate(fd: number, mode: number, offset: number, length: number): void {
  if (libc().fallocate(fd, mode, offset, length) !== 0) throw systemError(`fallocate(mode ${mode}, ${offset}, ${length})`);
}

export const SEEK_END = 2;
export const SEEK_DATA = 3;
export const SEEK_HOLE = 4;

/** lseek(2); returns -1 with ENXIO when SEEK_DATA/SEEK_HOLE finds nothing past `offset`. */
export function lseek(fd: number, offset: number, whence: number): number {
  const result = Number(libc().lseek(fd, offset, whence));
  if (result < 0) {
    const value = errno();
    if (value === 6 /* ENXIO */) return -1;
    throw systemError(`lseek(${offset}, ${whence})`, value);
  }
  return result;
}

// flock(2) operations.
const LOCK_EX = 2;
const LOCK_NB = 4;

/**
 * Take an exclusive flock(2) on `fd` without waiting. Returns false when another open file
 * description holds it (EWOULDBLOCK); the lock lasts until the descriptor is closed, so it dies
 * with the process and a recycled pid can never hold it.
 */
export function tryLockExclusive(fd: number): boolean {
  for (;;) {
    if (libc().flock(fd, LOCK_EX | LOCK_NB) === 0) return true;
    const value = errno();
    if (value === 11 /* EWOULDBLOCK */) return false;
    if (value === 4 /* EINTR */) continue;
    throw systemError("flock(LOCK_EX)", value);
  }
}

export const POSIX_FADV_RANDOM = 1;
export const POSIX_FADV_WILLNEED = 3;

/** posix_fadvise(2); returns the error number instead of setting errno. */
export function fadvise(fd: number, offset: number, length: number, advice: number): void {
  const result = libc().posix_fadvise(fd, offset, length, advice);
  if (result !== 0) throw systemError(`posix_fadvise(${offset}, ${length})`, result);
}

// ioctl requests on block devices (linux/fs.h).
const BLKGETSIZE64 = 0x80081272n;
const BLKDISCARD = 0x1277n;
const BLKZEROOUT = 0x127fn;
const BLKSSZGET = 0x1268n;

export function blockDeviceSizeBytes(fd: number): number {
  const out = new BigUint64Array(1);
  if (libc().ioctl(fd, BLKGETSIZE64, out) !== 0) throw systemError("ioctl(BLKGETSIZE64)");
  return Number(out[0]);
}

export function blockDeviceLogicalSectorBytes(fd: number): number {
  const out = new Int32Array(1);
  if (libc().ioctl(fd, BLKSSZGET, out) !== 0) throw systemError("ioctl(BLKSSZGET)");
  return out[0]!;
}

export function blockDeviceDiscard(fd: number, offset: number, length: number): void {
  const range = new BigUint64Array([BigInt(offset), BigInt(length)]);
  if (libc().ioctl(fd, BLKDISCARD, range) !== 0) throw systemError("ioctl(BLKDISCARD)");
}

export function blockDeviceZeroOut(fd: number, offset: number, length: number): void {
  const range = new BigUint64Array([BigInt(offset), BigInt(length)]);
  if (libc().ioctl(fd, BLKZEROOUT, range) !== 0) throw systemError("ioctl(BLKZEROOUT)");
}

/** syscall(2) with up to six integer (or address) arguments; returns the raw result, -1 with errno set on failure. */
export function systemCall(number: number, ...args: number[]): number {
  const [a = 0, b = 0, c = 0, d = 0, e = 0, f = 0] = args;
  return Number(libc().syscall(number, a, b, c, d, e, f));
}
