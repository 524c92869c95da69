// A kill -9 at any moment of a mirrored create or delete leaves the pair consistent and cleanly
// removable. Two real daemons in the lab; for each kill point (milliseconds after the request is
// sent) and each victim (the node that was asked, or its peer) the test starts the operation
// through the control API, SIGKILLs the victim at that point, starts it again, and then requires:
// the pair settles by itself (link up, nothing pending on either node) with both nodes holding the
// same volumes under the same ids; a create that answered success is there and a delete that
// answered success is gone; the volume, if it survived, is deleted without --force; and no file of
// it is left behind in either data directory (a stray file would block the next create of the name).
//
// CI setting: kill points every TANDEM_KILL_STEP_MS (default 10) in [0, TANDEM_KILL_WINDOW_MS)
// (default 80). Long setting (docs/testing.md): TANDEM_KILL_STEP_MS=1, every millisecond.
import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import fs from "node:fs";
import os from "node:os";
import path from "node:path";
import { ControlClient } from "../../src/node/control/client.ts";
import { startLabNode } from "../../src/node/lab/lab.ts";
import { runCli } from "../helpers/daemon.ts";
import { labSettleTimeoutMs, waitLabSettled } from "../helpers/lab.ts";
import { until } from "../helpers/until.ts";

const stepMs = Number(process.env.TANDEM_KILL_STEP_MS ?? "10");
const windowMs = Number(process.env.TANDEM_KILL_WINDOW_MS ?? "80");
const killPoints = Array.from({ length: Math.ceil(windowMs / stepMs) }, (_, index) => index * stepMs);
/** Per kill point: a kill, a restart and up to two settles, on a loaded machine. */
const perPointMs = 3 * labSettleTimeoutMs;

let dir: string;
let sequence = 0;
/** Per kill point, what the caller was told and what the pair ended with (printed per test). */
let seen: string[] = [];

const client = (node: string) => new ControlClient(path.join(dir, node, "control.sock"));
const pidOf = (node: string) => Number(fs.readFileSync(path.join(dir, node, "node.pid"), "utf8").trim());

function alive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch {
    return false;
  }
}

/** SIGKILL the lab's daemon for `node` (by the pid the lab recorded) and wait until it is gone. */
async function killNode(node: string): Promise<void> {
  const pid = pidOf(node);
  process.kill(pid, "SIGKILL");
  await until(`${node} (pid ${pid}) to exit after SIGKILL`, () => !alive(pid), 10_000);
}

/** Files a node keeps for `volume` in its data directory. */
function filesOf(node: string, volume: string): string[] {
  const data = path.join(dir, node, "data");
  return [path.join(data, "volumes", `${volume}.img`), path.join(data, "replica", `${volume}.meta`)].filter((file) => fs.existsSync(file));
}

type Outcome = { ok: true } | { ok: false; error: string };

/**
 * Send `operation` to `asked`, SIGKILL `victim` `afterMs` later, restart it, and check the pair.
 * Returns whether the volume exists afterwards (on both nodes, by then).
 */
async function killDuring(kind: "create" | "delete", volume: string, asked: string, victim: string, afterMs: number): Promise<void> {
  const request = kind === "create" ? client(asked).request("POST", "/volumes", { name: volume, size: 4 * 1024 * 1024 }) : client(asked).request("DELETE", `/volumes/${volume}`);
  const outcome: Promise<Outcome> = request.then(
    () => ({ ok: true }),
    (error: Error) => ({ ok: false, error: error.message }),
  );
  await new Promise((resolve) => setTimeout(resolve, afterMs));
  await killNode(victim);
  const answered = await outcome;
  await startLabNode(dir, victim);

  const where = `${kind} of ${volume} on ${asked}, ${victim} killed after ${afterMs} ms (answer: ${JSON.stringify(answered)})`;
  let held: Map<string, number>;
  try {
    held = await waitLabSettled(dir);
  } catch (error) {
    throw new Error(`${where}: ${(error as Error).message}`);
  }
  if (answered.ok) expect({ where, present: held.has(volume) }).toEqual({ where, present: kind === "create" });
  seen.push(`${afterMs}ms:${answered.ok ? "ok" : "err"}/${held.has(volume) ? "kept" : "gone"}`);
  if (held.has(volume)) {
    await client(asked).request("DELETE", `/volumes/${volume}`);
    held = await waitLabSettled(dir);
    expect({ where, present: held.has(volume) }).toEqual({ where, present: false });
  }
  expect({ where, files: [...filesOf("a", volume), ...filesOf("b", volume)] }).toEqual({ where, files: [] });
}

describe(`kill -9 during a mirrored create or delete (kill points every ${stepMs} ms in [0, ${windowMs}) ms)`, () => {
  beforeAll(async () => {
    dir = fs.mkdtempSync(path.join(os.tmpdir(), "tandem-kill-"));
    const up = await runCli(["lab", "up", "--dir", dir, "--json"], { timeoutMs: 90_000 });
    if (up.code !== 0) throw new Error(`lab up failed: ${up.stdout}${up.stderr}`);
    await waitLabSettled(dir);
  });

  afterAll(async () => {
    await runCli(["lab", "down", "--dir", dir], { timeoutMs: 90_000 });
    fs.rmSync(dir, { recursive: true, force: true });
  });

  for (const [kind, victim] of [
    ["create", "a"],
    ["create", "b"],
    ["delete", "a"],
    ["delete", "b"],
  ] as const) {
    test(
      `${kind} on a, ${victim === "a" ? "a (the node asked)" : "b (its peer)"} killed`,
      async () => {
        for (const afterMs of killPoints) {
          const volume = `k${kind[0]}${victim}${++sequence}`;
          if (kind === "delete") {
            await client("a").request("POST", "/volumes", { name: volume, size: 4 * 1024 * 1024 });
            expect((await waitLabSettled(dir)).has(volume)).toBe(true);
          }
          await killDuring(kind, volume, "a", victim, afterMs);
        }
        console.log(`${kind}, ${victim} killed: ${seen.splice(0).join(" ")}`);
      },
      killPoints.length * perPointMs,
    );
  }
});
