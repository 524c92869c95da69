// Writing to a non-blocking socket without blocking and without losing bytes: what the kernel does
// not take at once waits here, in order, and goes out from the socket's drain handler. Bytes that
// wait are copied (by construction: a Buffer's slice would be a view), so a caller may reuse its
// buffer as soon as `write` returns, unless the caller says the buffer is never changed again
// (`immutable`): then the buffer itself waits, which saves a copy of each large message the
// kernel cannot take at once. Used by the replication transport and the lab's link relay.

/** The part of a Bun socket this needs: `write` returns how many bytes the kernel took (or < 0). */
export interface WritableSocket {
  write(data: Uint8Array): number;
}

export class SocketWriteQueue {
  private readonly waiting: Uint8Array[] = [];
  /** Bytes waiting for the socket to drain. */
  queuedBytes = 0;

  write(socket: WritableSocket, bytes: Uint8Array, immutable = false): void {
    if (this.waiting.length > 0) {
      this.waiting.push(immutable ? bytes : new Uint8Array(bytes));
      this.queuedBytes += bytes.length;
      return;
    }
    const written = Math.max(0, socket.write(bytes));
    if (written < bytes.length) {
      this.waiting.push(immutable ? bytes.subarray(written) : new Uint8Array(bytes.subarray(written)));
      this.queuedBytes += bytes.length - written;
    }
  }

  /** Call from the socket's drain handler. */
  drain(socket: WritableSocket): void {
    while (this.waiting.length > 0) {
      const head = this.waiting[0]!;
      const written = Math.max(0, socket.write(head));
      this.queuedBytes -= written;
      if (written < head.length) {
        this.waiting[0] = head.subarray(written);
        return;
      }
      this.waiting.shift();
    }
  }
}
