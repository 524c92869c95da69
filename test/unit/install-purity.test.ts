// Proves the install's pairing cores are pure (CONVENTIONS.md §1): the CPace functions, the exchange
// (responder and initiator), its wire codec and the code's checks mention no clock, timer, random
// source, Bun runtime, file system, socket or FFI; time and randomness come in from the driver
// (pairing-driver.ts), which is the only IO of the pairing.
import { expect, test } from "bun:test";
import { readFileSync } from "node:fs";
import { join } from "node:path";
import { impurities } from "../helpers/purity.ts";

test("the pairing cores use no clock, timer, randomness, runtime or IO", () => {
  expect(impurities("const t = Date.now();")).toEqual(["wall clock"]);
  expect(impurities('import { randomBytes } from "node:crypto";')).toEqual(["random source"]);
  expect(impurities('import net from "node:net";')).toEqual(["IO module"]);
  const directory = join(import.meta.dir, "../../src/node/install");
  for (const name of ["cpace.ts", "pairing-exchange.ts", "pairing-wire.ts", "pairing-code.ts"]) {
    expect({ file: name, impurities: impurities(readFileSync(join(directory, name), "utf8")) }).toEqual({ file: name, impurities: [] });
  }
  // The driver is where the IO is: the check would see it.
  expect(impurities(readFileSync(join(directory, "pairing-driver.ts"), "utf8")).sort()).toEqual(["IO module", "random source", "timer", "wall clock"]);
});
