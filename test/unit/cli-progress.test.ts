// Spinners on slow CLI steps (src/cli/progress.ts), in-process against a scripted control API: on a
// terminal, `verify` shows the comparison's progress from the volume's status while the request
// runs and `volume create --wait` the initial sync's, each ending with a ✔ line on stderr; with
// --json, or when the output is not a terminal, stderr stays empty and stdout carries the result.
import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import fs from "node:fs";
import os from "node:os";
import path from "node:path";
import { silentLogger } from "../../src/common/log.ts";
import { type ControlServer, startControlServer } from "../../src/node/control/server.ts";
import { runInProcess } from "../helpers/cli-in-process.ts";
import { until } from "../helpers/until.ts";

async function run(args: string[], tty: boolean): Promise<{ code: number; stdout: string; stderr: string }> {
  const result = await runInProcess(args, { tty });
  return { ...result, stderr: Bun.stripANSI(result.stderr) };
}

const replica = (node: string, state: string, detail?: Record<string, unknown>) => ({ node, backing: "/b/v.img", role: node === "a" ? "primary" : "secondary", state, detail });
const view = (nodes: unknown[]) => ({ name: "v", size: 8388608, sizeHuman: "8 MiB", backing: "/b/v.img", direct: false, primary: "a", sessions: 0, nodes });

describe("progress on a terminal, silence for scripts", () => {
  let dir: string;
  let server: ControlServer;
  let polls = 0;
  let syncPolls = 0;
  let answerAfterPolls = false;

  beforeAll(async () => {
    dir = fs.mkdtempSync(path.join(os.tmpdir(), "tandem-progress-"));
    server = await startControlServer({
      socketPath: path.join(dir, "control.sock"),
      log: silentLogger,
      routes: [
        {
          method: "GET",
          path: "/volumes/:name",
          handler: () => {
            if (syncPolls > 0) return view(syncPolls-- > 1 ? [replica("a", "resyncing", { progress: "50% at 10.0 MiB/s, ETA 1s" }), replica("b", "resyncing")] : [replica("a", "synced"), replica("b", "synced")]);
            polls++;
            return view([replica("a", "synced", { verify: { extentsTotal: 4, extentsDone: Math.min(polls, 4), mismatches: 0 } }), replica("b", "synced")]);
          },
        },
        {
          method: "POST",
          path: "/volumes/:name/verify",
          handler: async () => {
            // A long verify: answers once the CLI asked for its progress twice.
            const start = polls;
            if (answerAfterPolls) await until("two progress polls", () => polls >= start + 2, 5000);
            return { volume: "v", extentsCompared: 4, mismatchCount: 0, mismatches: [], repaired: 0, complete: true, seconds: 0.5 };
          },
        },
        { method: "POST", path: "/volumes", handler: () => view([replica("a", "negotiating"), replica("b", "negotiating")]) },
      ],
    });
  });
  afterAll(async () => {
    await server.stop();
    fs.rmSync(dir, { recursive: true, force: true });
  });
  const socket = () => ["--socket", path.join(dir, "control.sock")];

  test("verify on a terminal: the spinner shows how far the comparison is, then ✔", async () => {
    answerAfterPolls = true;
    const result = await run(["verify", "v", ...socket()], true);
    answerAfterPolls = false;
    expect(result.code).toBe(0);
    expect(result.stderr).toMatch(/verifying v: \d+% \(\d of 4 extents\), 0 differ/);
    expect(result.stderr).toContain("✔ verifying v");
    expect(result.stdout).toStartWith("verified v: 4 extents compared in 0.5 s, 0 differ");
  });

  test("verify with --json, or not on a terminal: nothing on stderr, the result on stdout", async () => {
    const json = await run(["verify", "v", "--json", ...socket()], true);
    expect(json.stderr).toBe("");
    expect(JSON.parse(json.stdout).extentsCompared).toBe(4);
    const piped = await run(["verify", "v", ...socket()], false);
    expect(piped.stderr).toBe("");
    expect(piped.stdout).toStartWith("verified v:");
  });

  test("volume create --wait shows the initial sync and returns once both replicas are synced", async () => {
    syncPolls = 3;
    const result = await run(["volume", "create", "v", "--size", "8M", "--wait", ...socket()], true);
    expect(result.code).toBe(0);
    expect(result.stderr).toContain("creating volume v: initial sync 50% at 10.0 MiB/s, ETA 1s");
    expect(result.stderr).toContain("✔ creating volume v");
    expect(result.stdout).toBe("created volume v: 8 MiB on /b/v.img\n");
  });

  test("volume create without --wait says the replicas are still syncing and how to watch", async () => {
    const result = await run(["volume", "create", "v", "--size", "8M", ...socket()], false);
    expect(result.stderr).toBe("");
    expect(result.stdout).toContain("the replicas are still syncing (a: negotiating, b: negotiating); watch with tandem status, or pass --wait");
  });
});
