// Input validation through the real daemon and the real CLI: every rule gets a clear message and
// its documented exit code, and nothing a caller names can make the daemon take what is not its
// own. vhost sockets get mode 0600 even under a daemon started with umask 000 (0660 and the
// configured group when one is set), stay inside the socket directory (symbolic links included)
// unless the config allows any path, and fit a unix socket address; --backing refuses a symbolic
// link to another volume's file, a file another daemon holds, a block device another program holds
// (O_EXCL), character devices, directories, the node's own data directory, and a file too small; a
// malformed URL on the control socket is a JSON 400; a dataDir that cannot be a directory is a
// config error naming the field.
import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import fs from "node:fs";
import os from "node:os";
import path from "node:path";
import { runCli, TestDaemon } from "../helpers/daemon.ts";

const MiB = 1024 * 1024;

/** A group other than root's, from the group database (the daemon runs as root and may chown to it). */
function otherGroup(): { name: string; gid: number } {
  for (const line of fs.readFileSync("/etc/group", "utf8").split("\n")) {
    const [name, , gid] = line.split(":");
    if (name && Number(gid) > 0) return { name, gid: Number(gid) };
  }
  throw new Error("no group other than root in /etc/group");
}

let open: TestDaemon; // umask 000, no group, paths confined to the socket directory
let other: TestDaemon; // a second node on this machine: a socket group, any path allowed
const group = otherGroup();

beforeAll(async () => {
  open = await TestDaemon.start({ wrap: ["sh", "-c", 'umask 000; exec "$@"', "sh"] });
  other = await TestDaemon.start({ name: "o", config: { vhost: { socketDir: "vhost", socketGroup: group.name, allowAnyPath: true } } });
});

afterAll(async () => {
  await open?.cleanup();
  await other?.cleanup();
});

describe("vhost-user sockets", () => {
  test("the socket is 0600 whatever the daemon's umask; 0660 with the configured group", async () => {
    await open.cliJson(["volume", "create", "v1", "--size", "8M"]);
    const exported = await open.cliJson<{ path: string }>(["export", "vhost", "v1"]);
    expect(exported.path).toBe(path.join(open.dir, "vhost", "v1.sock"));
    expect(fs.statSync(exported.path).mode & 0o777).toBe(0o600);

    await other.cliJson(["volume", "create", "g1", "--size", "8M"]);
    const shared = await other.cliJson<{ path: string }>(["export", "vhost", "g1"]);
    const stat = fs.statSync(shared.path);
    expect(stat.mode & 0o777).toBe(0o660);
    expect(stat.gid).toBe(group.gid);
    expect(fs.statSync(path.dirname(shared.path)).gid).toBe(group.gid); // the group can reach it
  });

  test("--path must stay inside the socket directory, symbolic links included, unless allowAnyPath", async () => {
    await open.cliJson(["volume", "create", "v2", "--size", "8M"]);
    const socketDir = path.join(open.dir, "vhost");
    const outside = path.join(open.dir, "outside.sock");
    const refused = await open.cli(["export", "vhost", "v2", "--path", outside]);
    expect(refused.code).toBe(2);
    expect(refused.stderr).toBe(`tandem: ${outside} is outside the vhost socket directory ${socketDir}; name a path inside it, or set vhost.allowAnyPath in the config\n`);
    expect(fs.existsSync(outside)).toBe(false);

    fs.mkdirSync(path.join(open.dir, "elsewhere"));
    fs.symlinkSync(path.join(open.dir, "elsewhere"), path.join(socketDir, "link"));
    const viaLink = await open.cli(["export", "vhost", "v2", "--path", path.join(socketDir, "link", "v2.sock")]);
    expect(viaLink.code).toBe(2);
    expect(viaLink.stderr).toMatch(/is outside the vhost socket directory/);
    expect(fs.readdirSync(path.join(open.dir, "elsewhere"))).toEqual([]);

    const dotted = await open.cli(["export", "vhost", "v2", "--path", `${socketDir}/../v2.sock`]);
    expect(dotted.code).toBe(2);

    const inside = await open.cliJson<{ path: string }>(["export", "vhost", "v2", "--path", path.join(socketDir, "guests", "v2.sock")]);
    expect(inside.path).toBe(path.join(socketDir, "guests", "v2.sock"));
    expect(fs.statSync(inside.path).isSocket()).toBe(true);

    await other.cliJson(["volume", "create", "g2", "--size", "8M"]);
    const anywhere = await other.cliJson<{ path: string }>(["export", "vhost", "g2", "--path", path.join(other.dir, "g2.sock")]);
    expect(fs.statSync(anywhere.path).isSocket()).toBe(true);
  });

  test("a socket path longer than a unix socket address holds is refused with its length", async () => {
    await open.cliJson(["volume", "create", "v3", "--size", "8M"]);
    const long = path.join(open.dir, "vhost", "x".repeat(120 - path.join(open.dir, "vhost").length) + ".sock");
    const refused = await open.cli(["export", "vhost", "v3", "--path", long]);
    expect(refused.code).toBe(2);
    expect(refused.stderr).toBe(`tandem: socket path ${long} is ${Buffer.byteLength(long)} bytes; a unix socket path holds at most 107 (choose a shorter --path or vhost.socketDir)\n`);
    const exports = await open.cliJson<{ exports: { kind: string; volume?: string }[] }>(["export", "list"]);
    expect(exports.exports.some((entry) => entry.volume === "v3")).toBe(false);
  });
});

describe("--backing", () => {
  test("a symbolic link (or another spelling) of another volume's backing is refused", async () => {
    const file = path.join(open.dir, "shared.img");
    fs.writeFileSync(file, new Uint8Array(4 * MiB));
    await open.cliJson(["volume", "create", "owner", "--backing", file]);
    fs.symlinkSync(file, path.join(open.dir, "alias.img"));
    const viaLink = await open.cli(["volume", "create", "thief", "--backing", path.join(open.dir, "alias.img")]);
    expect(viaLink.code).toBe(5);
    expect(viaLink.stderr).toBe(`tandem: ${path.join(open.dir, "alias.img")} is already the backing of volume owner (${path.join(open.dir, "alias.img")} resolves to ${file})\n`);
    const { volumes } = await open.cliJson<{ volumes: { name: string }[] }>(["volume", "list"]);
    expect(volumes.map((volume) => volume.name)).not.toContain("thief");
  });

  test("a file another daemon holds is refused as in use", async () => {
    const file = path.join(other.dir, "live.img");
    fs.writeFileSync(file, new Uint8Array(4 * MiB));
    await other.cliJson(["volume", "create", "live", "--backing", file]);
    const taken = await open.cli(["volume", "create", "stolen", "--backing", file]);
    expect(taken.code).toBe(5);
    expect(taken.stderr).toBe(`tandem: ${file} is in use by another process (it holds a lock on the file)\n`);
    // Once the other daemon lets go, the file can be used.
    await other.cliJson(["volume", "delete", "live"]);
    await open.cliJson(["volume", "create", "stolen", "--backing", file]);
  });

  test("character devices, directories and the node's own data directory are refused by name", async () => {
    const cases: [string, number, string][] = [
      ["/dev/null", 2, "tandem: /dev/null is a character device; a volume needs a regular file or a block device\n"],
      [os.tmpdir(), 2, `tandem: ${os.tmpdir()} is a directory; a volume needs a regular file or a block device\n`],
      [path.join(open.dataDir, "state.db"), 2, `tandem: ${path.join(open.dataDir, "state.db")} is inside the node's data directory ${open.dataDir}; name a file or device elsewhere (volumes without --backing are kept there)\n`],
      [path.join(open.dataDir, "volumes", "new.img"), 2, `tandem: ${path.join(open.dataDir, "volumes", "new.img")} is inside the node's data directory ${open.dataDir}; name a file or device elsewhere (volumes without --backing are kept there)\n`],
    ];
    for (const [backing, code, message] of cases) {
      const result = await open.cli(["volume", "create", "bad", "--size", "4M", "--backing", backing]);
      expect({ backing, code: result.code, stderr: result.stderr }).toEqual({ backing, code, stderr: message });
    }
  });

  test("a backing too small says so", async () => {
    const tiny = path.join(open.dir, "tiny.img");
    fs.writeFileSync(tiny, new Uint8Array(64 * 1024));
    const small = await open.cli(["volume", "create", "tiny", "--backing", tiny]);
    expect(small.code).toBe(2);
    expect(small.stderr).toBe(`tandem: ${tiny} is too small: it holds 64 KiB, the smallest volume is 1 MiB\n`);
    const four = path.join(open.dir, "four.img");
    fs.writeFileSync(four, new Uint8Array(4 * MiB));
    const short = await open.cli(["volume", "create", "four", "--size", "8M", "--backing", four]);
    expect(short.code).toBe(2);
    expect(short.stderr).toBe(`tandem: ${four} is too small for --size 8 MiB: it holds 4 MiB\n`);
  });

  const loop = (() => {
    const probe = Bun.spawnSync(["losetup", "--version"]);
    return probe.exitCode === 0 && fs.existsSync("/dev/loop-control");
  })();
  test.skipIf(!loop)("a block device another program holds is refused (O_EXCL)", async () => {
    const image = path.join(other.dir, "device.img");
    fs.writeFileSync(image, new Uint8Array(8 * MiB));
    const attach = Bun.spawnSync(["losetup", "--find", "--show", image]);
    const device = attach.stdout.toString().trim();
    expect(attach.exitCode).toBe(0);
    try {
      await other.cliJson(["volume", "create", "dev", "--backing", device]);
      const taken = await open.cli(["volume", "create", "dev2", "--backing", device]);
      expect(taken.code).toBe(5);
      expect(taken.stderr).toBe(`tandem: ${device} is in use: mounted, or held by another program\n`);
      await other.cliJson(["volume", "delete", "dev"]);
    } finally {
      Bun.spawnSync(["losetup", "--detach", device]);
    }
  });
});

describe("the control socket and the config", () => {
  test("a malformed URL on the daemon's control socket is a JSON 400", async () => {
    const response = await fetch("http://tandem/v1/volumes/%E0%A4%A", { unix: open.controlSocket });
    expect(response.status).toBe(400);
    expect(response.headers.get("content-type")).toMatch(/application\/json/);
    expect(await response.json()).toMatchObject({ error: { code: "invalid_argument", message: expect.stringMatching(/malformed URL/) } });
    const unknown = await fetch("http://tandem/v1/nowhere", { unix: open.controlSocket });
    expect(unknown.status).toBe(404);
    expect(await unknown.json()).toMatchObject({ error: { code: "not_found" } });
  });

  test("dataDir naming a file, or under one, is a field error and exit 2", async () => {
    const dir = fs.mkdtempSync(path.join(os.tmpdir(), "tandem-datadir-"));
    try {
      fs.writeFileSync(path.join(dir, "file"), "");
      for (const [dataDir, message] of [
        ["file", `dataDir: ${path.join(dir, "file")} exists and is not a directory`],
        ["file/data", `dataDir: cannot create ${path.join(dir, "file/data")}`],
      ] as const) {
        fs.writeFileSync(path.join(dir, "node.json"), JSON.stringify({ name: "a", dataDir }));
        const run = await runCli(["node", "run", "--config", path.join(dir, "node.json")], { timeoutMs: 20_000 });
        expect(run.code).toBe(2);
        expect(run.stderr).toStartWith(`tandem: ${path.join(dir, "node.json")}: ${message}`);
        expect(run.stderr.trim().split("\n").length).toBe(1);
      }
    } finally {
      fs.rmSync(dir, { recursive: true, force: true });
    }
  });
});
