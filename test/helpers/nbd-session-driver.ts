// A scripted stand-in for server.ts around the pure NbdSession, for unit tests: it answers
// openExport/listExports from a catalog the test gives (queueing events exactly as the real
// driver does), collects every byte the session sends into one stream the test reads back with
// the codec's client-side decoders, and holds IO requests until the test completes them, in any
// order, with any result. Memory reservations are granted at once unless a test holds them, sent
// bytes count as written at once unless a test holds the `sent` answers, and the driver keeps the
// books (granted, given back, travelling with sends) so a test can check nothing leaks.
import type { BlockCapabilities } from "../../src/node/block/layer.ts";
import {
  NEED_MORE,
  decodeChunkPayload,
  decodeExportNameReply,
  decodeOptionReply,
  decodeServerGreeting,
  decodeSimpleReply,
  decodeStructuredChunk,
  encodeClientFlags,
  encodeInfoRequest,
  encodeMetaContextRequest,
  encodeOptionRequest,
  encodeRequest,
  type ChunkPayload,
  type Decoded,
  type OptionReplyMessage,
  type Request,
  type SimpleReply,
  type StructuredChunk,
} from "../../src/node/export/nbd/codec.ts";
import { ClientFlag, Info, Option } from "../../src/node/export/nbd/protocol.ts";
import {
  NbdSession,
  type ExportDescription,
  type IoRequest,
  type IoResult,
  type SessionAction,
  type SessionEvent,
  type SessionLimits,
} from "../../src/node/export/nbd/session.ts";
import type { ExportInfo } from "../../src/node/export/types.ts";

export const fullCapabilities: BlockCapabilities = {
  readOnly: false,
  flush: true,
  fua: true,
  trim: true,
  zero: true,
  fastZero: true,
  extents: true,
  multiConn: true,
  cache: true,
  alignmentBytes: 4096,
};

export function describeExport(name: string, overrides: Partial<ExportDescription> = {}): ExportDescription {
  return { name, description: `volume ${name}`, sizeBytes: 1 << 20, readOnly: false, capabilities: fullCapabilities, ...overrides };
}

/** What the catalog says about a name: an export, or a refusal. */
export type CatalogEntry = ExportDescription | { refused: string };

export class SessionDriver {
  readonly session: NbdSession;
  private sent: Uint8Array[] = [];
  private sentBytes = 0;
  private joined = new Uint8Array(0);
  private readAt = 0;
  private readonly queue: SessionEvent[] = [];
  private stepping = false;
  /** IO requests issued and not yet completed, in issue order. */
  readonly ios: IoRequest[] = [];
  readonly closes: { reason: string; graceful: boolean }[] = [];
  readonly opens: { name: string; purpose: "info" | "go" }[] = [];
  readonly logs: { level: string; message: string }[] = [];
  /** Every action, in order, for tests that check sequences. */
  readonly history: SessionAction[] = [];
  releases = 0;
  inputPaused = false;
  /** Handles held: opened for "go" and not released. */
  held = 0;
  /** When false, openExport/listExports wait for the test to call answerOpen/answerList. */
  autoAnswer = true;
  /** When false, `reserve` waits for the test to call grantMemory. */
  autoGrant = true;
  /** When false, `sent` answers for tokened sends wait for the test to call acknowledgeSent. */
  autoSent = true;
  /** Budget books: granted to the session, given back by it or by the "socket" after a send. */
  memoryGranted = 0;
  memoryReturned = 0;
  /** The reservation asked for and not yet granted (0: none). */
  memoryAsked = 0;
  /** Tokens of sends not yet acknowledged (autoSent false). */
  readonly unsentTokens: number[] = [];

  constructor(
    readonly catalog: Map<string, CatalogEntry> = new Map([["vol0", describeExport("vol0")]]),
    limits: Partial<SessionLimits> = {},
  ) {
    this.session = new NbdSession(limits);
    this.apply(this.session.start());
  }

  event(event: SessionEvent): void {
    this.queue.push(event);
    if (this.stepping) return;
    this.stepping = true;
    try {
      for (let next = this.queue.shift(); next; next = this.queue.shift()) this.apply(this.session.handle(next));
    } finally {
      this.stepping = false;
    }
  }

  feed(...parts: Uint8Array[]): void {
    for (const bytes of parts) this.event({ type: "bytesReceived", bytes });
  }

  complete(io: IoRequest, result: IoResult = { ok: true }): void {
    const index = this.ios.indexOf(io);
    if (index < 0) throw new Error(`IO ${io.id} is not pending`);
    this.ios.splice(index, 1);
    this.event({ type: "ioCompleted", id: io.id, result });
  }

  /** Take the only pending IO (fails if there is not exactly one). */
  onlyIo(): IoRequest {
    if (this.ios.length !== 1) throw new Error(`expected one pending IO, have ${this.ios.length}`);
    return this.ios[0]!;
  }

  /** Grant the reservation the session is waiting for. */
  grantMemory(): void {
    const bytes = this.memoryAsked;
    if (bytes === 0) throw new Error("no reservation is waiting");
    this.memoryAsked = 0;
    this.memoryGranted += bytes;
    this.event({ type: "reserved", bytes });
  }

  /** Tell the session the oldest held tokened send has been written. */
  acknowledgeSent(): void {
    const token = this.unsentTokens.shift();
    if (token === undefined) throw new Error("no send waits for its acknowledgement");
    this.event({ type: "sent", token });
  }

  /** Budget memory neither given back nor travelling with a written send. */
  get memoryOutstanding(): number {
    return this.memoryGranted - this.memoryReturned;
  }

  answerOpen(name: string, purpose: "info" | "go"): void {
    const entry = this.catalog.get(name);
    if (!entry) return this.event({ type: "exportOpened", result: { ok: false, reason: "unknown", message: `no export named "${name}"` } });
    if ("refused" in entry) return this.event({ type: "exportOpened", result: { ok: false, reason: "refused", message: entry.refused } });
    if (purpose === "go") this.held++;
    this.event({ type: "exportOpened", result: { ok: true, export: entry } });
  }

  answerList(): void {
    const exports: ExportInfo[] = [];
    for (const [name, entry] of this.catalog) if (!("refused" in entry)) exports.push({ name, description: entry.description, sizeBytes: entry.sizeBytes });
    this.event({ type: "exportsListed", exports });
  }

  private apply(actions: SessionAction[]): void {
    for (const action of actions) {
      this.history.push(action);
      switch (action.type) {
        case "send":
          // A tokened send's buffer is reused by the session once written: keep a copy, as a socket would.
          this.sent.push(action.token === undefined ? action.bytes : action.bytes.slice());
          this.sentBytes += action.bytes.length;
          // The bytes count as written at once: their memory goes back to the budget.
          this.memoryReturned += action.reserved ?? 0;
          if (action.token !== undefined) {
            if (this.autoSent) this.queue.push({ type: "sent", token: action.token });
            else this.unsentTokens.push(action.token);
          }
          break;
        case "reserve":
          if (this.memoryAsked !== 0) throw new Error("the session asked for memory twice");
          this.memoryAsked = action.bytes;
          if (this.autoGrant) {
            this.memoryAsked = 0;
            this.memoryGranted += action.bytes;
            this.queue.push({ type: "reserved", bytes: action.bytes });
          }
          break;
        case "unreserve":
          this.memoryReturned += action.bytes;
          break;
        case "io":
          this.ios.push(action.io);
          break;
        case "openExport":
          this.opens.push({ name: action.name, purpose: action.purpose });
          if (this.autoAnswer) this.answerOpen(action.name, action.purpose);
          break;
        case "listExports":
          if (this.autoAnswer) this.answerList();
          break;
        case "input":
          this.inputPaused = action.paused;
          break;
        case "close":
          this.closes.push({ reason: action.reason, graceful: action.graceful });
          break;
        case "release":
          this.releases++;
          this.held--;
          break;
        case "log":
          this.logs.push({ level: action.level, message: action.message });
          break;
      }
    }
  }

  get closed(): boolean {
    return this.closes.length > 0;
  }

  /** Everything the session has sent, as one buffer (joined when a test reads). */
  private get output(): Uint8Array {
    if (this.joined.length !== this.sentBytes) {
      this.joined = new Uint8Array(Buffer.concat(this.sent));
      this.sent = [this.joined];
    }
    return this.joined;
  }

  /** Bytes sent and not yet read by the test. */
  get unread(): number {
    return this.sentBytes - this.readAt;
  }

  private read<T>(decode: (bytes: Uint8Array, offset: number) => Decoded<T>): T {
    const decoded = decode(this.output, this.readAt);
    if (decoded === NEED_MORE) throw new Error(`the session has not sent a whole message (${this.unread} bytes unread)`);
    this.readAt += decoded.size;
    return decoded.message;
  }

  readRaw(bytes: number): Uint8Array {
    if (this.unread < bytes) throw new Error(`wanted ${bytes} bytes, ${this.unread} unread`);
    const out = this.output.slice(this.readAt, this.readAt + bytes);
    this.readAt += bytes;
    return out;
  }

  readGreeting() {
    return this.read(decodeServerGreeting);
  }

  readOptionReply(): OptionReplyMessage {
    return this.read((bytes, offset) => decodeOptionReply(bytes, offset));
  }

  readExportNameReply(noZeroes: boolean) {
    return this.read((bytes, offset) => decodeExportNameReply(bytes, offset, noZeroes));
  }

  readSimpleReply(): SimpleReply {
    return this.read(decodeSimpleReply);
  }

  readChunk(): StructuredChunk & { decoded: ChunkPayload } {
    const chunk = this.read((bytes, offset) => decodeStructuredChunk(bytes, offset));
    return { ...chunk, decoded: decodeChunkPayload(chunk) };
  }

  /**
   * Negotiate up to transmission the way libnbd does (asking for block sizes unless
   * `blockSizes: false`, as old clients do not); returns after reading every reply.
   */
  negotiate(options: { name?: string; structured?: boolean; allocation?: boolean; exportName?: boolean; blockSizes?: boolean } = {}): void {
    const name = options.name ?? "vol0";
    this.readGreeting();
    this.feed(encodeClientFlags({ flags: ClientFlag.FixedNewstyle | ClientFlag.NoZeroes }));
    if (options.structured !== false) {
      this.feed(encodeOptionRequest({ option: Option.StructuredReply, data: new Uint8Array(0) }));
      this.readOptionReply();
      if (options.allocation !== false) {
        this.feed(encodeOptionRequest({ option: Option.SetMetaContext, data: encodeMetaContextRequest({ name, queries: ["base:allocation"] }) }));
        this.readOptionReply();
        this.readOptionReply();
      }
    }
    if (options.exportName) {
      this.feed(encodeOptionRequest({ option: Option.ExportName, data: new TextEncoder().encode(name) }));
      this.readExportNameReply(true);
      return;
    }
    const requests = options.blockSizes === false ? [] : [Info.BlockSize];
    this.feed(encodeOptionRequest({ option: Option.Go, data: encodeInfoRequest({ name, requests }) }));
    for (let reply = this.readOptionReply(); reply.type !== 1; reply = this.readOptionReply()) {
      if (reply.type >= 0x80000000) throw new Error(`GO failed with 0x${reply.type.toString(16)}`);
    }
  }
}

let nextCookie = 1n;
/** A request header (plus payload) with a fresh cookie unless one is given. */
export function request(fields: Partial<Request> & { type: number }, payload?: Uint8Array): { bytes: Uint8Array; cookie: bigint } {
  const cookie = fields.cookie ?? nextCookie++;
  const message: Request = { flags: 0, offset: 0, length: payload?.length ?? 0, ...fields, cookie };
  return { bytes: encodeRequest(message, payload), cookie };
}
