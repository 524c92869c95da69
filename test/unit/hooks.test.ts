// The node's hooks (src/node/hooks.ts): a configured command gets the event as one JSON line on
// stdin, runs for one volume in the order the events came, is killed when it overruns its time, and
// every outcome (exit status, output) lands in the event log; an unconfigured hook does nothing.
import { afterEach, describe, expect, test } from "bun:test";
import fs from "node:fs";
import os from "node:os";
import path from "node:path";
import { createLogger } from "../../src/common/log.ts";
import { Hooks, type HookEvent } from "../../src/node/hooks.ts";

const dirs: string[] = [];
afterEach(() => {
  for (const dir of dirs.splice(0)) fs.rmSync(dir, { recursive: true, force: true });
});

function setup(config: { promoted?: string[]; fenced?: string[] }, timeoutMs?: number) {
  const events: { level: string; kind: string; volume: string | null; message: string }[] = [];
  const hooks = new Hooks({ promoted: config.promoted, fenced: config.fenced }, createLogger({ level: "error", sink: () => {} }), (level, kind, volume, message) => events.push({ level, kind, volume, message }), timeoutMs);
  return { events, hooks };
}

const event = (kind: HookEvent["event"], volume = "vm1", volumeId = 1): HookEvent => ({ event: kind, node: "b", volume, volumeId, epoch: 4, reason: "the quorum promoted this node", timeMs: 1 });

describe("hooks", () => {
  test("promoted: the command reads the event as JSON on stdin; its success and output are logged", async () => {
    const dir = fs.mkdtempSync(path.join(os.tmpdir(), "tandem-hooks-"));
    dirs.push(dir);
    const file = path.join(dir, "event.json");
    const { events, hooks } = setup({ promoted: ["/bin/sh", "-c", `cat > '${file}'; echo started vm`] });
    await hooks.fire(event("promoted"));
    expect(JSON.parse(fs.readFileSync(file, "utf8"))).toEqual(event("promoted"));
    expect(events).toEqual([{ level: "info", kind: "hook-promoted", volume: "vm1", message: "hook promoted for vm1 (epoch 4) exited 0: started vm" }]);
  });

  test("events for one volume run in order: fenced finishes before promoted starts", async () => {
    const dir = fs.mkdtempSync(path.join(os.tmpdir(), "tandem-hooks-"));
    dirs.push(dir);
    const log = path.join(dir, "order");
    const { hooks } = setup({ fenced: ["/bin/sh", "-c", `sleep 0.3; echo fenced >> '${log}'`], promoted: ["/bin/sh", "-c", `echo promoted >> '${log}'`] });
    await Promise.all([hooks.fire(event("fenced")), hooks.fire(event("promoted"))]);
    expect(fs.readFileSync(log, "utf8")).toBe("fenced\npromoted\n");
  });

  test("a failing hook and an overrunning hook are logged as warnings; the overrunning one is killed", async () => {
    const { events, hooks } = setup({ fenced: ["/bin/sh", "-c", "echo no such vm >&2; exit 3"], promoted: ["/bin/sh", "-c", "exec sleep 30"] }, 200);
    await hooks.fire(event("fenced"));
    const started = performance.now();
    await hooks.fire(event("promoted", "vm2", 2));
    expect(performance.now() - started).toBeLessThan(10_000);
    expect(events).toEqual([
      { level: "warn", kind: "hook-fenced", volume: "vm1", message: "hook fenced for vm1 (epoch 4) exited 3: no such vm" },
      { level: "warn", kind: "hook-promoted", volume: "vm2", message: "hook promoted for vm2 (epoch 4) killed after 200 ms" },
    ]);
  });

  test("no hook configured: nothing runs, nothing is logged", async () => {
    const { events, hooks } = setup({});
    await hooks.fire(event("promoted"));
    expect(events).toEqual([]);
  });
});
