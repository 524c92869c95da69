// Deterministic test data: the same seed gives the same bytes, different seeds differ everywhere.

export function pattern(seed: number, length: number): Uint8Array {
  const bytes = new Uint8Array(length);
  let x = seed * 2654435761;
  for (let index = 0; index < length; index++) {
    x = (x * 1103515245 + 12345) >>> 0;
    bytes[index] = x >>> 24;
  }
  return bytes;
}
