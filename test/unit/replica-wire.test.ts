// Proves the replication link's byte format: golden bytes for a frame, a round trip of every
// message type, the framer fed every split point of a multi-frame stream (really delivering both
// halves, tagged frames among them), the frame size limit (tag included), malformed headers and
// bodies rejected as DecodeError (never as NEED_MORE), a version-1 Hello refused in so many words,
// and a damaged payload reported as such with its header intact.
import { describe, expect, test } from "bun:test";
import { crc32c } from "../../src/common/crc32c.ts";
import { joinPayload, Pieces } from "../../src/common/bytes.ts";
import {
  DecodeError,
  decodeFrame,
  decodeMessage,
  encodeMessage,
  type Frame,
  Framer,
  frameHeaderBytes,
  frameTagBytes,
  joinParts,
  LinkRole,
  markFrameTagged,
  type Message,
  MessageType,
  NEED_MORE,
  negotiateVersion,
  WireStatus,
} from "../../src/replica/wire.ts";
import { DataState, DecisionKind } from "../../src/replica/model.ts";

const limit = 1 << 20;
const bytes = (length: number, seed = 1) => Uint8Array.from({ length }, (_, index) => (index * 31 + seed) & 0xff);

const samples: Message[] = [
  { type: MessageType.Hello, volumeId: 0, requestId: 0, versionMin: 2, versionMax: 3, clusterId: bytes(16), nodeId: "node-α", nonce: bytes(32, 7), role: LinkRole.Dialer, flags: 0, admission: bytes(32, 5) },
  { type: MessageType.Auth, volumeId: 0, requestId: 0, mac: bytes(32, 9) },
  { type: MessageType.Ping, volumeId: 0, requestId: 0 },
  { type: MessageType.Pong, volumeId: 0, requestId: 0 },
  { type: MessageType.Goodbye, volumeId: 0, requestId: 0, reason: "shutting down" },
  {
    type: MessageType.VolumeHello,
    volumeId: 7,
    requestId: 0,
    seq: 3,
    sizeBytes: 2 ** 40,
    granuleBytes: 4096,
    generations: { current: 0xfedcba9876543210n, bitmapBase: 5n, history: [1n, 2n, 0xffffffffffffffffn] },
    dataState: DataState.Inconsistent,
    mayWrite: true,
    bitsSet: 123456789,
    redecide: true,
  },
  { type: MessageType.VolumeDecision, volumeId: 7, requestId: 0, followerHelloSeq: 9, round: 4, kind: DecisionKind.Resync, deciderIsSource: true, deciderLeads: false, full: true, byOperator: false, reason: "new disk" },
  { type: MessageType.VolumeUnknown, volumeId: 7, requestId: 0 },
  { type: MessageType.VolumeClosed, volumeId: 7, requestId: 0 },
  { type: MessageType.BitmapRuns, volumeId: 7, requestId: 0, round: 4, runs: [{ start: 0, length: 3 }, { start: 2 ** 32 - 1, length: 1 }] },
  { type: MessageType.ResyncProgress, volumeId: 7, requestId: 0, round: 4, runs: [] },
  { type: MessageType.BitmapDone, volumeId: 7, requestId: 0, round: 4 },
  { type: MessageType.ResyncReady, volumeId: 7, requestId: 0, round: 4 },
  { type: MessageType.ResyncFlush, volumeId: 7, requestId: 77, round: 4 },
  { type: MessageType.ResyncComplete, volumeId: 7, requestId: 0, round: 4, sourceCurrent: 42n },
  { type: MessageType.ResyncCompleteAck, volumeId: 7, requestId: 0, round: 4, sourceCurrent: 42n },
  { type: MessageType.SplitBrainResolve, volumeId: 7, requestId: 0, senderKeeps: true },
  { type: MessageType.Write, volumeId: 7, requestId: 2 ** 40 + 5, offset: 2 ** 45, fua: true, data: bytes(4096) },
  { type: MessageType.Trim, volumeId: 7, requestId: 6, offset: 8192, length: 1 << 30, fua: false, noHole: false },
  { type: MessageType.Zero, volumeId: 7, requestId: 6, offset: 8192, length: 512, fua: true, noHole: true },
  { type: MessageType.WriteAck, volumeId: 7, requestId: 6, status: WireStatus.IoError },
  { type: MessageType.FlushAck, volumeId: 7, requestId: 6, status: WireStatus.Ok },
  { type: MessageType.RepairAck, volumeId: 7, requestId: 6, status: WireStatus.Refused },
  { type: MessageType.Flush, volumeId: 7, requestId: 6 },
  { type: MessageType.Nack, volumeId: 7, requestId: 6, corruptType: MessageType.Write },
  { type: MessageType.ReadRequest, volumeId: 7, requestId: 6, offset: 4096, length: 8192 },
  { type: MessageType.ReadReply, volumeId: 7, requestId: 6, status: WireStatus.Ok, data: bytes(8192, 3) },
  { type: MessageType.ResyncRequest, volumeId: 7, requestId: 6, round: 2, offset: 0, length: 65536 },
  { type: MessageType.VerifyRequest, volumeId: 7, requestId: 6, round: 2, offset: 0, length: 65536 },
  { type: MessageType.ResyncData, volumeId: 7, requestId: 6, round: 2, offset: 4096, length: 100, zero: false, status: WireStatus.Ok, data: bytes(100) },
  { type: MessageType.ResyncData, volumeId: 7, requestId: 6, round: 2, offset: 4096, length: 65536, zero: true, status: WireStatus.Ok, data: new Uint8Array(0) },
  { type: MessageType.RepairData, volumeId: 7, requestId: 6, round: 2, offset: 4096, length: 16, zero: false, status: WireStatus.Ok, data: bytes(16) },
  { type: MessageType.ResyncAck, volumeId: 7, requestId: 6, round: 2, offset: 4096, status: WireStatus.Ok },
  { type: MessageType.ResyncFlushAck, volumeId: 7, requestId: 6, round: 2, offset: 0, status: WireStatus.NoSpace },
  { type: MessageType.VerifyReply, volumeId: 7, requestId: 6, round: 2, offset: 4096, status: WireStatus.Ok, crc: 0xdeadbeef },
];

function roundTrip(message: Message): Message {
  const encoded = joinParts(encodeMessage(message));
  const result = decodeFrame(encoded, 0, limit);
  if (result === NEED_MORE) throw new Error("whole frame reported as incomplete");
  expect(result.size).toBe(encoded.length);
  expect(result.frame.payloadIntact).toBe(true);
  return decodeMessage(result.frame);
}

describe("frames", () => {
  test("golden bytes of a Ping frame", () => {
    const encoded = joinParts(encodeMessage({ type: MessageType.Ping, volumeId: 0x01020304, requestId: 2 ** 32 + 7 }));
    const header = Buffer.from(encoded.subarray(0, 28)).toString("hex");
    expect(header).toBe(
      "54444d31" + // magic "TDM1"
        "03" + // type Ping
        "00" + "0000" + // flags, reserved
        "04030201" + // volume id
        "00000000" + // payload length
        "07000000" + "01000000" + // request id 2^32 + 7
        "00000000", // CRC32C of an empty payload
    );
    expect(encoded.length).toBe(frameHeaderBytes);
    expect(new DataView(encoded.buffer).getUint32(28, true)).toBe(crc32c(encoded.subarray(0, 28)));
  });

  test("a Write's data is passed through without a copy and covered by the payload CRC", () => {
    const data = bytes(4096);
    const parts = encodeMessage({ type: MessageType.Write, volumeId: 1, requestId: 1, offset: 0, fua: false, data });
    expect(parts.length).toBe(2);
    expect(parts[1]).toBe(data);
    const head = new DataView(parts[0]!.buffer, parts[0]!.byteOffset);
    const fields = parts[0]!.subarray(frameHeaderBytes);
    expect(head.getUint32(24, true)).toBe(crc32c(data, crc32c(fields)));
  });

  test("every message type survives a round trip", () => {
    for (const message of samples) expect(roundTrip(message)).toEqual(message);
  });

  test("NEED_MORE for every prefix of a frame, never a result or an error", () => {
    const encoded = joinParts(encodeMessage(samples[5]!));
    for (let length = 0; length < encoded.length; length++) expect(decodeFrame(encoded.subarray(0, length), 0, limit)).toBe(NEED_MORE);
  });

  test("the framer reassembles a stream split at every point, both halves delivered", () => {
    const stream = joinParts(samples.flatMap((message) => encodeMessage(message)));
    for (let split = 0; split <= stream.length; split += split < 200 ? 1 : 97) {
      const framer = new Framer(limit);
      const decoded: Message[] = [];
      const drain = () => {
        for (let frame = framer.next(); frame; frame = framer.next()) decoded.push(decodeMessage(frame));
      };
      framer.push(stream.slice(0, split));
      drain();
      framer.push(stream.slice(split));
      drain();
      expect(decoded.length).toBe(samples.length);
      expect(decoded).toEqual(samples);
      expect(framer.bufferedBytes).toBe(0);
    }
  });

  // Data in pieces reads back as the bytes sent; decoded messages compare with their data joined.
  const joinedData = (message: Message): Message => ("data" in message && message.data instanceof Pieces ? { ...message, data: joinPayload(message.data) } : message) as Message;

  for (const piecesBytesMin of [Infinity, 1, 65_536]) {
    test(`the framer reassembles large frames, whatever the chunking, and the frames around them (pieces from ${piecesBytesMin} bytes)`, () => {
      const large = (requestId: number, size: number): Message => ({ type: MessageType.Write, volumeId: 3, requestId, offset: requestId * 1048576, fua: false, data: bytes(size, requestId) });
      const ping: Message = { type: MessageType.Ping, volumeId: 0, requestId: 5 };
      const messages = [samples[0]!, large(1, 70_000), samples[1]!, large(2, 300_000), large(3, 65_536), samples[2]!, large(4, 200), ping, ping];
      const tagged = new Set([3, 7, 8]); // the pings: an empty payload, a tag the chunks may split
      const frames = messages.map((message, index) => {
        const parts = encodeMessage(message);
        if (tagged.has(index)) {
          markFrameTagged(parts[0]!);
          parts.push(bytes(frameTagBytes, index));
        }
        return joinParts(parts);
      });
      const stream = joinParts(frames);
      for (const chunkBytes of [7, 40, 1000, 4096, 65_536, 65_537, 131_072, 250_000, stream.length]) {
        const framer = new Framer(limit, piecesBytesMin);
        const decoded: Message[] = [];
        const tags: (Uint8Array | undefined)[] = [];
        let inPieces = 0;
        for (let at = 0; at < stream.length; at += chunkBytes) {
          framer.push(stream.slice(at, at + chunkBytes));
          for (let frame = framer.next(); frame; frame = framer.next()) {
            expect(frame.payloadIntact).toBe(true);
            tags.push(frame.tag?.slice());
            const message = decodeMessage(frame);
            if ("data" in message && message.data instanceof Pieces) {
              inPieces++;
              // Only a frame of at least piecesBytesMin that arrived across chunks, and never an empty piece.
              expect(frame.header.length + message.data.length).toBeGreaterThanOrEqual(Math.min(piecesBytesMin, 65_536));
              expect(message.data.parts.every((part) => part.length > 0)).toBe(true);
            }
            decoded.push(joinedData(message));
          }
          // What is buffered is what was pushed and not yet returned as frames.
          const returned = frames.slice(0, decoded.length).reduce((sum, frame) => sum + frame.length, 0);
          expect(framer.bufferedBytes).toBe(Math.min(at + chunkBytes, stream.length) - returned);
        }
        expect(decoded).toEqual(messages);
        expect(tags).toEqual(frames.map((_, index) => (tagged.has(index) ? bytes(frameTagBytes, index) : undefined)));
        expect(framer.bufferedBytes).toBe(0);
        if (piecesBytesMin === Infinity || chunkBytes === stream.length) expect(inPieces).toBe(0);
        else if (chunkBytes <= 65_537) expect(inPieces).toBeGreaterThanOrEqual(3);
      }
    });
  }

  test("data in pieces: a damaged piece fails the payload CRC; re-encoded, the pieces are sent as they are", () => {
    const message: Message = { type: MessageType.Write, volumeId: 3, requestId: 9, offset: 4096, fua: true, data: bytes(100_000, 5) };
    const stream = joinParts(encodeMessage(message));
    const deliver = (damageAt?: number) => {
      const framer = new Framer(limit, 1);
      for (let at = 0; at < stream.length; at += 30_000) {
        const chunk = stream.slice(at, at + 30_000);
        if (damageAt !== undefined && damageAt >= at && damageAt < at + chunk.length) chunk[damageAt - at] = chunk[damageAt - at]! ^ 0x10;
        framer.push(chunk);
      }
      const frame = framer.next()!;
      expect(frame.payload).toBeInstanceOf(Pieces);
      return frame;
    };
    const frame = deliver();
    expect(frame.payloadIntact).toBe(true);
    const decoded = decodeMessage(frame) as Extract<Message, { type: MessageType.Write }>;
    expect((decoded.data as Pieces).parts.length).toBe(4);
    expect(joinParts(encodeMessage(decoded))).toEqual(stream);
    for (const damageAt of [frameHeaderBytes + 3, 30_000 + 17, stream.length - 1]) expect(deliver(damageAt).payloadIntact).toBe(false);
  });

  test("a message whose layout has no trailing data is joined when its large frame arrives in pieces", () => {
    const runs = Array.from({ length: 5000 }, (_, index) => ({ start: index * 4, length: 2 }));
    const message: Message = { type: MessageType.BitmapRuns, volumeId: 2, requestId: 4, round: 1, runs };
    const encoded = joinParts(encodeMessage(message));
    const framer = new Framer(limit, 1);
    for (let at = 0; at < encoded.length; at += 7000) framer.push(encoded.slice(at, at + 7000));
    const frame = framer.next()!;
    expect(frame.payload).toBeInstanceOf(Pieces);
    expect(decodeMessage(frame)).toEqual(message);
  });

  test("the framer handles one-byte chunks", () => {
    const stream = joinParts(samples.slice(0, 8).flatMap((message) => encodeMessage(message)));
    const framer = new Framer(limit);
    let count = 0;
    for (const byte of stream) {
      framer.push(Uint8Array.of(byte));
      for (let frame = framer.next(); frame; frame = framer.next()) {
        expect(decodeMessage(frame)).toEqual(samples[count]!);
        count++;
      }
    }
    expect(count).toBe(8);
  });

  test("a frame above the size limit is malformed as soon as its header arrives", () => {
    const encoded = joinParts(encodeMessage({ type: MessageType.Write, volumeId: 1, requestId: 1, offset: 0, fua: false, data: bytes(5000) }));
    expect(() => decodeFrame(encoded.subarray(0, frameHeaderBytes), 0, 4096)).toThrow(DecodeError);
    const framer = new Framer(4096);
    framer.push(encoded.subarray(0, 40));
    expect(() => framer.next()).toThrow(DecodeError);
  });

  test("bad magic, a damaged header and reserved bits are DecodeErrors", () => {
    const good = joinParts(encodeMessage(samples[2]!));
    const badMagic = good.slice();
    badMagic[0] = badMagic[0]! ^ 1;
    expect(() => decodeFrame(badMagic, 0, limit)).toThrow(/magic/);
    const badLength = good.slice();
    badLength[12] = 9;
    expect(() => decodeFrame(badLength, 0, limit)).toThrow(/header checksum/);
  });

  test("a tagged frame: flag set, header CRC still valid, the tag delimited after the payload", () => {
    const parts = encodeMessage(samples[17]!);
    markFrameTagged(parts[0]!);
    const tag = bytes(frameTagBytes, 77);
    const encoded = joinParts([...parts, tag]);
    expect(encoded[5]).toBe(1); // flags: Tagged
    for (let length = 0; length < encoded.length; length++) expect(decodeFrame(encoded.subarray(0, length), 0, limit)).toBe(NEED_MORE);
    const result = decodeFrame(encoded, 0, limit);
    if (result === NEED_MORE) throw new Error("incomplete");
    expect(result.size).toBe(encoded.length);
    expect(result.frame.tag).toEqual(tag);
    expect(result.frame.header).toEqual(encoded.subarray(0, frameHeaderBytes));
    expect(decodeMessage(result.frame)).toEqual(samples[17]!);
    // The limit counts the tag: a frame that fits only without it is refused.
    expect(() => decodeFrame(encoded, 0, encoded.length - 1)).toThrow(/exceeds/);
    expect(decodeFrame(encoded, 0, encoded.length)).not.toBe(NEED_MORE);
  });

  test("the framer splits a stream of tagged and untagged frames at every point", () => {
    const frames = samples.slice(0, 6).map((message, index) => {
      const parts = encodeMessage(message);
      if (index % 2 === 1) {
        markFrameTagged(parts[0]!);
        parts.push(bytes(frameTagBytes, index));
      }
      return joinParts(parts);
    });
    const stream = joinParts(frames);
    for (let split = 0; split <= stream.length; split++) {
      const framer = new Framer(limit);
      const tags: (Uint8Array | undefined)[] = [];
      const drain = () => {
        for (let frame = framer.next(); frame; frame = framer.next()) tags.push(frame.tag?.slice());
      };
      framer.push(stream.slice(0, split));
      drain();
      framer.push(stream.slice(split));
      drain();
      expect(tags).toEqual(frames.map((_, index) => (index % 2 === 1 ? bytes(frameTagBytes, index) : undefined)));
    }
  });

  test("flag bits other than Tagged are DecodeErrors", () => {
    const encoded = joinParts(encodeMessage(samples[2]!));
    encoded[5] = 2;
    new DataView(encoded.buffer).setUint32(28, crc32c(encoded.subarray(0, 28)), true);
    expect(() => decodeFrame(encoded, 0, limit)).toThrow(/reserved/);
  });

  test("a damaged payload keeps its header: reported as not intact, so the sender can resend", () => {
    const encoded = joinParts(encodeMessage(samples[17]!));
    encoded[frameHeaderBytes + 100] = encoded[frameHeaderBytes + 100]! ^ 0x40;
    const result = decodeFrame(encoded, 0, limit);
    if (result === NEED_MORE) throw new Error("incomplete");
    expect(result.frame.payloadIntact).toBe(false);
    expect(result.frame.type).toBe(MessageType.Write);
    expect(result.frame.requestId).toBe(samples[17]!.requestId);
  });
});

describe("message bodies", () => {
  function frameOf(type: number, payload: Uint8Array): Frame {
    return { type, volumeId: 1, requestId: 1, payload, payloadIntact: true, header: new Uint8Array(frameHeaderBytes), tag: undefined };
  }

  test("truncated bodies of every fixed-size message are DecodeErrors", () => {
    for (const message of samples) {
      const encoded = joinParts(encodeMessage(message));
      const payload = encoded.subarray(frameHeaderBytes);
      if (payload.length === 0) continue;
      const cut = message.type === MessageType.Write ? 3 : message.type === MessageType.ReadReply ? 0 : payload.length - 1;
      expect(() => decodeMessage(frameOf(message.type, payload.subarray(0, cut)))).toThrow(DecodeError);
    }
  });

  test("a version-1 Hello (no role, no admission tag) is refused with the versions named", () => {
    const hello = samples[0] as Extract<Message, { type: MessageType.Hello }>;
    const full = joinParts(encodeMessage({ ...hello, versionMin: 1, versionMax: 1 })).subarray(frameHeaderBytes);
    const versionOne = full.subarray(0, full.length - 3 - hello.admission.length);
    expect(() => decodeMessage(frameOf(MessageType.Hello, versionOne))).toThrow(/protocol 1\.\.1 Hello; this node speaks 2\.\.3/);
    const badRole = full.slice();
    badRole[full.length - 3 - hello.admission.length] = 9;
    expect(() => decodeMessage(frameOf(MessageType.Hello, badRole))).toThrow(/link role 9/);
  });

  test("trailing bytes after a fixed body are DecodeErrors (except in Hello, which may grow)", () => {
    const auth = joinParts(encodeMessage(samples[1]!)).subarray(frameHeaderBytes);
    expect(() => decodeMessage(frameOf(MessageType.Auth, Uint8Array.of(...auth, 0)))).toThrow(/trailing/);
    const hello = joinParts(encodeMessage(samples[0]!)).subarray(frameHeaderBytes);
    expect(decodeMessage(frameOf(MessageType.Hello, Uint8Array.of(...hello, 1, 2, 3)))).toEqual({ ...samples[0]!, volumeId: 1, requestId: 1 } as Message);
  });

  test("unknown types, bad booleans, bad statuses and impossible values are DecodeErrors", () => {
    expect(() => decodeMessage(frameOf(200, new Uint8Array(0)))).toThrow(/unknown message type/);
    const write = joinParts(encodeMessage(samples[17]!)).subarray(frameHeaderBytes).slice();
    write[8] = 2; // fua
    expect(() => decodeMessage(frameOf(MessageType.Write, write))).toThrow(/fua/);
    expect(() => decodeMessage(frameOf(MessageType.WriteAck, Uint8Array.of(9)))).toThrow(/status/);
    const runs = joinParts(encodeMessage({ type: MessageType.BitmapRuns, volumeId: 1, requestId: 0, round: 1, runs: [{ start: 1, length: 1 }] })).subarray(frameHeaderBytes).slice();
    runs[4] = 5; // count no longer matches
    expect(() => decodeMessage(frameOf(MessageType.BitmapRuns, runs))).toThrow(/run count/);
    const resync = joinParts(encodeMessage(samples[29]!)).subarray(frameHeaderBytes);
    expect(() => decodeMessage(frameOf(MessageType.ResyncData, resync.subarray(0, resync.length - 1)))).toThrow(/carries/);
    const badUtf8 = Uint8Array.of(2, 0, 0xff, 0xfe);
    expect(() => decodeMessage(frameOf(MessageType.Goodbye, badUtf8))).toThrow(/UTF-8/);
  });

  test("version negotiation picks the highest common version or none", () => {
    expect(negotiateVersion(1, 1, 1, 3)).toBe(1);
    expect(negotiateVersion(1, 4, 2, 3)).toBe(3);
    expect(negotiateVersion(2, 4, 1, 1)).toBeUndefined();
  });
});
