// CPace (src/node/install/cpace.ts) against the test vectors of draft-irtf-cfrg-cpace, appendix
// "Test vector for CPace using group X25519 and hash SHA-512": prepend_len and lv_cat, the generator
// string, its hash, the decoded field element and the Elligator 2 generator, both shares, the shared
// point K from both sides, the initiator-responder transcript and ISK, and scalar_mult_vfy on the
// low-order points (u0..u5 and u7 must abort; the others give the listed results, which also checks
// that bit 255 of a u-coordinate is ignored). Then what the pairing relies on: another code, another
// session id or another channel identifier gives another generator and no common key.
import { describe, expect, test } from "bun:test";
import { createHash } from "node:crypto";
import {
  calculateGenerator,
  confirmationKey,
  confirmationTag,
  cpaceShare,
  decodeUCoordinate,
  elligator2,
  encodeUCoordinate,
  generatorString,
  intermediateSessionKey,
  lvCat,
  prependLen,
  transcriptIr,
  x25519,
} from "../../src/node/install/cpace.ts";

const hex = (text: string) => Uint8Array.from(Buffer.from(text.replace(/\s+/g, ""), "hex"));
function toHex(bytes: Uint8Array): string;
function toHex(bytes: Uint8Array | null): string | null;
function toHex(bytes: Uint8Array | null): string | null {
  return bytes ? Buffer.from(bytes).toString("hex") : null;
}
const ascii = (text: string) => new TextEncoder().encode(text);

// Inputs of the draft's X25519 / SHA-512 vector.
const prs = ascii("Password");
const ci = hex("0b415f696e69746961746f720b425f726573706f6e646572");
const sid = hex("7e4b4791d6a8ef019b936c79fb7f2c57");
const ya = hex("21b4f4bd9e64ed355c3eb676a28ebedaf6d8f17bdc365995b319097153044080");
const yb = hex("848b0779ff415f0af4ea14df9dd1d3c29ac41d836c7808896c4eba19c51ac40a");
const adA = ascii("ADa");
const adB = ascii("ADb");

describe("string utilities", () => {
  test("prepend_len and lv_cat", () => {
    expect(toHex(prependLen(new Uint8Array()))).toBe("00");
    expect(toHex(prependLen(ascii("1234")))).toBe("0431323334");
    expect(toHex(prependLen(Uint8Array.from({ length: 127 }, (_, index) => index))).slice(0, 6)).toBe("7f0001");
    const long = prependLen(Uint8Array.from({ length: 128 }, (_, index) => index));
    expect(long.length).toBe(130);
    expect(toHex(long).slice(0, 8)).toBe("80010001");
    expect(toHex(lvCat(ascii("1234"), ascii("5"), new Uint8Array(), ascii("678")))).toBe("043132333401350003363738");
  });

  test("transcript_ir", () => {
    expect(toHex(transcriptIr(ascii("123"), ascii("PartyA"), ascii("234"), ascii("PartyB")))).toBe("03313233065061727479410332333406506172747942");
  });
});

describe("CPACE-X25519-SHA512 test vectors", () => {
  const generator = hex("d04bf6d41f6a289632a2e929fa29bebd51092512a7829fdde7d314b62f05a73f");

  test("the generator: string, hash, field element, Elligator 2", () => {
    const string = generatorString(prs, ci, sid);
    expect(string.length).toBe(170);
    expect(toHex(string.subarray(0, 20))).toBe("0843506163653235350850617373776f72646d00");
    expect(toHex(string.subarray(string.length - 42))).toBe("180b415f696e69746961746f720b425f726573706f6e646572107e4b4791d6a8ef019b936c79fb7f2c57");
    const hash = createHash("sha512").update(string).digest().subarray(0, 32);
    expect(toHex(hash)).toBe("03998087bdb1a2617bbe25ef5a7c18cd4f84f902328701790958755ee4aed1d3");
    const field = decodeUCoordinate(hash);
    expect(toHex(encodeUCoordinate(field))).toBe("03998087bdb1a2617bbe25ef5a7c18cd4f84f902328701790958755ee4aed153");
    expect(toHex(elligator2(field))).toBe(toHex(generator));
    expect(toHex(calculateGenerator(prs, ci, sid))).toBe(toHex(generator));
  });

  test("shares, K from both sides, ISK", () => {
    const shareA = cpaceShare(ya, generator);
    const shareB = cpaceShare(yb, generator);
    expect(toHex(shareA)).toBe("1d13c89278cdadd826f6d8d7f887701430f8380ddc17611cdd6dc989ce0c9f32");
    expect(toHex(shareB)).toBe("248cccf6d5cdc3646f0ad593f9e6cef4e69d4945f8372e623512ecea32185623");
    const kA = x25519(ya, shareB);
    const kB = x25519(yb, shareA);
    expect(toHex(kA)).toBe("5b067effbdc0b2a0e1d907b21ebb25cfedb96a852179a847c37e43ee71322c6b");
    expect(toHex(kB)).toBe(toHex(kA));
    const transcript = transcriptIr(shareA, adA, shareB, adB);
    expect(transcript.length).toBe(74);
    expect(toHex(intermediateSessionKey(sid, kA!, transcript))).toBe(
      "6e19b875f7a561d6b3ca3dbb9ef42ac55de3e717881018204b8922b4d5e53bb2aa82c300bea7b65d2b671da71922ddf6472301b79bc270adfa8bf413285f2263",
    );
  });

  test("scalar_mult_vfy on low-order points: the neutral element aborts; bit 255 is ignored", () => {
    const s = hex("af46e36bf0527c9d3b16154b82465edd62144c0ac1fc5a18506a2244ba449aff");
    const cases: [string, string | null][] = [
      ["0000000000000000000000000000000000000000000000000000000000000000", null],
      ["0100000000000000000000000000000000000000000000000000000000000000", null],
      ["ecffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff7f", null],
      ["e0eb7a7c3b41b8ae1656e3faf19fc46ada098deb9c32b1fd866205165f49b800", null],
      ["5f9c95bca3508c24b1d0b1559c83ef5b04445cc4581c8e86d8224eddd09f1157", null],
      ["edffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff7f", null],
      ["daffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff", "d8e2c776bbacd510d09fd9278b7edcd25fc5ae9adfba3b6e040e8d3b71b21806"],
      ["eeffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff7f", null],
      ["dbffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff", "c85c655ebe8be44ba9c0ffde69f2fe10194458d137f09bbff725ce58803cdb38"],
      ["d9ffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff", "db64dafa9b8fdd136914e61461935fe92aa372cb056314e1231bc4ec12417456"],
      ["cdeb7a7c3b41b8ae1656e3faf19fc46ada098deb9c32b1fd866205165f49b880", "e062dcd5376d58297be2618c7498f55baa07d7e03184e8aada20bca28888bf7a"],
      ["4c9c95bca3508c24b1d0b1559c83ef5b04445cc4581c8e86d8224eddd09f11d7", "993c6ad11c4c29da9a56f7691fd0ff8d732e49de6250b6c2e80003ff4629a175"],
    ];
    for (const [u, q] of cases) expect({ u, q: toHex(x25519(s, hex(u))) }).toEqual({ u, q });
  });
});

describe("what the pairing relies on", () => {
  test("another code, session id or channel gives another generator", () => {
    const base = toHex(calculateGenerator(prs, ci, sid));
    expect(toHex(calculateGenerator(ascii("Passwore"), ci, sid))).not.toBe(base);
    expect(toHex(calculateGenerator(prs, ci, hex("7e4b4791d6a8ef019b936c79fb7f2c58")))).not.toBe(base);
    expect(toHex(calculateGenerator(prs, ascii("other"), sid))).not.toBe(base);
  });

  test("shares made from different codes give different keys on the two sides, so the confirmation tags differ", () => {
    const sideA = cpaceShare(ya, calculateGenerator(ascii("ABCD2345"), ci, sid));
    const sideB = cpaceShare(yb, calculateGenerator(ascii("ABCD2346"), ci, sid));
    const kA = x25519(ya, sideB)!;
    const kB = x25519(yb, sideA)!;
    expect(toHex(kA)).not.toBe(toHex(kB));
    const transcript = transcriptIr(sideA, adA, sideB, adB);
    const tagA = confirmationTag(confirmationKey(sid, intermediateSessionKey(sid, kA, transcript)), sideB, adB);
    const tagB = confirmationTag(confirmationKey(sid, intermediateSessionKey(sid, kB, transcript)), sideB, adB);
    expect(toHex(tagA)).not.toBe(toHex(tagB));
  });
});
