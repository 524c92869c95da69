// The real daemon and the real CLI, as separate processes: volume lifecycle through `tandem`
// commands (with the --json fields scripts rely on), every kind of CLI misuse getting one clear line
// and its documented exit code, data written over NBD surviving a clean restart and a SIGKILL, a
// SIGTERM that drains in-flight writes, the vhost export coming back after a restart, the
// control socket being root-only, and a second daemon on the same data directory being refused.
import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import fs from "node:fs";
import os from "node:os";
import path from "node:path";
import { NbdClient } from "../helpers/nbd-client.ts";
import { runCli, TestDaemon } from "../helpers/daemon.ts";
import { eventually } from "../helpers/until.ts";

const MiB = 1024 * 1024;

function pattern(seed: number, bytes: number): Uint8Array {
  const data = new Uint8Array(bytes);
  let x = seed * 2654435761;
  for (let i = 0; i < bytes; i++) {
    x = (x * 1103515245 + 12345) >>> 0;
    data[i] = x >>> 24;
  }
  return data;
}

interface VolumeJson {
  name: string;
  size: number;
  backing: string;
  sessions: number;
  nodes: { node: string; backing: string; role: string; state: string }[];
}

describe("tandem daemon and CLI", () => {
  let daemon: TestDaemon;

  beforeAll(async () => {
    daemon = await TestDaemon.start();
  });
  afterAll(async () => {
    await daemon?.cleanup();
  });
  /** A client's disconnect reaches the server a moment later: wait until the volume lists no session (a delete refuses a volume in use). */
  const sessionsGone = (volume: string) =>
    eventually(`${volume}'s sessions to end`, async () => (await daemon.cliJson<{ volumes: VolumeJson[] }>(["volume", "list"])).volumes.find((entry) => entry.name === volume)?.sessions === 0, 10_000, 20);

  test("volume create, list --json with the stable fields, resize, delete", async () => {
    const created = await daemon.cliJson<VolumeJson>(["volume", "create", "vol1", "--size", "64M"]);
    expect(created.name).toBe("vol1");
    expect(created.size).toBe(64 * MiB);
    expect(fs.statSync(created.backing).size).toBe(64 * MiB);
    expect(fs.statSync(created.backing).blocks).toBeLessThan(64); // sparse

    const { volumes } = await daemon.cliJson<{ volumes: VolumeJson[] }>(["volume", "list"]);
    const listed = volumes.find((volume) => volume.name === "vol1")!;
    expect(listed.size).toBe(64 * MiB);
    expect(listed.nodes).toEqual([{ node: "a", backing: created.backing, role: "primary", state: "standalone" }]);

    const grown = await daemon.cliJson<VolumeJson>(["volume", "resize", "vol1", "--size", "128M"]);
    expect(grown.size).toBe(128 * MiB);
    expect(fs.statSync(created.backing).size).toBe(128 * MiB);

    const text = await daemon.cli(["volume", "list"]);
    expect(text.code).toBe(0);
    expect(text.stdout).toMatch(/vol1\s+128 MiB\s+a\s+1\s+standalone/); // name, size, primary, epoch, state

    const deleted = await daemon.cli(["volume", "delete", "vol1"]);
    expect(deleted.code).toBe(0);
    expect(fs.existsSync(created.backing)).toBe(false);
    expect((await daemon.cli(["volume", "delete", "vol1"])).code).toBe(4);
  });

  test("CLI misuse: one clear line and the documented exit code", async () => {
    await daemon.cliJson(["volume", "create", "dup", "--size", "8M"]);
    const cases: [string[], number, RegExp][] = [
      [["volume", "create", "x1", "--size", "10Q"], 2, /invalid size "10Q"/],
      [["volume", "create", "x2", "--size", "1000"], 2, /volume size must be between/],
      [["volume", "create", "x3", "--size", "1048577"], 2, /multiple of 4 KiB/],
      [["volume", "create", "Bad/Name", "--size", "8M"], 2, /invalid volume name/],
      [["volume", "create", "x4"], 2, /--size is required/],
      [["volume", "create", "dup", "--size", "8M"], 5, /already exists/],
      [["volume", "resize", "nope", "--size", "8M"], 4, /no volume named nope/],
      [["volume", "resize", "dup", "--size", "4M"], 1, /only growing is supported/],
      [["volume", "delete", "nope"], 4, /no volume named nope/],
      [["export", "vhost", "nope"], 4, /no volume named nope/],
      [["export", "vhost", "dup", "--queues", "0"], 2, /--queues/],
      [["export", "remove", "dup"], 4, /has no vhost-user export/],
      [["volume", "create", "x5", "--size", "8M", "--backing", "/nonexistent-dir/x.img"], 2, /does not exist/],
    ];
    for (const [args, code, message] of cases) {
      const result = await daemon.cli(args);
      expect({ args, code: result.code }).toEqual({ args, code });
      expect(result.stdout).toBe("");
      expect(result.stderr).toMatch(message);
      expect(result.stderr.trim().split("\n").length).toBeLessThanOrEqual(4); // one line (clipanion adds the usage for syntax errors)
    }
    const json = await daemon.cli(["volume", "create", "dup", "--size", "8M", "--json"]);
    expect(json.code).toBe(5);
    expect(JSON.parse(json.stdout)).toEqual({ error: { code: "already_exists", message: "a volume named dup already exists" } });

    const unreachable = await runCli(["status", "--socket", path.join(daemon.dir, "missing.sock")]);
    expect(unreachable.code).toBe(3);
    expect(unreachable.stderr).toMatch(/cannot reach the Tandem daemon at .*missing\.sock/);
    const viaEnv = await runCli(["status"], { env: { TANDEM_SOCKET: daemon.controlSocket } });
    expect(viaEnv.code).toBe(0);
    expect(viaEnv.stdout).toMatch(/^node a /);

    const syntax = await runCli(["volume", "frobnicate"]);
    expect(syntax.code).toBe(2);
    const badConfig = await runCli(["node", "run", "--config", path.join(daemon.dir, "nope.toml")]);
    expect(badConfig.code).toBe(2);
    expect(badConfig.stderr).toMatch(/cannot read config/);
    await daemon.cliJson(["volume", "delete", "dup"]);
  });

  test("delete is refused while an NBD client holds the volume, and --force cuts the session", async () => {
    await daemon.cliJson(["volume", "create", "busy", "--size", "16M"]);
    const client = await NbdClient.connect({ unix: daemon.nbdSocket }, { name: "busy" });
    await client.write(0, pattern(1, 4096));
    const refused = await daemon.cli(["volume", "delete", "busy"]);
    expect(refused.code).toBe(5);
    expect(refused.stderr).toMatch(/in use \(session /);
    const forced = await daemon.cli(["volume", "delete", "busy", "--force"]);
    expect(forced.code).toBe(0);
    await expect(client.read(0, 4096)).rejects.toThrow();
    client.terminate();
    const { volumes } = await daemon.cliJson<{ volumes: VolumeJson[] }>(["volume", "list"]);
    expect(volumes.map((volume) => volume.name)).not.toContain("busy");
  });

  test("a volume on an operator-named backing file keeps the file on delete", async () => {
    const backing = path.join(daemon.dir, "operator.img");
    fs.writeFileSync(backing, pattern(7, 4 * MiB));
    const created = await daemon.cliJson<VolumeJson>(["volume", "create", "named", "--backing", backing]);
    expect(created.size).toBe(4 * MiB);
    const client = await NbdClient.connect({ unix: daemon.nbdSocket }, { name: "named" });
    expect(await client.read(MiB, 4096)).toEqual(pattern(7, 4 * MiB).subarray(MiB, MiB + 4096));
    await client.disconnect();
    await sessionsGone("named");
    expect((await daemon.cli(["volume", "delete", "named"])).code).toBe(0);
    expect(fs.statSync(backing).size).toBe(4 * MiB);
  });

  test("resize grows online: a connected client keeps working, a new one sees the new size", async () => {
    await daemon.cliJson(["volume", "create", "grow", "--size", "8M"]);
    const before = await NbdClient.connect({ unix: daemon.nbdSocket }, { name: "grow" });
    await before.write(0, pattern(3, 65536));
    await daemon.cliJson(["volume", "resize", "grow", "--size", "32M"]);
    await before.write(65536, pattern(4, 65536));
    await before.flush();
    const after = await NbdClient.connect({ unix: daemon.nbdSocket }, { name: "grow" });
    expect(after.sizeBytes).toBe(32 * MiB);
    await after.write(31 * MiB, pattern(5, 65536));
    expect(await after.read(0, 65536)).toEqual(pattern(3, 65536));
    expect(await after.read(31 * MiB, 65536)).toEqual(pattern(5, 65536));
    await before.disconnect();
    await after.disconnect();
    await sessionsGone("grow");
    await daemon.cliJson(["volume", "delete", "grow"]);
  });

  test("the control socket is root-only and a second daemon on the same data directory is refused", async () => {
    expect(fs.statSync(daemon.controlSocket).mode & 0o777).toBe(0o600);
    const second = await runCli(["node", "run", "--config", daemon.configPath], { timeoutMs: 20_000, cwd: daemon.dir });
    expect(second.code).not.toBe(0);
    expect(second.stderr).toMatch(/in use by process \d+|another daemon answers/);
    expect((await daemon.cli(["status"])).code).toBe(0);
  });
});

describe("restarts", () => {
  test("SIGTERM drains, and a restart keeps every volume, its data and its vhost export", async () => {
    const daemon = await TestDaemon.start();
    try {
      await daemon.cliJson(["volume", "create", "keep1", "--size", "16M"]);
      await daemon.cliJson(["volume", "create", "keep2", "--size", "32M", "--direct"]);
      const exported = await daemon.cliJson<{ path: string }>(["export", "vhost", "keep1", "--queues", "2"]);
      expect(fs.statSync(exported.path).isSocket()).toBe(true);

      const client = await NbdClient.connect({ unix: daemon.nbdSocket }, { name: "keep2" });
      await client.write(0, pattern(11, MiB));
      await client.flush();
      // Many writes in flight when SIGTERM arrives: every one the daemon acknowledges must be on disk.
      const writes = Array.from({ length: 64 }, (_, i) => client.write(MiB + i * 65536, pattern(100 + i, 65536)).then(() => true, () => false));
      await Bun.sleep(1); // the writes leave the client before the signal (time that must pass)
      expect(await daemon.stop()).toBe(0);
      const acknowledged = await Promise.all(writes);
      client.terminate();
      expect(daemon.logRecords().some((record) => record.msg === "node stopped")).toBe(true);

      await daemon.start();
      const { volumes } = await daemon.cliJson<{ volumes: VolumeJson[] }>(["volume", "list"]);
      expect(volumes.map((volume) => [volume.name, volume.size])).toEqual([
        ["keep1", 16 * MiB],
        ["keep2", 32 * MiB],
      ]);
      const exports = await daemon.cliJson<{ exports: { kind: string; volume?: string; queues?: number; running?: boolean }[] }>(["export", "list"]);
      expect(exports.exports.filter((e) => e.kind === "vhost")).toMatchObject([{ volume: "keep1", queues: 2, running: true }]);
      expect(fs.statSync(exported.path).isSocket()).toBe(true);

      const reader = await NbdClient.connect({ unix: daemon.nbdSocket }, { name: "keep2" });
      expect(await reader.read(0, MiB)).toEqual(pattern(11, MiB));
      let checked = 0;
      for (let i = 0; i < 64; i++) {
        if (!acknowledged[i]) continue;
        expect(await reader.read(MiB + i * 65536, 65536)).toEqual(pattern(100 + i, 65536));
        checked++;
      }
      expect(checked).toBeGreaterThan(0);
      await reader.disconnect();
    } finally {
      await daemon.cleanup();
    }
  });

  test("node.lock naming a live but unrelated process (a recycled pid) does not block a restart; a live daemon still does", async () => {
    const daemon = await TestDaemon.start();
    try {
      await daemon.kill();
      // After a crash the pid in node.lock may belong to any process by now: here, this test runner.
      const lockPath = path.join(daemon.dataDir, "node.lock");
      fs.writeFileSync(lockPath, `${process.pid}\n`);
      await daemon.start();
      expect(fs.readFileSync(lockPath, "utf8").trim()).toBe(String(daemon.pid));
      const second = await runCli(["node", "run", "--config", daemon.configPath], { timeoutMs: 20_000, cwd: daemon.dir });
      expect(second.code).toBe(5);
      expect(second.stderr).toMatch(new RegExp(`in use by process ${daemon.pid}`));
      expect((await daemon.cli(["status"])).code).toBe(0);
    } finally {
      await daemon.cleanup();
    }
  });

  test("after SIGKILL, flushed data and every volume are still there", async () => {
    const daemon = await TestDaemon.start();
    try {
      await daemon.cliJson(["volume", "create", "crash", "--size", "16M"]);
      const client = await NbdClient.connect({ unix: daemon.nbdSocket }, { name: "crash" });
      for (let i = 0; i < 16; i++) await client.write(i * 65536, pattern(200 + i, 65536));
      await client.flush();
      await daemon.kill();
      client.terminate();
      await daemon.start();
      const reader = await NbdClient.connect({ unix: daemon.nbdSocket }, { name: "crash" });
      for (let i = 0; i < 16; i++) expect(await reader.read(i * 65536, 65536)).toEqual(pattern(200 + i, 65536));
      await reader.disconnect();
      const events = await daemon.cliJson<{ events: { kind: string }[] }>(["events", "--limit", "100"]);
      expect(events.events.map((event) => event.kind)).toContain("volume-created");
    } finally {
      await daemon.cleanup();
    }
  });
});

describe("tandem lab", () => {
  test("lab up --json prints the documented shape and serves the demo volume; lab down stops it", async () => {
    const dir = fs.mkdtempSync(path.join(os.tmpdir(), "tandem-lab-test-"));
    try {
      const up = await runCli(["lab", "up", "--dir", dir, "--json"], { timeoutMs: 60_000 });
      expect(up.code).toBe(0);
      const info = JSON.parse(up.stdout);
      expect(info.dir).toBe(dir);
      expect(info.nodes[0]).toMatchObject({ name: "a", control: path.join(dir, "a/control.sock"), nbd: path.join(dir, "a/nbd.sock"), dataDir: path.join(dir, "a/data") });
      expect(info.volumes).toEqual([{ name: "demo", size: 1024 * 1024 * 1024 }]);
      const client = await NbdClient.connect({ unix: info.nodes[0].nbd }, { name: "demo" });
      await client.write(4096, pattern(9, 4096));
      expect(await client.read(4096, 4096)).toEqual(pattern(9, 4096));
      await client.disconnect();
      const again = await runCli(["lab", "up", "--dir", dir, "--json"]);
      expect(JSON.parse(again.stdout).nodes[0].pid).toBe(info.nodes[0].pid);
      const status = await runCli(["status", "--json", "--socket", info.nodes[0].control]);
      expect(JSON.parse(status.stdout).node.name).toBe("a");
      const down = await runCli(["lab", "down", "--dir", dir, "--json"]);
      expect(down.code).toBe(0);
      expect(JSON.parse(down.stdout).stopped).toEqual(["b", "a", "relay", "witness"]);
      expect((await runCli(["status", "--socket", info.nodes[0].control])).code).toBe(3);
    } finally {
      await runCli(["lab", "down", "--dir", dir]);
      fs.rmSync(dir, { recursive: true, force: true });
    }
  });
});
