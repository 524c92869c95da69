// Proves the replication link's byte format: golden bytes for a frame, a round trip of every
// message type, the framer fed every split point of a multi-frame stream (really delivering both
// halves, tagged frames among them), the frame size limit (tag included), malformed headers and
// bodies rejected as DecodeError (never as NEED_MORE), a version-1 Hello refused in so many words,
// and a damaged payload reported as such with its header intact.
import { describe, expect, test } from "bun:test";
import { crc32c } from "../../src/common/crc32c.ts";
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
