// What a pure core must not mention (CONVENTIONS.md §1): a clock, a timer, a random source, Bun's
// runtime, the file system, sockets or FFI. Comments may talk about them; code may not.

const forbidden: [RegExp, string][] = [
  [/\bDate\.now\b|\bnew Date\(/, "wall clock"],
  [/\bperformance\.now\b|\bprocess\.hrtime\b/, "clock"],
  [/\bset(Timeout|Interval|Immediate)\s*\(/, "timer"],
  [/\bMath\.random\b|\brandomBytes\b|\bgetRandomValues\b|\brandomUUID\b/, "random source"],
  [/\bBun\./, "Bun runtime"],
  [/["'](node:)?(fs|fs\/promises|net|dgram|child_process|os)["']/, "IO module"],
  [/["']bun:ffi["']/, "FFI"],
];

/** The forbidden uses in `source`, by kind (empty: pure). */
export function impurities(source: string): string[] {
  const found: string[] = [];
  const code = source.replace(/^\s*\/\/.*$/gm, "");
  for (const [pattern, what] of forbidden) if (pattern.test(code)) found.push(what);
  return found;
}
