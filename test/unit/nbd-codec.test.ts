// Proves the NBD codec writes the spec's bytes and reads them back: golden byte strings written
// out by hand from doc/proto.md for every message kind, encode/decode round trips, NEED_MORE for
// every prefix of every framed message (and a full decode at an offset inside a larger buffer),
// and DecodeError for malformed input (bad magics, lengths that overrun, invalid strings). The
// interop tests then check the same bytes against real clients.
import { describe, expect, test } from "bun:test";
import {
  DecodeError,
  NEED_MORE,
  decodeChunkPayload,
  decodeClientFlags,
  decodeExportNameReply,
  decodeInfoReplyData,
  decodeInfoRequest,
  decodeMetaContextReplyData,
  decodeMetaContextRequest,
  decodeOptionHeader,
  decodeOptionReply,
  decodeOptionRequest,
  decodeRequest,
  decodeServerGreeting,
  decodeServerReplyData,
  decodeSimpleReply,
  decodeString,
  decodeStructuredChunk,
  encodeBlockStatusChunk,
  encodeClientFlags,
  encodeErrorChunk,
  encodeExportNameReply,
  encodeInfoReplyData,
  encodeInfoRequest,
  encodeMetaContextReplyData,
  encodeMetaContextRequest,
  encodeNoneChunk,
  encodeOffsetDataChunk,
  encodeOptionReply,
  encodeOptionRequest,
  encodeRequest,
  encodeServerGreeting,
  encodeServerReplyData,
  encodeSimpleReply,
  encodeStructuredChunk,
  offsetDataChunkDataStart,
  truncateString,
  type Decoded,
} from "../../src/node/export/nbd/codec.ts";
import { Command, Info, Option, OptionReply, ReplyType } from "../../src/node/export/nbd/protocol.ts";

function hex(text: string): Uint8Array {
  const clean = text.replace(/\s+/g, "");
  return Uint8Array.from(clean.match(/../g)!.map((pair) => parseInt(pair, 16)));
}

function toHex(bytes: Uint8Array): string {
  return Buffer.from(bytes).toString("hex");
}

/** Every strict prefix is NEED_MORE; the whole, placed after junk and followed by junk, decodes to `size`. */
function checkFraming<T>(bytes: Uint8Array, decode: (bytes: Uint8Array, offset: number) => Decoded<T>): T {
  for (let cut = 0; cut < bytes.length; cut++) expect(decode(bytes.subarray(0, cut), 0)).toBe(NEED_MORE);
  const padded = new Uint8Array(bytes.length + 7 + 5);
  padded.fill(0xee);
  padded.set(bytes, 7);
  for (let cut = 7; cut < 7 + bytes.length; cut++) expect(decode(padded.subarray(0, cut), 7)).toBe(NEED_MORE);
  const decoded = decode(padded, 7);
  if (decoded === NEED_MORE) throw new Error("complete message reported NEED_MORE");
  expect(decoded.size).toBe(bytes.length);
  return decoded.message;
}

describe("handshake messages", () => {
  test("server greeting: NBDMAGIC, IHAVEOPT, handshake flags", () => {
    const bytes = encodeServerGreeting({ handshakeFlags: 3 });
    expect(toHex(bytes)).toBe("4e42444d41474943" + "49484156454f5054" + "0003");
    expect(checkFraming(bytes, decodeServerGreeting)).toEqual({ handshakeFlags: 3 });
    const oldstyle = hex("4e42444d41474943 0000420281861253 0000");
    expect(() => decodeServerGreeting(oldstyle, 0)).toThrow(DecodeError);
  });

  test("client flags are 32 bits", () => {
    const bytes = encodeClientFlags({ flags: 3 });
    expect(toHex(bytes)).toBe("00000003");
    expect(checkFraming(bytes, decodeClientFlags)).toEqual({ flags: 3 });
  });

  test("option request: IHAVEOPT, option, length, data", () => {
    const bytes = encodeOptionRequest({ option: Option.ExportName, data: new TextEncoder().encode("vol") });
    expect(toHex(bytes)).toBe("49484156454f5054" + "00000001" + "00000003" + "766f6c");
    const message = checkFraming(bytes, (b, o) => decodeOptionRequest(b, o, 100));
    expect(message.option).toBe(Option.ExportName);
    expect(Buffer.from(message.data).toString()).toBe("vol");
    expect(checkFraming(bytes.subarray(0, 16), decodeOptionHeader)).toEqual({ option: 1, length: 3 });
  });

  test("option request with a bad magic or too much data is malformed", () => {
    const bad = hex("49484156454f5055 00000001 00000000");
    expect(() => decodeOptionHeader(bad, 0)).toThrow(DecodeError);
    const huge = hex("49484156454f5054 00000001 7fffffff");
    expect(() => decodeOptionRequest(huge, 0, 65536)).toThrow(/at most 65536/);
    try {
      decodeOptionRequest(huge, 0, 65536);
    } catch (error) {
      expect((error as DecodeError).reason).toBe("too-large");
    }
  });

  test("option reply: magic 0x3e889045565a9, option, type, length, data", () => {
    const bytes = encodeOptionReply({ option: Option.Go, type: OptionReply.ErrorUnknown, data: new Uint8Array([0x6e, 0x6f]) });
    expect(toHex(bytes)).toBe("0003e889045565a9" + "00000007" + "80000006" + "00000002" + "6e6f");
    const message = checkFraming(bytes, (b, o) => decodeOptionReply(b, o));
    expect(message.option).toBe(Option.Go);
    expect(message.type).toBe(OptionReply.ErrorUnknown);
    expect([...message.data]).toEqual([0x6e, 0x6f]);
  });

  test("INFO/GO data: name length, name, count, requests", () => {
    const bytes = encodeInfoRequest({ name: "vol0", requests: [Info.BlockSize, Info.Name] });
    expect(toHex(bytes)).toBe("00000004" + "766f6c30" + "0002" + "0003" + "0001");
    expect(decodeInfoRequest(bytes)).toEqual({ name: "vol0", requests: [3, 1] });
    expect(decodeInfoRequest(encodeInfoRequest({ name: "", requests: [] }))).toEqual({ name: "", requests: [] });
  });

  test("INFO/GO data that overruns or trails is malformed", () => {
    expect(() => decodeInfoRequest(hex("0000"))).toThrow(DecodeError);
    expect(() => decodeInfoRequest(hex("00000005 766f6c30 0000"))).toThrow(/runs past/);
    expect(() => decodeInfoRequest(hex("ffffffff 0000"))).toThrow(/runs past/);
    expect(() => decodeInfoRequest(hex("00000000 0002 0003"))).toThrow(/2 information requests/);
    expect(() => decodeInfoRequest(hex("00000000 0000 ff"))).toThrow(DecodeError);
  });

  test("meta context data: name, count, length-prefixed queries", () => {
    const bytes = encodeMetaContextRequest({ name: "v", queries: ["base:allocation", "x:"] });
    expect(toHex(bytes)).toBe("00000001" + "76" + "00000002" + "0000000f" + Buffer.from("base:allocation").toString("hex") + "00000002" + "783a");
    expect(decodeMetaContextRequest(bytes)).toEqual({ name: "v", queries: ["base:allocation", "x:"] });
  });

  test("meta context data with impossible counts or lengths is malformed", () => {
    expect(() => decodeMetaContextRequest(hex("00000000"))).toThrow(DecodeError);
    expect(() => decodeMetaContextRequest(hex("00000000 ffffffff"))).toThrow(/cannot fit/);
    expect(() => decodeMetaContextRequest(hex("00000000 00000001 00000009 6162"))).toThrow(/runs past/);
    expect(() => decodeMetaContextRequest(hex("00000000 00000000 00"))).toThrow(/follow the last query/);
    expect(() => decodeMetaContextRequest(hex("00000010 00000000"))).toThrow(/runs past/);
  });

  test("REP_SERVER, REP_META_CONTEXT and REP_INFO payloads", () => {
    const server = encodeServerReplyData({ name: "vol0", details: "db" });
    expect(toHex(server)).toBe("00000004" + "766f6c30" + "6462");
    expect(decodeServerReplyData(server)).toEqual({ name: "vol0", details: "db" });
    const context = encodeMetaContextReplyData({ id: 1, name: "base:allocation" });
    expect(toHex(context)).toBe("00000001" + Buffer.from("base:allocation").toString("hex"));
    expect(decodeMetaContextReplyData(context)).toEqual({ id: 1, name: "base:allocation" });

    const exportInfo = encodeInfoReplyData({ type: Info.Export, sizeBytes: 2 ** 40 + 512, transmissionFlags: 0x1ed });
    expect(toHex(exportInfo)).toBe("0000" + "0000010000000200" + "01ed");
    expect(decodeInfoReplyData(exportInfo)).toEqual({ type: Info.Export, sizeBytes: 2 ** 40 + 512, transmissionFlags: 0x1ed });
    const blockSize = encodeInfoReplyData({ type: Info.BlockSize, minimumBytes: 512, preferredBytes: 4096, maximumBytes: 32 << 20 });
    expect(toHex(blockSize)).toBe("0003" + "00000200" + "00001000" + "02000000");
    expect(decodeInfoReplyData(blockSize)).toEqual({ type: Info.BlockSize, minimumBytes: 512, preferredBytes: 4096, maximumBytes: 32 << 20 });
    const name = encodeInfoReplyData({ type: Info.Name, name: "vol0" });
    expect(toHex(name)).toBe("0001" + "766f6c30");
    expect(decodeInfoReplyData(name)).toEqual({ type: Info.Name, name: "vol0" });
    expect(decodeInfoReplyData(encodeInfoReplyData({ type: Info.Description, description: "d" }))).toEqual({ type: Info.Description, description: "d" });
    expect(() => decodeInfoReplyData(hex("0000 00"))).toThrow(/not 12/);
  });

  test("EXPORT_NAME reply: size, flags, and 124 zeroes unless NO_ZEROES", () => {
    const full = encodeExportNameReply({ sizeBytes: 1 << 20, transmissionFlags: 0x0d }, false);
    expect(full.length).toBe(134);
    expect(toHex(full.subarray(0, 10))).toBe("0000000000100000" + "000d");
    expect(full.subarray(10).every((byte) => byte === 0)).toBe(true);
    const short = encodeExportNameReply({ sizeBytes: 1 << 20, transmissionFlags: 0x0d }, true);
    expect(short.length).toBe(10);
    expect(checkFraming(full, (b, o) => decodeExportNameReply(b, o, false))).toEqual({ sizeBytes: 1 << 20, transmissionFlags: 0x0d });
    expect(checkFraming(short, (b, o) => decodeExportNameReply(b, o, true))).toEqual({ sizeBytes: 1 << 20, transmissionFlags: 0x0d });
  });
});

describe("transmission messages", () => {
  test("request header: magic, flags, type, cookie, offset, length", () => {
    const request = { flags: 1, type: Command.Write, cookie: 0x0123456789abcdefn, offset: 2 ** 33 + 4096, length: 512 };
    const bytes = encodeRequest(request);
    expect(toHex(bytes)).toBe("25609513" + "0001" + "0001" + "0123456789abcdef" + "0000000200001000" + "00000200");
    expect(checkFraming(bytes, decodeRequest)).toEqual(request);
    const withPayload = encodeRequest(request, new Uint8Array(512).fill(7));
    expect(withPayload.length).toBe(28 + 512);
    expect(withPayload[28]).toBe(7);
  });

  test("request with a bad magic is malformed; offsets past 2^53 stay past 2^53", () => {
    const bytes = encodeRequest({ flags: 0, type: 0, cookie: 1n, offset: 0, length: 0 });
    bytes[0] = 0x12; // the historic 0x12560953 magic
    expect(() => decodeRequest(bytes, 0)).toThrow(/NBD_REQUEST_MAGIC/);
    const far = hex("25609513 0000 0000 0000000000000001 ffffffffffffffff 00000200");
    const decoded = decodeRequest(far, 0);
    if (decoded === NEED_MORE) throw new Error("need more");
    expect(decoded.message.offset).toBeGreaterThanOrEqual(2 ** 53);
    expect(Number.isSafeInteger(decoded.message.offset)).toBe(false);
  });

  test("simple reply: magic, error, cookie, then room for read data", () => {
    const bytes = encodeSimpleReply({ error: 22, cookie: 0xffffffffffffffffn });
    expect(toHex(bytes)).toBe("67446698" + "00000016" + "ffffffffffffffff");
    expect(checkFraming(bytes, decodeSimpleReply)).toEqual({ error: 22, cookie: 0xffffffffffffffffn });
    const withData = encodeSimpleReply({ error: 0, cookie: 5n }, 4096);
    expect(withData.length).toBe(16 + 4096);
    expect(() => decodeSimpleReply(hex("668e33ef 00000000 0000000000000000"), 0)).toThrow(DecodeError);
  });

  test("OFFSET_DATA chunk: header, offset, data in one buffer", () => {
    const bytes = encodeOffsetDataChunk({ flags: 1, cookie: 9n, offset: 8192 }, 4);
    bytes.set([1, 2, 3, 4], offsetDataChunkDataStart);
    expect(toHex(bytes)).toBe("668e33ef" + "0001" + "0001" + "0000000000000009" + "0000000c" + "0000000000002000" + "01020304");
    const chunk = checkFraming(bytes, (b, o) => decodeStructuredChunk(b, o));
    expect(chunk.flags).toBe(1);
    expect(chunk.cookie).toBe(9n);
    const payload = decodeChunkPayload(chunk);
    expect(payload.type).toBe(ReplyType.OffsetData);
    if (payload.type !== ReplyType.OffsetData) throw new Error("type");
    expect(payload.offset).toBe(8192);
    expect([...payload.data]).toEqual([1, 2, 3, 4]);
  });

  test("NONE, ERROR, ERROR_OFFSET and BLOCK_STATUS chunks", () => {
    expect(toHex(encodeNoneChunk({ flags: 1, cookie: 2n }))).toBe("668e33ef" + "0001" + "0000" + "0000000000000002" + "00000000");
    const error = encodeErrorChunk({ flags: 1, cookie: 3n, error: 22, message: "bad" });
    expect(toHex(error)).toBe("668e33ef" + "0001" + "8001" + "0000000000000003" + "00000009" + "00000016" + "0003" + "626164");
    const decodedError = checkFraming(error, (b, o) => decodeStructuredChunk(b, o));
    expect(decodeChunkPayload(decodedError)).toEqual({ type: ReplyType.Error, error: 22, message: "bad" });
    const errorOffset = encodeErrorChunk({ flags: 0, cookie: 3n, error: 5, message: "", offset: 4096 });
    expect(toHex(errorOffset)).toBe("668e33ef" + "0000" + "8002" + "0000000000000003" + "0000000e" + "00000005" + "0000" + "0000000000001000");
    const decodedErrorOffset = decodeStructuredChunk(errorOffset, 0);
    if (decodedErrorOffset === NEED_MORE) throw new Error("need more");
    expect(decodeChunkPayload(decodedErrorOffset.message)).toEqual({ type: ReplyType.ErrorOffset, error: 5, message: "", offset: 4096 });
    const status = encodeBlockStatusChunk({ flags: 1, cookie: 4n, contextId: 1, descriptors: [{ length: 65536, flags: 3 }, { length: 512, flags: 0 }] });
    expect(toHex(status)).toBe("668e33ef" + "0001" + "0005" + "0000000000000004" + "00000014" + "00000001" + "0001000000000003" + "0000020000000000");
    const decodedStatus = checkFraming(status, (b, o) => decodeStructuredChunk(b, o));
    expect(decodeChunkPayload(decodedStatus)).toEqual({ type: ReplyType.BlockStatus, contextId: 1, descriptors: [{ length: 65536, flags: 3 }, { length: 512, flags: 0 }] });
  });

  test("chunk payloads that contradict their type are malformed", () => {
    expect(() => decodeChunkPayload({ flags: 1, type: ReplyType.None, cookie: 0n, payload: new Uint8Array(1) })).toThrow(DecodeError);
    expect(() => decodeChunkPayload({ flags: 1, type: ReplyType.OffsetData, cookie: 0n, payload: new Uint8Array(8) })).toThrow(DecodeError);
    expect(() => decodeChunkPayload({ flags: 1, type: ReplyType.BlockStatus, cookie: 0n, payload: new Uint8Array(8) })).toThrow(DecodeError);
    expect(() => decodeChunkPayload({ flags: 1, type: ReplyType.Error, cookie: 0n, payload: hex("00000016 0009 6162") })).toThrow(DecodeError);
    expect(() => decodeChunkPayload({ flags: 1, type: 77, cookie: 0n, payload: new Uint8Array(0) })).toThrow(/unknown chunk type/);
    const generic = encodeStructuredChunk({ flags: 0, type: 77, cookie: 1n, payload: new Uint8Array([9]) });
    expect(toHex(generic)).toBe("668e33ef" + "0000" + "004d" + "0000000000000001" + "00000001" + "09");
  });
});

describe("strings", () => {
  test("UTF-8 without NUL, at most 4096 bytes", () => {
    expect(decodeString(new TextEncoder().encode("vol-ü"), "name")).toBe("vol-ü");
    expect(() => decodeString(new Uint8Array([0x61, 0x00]), "name")).toThrow(/NUL/);
    expect(() => decodeString(new Uint8Array([0xc3]), "name")).toThrow(/UTF-8/);
    expect(() => decodeString(new Uint8Array(4097).fill(0x61), "name")).toThrow(/4096/);
    expect(decodeString(new Uint8Array(4096).fill(0x61), "name").length).toBe(4096);
  });

  test("truncation never splits a UTF-8 sequence", () => {
    const text = "a" + "é".repeat(3000); // 1 + 6000 bytes
    const cut = truncateString(text);
    expect(cut.length).toBeLessThanOrEqual(4096);
    expect(cut.length).toBe(4095);
    expect(() => new TextDecoder("utf-8", { fatal: true }).decode(cut)).not.toThrow();
    expect(truncateString("short").length).toBe(5);
  });
});
