// Proves that the native CRC32C survives `bun build --compile` with the options packaging/build.ts
// builds the shipped binary with (minified, bytecode, ESM): a small program importing
// src/common/crc32c-native.ts is compiled in a temporary directory and run from there (no
// node_modules within reach), and must report the native implementation, agreeing with the
// reference on a buffer long enough to take the native path.
import { afterAll, expect, test } from "bun:test";
import fs from "node:fs";
import os from "node:os";
import path from "node:path";
import { repositoryRoot } from "../helpers/daemon.ts";

const directory = fs.mkdtempSync(path.join(os.tmpdir(), "tandem-compiled-crc-"));
afterAll(() => fs.rmSync(directory, { recursive: true, force: true }));

async function run(command: string[], cwd: string): Promise<{ code: number; stdout: string; stderr: string }> {
  const child = Bun.spawn(command, { cwd, stdout: "pipe", stderr: "pipe" });
  const timer = setTimeout(() => child.kill("SIGKILL"), 90_000);
  const [stdout, stderr, code] = await Promise.all([new Response(child.stdout).text(), new Response(child.stderr).text(), child.exited]);
  clearTimeout(timer);
  return { code, stdout, stderr };
}

test("a compiled binary checksums with the embedded native addon", async () => {
  if (!(process.platform === "linux" && (process.arch === "x64" || process.arch === "arm64"))) return;
  // The probe lives in the temporary directory; its imports name the repository's modules, so the
  // bundler finds the addon from src/common as the CLI's build does.
  const entry = path.join(directory, "probe.ts");
  const module = (name: string) => JSON.stringify(path.join(repositoryRoot, "src", "common", name));
  fs.writeFileSync(
    entry,
    [
      `import { fastCrc32c } from ${module("crc32c-native.ts")};`,
      `import { crc32c } from ${module("crc32c.ts")};`,
      "const bytes = new Uint8Array(100_000).map((_, index) => (index * 2654435761) >>> 24);",
      "const choice = fastCrc32c();",
      "console.log(JSON.stringify({ name: choice.name, reason: choice.reason, agrees: choice.crc32c(bytes) === crc32c(bytes) }));",
    ].join("\n"),
  );
  const binary = path.join(directory, "crc-probe");
  // The options that matter of packaging/build.ts, which builds the shipped binary.
  const build = await run([process.execPath, "build", "--compile", "--minify", "--bytecode", "--format=esm", "--outfile", binary, entry], repositoryRoot);
  expect(build.stderr).not.toContain("error");
  expect(build.code).toBe(0);
  const result = await run([binary], directory);
  expect(result.code).toBe(0);
  expect(JSON.parse(result.stdout)).toEqual({ name: "native", agrees: true });
}, 120_000);
