// A small NBD client for tests that need to see the protocol from the client's side: it
// negotiates (GO or EXPORT_NAME, with or without structured replies and base:allocation),
// pipelines requests with their own cookies, and turns replies into values or NbdReplyErrors.
// RawConnection is the same socket without any protocol, for tests that send bytes a real client
// never would. Both use the codec's client-side encoders and decoders.
import {
  NEED_MORE,
  decodeChunkPayload,
  decodeExportNameReply,
  decodeInfoReplyData,
  decodeOptionReply,
  decodeServerGreeting,
  decodeSimpleReply,
  decodeStructuredChunk,
  encodeClientFlags,
  encodeInfoRequest,
  encodeMetaContextRequest,
  encodeOptionRequest,
  encodeRequest,
  type BlockStatusDescriptor,
  type Decoded,
  type OptionReplyMessage,
} from "../../src/node/export/nbd/codec.ts";
import { ClientFlag, Command, Info, Option, OptionReply, ReplyFlag, ReplyType } from "../../src/node/export/nbd/protocol.ts";

export type NbdAddress = { unix: string } | { hostname: string; port: number };

/** A socket with a byte queue: read exactly N bytes, or learn that the peer closed. */
export class RawConnection {
  private chunks: Uint8Array[] = [];
  private buffered = 0;
  private waiter: (() => void) | undefined;
  private socket!: import("bun").Socket<undefined>;
  isClosed = false;
  readonly closed: Promise<void>;
  private resolveClosed!: () => void;

  private constructor() {
    this.closed = new Promise((resolve) => (this.resolveClosed = resolve));
  }

  static async open(address: NbdAddress): Promise<RawConnection> {
    const connection = new RawConnection();
    const handlers = {
      binaryType: "uint8array" as const,
      data: (_socket: unknown, bytes: Uint8Array) => {
        connection.chunks.push(bytes);
        connection.buffered += bytes.length;
        connection.wake();
      },
      close: () => {
        connection.isClosed = true;
        connection.resolveClosed();
        connection.wake();
      },
      error: () => {},
      drain: () => connection.flushPending(),
    };
    connection.socket = "unix" in address ? await Bun.connect({ unix: address.unix, socket: handlers }) : await Bun.connect({ hostname: address.hostname, port: address.port, socket: handlers });
    return connection;
  }

  private pending: Uint8Array[] = [];

  private wake(): void {
    const waiter = this.waiter;
    this.waiter = undefined;
    waiter?.();
  }

  /** Send everything, waiting for the socket to drain when it is full. */
  send(bytes: Uint8Array): void {
    if (this.isClosed) return;
    if (this.pending.length > 0) {
      this.pending.push(bytes);
      return;
    }
    const written = this.socket.write(bytes);
    if (written >= 0 && written < bytes.length) this.pending.push(bytes.subarray(written));
  }

  private flushPending(): void {
    while (this.pending.length > 0) {
      const head = this.pending[0]!;
      const written = this.socket.write(head);
      if (written < 0) return;
      if (written < head.length) {
        this.pending[0] = head.subarray(written);
        return;
      }
      this.pending.shift();
    }
  }

  get unsent(): number {
    return this.pending.reduce((sum, part) => sum + part.length, 0);
  }

  /** Resolves with `count` bytes, or undefined if the peer closes first. */
  async read(count: number): Promise<Uint8Array | undefined> {
    while (this.buffered < count) {
      if (this.isClosed) return undefined;
      await new Promise<void>((resolve) => (this.waiter = resolve));
    }
    const out = new Uint8Array(count);
    let filled = 0;
    while (filled < count) {
      const head = this.chunks[0]!;
      const take = Math.min(head.length, count - filled);
      out.set(head.subarray(0, take), filled);
      filled += take;
      if (take === head.length) this.chunks.shift();
      else this.chunks[0] = head.subarray(take);
    }
    this.buffered -= count;
    return out;
  }

  /** Decode one framed message, reading more as the decoder asks. Undefined if the peer closed first. */
  async decode<T>(decode: (bytes: Uint8Array, offset: number) => Decoded<T>): Promise<T | undefined> {
    for (;;) {
      const view = this.peekAll();
      const decoded = decode(view, 0);
      if (decoded !== NEED_MORE) {
        await this.read(decoded.size);
        return decoded.message;
      }
      if (this.isClosed) return undefined;
      await new Promise<void>((resolve) => (this.waiter = resolve));
    }
  }

  private peekAll(): Uint8Array {
    if (this.chunks.length === 1) return this.chunks[0]!;
    const joined = new Uint8Array(this.buffered);
    let at = 0;
    for (const chunk of this.chunks) {
      joined.set(chunk, at);
      at += chunk.length;
    }
    this.chunks = this.buffered > 0 ? [joined] : [];
    return joined;
  }

  /** Whatever has arrived, without waiting. */
  drainReceived(): Uint8Array {
    const all = this.peekAll();
    this.chunks = [];
    this.buffered = 0;
    return all;
  }

  end(): void {
    this.socket.end();
  }

  /** Stop reading from the socket (replies pile up in the kernel and then in the server). */
  pause(): void {
    this.socket.pause();
  }

  resume(): void {
    this.socket.resume();
  }

  terminate(): void {
    this.socket.terminate();
  }
}

export class NbdReplyError extends Error {
  constructor(
    readonly error: number,
    message: string,
  ) {
    super(`NBD error ${error}: ${message}`);
  }
}

export class NbdNegotiationError extends Error {
  constructor(readonly reply: number) {
    super(`negotiation failed with option reply 0x${reply.toString(16)}`);
  }
}

export interface ConnectOptions {
  name?: string;
  structured?: boolean;
  allocation?: boolean;
  /** End negotiation with NBD_OPT_EXPORT_NAME instead of NBD_OPT_GO. */
  exportName?: boolean;
  noZeroes?: boolean;
}

interface Pending {
  type: number;
  offset: number;
  length: number;
  resolve: (value: { data?: Uint8Array; descriptors?: BlockStatusDescriptor[] }) => void;
  reject: (error: Error) => void;
  data?: Uint8Array;
  descriptors?: BlockStatusDescriptor[];
  error?: NbdReplyError;
}

export class NbdClient {
  private nextCookie = 1n;
  private readonly pending = new Map<bigint, Pending>();
  private failure: Error | undefined;
  sizeBytes = 0;
  transmissionFlags = 0;
  blockSize: { minimumBytes: number; preferredBytes: number; maximumBytes: number } | undefined;
  readonly infos: ReturnType<typeof decodeInfoReplyData>[] = [];

  private constructor(
    readonly connection: RawConnection,
    readonly structured: boolean,
  ) {}

  static async connect(address: NbdAddress, options: ConnectOptions = {}): Promise<NbdClient> {
    const connection = await RawConnection.open(address);
    const structured = options.structured ?? true;
    const client = new NbdClient(connection, structured);
    try {
      await client.negotiate(options);
    } catch (error) {
      connection.terminate();
      throw error;
    }
    void client.readReplies();
    return client;
  }

  private async optionReply(): Promise<OptionReplyMessage> {
    const reply = await this.connection.decode((bytes, offset) => decodeOptionReply(bytes, offset));
    if (!reply) throw new Error("server closed the connection during negotiation");
    return reply;
  }

  private async negotiate(options: ConnectOptions): Promise<void> {
    const name = options.name ?? "vol0";
    const greeting = await this.connection.decode(decodeServerGreeting);
    if (!greeting) throw new Error("server closed before greeting");
    const noZeroes = options.noZeroes ?? true;
    this.connection.send(encodeClientFlags({ flags: ClientFlag.FixedNewstyle | (noZeroes ? ClientFlag.NoZeroes : 0) }));
    if (this.structured) {
      this.connection.send(encodeOptionRequest({ option: Option.StructuredReply, data: new Uint8Array(0) }));
      const reply = await this.optionReply();
      if (reply.type !== OptionReply.Ack) throw new NbdNegotiationError(reply.type);
      if (options.allocation !== false) {
        this.connection.send(encodeOptionRequest({ option: Option.SetMetaContext, data: encodeMetaContextRequest({ name, queries: ["base:allocation"] }) }));
        for (let next = await this.optionReply(); next.type !== OptionReply.Ack; next = await this.optionReply()) {
          if (next.type >= 0x80000000) throw new NbdNegotiationError(next.type);
        }
      }
    }
    if (options.exportName) {
      this.connection.send(encodeOptionRequest({ option: Option.ExportName, data: new TextEncoder().encode(name) }));
      const reply = await this.connection.decode((bytes, offset) => decodeExportNameReply(bytes, offset, noZeroes));
      if (!reply) throw new Error("server closed the connection after NBD_OPT_EXPORT_NAME");
      this.sizeBytes = reply.sizeBytes;
      this.transmissionFlags = reply.transmissionFlags;
      return;
    }
    this.connection.send(encodeOptionRequest({ option: Option.Go, data: encodeInfoRequest({ name, requests: [Info.BlockSize] }) }));
    for (;;) {
      const reply = await this.optionReply();
      if (reply.type === OptionReply.Ack) break;
      if (reply.type !== OptionReply.Info) throw new NbdNegotiationError(reply.type);
      const info = decodeInfoReplyData(reply.data);
      this.infos.push(info);
      if (info.type === Info.Export) {
        const exportInfo = info as { sizeBytes: number; transmissionFlags: number };
        this.sizeBytes = exportInfo.sizeBytes;
        this.transmissionFlags = exportInfo.transmissionFlags;
      }
      if (info.type === Info.BlockSize) this.blockSize = info as { minimumBytes: number; preferredBytes: number; maximumBytes: number };
    }
  }

  private async readReplies(): Promise<void> {
    try {
      for (;;) {
        const magic = await this.connection.read(4);
        if (!magic) break;
        const value = ((magic[0]! << 24) | (magic[1]! << 16) | (magic[2]! << 8) | magic[3]!) >>> 0;
        const rest = await this.connection.read(value === 0x668e33ef ? 16 : 12);
        if (!rest) break;
        const header = new Uint8Array(4 + rest.length);
        header.set(magic);
        header.set(rest, 4);
        if (value === 0x67446698) {
          const decoded = decodeSimpleReply(header, 0);
          if (decoded === NEED_MORE) throw new Error("short simple reply");
          const pending = this.take(decoded.message.cookie);
          if (decoded.message.error !== 0) {
            pending.reject(new NbdReplyError(decoded.message.error, "simple reply"));
            continue;
          }
          if (pending.type === Command.Read) {
            const data = await this.connection.read(pending.length);
            if (!data) break;
            pending.resolve({ data });
          } else {
            pending.resolve({});
          }
        } else if (value === 0x668e33ef) {
          const length = ((rest[12]! << 24) | (rest[13]! << 16) | (rest[14]! << 8) | rest[15]!) >>> 0;
          const payload = await this.connection.read(length);
          if (!payload) break;
          const whole = new Uint8Array(header.length + payload.length);
          whole.set(header);
          whole.set(payload, header.length);
          const decoded = decodeStructuredChunk(whole, 0);
          if (decoded === NEED_MORE) throw new Error("short chunk");
          const chunk = decoded.message;
          const pending = this.pending.get(chunk.cookie);
          if (!pending) throw new Error(`reply for unknown cookie ${chunk.cookie}`);
          const body = decodeChunkPayload(chunk);
          switch (body.type) {
            case ReplyType.OffsetData: {
              pending.data ??= new Uint8Array(pending.length);
              pending.data.set(body.data, body.offset - pending.offset);
              break;
            }
            case ReplyType.BlockStatus:
              pending.descriptors = body.descriptors;
              break;
            case ReplyType.Error:
            case ReplyType.ErrorOffset:
              pending.error ??= new NbdReplyError(body.error, body.message);
              break;
          }
          if (chunk.flags & ReplyFlag.Done) {
            this.pending.delete(chunk.cookie);
            if (pending.error) pending.reject(pending.error);
            else pending.resolve({ data: pending.data, descriptors: pending.descriptors });
          }
        } else {
          throw new Error(`bad reply magic 0x${value.toString(16)}`);
        }
      }
      this.fail(new Error("connection closed"));
    } catch (error) {
      this.fail(error as Error);
      this.connection.terminate();
    }
  }

  private take(cookie: bigint): Pending {
    const pending = this.pending.get(cookie);
    if (!pending) throw new Error(`reply for unknown cookie ${cookie}`);
    this.pending.delete(cookie);
    return pending;
  }

  private fail(error: Error): void {
    this.failure ??= error;
    for (const pending of this.pending.values()) pending.reject(error);
    this.pending.clear();
  }

  /** Send one request; resolves with the reply's data or block status, rejects with NbdReplyError. */
  request(type: number, offset: number, length: number, flags = 0, payload?: Uint8Array): Promise<{ data?: Uint8Array; descriptors?: BlockStatusDescriptor[] }> {
    if (this.failure) return Promise.reject(this.failure);
    const cookie = this.nextCookie++;
    return new Promise((resolve, reject) => {
      const pending: Pending = { type, offset, length, resolve, reject };
      this.pending.set(cookie, pending);
      this.connection.send(encodeRequest({ flags, type, cookie, offset, length }, payload));
    });
  }

  async read(offset: number, length: number, flags = 0): Promise<Uint8Array> {
    const reply = await this.request(Command.Read, offset, length, flags);
    return reply.data ?? new Uint8Array(0);
  }

  async write(offset: number, data: Uint8Array, flags = 0): Promise<void> {
    await this.request(Command.Write, offset, data.length, flags, data);
  }

  async flush(): Promise<void> {
    await this.request(Command.Flush, 0, 0);
  }

  async trim(offset: number, length: number, flags = 0): Promise<void> {
    await this.request(Command.Trim, offset, length, flags);
  }

  async zero(offset: number, length: number, flags = 0): Promise<void> {
    await this.request(Command.WriteZeroes, offset, length, flags);
  }

  async blockStatus(offset: number, length: number, flags = 0): Promise<BlockStatusDescriptor[]> {
    const reply = await this.request(Command.BlockStatus, offset, length, flags);
    return reply.descriptors ?? [];
  }

  /** NBD_CMD_DISC, then wait for the server to close. */
  async disconnect(): Promise<void> {
    this.connection.send(encodeRequest({ flags: 0, type: Command.Disconnect, cookie: this.nextCookie++, offset: 0, length: 0 }));
    await this.connection.closed;
  }

  terminate(): void {
    this.connection.terminate();
  }
}
