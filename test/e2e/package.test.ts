// The Debian package as an operator installs it: packaging/deb.sh builds dist/tandem_VERSION_amd64.deb
// (lintian clean where lintian runs), dpkg installs it into an empty root (no Bun, no Node, nothing
// but the package's files and the C library the binary links), and inside that root, chrooted in a
// private mount namespace with only /proc mounted, `tandem --version` answers, `tandem node run`
// starts on the packaged default config, creates a volume, answers `tandem status` and stops cleanly
// on SIGTERM. `systemd-analyze verify` checks the unit with the packaged binary in place (an overlay
// on /usr/bin inside the namespace, so the machine's own /usr/bin is untouched). Every process is
// started and stopped by its pid with bounded waits.
import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import fs from "node:fs";
import os from "node:os";
import path from "node:path";
import { tandemVersion } from "../../src/common/version.ts";
import { repositoryRoot } from "../helpers/daemon.ts";
import { until } from "../helpers/until.ts";

const deb = path.join(repositoryRoot, "dist", `tandem_${tandemVersion}_amd64.deb`);
const hasSystemdAnalyze = Bun.which("systemd-analyze") !== null;

function run(command: string[], timeoutMs = 60_000, env: Record<string, string> = {}): { code: number; stdout: string; stderr: string } {
  const result = Bun.spawnSync(command, { timeout: timeoutMs, env: { ...process.env, TMPDIR: os.tmpdir(), ...env } });
  return { code: result.exitCode ?? -1, stdout: result.stdout.toString(), stderr: result.stderr.toString() };
}

/** `tandem ARGS` inside the clean root: a private mount namespace, /proc mounted (Bun needs it), then chroot. */
function inRoot(root: string, args: string[]): string[] {
  return ["unshare", "--mount", "sh", "-c", 'mount -t proc proc "$0/proc" && exec chroot "$0" /usr/bin/tandem "$@"', root, ...args];
}

describe("the Debian package in a clean root", () => {
  let root: string;

  beforeAll(() => {
    // REBUILD: package the binary of this tree, never one left in dist/ by an older build.
    const built = run([path.join(repositoryRoot, "packaging/deb.sh")], 300_000, { REBUILD: "1" });
    if (built.code !== 0) throw new Error(`deb.sh failed:\n${built.stdout}${built.stderr}`);
    root = fs.mkdtempSync(path.join(os.tmpdir(), "tandem-root-"));
    for (const directory of ["var/lib/dpkg/info", "var/lib/dpkg/updates", "proc", "tmp", "run"]) fs.mkdirSync(path.join(root, directory), { recursive: true });
    fs.writeFileSync(path.join(root, "var/lib/dpkg/status"), "");
  }, 320_000);

  afterAll(() => {
    if (root) fs.rmSync(root, { recursive: true, force: true });
  });

  test("deb.sh built the package with the binary, the unit and the default config as a conffile (deb.sh fails on any lintian error or warning)", () => {
    const contents = run(["dpkg-deb", "--contents", deb]).stdout;
    for (const file of ["./usr/bin/tandem", "./lib/systemd/system/tandem.service", "./etc/tandem/node.toml", "./usr/share/man/man1/tandem.1.gz"]) expect(contents).toContain(file);
    expect(run(["dpkg-deb", "--info", deb, "conffiles"]).stdout.trim()).toBe("/etc/tandem/node.toml");
    expect(run(["dpkg-deb", "--field", deb, "Depends"]).stdout.trim()).toBe("libc6 (>= 2.17)");
  });

  test("dpkg installs it into an empty root where, with only libc beside it, tandem runs as the daemon and the CLI", async () => {
    const installed = run(["dpkg", `--root=${root}`, "--force-depends", "-i", deb]);
    expect(installed.code).toBe(0);
    expect(fs.existsSync(path.join(root, "usr/bin/tandem"))).toBe(true);
    // The C library the binary links, and nothing else.
    const libraries = run(["ldd", path.join(root, "usr/bin/tandem")]).stdout.match(/\/\S+/g) ?? [];
    expect(libraries.length).toBeGreaterThan(0);
    for (const library of libraries) {
      fs.mkdirSync(path.join(root, path.dirname(library)), { recursive: true });
      fs.copyFileSync(fs.realpathSync(library), path.join(root, library));
    }
    expect(fs.existsSync(path.join(root, "usr/bin/bun")) || fs.existsSync(path.join(root, "usr/bin/node"))).toBe(false);

    const version = run(inRoot(root, ["--version"]));
    expect(version).toEqual({ code: 0, stdout: `${tandemVersion}\n`, stderr: "" });

    const log = path.join(root, "tmp", "node.log");
    const logFd = fs.openSync(log, "w");
    const daemon = Bun.spawn(inRoot(root, ["node", "run", "--config", "/etc/tandem/node.toml"]), { stdout: logFd, stderr: logFd });
    fs.closeSync(logFd);
    const killTimer = setTimeout(() => daemon.kill("SIGKILL"), 60_000);
    try {
      const socket = path.join(root, "run/tandem/control.sock");
      const started = await until("the packaged daemon's control socket", () => (fs.existsSync(socket) ? "started" : daemon.exitCode !== null && `exited with ${daemon.exitCode}`), 20_000).catch(
        (error: Error) => error.message,
      );
      if (started !== "started") throw new Error(`the packaged daemon did not start (${started}):\n${fs.readFileSync(log, "utf8")}`);
      expect(run(inRoot(root, ["volume", "create", "v1", "--size", "8M"])).code).toBe(0);
      const status = run(inRoot(root, ["status", "--json"]));
      expect(status.code).toBe(0);
      const report = JSON.parse(status.stdout) as { node: { name: string; dataDir: string }; volumes: { name: string; backing: string }[] };
      expect(report.node).toMatchObject({ name: "node1", dataDir: "/var/lib/tandem" });
      expect(report.volumes.map((volume) => [volume.name, volume.backing])).toEqual([["v1", "/var/lib/tandem/volumes/v1.img"]]);
      expect(fs.statSync(path.join(root, "var/lib/tandem/volumes/v1.img")).size).toBe(8 * 1024 * 1024);
    } finally {
      daemon.kill("SIGTERM");
      expect(await daemon.exited).toBe(0);
      clearTimeout(killTimer);
    }
    expect(fs.readFileSync(log, "utf8")).toContain('"msg":"node stopped"');
  }, 90_000);

  // Runs after the install above, on the same root.
  test.skipIf(!hasSystemdAnalyze)("systemd-analyze verify accepts the unit with the packaged binary in place", () => {
    const unit = path.join(root, "lib/systemd/system/tandem.service");
    const script = `mount -t overlay overlay -o lowerdir="$1/usr/bin":/usr/bin /usr/bin && exec systemd-analyze verify "$2"`;
    const verified = run(["unshare", "--mount", "sh", "-c", script, "sh", root, unit]);
    expect(verified).toEqual({ code: 0, stdout: "", stderr: "" });
  });
});
