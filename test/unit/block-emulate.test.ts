// Proves FUA and zero emulation (src/node/block/emulate.ts): a caller gets a durable write, zeroes
// and trims whatever the layer below offers, and the layer below is never handed a flag it did not
// advertise (the asserting layer would throw). Checked on a memory layer whose capabilities are cut
// down, by what reached it (its counters) and by what reads back.
import { describe, expect, test } from "bun:test";
import { AssertingLayer, emulating } from "../../src/node/block/emulate.ts";
import type { BlockCapabilities, WriteFlags, ZeroFlags } from "../../src/node/block/layer.ts";
import { MemoryLayer } from "../../src/node/block/memory.ts";
import type { Payload } from "../../src/common/bytes.ts";

/** A memory layer that offers only some capabilities, and records the flags it was given. */
class Limited extends MemoryLayer {
  readonly flags: string[] = [];
  constructor(private readonly offers: Partial<BlockCapabilities>) {
    super(1 << 20);
  }
  override capabilities(): BlockCapabilities {
    return { ...super.capabilities(), ...this.offers };
  }
  override write(offset: number, source: Payload, flags?: WriteFlags): Promise<void> {
    this.flags.push(`write${flags?.fua ? "+fua" : ""}`);
    return super.write(offset, source, flags);
  }
  override flush(): Promise<void> {
    this.flags.push("flush");
    return super.flush();
  }
  override zero(offset: number, length: number, flags?: ZeroFlags): Promise<void> {
    this.flags.push(`zero${flags?.fua ? "+fua" : ""}`);
    return super.zero(offset, length, flags);
  }
}

describe("FUA", () => {
  test("passed down to a layer that offers it", async () => {
    const layer = new Limited({ fua: true });
    await emulating(layer).write(0, new Uint8Array(512).fill(1), { fua: true });
    expect(layer.flags).toEqual(["write+fua"]);
  });

  test("emulated by a flush on a layer that does not offer it", async () => {
    const layer = new Limited({ fua: false });
    await emulating(layer).write(0, new Uint8Array(512).fill(1), { fua: true });
    await emulating(layer).zero(0, 512, { fua: true });
    expect(layer.flags).toEqual(["write", "flush", "zero", "flush"]);
  });

  test("needs no flush on a layer without a volatile cache", async () => {
    const layer = new Limited({ fua: false, flush: false });
    await emulating(layer).write(0, new Uint8Array(512).fill(1), { fua: true });
    await emulating(layer).flush();
    expect(layer.flags).toEqual(["write"]);
  });
});

describe("zeroes and trims", () => {
  test("zeroes are written as zero-filled buffers on a layer that cannot zero, and read back as zeroes", async () => {
    const layer = new Limited({ zero: false, fastZero: false });
    await layer.write(4096, new Uint8Array(8192).fill(7));
    layer.flags.length = 0;
    await emulating(layer).zero(4096, 8192);
    expect(layer.flags).toEqual(["write"]);
    const back = new Uint8Array(8192);
    await layer.read(4096, back);
    expect(back.every((byte) => byte === 0)).toBe(true);
  });

  test("a fast zero is refused with ENOTSUP when zeroing would be emulated", async () => {
    const layer = new Limited({ zero: false, fastZero: false });
    await expect(emulating(layer).zero(0, 4096, { fastZero: true })).rejects.toMatchObject({ code: "ENOTSUP" });
    const slow = new Limited({ zero: true, fastZero: false });
    await expect(emulating(slow).zero(0, 4096, { fastZero: true })).rejects.toMatchObject({ code: "ENOTSUP" });
    expect(slow.flags).toEqual([]);
  });

  test("a trim on a layer that cannot trim keeps the data (TRIM is advisory)", async () => {
    const layer = new Limited({ trim: false });
    await layer.write(0, new Uint8Array(4096).fill(3));
    await emulating(layer).trim(0, 4096);
    const back = new Uint8Array(4096);
    await layer.read(0, back);
    expect(back[0]).toBe(3);
  });
});

test("the asserting layer refuses any flag its layer did not advertise", () => {
  const asserting = new AssertingLayer(new Limited({ fua: false, flush: false, zero: false, trim: false, fastZero: false }));
  expect(() => asserting.write(0, new Uint8Array(512), { fua: true })).toThrow(/FUA is asked only/);
  expect(() => asserting.flush()).toThrow(/flush is asked only/);
  expect(() => asserting.zero(0, 512)).toThrow(/zero is asked only/);
  expect(() => asserting.trim(0, 512)).toThrow(/trim is asked only/);
});
