// One NBD client connection as a pure state machine (CONVENTIONS.md §1): events in (bytes from
// the socket, an export opened, an IO finished, the volume revoked), actions out (bytes to send, an
// export to open, IO to run, input to pause, the connection to close, the export handle to
// release). No sockets, files, clock or randomness: server.ts executes the actions, and the unit
// tests drive every negotiation path and every framing split through this class alone.
//
// What it owns:
//  - fixed newstyle negotiation: EXPORT_NAME, ABORT, LIST, INFO, GO, STRUCTURED_REPLY,
//    LIST/SET_META_CONTEXT (base:allocation), STARTTLS refused, everything else ERR_UNSUP;
//  - transmission framing with arbitrary chunking: request headers, WRITE payloads (a subarray of
//    the received chunk when the payload lies inside it, one copy otherwise), pipelining with
//    out-of-order replies, simple or structured replies as negotiated;
//  - request validation against the spec (flags, alignment, bounds, read-only, limits), so the
//    layer below only ever sees requests that are well-formed for the export;
//  - memory: every payload and reply is reserved from the node's budget (the driver holds it) before
//    its request header is consumed; READs longer than a piece are read and sent piece by piece,
//    so a reply the client does not read holds a piece or two, not the whole request;
//  - back-pressure: input pauses while too many requests are in flight, memory is not granted yet,
//    or the socket cannot take more output;
//  - block sizes: a client that asked for NBD_INFO_BLOCK_SIZE in GO must keep the advertised
//    minimum; one that did not (EXPORT_NAME, or GO without it) is served with a minimum of 1, as
//    the spec says a server SHOULD, and the layers below do any read-modify-write;
//  - teardown: DISC and drains finish the requests in flight, send their replies, then close;
//    the export handle is released only when nothing is in flight any more.
import { assert } from "../../../common/assert.ts";
import { bufferToFill, copyPayload, type Payload, payloadOf } from "../../../common/bytes.ts";
import type { BlockErrorCode } from "../../../common/errors.ts";
import type { BlockCapabilities, Extent } from "../../block/layer.ts";
import type { ExportInfo } from "../types.ts";
import {
  discardBytesMax,
  nbdBlockStatusExtentsMax,
  nbdOptionBytesMax,
  nbdOptionsPerNegotiationMax,
  nbdReadPieceBytes,
  nbdReadPiecesAheadMax,
  requestBytesMax,
  requestBytesMinimum,
  requestBytesPreferred,
  requestsInFlightPerConnectionMax,
} from "../../../constants.ts";
import {
  DecodeError,
  NEED_MORE,
  decodeClientFlags,
  decodeInfoRequest,
  decodeMetaContextRequest,
  decodeOptionHeader,
  decodeRequest,
  decodeString,
  encodeBlockStatusChunk,
  encodeErrorChunk,
  encodeExportNameReply,
  encodeInfoReplyData,
  encodeMetaContextReplyData,
  encodeNoneChunk,
  encodeOffsetDataChunk,
  encodeOffsetDataChunkHeader,
  encodeOptionReply,
  encodeServerGreeting,
  encodeServerReplyData,
  encodeSimpleReply,
  offsetDataChunkDataStart,
  plainAllocator,
  truncateString,
  type BlockStatusDescriptor,
  type BufferAllocator,
  type Request,
} from "./codec.ts";
import {
  AllocationState,
  BASE_ALLOCATION,
  ClientFlag,
  Command,
  CommandFlag,
  ErrorValue,
  HandshakeFlag,
  Info,
  Option,
  OptionReply,
  ReplyFlag,
  TransmissionFlag,
  clientFlagsBytes,
  optionHeaderBytes,
  requestHeaderBytes,
  simpleReplyHeaderBytes,
} from "./protocol.ts";

// ---- What the session needs to know about an export, and what it can ask for ----

/** An export as the session sees it when the client asks for it by name. */
export interface ExportDescription {
  /** Canonical name (the volume name). */
  name: string;
  description: string;
  sizeBytes: number;
  readOnly: boolean;
  capabilities: BlockCapabilities;
}

export type ExportOpenResult =
  | { ok: true; export: ExportDescription }
  /** unknown: no such export (ERR_UNKNOWN); refused: it exists but may not be opened now (ERR_POLICY). */
  | { ok: false; reason: "unknown" | "refused"; message: string };

export type IoResult = { ok: true; extents?: Extent[] } | { ok: false; code: BlockErrorCode; message: string };

/** IO the driver runs against the export's layer, then reports with `ioCompleted`. */
export type IoRequest =
  /** Fill `target` (a view into the reply buffer) with the bytes at `offset`. */
  | { kind: "read"; id: number; offset: number; target: Uint8Array }
  /** `data` is the session's alone and never changed: one buffer, or the pieces it arrived in. */
  | { kind: "write"; id: number; offset: number; data: Payload; fua: boolean }
  | { kind: "flush"; id: number }
  | { kind: "trim"; id: number; offset: number; length: number; fua: boolean }
  | { kind: "zero"; id: number; offset: number; length: number; fua: boolean; noHole: boolean; fastZero: boolean }
  | { kind: "cache"; id: number; offset: number; length: number }
  | { kind: "extents"; id: number; offset: number; length: number };

export type SessionEvent =
  | { type: "bytesReceived"; bytes: Uint8Array }
  | { type: "exportsListed"; exports: ExportInfo[] }
  | { type: "exportOpened"; result: ExportOpenResult }
  | { type: "ioCompleted"; id: number; result: IoResult }
  /** Memory asked for with a `reserve` action is granted (all of it). */
  | { type: "reserved"; bytes: number }
  /** The bytes of the `send` that carried `token` have all been handed to the socket. */
  | { type: "sent"; token: number }
  /** The socket took only part of what we sent; the driver queues the rest. */
  | { type: "outputBlocked" }
  | { type: "outputDrained" }
  /** The node took the volume away (forced delete, shutdown): finish what is in flight, then close. */
  | { type: "revoked"; reason: string }
  /** The server is stopping with drain: same as revoked. */
  | { type: "shutdown" }
  | { type: "handshakeTimedOut" }
  /** The connection is gone (client closed it, or the driver did). */
  | { type: "disconnected" };

export type SessionAction =
  /**
   * Bytes to the socket, in order. `reserved`: budget memory that now travels with these bytes;
   * the driver gives it back once they have left (or were dropped with the connection). `token`:
   * answer with a `sent` event once they have left.
   */
  | { type: "send"; bytes: Uint8Array; reserved?: number; token?: number }
  /** Ask the node's memory budget for `bytes` more; answered by a `reserved` event. One at a time. */
  | { type: "reserve"; bytes: number }
  /** Give `bytes` back to the node's memory budget. */
  | { type: "unreserve"; bytes: number }
  | { type: "listExports" }
  /** Open `name`; for "info" the driver releases the handle at once, for "go" it keeps it. */
  | { type: "openExport"; name: string; purpose: "info" | "go" }
  | { type: "io"; io: IoRequest }
  | { type: "input"; paused: boolean }
  /** graceful: send everything queued, then close; otherwise close at once. */
  | { type: "close"; reason: string; graceful: boolean }
  /** The export handle from a successful GO/EXPORT_NAME is no longer used. Emitted once. */
  | { type: "release" }
  | { type: "log"; level: "debug" | "info" | "warn"; message: string; fields?: Record<string, unknown> };

export interface SessionLimits {
  requestsInFlightMax: number;
  /** READs longer than this are read and sent in pieces of this size. */
  readPieceBytes: number;
  /** Pieces of one streamed READ at storage, waiting to be sent, or sent but not yet written. */
  readPiecesAheadMax: number;
  optionBytesMax: number;
  optionsMax: number;
  blockStatusExtentsMax: number;
  /** TRIM and WRITE_ZEROES longer than this are split into pieces of at most this length. */
  discardPieceBytesMax: number;
  requestBytesMax: number;
  /** The minimum block size for clients that asked for block sizes; others get 1. */
  minimumBlockBytes: number;
  preferredBlockBytes: number;
}

export const defaultSessionLimits: SessionLimits = {
  requestsInFlightMax: requestsInFlightPerConnectionMax,
  readPieceBytes: nbdReadPieceBytes,
  readPiecesAheadMax: nbdReadPiecesAheadMax,
  optionBytesMax: nbdOptionBytesMax,
  optionsMax: nbdOptionsPerNegotiationMax,
  blockStatusExtentsMax: nbdBlockStatusExtentsMax,
  discardPieceBytesMax: discardBytesMax,
  requestBytesMax,
  minimumBlockBytes: requestBytesMinimum,
  preferredBlockBytes: requestBytesPreferred,
};

/** Metadata context id we hand out for base:allocation (opaque to clients). */
export const allocationContextId = 1;

/** The transmission flags an export gets, from what its layer stack can honour. */
export function transmissionFlagsFor(description: ExportDescription, structuredReplies: boolean): number {
  const capabilities = description.capabilities;
  const writable = !description.readOnly && !capabilities.readOnly;
  let flags = TransmissionFlag.HasFlags;
  if (!writable) flags |= TransmissionFlag.ReadOnly;
  if (capabilities.flush) flags |= TransmissionFlag.SendFlush;
  // FUA is honoured natively, or by write-then-flush; a layer with neither has no volatile cache,
  // so every completed write is already durable and FUA costs nothing.
  if (writable) flags |= TransmissionFlag.SendFua;
  if (writable && capabilities.trim) flags |= TransmissionFlag.SendTrim;
  if (writable && capabilities.zero) flags |= TransmissionFlag.SendWriteZeroes;
  if (writable && capabilities.zero && capabilities.fastZero) flags |= TransmissionFlag.SendFastZero;
  // Every READ reply is a single content chunk, so "don't fragment" always holds.
  if (structuredReplies) flags |= TransmissionFlag.SendDontFragment;
  if (capabilities.multiConn) flags |= TransmissionFlag.CanMultiConnection;
  if (capabilities.cache) flags |= TransmissionFlag.SendCache;
  return flags;
}

/** Map a layer failure class to the NBD error value the spec asks for. */
export function errorValueFor(code: BlockErrorCode, fastZero = false): number {
  switch (code) {
    case "EPERM":
      return ErrorValue.Permission;
    case "EIO":
      return ErrorValue.InputOutput;
    case "EINVAL":
      return ErrorValue.Invalid;
    case "ENOSPC":
      return ErrorValue.NoSpace;
    case "EOVERFLOW":
      return ErrorValue.Overflow;
    case "ENOTSUP":
      // The spec reserves ENOTSUP for fast-zero refusals.
      return fastZero ? ErrorValue.NotSupported : ErrorValue.Invalid;
    case "ESHUTDOWN":
      return ErrorValue.Shutdown;
  }
}

/**
 * The BLOCK_STATUS descriptors for [offset, offset + length) from a layer's extents: clipped to
 * the request, adjacent equal states merged, at most `max` descriptors (one with REQ_ONE), and
 * always at least one so the client makes progress. Extents that do not start at `offset` or
 * leave gaps end the list there; if nothing usable remains, one descriptor with state 0 ("data,
 * contents unknown", always safe) covers the whole request.
 */
export function blockStatusDescriptors(extents: readonly Extent[], offset: number, length: number, requestOne: boolean, max: number): BlockStatusDescriptor[] {
  const end = offset + length;
  const descriptors: BlockStatusDescriptor[] = [];
  let position = offset;
  for (const extent of extents) {
    if (position >= end) break;
    const extentEnd = extent.offset + extent.length;
    if (!(extent.length > 0) || extentEnd <= position) continue;
    if (extent.offset > position) break; // a gap: the layer broke its contract; stop here
    const stop = Math.min(extentEnd, end);
    const flags = (extent.hole ? AllocationState.Hole : 0) | (extent.zero || extent.hole ? AllocationState.Zero : 0);
    const last = descriptors[descriptors.length - 1];
    if (last && last.flags === flags) last.length += stop - position;
    else if (descriptors.length < max) descriptors.push({ length: stop - position, flags });
    else break;
    position = stop;
  }
  if (descriptors.length === 0) return [{ length, flags: 0 }];
  if (requestOne) return descriptors.slice(0, 1);
  return descriptors;
}

// ---- Input buffering ----

/** Received bytes not yet consumed, as the chunks the socket delivered. Exported for its tests. */
export class InputQueue {
  private chunks: Uint8Array[] = [];
  private head = 0; // consumed bytes of chunks[0]
  length = 0;

  push(bytes: Uint8Array): void {
    if (bytes.length === 0) return;
    this.chunks.push(bytes);
    this.length += bytes.length;
  }

  /**
   * Where at least `bytes` contiguous bytes from the front lie: a chunk and the offset in it (the
   * bytes copied together first only if they span chunks). No view is made, which costs more than
   * decoding a request header.
   */
  peekAt(bytes: number): { chunk: Uint8Array; offset: number } | undefined {
    if (this.length < bytes) return undefined;
    const first = this.chunks[0]!;
    if (first.length - this.head >= bytes) return { chunk: first, offset: this.head };
    return { chunk: this.peek(bytes)!, offset: 0 };
  }

  /** At least `bytes` contiguous bytes from the front (copied together only if they span chunks). */
  peek(bytes: number): Uint8Array | undefined {
    if (this.length < bytes) return undefined;
    const first = this.chunks[0]!;
    if (first.length - this.head >= bytes) return this.head === 0 ? first : first.subarray(this.head);
    const joined = new Uint8Array(bytes);
    let filled = 0;
    while (filled < bytes) filled += this.copyOut(joined, filled, bytes - filled);
    // Put the joined bytes back at the front so the next peek or take finds them in one piece;
    // the chunk they were partly taken from keeps only its unconsumed rest.
    if (this.head > 0) {
      this.chunks[0] = this.chunks[0]!.subarray(this.head);
      this.head = 0;
    }
    this.chunks.unshift(joined);
    this.length += bytes;
    return joined;
  }

  /** A view of the next bytes, up to `max`, as far as the first chunk holds them (empty when nothing is queued). */
  takeUpTo(max: number): Uint8Array {
    const first = this.chunks[0];
    if (!first || max <= 0) return new Uint8Array(0);
    const count = Math.min(max, first.length - this.head);
    const view = first.subarray(this.head, this.head + count);
    this.advance(count);
    return view;
  }

  /** The next `bytes` bytes: a view when they lie in one chunk, else a copy. */
  take(bytes: number): Uint8Array {
    assert(bytes <= this.length, "take past the end of the input");
    const first = this.chunks[0];
    if (first && first.length - this.head >= bytes) {
      const view = first.subarray(this.head, this.head + bytes);
      this.advance(bytes);
      return view;
    }
    const out = new Uint8Array(bytes);
    let filled = 0;
    while (filled < bytes) filled += this.copyOut(out, filled, bytes - filled);
    return out;
  }

  /** Copy up to `max` bytes into `target` at `at`; returns how many. */
  copyOut(target: Uint8Array, at: number, max: number): number {
    const first = this.chunks[0];
    if (!first || max <= 0) return 0;
    const count = Math.min(max, first.length - this.head);
    target.set(first.subarray(this.head, this.head + count), at);
    this.advance(count);
    return count;
  }

  /** Drop up to `max` bytes; returns how many. */
  skip(max: number): number {
    let skipped = 0;
    while (skipped < max && this.chunks.length > 0) {
      const first = this.chunks[0]!;
      const count = Math.min(max - skipped, first.length - this.head);
      this.advance(count);
      skipped += count;
    }
    return skipped;
  }

  clear(): void {
    this.chunks = [];
    this.head = 0;
    this.length = 0;
  }

  private advance(bytes: number): void {
    this.head += bytes;
    this.length -= bytes;
    if (this.head === this.chunks[0]!.length) {
      this.chunks.shift();
      this.head = 0;
    }
  }
}

// ---- The session ----

type Phase =
  /** Greeting sent, waiting for the client's 32-bit flags. */
  | "clientFlags"
  | "options"
  | "transmission"
  | "closed";

/** An option waiting for the driver (export list or export open). */
type PendingOption =
  | { option: Option.List }
  | { option: Option.ExportName; name: string }
  | { option: Option.Info | Option.Go; name: string; requests: number[] };

/** What remains of a request whose bytes we must read past without using them. */
interface Discard {
  remaining: number;
  /** Run when the last byte is skipped. */
  then: () => void;
}

/**
 * A WRITE whose payload is still arriving: views of the received chunks it lies in, handed down as
 * Pieces without being copied together (the layers write them as they are), or, once the pieces
 * turn out small (a client trickling its payload), one buffer everything is copied into.
 */
interface PayloadCollection {
  request: Request;
  parts: Uint8Array[];
  buffer: Uint8Array | undefined;
  filled: number;
}

/** Pieces a payload may arrive in before the average piece is checked against payloadPieceBytesMin. */
const payloadPiecesFree = 8;
/** Below this average piece size a payload is copied into one buffer: tiny pieces cost more kept than copied. */
const payloadPieceBytesMin = 4096;

/** A request that has IO in flight. */
interface PendingRequest {
  request: Request;
  /** Budget memory reserved for it (payload or reply); given back or handed on with the reply. */
  memory: number;
  piecesRemaining: number;
  failure?: { code: BlockErrorCode; message: string };
  /** READ: the reply, data area filled by the IO. */
  reply?: Uint8Array;
  /** BLOCK_STATUS: extents from the IO. */
  extents?: Extent[];
  /** A READ longer than a piece: read and sent piece by piece. */
  stream?: ReadStream;
}

/**
 * A READ sent in pieces: the reply header goes out with the first piece, then each piece as it is
 * read, in order, with nothing else in between (a reply's data is contiguous on the wire). Its
 * memory is a fixed working set of `readPiecesAheadMax` pieces, reserved once and reused as the
 * socket takes each piece, so it never needs memory while it runs and cannot wait on itself.
 */
interface ReadStream {
  /** Token on its pieces' `send`s. */
  id: number;
  pending: PendingRequest;
  header: Uint8Array;
  end: number;
  /** Start of the next piece to read. */
  nextOffset: number;
  /** Start of the next piece to send. */
  sendOffset: number;
  /** Pieces read and not yet sent, by offset. */
  ready: Map<number, Uint8Array>;
  /** Pieces at storage now. */
  reading: number;
  /** Buffers of pieces sent and not yet written to the socket, in order. */
  unwritten: Uint8Array[];
  /** Buffers free for the next pieces. */
  spare: Uint8Array[];
  headerSent: boolean;
  /** Every piece is sent (or the READ failed): the next stream may start. */
  finished: boolean;
}

/** A reply waiting for a READ stream to finish (it may not go out between the stream's pieces). */
interface DeferredReply {
  bytes: Uint8Array;
  reserved: number;
}

/** Names for log lines and error messages. */
const commandNames: Record<number, string> = {
  [Command.Read]: "READ",
  [Command.Write]: "WRITE",
  [Command.Disconnect]: "DISC",
  [Command.Flush]: "FLUSH",
  [Command.Trim]: "TRIM",
  [Command.Cache]: "CACHE",
  [Command.WriteZeroes]: "WRITE_ZEROES",
  [Command.BlockStatus]: "BLOCK_STATUS",
};

function commandName(type: number): string {
  return commandNames[type] ?? `command ${type}`;
}

/** A refusal of a request: the error value and a message for the client. */
class Refusal {
  constructor(
    readonly error: number,
    readonly message: string,
  ) {}
}

export class NbdSession {
  private readonly limits: SessionLimits;
  private phase: Phase = "clientFlags";
  private readonly input = new InputQueue();
  private actions: SessionAction[] = [];

  // Negotiation state.
  private noZeroes = false;
  private structuredReplies = false;
  private optionsSeen = 0;
  private pendingOption: PendingOption | undefined;
  /** Export name the last SET_META_CONTEXT selected base:allocation for (undefined: none). */
  private allocationSelectedFor: string | undefined;

  // Transmission state.
  private exportDescription: ExportDescription | undefined;
  private transmissionFlags = 0;
  private allocationActive = false;
  private exportHeld = false;
  private released = false;
  /** The client asked for NBD_INFO_BLOCK_SIZE in GO, so it keeps our minimum block size. */
  private blockSizesAgreed = false;
  private nextIoId = 1;
  private readonly ioRequests = new Map<number, PendingRequest>();
  /** Piece IOs of READ streams: where each piece goes. */
  private readonly pieceIos = new Map<number, { stream: ReadStream; offset: number; buffer: Uint8Array }>();
  private requestCount = 0;
  /** The READ stream that owns the reply stream now (at most one), and those whose last pieces are still being written. */
  private stream: ReadStream | undefined;
  private readonly streams = new Map<number, ReadStream>();
  private nextStreamId = 1;
  private deferred: DeferredReply[] = [];
  /** The next request waits for: memory from the budget, or the current READ stream to finish. */
  private waitingFor: "memory" | "stream" | undefined;
  // Budget memory: granted and not yet given to a request; asked for and not yet granted; held in
  // total (credit plus what requests hold, not counting what went to the driver with a send).
  private memoryCredit = 0;
  private memoryAsked = 0;
  private memoryHeld = 0;
  private memoryToRelease = 0;
  private collection: PayloadCollection | undefined;
  private discard: Discard | undefined;
  private outputBlocked = false;
  private inputPaused = false;
  /** DISC received: no more requests; close once the ones in flight are answered. */
  private disconnectRequested = false;
  /** Revoked or shutting down: new requests get ESHUTDOWN; close once the ones in flight are answered. */
  private drainReason: string | undefined;

  /**
   * `allocate` provides the buffers READ data lands in; the driver may hand out memory aligned for
   * O_DIRECT. Allocation is the only thing asked of it.
   */
  constructor(
    limits: Partial<SessionLimits> = {},
    private readonly allocate: BufferAllocator = plainAllocator,
  ) {
    this.limits = { ...defaultSessionLimits, ...limits };
    assert(this.limits.requestsInFlightMax >= 1 && this.limits.readPieceBytes >= 1 && this.limits.readPiecesAheadMax >= 1, "session limits must admit one request");
  }

  /** The first bytes of the connection: the newstyle greeting. */
  start(): SessionAction[] {
    this.emitSend(encodeServerGreeting({ handshakeFlags: HandshakeFlag.FixedNewstyle | HandshakeFlag.NoZeroes }));
    return this.flush();
  }

  get state(): Phase {
    return this.phase;
  }

  /** Requests received and not yet answered (for status). */
  get requestsInFlight(): number {
    return this.requestCount;
  }

  /** Whether the session has asked its driver to stop reading requests. */
  get readingPaused(): boolean {
    return this.inputPaused;
  }

  /** The export this session serves, once transmission has begun. */
  get exportName(): string | undefined {
    return this.exportDescription?.name;
  }

  get structured(): boolean {
    return this.structuredReplies;
  }

  /** A WRITE's header was accepted and its payload has not all arrived. */
  get awaitingPayload(): boolean {
    return this.collection !== undefined;
  }

  /** Budget memory this session holds (granted, not given back, not handed to the driver with a send). */
  get memoryHeldBytes(): number {
    return this.memoryHeld;
  }

  /** The minimum block size requests must keep: ours if the client agreed to it, otherwise 1. */
  get minimumBlockBytes(): number {
    return this.blockSizesAgreed ? this.limits.minimumBlockBytes : 1;
  }

  handle(event: SessionEvent): SessionAction[] {
    switch (event.type) {
      case "bytesReceived":
        if (this.phase !== "closed") {
          this.input.push(event.bytes);
          this.pump();
        }
        break;
      case "exportsListed":
        this.onExportsListed(event.exports);
        break;
      case "exportOpened":
        this.onExportOpened(event.result);
        break;
      case "ioCompleted":
        this.onIoCompleted(event.id, event.result);
        break;
      case "reserved":
        this.onReserved(event.bytes);
        break;
      case "sent":
        this.onSent(event.token);
        break;
      case "outputBlocked":
        this.outputBlocked = true;
        break;
      case "outputDrained":
        this.outputBlocked = false;
        this.pump();
        break;
      case "revoked":
        this.beginDrain(`revoked: ${event.reason}`);
        break;
      case "shutdown":
        this.beginDrain("server shutting down");
        break;
      case "handshakeTimedOut":
        if (this.phase === "clientFlags" || this.phase === "options") this.close("handshake timed out", false);
        break;
      case "disconnected":
        if (this.phase !== "closed") {
          this.phase = "closed";
          this.dropQueuedWork();
        }
        this.maybeRelease();
        break;
    }
    this.updateInputPause();
    return this.flush();
  }

  // ---- Plumbing ----

  private flush(): SessionAction[] {
    if (this.memoryCredit > 0 && this.memoryAsked === 0 && this.waitingFor !== "memory") {
      // Granted for a request that no longer needs it (a drain began, the connection closed).
      this.releaseMemory(this.memoryCredit);
      this.memoryCredit = 0;
    }
    if (this.memoryToRelease > 0) {
      this.actions.push({ type: "unreserve", bytes: this.memoryToRelease });
      this.memoryToRelease = 0;
    }
    const out = this.actions;
    this.actions = [];
    return out;
  }

  private emitSend(bytes: Uint8Array, reserved = 0, token?: number): void {
    if (this.phase === "closed") {
      this.releaseMemory(reserved);
      return;
    }
    this.memoryHeld -= reserved;
    const action: SessionAction = { type: "send", bytes };
    if (reserved > 0) action.reserved = reserved;
    if (token !== undefined) action.token = token;
    this.actions.push(action);
  }

  /** A reply to a request: sent now, or after the READ stream that is on the wire. */
  private emitReply(bytes: Uint8Array, reserved = 0): void {
    if (this.stream?.headerSent && this.phase !== "closed") {
      this.deferred.push({ bytes, reserved });
      return;
    }
    this.emitSend(bytes, reserved);
  }

  /** Give budget memory back (sent as one `unreserve` when the step ends). */
  private releaseMemory(bytes: number): void {
    if (bytes === 0) return;
    assert(bytes <= this.memoryHeld, `the session gives back ${bytes} of the ${this.memoryHeld} bytes it holds`);
    this.memoryHeld -= bytes;
    this.memoryToRelease += bytes;
  }

  /** Take `bytes` of granted memory for the next request; false (and asked for) when not there yet. */
  private takeMemory(bytes: number): boolean {
    if (this.memoryCredit >= bytes) {
      this.memoryCredit -= bytes;
      return true;
    }
    if (this.memoryAsked === 0) {
      this.memoryAsked = bytes - this.memoryCredit;
      this.actions.push({ type: "reserve", bytes: this.memoryAsked });
    }
    return false;
  }

  private onReserved(bytes: number): void {
    this.memoryHeld += bytes;
    // A grant that crossed the connection's end goes straight back.
    if (this.phase === "closed") return this.releaseMemory(bytes);
    assert(bytes === this.memoryAsked, "a grant answers the one reservation asked for");
    this.memoryAsked = 0;
    this.memoryCredit += bytes;
    if (this.waitingFor === "memory") this.waitingFor = undefined;
    this.pump();
  }

  /** The connection is gone or closing: drop what waits, and give back the memory nothing uses any more. */
  private dropQueuedWork(): void {
    this.input.clear();
    if (this.collection) {
      this.releaseMemory(this.collection.request.length);
      this.collection = undefined;
    }
    this.discard = undefined;
    this.waitingFor = undefined;
    this.memoryAsked = 0; // the driver withdraws the request with the connection
    this.releaseMemory(this.memoryCredit);
    this.memoryCredit = 0;
    for (const reply of this.deferred) this.releaseMemory(reply.reserved);
    this.deferred = [];
    for (const stream of [...this.streams.values()]) {
      stream.ready.clear();
      stream.unwritten = []; // dropped with the connection's output
      if (!stream.finished) {
        stream.finished = true;
        this.requestCount--;
      }
      this.maybeRetireStream(stream);
    }
    this.stream = undefined;
  }

  private log(level: "debug" | "info" | "warn", message: string, fields?: Record<string, unknown>): void {
    this.actions.push(fields ? { type: "log", level, message, fields } : { type: "log", level, message });
  }

  private close(reason: string, graceful: boolean): void {
    if (this.phase === "closed") return;
    this.phase = "closed";
    this.dropQueuedWork();
    this.actions.push({ type: "close", reason, graceful });
    this.maybeRelease();
  }

  /** A breach of the protocol we cannot answer in-band: hard disconnect. */
  private violation(message: string): void {
    this.log("warn", `closing connection: ${message}`);
    this.close(message, false);
  }

  private maybeRelease(): void {
    if (this.phase === "closed" && this.exportHeld && !this.released && this.ioRequests.size === 0) {
      this.released = true;
      this.actions.push({ type: "release" });
    }
  }

  private shouldPauseInput(): boolean {
    if (this.phase === "closed") return false;
    if (this.pendingOption) return true;
    if (this.phase !== "transmission") return false;
    // A WRITE whose header we accepted must receive its payload, or nothing could ever complete.
    if (this.collection) return false;
    return this.disconnectRequested || this.outputBlocked || this.requestCount >= this.limits.requestsInFlightMax || this.waitingFor !== undefined;
  }

  private updateInputPause(): void {
    if (this.phase === "closed") return;
    const paused = this.shouldPauseInput();
    if (paused !== this.inputPaused) {
      this.inputPaused = paused;
      this.actions.push({ type: "input", paused });
    }
  }

  private beginDrain(reason: string): void {
    if (this.phase === "closed") return;
    if (this.phase !== "transmission") {
      this.close(reason, false);
      return;
    }
    this.drainReason ??= reason;
    // A request waiting for memory or for a READ stream is refused now instead (it needs neither).
    this.waitingFor = undefined;
    this.maybeFinish();
    // Requests already buffered get their ESHUTDOWN now.
    this.pump();
  }

  /** Close once DISC or a drain asked for it and nothing is in flight. */
  private maybeFinish(): void {
    if (this.phase !== "transmission" || this.ioRequests.size > 0 || this.stream) return;
    if (this.disconnectRequested) this.close("client disconnected (NBD_CMD_DISC)", true);
    else if (this.drainReason !== undefined) this.close(this.drainReason, true);
  }

  /** Consume as much buffered input as the current state allows. */
  private pump(): void {
    try {
      for (;;) {
        if (this.phase === "closed" || this.pendingOption) return;
        if (this.discard) {
          this.discard.remaining -= this.input.skip(this.discard.remaining);
          if (this.discard.remaining > 0) return;
          const then = this.discard.then;
          this.discard = undefined;
          then();
          continue;
        }
        let progressed: boolean;
        switch (this.phase) {
          case "clientFlags":
            progressed = this.readClientFlags();
            break;
          case "options":
            progressed = this.readOption();
            break;
          case "transmission":
            // A payload already announced always finishes arriving; new requests wait for room.
            if (this.collection) progressed = this.collectPayload();
            else if (this.shouldPauseInput()) return;
            else progressed = this.readRequest();
            break;
        }
        if (!progressed) return;
      }
    } catch (error) {
      if (!(error instanceof DecodeError)) throw error;
      this.violation(error.message);
    }
  }

  // ---- Negotiation ----

  private readClientFlags(): boolean {
    const view = this.input.peek(clientFlagsBytes);
    if (!view) return false;
    const decoded = decodeClientFlags(view, 0);
    assert(decoded !== NEED_MORE, "peeked enough bytes for the client flags");
    this.input.skip(clientFlagsBytes);
    const known = ClientFlag.FixedNewstyle | ClientFlag.NoZeroes;
    if ((decoded.message.flags & ~known) !== 0) {
      // The spec: the server MUST drop the connection on unknown client flags.
      this.violation(`unknown client flags 0x${decoded.message.flags.toString(16)}`);
      return false;
    }
    this.noZeroes = (decoded.message.flags & ClientFlag.NoZeroes) !== 0;
    this.phase = "options";
    return true;
  }

  private readOption(): boolean {
    const view = this.input.peek(optionHeaderBytes);
    if (!view) return false;
    const header = decodeOptionHeader(view, 0);
    assert(header !== NEED_MORE, "peeked enough bytes for an option header");
    const { option, length } = header.message;
    if (length > this.limits.optionBytesMax) {
      this.input.skip(optionHeaderBytes);
      if (!this.countOption()) return false;
      if (option === Option.ExportName) {
        // EXPORT_NAME cannot be answered with an error; the name is too long to be an export.
        this.violation(`NBD_OPT_EXPORT_NAME carries ${length} bytes`);
        return false;
      }
      this.log("debug", "skipping an oversized option", { option, length });
      this.discard = {
        remaining: length,
        then: () => {
          if (isKnownOption(option)) this.optionError(option, OptionReply.ErrorTooBig, `option data of ${length} bytes exceeds ${this.limits.optionBytesMax}`);
          else this.optionError(option, OptionReply.ErrorUnsupported, `option ${option} is not supported`);
        },
      };
      return true;
    }
    if (this.input.length < optionHeaderBytes + length) return false;
    this.input.skip(optionHeaderBytes);
    const data = this.input.take(length);
    if (!this.countOption()) return false;
    this.handleOption(option, data);
    return true;
  }

  private countOption(): boolean {
    this.optionsSeen++;
    if (this.optionsSeen > this.limits.optionsMax) {
      this.violation(`more than ${this.limits.optionsMax} options in one negotiation`);
      return false;
    }
    return true;
  }

  private optionReply(option: number, type: number, data: Uint8Array = new Uint8Array(0)): void {
    this.emitSend(encodeOptionReply({ option, type, data }));
  }

  private optionError(option: number, type: OptionReply, message: string): void {
    this.optionReply(option, type, truncateString(message));
  }

  private handleOption(option: number, data: Uint8Array): void {
    switch (option) {
      case Option.ExportName: {
        let name: string;
        try {
          name = decodeString(data, "export name");
        } catch (error) {
          this.violation(`NBD_OPT_EXPORT_NAME: ${(error as Error).message}`);
          return;
        }
        this.pendingOption = { option, name };
        this.actions.push({ type: "openExport", name, purpose: "go" });
        return;
      }
      case Option.Abort:
        // Data with ABORT is ignored, as the spec asks.
        this.optionReply(option, OptionReply.Ack);
        this.close("client aborted the negotiation", true);
        return;
      case Option.List:
        if (data.length !== 0) return this.optionError(option, OptionReply.ErrorInvalid, "NBD_OPT_LIST takes no data");
        this.pendingOption = { option };
        this.actions.push({ type: "listExports" });
        return;
      case Option.StartTls:
        return this.optionError(option, OptionReply.ErrorPolicy, "TLS is not offered: exports are local sockets or operator-named addresses");
      case Option.Info:
      case Option.Go: {
        let request: { name: string; requests: number[] };
        try {
          request = decodeInfoRequest(data);
        } catch (error) {
          if (!(error instanceof DecodeError)) throw error;
          return this.optionError(option, OptionReply.ErrorInvalid, error.message);
        }
        this.pendingOption = { option, name: request.name, requests: request.requests };
        this.actions.push({ type: "openExport", name: request.name, purpose: option === Option.Go ? "go" : "info" });
        return;
      }
      case Option.StructuredReply:
        if (data.length !== 0) return this.optionError(option, OptionReply.ErrorInvalid, "NBD_OPT_STRUCTURED_REPLY takes no data");
        this.structuredReplies = true;
        return this.optionReply(option, OptionReply.Ack);
      case Option.ListMetaContext:
      case Option.SetMetaContext:
        return this.handleMetaContext(option, data);
      default:
        return this.optionError(option, OptionReply.ErrorUnsupported, `option ${option} is not supported`);
    }
  }

  private handleMetaContext(option: Option.ListMetaContext | Option.SetMetaContext, data: Uint8Array): void {
    const setting = option === Option.SetMetaContext;
    // SET replaces the selection even when it fails.
    if (setting) this.allocationSelectedFor = undefined;
    if (setting && !this.structuredReplies) {
      return this.optionError(option, OptionReply.ErrorInvalid, "negotiate NBD_OPT_STRUCTURED_REPLY before NBD_OPT_SET_META_CONTEXT");
    }
    let request: { name: string; queries: string[] };
    try {
      request = decodeMetaContextRequest(data);
    } catch (error) {
      if (!(error instanceof DecodeError)) throw error;
      return this.optionError(option, OptionReply.ErrorInvalid, error.message);
    }
    let allocation = false;
    for (const query of request.queries) {
      const colon = query.indexOf(":");
      if (colon <= 0) return this.optionError(option, OptionReply.ErrorInvalid, `query "${query}" does not start with a namespace and a colon`);
      if (query === BASE_ALLOCATION) allocation = true;
      // "base:" is a wildcard when listing and selects nothing when setting; unknown namespaces
      // and unknown base: leaves are ignored, as the spec requires.
      else if (query === "base:" && !setting) allocation = true;
    }
    // LIST with no queries returns every context; SET with none selects nothing.
    if (!setting && request.queries.length === 0) allocation = true;
    if (allocation) {
      this.optionReply(option, OptionReply.MetaContext, encodeMetaContextReplyData({ id: setting ? allocationContextId : 0, name: BASE_ALLOCATION }));
      if (setting) this.allocationSelectedFor = request.name;
    }
    this.optionReply(option, OptionReply.Ack);
  }

  private onExportsListed(exports: ExportInfo[]): void {
    const pending = this.pendingOption;
    if (!pending || pending.option !== Option.List || this.phase !== "options") return;
    this.pendingOption = undefined;
    for (const info of exports) {
      this.optionReply(Option.List, OptionReply.Server, encodeServerReplyData({ name: info.name, details: info.description }));
    }
    this.optionReply(Option.List, OptionReply.Ack);
    this.pump();
  }

  private onExportOpened(result: ExportOpenResult): void {
    const pending = this.pendingOption;
    if (!pending || pending.option === Option.List || this.phase !== "options") {
      // The connection went away while the driver opened the export: give the handle back.
      const kept = pending && (pending.option === Option.Go || pending.option === Option.ExportName);
      if (result.ok && this.phase === "closed" && kept && !this.exportHeld) {
        this.exportHeld = true;
        this.maybeRelease();
      }
      return;
    }
    this.pendingOption = undefined;
    if (pending.option === Option.ExportName) {
      if (!result.ok) {
        // EXPORT_NAME cannot carry an error: the spec says terminate the session.
        this.log("info", "refusing NBD_OPT_EXPORT_NAME", { name: pending.name, reason: result.message });
        this.close(`export "${pending.name}" refused: ${result.message}`, false);
        return;
      }
      this.enterTransmission(result.export, pending.name, false);
      this.emitSend(encodeExportNameReply({ sizeBytes: result.export.sizeBytes, transmissionFlags: this.transmissionFlags }, this.noZeroes));
      this.pump();
      return;
    }
    const option = pending.option;
    if (!result.ok) {
      this.optionError(option, result.reason === "unknown" ? OptionReply.ErrorUnknown : OptionReply.ErrorPolicy, result.message);
      this.pump();
      return;
    }
    const description = result.export;
    const flags = transmissionFlagsFor(description, this.structuredReplies);
    this.optionReply(option, OptionReply.Info, encodeInfoReplyData({ type: Info.Export, sizeBytes: description.sizeBytes, transmissionFlags: flags }));
    const asked = new Set(pending.requests);
    if (asked.has(Info.Name)) this.optionReply(option, OptionReply.Info, encodeInfoReplyData({ type: Info.Name, name: description.name }));
    if (asked.has(Info.Description) && description.description !== "") {
      this.optionReply(option, OptionReply.Info, encodeInfoReplyData({ type: Info.Description, description: description.description }));
    }
    // A client that asks for block sizes gets our minimum and must keep it; one that does not is
    // served with the protocol's default minimum of 1 (the layers below read-modify-write), which
    // we still state, so the preferred and maximum sizes are known too. INFO answers what a GO
    // asking the same way would get.
    const agreed = asked.has(Info.BlockSize);
    this.optionReply(option, OptionReply.Info, encodeInfoReplyData({ type: Info.BlockSize, ...this.blockSizes(description, agreed) }));
    this.optionReply(option, OptionReply.Ack);
    if (option === Option.Go) this.enterTransmission(description, pending.name, agreed);
    this.pump();
  }

  private blockSizes(description: ExportDescription, agreed: boolean): { minimumBytes: number; preferredBytes: number; maximumBytes: number } {
    const minimumBytes = agreed ? this.limits.minimumBlockBytes : 1;
    const preferredBytes = Math.max(this.limits.preferredBlockBytes, description.capabilities.alignmentBytes, minimumBytes);
    return { minimumBytes, preferredBytes, maximumBytes: Math.max(this.limits.requestBytesMax, preferredBytes) };
  }

  private enterTransmission(description: ExportDescription, requestedName: string, blockSizesAgreed: boolean): void {
    this.phase = "transmission";
    this.blockSizesAgreed = blockSizesAgreed;
    this.exportDescription = description;
    this.exportHeld = true;
    this.transmissionFlags = transmissionFlagsFor(description, this.structuredReplies);
    this.allocationActive = this.structuredReplies && this.allocationSelectedFor === requestedName;
    this.log("debug", "transmission begins", { export: description.name, flags: this.transmissionFlags, structured: this.structuredReplies, minimumBlockBytes: this.minimumBlockBytes });
  }

  // ---- Transmission ----

  private readRequest(): boolean {
    const at = this.input.peekAt(requestHeaderBytes);
    if (!at) return false;
    const decoded = decodeRequest(at.chunk, at.offset); // throws DecodeError on a bad magic
    assert(decoded !== NEED_MORE, "peeked enough bytes for a request header");
    const request = decoded.message;
    const refusal = request.type === Command.Disconnect ? undefined : this.refusalFor(request);
    // The memory for the payload or the reply is taken before the header is consumed, so a
    // request that waits for it leaves the socket unread (back-pressure) and nothing half-done.
    const memory = refusal ? 0 : this.memoryFor(request);
    if (memory === "stream busy") {
      this.waitingFor = "stream";
      return false;
    }
    if (memory > 0 && !this.takeMemory(memory)) {
      this.waitingFor = "memory";
      return false;
    }
    this.waitingFor = undefined;
    this.input.skip(requestHeaderBytes);
    this.dispatch(request, refusal, memory);
    return true;
  }

  /** Budget memory a valid request needs before it can be accepted; a READ stream waits for the one on the wire. */
  private memoryFor(request: Request): number | "stream busy" {
    if (request.length === 0) return 0;
    if (request.type === Command.Write) return request.length;
    if (request.type !== Command.Read) return 0;
    if (request.length <= this.limits.readPieceBytes) return this.readReplyHeaderBytes() + request.length;
    if (this.stream) return "stream busy";
    return this.readReplyHeaderBytes() + Math.min(request.length, this.limits.readPieceBytes * this.limits.readPiecesAheadMax);
  }

  private readReplyHeaderBytes(): number {
    return this.structuredReplies ? offsetDataChunkDataStart : simpleReplyHeaderBytes;
  }

  private collectPayload(): boolean {
    const collection = this.collection!;
    const length = collection.request.length;
    const before = collection.filled;
    while (collection.filled < length && this.input.length > 0) {
      if (collection.buffer) {
        collection.filled += this.input.copyOut(collection.buffer, collection.filled, length - collection.filled);
        continue;
      }
      const part = this.input.takeUpTo(length - collection.filled);
      collection.parts.push(part);
      collection.filled += part.length;
      if (collection.parts.length > payloadPiecesFree && collection.filled < collection.parts.length * payloadPieceBytesMin) {
        collection.buffer = bufferToFill(length);
        copyPayload(payloadOf(collection.parts), collection.buffer);
        collection.parts = [];
      }
    }
    if (collection.filled < length) return collection.filled > before;
    this.collection = undefined;
    this.startWrite(collection.request, collection.buffer ?? payloadOf(collection.parts));
    return true;
  }

  private refusalFor(request: Request): Refusal | undefined {
    return this.drainReason !== undefined ? new Refusal(ErrorValue.Shutdown, "the export is shutting down") : this.validate(request);
  }

  private dispatch(request: Request, refusal: Refusal | undefined, memory: number): void {
    if (request.type === Command.Disconnect) {
      this.disconnectRequested = true;
      this.maybeFinish();
      return;
    }
    if (refusal && request.type === Command.Write && request.length > 0) {
      // The payload still arrives and must be read past to find the next request.
      this.discard = { remaining: request.length, then: () => this.replyRefusal(request, refusal) };
      return;
    }
    if (refusal) return this.replyRefusal(request, refusal);
    const { offset, length } = request;
    const flags = request.flags;
    const fua = (flags & CommandFlag.Fua) !== 0;
    switch (request.type) {
      case Command.Read: {
        if (length === 0) return this.replyEmptyRead(request);
        if (length > this.limits.readPieceBytes) return this.startStream(request, memory);
        const reply = this.structuredReplies
          ? encodeOffsetDataChunk({ flags: ReplyFlag.Done, cookie: request.cookie, offset }, length, this.allocate)
          : encodeSimpleReply({ error: 0, cookie: request.cookie }, length, this.allocate);
        const target = reply.subarray(this.readReplyHeaderBytes());
        const pending = this.track(request, memory, 1);
        pending.reply = reply;
        this.issue(pending, (id) => ({ kind: "read", id, offset, target }));
        return;
      }
      case Command.Write: {
        if (length === 0) return this.replyOk(request);
        // Usually the whole payload came with its header, in one chunk: a view of it.
        const first = this.input.takeUpTo(length);
        if (first.length === length) return this.startWrite(request, first);
        this.collection = { request, parts: first.length > 0 ? [first] : [], buffer: undefined, filled: first.length };
        this.collectPayload();
        return;
      }
      case Command.Flush: {
        const pending = this.track(request, 0, 1);
        this.issue(pending, (id) => ({ kind: "flush", id }));
        return;
      }
      case Command.Trim:
      case Command.WriteZeroes: {
        if (length === 0) return this.replyOk(request);
        let start = offset;
        let end = offset + length;
        if (request.type === Command.Trim && !this.blockSizesAgreed) {
          // TRIM is advisory: for a client that may send any alignment, only the whole blocks
          // inside the range are trimmed (a device cannot discard part of a block).
          const block = this.limits.minimumBlockBytes;
          start = Math.ceil(offset / block) * block;
          end = Math.floor((offset + length) / block) * block;
          if (end <= start) return this.replyOk(request);
        }
        const piece = this.limits.discardPieceBytesMax;
        const pieces = Math.ceil((end - start) / piece);
        const pending = this.track(request, 0, pieces);
        const noHole = (flags & CommandFlag.NoHole) !== 0;
        const fastZero = (flags & CommandFlag.FastZero) !== 0;
        for (let index = 0; index < pieces; index++) {
          const pieceOffset = start + index * piece;
          const pieceLength = Math.min(piece, end - pieceOffset);
          if (request.type === Command.Trim) this.issue(pending, (id) => ({ kind: "trim", id, offset: pieceOffset, length: pieceLength, fua }));
          else this.issue(pending, (id) => ({ kind: "zero", id, offset: pieceOffset, length: pieceLength, fua, noHole, fastZero }));
        }
        return;
      }
      case Command.Cache: {
        if (length === 0 || !this.exportDescription!.capabilities.cache) return this.replyOk(request);
        const pending = this.track(request, 0, 1);
        this.issue(pending, (id) => ({ kind: "cache", id, offset, length }));
        return;
      }
      case Command.BlockStatus: {
        const pending = this.track(request, 0, 1);
        if (!this.exportDescription!.capabilities.extents) {
          // No allocation map below: everything is data of unknown contents (state 0).
          pending.piecesRemaining = 0;
          pending.extents = [];
          this.finishRequest(pending);
          return;
        }
        this.issue(pending, (id) => ({ kind: "extents", id, offset, length }));
        return;
      }
    }
    assert(false, `validated request of unexpected type ${request.type}`);
  }

  private startWrite(request: Request, data: Payload): void {
    const pending = this.track(request, data.length, 1);
    const fua = (request.flags & CommandFlag.Fua) !== 0;
    this.issue(pending, (id) => ({ kind: "write", id, offset: request.offset, data, fua }));
  }

  /** Check a request against the spec and the export; undefined when it may proceed. */
  private validate(request: Request): Refusal | undefined {
    const description = this.exportDescription!;
    const flags = this.transmissionFlags;
    const name = commandName(request.type);
    const writeCommand = request.type === Command.Write || request.type === Command.WriteZeroes || request.type === Command.Trim;
    let allowedFlags = 0;
    if (flags & TransmissionFlag.SendFua) allowedFlags |= CommandFlag.Fua;
    switch (request.type) {
      case Command.Read:
        if (flags & TransmissionFlag.SendDontFragment) allowedFlags |= CommandFlag.DontFragment;
        break;
      case Command.Write:
      case Command.Cache:
        break;
      case Command.Flush:
        if (!(flags & TransmissionFlag.SendFlush)) return new Refusal(ErrorValue.Invalid, "FLUSH was not offered for this export");
        break;
      case Command.Trim:
        if (!(flags & TransmissionFlag.SendTrim)) {
          if (flags & TransmissionFlag.ReadOnly) return new Refusal(ErrorValue.Permission, "the export is read-only");
          return new Refusal(ErrorValue.Invalid, "TRIM was not offered for this export");
        }
        break;
      case Command.WriteZeroes:
        if (!(flags & TransmissionFlag.SendWriteZeroes)) {
          if (flags & TransmissionFlag.ReadOnly) return new Refusal(ErrorValue.Permission, "the export is read-only");
          return new Refusal(ErrorValue.Invalid, "WRITE_ZEROES was not offered for this export");
        }
        allowedFlags |= CommandFlag.NoHole;
        if (flags & TransmissionFlag.SendFastZero) allowedFlags |= CommandFlag.FastZero;
        break;
      case Command.BlockStatus:
        if (!this.allocationActive) return new Refusal(ErrorValue.Invalid, "BLOCK_STATUS needs a metadata context selected for this export");
        allowedFlags |= CommandFlag.RequestOne;
        break;
      default:
        return new Refusal(ErrorValue.Invalid, `${name} is not supported`);
    }
    if ((request.flags & ~allowedFlags) !== 0) return new Refusal(ErrorValue.Invalid, `flags 0x${request.flags.toString(16)} are not valid for ${name} here`);
    const { offset, length } = request;
    if (request.type === Command.Flush) {
      if (offset !== 0 || length !== 0) return new Refusal(ErrorValue.Invalid, "FLUSH must have zero offset and length");
      return undefined;
    }
    if (request.type === Command.Read && length > this.limits.requestBytesMax) {
      return new Refusal(this.structuredReplies ? ErrorValue.Overflow : ErrorValue.Invalid, `READ of ${length} bytes exceeds the maximum payload of ${this.limits.requestBytesMax}`);
    }
    if (request.type === Command.Write && length > this.limits.requestBytesMax) {
      return new Refusal(ErrorValue.Invalid, `WRITE of ${length} bytes exceeds the maximum payload of ${this.limits.requestBytesMax}`);
    }
    if (request.type === Command.BlockStatus && length === 0) return new Refusal(ErrorValue.Invalid, "BLOCK_STATUS of zero length");
    const minimum = this.minimumBlockBytes;
    if (offset % minimum !== 0 || length % minimum !== 0) {
      return new Refusal(ErrorValue.Invalid, `${name} at ${offset}+${length} is not aligned to the minimum block size of ${minimum}`);
    }
    if (!Number.isSafeInteger(offset) || offset + length > description.sizeBytes) {
      // The spec asks for ENOSPC on writes past the end and EINVAL on everything else.
      const error = request.type === Command.Write || request.type === Command.WriteZeroes ? ErrorValue.NoSpace : ErrorValue.Invalid;
      return new Refusal(error, `${name} at ${offset}+${length} is past the end of the export (${description.sizeBytes} bytes)`);
    }
    if (writeCommand && flags & TransmissionFlag.ReadOnly) return new Refusal(ErrorValue.Permission, "the export is read-only");
    return undefined;
  }

  private track(request: Request, memory: number, pieces: number): PendingRequest {
    this.requestCount++;
    return { request, memory, piecesRemaining: pieces };
  }

  private issue(pending: PendingRequest, make: (id: number) => IoRequest): number {
    const id = this.nextIoId++;
    this.ioRequests.set(id, pending);
    this.actions.push({ type: "io", io: make(id) });
    return id;
  }

  private onIoCompleted(id: number, result: IoResult): void {
    const pending = this.ioRequests.get(id);
    if (!pending) {
      this.log("warn", "completion for an unknown IO ignored", { id });
      return;
    }
    this.ioRequests.delete(id);
    const piece = this.pieceIos.get(id);
    if (piece) {
      this.pieceIos.delete(id);
      this.onPieceRead(piece.stream, piece.offset, piece.buffer, result);
    } else {
      pending.piecesRemaining--;
      if (!result.ok) pending.failure ??= { code: result.code, message: result.message };
      else if (result.extents) pending.extents = result.extents;
      if (pending.piecesRemaining === 0) this.finishRequest(pending);
    }
    this.maybeRelease();
    this.maybeFinish();
    this.pump();
  }

  private finishRequest(pending: PendingRequest): void {
    this.requestCount--;
    const { request } = pending;
    if (this.phase !== "transmission") return this.releaseMemory(pending.memory);
    if (pending.failure) {
      this.releaseMemory(pending.memory);
      const fastZero = request.type === Command.WriteZeroes && (request.flags & CommandFlag.FastZero) !== 0;
      const error = errorValueFor(pending.failure.code, fastZero);
      return this.replyRefusal(request, new Refusal(error, pending.failure.message));
    }
    switch (request.type) {
      case Command.Read:
        // The reply's memory goes with it to the driver, which gives it back once the socket took it.
        return this.emitReply(pending.reply!, pending.memory);
      case Command.BlockStatus: {
        const length = Math.min(request.length, this.exportDescription!.sizeBytes - request.offset);
        const requestOne = (request.flags & CommandFlag.RequestOne) !== 0;
        const descriptors = blockStatusDescriptors(pending.extents ?? [], request.offset, length, requestOne, this.limits.blockStatusExtentsMax);
        this.emitReply(encodeBlockStatusChunk({ flags: ReplyFlag.Done, cookie: request.cookie, contextId: allocationContextId, descriptors }));
        return;
      }
      default:
        this.releaseMemory(pending.memory); // a WRITE's payload is in the layer now
        return this.replyOk(request);
    }
  }

  // ---- READ streams ----

  private startStream(request: Request, memory: number): void {
    assert(!this.stream, "one READ stream at a time");
    const header = this.structuredReplies
      ? encodeOffsetDataChunkHeader({ flags: ReplyFlag.Done, cookie: request.cookie, offset: request.offset }, request.length)
      : encodeSimpleReply({ error: 0, cookie: request.cookie });
    const pending = this.track(request, memory, 0);
    const stream: ReadStream = {
      id: this.nextStreamId++,
      pending,
      header,
      end: request.offset + request.length,
      nextOffset: request.offset,
      sendOffset: request.offset,
      ready: new Map(),
      reading: 0,
      unwritten: [],
      spare: [],
      headerSent: false,
      finished: false,
    };
    pending.stream = stream;
    this.stream = stream;
    this.streams.set(stream.id, stream);
    this.advanceStream(stream);
  }

  /** Read the next pieces while the working set has room. */
  private advanceStream(stream: ReadStream): void {
    const ahead = this.limits.readPiecesAheadMax;
    while (!stream.finished && !stream.pending.failure && stream.nextOffset < stream.end && stream.reading + stream.ready.size + stream.unwritten.length < ahead) {
      const offset = stream.nextOffset;
      const length = Math.min(this.limits.readPieceBytes, stream.end - offset);
      const spare = stream.spare.pop();
      const buffer = spare ? spare.subarray(0, length) : this.allocate(length, 0);
      stream.nextOffset += length;
      stream.reading++;
      const id = this.issue(stream.pending, (ioId) => ({ kind: "read", id: ioId, offset, target: buffer }));
      this.pieceIos.set(id, { stream, offset, buffer });
    }
  }

  private onPieceRead(stream: ReadStream, offset: number, buffer: Uint8Array, result: IoResult): void {
    stream.reading--;
    const pending = stream.pending;
    if (stream.finished) return this.maybeRetireStream(stream);
    if (!result.ok) pending.failure ??= { code: result.code, message: result.message };
    else stream.ready.set(offset, buffer);
    if (pending.failure) {
      if (stream.headerSent) {
        // Part of the data is on the wire and the rest cannot be read: the only honest end of
        // this reply is a hard disconnect (the spec's answer for a READ that fails mid-reply).
        this.log("warn", "closing connection: a READ failed after its reply had begun", { offset, error: pending.failure.message });
        this.close(`READ failed after its reply began: ${pending.failure.message}`, false);
        return;
      }
      if (stream.reading > 0) return; // answer once every piece in flight is back
      stream.ready.clear();
      this.finishStream(stream);
      return this.replyRefusal(pending.request, new Refusal(errorValueFor(pending.failure.code), pending.failure.message));
    }
    this.sendStreamPieces(stream);
    this.advanceStream(stream);
  }

  /** Send the pieces that are next in order; the header goes out with the first. */
  private sendStreamPieces(stream: ReadStream): void {
    for (let piece = stream.ready.get(stream.sendOffset); piece; piece = stream.ready.get(stream.sendOffset)) {
      stream.ready.delete(stream.sendOffset);
      if (!stream.headerSent) {
        stream.headerSent = true;
        this.emitSend(stream.header);
      }
      this.emitSend(piece, 0, stream.id);
      stream.unwritten.push(piece);
      stream.sendOffset += piece.length;
    }
    if (stream.sendOffset === stream.end) this.finishStream(stream);
  }

  /** Every piece is sent (or the READ failed before any was): replies held back go out, the next stream may start. */
  private finishStream(stream: ReadStream): void {
    stream.finished = true;
    this.requestCount--;
    if (this.stream === stream) this.stream = undefined;
    if (this.waitingFor === "stream") this.waitingFor = undefined;
    const deferred = this.deferred;
    this.deferred = [];
    for (const reply of deferred) this.emitSend(reply.bytes, reply.reserved);
    this.maybeRetireStream(stream);
  }

  /** A finished stream whose pieces are all written (or dropped) gives its working set back. */
  private maybeRetireStream(stream: ReadStream): void {
    if (!stream.finished || stream.reading > 0 || stream.unwritten.length > 0 || !this.streams.has(stream.id)) return;
    this.streams.delete(stream.id);
    this.releaseMemory(stream.pending.memory);
  }

  private onSent(token: number): void {
    const stream = this.streams.get(token);
    // Nothing to do for a connection that closed meanwhile (its output was dropped).
    const buffer = stream?.unwritten.shift();
    if (!stream || !buffer) return;
    if (stream.finished) return this.maybeRetireStream(stream);
    stream.spare.push(buffer);
    this.advanceStream(stream);
  }

  private replyOk(request: Request): void {
    this.emitReply(encodeSimpleReply({ error: 0, cookie: request.cookie }));
  }

  private replyEmptyRead(request: Request): void {
    if (this.structuredReplies) this.emitReply(encodeNoneChunk({ flags: ReplyFlag.Done, cookie: request.cookie }));
    else this.emitReply(encodeSimpleReply({ error: 0, cookie: request.cookie }));
  }

  private replyRefusal(request: Request, refusal: Refusal): void {
    if (this.structuredReplies) {
      this.emitReply(encodeErrorChunk({ flags: ReplyFlag.Done, cookie: request.cookie, error: refusal.error, message: refusal.message }));
    } else {
      this.emitReply(encodeSimpleReply({ error: refusal.error, cookie: request.cookie }));
    }
  }
}


function isKnownOption(option: number): boolean {
  return option >= Option.ExportName && option <= Option.SetMetaContext && option !== Option.PeekExport;
}
