// The one interface every layer of a volume's IO stack implements (CONVENTIONS.md §7): file or
// device → mirror → gate → export. An export validates a request against the volume with
// `checkRange`, then calls the top layer; each layer does its part and calls the one below.
// Capabilities travel with the layer so an export advertises only what the stack really honours:
// never call `flush` on a layer whose `flush` capability is false, and ask for FUA only when `fua`
// is true; emulate.ts is the one place that emulates what a layer lacks. Failures are BlockErrors;
// the export maps their code.
import type { Payload } from "../../common/bytes.ts";
import { BlockError } from "../../common/errors.ts";

export interface BlockCapabilities {
  /** Writes, trims and zeroes are refused with EPERM. */
  readOnly: boolean;
  /** The layer has a volatile write cache; `flush` makes completed writes durable. */
  flush: boolean;
  /** `write`/`zero`/`trim` accept `{ fua: true }` and are durable when they complete. */
  fua: boolean;
  /** `trim` releases space (reads of trimmed ranges may return anything until rewritten). */
  trim: boolean;
  /** `zero` writes zeroes without moving data. */
  zero: boolean;
  /** `zero({ fastZero: true })` fails quickly with ENOTSUP instead of being slow. */
  fastZero: boolean;
  /** `extents` tells holes from data. */
  extents: boolean;
  /** A flush through any handle makes writes completed through every handle durable. */
  multiConn: boolean;
  /** `cache` prefetches. */
  cache: boolean;
  /** Offsets and lengths that avoid read-modify-write below (advertised as the preferred block size). */
  alignmentBytes: number;
}

export interface WriteFlags {
  /** Force unit access: durable before completion. */
  fua?: boolean;
  /**
   * The caller's buffer is its own and stays as it is (it is never changed nor reused, even after
   * the write completes): a layer may keep it, or a view of it, instead of copying it. The NBD
   * server's payload buffers are; guest memory (vhost-user-blk) never is.
   */
  stable?: boolean;
}

export interface ZeroFlags extends WriteFlags {
  /** Keep the range allocated (NBD_CMD_FLAG_NO_HOLE). */
  noHole?: boolean;
  /** Fail with ENOTSUP rather than fall back to writing zeroes (NBD_CMD_FLAG_FAST_ZERO). */
  fastZero?: boolean;
}

export interface Extent {
  offset: number;
  length: number;
  /** Unallocated: reads return zeroes and no space is used. */
  hole: boolean;
  /** Known to read as zeroes (true for every hole). */
  zero: boolean;
}

export interface BlockLayer {
  /** Short name of this layer for logs and status: "file", "memory", "gate", "mirror". */
  readonly kind: string;
  size(): number;
  capabilities(): BlockCapabilities;
  /** Fill `target` with the bytes at [offset, offset + target.length). */
  read(offset: number, target: Uint8Array): Promise<void>;
  /**
   * Write `source` at `offset`: one buffer, or (from the NBD server) the pieces a payload arrived
   * in, which a layer writes as they are or copies together where it needs one buffer (O_DIRECT).
   */
  write(offset: number, source: Payload, flags?: WriteFlags): Promise<void>;
  flush(): Promise<void>;
  trim(offset: number, length: number, flags?: WriteFlags): Promise<void>;
  zero(offset: number, length: number, flags?: ZeroFlags): Promise<void>;
  cache(offset: number, length: number): Promise<void>;
  /** Allocation map of [offset, offset + length): contiguous, in order, covering at least `offset`. */
  extents(offset: number, length: number): Promise<Extent[]>;
  /** Grow (or shrink) the layer to `sizeBytes`. */
  resize(sizeBytes: number): Promise<void>;
  close(): Promise<void>;
}

/** The request-independent checks every export makes before calling a layer. */
export function checkRange(layer: BlockLayer, offset: number, length: number, what: string): void {
  if (!Number.isSafeInteger(offset) || !Number.isSafeInteger(length) || offset < 0 || length < 0) {
    throw new BlockError("EINVAL", `${what}: invalid range ${offset}+${length}`);
  }
  const size = layer.size();
  if (offset + length > size) throw new BlockError("EINVAL", `${what}: range ${offset}+${length} is past the end (${size} bytes)`);
}

/** A layer that passes every call to the one below; layers override what they change. */
export abstract class PassThroughLayer implements BlockLayer {
  abstract readonly kind: string;
  constructor(protected readonly below: BlockLayer) {}
  size(): number {
    return this.below.size();
  }
  capabilities(): BlockCapabilities {
    return this.below.capabilities();
  }
  read(offset: number, target: Uint8Array): Promise<void> {
    return this.below.read(offset, target);
  }
  write(offset: number, source: Payload, flags?: WriteFlags): Promise<void> {
    return this.below.write(offset, source, flags);
  }
  flush(): Promise<void> {
    return this.below.flush();
  }
  trim(offset: number, length: number, flags?: WriteFlags): Promise<void> {
    return this.below.trim(offset, length, flags);
  }
  zero(offset: number, length: number, flags?: ZeroFlags): Promise<void> {
    return this.below.zero(offset, length, flags);
  }
  cache(offset: number, length: number): Promise<void> {
    return this.below.cache(offset, length);
  }
  extents(offset: number, length: number): Promise<Extent[]> {
    return this.below.extents(offset, length);
  }
  resize(sizeBytes: number): Promise<void> {
    return this.below.resize(sizeBytes);
  }
  close(): Promise<void> {
    return this.below.close();
  }
}
