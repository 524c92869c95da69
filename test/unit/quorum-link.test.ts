// The quorum cores' message on the replication link: MessageType.Quorum carries the 48-byte message
// of src/quorum/message.ts as its one field (round trip through wire.ts, every split point of the
// stream, an empty or oversized payload refused as malformed), and QuorumWriteAuthority ignores
// (and counts) a payload that is not a quorum message instead of failing.
import { describe, expect, test } from "bun:test";
import { initialDecided } from "../../src/quorum/format.ts";
import { decodeQuorumMessage, encodeQuorumMessage, type QuorumMessage } from "../../src/quorum/message.ts";
import { DecodeError, decodeFrame, decodeMessage, encodeMessage, Framer, joinParts, MessageType, NEED_MORE, quorumPayloadBytesMax } from "../../src/replica/wire.ts";
import { QuorumWriteAuthority } from "../../src/node/replica/quorum-authority.ts";
import { defaultQuorumTiming } from "../../src/quorum/config.ts";

const message: QuorumMessage = { from: 1, sequence: 7, echo: 6, fencedEpoch: 3n, decided: { version: 4n, value: { epoch: 4n, mode: initialDecided.value.mode, owner: 0, holders: [0, 1], forced: false } }, synced: true, primaryCount: 2 };
const limit = 1 << 20;

describe("MessageType.Quorum on the link", () => {
  test("round trip: the quorum message comes out as it went in, at every split point", () => {
    const bytes = joinParts(encodeMessage({ type: MessageType.Quorum, volumeId: 0, requestId: 0, payload: encodeQuorumMessage(message) }));
    const decoded = decodeFrame(bytes, 0, limit);
    if (decoded === NEED_MORE) throw new Error("a whole frame needs no more");
    const out = decodeMessage(decoded.frame);
    expect(out.type).toBe(MessageType.Quorum);
    expect(decodeQuorumMessage((out as { payload: Uint8Array }).payload)).toEqual(message);
    for (let split = 1; split < bytes.length; split++) {
      const framer = new Framer(limit);
      framer.push(bytes.slice(0, split));
      expect(framer.next()).toBeUndefined();
      framer.push(bytes.slice(split));
      expect(decodeQuorumMessage((decodeMessage(framer.next()!) as { payload: Uint8Array }).payload)).toEqual(message);
    }
  });

  test("an empty or oversized quorum payload is malformed", () => {
    for (const payload of [new Uint8Array(0), new Uint8Array(quorumPayloadBytesMax + 1)]) {
      let bytes: Uint8Array;
      try {
        bytes = joinParts(encodeMessage({ type: MessageType.Quorum, volumeId: 0, requestId: 0, payload }));
      } catch (error) {
        expect(error).toBeInstanceOf(DecodeError); // the encoder refuses to send an oversized one
        continue;
      }
      const decoded = decodeFrame(bytes, 0, limit);
      if (decoded === NEED_MORE) throw new Error("a whole frame needs no more");
      expect(() => decodeMessage(decoded.frame)).toThrow(DecodeError);
    }
  });

  test("QuorumWriteAuthority ignores a payload that is not a quorum message", () => {
    const authority = new QuorumWriteAuthority({
      me: 0,
      names: ["a", "b"],
      clusterId: new Uint8Array(16).fill(7),
      timing: defaultQuorumTiming,
      disk: { read: (_sector, _count, done) => done("EIO"), write: (_sector, _bytes, done) => done("EIO") },
      clock: { now: () => 0, after: () => ({ cancel() {} }) },
      random: { fill: (bytes) => bytes.fill(1) },
      host: { sendPeer() {}, dropLink() {}, roleChanged() {}, persist() {} },
    });
    authority.setVolume(1, true);
    expect(() => authority.peerMessage(new Uint8Array([1, 2, 3]))).not.toThrow();
    expect(authority.grant(1).kind).toBe("frozen");
    expect(authority.grant(2)).toEqual({ kind: "frozen", reason: "the volume is not known to the quorum yet" });
  });
});
