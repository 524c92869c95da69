// The real `tandem tui` in a terminal: tmux runs it at 80x24 with NO_COLOR against node a of a
// two-node lab (with CI=true set, as on a CI runner or in a provisioning job: the dashboard
// must still draw on a terminal), the test sends keys and reads the screen with capture-pane. It shows the pair
// healthy; `?` lists the keys; after `tandem lab cut` the link is DOWN and the node DEGRADED, and
// the failover screen explains why a failover from a is not possible; after `lab heal` it is back.
// On the healthy pair, the failover screen drives a planned switchover to b: y confirms, the
// daemon's answer shows, and both nodes then name b the primary.
// With the daemon frozen (SIGSTOP, a hung daemon) the screen keeps answering keys and marks the data
// STALE with its age, and turns live again on SIGCONT. `q` quits. Every wait polls the screen with
// a deadline; the lab and the tmux server are ours and are stopped by the test.
import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import fs from "node:fs";
import path from "node:path";
import { runCli, tandemCommand } from "../helpers/daemon.ts";
import { createLab, type TestLab } from "../helpers/lab.ts";

const tmuxServer = `tandem-tui-${process.pid}`;
const hasTmux = Bun.which("tmux") !== null;

function tmux(args: string[]): { code: number; stdout: string } {
  const result = Bun.spawnSync(["tmux", "-L", tmuxServer, "-f", "/dev/null", ...args], { timeout: 10_000 });
  return { code: result.exitCode ?? -1, stdout: result.stdout.toString() };
}

const screen = () => tmux(["capture-pane", "-p", "-t", "tui"]).stdout;

/** Wait until the screen shows every one of `texts`; fail with the last screen. */
async function waitScreen(texts: string[], timeoutMs = 30_000): Promise<string> {
  const deadline = Date.now() + timeoutMs;
  let last = "";
  while (Date.now() < deadline) {
    last = screen();
    if (texts.every((text) => last.includes(text))) return last;
    await Bun.sleep(50);
  }
  throw new Error(`the screen did not show ${JSON.stringify(texts)} within ${timeoutMs} ms:\n${last}`);
}

const quote = (word: string) => `'${word.replaceAll("'", "'\\''")}'`;

describe.skipIf(!hasTmux)("tandem tui in tmux against the lab", () => {
  let testLab: TestLab;
  let dir: string;
  const lab = (args: string[]) => testLab.lab(args);

  beforeAll(async () => {
    testLab = createLab("tandem-tui-");
    dir = testLab.dir;
    await testLab.up();
    const command = [...tandemCommand, "tui", "--socket", path.join(dir, "a", "control.sock")].map(quote).join(" ");
    const started = tmux(["new-session", "-d", "-s", "tui", "-x", "80", "-y", "24", `NO_COLOR=1 CI=true exec ${command}`]);
    if (started.code !== 0) throw new Error("tmux could not start the tui");
  }, 120_000);

  afterAll(async () => {
    // Node a may have been left stopped (SIGSTOP) by a test that failed; `lab down` needs it running.
    const pidFile = path.join(dir, "a", "node.pid");
    const pid = fs.existsSync(pidFile) ? Number(fs.readFileSync(pidFile, "utf8")) : 0;
    if (pid > 0) {
      try {
        process.kill(pid, "SIGCONT");
      } catch {
        // Already gone (the lab never came up, or the node died): nothing to resume.
      }
    }
    tmux(["kill-server"]);
    await testLab?.stop();
  });

  test("healthy pair, the keys, a cut link, the failover screen, a healed link", async () => {
    const healthy = await waitScreen(["TANDEM node a  HEALTHY", "link UP", "> demo", "synced", "quorum SHARED epoch"]);
    expect(healthy.split("\n").every((line) => line.length <= 80)).toBe(true);
    expect(healthy).not.toContain("\u001b");

    tmux(["send-keys", "-t", "tui", "?"]);
    await waitScreen(["KEYS", "failover screen for the selected volume"]);
    tmux(["send-keys", "-t", "tui", "?"]);
    await waitScreen(["> demo"]);

    expect((await lab(["cut"])).code).toBe(0);
    const cut = await waitScreen(["DEGRADED", "link DOWN", "! replication link to b is down", "demo: writes, but peer b unreachable"]);
    expect(cut).toContain("? keys  up/down select  f failover");

    tmux(["send-keys", "-t", "tui", "f"]);
    await waitScreen(["Failover of demo is not possible now:", "b is unreachable from a"]);
    tmux(["send-keys", "-t", "tui", "Enter"]);
    await waitScreen(["> demo", "EVENTS"]);

    expect((await lab(["heal"])).code).toBe(0);
    await waitScreen(["HEALTHY", "link UP", "synced"], 60_000);
  }, 180_000);

  test("a hung daemon: the screen stays responsive and shows the data as STALE with its age; live again after", async () => {
    const pid = Number(fs.readFileSync(path.join(dir, "a", "node.pid"), "utf8"));
    process.kill(pid, "SIGSTOP");
    try {
      const stale = await waitScreen(["STALE: data", "! cannot reach the daemon"]);
      expect(stale).toContain("> demo");
      tmux(["send-keys", "-t", "tui", "?"]);
      await waitScreen(["KEYS", "STALE: data"]);
      tmux(["send-keys", "-t", "tui", "Escape"]);
      await waitScreen(["> demo", "STALE: data"]);
    } finally {
      process.kill(pid, "SIGCONT");
    }
    await waitScreen(["HEALTHY  live"]);
  }, 120_000);

  test("a planned switchover driven from the failover screen: the review, y to confirm, the daemon's answer, b primary after", async () => {
    const primaryOn = async (node: string) => {
      const result = await runCli(["status", "--json", "--socket", path.join(dir, node, "control.sock")]);
      const status = JSON.parse(result.stdout) as { volumes: { name: string; primary: string }[] };
      return status.volumes.find((volume) => volume.name === "demo")?.primary;
    };
    expect(await primaryOn("a")).toBe("a");
    await waitScreen(["HEALTHY", "quorum SHARED", "> demo", "synced"], 60_000);
    tmux(["send-keys", "-t", "tui", "f"]);
    await waitScreen(["Planned switchover of demo: a -> b", "What is discarded", "nothing: both replicas hold every acknowledged write"]);
    tmux(["send-keys", "-t", "tui", "Enter"]);
    await waitScreen(["Move the primary role of demo to b? Press y to confirm"]);
    tmux(["send-keys", "-t", "tui", "y"]);
    await waitScreen(["Done:"], 60_000);
    expect(await primaryOn("b")).toBe("b");
    expect(await primaryOn("a")).toBe("b");
    tmux(["send-keys", "-t", "tui", "Enter"]);
    await waitScreen(["> demo", "EVENTS"]);
  }, 120_000);

  test("q quits the dashboard", async () => {
    tmux(["send-keys", "-t", "tui", "q"]);
    const deadline = Date.now() + 10_000;
    while (tmux(["has-session", "-t", "tui"]).code === 0 && Date.now() < deadline) await Bun.sleep(50);
    expect(tmux(["has-session", "-t", "tui"]).code).not.toBe(0);
  });
});
