// The runtime's floor for bench/replica.ts: the least a Bun process can do to serve a file over NBD
// and, mirrored, to send every write to a peer process over loopback TCP and answer the client
// when both copies are written. None of Tandem's data path runs here: no frame CRC or tag, no range
// locks, no transfer log, no metadata, no timers; only what any mirror on this runtime must do per
// write (read the request from the client's socket, write the page cache, send the bytes to the
// peer, which reads them, writes its page cache and answers, then answer the client). Tandem's
// figures over these say what Tandem adds; these over QEMU's say what the runtime allows. It keeps
// the page cache as Tandem's file layer does (writes in pieces of pageCacheWritePieceBytes, the
// kernel's readahead off), so that the kernel's share of each write is the same, and queues what a
// socket cannot take at once in the project's SocketWriteQueue, as any writer must.
//
//   bun bench/floor-server.ts peer FILE                 listens on a loopback TCP port, prints "ready PORT"
//   bun bench/floor-server.ts nbd FILE SOCKET [PORT]    serves FILE as NBD export "bench" on the unix
//                                                       SOCKET; with PORT, every write is mirrored to the
//                                                       peer on that port (prints "ready")
// Simple replies only, one connection at a time per client, FLUSH is a local fdatasync. Not a
// product: a measuring instrument, started and stopped by bench/replica.ts (each exits after 2 h).
import fs from "node:fs";
import { fadvise, POSIX_FADV_RANDOM } from "../src/common/libc.ts";
import { SocketWriteQueue } from "../src/common/socket-write-queue.ts";
import { pageCacheWritePieceBytes } from "../src/constants.ts";

const [mode, file, socketPath, peerPort] = process.argv.slice(2);
if ((mode !== "peer" && mode !== "nbd") || !file || (mode === "nbd" && !socketPath)) {
  process.stderr.write("usage: bun bench/floor-server.ts peer FILE | nbd FILE SOCKET [PORT]\n");
  process.exit(2);
}
setTimeout(() => process.exit(3), 2 * 3600_000).unref();
const fd = fs.openSync(file, "r+");
fadvise(fd, 0, 0, POSIX_FADV_RANDOM);
const sizeBytes = fs.fstatSync(fd).size;

/** Bytes received and not yet parsed, as a list of chunks: `take` joins only what one message needs. */
class Input {
  private chunks: Uint8Array[] = [];
  private first = 0;
  length = 0;

  push(chunk: Uint8Array): void {
    this.chunks.push(chunk);
    this.length += chunk.length;
  }

  /** The next `count` bytes (a view when they lie in one chunk). */
  take(count: number): Uint8Array {
    if (count === 0) return new Uint8Array(0);
    const head = this.chunks[0]!;
    this.length -= count;
    if (head.length - this.first >= count) {
      const out = head.subarray(this.first, this.first + count);
      this.first += count;
      if (this.first === head.length) {
        this.chunks.shift();
        this.first = 0;
      }
      return out;
    }
    const out = new Uint8Array(count);
    let filled = 0;
    while (filled < count) {
      const chunk = this.chunks[0]!;
      const part = Math.min(count - filled, chunk.length - this.first);
      out.set(chunk.subarray(this.first, this.first + part), filled);
      filled += part;
      this.first += part;
      if (this.first === chunk.length) {
        this.chunks.shift();
        this.first = 0;
      }
    }
    return out;
  }

  /** The 32-bit little- or big-endian number `at` bytes ahead, without consuming (`at + 4 <= length`). */
  peek32(at: number, littleEndian: boolean): number {
    const bytes = new Uint8Array(4);
    let index = 0;
    let skip = this.first + at;
    for (const chunk of this.chunks) {
      if (skip >= chunk.length) {
        skip -= chunk.length;
        continue;
      }
      while (index < 4 && skip < chunk.length) bytes[index++] = chunk[skip++]!;
      skip = 0;
      if (index === 4) break;
    }
    return new DataView(bytes.buffer).getUint32(0, littleEndian);
  }
}

/** A view of `bytes` to read numbers from (the bytes may be a view into a larger chunk). */
function viewOf(bytes: Uint8Array): DataView {
  return new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
}

interface Sending {
  /** What the kernel has not taken yet (every buffer sent here is never changed again). */
  output: SocketWriteQueue;
}

/** Send all of `bytes`: what the socket does not take now waits for its drain. */
function send(socket: import("bun").Socket<Sending>, bytes: Uint8Array): void {
  socket.data.output.write(socket, bytes, true);
}

function drain(socket: import("bun").Socket<Sending>): void {
  socket.data.output.drain(socket);
}

type LinkSocket = import("bun").Socket<{ input: Input } & Sending>;

/** Both ends of the link to the peer start alike. */
const linkSocketStart = {
  open(socket: LinkSocket) {
    socket.data = { input: new Input(), output: new SocketWriteQueue() };
    socket.setNoDelay(true);
  },
  drain,
};

function writeAll(target: Uint8Array, offset: number): void {
  let done = 0;
  while (done < target.length) {
    const bytes = Math.min(target.length - done, pageCacheWritePieceBytes - ((offset + done) % pageCacheWritePieceBytes));
    done += fs.writeSync(fd, target, done, bytes, offset + done);
  }
}

// ---------------------------------------------------------------------------------- the peer
// Message: offset u64 LE, length u32 LE, id u32 LE, then `length` bytes. Answer: id u32 LE.
if (mode === "peer") {
  const listener = Bun.listen<{ input: Input } & Sending>({
    hostname: "127.0.0.1",
    port: 0,
    socket: {
      ...linkSocketStart,
      data(socket, chunk) {
        const input = socket.data.input;
        input.push(chunk);
        const acks: number[] = [];
        while (input.length >= 16 && input.length >= 16 + input.peek32(8, true)) {
          const header = viewOf(input.take(16));
          const length = header.getUint32(8, true);
          writeAll(input.take(length), Number(header.getBigUint64(0, true)));
          acks.push(header.getUint32(12, true));
        }
        if (acks.length > 0) send(socket, new Uint8Array(new Uint32Array(acks).buffer));
      },
    },
  });
  process.stdout.write(`ready ${listener.port}\n`);
  await new Promise(() => {});
}

// ---------------------------------------------------------------------------------- the NBD server
const NBDMAGIC = 0x4e42444d41474943n;
const IHAVEOPT = 0x49484156454f5054n;
const REPLY_MAGIC = 0x3e889045565a9n;
const NBD_OPT_EXPORT_NAME = 1;
const NBD_OPT_ABORT = 2;
const NBD_OPT_INFO = 6;
const NBD_OPT_GO = 7;
const NBD_REP_ACK = 1;
const NBD_REP_INFO = 3;
const NBD_REP_ERR_UNSUP = 0x80000001;
const transmissionFlags = 1 | 4; // HAS_FLAGS, SEND_FLUSH
const EINVAL = 22;

interface Peer {
  socket: LinkSocket;
  nextId: number;
  /** Answers the client once the peer has written write `id`. */
  waiting: Map<number, () => void>;
}
let peer: Peer | undefined;
if (peerPort) {
  const waiting = new Map<number, () => void>();
  const socket = await Bun.connect<{ input: Input } & Sending>({
    hostname: "127.0.0.1",
    port: Number(peerPort),
    socket: {
      ...linkSocketStart,
      data(socket, chunk) {
        const input = socket.data.input;
        input.push(chunk);
        while (input.length >= 4) {
          const id = input.peek32(0, true);
          input.take(4);
          const answer = waiting.get(id);
          waiting.delete(id);
          answer?.();
        }
      },
      close() {
        process.stderr.write("the peer closed the link\n");
        process.exit(1);
      },
    },
  });
  peer = { socket, nextId: 1, waiting };
}

interface Client extends Sending {
  input: Input;
  negotiating: boolean;
  /** The client's flags, once it has sent them. */
  clientFlags: number | undefined;
}

function optionReply(option: number, type: number, data: Uint8Array = new Uint8Array(0)): Uint8Array {
  const out = new Uint8Array(20 + data.length);
  const view = new DataView(out.buffer);
  view.setBigUint64(0, REPLY_MAGIC);
  view.setUint32(8, option);
  view.setUint32(12, type);
  view.setUint32(16, data.length);
  out.set(data, 20);
  return out;
}

function simpleReply(cookie: Uint8Array, error: number, data?: Uint8Array): Uint8Array {
  const out = new Uint8Array(16 + (data?.length ?? 0));
  const view = new DataView(out.buffer);
  view.setUint32(0, 0x67446698);
  view.setUint32(4, error);
  out.set(cookie, 8);
  if (data) out.set(data, 16);
  return out;
}

type ClientSocket = import("bun").Socket<Client>;

/** Handle what the client has sent; false when the connection should close. */
function serve(socket: ClientSocket): boolean {
  const client = socket.data;
  const input = client.input;
  if (client.clientFlags === undefined) {
    if (input.length < 4) return true;
    client.clientFlags = input.peek32(0, false);
    input.take(4);
  }
  while (client.negotiating) {
    if (input.length < 16 || input.length < 16 + input.peek32(12, false)) return true;
    const header = viewOf(input.take(16));
    const option = header.getUint32(8);
    input.take(header.getUint32(12)); // the option's data: nothing here needs it
    if (option === NBD_OPT_ABORT) {
      send(socket, optionReply(option, NBD_REP_ACK));
      return false;
    }
    if (option === NBD_OPT_EXPORT_NAME) {
      // Without the client's NO_ZEROES flag the reply ends in 124 zero bytes.
      const out = new Uint8Array((client.clientFlags & 2) !== 0 ? 10 : 134);
      new DataView(out.buffer).setBigUint64(0, BigInt(sizeBytes));
      new DataView(out.buffer).setUint16(8, transmissionFlags);
      send(socket, out);
      client.negotiating = false;
    } else if (option === NBD_OPT_GO || option === NBD_OPT_INFO) {
      const info = new Uint8Array(12);
      const view = new DataView(info.buffer);
      view.setUint16(0, 0); // NBD_INFO_EXPORT
      view.setBigUint64(2, BigInt(sizeBytes));
      view.setUint16(10, transmissionFlags);
      send(socket, optionReply(option, NBD_REP_INFO, info));
      send(socket, optionReply(option, NBD_REP_ACK));
      if (option === NBD_OPT_GO) client.negotiating = false;
    } else {
      send(socket, optionReply(option, NBD_REP_ERR_UNSUP));
    }
  }
  while (input.length >= 28) {
    const type = input.peek32(4, false) & 0xffff;
    const length = input.peek32(24, false);
    if (type === 1 && input.length < 28 + length) return true;
    const headerBytes = input.take(28);
    const header = viewOf(headerBytes);
    if (header.getUint32(0) !== 0x25609513) return false;
    const cookie = headerBytes.subarray(8, 16);
    const offset = Number(header.getBigUint64(16));
    const inside = offset + length <= sizeBytes;
    if (type === 0) {
      if (!inside) {
        send(socket, simpleReply(cookie, EINVAL));
        continue;
      }
      const reply = simpleReply(cookie, 0, new Uint8Array(length));
      fs.readSync(fd, reply, 16, length, offset);
      send(socket, reply);
    } else if (type === 1) {
      const payload = input.take(length);
      if (!inside) {
        send(socket, simpleReply(cookie, EINVAL));
        continue;
      }
      if (!peer) {
        writeAll(payload, offset);
        send(socket, simpleReply(cookie, 0));
        continue;
      }
      // Mirrored: the bytes go to the peer first (its copy is written while ours is), then to the
      // page cache here; the client hears back when the peer's answer arrives.
      const id = peer.nextId++ >>> 0;
      const message = new Uint8Array(16 + length);
      const view = new DataView(message.buffer);
      view.setBigUint64(0, BigInt(offset), true);
      view.setUint32(8, length, true);
      view.setUint32(12, id, true);
      message.set(payload, 16);
      send(peer.socket, message);
      writeAll(payload, offset);
      const answer = simpleReply(cookie, 0);
      peer.waiting.set(id, () => send(socket, answer));
    } else if (type === 3) {
      fs.fdatasyncSync(fd);
      send(socket, simpleReply(cookie, 0));
    } else if (type === 2) {
      return false;
    } else {
      send(socket, simpleReply(cookie, EINVAL));
    }
  }
  return true;
}

fs.rmSync(socketPath!, { force: true });
Bun.listen<Client>({
  unix: socketPath!,
  socket: {
    open(socket) {
      socket.data = { input: new Input(), negotiating: true, clientFlags: undefined, output: new SocketWriteQueue() };
      const greeting = new Uint8Array(18);
      const view = new DataView(greeting.buffer);
      view.setBigUint64(0, NBDMAGIC);
      view.setBigUint64(8, IHAVEOPT);
      view.setUint16(16, 1 | 2); // FIXED_NEWSTYLE, NO_ZEROES
      send(socket, greeting);
    },
    drain,
    data(socket, chunk) {
      socket.data.input.push(chunk);
      if (!serve(socket)) socket.end();
    },
  },
});
process.stdout.write("ready\n");
