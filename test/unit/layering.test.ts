// The layering of DESIGN.md §2 and CONVENTIONS.md §1, proven from the import graph of src/ (every
// static, re-export and dynamic import, comments aside):
//  - the pure cores (the replication cores, the quorum cores, the NBD and vhost codecs and
//    sessions, and the interfaces they share) reach, through everything they import, only cores,
//    src/common and src/constants.ts — and no IO on the way: no file system, socket, process or FFI
//    module, so a core cannot touch the world even through a helper it imports (node:crypto, pure
//    functions, is allowed). Their source also names no clock, timer, random source or Bun runtime;
//  - src/node (the daemon and the lab) never imports the CLI or the TUI: both reach the daemon
//    through the one control client in src/node/control/client.ts;
//  - nothing under src/ imports test code.
// The rules are checked on a small made-up graph first, so a passing run means something.
import { expect, test } from "bun:test";
import fs from "node:fs";
import path from "node:path";

const root = path.resolve(import.meta.dir, "../..");

/** The pure cores, relative to the repository. */
const corePatterns: RegExp[] = [
  /^src\/replica\//, // the cores, their driver and the IO interfaces (the adapters live in src/node/replica/)
  // The quorum's edge is not core: its driver, the witness disk on its Worker, the watchdog device.
  /^src\/quorum\/(?!(.*[-/])?(driver|io|disk|watchdog)\.ts$)/,
  /^src\/node\/export\/nbd\/(codec|protocol|session|budget|scheduler)\.ts$/,
  /^src\/node\/export\/vhost\/(protocol|virtqueue|blk|inflight|memory)\.ts$/,
  // Interfaces the codecs and sessions share with the daemon (types and pure helpers only).
  /^src\/node\/block\/layer\.ts$/,
  /^src\/node\/export\/types\.ts$/,
];
/** What a core may reach besides other cores. */
const coreMayReach = (target: string) => target.startsWith("src/common/") || target === "src/constants.ts";
const builtinsAllowedInCores = new Set(["node:crypto"]);

const forbiddenGlobals: [RegExp, string][] = [
  [/\bDate\.now\b|\bnew Date\(/, "wall clock"],
  [/\bperformance\.now\b|\bprocess\.hrtime\b/, "clock"],
  [/\bset(Timeout|Interval|Immediate)\s*\(/, "timer"],
  [/\bMath\.random\b|\brandomBytes\b|\bgetRandomValues\b|\brandomUUID\b/, "random source"],
  [/\bBun\./, "Bun runtime"],
];

const isCore = (file: string) => corePatterns.some((pattern) => pattern.test(file));

function stripComments(source: string): string {
  return source.replace(/\/\*[\s\S]*?\*\//g, "").replace(/^\s*\/\/.*$/gm, "").replace(/([^:"'])\/\/.*$/gm, "$1");
}

/** The module specifiers a source file imports. */
function importsOf(source: string): string[] {
  const code = stripComments(source);
  const found: string[] = [];
  for (const match of code.matchAll(/(?:^|[\s;])(?:import|export)\s[^"';]*?\sfrom\s+["']([^"']+)["']/g)) found.push(match[1]!);
  for (const match of code.matchAll(/(?:^|[\s;])import\s+["']([^"']+)["']/g)) found.push(match[1]!);
  for (const match of code.matchAll(/\bimport\(\s*["']([^"']+)["']\s*\)/g)) found.push(match[1]!);
  return found;
}

type Graph = Map<string, string[]>;

/** Files under src/ and their resolved imports (repository-relative paths, or bare module names). */
function sourceGraph(): { graph: Graph; sources: Map<string, string> } {
  const graph: Graph = new Map();
  const sources = new Map<string, string>();
  const files = (fs.readdirSync(path.join(root, "src"), { recursive: true, encoding: "utf8" }) as string[]).filter((file) => /\.tsx?$/.test(file));
  for (const relative of files) {
    const file = `src/${relative.split(path.sep).join("/")}`;
    const source = fs.readFileSync(path.join(root, file), "utf8");
    sources.set(file, source);
    graph.set(
      file,
      importsOf(source).map((specifier) => (specifier.startsWith(".") ? path.relative(root, path.resolve(root, path.dirname(file), specifier)).split(path.sep).join("/") : specifier)),
    );
  }
  return { graph, sources };
}

/** Layering violations in a graph, each as one readable line. */
function violations(graph: Graph): string[] {
  const found: string[] = [];
  for (const [file, targets] of graph) {
    if (file.startsWith("src/node/")) for (const target of targets) if (/^src\/(cli|tui)\//.test(target)) found.push(`${file} imports ${target}`);
    for (const target of targets) if (target.startsWith("test/")) found.push(`${file} imports test code ${target}`);
    if (!isCore(file)) continue;
    // Everything reachable from a core, with the path it is reached by.
    const seen = new Map<string, string[]>([[file, [file]]]);
    const queue = [file];
    while (queue.length > 0) {
      const current = queue.shift()!;
      for (const target of graph.get(current) ?? []) {
        if (seen.has(target)) continue;
        const via = [...seen.get(current)!, target];
        seen.set(target, via);
        if (!target.startsWith("src/")) {
          if (!builtinsAllowedInCores.has(target)) found.push(`core ${file} reaches ${target} (${via.join(" -> ")})`);
          continue;
        }
        if (!isCore(target) && !coreMayReach(target)) found.push(`core ${file} reaches ${target}, which is not a core (${via.join(" -> ")})`);
        queue.push(target);
      }
    }
  }
  return found;
}

function globalsIn(source: string): string[] {
  const code = stripComments(source);
  return forbiddenGlobals.filter(([pattern]) => pattern.test(code)).map(([, what]) => what);
}

test("the checker catches each kind of bad import and forbidden global on a made-up graph", () => {
  const graph: Graph = new Map([
    ["src/replica/a.ts", ["src/replica/b.ts", "src/common/errors.ts", "node:crypto"]],
    ["src/replica/b.ts", ["src/common/paths.ts"]],
    ["src/common/paths.ts", ["node:fs"]],
    ["src/common/errors.ts", []],
    ["src/replica/c.ts", ["src/node/volumes.ts"]],
    ["src/node/volumes.ts", []],
    ["src/node/x.ts", ["src/cli/main.ts", "test/helpers/until.ts"]],
    ["src/quorum/driver.ts", ["node:fs"]], // the cores' edge may do IO
  ]);
  expect(violations(graph).sort()).toEqual(
    [
      "core src/replica/a.ts reaches node:fs (src/replica/a.ts -> src/replica/b.ts -> src/common/paths.ts -> node:fs)",
      "core src/replica/b.ts reaches node:fs (src/replica/b.ts -> src/common/paths.ts -> node:fs)",
      "core src/replica/c.ts reaches src/node/volumes.ts, which is not a core (src/replica/c.ts -> src/node/volumes.ts)",
      "src/node/x.ts imports src/cli/main.ts",
      "src/node/x.ts imports test code test/helpers/until.ts",
    ].sort(),
  );
  expect(importsOf('import x from "./a.ts";\nexport { y } from "./b.ts";\nimport "./c.ts";\nconst z = await import("./d.ts");\n// import w from "./e.ts";')).toEqual(["./a.ts", "./b.ts", "./c.ts", "./d.ts"]);
  expect(globalsIn("const t = Date.now(); setTimeout(() => {}, 1); Math.random(); Bun.write('x', 'y');")).toEqual(["wall clock", "timer", "random source", "Bun runtime"]);
  expect(globalsIn("// Date.now is never called here\nconst a = 1;")).toEqual([]);
});

test("src/ keeps its layering: cores reach no IO, the daemon no CLI or TUI, nothing imports tests", () => {
  const { graph } = sourceGraph();
  const cores = [...graph.keys()].filter(isCore);
  expect(cores).toContain("src/replica/volume/core.ts");
  expect(cores).toContain("src/node/export/nbd/session.ts");
  expect(cores.length).toBeGreaterThanOrEqual(30);
  expect(violations(graph)).toEqual([]);
});

test("the cores name no clock, timer, random source or Bun runtime", () => {
  const { sources } = sourceGraph();
  for (const [file, source] of sources) if (isCore(file)) expect({ file, globals: globalsIn(source) }).toEqual({ file, globals: [] });
});
