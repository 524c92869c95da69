// CPace (draft-irtf-cfrg-cpace, cipher suite CPACE-X25519-SHA512): the password-authenticated key
// exchange behind `tandem install`'s pairing code. Both nodes turn the code into a secret generator
// of Curve25519 (a hash of the code mapped onto the curve with Elligator 2), exchange one ephemeral
// Diffie-Hellman share each over that generator, and hash the shared point with the transcript into
// an intermediate session key (ISK). Why this and not "X25519, then a MAC keyed by the code": an
// eavesdropper who records the exchange learns nothing that lets it test codes offline (the shares
// hide the generator), and an attacker who takes part can test exactly one code per exchange — the
// code it used for its own share — which the pairing listener counts and limits.
//
// Pure functions: the scalars come from the caller (an injected random source), the hash and the
// scalar multiplication are node:crypto (SHA-512; X25519 from the TLS library, constant time), and
// the only arithmetic here is Elligator 2 on a field element derived from the code, in BigInt.
// BigInt is not constant time; what that can leak is timing of one map per pairing attempt, on the
// node itself, about a code that is valid for minutes and one use (docs/security.md).
// The test vectors of the draft's appendix (generator, shares, K, ISK, low-order points) pin it.
import { createHash, createHmac, createPrivateKey, createPublicKey, diffieHellman, timingSafeEqual } from "node:crypto";

const encoder = new TextEncoder();

/** G_X25519.DSI and the ISK label of the draft. */
const dsi = encoder.encode("CPace255");
const dsiIsk = encoder.encode("CPace255_ISK");
/** SHA-512's input block size (H.s_in_bytes). */
const sha512BlockBytes = 128;
export const cpaceShareBytes = 32;
export const cpaceScalarBytes = 32;

/** LEB128 length, then the bytes (the draft's prepend_len). */
export function prependLen(data: Uint8Array): Uint8Array {
  const length: number[] = [];
  let remaining = data.length;
  do {
    length.push((remaining & 0x7f) | (remaining >= 128 ? 0x80 : 0));
    remaining = Math.floor(remaining / 128);
  } while (remaining > 0);
  const out = new Uint8Array(length.length + data.length);
  out.set(length, 0);
  out.set(data, length.length);
  return out;
}

/** Length-value concatenation (the draft's lv_cat): a prefix-free encoding of the parts. */
export function lvCat(...parts: Uint8Array[]): Uint8Array {
  return concat(...parts.map(prependLen));
}

export function concat(...parts: Uint8Array[]): Uint8Array {
  const out = new Uint8Array(parts.reduce((sum, part) => sum + part.length, 0));
  let offset = 0;
  for (const part of parts) {
    out.set(part, offset);
    offset += part.length;
  }
  return out;
}

/** DSI and the code fill the first hash block with zero padding, so its cost does not depend on the code's length. */
export function generatorString(prs: Uint8Array, ci: Uint8Array, sid: Uint8Array): Uint8Array {
  const zeroPadBytes = Math.max(0, sha512BlockBytes - 1 - prependLen(prs).length - prependLen(dsi).length);
  return lvCat(dsi, prs, new Uint8Array(zeroPadBytes), ci, sid);
}

// ---- Curve25519's field, only what Elligator 2 needs

const p = (1n << 255n) - 19n;
const curveA = 486662n;
/** The non-square Z of RFC 9380 for Curve25519. */
const ellZ = 2n;

function mod(value: bigint): bigint {
  const r = value % p;
  return r < 0n ? r + p : r;
}

function power(base: bigint, exponent: bigint): bigint {
  let result = 1n;
  let b = mod(base);
  let e = exponent;
  while (e > 0n) {
    if (e & 1n) result = (result * b) % p;
    b = (b * b) % p;
    e >>= 1n;
  }
  return result;
}

const inverse = (value: bigint) => power(value, p - 2n);

function decodeLittleEndian(bytes: Uint8Array): bigint {
  let value = 0n;
  for (let index = bytes.length - 1; index >= 0; index--) value = (value << 8n) | BigInt(bytes[index]!);
  return value;
}

/** RFC 7748's decodeUCoordinate for 255 bits: the top bit is ignored. */
export function decodeUCoordinate(bytes: Uint8Array): bigint {
  const copy = Uint8Array.from(bytes.subarray(0, 32));
  copy[31]! &= 0x7f;
  return decodeLittleEndian(copy);
}

export function encodeUCoordinate(value: bigint): Uint8Array {
  const out = new Uint8Array(32);
  let rest = mod(value);
  for (let index = 0; index < 32; index++) {
    out[index] = Number(rest & 0xffn);
    rest >>= 8n;
  }
  return out;
}

/** Elligator 2 onto Curve25519 (the draft's reference map): a field element to a point's u-coordinate. */
export function elligator2(r: bigint): Uint8Array {
  // 1 + Z·r² is never zero: -1/2 is not a square modulo p.
  const v = mod(-curveA * inverse(mod(1n + ellZ * r * r)));
  const epsilon = power(mod(v * v * v + curveA * v * v + v), (p - 1n) / 2n);
  const x = mod(epsilon * v - mod(1n - epsilon) * curveA * inverse(2n));
  return encodeUCoordinate(x);
}

/** The secret generator for this code (PRS), channel identifier and session id. */
export function calculateGenerator(prs: Uint8Array, ci: Uint8Array, sid: Uint8Array): Uint8Array {
  const hash = createHash("sha512").update(generatorString(prs, ci, sid)).digest();
  return elligator2(decodeUCoordinate(new Uint8Array(hash.buffer, hash.byteOffset, 32)));
}

// ---- X25519 through node:crypto (raw keys wrapped in their fixed DER prefixes)

const pkcs8Prefix = Uint8Array.from([0x30, 0x2e, 0x02, 0x01, 0x00, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x6e, 0x04, 0x22, 0x04, 0x20]);
const spkiPrefix = Uint8Array.from([0x30, 0x2a, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x6e, 0x03, 0x21, 0x00]);

/**
 * X25519(scalar, u) — the draft's scalar_mult_vfy: null when the result is the neutral element (a
 * low-order point on the curve or its twist), which every caller must treat as an abort.
 */
export function x25519(scalar: Uint8Array, u: Uint8Array): Uint8Array | null {
  if (scalar.length !== cpaceScalarBytes || u.length !== cpaceShareBytes) return null;
  const privateKey = createPrivateKey({ key: Buffer.from(concat(pkcs8Prefix, scalar)), format: "der", type: "pkcs8" });
  const publicKey = createPublicKey({ key: Buffer.from(concat(spkiPrefix, u)), format: "der", type: "spki" });
  let shared: Buffer;
  try {
    shared = diffieHellman({ privateKey, publicKey });
  } catch {
    // The TLS library refuses an all-zero result: that is the neutral element.
    return null;
  }
  return shared.every((byte) => byte === 0) ? null : new Uint8Array(shared);
}

/** One side's share: Y = X25519(y, g). */
export function cpaceShare(scalar: Uint8Array, generator: Uint8Array): Uint8Array {
  const share = x25519(scalar, generator);
  // The generator comes from Elligator 2 and the scalar is clamped by X25519: never the identity.
  if (!share) throw new Error("CPace: the share is the neutral element");
  return share;
}

/** The initiator-responder transcript: lv_cat(Ya, ADa) || lv_cat(Yb, ADb). */
export function transcriptIr(ya: Uint8Array, adA: Uint8Array, yb: Uint8Array, adB: Uint8Array): Uint8Array {
  return concat(lvCat(ya, adA), lvCat(yb, adB));
}

/** ISK = SHA-512(lv_cat(DSI_ISK, sid, K) || transcript). */
export function intermediateSessionKey(sid: Uint8Array, k: Uint8Array, transcript: Uint8Array): Uint8Array {
  return new Uint8Array(createHash("sha512").update(lvCat(dsiIsk, sid, k)).update(transcript).digest());
}

/** The draft's explicit key confirmation: mac_key = SHA-512("CPaceMac" || sid || ISK). */
export function confirmationKey(sid: Uint8Array, isk: Uint8Array): Uint8Array {
  return new Uint8Array(createHash("sha512").update(encoder.encode("CPaceMac")).update(sid).update(isk).digest());
}

/** Each side's tag over the message it sent: HMAC-SHA-512(mac_key, lv_cat(Y, AD)). */
export function confirmationTag(macKey: Uint8Array, share: Uint8Array, ad: Uint8Array): Uint8Array {
  return new Uint8Array(createHmac("sha512", macKey).update(lvCat(share, ad)).digest());
}

export function tagsEqual(a: Uint8Array, b: Uint8Array): boolean {
  return a.length === b.length && timingSafeEqual(a, b);
}
