// Proves the quorum cores are pure (CONVENTIONS.md §1): no file under src/quorum/ except the
// drivers (driver.ts, *-driver.ts), the disk and watchdog IO (*-io.ts, disk.ts, watchdog.ts) mentions a
// clock, a timer, a random source, Bun's runtime, the file system, sockets or FFI. The checker is
// shown to catch each forbidden use on a sample first, so a passing run means something.
import { expect, test } from "bun:test";
import { readdirSync, readFileSync } from "node:fs";
import { join } from "node:path";
import { impurities } from "../helpers/purity.ts";

test("the checker catches every forbidden use", () => {
  expect(impurities("const t = Date.now();")).toEqual(["wall clock"]);
  expect(impurities("const t = performance.now();")).toEqual(["clock"]);
  expect(impurities("setTimeout(() => {}, 1)")).toEqual(["timer"]);
  expect(impurities("x = Math.random()")).toEqual(["random source"]);
  expect(impurities("Bun.write('x', 'y')")).toEqual(["Bun runtime"]);
  expect(impurities('import fs from "node:fs";')).toEqual(["IO module"]);
  expect(impurities('import { dlopen } from "bun:ffi";')).toEqual(["FFI"]);
  expect(impurities("// Date.now is never called here\nconst a = 1;")).toEqual([]);
});

test("quorum cores use no clock, timer, randomness, runtime or IO", () => {
  const directory = join(import.meta.dir, "../../src/quorum");
  const files = readdirSync(directory).filter((name) => name.endsWith(".ts"));
  const cores = files.filter((name) => !/^(.*-)?(driver|io)\.ts$|^(disk|watchdog)\.ts$/.test(name));
  for (const core of ["format.ts", "paxos.ts", "lease.ts", "config.ts", "message.ts"]) expect(cores).toContain(core);
  for (const name of cores) expect({ file: name, impurities: impurities(readFileSync(join(directory, name), "utf8")) }).toEqual({ file: name, impurities: [] });
});
