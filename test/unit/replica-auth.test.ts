// Proves the link cryptography's properties on the functions alone (the handshake and the frame
// checks inside the node core are exercised in replica-link.test.ts and by the simulator): the
// admission tag covers every field of the dialer's Hello and needs the secret; the two proofs are
// bound to their role and to the whole transcript, so none is valid in another position or over
// another exchange; the two directions get different session keys; a frame tag fails for a
// replayed, reordered, dropped, altered or spliced frame and for a frame sent back the other way.
// Key derivation and tags are checked against WebCrypto, an implementation outside node:crypto.
// The frame-tag properties run twice: with the node:crypto reference and with libcrypto's GMAC
// installed in its place, as the daemon runs (src/node/replica/gmac-native.ts).
import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import { joinPayload, Pieces } from "../../src/common/bytes.ts";
import { frameTagNativeBytesMax } from "../../src/constants.ts";
import { loadNativeGmac } from "../../src/node/replica/gmac-native.ts";
import { acceptorProof, admissionTag, dialerProof, FrameOpener, FrameSealer, frameTag, frameTaggerImplementation, type FrameTaggerFactory, type HelloFields, installFrameTagger, resetFrameTagger, sessionKeys, transcriptHash, verifyMac } from "../../src/replica/auth.ts";
import { checksum } from "../../src/replica/checksum.ts";
import { decodeFrame, decodeMessage, encodeMessage, type Frame, frameHeaderBytes, FrameFlags, Framer, joinParts, LinkRole, MessageType, NEED_MORE } from "../../src/replica/wire.ts";

const encoder = new TextEncoder();
const secret = encoder.encode("pairing secret of the box");
const otherSecret = encoder.encode("another pairing secret!!");
const cluster = new Uint8Array(16).fill(3);
const dialerHello: HelloFields = { role: LinkRole.Dialer, versionMin: 2, versionMax: 2, clusterId: cluster, nodeId: "a", nonce: new Uint8Array(32).fill(1), flags: 0 };
const dialerPayload = encoder.encode("the dialer's Hello as sent");
const acceptorPayload = encoder.encode("the acceptor's Hello as sent");

describe("admission tag", () => {
  test("verifies with the secret, and changes with the secret and with every field", () => {
    const tag = admissionTag(secret, dialerHello);
    expect(tag.length).toBe(32);
    expect(verifyMac(admissionTag(secret, { ...dialerHello }), tag)).toBe(true);
    expect(verifyMac(admissionTag(otherSecret, dialerHello), tag)).toBe(false);
    const variants: HelloFields[] = [
      { ...dialerHello, role: LinkRole.Acceptor },
      { ...dialerHello, versionMin: 1 },
      { ...dialerHello, versionMax: 3 },
      { ...dialerHello, clusterId: new Uint8Array(16).fill(4) },
      { ...dialerHello, nodeId: "b" },
      { ...dialerHello, nonce: new Uint8Array(32).fill(2) },
      { ...dialerHello, flags: 1 },
    ];
    for (const variant of variants) expect(verifyMac(admissionTag(secret, variant), tag)).toBe(false);
  });
});

describe("proofs", () => {
  const transcript = transcriptHash(dialerPayload, acceptorPayload, 2);

  test("the transcript changes with either Hello, their order, and the version", () => {
    const others = [
      transcriptHash(encoder.encode("the dialer's Hello as sent!"), acceptorPayload, 2),
      transcriptHash(dialerPayload, encoder.encode("the acceptor's Hello as sent!"), 2),
      transcriptHash(acceptorPayload, dialerPayload, 2),
      transcriptHash(dialerPayload, acceptorPayload, 3),
      // Moving bytes across the boundary of the two Hellos is a different transcript too.
      transcriptHash(encoder.encode("the dialer's Hello as sen"), encoder.encode("tthe acceptor's Hello as sent"), 2),
    ];
    for (const other of others) expect(verifyMac(transcript, other)).toBe(false);
  });

  test("a proof is valid only in its own role: the dialer's proof is not the acceptor's and back", () => {
    const fromDialer = dialerProof(secret, transcript);
    const fromAcceptor = acceptorProof(secret, transcript, fromDialer);
    expect(verifyMac(dialerProof(secret, transcript), fromDialer)).toBe(true);
    expect(verifyMac(acceptorProof(secret, transcript, fromDialer), fromAcceptor)).toBe(true);
    // Reflection: the dialer's own proof sent back to it as the acceptor's, and the other way.
    expect(verifyMac(acceptorProof(secret, transcript, fromDialer), fromDialer)).toBe(false);
    expect(verifyMac(dialerProof(secret, transcript), fromAcceptor)).toBe(false);
  });

  test("a proof recorded on one connection fails on another (another nonce, another transcript)", () => {
    const recorded = dialerProof(secret, transcript);
    const laterTranscript = transcriptHash(dialerPayload, encoder.encode("the acceptor's Hello with a new nonce"), 2);
    expect(verifyMac(dialerProof(secret, laterTranscript), recorded)).toBe(false);
    // The acceptor's proof also depends on the dialer's proof it answers.
    expect(verifyMac(acceptorProof(secret, transcript, new Uint8Array(32)), acceptorProof(secret, transcript, recorded))).toBe(false);
  });

  test("a wrong secret makes every proof fail", () => {
    expect(verifyMac(dialerProof(secret, transcript), dialerProof(otherSecret, transcript))).toBe(false);
    expect(verifyMac(dialerProof(secret, transcript), dialerProof(secret, transcript).subarray(0, 31))).toBe(false);
  });
});

describe("session keys", () => {
  test("one key per direction, fresh per transcript, equal to WebCrypto's HKDF-SHA256", async () => {
    const transcript = transcriptHash(dialerPayload, acceptorPayload, 2);
    const keys = sessionKeys(secret, transcript);
    expect(keys.dialerToAcceptor.length).toBe(32);
    expect(verifyMac(keys.dialerToAcceptor, keys.acceptorToDialer)).toBe(false);
    const other = sessionKeys(secret, transcriptHash(dialerPayload, encoder.encode("another acceptor nonce"), 2));
    expect(verifyMac(keys.dialerToAcceptor, other.dialerToAcceptor)).toBe(false);
    const base = await crypto.subtle.importKey("raw", secret, "HKDF", false, ["deriveBits"]);
    const webCrypto = new Uint8Array(await crypto.subtle.deriveBits({ name: "HKDF", hash: "SHA-256", salt: transcript.slice(), info: encoder.encode("tandem-link-v2 frames dialer to acceptor") }, base, 256));
    expect(keys.dialerToAcceptor).toEqual(webCrypto);
  });
});

/** The frame-tag properties, for the reference and for each faster implementation installed in its place. */
function frameTagProperties(implementation: string, install: () => void) {
describe(`frame tags (${implementation})`, () => {
  beforeAll(install);
  afterAll(resetFrameTagger);
  test("the implementation under test is the one installed", () => {
    expect(frameTaggerImplementation()).toStartWith(implementation);
  });

  const keys = sessionKeys(secret, transcriptHash(dialerPayload, acceptorPayload, 2));
  const message = (requestId: number) => encodeMessage({ type: MessageType.PeerRequest, volumeId: 0, requestId, payload: encoder.encode(`request ${requestId}`) });
  const sealedStream = (sealer: FrameSealer, count: number) => Array.from({ length: count }, (_, index) => joinParts(sealer.seal(message(index + 1))));
  const frameOf = (bytes: Uint8Array): Frame => {
    const result = decodeFrame(bytes, 0, 1 << 20);
    if (result === NEED_MORE) throw new Error("incomplete frame");
    return result.frame;
  };

  test("frames sealed in order open in order", () => {
    const opener = new FrameOpener(keys.dialerToAcceptor);
    for (const bytes of sealedStream(new FrameSealer(keys.dialerToAcceptor), 5)) expect(opener.open(frameOf(bytes))).toBe("ok");
  });

  test("a replayed, reordered or dropped frame fails (the sequence number is implicit)", () => {
    const frames = sealedStream(new FrameSealer(keys.dialerToAcceptor), 3);
    const replay = new FrameOpener(keys.dialerToAcceptor);
    expect(replay.open(frameOf(frames[0]!))).toBe("ok");
    expect(replay.open(frameOf(frames[0]!))).toBe("bad");
    expect(new FrameOpener(keys.dialerToAcceptor).open(frameOf(frames[1]!))).toBe("bad"); // frame 0 dropped, or 1 before 0
  });

  test("one flipped bit anywhere in header, payload or tag fails", () => {
    const [bytes] = sealedStream(new FrameSealer(keys.dialerToAcceptor), 1);
    for (let bit = 0; bit < bytes!.length * 8; bit += 7) {
      const altered = bytes!.slice();
      altered[bit >> 3] = altered[bit >> 3]! ^ (1 << (bit & 7));
      let result: string;
      try {
        result = new FrameOpener(keys.dialerToAcceptor).open(frameOf(altered));
      } catch {
        result = "undecodable"; // header CRC or magic: the framer refuses it before the tag is looked at
      }
      expect(result).not.toBe("ok");
    }
  });

  // 9000 bytes: libcrypto tags it (below frameTagNativeBytesMax); 300 000: node:crypto.
  for (const size of [9000, 300_000]) {
    test(`a frame of ${size} bytes whose data arrives in pieces opens, and fails with a bit flipped in any piece`, () => {
      const data = new Uint8Array(size).map((_, index) => (index * 31 + 7) & 0xff);
      const seal = () => {
        const sealer = new FrameSealer(keys.dialerToAcceptor);
        return joinParts(sealer.seal(encodeMessage({ type: MessageType.Write, volumeId: 1, requestId: 1, offset: 0, fua: false, data }, sealer.mode)));
      };
      const deliver = (bytes: Uint8Array) => {
        const framer = new Framer(1 << 20, 1);
        // Odd chunk sizes: pieces that do not end on 16-byte (GHASH block) boundaries.
        for (let at = 0, chunk = 4099; at < bytes.length; at += chunk, chunk = chunk * 3 + 1) framer.push(bytes.slice(at, at + chunk));
        const frame = framer.next()!;
        expect(frame.payload).toBeInstanceOf(Pieces);
        return frame;
      };
      expect(new FrameOpener(keys.dialerToAcceptor).open(deliver(seal()))).toBe("ok");
      for (const at of [100, 5000, 8999, 20_000, 70_000, 299_000].filter((at) => at < size)) {
        const altered = seal();
        altered[at] = altered[at]! ^ 4;
        expect(new FrameOpener(keys.dialerToAcceptor).open(deliver(altered))).toBe("bad");
      }
    });
  }

  describe("the payload CRC of a tagged frame (protocol version 3 leaves it out)", () => {
    const data = new Uint8Array(4096).map((_, index) => (index * 7 + 1) & 0xff);
    const write = () => ({ type: MessageType.Write as const, volumeId: 5, requestId: 77, offset: 8192, fua: false, data });
    const payloadCrcField = (bytes: Uint8Array) => new DataView(bytes.buffer, bytes.byteOffset).getUint32(24, true);
    const sealWith = (version: number) => {
      const sealer = new FrameSealer(keys.dialerToAcceptor, version);
      return joinParts(sealer.seal(encodeMessage(write(), sealer.mode)));
    };

    test("version 3: the field is zero, the frame is flagged tagged, opens and decodes to the same write", () => {
      const bytes = sealWith(3);
      expect(payloadCrcField(bytes)).toBe(0);
      expect(bytes[5]! & FrameFlags.Tagged).toBe(FrameFlags.Tagged);
      const frame = frameOf(bytes);
      expect(frame.payloadIntact).toBe(true);
      expect(new FrameOpener(keys.dialerToAcceptor).open(frame)).toBe("ok");
      expect(decodeMessage(frame)).toMatchObject({ type: MessageType.Write, volumeId: 5, requestId: 77, offset: 8192, data });
    });

    test("version 2: a peer that checks it still gets the CRC of the payload", () => {
      const bytes = sealWith(2);
      const payload = bytes.subarray(frameHeaderBytes, bytes.length - 16);
      expect(payloadCrcField(bytes)).toBe(checksum(payload));
      expect(new FrameOpener(keys.dialerToAcceptor).open(frameOf(bytes))).toBe("ok");
    });

    test("a damaged payload is caught by the tag in both versions; an untagged frame's by its CRC", () => {
      for (const version of [2, 3]) {
        const bytes = sealWith(version);
        bytes[frameHeaderBytes + 100] = bytes[frameHeaderBytes + 100]! ^ 0x10;
        expect(new FrameOpener(keys.dialerToAcceptor).open(frameOf(bytes))).toBe("bad");
      }
      const plain = joinParts(encodeMessage(write()));
      expect(frameOf(plain).payloadIntact).toBe(true);
      plain[frameHeaderBytes + 100] = plain[frameHeaderBytes + 100]! ^ 0x10;
      expect(frameOf(plain).payloadIntact).toBe(false);
    });

    test("a frame encoded plain and sealed gets its flag and a valid header: the older path still works", () => {
      const sealer = new FrameSealer(keys.dialerToAcceptor, 3);
      const bytes = joinParts(sealer.seal(encodeMessage(write())));
      expect(payloadCrcField(bytes)).not.toBe(0);
      expect(new FrameOpener(keys.dialerToAcceptor).open(frameOf(bytes))).toBe("ok");
    });
  });

  test("a frame spliced from another session, or sent back the other way, fails", () => {
    const otherKeys = sessionKeys(secret, transcriptHash(dialerPayload, encoder.encode("another session"), 2));
    const [spliced] = sealedStream(new FrameSealer(otherKeys.dialerToAcceptor), 1);
    expect(new FrameOpener(keys.dialerToAcceptor).open(frameOf(spliced!))).toBe("bad");
    const [reflected] = sealedStream(new FrameSealer(keys.dialerToAcceptor), 1);
    expect(new FrameOpener(keys.acceptorToDialer).open(frameOf(reflected!))).toBe("bad");
  });

  test("an untagged frame on a tagged session, and a tagged one on an untagged session, fail", () => {
    expect(new FrameOpener(keys.dialerToAcceptor).open(frameOf(joinParts(message(1))))).toBe("missing");
    const [tagged] = sealedStream(new FrameSealer(keys.dialerToAcceptor), 1);
    expect(new FrameOpener(undefined).open(frameOf(tagged!))).toBe("unexpected");
    expect(new FrameOpener(undefined).open(frameOf(joinParts(new FrameSealer(undefined).seal(message(1)))))).toBe("ok");
  });

  test("the tag is AES-256-GCM over header and payload with the sequence as nonce, as WebCrypto computes it", async () => {
    const parts = message(7);
    const sealed = new FrameSealer(keys.dialerToAcceptor);
    sealed.seal(message(6));
    const frame = frameOf(joinParts(sealed.seal(parts))); // frame number 1 in this direction
    const key = await crypto.subtle.importKey("raw", keys.dialerToAcceptor.slice(), "AES-GCM", false, ["encrypt"]);
    const nonce = new Uint8Array(12);
    nonce[0] = 1;
    const webCrypto = new Uint8Array(await crypto.subtle.encrypt({ name: "AES-GCM", iv: nonce, additionalData: joinParts([frame.header, joinPayload(frame.payload)]) as Uint8Array<ArrayBuffer>, tagLength: 128 }, key, new Uint8Array(0)));
    expect(frame.tag).toEqual(webCrypto);
    expect(frameTag(keys.dialerToAcceptor, 1, [frame.header, joinPayload(frame.payload)])).toEqual(webCrypto);
  });

  test("the nonce carries the whole sequence number, little endian, beyond 32 bits", async () => {
    const frame = frameOf(joinParts(new FrameSealer(undefined).seal(message(3))));
    const key = await crypto.subtle.importKey("raw", keys.dialerToAcceptor.slice(), "AES-GCM", false, ["encrypt"]);
    for (const sequence of [0x1_0000_0000 + 0x0102_0304, 2 ** 53 - 1]) {
      const nonce = new Uint8Array(12);
      new DataView(nonce.buffer).setBigUint64(0, BigInt(sequence), true);
      const webCrypto = new Uint8Array(await crypto.subtle.encrypt({ name: "AES-GCM", iv: nonce, additionalData: joinParts([frame.header, joinPayload(frame.payload)]) as Uint8Array<ArrayBuffer>, tagLength: 128 }, key, new Uint8Array(0)));
      expect(new Uint8Array(frameTag(keys.dialerToAcceptor, sequence, [frame.header, joinPayload(frame.payload)]))).toEqual(webCrypto);
    }
  });
});
}

frameTagProperties("node:crypto", resetFrameTagger);
frameTagProperties("libcrypto", () => {
  const native = loadNativeGmac();
  if ("unavailable" in native) throw new Error(native.unavailable);
  expect(installFrameTagger(native.tagger, `libcrypto (${native.library})`)).toBeUndefined();
});

describe("installing a frame tagger", () => {
  afterAll(resetFrameTagger);
  const reference: FrameTaggerFactory = (key) => ({ tag: (sequence, parts) => frameTag(key, sequence, parts) });

  test("one that differs from the reference anywhere is refused, and the reference keeps tagging", () => {
    const lowBitsOnly: FrameTaggerFactory = (key) => ({ tag: (sequence, parts) => frameTag(key, sequence >>> 0, parts) });
    const firstPartOnly: FrameTaggerFactory = (key) => ({ tag: (sequence, parts) => frameTag(key, sequence, parts.slice(0, 1)) });
    const throws: FrameTaggerFactory = () => {
      throw new Error("no context");
    };
    expect(installFrameTagger(lowBitsOnly, "low")).toContain("sequence 4294967296 differs");
    expect(installFrameTagger(firstPartOnly, "first")).toContain("differs");
    expect(installFrameTagger(throws, "throws")).toBe("throws: failed: no context");
    expect(frameTaggerImplementation()).toBe("node:crypto");
    expect(installFrameTagger(reference, "copy")).toBeUndefined();
    expect(frameTaggerImplementation()).toBe("copy");
  });

  test("a library that is not there answers why, and nothing is installed", () => {
    resetFrameTagger();
    const missing = loadNativeGmac(["libcrypto-that-is-not-here.so.9"]);
    expect("unavailable" in missing && missing.unavailable).toContain("libcrypto-that-is-not-here.so.9");
    expect(frameTaggerImplementation()).toBe("node:crypto");
  });

  test("frames of every size up to 1 MiB tag alike under both (libcrypto below the crossover, node:crypto above)", () => {
    const native = loadNativeGmac();
    if ("unavailable" in native) throw new Error(native.unavailable);
    const key = new Uint8Array(32).fill(5);
    const tagger = native.tagger(key);
    const data = new Uint8Array(1 << 20).map((_, index) => (index * 13) & 0xff);
    const header = data.subarray(0, 32);
    for (const size of [0, 1, 4096, frameTagNativeBytesMax - 32, frameTagNativeBytesMax - 31, 64 * 1024, (1 << 20) - 32]) {
      const parts = [header, data.subarray(32, 32 + size)];
      expect({ size, tag: [...tagger.tag(size, parts)] }).toEqual({ size, tag: [...frameTag(key, size, parts)] });
    }
  });

  test("a frame sealed by one implementation opens under the other, both ways", () => {
    const native = loadNativeGmac();
    if ("unavailable" in native) throw new Error(native.unavailable);
    const key = new Uint8Array(32).fill(9);
    const data = new Uint8Array(8192).map((_, index) => index & 0xff);
    const frames = (sealer: FrameSealer) => [1, 2, 3].map((requestId) => joinParts(sealer.seal(encodeMessage({ type: MessageType.Write, volumeId: 1, requestId, offset: 0, fua: false, data: data.subarray(requestId, requestId + 4096) }, sealer.mode))));
    const open = (opener: FrameOpener, stream: Uint8Array[]) =>
      stream.map((bytes) => {
        const result = decodeFrame(bytes, 0, 1 << 20);
        if (result === NEED_MORE) throw new Error("incomplete frame");
        return opener.open(result.frame);
      });
    resetFrameTagger();
    const byReference = frames(new FrameSealer(key));
    const referenceOpener = new FrameOpener(key);
    expect(installFrameTagger(native.tagger, "libcrypto")).toBeUndefined();
    expect(open(new FrameOpener(key), byReference)).toEqual(["ok", "ok", "ok"]);
    expect(open(referenceOpener, frames(new FrameSealer(key)))).toEqual(["ok", "ok", "ok"]);
  });
});
