// `tandem install --yes` on two fresh node directories, as an installer script runs it: node a shows
// a code (given by the script) and waits on its replication address, node b (started at the same
// moment) waits for a's installer to listen, then dials it with the code. The daemons are started by
// the service step through a systemctl stand-in (this machine has no systemd). What it proves:
//  - every step is done on both nodes and both exit 0: the preflight passes on this machine; both
//    pair over TCP (the same secret file, 0600, the same cluster id, a accepts and b dials, each
//    with the other's address, configs the daemon loads, [witness] naming the shared file); a
//    formats the witness for that cluster and b sees a's format; `systemctl enable --now
//    tandem.service` starts the daemons; the link comes up with the new secret; b's first volume is
//    created and mirrored (synced on both nodes); `tandem witness show` sees the format, both on
//    the path itself and through each daemon, which reads it as reachable;
//  - running the whole command again on both nodes is safe: each step says already done (the
//    preflight's checks run again), nothing is exchanged, formatted or restarted;
//  - a second install with another peer on a paired node is refused, and without systemd the
//    service step is skipped with the reason.
import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import fs from "node:fs";
import path from "node:path";
import { loadNodeConfig } from "../../src/node/config.ts";
import { defaultEnvironment, type InstallReport, type InstallSettings, type InstallUi, runInstall, type StepResult } from "../../src/node/install/steps.ts";
import { runCli, tandemCommand } from "../helpers/daemon.ts";
import { eventually } from "../helpers/eventually.ts";
import { installPair, type InstallNode, type InstallPair } from "../helpers/install-pair.ts";
import { waitLabSynced } from "../helpers/lab.ts";

const code = "K7QM-3XPA";

function installArgs(pair: InstallPair, node: InstallNode, extra: string[]): string[] {
  return ["install", "--yes", "--json", "--config", node.config, "--name", node.name, "--data-dir", node.dataDir, "--listen", node.listen, "--witness", pair.witness, "--code", code, ...extra];
}

const statuses = (report: InstallReport) => Object.fromEntries(report.steps.map((step) => [step.id, step.status]));

/** The install as its own process, in the background; resolves with its parsed report. */
function installInBackground(pair: InstallPair, node: InstallNode, extra: string[]): Promise<{ code: number; report: InstallReport; stderr: string }> {
  const child = Bun.spawn([...tandemCommand, ...installArgs(pair, node, extra)], { stdout: "pipe", stderr: "pipe", env: { ...process.env, ...node.env } });
  const timer = setTimeout(() => child.kill("SIGKILL"), 120_000);
  return Promise.all([new Response(child.stdout).text(), new Response(child.stderr).text(), child.exited]).then(([stdout, stderr, exit]) => {
    clearTimeout(timer);
    try {
      return { code: exit, report: JSON.parse(stdout) as InstallReport, stderr };
    } catch {
      throw new Error(`install of ${node.name} printed no report (exit ${exit}):\n${stdout}\n${stderr}`);
    }
  });
}

/** A silent UI for in-process runs (the scripted install's answers are all in the settings). */
const quietUi: InstallUi = { stepStarted() {}, stepFinished() {}, progress() {}, showCode() {}, attemptFailed() {} };

function settingsOf(pair: InstallPair, node: InstallNode, extra: Partial<InstallSettings> = {}): InstallSettings {
  const [host, port] = node.listen.split(":");
  return { configPath: node.config, name: node.name, dataDir: node.dataDir, listen: { hostname: host!, port: Number(port) }, witness: pair.witness, code, ...extra };
}

describe("tandem install --yes on two fresh nodes", () => {
  let pair: InstallPair;

  beforeAll(async () => {
    pair = await installPair();
  });
  afterAll(async () => {
    await pair?.cleanup();
  });

  test("both at once: paired, the witness formatted, the service started, the link up with the new secret, b's first volume mirrored", async () => {
    // Both start at once, as a script on each node would: b waits for a's installer to listen.
    const [a, b] = await Promise.all([installInBackground(pair, pair.a, []), installInBackground(pair, pair.b, ["--peer", pair.a.listen, "--volume", "vm1", "--size", "64M"])]);
    expect(statuses(a.report)).toEqual({ preflight: "done", pairing: "done", witness: "done", service: "done", link: expect.stringMatching(/^(already-)?done$/), volume: "skipped" });
    expect(statuses(b.report)).toEqual({ preflight: "done", pairing: "done", witness: "done", service: "done", link: expect.stringMatching(/^(already-)?done$/), volume: "done" });
    expect([a.code, b.code]).toEqual([0, 0]);
    expect([a.report.ok, b.report.ok]).toEqual([true, true]);
    expect(a.stderr).toContain(`pairing code ${code}: on the other node run tandem install --peer ${pair.a.listen} --code ${code}`);
    const step = (report: InstallReport, id: StepResult["id"]) => report.steps.find((result) => result.id === id)!;

    // Pairing, and what it judged that needs both nodes: the same witness (files have no by-id name: skipped) and the clocks.
    expect(step(b.report, "pairing").detail).toContain(`paired with a (${pair.a.listen}); this node dials a`);
    expect(step(b.report, "pairing").checks?.find((check) => check.id === "clock-skew")?.status).toBe("ok");
    expect(step(a.report, "pairing").detail).toContain(`paired with b (${pair.b.listen}); this node accepts b's connection`);
    expect(step(a.report, "pairing").checks?.find((check) => check.id === "link-rtt")?.status).toMatch(/ok|warn/);
    const configA = loadNodeConfig(pair.a.config);
    const configB = loadNodeConfig(pair.b.config);
    const cluster = Buffer.from(configA.peer!.clusterId).toString("hex");
    expect(Buffer.from(configA.peer!.secret).equals(Buffer.from(configB.peer!.secret))).toBe(true);
    expect(configA.peer!.secret.length).toBe(32);
    expect(Buffer.from(configB.peer!.clusterId).toString("hex")).toBe(cluster);
    expect([configA.peer!.connect, configB.peer!.connect]).toEqual(["accept", "dial"]);
    expect(configA.peer).toMatchObject({ name: "b", address: { hostname: "127.0.0.1", port: pair.b.port }, listen: { hostname: "127.0.0.1", port: pair.a.port } });
    expect(configB.peer).toMatchObject({ name: "a", address: { hostname: "127.0.0.1", port: pair.a.port }, listen: { hostname: "127.0.0.1", port: pair.b.port } });
    expect([configA.witness?.path, configB.witness?.path]).toEqual([pair.witness, pair.witness]);
    expect([configA.dataDir, configB.dataDir]).toEqual([pair.a.dataDir, pair.b.dataDir]);
    for (const node of [pair.a, pair.b]) expect(fs.statSync(path.join(node.dir, "pairing.secret")).mode & 0o777).toBe(0o600);

    // The witness: formatted once, by a (it accepts the link), for the pair's cluster; b saw a's format.
    expect(step(a.report, "witness").detail).toBe(`formatted ${pair.witness} for this pair (cluster ${cluster}): a 128 KiB witness area; it held zeros`);
    expect(step(b.report, "witness").detail).toBe(`a formatted ${pair.witness} for this pair (formatted, no lease decided yet)`);
    const shown = await runCli(["witness", "show", pair.witness, "--json"]);
    expect(JSON.parse(shown.stdout)).toMatchObject({ path: pair.witness, cluster, formatted: true, problems: [] });
    for (const node of [pair.a, pair.b]) {
      // The daemons read the same format: `witness show` through each, and the witness reachable in status.
      const viaDaemon = await eventually(`${node.name}'s daemon reading the witness`, async () => {
        const result = await runCli(["witness", "show", "--json", "--socket", node.controlSocket]);
        return result.code === 0 && (JSON.parse(result.stdout) as { formatted: boolean; cluster: string });
      }, 10_000);
      expect(viaDaemon).toMatchObject({ path: pair.witness, cluster, formatted: true });
      const status = JSON.parse((await runCli(["status", "--json", "--socket", node.controlSocket])).stdout);
      expect(status.quorum.witness).toMatchObject({ path: pair.witness, reachable: true, failure: null, formatted: true });
    }

    // The service, the link, the first volume.
    for (const node of [pair.a, pair.b]) expect(node.systemctl.calls()).toEqual(["cat tandem.service", "is-enabled tandem.service", "is-active tandem.service", "enable --now tandem.service"]);
    expect(step(a.report, "link").detail).toContain("the link to b is up");
    expect(step(b.report, "link").detail).toContain("the link to a is up");
    expect(step(b.report, "volume").detail).toContain("created vm1 (64 MiB), primary on b");
    // Mirrored: both nodes list both replicas of vm1 as synced.
    const labLike = path.join(pair.dir, "sockets");
    fs.mkdirSync(path.join(labLike, "a"), { recursive: true });
    fs.mkdirSync(path.join(labLike, "b"), { recursive: true });
    fs.symlinkSync(pair.a.controlSocket, path.join(labLike, "a", "control.sock"));
    fs.symlinkSync(pair.b.controlSocket, path.join(labLike, "b", "control.sock"));
    await waitLabSynced(labLike, "vm1", 60_000);
  }, 240_000);

  test("everything again, the whole command on both nodes: each step says already done", async () => {
    /** Both copies of the superblock (records 0 and 1, 4 KiB each), which hold the format's time. */
    const superblocks = () => Buffer.from(fs.readFileSync(pair.witness).subarray(0, 2 * 4096));
    const witnessBefore = superblocks();
    const [a, b] = await Promise.all([
      runCli(installArgs(pair, pair.a, []), { env: pair.a.env, timeoutMs: 120_000 }),
      runCli(installArgs(pair, pair.b, ["--peer", pair.a.listen, "--volume", "vm1", "--size", "64M"]), { env: pair.b.env, timeoutMs: 120_000 }),
    ]);
    expect([a.code, b.code]).toEqual([0, 0]);
    const reportA = JSON.parse(a.stdout) as InstallReport;
    const reportB = JSON.parse(b.stdout) as InstallReport;
    expect(statuses(reportA)).toEqual({ preflight: "done", pairing: "already-done", witness: "already-done", service: "already-done", link: "already-done", volume: "skipped" });
    expect(statuses(reportB)).toEqual({ preflight: "done", pairing: "already-done", witness: "already-done", service: "already-done", link: "already-done", volume: "already-done" });
    // Nothing exchanged (no code shown), nothing restarted.
    expect(a.stderr).not.toContain("pairing code");
    for (const node of [pair.a, pair.b]) expect(node.systemctl.calls().filter((call) => call.startsWith("enable") || call.startsWith("restart"))).toEqual(["enable --now tandem.service"]);
    // The witness is not formatted again: its superblocks are the same bytes (the daemons only read it yet).
    expect(superblocks().equals(witnessBefore)).toBe(true);
    const text = await runCli(["install", "--yes", "--config", pair.b.config, "--peer", pair.a.listen, "--code", code], { env: pair.b.env, timeoutMs: 120_000 });
    expect(text.code).toBe(0);
    for (const line of ["already done Pairing: paired with a", `already done Witness: ${pair.witness} holds this pair's witness`, "already done Service: tandem.service is enabled and running", "already done Replication link: the link to a is up", "node b is installed"]) expect(text.stdout).toContain(line);
  }, 240_000);

  test("a paired node refuses to pair with another peer; without systemd the service step is skipped with the reason", async () => {
    const other = await runCli(installArgs(pair, pair.b, ["--peer", "127.0.0.1:1"]), { env: pair.b.env });
    const report = JSON.parse(other.stdout) as InstallReport;
    const pairing = report.steps.find((step) => step.id === "pairing") as StepResult;
    expect(pairing).toMatchObject({ status: "failed", detail: `this node is already paired with a at ${pair.a.listen}, not 127.0.0.1:1` });
    expect(other.code).toBe(1);

    const noSystemd = await runInstall(settingsOf(pair, pair.b), quietUi, { ...defaultEnvironment(), env: { ...process.env, TANDEM_SYSTEMCTL: "" } }, ["service"]);
    expect(noSystemd.steps[0]).toMatchObject({ status: "skipped", detail: expect.stringMatching(/^systemd does not run this machine \(PID 1 is .+\)$/), fix: `run the daemon under your own supervisor: tandem node run --config ${pair.b.config}` });
  }, 60_000);
});

describe("usage errors", () => {
  test("bad flags are usage errors with exit 2", async () => {
    const cases: [string[], string][] = [
      [["install", "--yes", "--code", "0000-0000"], "--code: a pairing code has no 0"],
      [["install", "--yes", "--volume", "vm1"], "--volume and --size go together"],
      [["install", "--yes", "--connect", "both"], "--connect must be dial or accept"],
      [["install", "--yes", "--peer", "host:99999"], "is not HOST:PORT"],
    ];
    for (const [args, message] of cases) {
      const result = await runCli(args);
      expect({ args, code: result.code, stderr: result.stderr }).toEqual({ args, code: 2, stderr: expect.stringContaining(message) });
    }
    const json = await runCli(["install", "--json"]);
    expect(json.code).toBe(2);
    expect(JSON.parse(json.stdout)).toEqual({ error: { code: "invalid_argument", message: expect.stringContaining("--json needs --yes") } });
  });

  test("--new-code prints a fresh code of the unambiguous alphabet", async () => {
    const result = await runCli(["install", "--new-code", "--json"]);
    expect(JSON.parse(result.stdout).code).toMatch(/^[2-9A-HJKMNP-TV-Z]{4}-[2-9A-HJKMNP-TV-Z]{4}$/);
  });
});
