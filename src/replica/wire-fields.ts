// Reading and writing the fields of a message payload: bounds-checked little-endian integers,
// 64-bit values held to 2^53, length-prefixed UTF-8, raw bytes. A short or malformed payload is a
// DecodeError, never a wrong value.
import { DecodeError, WireStatus } from "./messages.ts";

export const textEncoder = new TextEncoder();
const textDecoder = new TextDecoder("utf-8", { fatal: true });

// Integers go in and out byte by byte: a DataView per message (several per mirrored write, on
// each node) costs more than the fields it would read, since the engine must give each fresh
// buffer an ArrayBuffer object first. Only the rare 64-bit bigint fields make one.

export function getUint16(bytes: Uint8Array, offset: number): number {
  return bytes[offset]! | (bytes[offset + 1]! << 8);
}

export function getUint32(bytes: Uint8Array, offset: number): number {
  return (bytes[offset]! | (bytes[offset + 1]! << 8) | (bytes[offset + 2]! << 16) | (bytes[offset + 3]! << 24)) >>> 0;
}

export function setUint16(bytes: Uint8Array, offset: number, value: number): void {
  bytes[offset] = value;
  bytes[offset + 1] = value >>> 8;
}

/** Little endian, `value` taken modulo 2^32 as DataView.setUint32 takes it. */
export function setUint32(bytes: Uint8Array, offset: number, value: number): void {
  const word = value >>> 0;
  bytes[offset] = word;
  bytes[offset + 1] = word >>> 8;
  bytes[offset + 2] = word >>> 16;
  bytes[offset + 3] = word >>> 24;
}

function bigView(bytes: Uint8Array): DataView {
  return new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
}

export class FieldWriter {
  readonly bytes: Uint8Array;
  offset: number;
  constructor(length: number, start: number) {
    this.bytes = new Uint8Array(length);
    this.offset = start;
  }
  u8(value: number): this {
    this.bytes[this.offset] = value;
    this.offset += 1;
    return this;
  }
  u16(value: number): this {
    setUint16(this.bytes, this.offset, value);
    this.offset += 2;
    return this;
  }
  u32(value: number): this {
    setUint32(this.bytes, this.offset, value);
    this.offset += 4;
    return this;
  }
  u64(value: number): this {
    setUint32(this.bytes, this.offset, value % 0x100000000);
    setUint32(this.bytes, this.offset + 4, Math.floor(value / 0x100000000));
    this.offset += 8;
    return this;
  }
  big64(value: bigint): this {
    bigView(this.bytes).setBigUint64(this.offset, value, true);
    this.offset += 8;
    return this;
  }
  raw(value: Uint8Array): this {
    this.bytes.set(value, this.offset);
    this.offset += value.length;
    return this;
  }
}

export class FieldReader {
  offset = 0;
  constructor(private readonly bytes: Uint8Array) {}
  private need(count: number, what: string): void {
    if (this.offset + count > this.bytes.length) throw new DecodeError(`payload too short for ${what}`);
  }
  u8(what: string): number {
    this.need(1, what);
    return this.bytes[this.offset++]!;
  }
  u16(what: string): number {
    this.need(2, what);
    const value = getUint16(this.bytes, this.offset);
    this.offset += 2;
    return value;
  }
  u32(what: string): number {
    this.need(4, what);
    const value = getUint32(this.bytes, this.offset);
    this.offset += 4;
    return value;
  }
  u64(what: string): number {
    this.need(8, what);
    const low = getUint32(this.bytes, this.offset);
    const high = getUint32(this.bytes, this.offset + 4);
    this.offset += 8;
    if (high >= 0x200000) throw new DecodeError(`${what} is beyond 2^53`);
    return high * 0x100000000 + low;
  }
  big64(what: string): bigint {
    this.need(8, what);
    const value = bigView(this.bytes).getBigUint64(this.offset, true);
    this.offset += 8;
    return value;
  }
  bool(what: string): boolean {
    const value = this.u8(what);
    if (value > 1) throw new DecodeError(`${what} must be 0 or 1, got ${value}`);
    return value === 1;
  }
  raw(count: number, what: string): Uint8Array {
    this.need(count, what);
    const value = this.bytes.subarray(this.offset, this.offset + count);
    this.offset += count;
    return value;
  }
  /** Bytes not read yet. */
  get remaining(): number {
    return this.bytes.length - this.offset;
  }
  rest(): Uint8Array {
    const value = this.bytes.subarray(this.offset);
    this.offset = this.bytes.length;
    return value;
  }
  text(maxBytes: number, what: string): string {
    const length = this.u16(`${what} length`);
    if (length > maxBytes) throw new DecodeError(`${what} is ${length} bytes, more than ${maxBytes}`);
    try {
      return textDecoder.decode(this.raw(length, what));
    } catch (error) {
      if (error instanceof DecodeError) throw error;
      throw new DecodeError(`${what} is not valid UTF-8`);
    }
  }
  end(what: string): void {
    if (this.offset !== this.bytes.length) throw new DecodeError(`${this.bytes.length - this.offset} trailing bytes after ${what}`);
  }
}

export function writeText(writer: FieldWriter, encoded: Uint8Array): void {
  writer.u16(encoded.length).raw(encoded);
}

export function wireStatus(value: number): WireStatus {
  if (value > WireStatus.Refused) throw new DecodeError(`unknown status ${value}`);
  return value as WireStatus;
}

