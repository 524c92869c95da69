// The daemon with a witness configured: it says at start-up whether a watchdog is armed; under
// `auto` without a watchdog (this machine has no /dev/watchdog and no softdog) it runs and says
// why; under `required` without one it refuses to start, naming the reason; with a device (a fake
// file here) it arms it, feeds it from its event loop and disarms it with the magic 'V' on a clean
// stop. Its status reports the witness it reads. Real daemons through test/helpers/daemon.ts.
import { afterAll, describe, expect, test } from "bun:test";
import fs from "node:fs";
import os from "node:os";
import path from "node:path";
import { defaultQuorumTiming } from "../../src/quorum/config.ts";
import { formatWitness } from "../../src/quorum/witness-io.ts";
import { parseClusterId } from "../../src/quorum/format.ts";
import { TestDaemon } from "../helpers/daemon.ts";
import { eventually } from "../helpers/eventually.ts";

const dirs: string[] = [];
afterAll(() => {
  for (const dir of dirs) fs.rmSync(dir, { recursive: true, force: true });
});

async function witnessFile(): Promise<string> {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), "tandem-witness-daemon-"));
  dirs.push(dir);
  const file = path.join(dir, "witness.img");
  fs.writeFileSync(file, new Uint8Array(1024 * 1024));
  await formatWitness(file, { clusterId: parseClusterId("0123456789abcdef0123456789abcdef"), timing: defaultQuorumTiming, force: false, nowMs: Date.now() });
  return file;
}

function startupRecord(daemon: TestDaemon, message: string): Record<string, unknown> | undefined {
  return daemon.logRecords().find((record) => record.msg === message);
}

describe("the watchdog at start-up", () => {
  test("auto without a watchdog: the daemon runs, says none is armed and why, and reads its witness", async () => {
    const witness = await witnessFile();
    const daemon = await TestDaemon.start({ config: { witness: { path: witness }, watchdog: { mode: "auto", device: path.join(path.dirname(witness), "no-watchdog") } } });
    try {
      const record = startupRecord(daemon, "no watchdog armed");
      expect(record).toMatchObject({ level: "warn", mode: "auto" });
      expect(String(record!.reason)).toStartWith("no watchdog: ");
      const status = await eventually("the daemon reads its witness", async () => {
        const reply = await daemon.api<{ quorum: { state: string; witness: { reachable: boolean; formatted: boolean; watchdog: { armed: boolean }; latency: { count: number } } } }>("GET", "/status");
        return reply.quorum.witness.reachable && reply.quorum;
      }, 10_000);
      // The lease does not govern writes yet: the quorum is not configured, but its witness is watched.
      expect(status).toMatchObject({ state: "not-configured", witness: { formatted: true, watchdog: { armed: false } } });
      expect(status.witness.latency.count).toBeGreaterThan(0);
    } finally {
      await daemon.cleanup();
    }
  }, 60_000);

  test("required without a watchdog: the daemon refuses to start and says why", async () => {
    const witness = await witnessFile();
    const device = path.join(path.dirname(witness), "no-watchdog");
    let failure = "";
    try {
      const daemon = await TestDaemon.start({ config: { witness: { path: witness }, watchdog: { mode: "required", device } } });
      await daemon.cleanup();
    } catch (error) {
      failure = (error as Error).message;
    }
    expect(failure).toContain(`no watchdog: ${device} does not exist`);
    expect(failure).toContain('tandem: no watchdog: ');
    expect(failure).toContain('the config requires one (watchdog = "required")');
  }, 60_000);

  test("a watchdog device: armed at start-up, fed while the daemon runs, disarmed with 'V' on a clean stop", async () => {
    const witness = await witnessFile();
    const device = path.join(path.dirname(witness), "fake-watchdog");
    fs.writeFileSync(device, "");
    const daemon = await TestDaemon.start({ config: { witness: { path: witness }, watchdog: { mode: "required", device } } });
    try {
      expect(startupRecord(daemon, "watchdog armed")).toMatchObject({ level: "info", device });
      await eventually("the daemon feeds the watchdog", async () => fs.readFileSync(device, "utf8").length >= 3, 10_000);
      expect(fs.readFileSync(device, "utf8")).toMatch(/^\.+$/);
      expect(await daemon.stop()).toBe(0);
      expect(fs.readFileSync(device, "utf8")).toMatch(/^\.+V$/);
    } finally {
      await daemon.cleanup();
    }
  }, 60_000);
});
