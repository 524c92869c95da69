// The install wizard for real, in two terminals: tmux runs `tandem install` for node a and node b
// (80x24, NO_COLOR, CI=true as on a CI runner: the wizard must still draw) on two fresh node directories. On a the test types the answers (name, witness,
// "show a code", the replication address), accepts the preflight's warnings (if any), and reads the
// pairing code off a's screen; on b (told --peer) it does the same and types that code. Both then
// walk the rest: a formats the witness and b sees it, the service step starts each daemon (through
// a systemctl stand-in), the link comes up; each wizard asks for a first volume: a gets none (Esc),
// b creates vm1 of 64M. Both screens end INSTALLED with every step's line, the two configs hold the
// same secret and cluster id, the witness holds that cluster, and vm1 is synced on both nodes.
// Every wait polls a screen with a deadline; the tmux server and anything the installs started are
// ours and are stopped by the test.
import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import fs from "node:fs";
import path from "node:path";
import { loadNodeConfig } from "../../src/node/config.ts";
import { runCli, tandemCommand } from "../helpers/daemon.ts";
import { installPair, type InstallPair } from "../helpers/install-pair.ts";
import { waitLabSynced } from "../helpers/lab.ts";

const tmuxServer = `tandem-install-${process.pid}`;
const hasTmux = Bun.which("tmux") !== null;

function tmux(args: string[]): { code: number; stdout: string } {
  const result = Bun.spawnSync(["tmux", "-L", tmuxServer, "-f", "/dev/null", ...args], { timeout: 10_000 });
  return { code: result.exitCode ?? -1, stdout: result.stdout.toString() };
}

const screen = (session: string) => tmux(["capture-pane", "-p", "-t", session]).stdout;
const send = (session: string, ...keys: string[]) => tmux(["send-keys", "-t", session, ...keys]);
/** Literal text (not key names), as typed. */
const type = (session: string, text: string) => tmux(["send-keys", "-t", session, "-l", text]);

/** Accept the preflight's warnings if it has any (this machine has no watchdog; another may have one), then wait for `next`. */
async function pastWarnings(session: string, next: string): Promise<string> {
  const deadline = Date.now() + 60_000;
  while (Date.now() < deadline) {
    const shown = screen(session);
    if (shown.includes(next)) return shown;
    if (shown.includes("Go on anyway?")) type(session, "y");
    await Bun.sleep(50);
  }
  return waitScreen(session, [next], 1);
}

async function waitScreen(session: string, texts: string[], timeoutMs = 60_000): Promise<string> {
  const deadline = Date.now() + timeoutMs;
  let last = "";
  while (Date.now() < deadline) {
    last = screen(session);
    if (texts.every((text) => last.includes(text))) return last;
    await Bun.sleep(50);
  }
  throw new Error(`${session}'s screen did not show ${JSON.stringify(texts)} within ${timeoutMs} ms:\n${last}`);
}

const quote = (word: string) => `'${word.replaceAll("'", "'\\''")}'`;

describe.skipIf(!hasTmux)("tandem install's wizard in two terminals", () => {
  let pair: InstallPair;

  beforeAll(async () => {
    pair = await installPair("tandem-wizard-");
  });

  afterAll(async () => {
    tmux(["kill-server"]);
    await pair?.cleanup();
  });

  function start(session: string, args: string[], env: Record<string, string>): void {
    const command = [...tandemCommand, "install", ...args].map(quote).join(" ");
    const environment = Object.entries({ ...env, NO_COLOR: "1", CI: "true" }).map(([key, value]) => `${key}=${quote(value)}`).join(" ");
    const started = tmux(["new-session", "-d", "-s", session, "-x", "80", "-y", "24", `${environment} ${command}; sleep 600`]);
    if (started.code !== 0) throw new Error(`tmux could not start ${session}`);
  }

  test("a shows a code, b types it: both pair, format the witness, start the service, bring the link up; b creates the first volume", async () => {
    start("a", ["--config", pair.a.config, "--data-dir", pair.a.dataDir], pair.a.env);
    start("b", ["--config", pair.b.config, "--data-dir", pair.b.dataDir, "--name", "b", "--witness", pair.witness, "--peer", pair.a.listen, "--listen", pair.b.listen], pair.b.env);

    // a: every question typed in the wizard.
    await waitScreen("a", ["TANDEM INSTALL", "This node's name", "  > "]);
    for (let erase = 0; erase < 40; erase++) send("a", "BSpace");
    type("a", "a");
    await waitScreen("a", ["  > a_"]);
    send("a", "Enter");
    await waitScreen("a", ["The witness disk"]);
    type("a", pair.witness);
    await waitScreen("a", [`${pair.witness.slice(-20)}_`]);
    send("a", "Enter");
    await waitScreen("a", ["s: show a code here"]);
    type("a", "s");
    await waitScreen("a", ["This node's replication address"]);
    type("a", pair.a.listen);
    await waitScreen("a", [`${pair.a.listen}_`]);
    send("a", "Enter");
    const shown = await pastWarnings("a", "PAIRING CODE   ");
    const code = /PAIRING CODE\s+([2-9A-Z]{4}-[2-9A-Z]{4})/.exec(shown)?.[1];
    expect(code).toBeDefined();
    expect(shown).toContain(`give this node's address`);
    expect(shown.split("\n").every((line) => line.length <= 80)).toBe(true);

    // b: the preflight (its round trip to a's waiting installer), the warnings, then the code.
    await pastWarnings("b", "Type the pairing code the other node shows");
    await waitScreen("b", ["XXXX-XXXX_"]);
    type("b", code!.toLowerCase());
    await waitScreen("b", [`${code!.toLowerCase()}_`]);
    send("b", "Enter");

    // Past the pairing: witness, service, link, then each wizard asks for a first volume.
    for (const session of ["a", "b"]) await waitScreen(session, ["First volume: its name"], 120_000);
    send("a", "Escape");
    type("b", "vm1");
    await waitScreen("b", ["  > vm1_"]);
    send("b", "Enter");
    await waitScreen("b", ["Size of vm1"]);
    type("b", "64M");
    await waitScreen("b", ["  > 64M_"]);
    send("b", "Enter");

    for (const [session, peer] of [["a", "b"], ["b", "a"]] as const) {
      const installed = await waitScreen(session, [`INSTALLED: node ${session}`], 120_000);
      expect(installed).toMatch(new RegExp(` done +Pairing +paired with ${peer}`));
      expect(installed).toMatch(session === "a" ? / done +Witness +formatted / : / done +Witness +a formatted /);
      expect(installed).toMatch(/ done +Service +systemctl enable --now tandem.service/);
      // The daemon the service step started may have brought the link up before the link step looked.
      expect(installed).toMatch(new RegExp(` (done|already) +Replication link +the link to ${peer} is up`));
      expect(installed).toMatch(session === "a" ? / skipped +First volume +no first volume was asked for/ : / done +First volume +created vm1 \(64 MiB\)/);
      expect(installed).not.toContain("\u001b");
    }
    const configA = loadNodeConfig(pair.a.config);
    const configB = loadNodeConfig(pair.b.config);
    expect(Buffer.from(configA.peer!.secret).equals(Buffer.from(configB.peer!.secret))).toBe(true);
    expect(Buffer.from(configA.peer!.clusterId).equals(Buffer.from(configB.peer!.clusterId))).toBe(true);
    expect([configA.name, configA.peer!.connect, configB.name, configB.peer!.connect]).toEqual(["a", "accept", "b", "dial"]);
    expect([configA.witness?.path, configB.witness?.path]).toEqual([pair.witness, pair.witness]);
    const witness = JSON.parse((await runCli(["witness", "show", pair.witness, "--json"])).stdout);
    expect(witness).toMatchObject({ cluster: Buffer.from(configA.peer!.clusterId).toString("hex"), formatted: true });
    const labLike = path.join(pair.dir, "sockets");
    for (const node of [pair.a, pair.b]) {
      fs.mkdirSync(path.join(labLike, node.name), { recursive: true });
      fs.symlinkSync(node.controlSocket, path.join(labLike, node.name, "control.sock"));
    }
    await waitLabSynced(labLike, "vm1", 60_000);

    // Enter leaves the wizard; the report stays on the terminal.
    send("a", "Enter");
    const after = await waitScreen("a", ["node a is installed"]);
    expect(after).toMatch(/done +Witness: formatted /);
  }, 300_000);
});
