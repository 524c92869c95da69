// The CRC32C every frame on the replication link carries, behind one function the codec calls. The
// default is the table-driven TypeScript in src/common/crc32c.ts (about 1.3 GB/s here, ~3 µs per
// 4 KiB block); a driver may install a faster implementation with the same results (the SSE4.2
// `crc32` instruction through bun:ffi runs about 3.5x faster, see checksum-io.ts). Installing checks
// the candidate against the reference on fixed vectors first, so a broken fast path can never
// be installed silently. Pure: no IO here, the candidate is just a function.
import { assert } from "../common/assert.ts";
import { crc32c as referenceCrc32c } from "../common/crc32c.ts";

export type Checksum = (bytes: Uint8Array, crc?: number) => number;

let active: Checksum = referenceCrc32c;
let activeName = "typescript";

/** CRC32C of `bytes`, continuing from `crc` (0 to start). */
export function checksum(bytes: Uint8Array, crc = 0): number {
  return active(bytes, crc);
}

export function checksumImplementation(): string {
  return activeName;
}

/** Vectors covering the empty input, the check value, every tail length and continuation. */
function checkAgainstReference(candidate: Checksum): string | undefined {
  const check = new TextEncoder().encode("123456789");
  if (candidate(check, 0) >>> 0 !== 0xe3069283) return "check value of '123456789' differs";
  if (candidate(new Uint8Array(0), 0) >>> 0 !== 0) return "empty input differs";
  const sample = new Uint8Array(4096 + 15);
  for (let index = 0; index < sample.length; index++) sample[index] = (index * 2654435761) >>> 24;
  for (let length = 0; length <= 64; length++) {
    for (const start of [0, 1, 3, 7]) {
      const view = sample.subarray(start, start + length);
      if (candidate(view, 0) >>> 0 !== referenceCrc32c(view, 0)) return `differs for ${length} bytes at offset ${start}`;
    }
  }
  const whole = referenceCrc32c(sample);
  if (candidate(sample.subarray(100), candidate(sample.subarray(0, 100), 0)) >>> 0 !== whole) return "continuation differs";
  return undefined;
}

/** Install a faster CRC32C; returns why it was refused, or undefined when installed. */
export function installChecksum(candidate: Checksum, name: string): string | undefined {
  const problem = checkAgainstReference(candidate);
  if (problem) return `${name}: ${problem}`;
  active = (bytes, crc = 0) => candidate(bytes, crc) >>> 0;
  activeName = name;
  assert(checksum(new TextEncoder().encode("123456789")) === 0xe3069283, "installed checksum verified");
  return undefined;
}

/** Back to the reference implementation (tests). */
export function resetChecksum(): void {
  active = referenceCrc32c;
  activeName = "typescript";
}
