// The pairing exchange's messages on the wire (docs/security.md, "Pairing"): each is one frame, a
// 4-byte big-endian length and that many bytes of JSON, at most pairingMessageBytesMax. Pure
// functions over bytes (CONVENTIONS.md §6): `decodePairingFrame` returns a message and its size,
// NEED_MORE, or throws a PairingDecodeError; every field is checked here, so the core only ever
// sees well-formed messages. The offers and verdicts travel as JSON text inside the message, because
// their exact bytes are what the key confirmation authenticates.
import { pairingMessageBytesMax } from "../../constants.ts";

export const pairingProtocol = "tandem-pairing";
export const pairingProtocolVersion = 1;

export const NEED_MORE = Symbol("need more bytes");

export class PairingDecodeError extends Error {
  override name = "PairingDecodeError";
}

/** Why a listener refuses a code before any key is agreed (not authenticated: informative only). */
export type RefusalCode = "expired" | "attempts-exhausted" | "code-used" | "busy";

export type PairingMessage =
  /** Listener → dialer on connect: who it is and its fresh nonce (half of the session id). */
  | { type: "hello"; protocol: typeof pairingProtocol; version: number; nonce: string }
  /** Dialer → listener: its nonce, its CPace share and its offer (JSON text). */
  | { type: "share"; nonce: string; share: string; offer: string }
  /** Listener → dialer: its share, its offer and its key confirmation tag. */
  | { type: "reply"; share: string; offer: string; tag: string }
  /** Dialer → listener: its key confirmation tag and its verdict (JSON text) with the verdict's tag. */
  | { type: "confirm"; tag: string; verdict: string; verdictTag: string }
  /** Listener → dialer: its verdict; both write their configuration only after this. */
  | { type: "done"; verdict: string; verdictTag: string }
  | { type: "refused"; code: RefusalCode; message: string };

const hexPattern = (bytes: number) => new RegExp(`^[0-9a-f]{${bytes * 2}}$`);
const nonceHex = hexPattern(16);
const shareHex = hexPattern(32);
const tagHex = hexPattern(64);
const refusalCodes: readonly RefusalCode[] = ["expired", "attempts-exhausted", "code-used", "busy"];

/** Each message's fields: a checker per field. */
const shapes: Record<PairingMessage["type"], Record<string, (value: unknown) => boolean>> = {
  hello: { protocol: (value) => value === pairingProtocol, version: (value) => Number.isInteger(value), nonce: (value) => typeof value === "string" && nonceHex.test(value) },
  share: { nonce: (value) => typeof value === "string" && nonceHex.test(value), share: (value) => typeof value === "string" && shareHex.test(value), offer: (value) => typeof value === "string" },
  reply: { share: (value) => typeof value === "string" && shareHex.test(value), offer: (value) => typeof value === "string", tag: (value) => typeof value === "string" && tagHex.test(value) },
  confirm: { tag: (value) => typeof value === "string" && tagHex.test(value), verdict: (value) => typeof value === "string", verdictTag: (value) => typeof value === "string" && tagHex.test(value) },
  done: { verdict: (value) => typeof value === "string", verdictTag: (value) => typeof value === "string" && tagHex.test(value) },
  refused: { code: (value) => refusalCodes.includes(value as RefusalCode), message: (value) => typeof value === "string" },
};

const encoder = new TextEncoder();
const decoder = new TextDecoder("utf-8", { fatal: true });

export function encodePairingMessage(message: PairingMessage): Uint8Array {
  const body = encoder.encode(JSON.stringify(message));
  if (body.length > pairingMessageBytesMax) throw new PairingDecodeError(`a ${message.type} message of ${body.length} bytes exceeds ${pairingMessageBytesMax}`);
  const frame = new Uint8Array(4 + body.length);
  new DataView(frame.buffer).setUint32(0, body.length);
  frame.set(body, 4);
  return frame;
}

/** One message from `bytes` at `offset`, NEED_MORE until the whole frame is there; throws on malformed input. */
export function decodePairingFrame(bytes: Uint8Array, offset = 0): { message: PairingMessage; size: number } | typeof NEED_MORE {
  if (bytes.length - offset < 4) return NEED_MORE;
  const length = new DataView(bytes.buffer, bytes.byteOffset + offset, 4).getUint32(0);
  if (length === 0 || length > pairingMessageBytesMax) throw new PairingDecodeError(`a frame of ${length} bytes (1..${pairingMessageBytesMax} allowed)`);
  if (bytes.length - offset < 4 + length) return NEED_MORE;
  let parsed: unknown;
  try {
    parsed = JSON.parse(decoder.decode(bytes.subarray(offset + 4, offset + 4 + length)));
  } catch {
    throw new PairingDecodeError("a frame that is not UTF-8 JSON");
  }
  if (typeof parsed !== "object" || parsed === null || Array.isArray(parsed)) throw new PairingDecodeError("a frame that is not a JSON object");
  const record = parsed as Record<string, unknown>;
  const shape = typeof record.type === "string" ? shapes[record.type as PairingMessage["type"]] : undefined;
  if (!shape || !Object.hasOwn(shapes, record.type as string)) throw new PairingDecodeError(`an unknown message type ${JSON.stringify(record.type)}`);
  for (const key of Object.keys(record)) if (key !== "type" && !(key in shape)) throw new PairingDecodeError(`${record.type}: unknown field ${key}`);
  for (const [field, check] of Object.entries(shape)) if (!check(record[field])) throw new PairingDecodeError(`${record.type}: bad or missing ${field}`);
  return { message: record as PairingMessage, size: 4 + length };
}

/** Accumulates stream chunks and yields whole messages (any chunking). */
export class PairingFramer {
  private buffer = new Uint8Array(0);

  push(chunk: Uint8Array): PairingMessage[] {
    const joined = new Uint8Array(this.buffer.length + chunk.length);
    joined.set(this.buffer, 0);
    joined.set(chunk, this.buffer.length);
    const messages: PairingMessage[] = [];
    let offset = 0;
    for (;;) {
      const decoded = decodePairingFrame(joined, offset);
      if (decoded === NEED_MORE) break;
      messages.push(decoded.message);
      offset += decoded.size;
    }
    this.buffer = joined.slice(offset);
    return messages;
  }
}
