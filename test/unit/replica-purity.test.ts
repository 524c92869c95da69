// Proves the replica cores are pure (CONVENTIONS.md §1): no file under src/replica/ except the
// drivers and IO adapters mentions a clock, a timer, a random source, Bun's runtime, the file
// system, sockets or FFI. Exempt are exactly the files named `driver.ts`, `*-driver.ts`, `io.ts`
// or `*-io.ts` (a looser "contains io" would exempt generations.ts). The checker is shown to catch
// each forbidden use on a sample first, so a passing run means something.
import { expect, test } from "bun:test";
import { readdirSync, readFileSync } from "node:fs";
import { join } from "node:path";

const forbidden: [RegExp, string][] = [
  [/\bDate\.now\b|\bnew Date\(/, "wall clock"],
  [/\bperformance\.now\b|\bprocess\.hrtime\b/, "clock"],
  [/\bset(Timeout|Interval|Immediate)\s*\(/, "timer"],
  [/\bMath\.random\b|\brandomBytes\b|\bgetRandomValues\b|\brandomUUID\b/, "random source"],
  [/\bBun\./, "Bun runtime"],
  [/["'](node:)?(fs|fs\/promises|net|dgram|child_process|os)["']/, "IO module"],
  [/["']bun:ffi["']/, "FFI"],
];

function violations(source: string): string[] {
  const found: string[] = [];
  const code = source.replace(/^\s*\/\/.*$/gm, ""); // comments may talk about what the code must not do
  for (const [pattern, what] of forbidden) if (pattern.test(code)) found.push(what);
  return found;
}

test("the checker catches every forbidden use", () => {
  expect(violations("const t = Date.now();")).toEqual(["wall clock"]);
  expect(violations("setTimeout(() => {}, 1)")).toEqual(["timer"]);
  expect(violations("x = Math.random()")).toEqual(["random source"]);
  expect(violations("crypto.randomBytes(8)")).toEqual(["random source"]);
  expect(violations("Bun.write('x', 'y')")).toEqual(["Bun runtime"]);
  expect(violations('import fs from "node:fs";')).toEqual(["IO module"]);
  expect(violations('import { dlopen } from "bun:ffi";')).toEqual(["FFI"]);
  expect(violations("// Date.now is never called here\nconst a = 1;")).toEqual([]);
});

test("replica cores use no clock, timer, randomness, runtime or IO", () => {
  const directory = join(import.meta.dir, "../../src/replica");
  const files = (readdirSync(directory, { recursive: true }) as string[]).filter((name) => name.endsWith(".ts"));
  const cores = files.filter((name) => !/^(.*[-/])?(driver|io)\.ts$/.test(name));
  expect(cores.length).toBeGreaterThanOrEqual(10);
  expect(cores).toContain("volume/core.ts");
  expect(cores).toContain("node.ts");
  expect(cores).toContain("generations.ts");
  for (const name of cores) expect({ file: name, violations: violations(readFileSync(join(directory, name), "utf8")) }).toEqual({ file: name, violations: [] });
});
