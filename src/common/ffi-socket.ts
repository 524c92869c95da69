// The system calls a vhost-user back-end needs and that neither node:fs nor Bun's sockets expose,
// through bun:ffi: unix stream sockets that pass file descriptors (SCM_RIGHTS), shared memory
// (memfd, mmap), eventfds and epoll. Bun's own sockets cannot send or receive descriptors, and guest
// memory arrives as a descriptor to map, so the vhost-user control socket, the guest RAM and the
// kick/call notifications all go through here. Sockets and eventfds are created non-blocking and
// close-on-exec; "would block" is reported as a value (`undefined` / -1), every other failure throws
// an Error carrying the errno name in `code`, as node:fs does (see libc.ts).
import fs from "node:fs";
import { dlopen, FFIType, ptr, toArrayBuffer, type Pointer } from "bun:ffi";
import { assert } from "./assert.ts";
import { unixSocketPathBytesMax } from "../constants.ts";
import { errno, systemError } from "./libc.ts";

const { i32, i64, u32, u64: usize, ptr: pointer } = FFIType;

const symbols = {
  socket: { args: [i32, i32, i32], returns: i32 },
  bind: { args: [i32, pointer, u32], returns: i32 },
  listen: { args: [i32, i32], returns: i32 },
  accept4: { args: [i32, pointer, pointer, i32], returns: i32 },
  connect: { args: [i32, pointer, u32], returns: i32 },
  recvmsg: { args: [i32, pointer, i32], returns: i64 },
  sendmsg: { args: [i32, pointer, i32], returns: i64 },
  shutdown: { args: [i32, i32], returns: i32 },
  getsockopt: { args: [i32, i32, i32, pointer, pointer], returns: i32 },
  close: { args: [i32], returns: i32 },
  read: { args: [i32, pointer, usize], returns: i64 },
  write: { args: [i32, pointer, usize], returns: i64 },
  eventfd: { args: [u32, i32], returns: i32 },
  memfd_create: { args: [pointer, u32], returns: i32 },
  ftruncate: { args: [i32, i64], returns: i32 },
  mmap: { args: [pointer, usize, i32, i32, i32, i64], returns: pointer },
  munmap: { args: [pointer, usize], returns: i32 },
  epoll_create1: { args: [i32], returns: i32 },
  epoll_ctl: { args: [i32, i32, i32, pointer], returns: i32 },
  dup: { args: [i32], returns: i32 },
  fcntl: { args: [i32, i32, i32], returns: i32 },
} as const;

type Library = ReturnType<typeof dlopen<typeof symbols>>["symbols"];
let library: Library | undefined;
function libc(): Library {
  library ??= dlopen("libc.so.6", symbols).symbols;
  return library;
}

// Linux constants (x86_64 and arm64 agree on all of these).
const AF_UNIX = 1;
const SOCK_STREAM = 1;
const SOCK_NONBLOCK = 0o4000;
const SOCK_CLOEXEC = 0o2000000;
const SOL_SOCKET = 1;
const SCM_RIGHTS = 1;
const SO_PEERCRED = 17;
const MSG_DONTWAIT = 0x40;
const MSG_CTRUNC = 0x08;
const MSG_NOSIGNAL = 0x4000;
const MSG_CMSG_CLOEXEC = 0x40000000;
const EAGAIN = 11;
const EINTR = 4;
const EFD_CLOEXEC = 0o2000000;
const EFD_NONBLOCK = 0o4000;
const F_GETFL = 3;
const F_SETFL = 4;
const O_NONBLOCK = 0o4000;
const MFD_CLOEXEC = 1;
const MFD_ALLOW_SEALING = 2;
const F_ADD_SEALS = 1033;
const F_GET_SEALS = 1034;
export const F_SEAL_SEAL = 0x1;
export const F_SEAL_SHRINK = 0x2;
export const F_SEAL_GROW = 0x4;
const PROT_READ = 1;
const PROT_WRITE = 2;
const MAP_SHARED = 1;
const EPOLL_CLOEXEC = 0o2000000;
const SHUT_RDWR = 2;

export const EPOLLIN = 0x001;
export const EPOLLOUT = 0x004;
export const EPOLLERR = 0x008;
export const EPOLLHUP = 0x010;
export const EPOLLRDHUP = 0x2000;
export const EPOLLET = 1 << 31;
export const EPOLL_CTL_ADD = 1;
export const EPOLL_CTL_DEL = 2;
export const EPOLL_CTL_MOD = 3;
/** sizeof(struct epoll_event): packed on x86_64, naturally aligned elsewhere. */
export const epollEventBytes = process.arch === "x64" ? 12 : 16;
/** Offset of the 64-bit user data in struct epoll_event. */
export const epollEventDataOffset = process.arch === "x64" ? 4 : 8;

/** Descriptors one recvmsg can deliver before we call the message malformed (MSG_CTRUNC). */
const receiveFdsMax = 32;
const sockaddrUnixBytes = 110;

function check(result: number, what: string): number {
  if (result < 0) throw systemError(what);
  return result;
}

function socketAddress(path: string): Uint8Array {
  const encoded = new TextEncoder().encode(path);
  if (encoded.length === 0 || encoded.length > unixSocketPathBytesMax) {
    throw Object.assign(new Error(`unix socket path is empty or longer than ${unixSocketPathBytesMax} bytes: ${path}`), { code: "ENAMETOOLONG" });
  }
  const address = new Uint8Array(sockaddrUnixBytes);
  new DataView(address.buffer).setUint16(0, AF_UNIX, true);
  address.set(encoded, 2);
  return address;
}

/** A listening unix stream socket at `path` (the path must not exist). Non-blocking. */
export function unixListen(path: string, backlog: number): number {
  const fd = check(libc().socket(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0), "socket(AF_UNIX)");
  try {
    const address = socketAddress(path);
    check(libc().bind(fd, address, address.length), `bind(${path})`);
    check(libc().listen(fd, backlog), `listen(${path})`);
    return fd;
  } catch (error) {
    libc().close(fd);
    throw error;
  }
}

/** Accept one connection (non-blocking, close-on-exec); undefined when none is waiting. */
export function unixAccept(listenFd: number): number | undefined {
  for (;;) {
    const fd = libc().accept4(listenFd, null, null, SOCK_NONBLOCK | SOCK_CLOEXEC);
    if (fd >= 0) return fd;
    const value = errno();
    if (value === EAGAIN) return undefined;
    if (value === EINTR) continue;
    // A connection that died before we accepted it: try the next one.
    if (value === 103 /* ECONNABORTED */ || value === 71 /* EPROTO */) continue;
    throw systemError("accept4", value);
  }
}

/** Connect a non-blocking unix stream socket to `path`. */
export function unixConnect(path: string): number {
  const fd = check(libc().socket(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0), "socket(AF_UNIX)");
  const address = socketAddress(path);
  if (libc().connect(fd, address, address.length) < 0) {
    const error = systemError(`connect(${path})`);
    libc().close(fd);
    throw error;
  }
  return fd;
}

/** The process id at the other end of a connected unix socket (SO_PEERCRED). */
export function peerProcessId(fd: number): number | undefined {
  const credentials = new Int32Array(3);
  const length = new Uint32Array([12]);
  if (libc().getsockopt(fd, SOL_SOCKET, SO_PEERCRED, credentials, length) < 0) return undefined;
  return credentials[0];
}

// Reused across calls: every call here is synchronous on the calling thread.
const messageHeader = new BigUint64Array(7);
const ioVector = new BigUint64Array(2);
const control = new Uint8Array(16 + 4 * receiveFdsMax + 8);
const controlView = new DataView(control.buffer);

export type ReceiveResult =
  | { kind: "data"; bytes: number; fds: number[] }
  | { kind: "again" }
  | { kind: "closed" };

/**
 * recvmsg into `buffer`, collecting any SCM_RIGHTS descriptors (close-on-exec). The kernel never
 * merges data that carries descriptors with data that came before it, so the descriptors belong
 * to the message that starts in this chunk. Throws when more descriptors arrived than we accept
 * (after closing those we got).
 */
export function receiveWithFds(fd: number, buffer: Uint8Array): ReceiveResult {
  ioVector[0] = BigInt(ptr(buffer));
  ioVector[1] = BigInt(buffer.length);
  messageHeader.fill(0n);
  messageHeader[2] = BigInt(ptr(ioVector));
  messageHeader[3] = 1n;
  messageHeader[4] = BigInt(ptr(control));
  messageHeader[5] = BigInt(control.length);
  let bytes: number;
  for (;;) {
    bytes = Number(libc().recvmsg(fd, messageHeader, MSG_DONTWAIT | MSG_CMSG_CLOEXEC));
    if (bytes >= 0) break;
    const value = errno();
    if (value === EAGAIN) return { kind: "again" };
    if (value === EINTR) continue;
    if (value === 104 /* ECONNRESET */) return { kind: "closed" };
    throw systemError("recvmsg", value);
  }
  const fds: number[] = [];
  const controlLength = Number(messageHeader[5]);
  let offset = 0;
  while (offset + 16 <= controlLength) {
    const length = Number(controlView.getBigUint64(offset, true));
    const level = controlView.getInt32(offset + 8, true);
    const type = controlView.getInt32(offset + 12, true);
    if (length < 16 || offset + length > controlLength) break;
    if (level === SOL_SOCKET && type === SCM_RIGHTS) {
      for (let at = offset + 16; at + 4 <= offset + length; at += 4) fds.push(controlView.getInt32(at, true));
    }
    offset += (length + 7) & ~7;
  }
  const flags = Number(messageHeader[6]! & 0xffffffffn);
  if (flags & MSG_CTRUNC) {
    for (const received of fds) libc().close(received);
    throw Object.assign(new Error(`recvmsg: more than ${receiveFdsMax} descriptors in one message`), { code: "EMSGSIZE" });
  }
  if (bytes === 0 && fds.length === 0) return { kind: "closed" };
  return { kind: "data", bytes, fds };
}

/**
 * sendmsg `bytes` with `fds` attached (SCM_RIGHTS). Returns the bytes sent, or -1 when the socket
 * buffer is full. Never raises SIGPIPE: a peer that went away is an EPIPE error.
 */
export function sendWithFds(fd: number, bytes: Uint8Array, fds: readonly number[] = []): number {
  assert(fds.length <= receiveFdsMax, "too many descriptors for one message");
  ioVector[0] = BigInt(ptr(bytes));
  ioVector[1] = BigInt(bytes.length);
  messageHeader.fill(0n);
  messageHeader[2] = BigInt(ptr(ioVector));
  messageHeader[3] = 1n;
  if (fds.length > 0) {
    const length = 16 + 4 * fds.length;
    control.fill(0);
    controlView.setBigUint64(0, BigInt(length), true);
    controlView.setInt32(8, SOL_SOCKET, true);
    controlView.setInt32(12, SCM_RIGHTS, true);
    fds.forEach((value, index) => controlView.setInt32(16 + 4 * index, value, true));
    messageHeader[4] = BigInt(ptr(control));
    messageHeader[5] = BigInt((length + 7) & ~7);
  }
  for (;;) {
    const sent = Number(libc().sendmsg(fd, messageHeader, MSG_DONTWAIT | MSG_NOSIGNAL));
    if (sent >= 0) return sent;
    const value = errno();
    if (value === EAGAIN) return -1;
    if (value === EINTR) continue;
    throw systemError("sendmsg", value);
  }
}

/** Stop both directions of a socket so the peer sees end-of-file now, even if the fd lingers. */
export function shutdownSocket(fd: number): void {
  libc().shutdown(fd, SHUT_RDWR);
}

/** close(2); errors are ignored (the descriptor is gone either way on Linux). */
export function closeFd(fd: number): void {
  if (fd >= 0) libc().close(fd);
}

export function duplicateFd(fd: number): number {
  return check(libc().dup(fd), "dup");
}

/** A close-on-exec eventfd, non-blocking unless asked otherwise. */
export function eventFdCreate(initial = 0, options: { blocking?: boolean } = {}): number {
  return check(libc().eventfd(initial, EFD_CLOEXEC | (options.blocking ? 0 : EFD_NONBLOCK)), "eventfd");
}

/** Whether `fd` is an eventfd (as opposed to a pipe, socket or file passed in its place). */
export function isEventFd(fd: number): boolean {
  try {
    return fs.readlinkSync(`/proc/self/fd/${fd}`) === "anon_inode:[eventfd]";
  } catch {
    return false;
  }
}

/** Set O_NONBLOCK on the open file description (shared with every process holding it). */
export function setNonBlocking(fd: number): void {
  const flags = check(libc().fcntl(fd, F_GETFL, 0), "fcntl(F_GETFL)");
  if ((flags & O_NONBLOCK) === 0) check(libc().fcntl(fd, F_SETFL, flags | O_NONBLOCK), "fcntl(F_SETFL)");
}

const eventValue = new BigUint64Array(1);

/** Add 1 to an eventfd's counter (wakes its reader). A full counter (never in practice) is ignored. */
export function eventFdSignal(fd: number): void {
  eventValue[0] = 1n;
  const result = Number(libc().write(fd, eventValue, 8));
  if (result < 0) {
    const value = errno();
    if (value !== EAGAIN) throw systemError("eventfd write", value);
  }
}

/** Read and reset an eventfd's counter; 0 when it was not signalled. */
export function eventFdConsume(fd: number): number {
  eventValue[0] = 0n;
  const result = Number(libc().read(fd, eventValue, 8));
  if (result < 0) {
    const value = errno();
    if (value === EAGAIN) return 0;
    throw systemError("eventfd read", value);
  }
  return Number(eventValue[0]);
}

/**
 * An anonymous shared-memory file of `sizeBytes` (memfd_create + ftruncate), close-on-exec. With
 * `sealSize`, it can never be shrunk or grown afterwards (F_SEAL_SHRINK | F_SEAL_GROW), so whoever
 * maps it can trust its size.
 */
export function memoryFileCreate(name: string, sizeBytes: number, options: { sealSize?: boolean } = {}): number {
  const flags = MFD_CLOEXEC | (options.sealSize ? MFD_ALLOW_SEALING : 0);
  const fd = check(libc().memfd_create(new TextEncoder().encode(name + "\0"), flags), "memfd_create");
  try {
    check(libc().ftruncate(fd, sizeBytes), "ftruncate(memfd)");
    if (options.sealSize) check(libc().fcntl(fd, F_ADD_SEALS, F_SEAL_SHRINK | F_SEAL_GROW | F_SEAL_SEAL), "fcntl(F_ADD_SEALS)");
    return fd;
  } catch (error) {
    libc().close(fd);
    throw error;
  }
}

/** The seals on a memfd (F_SEAL_*), or undefined for files that cannot carry seals. */
export function fileSeals(fd: number): number | undefined {
  const seals = libc().fcntl(fd, F_GET_SEALS, 0);
  return seals < 0 ? undefined : seals;
}

/** A shared read-write mapping of `sizeBytes` of `fd` from `offset` (page aligned). */
export interface Mapping {
  readonly address: number;
  readonly sizeBytes: number;
}

export function mapShared(fd: number, sizeBytes: number, offset: number): Mapping {
  assert(Number.isSafeInteger(sizeBytes) && sizeBytes > 0, "mapping size must be positive");
  const address = libc().mmap(null, sizeBytes, PROT_READ | PROT_WRITE, MAP_SHARED, fd, offset) as number | null;
  // MAP_FAILED is (void *)-1, which arrives as a number past 2^53 (or negative).
  if (address === null || !Number.isSafeInteger(address) || address <= 0) throw systemError(`mmap(${sizeBytes} bytes at ${offset})`);
  return { address, sizeBytes };
}

export function unmap(mapping: Mapping): void {
  if (libc().munmap(mapping.address as Pointer, mapping.sizeBytes) < 0) throw systemError("munmap");
}

/**
 * A view of `length` bytes at `offset` into a mapping. The view does not own the memory: it must
 * not be used after `unmap` (the caller keeps the mapping alive while any view is in use).
 */
export function mappedBytes(mapping: Mapping, offset: number, length: number): Uint8Array {
  assert(offset >= 0 && length >= 0 && offset + length <= mapping.sizeBytes, "view inside the mapping");
  if (length === 0) return new Uint8Array(0);
  return new Uint8Array(toArrayBuffer((mapping.address + offset) as Pointer, 0, length));
}

export function epollCreate(): number {
  return check(libc().epoll_create1(EPOLL_CLOEXEC), "epoll_create1");
}

const epollEvent = new Uint8Array(16);
const epollEventView = new DataView(epollEvent.buffer);

/** epoll_ctl ADD / MOD / DEL with a 64-bit token returned by epoll_wait. */
export function epollControl(epollFd: number, operation: number, fd: number, events: number, token: bigint): void {
  epollEventView.setUint32(0, events >>> 0, true);
  epollEventView.setBigUint64(epollEventDataOffset, token, true);
  check(libc().epoll_ctl(epollFd, operation, fd, epollEvent), `epoll_ctl(${operation}, fd ${fd})`);
}
