// The cryptography of the replication link (docs/security.md has the whole design and its reasons).
// Pure functions of the pairing secret and the bytes exchanged; the nonces come from the caller's
// injected Random, so this module has no IO and no ambient state.
//
//  - Admission tag: the dialer's Hello carries HMAC-SHA256(secret, label | its own Hello fields).
//    It lets the acceptor tell the real peer from a stranger on its first message (so strangers
//    cannot crowd the peer out) and is useless anywhere else: it is a proof of nothing but "knows
//    the secret and sent this Hello once", and the acceptor refuses a Hello whose nonce it has seen.
//  - Transcript: SHA-256 over a label, both Hello payloads exactly as sent (role, version range,
//    cluster id, name, nonce, flags of each side) and the chosen version.
//  - Proofs: the dialer's is HMAC(secret, "dialer proof" | transcript); the acceptor checks it
//    BEFORE it sends its own, HMAC(secret, "acceptor proof" | transcript | dialer's proof). A proof
//    binds its role and the whole exchange, so it is valid in no other position and on no other
//    connection, and an acceptor never proves anything to someone who has not proved first.
//  - Session keys: HKDF-SHA256(secret, salt = transcript), one 32-byte key per direction.
//  - Frame tags: AES-256-GCM with an empty plaintext (GMAC, NIST SP 800-38D) under the direction's
//    key, nonce = the frame's implicit sequence number in that direction, authenticating the frame
//    header and payload. A replayed, reordered, dropped, altered or spliced frame fails its tag.
//    GMAC rather than HMAC because it costs a fraction per byte (measured in docs/security.md);
//    its nonce never repeats under one key because keys are fresh per connection and per direction
//    and the sequence only grows.
import { createCipheriv, createHash, createHmac, hkdfSync, timingSafeEqual } from "node:crypto";
import { assert } from "../common/assert.ts";
import { partsOf } from "../common/bytes.ts";
import { clusterIdBytes, type Frame, FrameFlags, type FrameMode, frameTagBytes, type LinkRole, macBytes, markFrameTagged, plainFrames, protocolVersionTagOnly } from "./wire.ts";

const encoder = new TextEncoder();
const label = {
  admission: encoder.encode("tandem-link-v2 admission"),
  transcript: encoder.encode("tandem-link-v2 transcript"),
  dialerProof: encoder.encode("tandem-link-v2 dialer proof"),
  acceptorProof: encoder.encode("tandem-link-v2 acceptor proof"),
  dialerToAcceptor: encoder.encode("tandem-link-v2 frames dialer to acceptor"),
  acceptorToDialer: encoder.encode("tandem-link-v2 frames acceptor to dialer"),
};

/** What a Hello says about its sender: everything the admission tag covers. */
export interface HelloFields {
  role: LinkRole;
  versionMin: number;
  versionMax: number;
  clusterId: Uint8Array;
  nodeId: string;
  nonce: Uint8Array;
  flags: number;
}

function lengthPrefixed(bytes: Uint8Array): Uint8Array {
  assert(bytes.length <= 0xffffffff, "length fits 32 bits");
  const out = new Uint8Array(4 + bytes.length);
  new DataView(out.buffer).setUint32(0, bytes.length, true);
  out.set(bytes, 4);
  return out;
}

function hmac(secret: Uint8Array, parts: readonly Uint8Array[]): Uint8Array {
  const mac = createHmac("sha256", secret);
  for (const part of parts) mac.update(part);
  const digest = new Uint8Array(mac.digest());
  assert(digest.length === macBytes, "HMAC-SHA256 is 32 bytes");
  return digest;
}

/** The dialer's admission tag over its own Hello. */
export function admissionTag(secret: Uint8Array, hello: HelloFields): Uint8Array {
  assert(hello.clusterId.length === clusterIdBytes, "cluster ids are 16 bytes");
  const numbers = new Uint8Array(6);
  const view = new DataView(numbers.buffer);
  view.setUint8(0, hello.role);
  view.setUint16(1, hello.versionMin, true);
  view.setUint16(3, hello.versionMax, true);
  view.setUint8(5, hello.flags);
  return hmac(secret, [label.admission, numbers, hello.clusterId, lengthPrefixed(encoder.encode(hello.nodeId)), lengthPrefixed(hello.nonce)]);
}

/** The handshake so far: both Hello payloads as sent on the wire, and the version chosen from them. */
export function transcriptHash(dialerHelloPayload: Uint8Array, acceptorHelloPayload: Uint8Array, version: number): Uint8Array {
  const hash = createHash("sha256");
  hash.update(label.transcript);
  hash.update(lengthPrefixed(dialerHelloPayload));
  hash.update(lengthPrefixed(acceptorHelloPayload));
  hash.update(new Uint8Array([version & 0xff, version >>> 8]));
  return new Uint8Array(hash.digest());
}

export function dialerProof(secret: Uint8Array, transcript: Uint8Array): Uint8Array {
  return hmac(secret, [label.dialerProof, transcript]);
}

export function acceptorProof(secret: Uint8Array, transcript: Uint8Array, dialerProofBytes: Uint8Array): Uint8Array {
  return hmac(secret, [label.acceptorProof, transcript, dialerProofBytes]);
}

export interface SessionKeys {
  dialerToAcceptor: Uint8Array;
  acceptorToDialer: Uint8Array;
}

export function sessionKeys(secret: Uint8Array, transcript: Uint8Array): SessionKeys {
  const derive = (info: Uint8Array) => new Uint8Array(hkdfSync("sha256", secret, transcript, info, 32));
  return { dialerToAcceptor: derive(label.dialerToAcceptor), acceptorToDialer: derive(label.acceptorToDialer) };
}

/** Constant-time comparison of a mac or tag a peer sent with the one expected. */
export function verifyMac(expected: Uint8Array, received: Uint8Array): boolean {
  return received.length === expected.length && timingSafeEqual(expected, received);
}

/** The frame's 12-byte GCM nonce: its sequence number, little-endian, in the first 8 bytes. */
export function writeFrameNonce(nonce: Uint8Array, sequence: number): void {
  assert(Number.isSafeInteger(sequence) && sequence >= 0, "frame sequence numbers are safe integers");
  const low = sequence >>> 0;
  const high = Math.floor(sequence / 0x100000000);
  nonce[0] = low;
  nonce[1] = low >>> 8;
  nonce[2] = low >>> 16;
  nonce[3] = low >>> 24;
  nonce[4] = high;
  nonce[5] = high >>> 8;
  nonce[6] = high >>> 16;
  nonce[7] = high >>> 24;
}

/**
 * The tag of the frame made of `parts` (header first), as frame number `sequence` under `key`. One
 * pass over the parts, which are neither copied nor joined; the nonce is written byte by byte (a
 * DataView over a fresh small array makes the engine materialise its buffer, which costs more than
 * the header's GHASH) and the tag is the cipher's own buffer, not a copy. The reference: a faster
 * implementation is installed only when it agrees with this one (installFrameTagger).
 */
export function frameTag(key: Uint8Array, sequence: number, parts: readonly Uint8Array[]): Uint8Array {
  const nonce = new Uint8Array(12);
  writeFrameNonce(nonce, sequence);
  const cipher = createCipheriv("aes-256-gcm", key, nonce, { authTagLength: frameTagBytes });
  for (const part of parts) if (part.length > 0) cipher.setAAD(part);
  cipher.final();
  return cipher.getAuthTag();
}

/** Computes frame tags under one key (one direction of one connection). */
export interface FrameTagger {
  /** frameTag(key, sequence, parts): a fresh array the caller may keep. */
  tag(sequence: number, parts: readonly Uint8Array[]): Uint8Array;
}

/** Makes the tagger for a key; the key's bytes may be kept or copied, never changed. */
export type FrameTaggerFactory = (key: Uint8Array) => FrameTagger;

const referenceTaggerFactory: FrameTaggerFactory = (key) => ({ tag: (sequence, parts) => frameTag(key, sequence, parts) });
let activeTaggerFactory = referenceTaggerFactory;
let activeTaggerName = "node:crypto";

/** A tagger for `key` from the implementation installed now (what sealers and openers made now use). */
export function frameTagger(key: Uint8Array): FrameTagger {
  return activeTaggerFactory(key);
}

/** Which implementation computes frame tags: "node:crypto" (the reference) or the installed one's name. */
export function frameTaggerImplementation(): string {
  return activeTaggerName;
}

/** Keys, sequences and frame shapes a candidate must tag exactly as the reference does. */
function checkTaggerAgainstReference(factory: FrameTaggerFactory): string | undefined {
  const sample = new Uint8Array(4096 + 64 + 7);
  for (let index = 0; index < sample.length; index++) sample[index] = (index * 2654435761) >>> 24;
  const shapes: Uint8Array[][] = [
    [sample.subarray(0, 32)],
    [sample.subarray(0, 32), sample.subarray(32, 32 + 4096)],
    [sample.subarray(3, 35), new Uint8Array(0), sample.subarray(35, 35 + 17)],
    [sample.subarray(7, 39), sample.subarray(39, 39 + 4096 + 31)],
    [new Uint8Array(0)],
  ];
  for (const keySeed of [1, 77]) {
    const key = new Uint8Array(32);
    for (let index = 0; index < key.length; index++) key[index] = (index * 31 + keySeed) & 0xff;
    const tagger = factory(key);
    for (const sequence of [0, 1, 255, 256, 0xffffffff, 0x100000000, 2 ** 53 - 1]) {
      for (const [shape, parts] of shapes.entries()) {
        const expected = frameTag(key, sequence, parts);
        const got = tagger.tag(sequence, parts);
        if (got.length !== frameTagBytes || !got.every((byte, index) => byte === expected[index])) return `frame shape ${shape} at sequence ${sequence} differs`;
      }
    }
  }
  return undefined;
}

/**
 * Install a faster frame tagger for every sealer and opener made after this; returns why it was
 * refused (it must agree with the reference first, so a broken fast path can never tag a frame),
 * or undefined when installed.
 */
export function installFrameTagger(factory: FrameTaggerFactory, name: string): string | undefined {
  let problem: string | undefined;
  try {
    problem = checkTaggerAgainstReference(factory);
  } catch (error) {
    problem = `failed: ${(error as Error)?.message ?? String(error)}`;
  }
  if (problem) return `${name}: ${problem}`;
  activeTaggerFactory = factory;
  activeTaggerName = name;
  return undefined;
}

/** Back to the reference (tests). */
export function resetFrameTagger(): void {
  activeTaggerFactory = referenceTaggerFactory;
  activeTaggerName = "node:crypto";
}

/**
 * One direction's frame authentication on one connection: the sender seals, the receiver opens, each
 * counting frames so the sequence number never travels. `key` undefined: frames go untagged (only
 * when both ends asked for it in their Hellos, for benchmarks; see docs/security.md).
 */
export class FrameSealer {
  private sequence = 0;
  private readonly tagger: FrameTagger | undefined;
  /** How this session's frames are encoded (encodeMessage's mode): tagged or not, with or without a payload CRC. */
  readonly mode: FrameMode;

  /** `version`: the link's agreed protocol version (3 and later: tagged frames carry no payload CRC). */
  constructor(
    key: Uint8Array | undefined,
    version = protocolVersionTagOnly,
  ) {
    this.mode = key ? { tagged: true, payloadCrc: version < protocolVersionTagOnly } : plainFrames;
    this.tagger = key ? activeTaggerFactory(key) : undefined;
  }

  /**
   * Append the frame's tag (the parts come from encodeMessage, header first). A frame encoded
   * without this session's mode gets its Tagged flag here (its header CRC computed again).
   */
  seal(parts: Uint8Array[]): Uint8Array[] {
    if (!this.tagger) return parts;
    if ((parts[0]![5]! & FrameFlags.Tagged) === 0) markFrameTagged(parts[0]!);
    parts.push(this.tagger.tag(this.sequence++, parts));
    return parts;
  }
}

export type OpenResult = "ok" | "missing" | "unexpected" | "bad";

export class FrameOpener {
  private sequence = 0;
  private readonly tagger: FrameTagger | undefined;
  constructor(key: Uint8Array | undefined) {
    this.tagger = key ? activeTaggerFactory(key) : undefined;
  }

  /** Check the next frame's tag; anything but "ok" means the frame must not be acted on. */
  open(frame: Frame): OpenResult {
    if (!this.tagger) return frame.tag ? "unexpected" : "ok";
    if (!frame.tag) return "missing";
    const expected = this.tagger.tag(this.sequence, [frame.header, ...partsOf(frame.payload)]);
    if (!verifyMac(expected, frame.tag)) return "bad";
    this.sequence++;
    return "ok";
  }
}
