// The layering of DESIGN.md §2 that a grep can check: the daemon and the lab (src/node/) never
// import the CLI (src/cli/) or the TUI (src/tui/); both of those reach the daemon through the one
// control client in src/node/control/client.ts.
import { expect, test } from "bun:test";
import fs from "node:fs";
import path from "node:path";

const root = path.resolve(import.meta.dir, "../..");

function sources(directory: string): string[] {
  return fs.readdirSync(directory, { recursive: true, encoding: "utf8" }).filter((file) => /\.tsx?$/.test(file)).map((file) => path.join(directory, file));
}

test("nothing under src/node imports src/cli or src/tui", () => {
  const offenders = sources(path.join(root, "src/node")).flatMap((file) =>
    [...fs.readFileSync(file, "utf8").matchAll(/from\s+"([^"]+)"/g)]
      .map((match) => path.resolve(path.dirname(file), match[1]!))
      .filter((target) => target.startsWith(path.join(root, "src/cli")) || target.startsWith(path.join(root, "src/tui")))
      .map((target) => `${path.relative(root, file)} imports ${path.relative(root, target)}`),
  );
  expect(offenders).toEqual([]);
});
