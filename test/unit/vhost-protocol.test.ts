// Proves the vhost-user message codec and framer (src/node/export/vhost/protocol.ts) against the
// wire format of QEMU's docs/interop/vhost-user.rst: golden bytes for real messages, a round trip
// for every payload kind, every split point of a message stream fed in two real pushes, the rule
// that assigns passed descriptors to messages the way a unix socket delivers them, and that
// malformed input (bad version, sizes that do not fit the request, absurd counts, unrepresentable
// addresses) throws DecodeError while incomplete input is NEED_MORE.
import { describe, expect, test } from "bun:test";
import {
  DecodeError,
  HeaderFlag,
  MessageFramer,
  NEED_MORE,
  Request,
  decodeMessage,
  encodeMessage,
  encodeReply,
  type Message,
} from "../../src/node/export/vhost/protocol.ts";

const V = HeaderFlag.Version;

function hex(bytes: Uint8Array): string {
  return Buffer.from(bytes).toString("hex");
}

describe("golden bytes", () => {
  test("GET_FEATURES request is a bare 12-byte header", () => {
    expect(hex(encodeMessage({ request: Request.GetFeatures, flags: V, body: { kind: "none" } }))).toBe("01000000" + "01000000" + "00000000");
  });

  test("GET_FEATURES reply carries a u64 and the reply flag", () => {
    const bytes = encodeReply(Request.GetFeatures, { kind: "u64", value: 0x1_7000_6456n });
    expect(hex(bytes)).toBe("01000000" + "05000000" + "08000000" + "5664007001000000");
  });

  test("SET_VRING_ADDR layout: index, flags, descriptor, used, available, log", () => {
    const bytes = encodeMessage({
      request: Request.SetVringAddr,
      flags: V,
      body: { kind: "address", address: { index: 1, flags: 0, descriptor: 0x1000, used: 0x3000, available: 0x2000, log: 0 } },
    });
    expect(hex(bytes)).toBe(
      "09000000" + "01000000" + "28000000" + "01000000" + "00000000" + "0010000000000000" + "0030000000000000" + "0020000000000000" + "0000000000000000",
    );
  });

  test("SET_VRING_KICK keeps the queue index in bits 0-7 and 'no fd' in bit 8", () => {
    const bytes = encodeMessage({ request: Request.SetVringKick, flags: V, body: { kind: "vringFile", index: 3, noFd: true } });
    expect(hex(bytes.subarray(12))).toBe("0301000000000000");
    const decoded = decodeMessage(bytes, 0);
    if (decoded === NEED_MORE) throw new Error("need more");
    expect(decoded.message.body).toEqual({ kind: "vringFile", index: 3, noFd: true });
  });

  test("inflight description is 24 bytes, as QEMU's padded struct", () => {
    const bytes = encodeMessage({ request: Request.GetInflightFd, flags: V, body: { kind: "inflight", inflight: { mmapSizeBytes: 0, mmapOffset: 0, queues: 2, queueSize: 128 } } });
    expect(bytes.length).toBe(12 + 24);
    expect(hex(bytes.subarray(12 + 16, 12 + 20))).toBe("02008000");
  });
});

const samples: Message[] = [
  { request: Request.GetFeatures, flags: V, body: { kind: "none" } },
  { request: Request.SetFeatures, flags: V | HeaderFlag.NeedReply, body: { kind: "u64", value: 0xffff_ffff_ffff_ffffn } },
  { request: Request.SetVringNum, flags: V, body: { kind: "state", index: 0, num: 256 } },
  { request: Request.GetVringBase, flags: V, body: { kind: "state", index: 1, num: 0 } },
  { request: Request.SetVringCall, flags: V, body: { kind: "vringFile", index: 15, noFd: false } },
  { request: Request.SetVringAddr, flags: V, body: { kind: "address", address: { index: 2, flags: 1, descriptor: 2 ** 40, used: 2 ** 47 - 4, available: 6, log: 0 } } },
  {
    request: Request.SetMemTable,
    flags: V,
    body: {
      kind: "memory",
      regions: [
        { guestAddress: 0, sizeBytes: 0xa0000, userAddress: 0x7f00_0000_0000, mmapOffset: 0 },
        { guestAddress: 0x100000, sizeBytes: 0x3ff00000, userAddress: 0x7f00_0010_0000, mmapOffset: 0x100000 },
      ],
    },
  },
  { request: Request.GetConfig, flags: V, body: { kind: "config", config: { offset: 0, sizeBytes: 4, flags: 0, payload: new Uint8Array([1, 2, 3, 4]) } } },
  { request: Request.SetInflightFd, flags: V, body: { kind: "inflight", inflight: { mmapSizeBytes: 4096, mmapOffset: 0, queues: 1, queueSize: 128 } } },
  { request: 77, flags: V, body: { kind: "opaque", bytes: new Uint8Array([9, 8, 7]) } },
];

describe("round trips", () => {
  for (const message of samples) {
    test(`${message.request} / ${message.body.kind}`, () => {
      const bytes = encodeMessage(message);
      const decoded = decodeMessage(bytes, 0);
      if (decoded === NEED_MORE) throw new Error("need more");
      expect(decoded.size).toBe(bytes.length);
      expect(decoded.message).toEqual(message);
    });
  }

  test("replies decode with their reply-specific payloads", () => {
    const state = decodeMessage(encodeReply(Request.GetVringBase, { kind: "state", index: 0, num: 42 }), 0);
    if (state === NEED_MORE) throw new Error("need more");
    expect(state.message.body).toEqual({ kind: "state", index: 0, num: 42 });
    const ack = decodeMessage(encodeReply(Request.SetMemTable, { kind: "u64", value: 0n }), 0);
    if (ack === NEED_MORE) throw new Error("need more");
    expect(ack.message.body).toEqual({ kind: "u64", value: 0n });
  });
});

describe("NEED_MORE versus malformed", () => {
  const bytes = encodeMessage(samples[6]!);

  test("every proper prefix is NEED_MORE, never an error", () => {
    for (let length = 0; length < bytes.length; length++) expect(decodeMessage(bytes.subarray(0, length), 0)).toBe(NEED_MORE);
  });

  test("decoding at an offset", () => {
    const two = new Uint8Array([...encodeMessage(samples[0]!), ...bytes]);
    const decoded = decodeMessage(two, 12);
    if (decoded === NEED_MORE) throw new Error("need more");
    expect(decoded.message.request).toBe(Request.SetMemTable);
  });

  function header(request: number, flags: number, size: number, payload = new Uint8Array(size)): Uint8Array {
    const out = new Uint8Array(12 + payload.length);
    const view = new DataView(out.buffer);
    view.setUint32(0, request, true);
    view.setUint32(4, flags, true);
    view.setUint32(8, size, true);
    out.set(payload, 12);
    return out;
  }

  const malformed: [string, Uint8Array][] = [
    ["version 0", header(Request.GetFeatures, 0, 0)],
    ["version 2", header(Request.GetFeatures, 2, 0)],
    ["payload over the limit (rejected from the header alone)", header(Request.SetMemTable, V, 1 << 20, new Uint8Array(0))],
    ["SET_VRING_NUM with 4 bytes", header(Request.SetVringNum, V, 4)],
    ["SET_FEATURES with 4 bytes", header(Request.SetFeatures, V, 4)],
    ["GET_FEATURES with a payload", header(Request.GetFeatures, V, 8)],
    ["SET_VRING_ADDR with 32 bytes", header(Request.SetVringAddr, V, 32)],
    ["SET_MEM_TABLE with zero regions", header(Request.SetMemTable, V, 8)],
    ["SET_MEM_TABLE with 9 regions", header(Request.SetMemTable, V, 8 + 9 * 32, (() => { const p = new Uint8Array(8 + 9 * 32); p[0] = 9; return p; })())],
    ["SET_MEM_TABLE whose size disagrees with its count", header(Request.SetMemTable, V, 8 + 32, (() => { const p = new Uint8Array(8 + 32); p[0] = 2; return p; })())],
    ["GET_CONFIG whose size disagrees with its payload", header(Request.GetConfig, V, 12 + 4, (() => { const p = new Uint8Array(16); p[4] = 8; return p; })())],
    ["GET_CONFIG over 256 bytes", header(Request.GetConfig, V, 12 + 300, (() => { const p = new Uint8Array(312); new DataView(p.buffer).setUint32(4, 300, true); return p; })())],
    ["SET_INFLIGHT_FD with 20 bytes", header(Request.SetInflightFd, V, 20)],
    ["SET_VRING_KICK with unknown bits", header(Request.SetVringKick, V, 8, new Uint8Array([0, 0, 2, 0, 0, 0, 0, 0]))],
    ["address beyond 2^53", header(Request.SetVringAddr, V, 40, (() => { const p = new Uint8Array(40); p[15] = 0xff; return p; })())],
  ];
  for (const [name, bytes] of malformed) {
    test(`malformed: ${name}`, () => {
      expect(() => decodeMessage(bytes, 0)).toThrow(DecodeError);
    });
  }
});

describe("framer", () => {
  const stream = samples.map((message) => encodeMessage(message));
  const all = new Uint8Array(stream.reduce((n, b) => n + b.length, 0));
  stream.reduce((at, bytes) => (all.set(bytes, at), at + bytes.length), 0);

  test("every split point of the whole stream, fed as two real pushes", () => {
    for (let split = 0; split <= all.length; split++) {
      const framer = new MessageFramer();
      const out: Message[] = [];
      framer.push(all.subarray(0, split));
      for (let m = framer.next(); m; m = framer.next()) out.push(m.message);
      framer.push(all.subarray(split));
      for (let m = framer.next(); m; m = framer.next()) out.push(m.message);
      expect(out).toEqual(samples);
      expect(framer.bufferedBytes).toBe(0);
    }
  });

  test("one byte at a time", () => {
    const framer = new MessageFramer();
    const out: Message[] = [];
    for (const byte of all) {
      framer.push(new Uint8Array([byte]));
      for (let m = framer.next(); m; m = framer.next()) out.push(m.message);
    }
    expect(out).toEqual(samples);
  });

  const plain = encodeMessage({ request: Request.SetOwner, flags: V, body: { kind: "none" } });
  const withFd = encodeMessage({ request: Request.SetVringKick, flags: V, body: { kind: "vringFile", index: 0, noFd: false } });

  test("descriptors go to the message that ends their chunk (sends without descriptors may precede it in one read)", () => {
    const framer = new MessageFramer();
    framer.push(new Uint8Array([...plain, ...plain, ...withFd]), [41]);
    expect(framer.next()!.fds).toEqual([]);
    expect(framer.next()!.fds).toEqual([]);
    expect(framer.next()!.fds).toEqual([41]);
  });

  test("a read that stops inside the message carrying descriptors", () => {
    const framer = new MessageFramer();
    framer.push(new Uint8Array([...plain, ...withFd.subarray(0, 5)]), [7, 8]);
    expect(framer.next()!.fds).toEqual([]);
    expect(framer.next()).toBeUndefined();
    framer.push(withFd.subarray(5));
    expect(framer.next()!.fds).toEqual([7, 8]);
    framer.push(plain);
    expect(framer.next()!.fds).toEqual([]);
  });

  test("descriptors in a chunk that starts inside a message are a protocol violation", () => {
    const framer = new MessageFramer();
    framer.push(withFd.subarray(0, 14));
    framer.push(withFd.subarray(14), [5]);
    expect(() => framer.next()).toThrow(DecodeError);
    expect(framer.takeFds()).toEqual([5]);
  });

  test("too many descriptors with one message", () => {
    const framer = new MessageFramer();
    expect(() => framer.push(withFd, [1, 2, 3, 4, 5, 6, 7, 8, 9])).toThrow(DecodeError);
    expect(framer.takeFds()).toEqual([1, 2, 3, 4, 5, 6, 7, 8, 9]);
  });

  test("a malformed header in the stream throws when reached, after earlier messages", () => {
    const framer = new MessageFramer();
    const bad = plain.slice();
    bad[4] = 0; // version 0
    framer.push(new Uint8Array([...plain, ...bad]));
    expect(framer.next()!.message.request).toBe(Request.SetOwner);
    expect(() => framer.next()).toThrow(DecodeError);
  });
});
