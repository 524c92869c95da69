// Proves the NBD session core follows the spec on every negotiation path and in transmission,
// with no socket involved: a scripted driver (test/helpers/nbd-session-driver.ts) feeds client
// bytes built with the codec, answers export lookups from a catalog, completes IO in whatever
// order a test chooses, and reads the server's byte stream back with the client-side decoders.
// Each test asserts what a client would observe: reply types and error values, cookies, data
// bytes, IO handed to the layer, pauses, closes and the release of the export handle. Framing
// is checked by feeding whole conversations split at every byte.
import { describe, expect, test } from "bun:test";
import { joinPayload, type Payload, Pieces } from "../../src/common/bytes.ts";
import {
  encodeClientFlags,
  encodeInfoRequest,
  encodeMetaContextRequest,
  encodeOptionRequest,
  decodeInfoReplyData,
  decodeMetaContextReplyData,
  decodeServerReplyData,
} from "../../src/node/export/nbd/codec.ts";
import {
  AllocationState,
  ClientFlag,
  Command,
  CommandFlag,
  ErrorValue,
  HandshakeFlag,
  Info,
  Option,
  OptionReply,
  ReplyFlag,
  ReplyType,
  TransmissionFlag,
} from "../../src/node/export/nbd/protocol.ts";
import { blockStatusDescriptors, errorValueFor, transmissionFlagsFor, type IoRequest } from "../../src/node/export/nbd/session.ts";
import { SessionDriver, describeExport, fullCapabilities, request } from "../helpers/nbd-session-driver.ts";

const text = new TextEncoder();
const none = new Uint8Array(0);

function option(optionType: number, data: Uint8Array = none): Uint8Array {
  return encodeOptionRequest({ option: optionType, data });
}

function flags(value = ClientFlag.FixedNewstyle | ClientFlag.NoZeroes): Uint8Array {
  return encodeClientFlags({ flags: value });
}

function started(): SessionDriver {
  const driver = new SessionDriver();
  driver.readGreeting();
  driver.feed(flags());
  return driver;
}

function errorMessage(data: Uint8Array): string {
  return new TextDecoder().decode(data);
}

describe("handshake", () => {
  test("greets with NBDMAGIC, IHAVEOPT, FIXED_NEWSTYLE and NO_ZEROES", () => {
    const driver = new SessionDriver();
    expect(driver.readGreeting()).toEqual({ handshakeFlags: HandshakeFlag.FixedNewstyle | HandshakeFlag.NoZeroes });
    expect(driver.unread).toBe(0);
  });

  test("unknown client flags close the connection", () => {
    const driver = new SessionDriver();
    driver.readGreeting();
    driver.feed(flags(ClientFlag.FixedNewstyle | 0x4));
    expect(driver.closes).toEqual([{ reason: "unknown client flags 0x5", graceful: false }]);
    driver.feed(option(Option.List));
    expect(driver.unread).toBe(0);
  });

  test("EXPORT_NAME sends size, flags and 124 zeroes unless the client set NO_ZEROES", () => {
    for (const noZeroes of [false, true]) {
      const driver = new SessionDriver();
      driver.readGreeting();
      driver.feed(flags(ClientFlag.FixedNewstyle | (noZeroes ? ClientFlag.NoZeroes : 0)));
      driver.feed(option(Option.ExportName, text.encode("vol0")));
      const reply = driver.readExportNameReply(noZeroes);
      expect(reply.sizeBytes).toBe(1 << 20);
      expect(reply.transmissionFlags & TransmissionFlag.HasFlags).toBe(TransmissionFlag.HasFlags);
      expect(reply.transmissionFlags & TransmissionFlag.SendDontFragment).toBe(0); // no structured replies
      expect(driver.unread).toBe(0);
      expect(driver.session.state).toBe("transmission");
      expect(driver.opens).toEqual([{ name: "vol0", purpose: "go" }]);
    }
  });

  test("EXPORT_NAME for an unknown export terminates the session", () => {
    const driver = started();
    driver.feed(option(Option.ExportName, text.encode("nope")));
    expect(driver.closed).toBe(true);
    expect(driver.closes[0]!.graceful).toBe(false);
    expect(driver.unread).toBe(0);
    expect(driver.releases).toBe(0);
  });

  test("the default export (empty name) is refused with ERR_UNKNOWN when the resolver has none", () => {
    const driver = started();
    driver.feed(option(Option.Go, encodeInfoRequest({ name: "", requests: [] })));
    const reply = driver.readOptionReply();
    expect(reply.type).toBe(OptionReply.ErrorUnknown);
    expect(driver.session.state).toBe("options");
  });

  test("ABORT is acknowledged and the connection closed gracefully; its data is ignored", () => {
    const driver = started();
    driver.feed(option(Option.Abort, new Uint8Array([1, 2, 3])));
    expect(driver.readOptionReply()).toMatchObject({ option: Option.Abort, type: OptionReply.Ack });
    expect(driver.closes).toEqual([{ reason: "client aborted the negotiation", graceful: true }]);
  });

  test("LIST returns one REP_SERVER per export then ACK; LIST with data is ERR_INVALID", () => {
    const catalog = new Map([
      ["a", describeExport("a", { description: "first" })],
      ["b", describeExport("b", { description: "" })],
    ]);
    const driver = new SessionDriver(catalog);
    driver.readGreeting();
    driver.feed(flags(), option(Option.List));
    const first = driver.readOptionReply();
    expect(first.type).toBe(OptionReply.Server);
    expect(decodeServerReplyData(first.data)).toEqual({ name: "a", details: "first" });
    expect(decodeServerReplyData(driver.readOptionReply().data)).toEqual({ name: "b", details: "" });
    expect(driver.readOptionReply()).toMatchObject({ option: Option.List, type: OptionReply.Ack });
    driver.feed(option(Option.List, new Uint8Array([0])));
    expect(driver.readOptionReply().type).toBe(OptionReply.ErrorInvalid);
    expect(driver.session.state).toBe("options");
  });

  test("unknown and unsupported options get ERR_UNSUP and negotiation continues", () => {
    const driver = started();
    for (const optionType of [Option.PeekExport, Option.ExtendedHeaders, 42, 0, 0x7fffffff]) {
      driver.feed(option(optionType, new Uint8Array(5)));
      const reply = driver.readOptionReply();
      expect(reply.option).toBe(optionType);
      expect(reply.type).toBe(OptionReply.ErrorUnsupported);
    }
    driver.feed(option(Option.StartTls));
    expect(driver.readOptionReply().type).toBe(OptionReply.ErrorPolicy);
    driver.feed(option(Option.Go, encodeInfoRequest({ name: "vol0", requests: [] })));
    while (driver.readOptionReply().type !== OptionReply.Ack);
    expect(driver.session.state).toBe("transmission");
  });

  test("INFO answers EXPORT, NAME and DESCRIPTION when asked, BLOCK_SIZE always, then ACK, and stays in negotiation", () => {
    const driver = started();
    const infosOf = () => {
      const infos = [];
      let reply = driver.readOptionReply();
      while (reply.type === OptionReply.Info) {
        infos.push(decodeInfoReplyData(reply.data));
        reply = driver.readOptionReply();
      }
      expect(reply.type).toBe(OptionReply.Ack);
      return infos;
    };
    driver.feed(option(Option.Info, encodeInfoRequest({ name: "vol0", requests: [Info.Name, Info.Description, Info.Name, 999] })));
    // Not asked for block sizes: the protocol's default minimum of 1 (what a GO asking the same way gets).
    expect(infosOf()).toEqual([
      { type: Info.Export, sizeBytes: 1 << 20, transmissionFlags: transmissionFlagsFor(describeExport("vol0"), false) },
      { type: Info.Name, name: "vol0" },
      { type: Info.Description, description: "volume vol0" },
      { type: Info.BlockSize, minimumBytes: 1, preferredBytes: 4096, maximumBytes: 32 * 1024 * 1024 },
    ]);
    driver.feed(option(Option.Info, encodeInfoRequest({ name: "vol0", requests: [Info.BlockSize] })));
    expect(infosOf()).toEqual([
      { type: Info.Export, sizeBytes: 1 << 20, transmissionFlags: transmissionFlagsFor(describeExport("vol0"), false) },
      { type: Info.BlockSize, minimumBytes: 512, preferredBytes: 4096, maximumBytes: 32 * 1024 * 1024 },
    ]);
    expect(driver.opens).toEqual([
      { name: "vol0", purpose: "info" },
      { name: "vol0", purpose: "info" },
    ]);
    expect(driver.session.state).toBe("options");
  });

  test("INFO for an unknown export is ERR_UNKNOWN; a refused one is ERR_POLICY with the reason", () => {
    const catalog = new Map<string, ReturnType<typeof describeExport> | { refused: string }>([["frozen", { refused: "volume is frozen" }]]);
    const driver = new SessionDriver(catalog);
    driver.readGreeting();
    driver.feed(flags(), option(Option.Info, encodeInfoRequest({ name: "ghost", requests: [] })));
    const unknown = driver.readOptionReply();
    expect(unknown.type).toBe(OptionReply.ErrorUnknown);
    expect(errorMessage(unknown.data)).toContain("ghost");
    driver.feed(option(Option.Go, encodeInfoRequest({ name: "frozen", requests: [] })));
    const refused = driver.readOptionReply();
    expect(refused.type).toBe(OptionReply.ErrorPolicy);
    expect(errorMessage(refused.data)).toBe("volume is frozen");
    expect(driver.session.state).toBe("options");
  });

  test("malformed INFO/GO data is ERR_INVALID and negotiation continues", () => {
    const driver = started();
    driver.feed(option(Option.Go, new Uint8Array([0, 0, 0, 9, 1])));
    expect(driver.readOptionReply().type).toBe(OptionReply.ErrorInvalid);
    driver.feed(option(Option.Go, new Uint8Array([0, 0, 0, 1, 0, 0, 0])));
    expect(driver.readOptionReply().type).toBe(OptionReply.ErrorInvalid);
    const nul = encodeInfoRequest({ name: "v\u0000", requests: [] });
    driver.feed(option(Option.Go, nul));
    expect(driver.readOptionReply().type).toBe(OptionReply.ErrorInvalid);
    expect(driver.opens).toEqual([]);
    expect(driver.session.state).toBe("options");
  });

  test("STRUCTURED_REPLY is acknowledged, turns on SEND_DF; with data it is ERR_INVALID", () => {
    const driver = started();
    driver.feed(option(Option.StructuredReply, new Uint8Array(1)));
    expect(driver.readOptionReply().type).toBe(OptionReply.ErrorInvalid);
    expect(driver.session.structured).toBe(false);
    driver.feed(option(Option.StructuredReply));
    expect(driver.readOptionReply()).toMatchObject({ option: Option.StructuredReply, type: OptionReply.Ack });
    driver.feed(option(Option.Go, encodeInfoRequest({ name: "vol0", requests: [] })));
    const exportInfo = decodeInfoReplyData(driver.readOptionReply().data) as { transmissionFlags: number };
    expect(exportInfo.transmissionFlags & TransmissionFlag.SendDontFragment).toBe(TransmissionFlag.SendDontFragment);
  });

  test("SET_META_CONTEXT needs structured replies, selects base:allocation, ignores unknown namespaces", () => {
    const driver = started();
    const set = (queries: string[], name = "vol0") => option(Option.SetMetaContext, encodeMetaContextRequest({ name, queries }));
    driver.feed(set(["base:allocation"]));
    expect(driver.readOptionReply().type).toBe(OptionReply.ErrorInvalid);
    driver.feed(option(Option.StructuredReply));
    driver.readOptionReply();
    driver.feed(set(["qemu:dirty-bitmap:x", "base:allocation", "base:allocation", "base:nothing", "base:"]));
    const context = driver.readOptionReply();
    expect(context.type).toBe(OptionReply.MetaContext);
    expect(decodeMetaContextReplyData(context.data).name).toBe("base:allocation");
    expect(driver.readOptionReply().type).toBe(OptionReply.Ack);
    driver.feed(set(["x-other:thing"]));
    expect(driver.readOptionReply().type).toBe(OptionReply.Ack);
    driver.feed(set([]));
    expect(driver.readOptionReply().type).toBe(OptionReply.Ack);
    driver.feed(set(["nocolon"]));
    expect(driver.readOptionReply().type).toBe(OptionReply.ErrorInvalid);
    driver.feed(option(Option.SetMetaContext, new Uint8Array([0, 0, 0, 0, 0, 0, 0, 5])));
    expect(driver.readOptionReply().type).toBe(OptionReply.ErrorInvalid);
  });

  test("LIST_META_CONTEXT with no query or the base: wildcard lists base:allocation", () => {
    const driver = started();
    for (const queries of [[], ["base:"], ["base:allocation"]]) {
      driver.feed(option(Option.ListMetaContext, encodeMetaContextRequest({ name: "vol0", queries })));
      const reply = driver.readOptionReply();
      expect(reply.type).toBe(OptionReply.MetaContext);
      expect(decodeMetaContextReplyData(reply.data)).toEqual({ id: 0, name: "base:allocation" });
      expect(driver.readOptionReply().type).toBe(OptionReply.Ack);
    }
    driver.feed(option(Option.ListMetaContext, encodeMetaContextRequest({ name: "vol0", queries: ["qemu:"] })));
    expect(driver.readOptionReply().type).toBe(OptionReply.Ack);
  });

  test("base:allocation applies only when selected for the export that GO opens", () => {
    const catalog = new Map([
      ["vol0", describeExport("vol0")],
      ["vol1", describeExport("vol1")],
    ]);
    for (const [selectedFor, goTo, works] of [
      ["vol0", "vol0", true],
      ["vol1", "vol0", false],
    ] as const) {
      const driver = new SessionDriver(catalog);
      driver.readGreeting();
      driver.feed(flags(), option(Option.StructuredReply));
      driver.readOptionReply();
      driver.feed(option(Option.SetMetaContext, encodeMetaContextRequest({ name: selectedFor, queries: ["base:allocation"] })));
      driver.readOptionReply();
      driver.readOptionReply();
      driver.feed(option(Option.Go, encodeInfoRequest({ name: goTo, requests: [] })));
      while (driver.readOptionReply().type !== OptionReply.Ack);
      const status = request({ type: Command.BlockStatus, offset: 0, length: 4096 });
      driver.feed(status.bytes);
      if (works) {
        expect(driver.onlyIo().kind).toBe("extents");
      } else {
        expect(driver.ios).toEqual([]);
        expect(driver.readChunk().decoded).toMatchObject({ type: ReplyType.Error, error: ErrorValue.Invalid });
      }
    }
  });

  test("an oversized option is read past: ERR_TOO_BIG if known, ERR_UNSUP if not; EXPORT_NAME closes", () => {
    const driver = new SessionDriver(undefined, { optionBytesMax: 64 });
    driver.readGreeting();
    driver.feed(flags());
    driver.feed(option(Option.Info, new Uint8Array(100)));
    expect(driver.readOptionReply()).toMatchObject({ option: Option.Info, type: OptionReply.ErrorTooBig });
    const unknown = option(77, new Uint8Array(1000).fill(0x49));
    driver.feed(unknown.subarray(0, 500), unknown.subarray(500));
    expect(driver.readOptionReply()).toMatchObject({ option: 77, type: OptionReply.ErrorUnsupported });
    driver.feed(option(Option.StructuredReply));
    expect(driver.readOptionReply().type).toBe(OptionReply.Ack);
    driver.feed(option(Option.ExportName, new Uint8Array(65)));
    expect(driver.closed).toBe(true);
  });

  test("a flood of options is cut off at the limit", () => {
    const driver = new SessionDriver(undefined, { optionsMax: 3 });
    driver.readGreeting();
    driver.feed(flags());
    for (let index = 0; index < 3; index++) driver.feed(option(99));
    expect(driver.closed).toBe(false);
    driver.feed(option(99));
    expect(driver.closed).toBe(true);
    expect(driver.closes[0]!.reason).toContain("more than 3 options");
  });

  test("a bad option magic is a hard disconnect", () => {
    const driver = started();
    const bytes = option(Option.List);
    bytes[3] = bytes[3]! ^ 0xff;
    driver.feed(bytes);
    expect(driver.closes).toEqual([{ reason: expect.stringContaining("IHAVEOPT"), graceful: false }]);
  });

  test("the handshake timeout closes a negotiating session and is ignored in transmission", () => {
    const negotiating = started();
    negotiating.event({ type: "handshakeTimedOut" });
    expect(negotiating.closes).toEqual([{ reason: "handshake timed out", graceful: false }]);
    const serving = new SessionDriver();
    serving.negotiate();
    serving.event({ type: "handshakeTimedOut" });
    expect(serving.closed).toBe(false);
  });

  test("input pauses while an export lookup is pending and bytes that arrived meanwhile are served after", () => {
    const driver = new SessionDriver();
    driver.autoAnswer = false;
    driver.readGreeting();
    const read = request({ type: Command.Read, offset: 0, length: 512 });
    driver.feed(flags(), option(Option.Go, encodeInfoRequest({ name: "vol0", requests: [] })), read.bytes);
    expect(driver.inputPaused).toBe(true);
    expect(driver.ios).toEqual([]);
    driver.answerOpen("vol0", "go");
    expect(driver.inputPaused).toBe(false);
    while (driver.readOptionReply().type !== OptionReply.Ack);
    expect(driver.onlyIo()).toMatchObject({ kind: "read", offset: 0 });
  });

  test("a whole negotiation and first requests split at every byte give the same bytes and IO", () => {
    const conversation = new Uint8Array(
      Buffer.concat([
        flags(),
        option(77, new Uint8Array(3)),
        option(Option.StructuredReply),
        option(Option.ListMetaContext, encodeMetaContextRequest({ name: "vol0", queries: [] })),
        option(Option.SetMetaContext, encodeMetaContextRequest({ name: "vol0", queries: ["base:allocation"] })),
        option(Option.Info, encodeInfoRequest({ name: "vol0", requests: [Info.BlockSize] })),
        option(Option.Go, encodeInfoRequest({ name: "vol0", requests: [Info.BlockSize, Info.Name] })),
        request({ type: Command.Write, offset: 4096, cookie: 1n }, new Uint8Array(1024).fill(0x5a)).bytes,
        request({ type: Command.Read, offset: 0, length: 512, cookie: 2n }).bytes,
        request({ type: Command.BlockStatus, offset: 0, length: 8192, cookie: 3n, flags: CommandFlag.RequestOne }).bytes,
        request({ type: Command.Flush, cookie: 4n }).bytes,
      ]),
    );
    const run = (cuts: number[]) => {
      const driver = new SessionDriver();
      let previous = 0;
      for (const cut of [...cuts, conversation.length]) {
        driver.feed(conversation.slice(previous, cut));
        previous = cut;
      }
      const ios = driver.ios.map((io) => ({ ...io, data: "data" in io ? [...joinPayload(io.data)] : undefined, target: undefined }));
      return { output: driver.readRaw(driver.unread), ios };
    };
    const whole = run([]);
    expect(whole.ios.map((io) => io.kind)).toEqual(["write", "read", "extents", "flush"]);
    expect(whole.ios[0]!.data).toEqual(new Array(1024).fill(0x5a));
    for (let cut = 1; cut < conversation.length; cut++) {
      const split = run([cut]);
      expect(split.output).toEqual(whole.output);
      expect(split.ios).toEqual(whole.ios);
    }
    // Three pieces too, at a spread of places.
    for (let first = 3; first < conversation.length; first += 97) {
      for (let second = first + 1; second < conversation.length; second += 211) {
        const split = run([first, second]);
        expect(split.output).toEqual(whole.output);
        expect(split.ios).toEqual(whole.ios);
      }
    }
  });
});

test("options with data and a WRITE split at every pair of points give the same bytes and IO", () => {
  // Three pieces at every pair of cuts: an option header (or request header) completed while
  // its data is still arriving is the case that once lost bytes.
  const negotiation = new Uint8Array(
    Buffer.concat([
      flags(),
      option(Option.StructuredReply),
      option(Option.SetMetaContext, encodeMetaContextRequest({ name: "vol0", queries: ["base:allocation"] })),
      option(Option.Info, encodeInfoRequest({ name: "vol0", requests: [Info.Name] })),
      option(Option.Go, encodeInfoRequest({ name: "vol0", requests: [] })),
    ]),
  );
  const requests = new Uint8Array(
    Buffer.concat([
      request({ type: Command.Read, offset: 0, length: 512, cookie: 8n }).bytes,
      request({ type: Command.Write, offset: 0, cookie: 9n }, new Uint8Array(512).map((_, index) => index)).bytes,
      request({ type: Command.Flush, cookie: 10n }).bytes,
    ]),
  );
  const run = (prefix: Uint8Array[], conversation: Uint8Array, first: number, second: number) => {
    const driver = new SessionDriver();
    driver.feed(...prefix, conversation.slice(0, first), conversation.slice(first, second), conversation.slice(second));
    const ios = driver.ios.map((io) => ("data" in io ? [...joinPayload(io.data)].join(",") : io.kind)).join(";");
    return `${Buffer.from(driver.readRaw(driver.unread)).toString("hex")}|${ios}|${driver.closed}`;
  };
  const wholeNegotiation = run([], negotiation, 0, 0);
  for (let first = 1; first < negotiation.length; first++) {
    for (let second = first; second < negotiation.length; second++) {
      if (run([], negotiation, first, second) !== wholeNegotiation) throw new Error(`negotiation cut at ${first} and ${second} changed the conversation`);
    }
  }
  const wholeRequests = run([negotiation], requests, 0, 0);
  expect(wholeRequests).toContain([...new Uint8Array(512).map((_, index) => index)].join(","));
  for (let first = 1; first < 80; first++) {
    for (let second = first; second < requests.length; second++) {
      if (run([negotiation], requests, first, second) !== wholeRequests) throw new Error(`requests cut at ${first} and ${second} changed the conversation`);
    }
  }
});

describe("transmission flags and error values", () => {
  test("flags follow the layer's capabilities and read-only state", () => {
    const all = transmissionFlagsFor(describeExport("v"), true);
    expect(all).toBe(
      TransmissionFlag.HasFlags |
        TransmissionFlag.SendFlush |
        TransmissionFlag.SendFua |
        TransmissionFlag.SendTrim |
        TransmissionFlag.SendWriteZeroes |
        TransmissionFlag.SendFastZero |
        TransmissionFlag.SendDontFragment |
        TransmissionFlag.CanMultiConnection |
        TransmissionFlag.SendCache,
    );
    const readOnly = transmissionFlagsFor(describeExport("v", { readOnly: true }), false);
    expect(readOnly & TransmissionFlag.ReadOnly).toBeTruthy();
    expect(readOnly & (TransmissionFlag.SendTrim | TransmissionFlag.SendWriteZeroes | TransmissionFlag.SendFua)).toBe(0);
    const plain = transmissionFlagsFor(
      describeExport("v", { capabilities: { ...fullCapabilities, flush: false, fua: false, trim: false, zero: false, multiConn: false, cache: false } }),
      false,
    );
    expect(plain).toBe(TransmissionFlag.HasFlags | TransmissionFlag.SendFua);
    const noFastZero = transmissionFlagsFor(describeExport("v", { capabilities: { ...fullCapabilities, fastZero: false } }), false);
    expect(noFastZero & TransmissionFlag.SendFastZero).toBe(0);
  });

  test("layer errors map to NBD error values; ENOTSUP only for fast zero", () => {
    expect(errorValueFor("EPERM")).toBe(1);
    expect(errorValueFor("EIO")).toBe(5);
    expect(errorValueFor("EINVAL")).toBe(22);
    expect(errorValueFor("ENOSPC")).toBe(28);
    expect(errorValueFor("EOVERFLOW")).toBe(75);
    expect(errorValueFor("ESHUTDOWN")).toBe(108);
    expect(errorValueFor("ENOTSUP", true)).toBe(95);
    expect(errorValueFor("ENOTSUP", false)).toBe(22);
  });
});

describe("transmission", () => {
  function serving(options: Parameters<SessionDriver["negotiate"]>[0] & { limits?: ConstructorParameters<typeof SessionDriver>[1]; readOnly?: boolean } = {}): SessionDriver {
    const catalog = new Map([["vol0", describeExport("vol0", { readOnly: options.readOnly ?? false })]]);
    const driver = new SessionDriver(catalog, options.limits);
    driver.negotiate(options);
    return driver;
  }

  test("READ with structured replies: one OFFSET_DATA chunk with DONE, data read straight into it", () => {
    const driver = serving();
    const read = request({ type: Command.Read, offset: 8192, length: 1024 });
    driver.feed(read.bytes);
    const io = driver.onlyIo() as Extract<IoRequest, { kind: "read" }>;
    expect(io.offset).toBe(8192);
    expect(io.target.length).toBe(1024);
    io.target.fill(0xc3);
    driver.complete(io);
    const chunk = driver.readChunk();
    expect(chunk.cookie).toBe(read.cookie);
    expect(chunk.flags).toBe(ReplyFlag.Done);
    expect(chunk.decoded).toEqual({ type: ReplyType.OffsetData, offset: 8192, data: new Uint8Array(1024).fill(0xc3) });
    expect(driver.unread).toBe(0);
  });

  test("READ with simple replies: header then data; a failed read sends the error and no data", () => {
    const driver = serving({ structured: false });
    const ok = request({ type: Command.Read, offset: 0, length: 512 });
    const bad = request({ type: Command.Read, offset: 512, length: 512 });
    driver.feed(ok.bytes, bad.bytes);
    const [first, second] = driver.ios as Extract<IoRequest, { kind: "read" }>[];
    first!.target.fill(7);
    driver.complete(second!, { ok: false, code: "EIO", message: "read failed: EIO" });
    driver.complete(first!);
    expect(driver.readSimpleReply()).toEqual({ error: ErrorValue.InputOutput, cookie: bad.cookie });
    expect(driver.readSimpleReply()).toEqual({ error: 0, cookie: ok.cookie });
    expect([...driver.readRaw(512)]).toEqual(new Array(512).fill(7));
    expect(driver.unread).toBe(0);
  });

  test("a failed structured READ sends an ERROR chunk with DONE and the message", () => {
    const driver = serving();
    const read = request({ type: Command.Read, offset: 0, length: 512 });
    driver.feed(read.bytes);
    driver.complete(driver.onlyIo(), { ok: false, code: "EIO", message: "read failed: EIO" });
    const chunk = driver.readChunk();
    expect(chunk.flags).toBe(ReplyFlag.Done);
    expect(chunk.decoded).toEqual({ type: ReplyType.Error, error: ErrorValue.InputOutput, message: "read failed: EIO" });
  });

  test("requests are pipelined and answered in completion order with their own cookies", () => {
    const driver = serving();
    const requests = [0, 1, 2, 3].map((index) => request({ type: Command.Read, offset: index * 512, length: 512 }));
    driver.feed(...requests.map((entry) => entry.bytes));
    expect(driver.ios.length).toBe(4);
    const [a, b, c, d] = [...driver.ios];
    for (const io of [c!, a!, d!, b!]) driver.complete(io);
    expect([0, 1, 2, 3].map(() => driver.readChunk().cookie)).toEqual([requests[2]!.cookie, requests[0]!.cookie, requests[3]!.cookie, requests[1]!.cookie]);
  });

  test("a WRITE payload is handed down without a copy: a view of the chunk it came in, or views of the chunks it spans; a trickled one is copied together", () => {
    const driver = serving();
    const payload = new Uint8Array(4096).map((_, index) => index * 13);
    const whole = request({ type: Command.Write, offset: 0 }, payload);
    driver.feed(whole.bytes);
    const io = driver.onlyIo() as Extract<IoRequest, { kind: "write" }>;
    expect((io.data as Uint8Array).buffer).toBe(whole.bytes.buffer); // a view into the received chunk
    expect(io.data).toEqual(payload);
    driver.complete(io);
    expect(driver.readSimpleReply()).toEqual({ error: 0, cookie: whole.cookie });

    const split = request({ type: Command.Write, offset: 4096, flags: CommandFlag.Fua }, payload);
    driver.feed(split.bytes.subarray(0, 100), split.bytes.subarray(100, 2000), split.bytes.subarray(2000));
    const spanning = driver.onlyIo() as Extract<IoRequest, { kind: "write" }>;
    expect(spanning).toMatchObject({ kind: "write", offset: 4096, fua: true });
    expect(spanning.data).toBeInstanceOf(Pieces);
    expect((spanning.data as Pieces).parts.map((part) => [part.buffer === split.bytes.buffer, part.length])).toEqual([
      [true, 100 - 28],
      [true, 1900],
      [true, 4096 - 72 - 1900],
    ]);
    expect(joinPayload(spanning.data)).toEqual(payload);
    driver.complete(spanning);
    expect(driver.readSimpleReply()).toEqual({ error: 0, cookie: split.cookie });

    // 64 pieces of 64 bytes: smaller on average than is worth keeping, so one buffer of the bytes.
    const trickled = request({ type: Command.Write, offset: 8192 }, payload);
    const header = trickled.bytes.subarray(0, 28);
    driver.feed(header, ...Array.from({ length: 64 }, (_, index) => trickled.bytes.slice(28 + index * 64, 28 + (index + 1) * 64)));
    const copied = driver.onlyIo() as Extract<IoRequest, { kind: "write" }>;
    expect(copied.data).toBeInstanceOf(Uint8Array);
    expect(copied.data).toEqual(payload);
  });

  test("FLUSH, TRIM, WRITE_ZEROES and CACHE reach the layer with their flags", () => {
    const driver = serving();
    driver.feed(
      request({ type: Command.Flush }).bytes,
      request({ type: Command.Trim, offset: 4096, length: 8192, flags: CommandFlag.Fua }).bytes,
      request({ type: Command.WriteZeroes, offset: 0, length: 4096, flags: CommandFlag.NoHole }).bytes,
      request({ type: Command.WriteZeroes, offset: 0, length: 4096, flags: CommandFlag.FastZero | CommandFlag.Fua }).bytes,
      request({ type: Command.Cache, offset: 0, length: 65536 }).bytes,
    );
    expect(driver.ios.map(({ id, ...rest }) => rest)).toEqual([
      { kind: "flush" },
      { kind: "trim", offset: 4096, length: 8192, fua: true },
      { kind: "zero", offset: 0, length: 4096, fua: false, noHole: true, fastZero: false },
      { kind: "zero", offset: 0, length: 4096, fua: true, noHole: false, fastZero: true },
      { kind: "cache", offset: 0, length: 65536 },
    ]);
    for (const io of [...driver.ios]) driver.complete(io);
    for (let index = 0; index < 5; index++) expect(driver.readSimpleReply().error).toBe(0);
  });

  test("fast zero refusal is ENOTSUP; other ENOTSUP becomes EINVAL", () => {
    const driver = serving({ structured: false });
    const fast = request({ type: Command.WriteZeroes, offset: 0, length: 4096, flags: CommandFlag.FastZero });
    const slow = request({ type: Command.Trim, offset: 0, length: 4096 });
    driver.feed(fast.bytes, slow.bytes);
    const [first, second] = [...driver.ios];
    driver.complete(first!, { ok: false, code: "ENOTSUP", message: "zero failed: ENOTSUP" });
    driver.complete(second!, { ok: false, code: "ENOTSUP", message: "trim failed: ENOTSUP" });
    expect(driver.readSimpleReply()).toEqual({ error: ErrorValue.NotSupported, cookie: fast.cookie });
    expect(driver.readSimpleReply()).toEqual({ error: ErrorValue.Invalid, cookie: slow.cookie });
  });

  test("long TRIM and WRITE_ZEROES are split into bounded pieces and answered once", () => {
    const driver = serving({ limits: { discardPieceBytesMax: 4096 } });
    const trim = request({ type: Command.Trim, offset: 512, length: 10240 });
    driver.feed(trim.bytes);
    expect(driver.ios.map((io) => [io.kind, (io as { offset: number }).offset, (io as { length: number }).length])).toEqual([
      ["trim", 512, 4096],
      ["trim", 4608, 4096],
      ["trim", 8704, 2048],
    ]);
    const [a, b, c] = [...driver.ios];
    driver.complete(b!);
    driver.complete(a!, { ok: false, code: "EIO", message: "trim failed: EIO" });
    expect(driver.unread).toBe(0);
    expect(driver.session.requestsInFlight).toBe(1);
    driver.complete(c!);
    expect(driver.readChunk().decoded).toMatchObject({ type: ReplyType.Error, error: ErrorValue.InputOutput });
    expect(driver.unread).toBe(0);
    expect(driver.session.requestsInFlight).toBe(0);
  });

  describe("refusals", () => {
    const cases: [string, Parameters<typeof request>[0], number][] = [
      ["unknown command", { type: 99, offset: 0, length: 0 }, ErrorValue.Invalid],
      ["RESIZE (experimental)", { type: Command.Resize, offset: 0, length: 0 }, ErrorValue.Invalid],
      ["unknown flag", { type: Command.Read, offset: 0, length: 512, flags: 1 << 9 }, ErrorValue.Invalid],
      ["REQ_ONE on READ", { type: Command.Read, offset: 0, length: 512, flags: CommandFlag.RequestOne }, ErrorValue.Invalid],
      ["NO_HOLE on TRIM", { type: Command.Trim, offset: 0, length: 512, flags: CommandFlag.NoHole }, ErrorValue.Invalid],
      ["FAST_ZERO on WRITE", { type: Command.Write, offset: 0, length: 0, flags: CommandFlag.FastZero }, ErrorValue.Invalid],
      ["misaligned READ offset", { type: Command.Read, offset: 100, length: 512 }, ErrorValue.Invalid],
      ["misaligned TRIM length", { type: Command.Trim, offset: 0, length: 100 }, ErrorValue.Invalid],
      ["READ past the end", { type: Command.Read, offset: (1 << 20) - 512, length: 1024 }, ErrorValue.Invalid],
      ["READ at 2^63", { type: Command.Read, offset: 2 ** 63, length: 512 }, ErrorValue.Invalid],
      ["TRIM past the end", { type: Command.Trim, offset: 1 << 20, length: 512 }, ErrorValue.Invalid],
      ["WRITE_ZEROES past the end", { type: Command.WriteZeroes, offset: 1 << 20, length: 512 }, ErrorValue.NoSpace],
      ["BLOCK_STATUS past the end", { type: Command.BlockStatus, offset: 1 << 20, length: 512 }, ErrorValue.Invalid],
      ["BLOCK_STATUS of zero length", { type: Command.BlockStatus, offset: 0, length: 0 }, ErrorValue.Invalid],
      ["CACHE past the end", { type: Command.Cache, offset: 1 << 21, length: 512 }, ErrorValue.Invalid],
      ["FLUSH with an offset", { type: Command.Flush, offset: 512, length: 0 }, ErrorValue.Invalid],
      ["READ longer than the maximum payload", { type: Command.Read, offset: 0, length: 64 * 1024 * 1024 }, ErrorValue.Overflow],
    ];
    for (const [name, fields, error] of cases) {
      test(`${name} → error ${error}, no IO, and the next request is still served`, () => {
        const driver = serving();
        const refused = request(fields);
        const next = request({ type: Command.Flush });
        driver.feed(refused.bytes, next.bytes);
        const chunk = driver.readChunk();
        expect(chunk.cookie).toBe(refused.cookie);
        expect(chunk.flags).toBe(ReplyFlag.Done);
        expect(chunk.decoded).toMatchObject({ type: ReplyType.Error, error });
        expect(driver.onlyIo().kind).toBe("flush");
      });
    }

    test("simple replies carry the same error values", () => {
      const driver = serving({ structured: false });
      const refused = request({ type: Command.Read, offset: 0, length: 64 * 1024 * 1024 });
      driver.feed(refused.bytes);
      expect(driver.readSimpleReply()).toEqual({ error: ErrorValue.Invalid, cookie: refused.cookie });
      const status = request({ type: Command.BlockStatus, offset: 0, length: 512 });
      driver.feed(status.bytes);
      expect(driver.readSimpleReply()).toEqual({ error: ErrorValue.Invalid, cookie: status.cookie });
    });

    test("a refused WRITE's payload is read past, so the stream stays in step", () => {
      const driver = serving({ limits: { requestBytesMax: 8192 } });
      const pastEnd = request({ type: Command.Write, offset: (1 << 20) - 512 }, new Uint8Array(1024).fill(0x25));
      const tooLong = request({ type: Command.Write, offset: 0 }, new Uint8Array(16384).fill(0x60)); // bytes that look like magics
      const misaligned = request({ type: Command.Write, offset: 1 }, new Uint8Array(512));
      const next = request({ type: Command.Read, offset: 0, length: 512 });
      const all = Buffer.concat([pastEnd.bytes, tooLong.bytes, misaligned.bytes, next.bytes]);
      for (let at = 0; at < all.length; at += 999) driver.feed(new Uint8Array(all.subarray(at, at + 999)));
      expect(driver.readChunk().decoded).toMatchObject({ error: ErrorValue.NoSpace });
      expect(driver.readChunk().decoded).toMatchObject({ error: ErrorValue.Invalid });
      expect(driver.readChunk().decoded).toMatchObject({ error: ErrorValue.Invalid });
      expect(driver.onlyIo()).toMatchObject({ kind: "read", offset: 0 });
      expect(driver.closed).toBe(false);
    });

    test("writes, trims and zeroes on a read-only export are EPERM; reads still work", () => {
      const driver = serving({ readOnly: true });
      const write = request({ type: Command.Write, offset: 0 }, new Uint8Array(512));
      const trim = request({ type: Command.Trim, offset: 0, length: 512 });
      const zero = request({ type: Command.WriteZeroes, offset: 0, length: 512 });
      const read = request({ type: Command.Read, offset: 0, length: 512 });
      driver.feed(write.bytes, trim.bytes, zero.bytes, read.bytes);
      for (const expected of [write, trim, zero]) {
        const chunk = driver.readChunk();
        expect(chunk.cookie).toBe(expected.cookie);
        expect(chunk.decoded).toMatchObject({ error: ErrorValue.Permission });
      }
      expect(driver.onlyIo().kind).toBe("read");
    });

    test("FLUSH is refused when the layer cannot flush, and never reaches it", () => {
      const catalog = new Map([["vol0", describeExport("vol0", { capabilities: { ...fullCapabilities, flush: false } })]]);
      const driver = new SessionDriver(catalog);
      driver.negotiate();
      driver.feed(request({ type: Command.Flush }).bytes);
      expect(driver.ios).toEqual([]);
      expect(driver.readChunk().decoded).toMatchObject({ error: ErrorValue.Invalid });
    });
  });

  test("zero-length READ, WRITE and TRIM succeed without IO", () => {
    const driver = serving();
    const read = request({ type: Command.Read, offset: 0, length: 0 });
    const write = request({ type: Command.Write, offset: 0, length: 0 });
    const trim = request({ type: Command.Trim, offset: 1 << 20, length: 0 });
    driver.feed(read.bytes, write.bytes, trim.bytes);
    expect(driver.readChunk()).toMatchObject({ cookie: read.cookie, flags: ReplyFlag.Done, decoded: { type: ReplyType.None } });
    expect(driver.readSimpleReply()).toEqual({ error: 0, cookie: write.cookie });
    expect(driver.readSimpleReply()).toEqual({ error: 0, cookie: trim.cookie });
    expect(driver.ios).toEqual([]);
  });

  test("BLOCK_STATUS answers one chunk for base:allocation; REQ_ONE gives one descriptor", () => {
    const driver = serving();
    const all = request({ type: Command.BlockStatus, offset: 0, length: 1 << 20 });
    const one = request({ type: Command.BlockStatus, offset: 0, length: 65536, flags: CommandFlag.RequestOne });
    driver.feed(all.bytes, one.bytes);
    const [first, second] = [...driver.ios];
    const extents = [
      { offset: 0, length: 65536, hole: false, zero: false },
      { offset: 65536, length: 131072, hole: true, zero: true },
      { offset: 196608, length: (1 << 20) - 196608, hole: false, zero: false },
    ];
    driver.complete(first!, { ok: true, extents });
    driver.complete(second!, { ok: true, extents });
    const chunk = driver.readChunk();
    expect(chunk.flags).toBe(ReplyFlag.Done);
    expect(chunk.decoded).toEqual({
      type: ReplyType.BlockStatus,
      contextId: 1,
      descriptors: [
        { length: 65536, flags: 0 },
        { length: 131072, flags: AllocationState.Hole | AllocationState.Zero },
        { length: (1 << 20) - 196608, flags: 0 },
      ],
    });
    expect(driver.readChunk().decoded).toEqual({ type: ReplyType.BlockStatus, contextId: 1, descriptors: [{ length: 65536, flags: 0 }] });
  });

  test("BLOCK_STATUS on a layer without an allocation map reports the range as data", () => {
    const catalog = new Map([["vol0", describeExport("vol0", { capabilities: { ...fullCapabilities, extents: false } })]]);
    const driver = new SessionDriver(catalog);
    driver.negotiate();
    driver.feed(request({ type: Command.BlockStatus, offset: 4096, length: 8192 }).bytes);
    expect(driver.ios).toEqual([]);
    expect(driver.readChunk().decoded).toEqual({ type: ReplyType.BlockStatus, contextId: 1, descriptors: [{ length: 8192, flags: 0 }] });
  });

  describe("blockStatusDescriptors", () => {
    const extent = (offset: number, length: number, hole = false) => ({ offset, length, hole, zero: hole });
    test("clips to the request, merges equal neighbours, never returns nothing", () => {
      expect(blockStatusDescriptors([extent(0, 4096), extent(4096, 4096), extent(8192, 4096, true)], 1024, 9216, false, 100)).toEqual([
        { length: 7168, flags: 0 },
        { length: 2048, flags: 3 },
      ]);
      expect(blockStatusDescriptors([], 0, 4096, false, 100)).toEqual([{ length: 4096, flags: 0 }]);
      expect(blockStatusDescriptors([extent(512, 4096)], 0, 4096, false, 100)).toEqual([{ length: 4096, flags: 0 }]); // does not cover the start
    });
    test("stops at gaps and at the descriptor limit; REQ_ONE keeps the first", () => {
      expect(blockStatusDescriptors([extent(0, 512), extent(1024, 512, true)], 0, 4096, false, 100)).toEqual([{ length: 512, flags: 0 }]);
      const alternating = Array.from({ length: 10 }, (_, index) => extent(index * 512, 512, index % 2 === 1));
      expect(blockStatusDescriptors(alternating, 0, 5120, false, 3)).toEqual([
        { length: 512, flags: 0 },
        { length: 512, flags: 3 },
        { length: 512, flags: 0 },
      ]);
      expect(blockStatusDescriptors(alternating, 0, 5120, true, 100)).toEqual([{ length: 512, flags: 0 }]);
      expect(blockStatusDescriptors([extent(0, 1 << 30)], 0, 4096, true, 100)).toEqual([{ length: 4096, flags: 0 }]);
    });
  });

  test("input pauses at the in-flight request limit and resumes as replies go out", () => {
    const driver = serving({ limits: { requestsInFlightMax: 2 } });
    const reads = [0, 1, 2].map((index) => request({ type: Command.Read, offset: index * 512, length: 512 }));
    driver.feed(...reads.map((entry) => entry.bytes));
    expect(driver.ios.length).toBe(2);
    expect(driver.inputPaused).toBe(true);
    driver.complete(driver.ios[0]!);
    expect(driver.inputPaused).toBe(true); // the third request took the free slot
    expect(driver.ios.map((io) => (io as { offset: number }).offset)).toEqual([512, 1024]);
    driver.complete(driver.ios[0]!);
    expect(driver.inputPaused).toBe(false);
  });

  test("a request waits, unread, for its memory; input pauses meanwhile; an announced payload always finishes arriving", () => {
    const driver = serving();
    driver.autoGrant = false;
    const first = request({ type: Command.Write, offset: 0 }, new Uint8Array(8192).fill(1));
    const second = request({ type: Command.Write, offset: 8192 }, new Uint8Array(8192).fill(2));
    driver.feed(first.bytes.subarray(0, 100));
    // The payload's memory is asked for before the header is consumed.
    expect(driver.memoryAsked).toBe(8192);
    expect(driver.inputPaused).toBe(true);
    expect(driver.ios).toEqual([]);
    driver.grantMemory();
    expect(driver.inputPaused).toBe(false); // the payload is announced now: it must be read
    driver.feed(first.bytes.subarray(100), second.bytes.subarray(0, 100));
    expect(driver.ios.length).toBe(1);
    expect(driver.memoryAsked).toBe(8192);
    expect(driver.inputPaused).toBe(true);
    driver.complete(driver.ios[0]!);
    expect(driver.readSimpleReply().cookie).toBe(first.cookie);
    expect(driver.memoryOutstanding).toBe(0); // the first payload's memory went back with its completion
    driver.grantMemory();
    driver.feed(second.bytes.subarray(100));
    expect(joinPayload((driver.onlyIo() as { data: Payload }).data)[0]).toBe(2);
    expect(driver.session.memoryHeldBytes).toBe(8192);
  });

  test("blocked output pauses input until it drains", () => {
    const driver = serving();
    driver.event({ type: "outputBlocked" });
    expect(driver.inputPaused).toBe(true);
    driver.feed(request({ type: Command.Flush }).bytes);
    expect(driver.ios).toEqual([]);
    driver.event({ type: "outputDrained" });
    expect(driver.inputPaused).toBe(false);
    expect(driver.onlyIo().kind).toBe("flush");
  });

  test("DISC finishes the requests in flight, sends their replies, then closes and releases", () => {
    const driver = serving();
    const write = request({ type: Command.Write, offset: 0 }, new Uint8Array(512));
    driver.feed(write.bytes, request({ type: Command.Disconnect }).bytes, request({ type: Command.Read, offset: 0, length: 512 }).bytes);
    expect(driver.closed).toBe(false);
    expect(driver.ios.length).toBe(1); // the read after DISC is never served
    driver.complete(driver.onlyIo());
    expect(driver.readSimpleReply()).toEqual({ error: 0, cookie: write.cookie });
    expect(driver.closes).toEqual([{ reason: "client disconnected (NBD_CMD_DISC)", graceful: true }]);
    expect(driver.releases).toBe(1);
    expect(driver.held).toBe(0);
  });

  test("revocation answers new requests with ESHUTDOWN, lets those in flight finish, then closes and releases", () => {
    const driver = serving();
    const inFlight = request({ type: Command.Read, offset: 0, length: 512 });
    driver.feed(inFlight.bytes);
    driver.event({ type: "revoked", reason: "volume deleted" });
    const late = request({ type: Command.Write, offset: 0 }, new Uint8Array(512));
    driver.feed(late.bytes);
    expect(driver.readChunk()).toMatchObject({ cookie: late.cookie, decoded: { error: ErrorValue.Shutdown } });
    expect(driver.closed).toBe(false);
    expect(driver.releases).toBe(0);
    driver.complete(driver.onlyIo());
    expect(driver.readChunk().cookie).toBe(inFlight.cookie);
    expect(driver.closes).toEqual([{ reason: "revoked: volume deleted", graceful: true }]);
    expect(driver.releases).toBe(1);
  });

  test("a drain with nothing in flight closes at once; in negotiation it closes without waiting", () => {
    const idle = serving();
    idle.event({ type: "shutdown" });
    expect(idle.closes).toEqual([{ reason: "server shutting down", graceful: true }]);
    expect(idle.releases).toBe(1);
    const negotiating = started();
    negotiating.event({ type: "shutdown" });
    expect(negotiating.closes[0]!.graceful).toBe(false);
    expect(negotiating.releases).toBe(0);
  });

  test("a disconnect with IO in flight releases the export only when the IO is done, and sends nothing", () => {
    const driver = serving();
    driver.feed(request({ type: Command.Write, offset: 0 }, new Uint8Array(512)).bytes);
    driver.event({ type: "disconnected" });
    expect(driver.releases).toBe(0);
    driver.complete(driver.onlyIo());
    expect(driver.releases).toBe(1);
    expect(driver.unread).toBe(0);
  });

  test("a bad request magic is a hard disconnect; IO already in flight still completes before release", () => {
    const driver = serving();
    driver.feed(request({ type: Command.Read, offset: 0, length: 512 }).bytes);
    const garbage = request({ type: Command.Read, offset: 0, length: 512 }).bytes;
    garbage[0] = 0x12;
    driver.feed(garbage);
    expect(driver.closes).toEqual([{ reason: expect.stringContaining("NBD_REQUEST_MAGIC"), graceful: false }]);
    expect(driver.releases).toBe(0);
    driver.complete(driver.onlyIo());
    expect(driver.releases).toBe(1);
    expect(driver.unread).toBe(0);
  });

  test("EXPORT_NAME sessions use simple replies and serve IO", () => {
    const driver = serving({ exportName: true, structured: false });
    const read = request({ type: Command.Read, offset: 0, length: 512 });
    driver.feed(read.bytes);
    driver.complete(driver.onlyIo());
    expect(driver.readSimpleReply()).toEqual({ error: 0, cookie: read.cookie });
    expect(driver.readRaw(512).length).toBe(512);
  });
});

describe("block sizes for clients that never asked for them", () => {
  function serving(options: Parameters<SessionDriver["negotiate"]>[0]): SessionDriver {
    const driver = new SessionDriver();
    driver.negotiate(options);
    return driver;
  }

  test("EXPORT_NAME and GO without NBD_INFO_BLOCK_SIZE are served at any alignment; GO that asked is held to 512", () => {
    for (const options of [{ exportName: true, structured: false }, { blockSizes: false }, { blockSizes: false, structured: false }]) {
      const driver = serving(options);
      expect(driver.session.minimumBlockBytes).toBe(1);
      const read = request({ type: Command.Read, offset: 1, length: 1048590 - 1048576 + 3 });
      const write = request({ type: Command.Write, offset: 513 }, new Uint8Array(7).fill(9));
      driver.feed(read.bytes, write.bytes);
      expect(driver.ios.map((io) => [io.kind, (io as { offset: number }).offset])).toEqual([
        ["read", 1],
        ["write", 513],
      ]);
      expect((driver.ios[1] as Extract<IoRequest, { kind: "write" }>).data).toEqual(new Uint8Array(7).fill(9));
    }
    const strict = serving({});
    expect(strict.session.minimumBlockBytes).toBe(512);
    const misaligned = request({ type: Command.Read, offset: 1, length: 512 });
    strict.feed(misaligned.bytes);
    expect(strict.readChunk()).toMatchObject({ cookie: misaligned.cookie, decoded: { error: ErrorValue.Invalid } });
    expect(strict.ios).toEqual([]);
  });

  test("an unaligned TRIM trims only the whole 512-byte blocks inside it; one inside a block is answered without IO", () => {
    const driver = serving({ blockSizes: false });
    const trim = request({ type: Command.Trim, offset: 100, length: 2000 });
    const tiny = request({ type: Command.Trim, offset: 600, length: 300 });
    driver.feed(trim.bytes, tiny.bytes);
    expect(driver.readSimpleReply()).toEqual({ error: 0, cookie: tiny.cookie });
    expect(driver.ios).toEqual([expect.objectContaining({ kind: "trim", offset: 512, length: 1536 })]);
    // WRITE_ZEROES is not advisory: it goes down as asked (the layers zero partial blocks).
    const zero = request({ type: Command.WriteZeroes, offset: 100, length: 2000 });
    driver.feed(zero.bytes);
    expect(driver.ios[1]).toMatchObject({ kind: "zero", offset: 100, length: 2000 });
  });
});

describe("memory and READ streams", () => {
  const piece = 1024;
  function serving(options: Parameters<SessionDriver["negotiate"]>[0] = {}): SessionDriver {
    const catalog = new Map([["vol0", describeExport("vol0")]]);
    const driver = new SessionDriver(catalog, { readPieceBytes: piece, readPiecesAheadMax: 2 });
    driver.negotiate(options);
    return driver;
  }
  const reads = (driver: SessionDriver) => driver.ios.filter((io): io is Extract<IoRequest, { kind: "read" }> => io.kind === "read");

  test("a READ longer than a piece is read two pieces ahead and sent as one reply, header first, pieces in order", () => {
    for (const structured of [true, false]) {
      const driver = serving({ structured });
      driver.autoSent = false;
      const read = request({ type: Command.Read, offset: 4096, length: 3 * piece + 512 });
      driver.feed(read.bytes);
      // Memory for the reply header and two pieces, not for the whole READ.
      expect(driver.memoryGranted).toBe((structured ? 28 : 16) + 2 * piece);
      expect(reads(driver).map((io) => [io.offset, io.target.length])).toEqual([
        [4096, piece],
        [4096 + piece, piece],
      ]);
      const [first, second] = reads(driver);
      second!.target.fill(2);
      driver.complete(second!);
      expect(driver.unread).toBe(0); // the second piece waits for the first
      first!.target.fill(1);
      driver.complete(first!);
      // Both pieces are out; the third is read only once the socket has taken one of them.
      expect(reads(driver)).toEqual([]);
      driver.acknowledgeSent();
      expect(reads(driver).map((io) => [io.offset, io.target.length])).toEqual([[4096 + 2 * piece, piece]]);
      reads(driver)[0]!.target.fill(3);
      driver.complete(reads(driver)[0]!);
      driver.acknowledgeSent();
      expect(reads(driver).map((io) => [io.offset, io.target.length])).toEqual([[4096 + 3 * piece, 512]]);
      reads(driver)[0]!.target.fill(4);
      driver.complete(reads(driver)[0]!);
      const expected = new Uint8Array(3 * piece + 512);
      expected.fill(1, 0, piece).fill(2, piece, 2 * piece).fill(3, 2 * piece, 3 * piece).fill(4, 3 * piece);
      if (structured) {
        const chunk = driver.readChunk();
        expect(chunk.cookie).toBe(read.cookie);
        expect(chunk.flags).toBe(ReplyFlag.Done);
        expect(chunk.decoded).toEqual({ type: ReplyType.OffsetData, offset: 4096, data: expected });
      } else {
        expect(driver.readSimpleReply()).toEqual({ error: 0, cookie: read.cookie });
        expect(driver.readRaw(expected.length)).toEqual(expected);
      }
      expect(driver.unread).toBe(0);
      driver.acknowledgeSent();
      driver.acknowledgeSent();
      expect(driver.memoryOutstanding).toBe(0);
      expect(driver.session.requestsInFlight).toBe(0);
    }
  });

  test("replies that are ready while a READ stream is on the wire wait for its last piece; a second long READ waits for the first", () => {
    const driver = serving();
    const long = request({ type: Command.Read, offset: 0, length: 2 * piece });
    const short = request({ type: Command.Read, offset: 0, length: 512 });
    const flush = request({ type: Command.Flush });
    const second = request({ type: Command.Read, offset: 0, length: 2 * piece });
    driver.feed(long.bytes, short.bytes, flush.bytes, second.bytes);
    // The second long READ is not consumed while the first stream runs.
    expect(driver.ios.map((io) => io.kind)).toEqual(["read", "read", "read", "flush"]);
    expect(driver.inputPaused).toBe(true);
    const [pieceOne, pieceTwo, shortRead, flushIo] = driver.ios;
    driver.complete(pieceOne!); // the stream's header and first piece go out
    const streamStart = driver.unread;
    driver.complete(shortRead!);
    driver.complete(flushIo!);
    expect(driver.unread).toBe(streamStart); // held back: they may not land between the stream's pieces
    driver.complete(pieceTwo!);
    expect(driver.readChunk()).toMatchObject({ cookie: long.cookie, flags: ReplyFlag.Done });
    expect(driver.readChunk()).toMatchObject({ cookie: short.cookie, decoded: { type: ReplyType.OffsetData } });
    expect(driver.readSimpleReply()).toEqual({ error: 0, cookie: flush.cookie });
    // Now the second long READ is consumed and streams.
    expect(driver.ios.map((io) => [io.kind, (io as { offset: number }).offset])).toEqual([
      ["read", 0],
      ["read", piece],
    ]);
    for (const io of [...driver.ios]) driver.complete(io);
    expect(driver.readChunk()).toMatchObject({ cookie: second.cookie, flags: ReplyFlag.Done });
    expect(driver.memoryOutstanding).toBe(0);
  });

  test("a piece that fails before the reply began is an ordinary error reply; after, a hard disconnect", () => {
    const early = serving();
    const read = request({ type: Command.Read, offset: 0, length: 2 * piece });
    early.feed(read.bytes);
    const [one, two] = early.ios;
    early.complete(two!, { ok: false, code: "EIO", message: "read failed: EIO" });
    expect(early.unread).toBe(0); // the first piece is still at storage
    early.complete(one!);
    expect(early.readChunk()).toMatchObject({ cookie: read.cookie, decoded: { type: ReplyType.Error, error: ErrorValue.InputOutput } });
    expect(early.unread).toBe(0);
    expect(early.closed).toBe(false);
    expect(early.memoryOutstanding).toBe(0);

    const late = serving({ structured: false });
    late.feed(request({ type: Command.Read, offset: 0, length: 2 * piece }).bytes);
    const [first, second] = late.ios;
    late.complete(first!);
    late.complete(second!, { ok: false, code: "EIO", message: "read failed: EIO" });
    expect(late.closes).toEqual([{ reason: expect.stringContaining("READ failed after its reply began"), graceful: false }]);
    late.event({ type: "disconnected" });
    expect(late.memoryOutstanding).toBe(0);
    expect(late.releases).toBe(1);
  });

  test("a client that hangs up with work queued: nothing more reaches the layer, no reply is kept, every byte of memory goes back", () => {
    const driver = serving();
    driver.autoSent = false;
    const requests = [
      request({ type: Command.Read, offset: 0, length: 4 * piece }),
      request({ type: Command.Read, offset: 0, length: 512 }),
      request({ type: Command.Write, offset: 0 }, new Uint8Array(1024).fill(5)),
      request({ type: Command.Read, offset: 0, length: 4 * piece }),
    ];
    driver.feed(...requests.map((entry) => entry.bytes));
    const before = driver.ios.length;
    expect(before).toBe(4); // two pieces, the short read, the write; the second stream waits
    driver.complete(driver.ios[0]!); // the first piece goes out and waits to be written
    driver.event({ type: "disconnected" });
    for (const io of [...driver.ios]) driver.complete(io);
    expect(driver.ios).toEqual([]); // no later piece, and the waiting stream never started
    expect(driver.memoryOutstanding).toBe(0);
    expect(driver.session.memoryHeldBytes).toBe(0);
    expect(driver.releases).toBe(1);
  });

  test("a request waiting for memory when a drain begins is answered ESHUTDOWN at once; the late grant goes back", () => {
    const driver = serving();
    const write = request({ type: Command.Write, offset: 0 }, new Uint8Array(512));
    driver.feed(write.bytes);
    driver.autoGrant = false;
    const read = request({ type: Command.Read, offset: 0, length: 512 });
    driver.feed(read.bytes);
    expect(driver.memoryAsked).toBeGreaterThan(0);
    driver.event({ type: "shutdown" });
    expect(driver.readChunk()).toMatchObject({ cookie: read.cookie, decoded: { error: ErrorValue.Shutdown } });
    driver.complete(driver.onlyIo());
    expect(driver.readSimpleReply()).toEqual({ error: 0, cookie: write.cookie });
    expect(driver.closes).toEqual([{ reason: "server shutting down", graceful: true }]);
    driver.grantMemory();
    expect(driver.memoryOutstanding).toBe(0);
  });
});
