// `tandem install --yes` on two fresh node directories, as an installer script runs it: node a shows
// a code (given by the script) and waits on its replication address, node b (started at the same
// moment) waits for a's installer to listen, then dials it with the code.
// Then the steps past the witness with the real daemons, started by the service step through a
// systemctl stand-in (this machine has no systemd). What it proves:
//  - the preflight passes on this machine; both nodes pair over TCP: the same secret file (0600),
//    the same cluster id, a accepts and b dials, each with the other's address, configs the daemon
//    loads; the witness step checks the path and stops the install, because this build cannot
//    format a witness (nothing after it runs);
//  - the service step runs `systemctl enable --now tandem.service`, the daemons start, the link comes
//    up with the new secret, and b's first volume is created and mirrored (synced on both nodes);
//  - running it all again is safe and reports each step as already done;
//  - without systemd the service step is skipped with the reason, and a second install with another
//    peer on a paired node is refused.
import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import fs from "node:fs";
import path from "node:path";
import { loadNodeConfig } from "../../src/node/config.ts";
import { defaultEnvironment, type InstallReport, type InstallSettings, type InstallUi, runInstall, type StepResult } from "../../src/node/install/steps.ts";
import { runCli, tandemCommand } from "../helpers/daemon.ts";
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

  test("preflight and pairing on both; the witness step stops the install on this build", async () => {
    // Both start at once, as a script on each node would: b waits for a's installer to listen.
    const [resultA, b] = await Promise.all([installInBackground(pair, pair.a, []), installInBackground(pair, pair.b, ["--peer", pair.a.listen, "--volume", "vm1", "--size", "64M"])]);
    for (const result of [resultA, b]) {
      expect(statuses(result.report)).toEqual({ preflight: "done", pairing: "done", witness: "failed", service: "skipped", link: "skipped", volume: "skipped" });
      expect(result.code).toBe(1);
      const witness = result.report.steps.find((step) => step.id === "witness")!;
      expect(witness.detail).toContain(`${pair.witness} is reachable (1 MiB), but this build of tandem cannot format a witness`);
      expect(result.report.steps.find((step) => step.id === "service")!.detail).toBe("not run: the witness step failed");
    }
    expect(resultA.stderr).toContain(`pairing code ${code}: on the other node run tandem install --peer ${pair.a.listen} --code ${code}`);
    // The pairing step judged what needs both nodes: the same witness (files have no by-id name: skipped) and the clocks.
    const pairingB = b.report.steps.find((step) => step.id === "pairing")!;
    expect(pairingB.detail).toContain(`paired with a (${pair.a.listen}); this node dials a`);
    expect(pairingB.checks?.find((check) => check.id === "clock-skew")?.status).toBe("ok");
    const pairingA = resultA.report.steps.find((step) => step.id === "pairing")!;
    expect(pairingA.detail).toContain(`paired with b (${pair.b.listen}); this node accepts b's connection`);
    expect(pairingA.checks?.find((check) => check.id === "link-rtt")?.status).toMatch(/ok|warn/);

    const configA = loadNodeConfig(pair.a.config);
    const configB = loadNodeConfig(pair.b.config);
    expect(Buffer.from(configA.peer!.secret).equals(Buffer.from(configB.peer!.secret))).toBe(true);
    expect(configA.peer!.secret.length).toBe(32);
    expect(Buffer.from(configA.peer!.clusterId).toString("hex")).toBe(Buffer.from(configB.peer!.clusterId).toString("hex"));
    expect([configA.peer!.connect, configB.peer!.connect]).toEqual(["accept", "dial"]);
    expect(configA.peer).toMatchObject({ name: "b", address: { hostname: "127.0.0.1", port: pair.b.port }, listen: { hostname: "127.0.0.1", port: pair.a.port } });
    expect(configB.peer).toMatchObject({ name: "a", address: { hostname: "127.0.0.1", port: pair.a.port }, listen: { hostname: "127.0.0.1", port: pair.b.port } });
    expect([configA.witnessPath, configB.witnessPath]).toEqual([pair.witness, pair.witness]);
    expect([configA.dataDir, configB.dataDir]).toEqual([pair.a.dataDir, pair.b.dataDir]);
    for (const node of [pair.a, pair.b]) expect(fs.statSync(path.join(node.dir, "pairing.secret")).mode & 0o777).toBe(0o600);
    // Nothing past the witness ran: systemctl was never called.
    expect([pair.a.systemctl.calls(), pair.b.systemctl.calls()]).toEqual([[], []]);

    // Again: pairing is already done, nothing is exchanged (no code is shown), the witness stops it again.
    const again = await runCli(installArgs(pair, pair.b, ["--peer", pair.a.listen]), { env: pair.b.env });
    const report = JSON.parse(again.stdout) as InstallReport;
    expect(statuses(report)).toMatchObject({ preflight: "done", pairing: "already-done", witness: "failed" });
    expect(report.steps.find((step) => step.id === "pairing")!.detail).toContain("paired with a");
  }, 180_000);

  test("past the witness: the service step starts the daemons, the link comes up with the new secret, b's first volume is mirrored", async () => {
    const after = ["service", "link", "volume"] as const;
    const [reportA, reportB] = await Promise.all([
      runInstall(settingsOf(pair, pair.a), quietUi, { ...defaultEnvironment(), env: { ...process.env, ...pair.a.env } }, after),
      runInstall(settingsOf(pair, pair.b, { volume: { name: "vm1", sizeBytes: 64 << 20 } }), quietUi, { ...defaultEnvironment(), env: { ...process.env, ...pair.b.env } }, after),
    ]);
    expect(statuses(reportA)).toEqual({ service: "done", link: expect.stringMatching(/^(already-)?done$/), volume: "skipped" });
    expect(statuses(reportB)).toEqual({ service: "done", link: expect.stringMatching(/^(already-)?done$/), volume: "done" });
    expect(pair.a.systemctl.calls()).toEqual(["cat tandem.service", "is-enabled tandem.service", "is-active tandem.service", "enable --now tandem.service"]);
    expect(pair.b.systemctl.calls()).toEqual(["cat tandem.service", "is-enabled tandem.service", "is-active tandem.service", "enable --now tandem.service"]);
    const link = (report: InstallReport) => report.steps.find((step) => step.id === "link")!.detail;
    expect(link(reportA)).toContain("the link to b is up");
    expect(link(reportB)).toContain("the link to a is up");
    expect(reportB.steps.find((step) => step.id === "volume")!.detail).toContain("created vm1 (64 MiB), primary on b");
    // Mirrored: both nodes list both replicas of vm1 as synced.
    const labLike = path.join(pair.dir, "sockets");
    fs.mkdirSync(path.join(labLike, "a"), { recursive: true });
    fs.mkdirSync(path.join(labLike, "b"), { recursive: true });
    fs.symlinkSync(pair.a.controlSocket, path.join(labLike, "a", "control.sock"));
    fs.symlinkSync(pair.b.controlSocket, path.join(labLike, "b", "control.sock"));
    await waitLabSynced(labLike, "vm1", 60_000);
  }, 180_000);

  test("everything again, the whole command on both nodes: each step that ran says already done", async () => {
    const [a, b] = await Promise.all([
      runCli(installArgs(pair, pair.a, []), { env: pair.a.env }),
      runCli(installArgs(pair, pair.b, ["--peer", pair.a.listen, "--volume", "vm1", "--size", "64M"]), { env: pair.b.env }),
    ]);
    // The witness still stops the full command on this build; the rest is checked step by step below.
    for (const result of [a, b]) expect(statuses(JSON.parse(result.stdout) as InstallReport)).toMatchObject({ pairing: "already-done", witness: "failed" });
    const after = ["pairing", "service", "link", "volume"] as const;
    const reportB = await runInstall(settingsOf(pair, pair.b, { peer: { hostname: "127.0.0.1", port: pair.a.port }, volume: { name: "vm1", sizeBytes: 64 << 20 } }), quietUi, { ...defaultEnvironment(), env: { ...process.env, ...pair.b.env } }, after);
    expect(statuses(reportB)).toEqual({ pairing: "already-done", service: "already-done", link: "already-done", volume: "already-done" });
    expect(pair.b.systemctl.calls().filter((call) => call.startsWith("enable") || call.startsWith("restart"))).toEqual(["enable --now tandem.service"]);
    const text = await runCli(["install", "--yes", "--config", pair.b.config, "--peer", pair.a.listen, "--code", code], { env: pair.b.env });
    expect(text.stdout).toContain("already done Pairing: paired with a");
    expect(text.stdout).toContain("the install stopped; run tandem install again once the failed step is fixed");
  }, 180_000);

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
