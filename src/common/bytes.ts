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
