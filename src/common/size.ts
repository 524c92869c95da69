// Human sizes for the operator surface: "10G", "512M", "4096", "1.5T". Binary units (K = 1024),
// as every block tool (qemu-img, lvcreate) reads them. Pure functions; errors are TandemErrors.
import { TandemError } from "./errors.ts";

const unitShift: Record<string, number> = { "": 0, B: 0, K: 10, M: 20, G: 30, T: 40, P: 50 };

export function parseSize(text: string): number {
  const match = /^\s*(\d+(?:\.\d+)?)\s*([KMGTP]?)(?:i?B)?\s*$/i.exec(text) ?? /^\s*(\d+)\s*(B)\s*$/i.exec(text);
  if (!match) throw new TandemError("invalid_argument", `invalid size "${text}": use a number with an optional unit K, M, G, T (binary), e.g. 10G`);
  const value = Number(match[1]);
  const shift = unitShift[(match[2] ?? "").toUpperCase()];
  if (shift === undefined) throw new TandemError("invalid_argument", `invalid size unit in "${text}"`);
  const bytes = value * 2 ** shift;
  if (!Number.isSafeInteger(bytes)) throw new TandemError("invalid_argument", `size "${text}" is not a whole number of bytes or is too large`);
  return bytes;
}

export function formatSize(bytes: number): string {
  const units = ["B", "KiB", "MiB", "GiB", "TiB", "PiB"];
  let value = bytes;
  let index = 0;
  while (value >= 1024 && index < units.length - 1) {
    value /= 1024;
    index++;
  }
  const text = index === 0 ? String(value) : value.toFixed(value < 10 ? 2 : value < 100 ? 1 : 0).replace(/\.0+$|(\.\d*[1-9])0+$/, "$1");
  return `${text} ${units[index]}`;
}
