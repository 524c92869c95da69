// SocketWriteQueue: bytes the socket does not take wait (copied, unless the caller says its buffer
// never changes) and in order, and leave on drain.
import { expect, test } from "bun:test";
import { SocketWriteQueue } from "../../src/common/socket-write-queue.ts";

/** A socket that takes at most `room` bytes per call, and remembers what it took. */
function fakeSocket() {
  const taken: number[] = [];
  return {
    room: 0,
    taken,
    write(data: Uint8Array): number {
      const count = Math.min(this.room, data.length);
      taken.push(...data.subarray(0, count));
      this.room -= count;
      return count;
    },
  };
}

test("what the socket does not take waits, copied, and leaves in order on drain", () => {
  const socket = fakeSocket();
  const queue = new SocketWriteQueue();
  socket.room = 3;
  const first = Uint8Array.of(1, 2, 3, 4, 5);
  queue.write(socket, first);
  first.fill(0); // the caller reuses its buffer: the waiting bytes were copied
  queue.write(socket, Uint8Array.of(6, 7));
  expect(socket.taken).toEqual([1, 2, 3]);
  expect(queue.queuedBytes).toBe(4);
  socket.room = 3;
  queue.drain(socket);
  expect(socket.taken).toEqual([1, 2, 3, 4, 5, 6]);
  expect(queue.queuedBytes).toBe(1);
  socket.room = 10;
  queue.drain(socket);
  queue.write(socket, Uint8Array.of(8));
  expect(socket.taken).toEqual([1, 2, 3, 4, 5, 6, 7, 8]);
  expect(queue.queuedBytes).toBe(0);
});

test("a socket that reports an error (negative) keeps every byte waiting", () => {
  const queue = new SocketWriteQueue();
  queue.write({ write: () => -1 }, Uint8Array.of(1, 2));
  expect(queue.queuedBytes).toBe(2);
  const socket = fakeSocket();
  socket.room = 2;
  queue.drain(socket);
  expect(socket.taken).toEqual([1, 2]);
});

test("an immutable buffer waits as it is, mixed in order with copied ones", () => {
  const socket = fakeSocket();
  const queue = new SocketWriteQueue();
  socket.room = 2;
  const large = Uint8Array.from({ length: 10 }, (_, index) => 10 + index);
  queue.write(socket, large, true);
  const reused = Uint8Array.of(1, 2);
  queue.write(socket, reused);
  reused.fill(0); // copied: the caller may reuse it
  queue.write(socket, Uint8Array.of(3), true);
  expect(queue.queuedBytes).toBe(11);
  socket.room = 100;
  queue.drain(socket);
  expect(socket.taken).toEqual([...large, 1, 2, 3]);
  expect(queue.queuedBytes).toBe(0);
});

test("a Buffer (whose slice is a view) that waits is still copied: the caller may reuse it", () => {
  const socket = fakeSocket();
  const queue = new SocketWriteQueue();
  socket.room = 1;
  const buffer = Buffer.from([1, 2, 3]);
  queue.write(socket, buffer);
  const second = Buffer.from([4, 5]);
  queue.write(socket, second);
  buffer.fill(0);
  second.fill(0);
  socket.room = 10;
  queue.drain(socket);
  expect(socket.taken).toEqual([1, 2, 3, 4, 5]);
});
