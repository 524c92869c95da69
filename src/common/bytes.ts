// Buffers the data path fills itself: one rule for when they are taken without zeroing.

/** From this size on a buffer filled whole before use is not zeroed (below it, zeroing costs next to nothing). */
const unzeroedBytesMin = 64 * 1024;

/**
 * A buffer of `size` bytes that the caller overwrites entirely before anything reads it (a frame
 * joined from chunks, a WRITE payload used only once all of it arrived). From 64 KiB up it is not
 * zeroed first, about a third of the cost of taking and filling a fresh 1 MiB buffer. Never for a
 * read target: a short read would show old memory.
 */
export function bufferToFill(size: number): Uint8Array {
  return size >= unzeroedBytesMin ? Buffer.allocUnsafeSlow(size) : new Uint8Array(size);
}

/**
 * Bytes left in the pieces they arrived in: the data of a large replication frame, or an NBD
 * WRITE's payload, as views of the receive chunks it spanned, handed down to the page-cache write
 * (and to the peer) without being joined first (joining 1 MiB cost 160–210 µs of CPU in a daemon,
 * docs/benchmarks.md). Never empty pieces.
 */
export class Pieces {
  readonly length: number;
  constructor(readonly parts: readonly Uint8Array[]) {
    let length = 0;
    for (const part of parts) length += part.length;
    this.length = length;
  }
}

/** Data as one buffer, or (received from a socket) as pieces. `length` is its byte count either way. */
export type Payload = Uint8Array | Pieces;

/** `parts` in order as one Payload: the one non-empty part itself, an empty buffer when none, else Pieces of the non-empty ones. */
export function payloadOf(parts: readonly Uint8Array[]): Payload {
  const nonEmpty = parts.filter((part) => part.length > 0);
  return nonEmpty.length > 1 ? new Pieces(nonEmpty) : (nonEmpty[0] ?? new Uint8Array(0));
}

/** The buffers `payload` is made of, in order. */
export function partsOf(payload: Payload): readonly Uint8Array[] {
  return payload instanceof Pieces ? payload.parts : [payload];
}

/** `payload` as one buffer: itself, or its pieces copied into a new one. */
export function joinPayload(payload: Payload): Uint8Array {
  if (!(payload instanceof Pieces)) return payload;
  const out = bufferToFill(payload.length);
  copyPayload(payload, out);
  return out;
}

/** A new buffer holding `payload`'s bytes: a copy even when it is one buffer already. */
export function copyOfPayload(payload: Payload): Uint8Array {
  const out = new Uint8Array(payload.length);
  copyPayload(payload, out);
  return out;
}

/** Copy all of `payload` into `target` from `at`. */
export function copyPayload(payload: Payload, target: Uint8Array, at = 0): void {
  for (const part of partsOf(payload)) {
    target.set(part, at);
    at += part.length;
  }
}
