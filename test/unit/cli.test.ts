// The CLI in-process (clipanion's cli.run with captured streams) against a control API served by
// the real server module over a temp unix socket: what each command sends, how it renders text
// and --json, and how errors become one line and an exit code.
import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import fs from "node:fs";
import os from "node:os";
import path from "node:path";
import { TandemError } from "../../src/common/errors.ts";
import { silentLogger } from "../../src/common/log.ts";
import { type ControlServer, startControlServer } from "../../src/node/control/server.ts";
import { runInProcess } from "../helpers/cli-in-process.ts";

const run = (args: string[]) => runInProcess(args);

describe("CLI against a control API", () => {
  let dir: string;
  let server: ControlServer;
  const received: { path: string; body: unknown }[] = [];
  const volume = { name: "v", size: 8388608, sizeHuman: "8 MiB", backing: "/b/v.img", direct: false, primary: "a", sessions: 0, nodes: [{ node: "a", backing: "/b/v.img", role: "primary", state: "standalone" }] };

  beforeAll(async () => {
    dir = fs.mkdtempSync(path.join(os.tmpdir(), "tandem-cli-"));
    server = await startControlServer({
      socketPath: path.join(dir, "control.sock"),
      log: silentLogger,
      routes: [
        {
          method: "POST",
          path: "/volumes",
          handler: ({ body }) => {
            received.push({ path: "/volumes", body });
            if (body.name === "taken") throw new TandemError("already_exists", "a volume named taken already exists");
            return volume;
          },
        },
        { method: "GET", path: "/volumes", handler: () => ({ volumes: [volume] }) },
        { method: "DELETE", path: "/volumes/:name", handler: ({ params, query }) => ({ deleted: `${params.name}${query.get("force") ? "!" : ""}` }) },
        {
          method: "GET",
          path: "/boom",
          handler: () => {
            throw new Error("bug");
          },
        },
      ],
    });
  });
  afterAll(async () => {
    await server.stop();
    fs.rmSync(dir, { recursive: true, force: true });
  });

  const socket = () => ["--socket", path.join(dir, "control.sock")];

  test("create sends bytes parsed from a human size and renders one line", async () => {
    const result = await run(["volume", "create", "v", "--size", "8M", ...socket()]);
    expect(result).toEqual({ code: 0, stdout: "created volume v: 8 MiB on /b/v.img\n", stderr: "" });
    expect(received.at(-1)).toEqual({ path: "/volumes", body: { name: "v", size: 8388608, direct: false } });
  });

  test("--json prints the daemon's answer; errors become JSON with the exit code", async () => {
    const listed = await run(["volume", "list", "--json", ...socket()]);
    expect(listed.code).toBe(0);
    expect(JSON.parse(listed.stdout)).toEqual({ volumes: [volume] });
    const conflict = await run(["volume", "create", "taken", "--size", "8M", "--json", ...socket()]);
    expect(conflict.code).toBe(5);
    expect(JSON.parse(conflict.stdout)).toEqual({ error: { code: "already_exists", message: "a volume named taken already exists" } });
    const text = await run(["volume", "create", "taken", "--size", "8M", ...socket()]);
    expect(text).toEqual({ code: 5, stdout: "", stderr: "tandem: a volume named taken already exists\n" });
  });

  test("bad sizes never reach the daemon; --force travels as a query", async () => {
    const before = received.length;
    const bad = await run(["volume", "create", "v", "--size", "lots", ...socket()]);
    expect(bad.code).toBe(2);
    expect(bad.stderr).toMatch(/invalid size "lots"/);
    expect(received.length).toBe(before);
    expect((await run(["volume", "delete", "v", "--force", ...socket()])).stdout).toBe("deleted volume v!\n");
  });

  test("a missing daemon is exit 3; an unknown endpoint is not_found from the server", async () => {
    const missing = await run(["status", "--socket", path.join(dir, "nope.sock")]);
    expect(missing.code).toBe(3);
    const unknown = await fetch("http://x/v1/nothing", { unix: path.join(dir, "control.sock") });
    expect(unknown.status).toBe(404);
    const boom = await fetch("http://x/v1/boom", { unix: path.join(dir, "control.sock") });
    expect(boom.status).toBe(500);
    expect(((await boom.json()) as { error: { code: string } }).error.code).toBe("internal");
    const notJson = await fetch("http://x/v1/volumes", { unix: path.join(dir, "control.sock"), method: "POST", body: "{" });
    expect(notJson.status).toBe(400);
  });
});
