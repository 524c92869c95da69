// FUA and zero emulation, once, for every caller that needs what a protocol promises (nbdkit's
// server/backend.c and plugins.c are the model). A caller asks this wrapper for a durable write or
// zeroes on a range; the wrapper asks the layer below only for what that layer advertises, and
// asserts it: a layer is never handed FUA, a flush, a zero or a trim it did not say it can do
// (CONVENTIONS.md §7). Emulation: FUA is the operation then a flush (none needed when the layer
// has no volatile cache); zeroes on a layer that cannot zero are written as zero-filled buffers
// (never "fast": a fast zero is refused with ENOTSUP, as NBD asks); a trim on a layer that cannot
// trim does nothing (TRIM is advisory). The NBD and vhost exports and the replica's storage adapter
// all go through it.
import type { Payload } from "../../common/bytes.ts";
import { assert } from "../../common/assert.ts";
import { BlockError } from "../../common/errors.ts";
import { type BlockCapabilities, type BlockLayer, PassThroughLayer, type WriteFlags, type ZeroFlags } from "./layer.ts";

/** The flags of a plain write whose buffer is stable (one object, not one per write). */
const stableOnly: WriteFlags = Object.freeze({ stable: true });

/** Largest zero-filled buffer an emulated zero writes at once. */
const zeroChunkBytes = 1024 * 1024;

export class EmulatingLayer extends PassThroughLayer {
  readonly kind = "emulate";

  override capabilities(): BlockCapabilities {
    const below = this.below.capabilities();
    return { ...below, fua: !below.readOnly, zero: !below.readOnly, trim: !below.readOnly, fastZero: below.zero && below.fastZero };
  }

  override write(offset: number, source: Payload, flags?: WriteFlags): Promise<void> {
    // Most writes are not FUA: straight down with the caller's flags, without the closure and the
    // async frame of durably. A FUA write the layer below cannot do keeps only `stable`.
    if (flags?.fua !== true) return this.below.write(offset, source, flags);
    return this.durably(true, (fua) => this.below.write(offset, source, fua ? flags : flags.stable ? stableOnly : undefined));
  }

  override flush(): Promise<void> {
    return this.below.capabilities().flush ? this.below.flush() : Promise.resolve();
  }

  override trim(offset: number, length: number, flags?: WriteFlags): Promise<void> {
    if (!this.below.capabilities().trim) return Promise.resolve(); // advisory: keeping the data is allowed
    return this.durably(flags?.fua === true, (fua) => this.below.trim(offset, length, fua ? { fua } : undefined));
  }

  override async zero(offset: number, length: number, flags?: ZeroFlags): Promise<void> {
    const below = this.below.capabilities();
    if (!below.zero) {
      if (flags?.fastZero) throw new BlockError("ENOTSUP", "this volume cannot zero quickly");
      return this.durably(flags?.fua === true, () => this.writeZeroes(offset, length));
    }
    if (flags?.fastZero && !below.fastZero) throw new BlockError("ENOTSUP", "this volume cannot zero quickly");
    return this.durably(flags?.fua === true, (fua) => this.below.zero(offset, length, { noHole: flags?.noHole === true, fastZero: flags?.fastZero === true, ...(fua ? { fua } : {}) }));
  }

  /** Run `operation` so that it is durable when `fua` is asked: natively, or followed by a flush. */
  private async durably(fua: boolean, operation: (fua: boolean) => Promise<void>): Promise<void> {
    const below = this.below.capabilities();
    if (!fua) return operation(false);
    if (below.fua) return operation(true);
    await operation(false);
    if (below.flush) await this.below.flush();
  }

  private async writeZeroes(offset: number, length: number): Promise<void> {
    const chunk = new Uint8Array(Math.min(zeroChunkBytes, length));
    for (let done = 0; done < length; ) {
      const bytes = Math.min(chunk.length, length - done);
      await this.below.write(offset + done, chunk.subarray(0, bytes));
      done += bytes;
    }
  }
}

/**
 * A layer that refuses, by assertion, any request its capabilities did not advertise: what
 * EmulatingLayer puts below itself, so a missing emulation is a bug that shows, never a flag a
 * layer silently ignores.
 */
export class AssertingLayer extends PassThroughLayer {
  readonly kind = "assert";

  override write(offset: number, source: Payload, flags?: WriteFlags): Promise<void> {
    assert(!flags?.fua || this.below.capabilities().fua, "FUA is asked only of a layer that offers it");
    return this.below.write(offset, source, flags);
  }

  override flush(): Promise<void> {
    assert(this.below.capabilities().flush, "flush is asked only of a layer that has a cache to flush");
    return this.below.flush();
  }

  override trim(offset: number, length: number, flags?: WriteFlags): Promise<void> {
    const capabilities = this.below.capabilities();
    assert(capabilities.trim, "trim is asked only of a layer that can trim");
    assert(!flags?.fua || capabilities.fua, "FUA is asked only of a layer that offers it");
    return this.below.trim(offset, length, flags);
  }

  override zero(offset: number, length: number, flags?: ZeroFlags): Promise<void> {
    const capabilities = this.below.capabilities();
    assert(capabilities.zero, "zero is asked only of a layer that can zero");
    assert(!flags?.fua || capabilities.fua, "FUA is asked only of a layer that offers it");
    assert(!flags?.fastZero || capabilities.fastZero, "a fast zero is asked only of a layer that offers one");
    return this.below.zero(offset, length, flags);
  }
}

const wrappers = new WeakMap<BlockLayer, EmulatingLayer>();

/** The one emulating (and asserting) view of a layer, made once per layer. */
export function emulating(layer: BlockLayer): EmulatingLayer {
  let wrapper = wrappers.get(layer);
  if (!wrapper) {
    wrapper = new EmulatingLayer(new AssertingLayer(layer));
    wrappers.set(layer, wrapper);
  }
  return wrapper;
}
