// CRC32C (Castagnoli, reflected polynomial 0x82F63B78), the checksum on every replicated block and
// in every witness record. Slicing-by-8 over precomputed tables: pure TypeScript, no IO, usable in
// the cores and the simulator. Check value: crc32c("123456789") = 0xE3069283.

const polynomial = 0x82f63b78;
const tables: Uint32Array[] = [];
{
  const base = new Uint32Array(256);
  for (let n = 0; n < 256; n++) {
    let c = n;
    for (let k = 0; k < 8; k++) c = c & 1 ? (c >>> 1) ^ polynomial : c >>> 1;
    base[n] = c >>> 0;
  }
  tables.push(base);
  for (let t = 1; t < 8; t++) {
    const previous = tables[t - 1]!;
    const table = new Uint32Array(256);
    for (let n = 0; n < 256; n++) table[n] = ((previous[n]! >>> 8) ^ base[previous[n]! & 0xff]!) >>> 0;
    tables.push(table);
  }
}
const [t0, t1, t2, t3, t4, t5, t6, t7] = tables as [Uint32Array, Uint32Array, Uint32Array, Uint32Array, Uint32Array, Uint32Array, Uint32Array, Uint32Array];

/** Continue a CRC32C over `bytes`; start with `crc = 0`. */
export function crc32c(bytes: Uint8Array, crc = 0): number {
  return crc32cRange(bytes, 0, bytes.length, crc);
}

/**
 * CRC32C of bytes[start, end) without a view of them: a frame header's few bytes are checked where
 * they lie (a subarray of a fresh array makes the engine materialise its buffer, which costs more
 * than the checksum of 28 bytes).
 */
export function crc32cRange(bytes: Uint8Array, start: number, end: number, crc = 0): number {
  let c = ~crc >>> 0;
  let i = start;
  const end8 = end - ((end - start) % 8);
  while (i < end8) {
    const lo = (c ^ (bytes[i]! | (bytes[i + 1]! << 8) | (bytes[i + 2]! << 16) | (bytes[i + 3]! << 24))) >>> 0;
    c =
      t7[lo & 0xff]! ^
      t6[(lo >>> 8) & 0xff]! ^
      t5[(lo >>> 16) & 0xff]! ^
      t4[lo >>> 24]! ^
      t3[bytes[i + 4]!]! ^
      t2[bytes[i + 5]!]! ^
      t1[bytes[i + 6]!]! ^
      t0[bytes[i + 7]!]!;
    i += 8;
  }
  while (i < end) c = t0[(c ^ bytes[i++]!) & 0xff]! ^ (c >>> 8);
  return ~c >>> 0;
}
