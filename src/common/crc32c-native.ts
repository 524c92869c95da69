// CRC32C with the processor's help: `@node-rs/crc32`'s crc32c (a native addon using the SSE4.2
// `crc32` instruction on x86-64, the CRC extension on arm64) for buffers large enough that it wins,
// and the TypeScript reference (crc32c.ts) below that, where the cost of calling into the addon
// is more than the table loop's. The crossover (crc32cNativeBytesMin) was measured on the lab
// machine: see docs/benchmarks.md. The result is the same function whichever path runs; the
// replication driver installs it through src/replica/checksum.ts, which checks it against the
// reference before using it.
//
// The addon is optional: it is absent on a platform npm has no build for, and `bun build
// --compile` embeds it in the binary only when it was installed at build time (the binary writes
// it to a temporary file and loads it at run time, which can fail too). Whatever goes wrong,
// loading answers "typescript" and the reference keeps serving; nothing else changes.
import { crc32cNativeBytesMin } from "../constants.ts";
import { crc32c as crc32cReference } from "./crc32c.ts";

export type Crc32c = (bytes: Uint8Array, crc?: number) => number;

export interface Crc32cChoice {
  /** "native" (the addon above the crossover) or "typescript" (the reference alone). */
  name: "native" | "typescript";
  crc32c: Crc32c;
  /** Why the addon is not used, when it is not. */
  reason?: string;
}

type NativeCrc32c = (input: Uint8Array, initialState?: number) => number;

function requireAddon(): unknown {
  return require("@node-rs/crc32");
}

/**
 * Pick the CRC32C to use. `load` returns the addon's module (tests pass one that fails or lies);
 * the candidate must agree with the reference on the check value and a continuation before it is
 * chosen, so a broken addon falls back instead of corrupting checksums.
 */
export function chooseCrc32c(load: () => unknown = requireAddon): Crc32cChoice {
  let native: NativeCrc32c;
  try {
    const module = load() as { crc32c?: unknown } | undefined;
    if (typeof module?.crc32c !== "function") return { name: "typescript", crc32c: crc32cReference, reason: "the addon has no crc32c function" };
    native = module.crc32c as NativeCrc32c;
  } catch (error) {
    return { name: "typescript", crc32c: crc32cReference, reason: `the addon did not load: ${(error as Error)?.message ?? String(error)}` };
  }
  const hybrid: Crc32c = (bytes, crc = 0) => (bytes.length >= crc32cNativeBytesMin ? native(bytes, crc) >>> 0 : crc32cReference(bytes, crc));
  try {
    const sample = new Uint8Array(3 * crc32cNativeBytesMin + 5);
    for (let index = 0; index < sample.length; index++) sample[index] = (index * 2654435761) >>> 24;
    const head = sample.subarray(0, crc32cNativeBytesMin + 1);
    const tail = sample.subarray(crc32cNativeBytesMin + 1);
    const agrees =
      native(new TextEncoder().encode("123456789"), 0) >>> 0 === 0xe3069283 &&
      native(sample, 0) >>> 0 === crc32cReference(sample) &&
      native(tail, native(head, 0)) >>> 0 === crc32cReference(sample);
    if (!agrees) return { name: "typescript", crc32c: crc32cReference, reason: "the addon's results differ from the reference" };
  } catch (error) {
    return { name: "typescript", crc32c: crc32cReference, reason: `the addon failed its check: ${(error as Error)?.message ?? String(error)}` };
  }
  return { name: "native", crc32c: hybrid };
}

let chosen: Crc32cChoice | undefined;

/** The process's CRC32C, chosen once on first use. */
export function fastCrc32c(): Crc32cChoice {
  chosen ??= chooseCrc32c();
  return chosen;
}
