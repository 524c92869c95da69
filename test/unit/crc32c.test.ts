// Proves that the CRC32C Tandem checksums with is the one the reference defines: the TypeScript
// table loop (src/common/crc32c.ts) against the check value, and the native addon and the hybrid
// the replication link installs (src/common/crc32c-native.ts) against the reference on random bytes
// of every length 0..64 at unaligned offsets, on lengths around the native crossover and up to
// 64 KiB, and when continued from a previous CRC. It also proves the fallback: an addon that does
// not load, has no crc32c, or returns wrong results leaves the reference in place.
import { describe, expect, test } from "bun:test";
import { chooseCrc32c, fastCrc32c } from "../../src/common/crc32c-native.ts";
import { crc32c, crc32cRange } from "../../src/common/crc32c.ts";
import { crc32cNativeBytesMin } from "../../src/constants.ts";

const checkInput = new TextEncoder().encode("123456789");

function randomBytes(length: number): Uint8Array {
  const bytes = new Uint8Array(length);
  for (let start = 0; start < length; start += 65536) crypto.getRandomValues(bytes.subarray(start, Math.min(length, start + 65536)));
  return bytes;
}

/** Every length 0..64 at offsets 0..7 of a random buffer, then lengths around `crossover` and large ones. */
function expectAgreesWithReference(candidate: (bytes: Uint8Array, crc?: number) => number): void {
  const buffer = randomBytes(70_000);
  for (let length = 0; length <= 64; length++) {
    for (let offset = 0; offset < 8; offset++) {
      const view = buffer.subarray(offset, offset + length);
      expect({ length, offset, crc: candidate(view) }).toEqual({ length, offset, crc: crc32c(view) });
    }
  }
  const lengths = [crc32cNativeBytesMin - 1, crc32cNativeBytesMin, crc32cNativeBytesMin + 1, 4096, 4096 + 3, 65536];
  for (let round = 0; round < 20; round++) lengths.push(Math.floor(Math.random() * 65536));
  for (const length of lengths) {
    for (const offset of [0, 1, 5]) {
      const view = buffer.subarray(offset, offset + length);
      expect({ length, offset, crc: candidate(view) }).toEqual({ length, offset, crc: crc32c(view) });
    }
  }
  // Continuation across the crossover: a short head through one path, a long tail through the other.
  for (const split of [0, 7, crc32cNativeBytesMin - 1, crc32cNativeBytesMin, 5000]) {
    const whole = buffer.subarray(3, 3 + 9000);
    expect({ split, crc: candidate(whole.subarray(split), candidate(whole.subarray(0, split))) }).toEqual({ split, crc: crc32c(whole) });
  }
}

describe("CRC32C reference (TypeScript)", () => {
  test("check value of '123456789' is 0xE3069283 and the empty input is 0", () => {
    expect(crc32c(checkInput)).toBe(0xe3069283);
    expect(crc32c(new Uint8Array(0))).toBe(0);
  });
  test("continuing a CRC equals the CRC of the concatenation", () => {
    const bytes = randomBytes(1000);
    for (const split of [0, 1, 8, 9, 500, 999, 1000]) expect(crc32c(bytes.subarray(split), crc32c(bytes.subarray(0, split)))).toBe(crc32c(bytes));
  });
  test("the CRC of a range in place equals the CRC of a view of it, for every range of a 40-byte buffer and when continued", () => {
    const bytes = randomBytes(40);
    for (let start = 0; start <= bytes.length; start++) {
      for (let end = start; end <= bytes.length; end++) {
        expect({ start, end, crc: crc32cRange(bytes, start, end) }).toEqual({ start, end, crc: crc32c(bytes.subarray(start, end)) });
      }
    }
    expect(crc32cRange(bytes, 17, 40, crc32cRange(bytes, 0, 17))).toBe(crc32c(bytes));
    expect(crc32cRange(checkInput, 0, 9)).toBe(0xe3069283);
  });
});

describe("CRC32C native addon and hybrid", () => {
  const native = (() => {
    try {
      return (require("@node-rs/crc32") as { crc32c: (input: Uint8Array, initial?: number) => number }).crc32c;
    } catch {
      return undefined;
    }
  })();
  const platformHasAddon = process.platform === "linux" && (process.arch === "x64" || process.arch === "arm64");

  test("the addon is installed and chosen on this platform", () => {
    if (!platformHasAddon) return;
    expect(native).toBeFunction();
    expect(fastCrc32c().name).toBe("native");
  });
  test("the addon agrees with the reference on random inputs, all lengths 0..64, unaligned offsets", () => {
    if (!native) return;
    expectAgreesWithReference((bytes, crc) => native(bytes, crc) >>> 0);
  });
  test("the hybrid (native above the crossover, TypeScript below) agrees with the reference", () => {
    expectAgreesWithReference(fastCrc32c().crc32c);
  });
});

describe("CRC32C fallback", () => {
  test("an addon that does not load leaves the reference, with the reason", () => {
    const choice = chooseCrc32c(() => {
      throw new Error("Cannot find module '@node-rs/crc32'");
    });
    expect(choice.name).toBe("typescript");
    expect(choice.crc32c).toBe(crc32c);
    expect(choice.reason).toContain("Cannot find module");
  });
  test("an addon without crc32c leaves the reference", () => {
    const choice = chooseCrc32c(() => ({ crc32: () => 0 }));
    expect(choice.name).toBe("typescript");
    expect(choice.reason).toContain("no crc32c");
  });
  test("an addon with wrong results is refused", () => {
    const choice = chooseCrc32c(() => ({ crc32c: (input: Uint8Array, initial = 0) => (crc32c(input, initial) ^ (input.length > 100 ? 1 : 0)) >>> 0 }));
    expect(choice.name).toBe("typescript");
    expect(choice.reason).toContain("differ");
  });
  test("an addon that throws when called is refused", () => {
    const choice = chooseCrc32c(() => ({
      crc32c: () => {
        throw new TypeError("expected a Buffer");
      },
    }));
    expect(choice.name).toBe("typescript");
    expect(choice.reason).toContain("expected a Buffer");
  });
  test("a correct addon is chosen and used only from the crossover up", () => {
    const lengths: number[] = [];
    const choice = chooseCrc32c(() => ({
      crc32c: (input: Uint8Array, initial = 0) => {
        lengths.push(input.length);
        return crc32c(input, initial);
      },
    }));
    expect(choice.name).toBe("native");
    lengths.length = 0;
    choice.crc32c(new Uint8Array(crc32cNativeBytesMin - 1));
    choice.crc32c(new Uint8Array(crc32cNativeBytesMin));
    expect(lengths).toEqual([crc32cNativeBytesMin]);
  });
});
