// The install wizard (src/tui/install/): its reducer stepped with keys and step events, without
// rendering, and its screens rendered with ink-testing-library at 80x24 through the App with a
// scripted run in place of the real steps (no network). Covered: which questions are asked given the
// flags; bad answers rejected with the reason; the node that shows a code (the code, its time left,
// failed attempts, then the witness stopping the install with the fix); the node that types one (a
// wrong code asked again, the preflight's warnings accepted, the first volume asked, INSTALLED);
// an already paired node asks nothing. Every frame fits 80x24; without colour no escape sequence.
import { afterEach, describe, expect, test } from "bun:test";
import { cleanup, render } from "ink-testing-library";
import type { PreflightCheck } from "../../src/node/install/preflight.ts";
import type { InstallReport, InstallSettings, InstallUi, StepResult } from "../../src/node/install/steps.ts";
import { wizardLines } from "../../src/tui/install/lines.ts";
import { type InstallRun, WizardApp } from "../../src/tui/install/run.tsx";
import { type Action, initialWizardState, reduce, type WizardState } from "../../src/tui/install/state.ts";
import { until } from "../helpers/until.ts";

afterEach(() => cleanup());

const t0 = 1_800_000_000_000;
const base: InstallSettings = { configPath: "/etc/tandem/node.toml" };
const fresh = (settings: InstallSettings = base) => initialWizardState(settings, { paired: false, defaultName: "edge-07", nowMs: t0 });
const keys = (state: WizardState, ...typed: (string | "\r" | "\u001b" | "\u007f")[]): WizardState =>
  typed.reduce((current, key) => reduce(current, key === "\r" ? { kind: "key", key: "enter" } : key === "\u001b" ? { kind: "key", key: "escape" } : key === "\u007f" ? { kind: "key", key: "backspace" } : { kind: "key", key: "char", char: key }), state);
const text = (state: WizardState) => wizardLines(state, 80, 24).map((line) => line.map((segment) => segment.text).join("")).join("\n");

const warning: PreflightCheck = { id: "watchdog", status: "warn", detail: "no /dev/watchdog: a hung node cannot be reset by the hardware", fix: "enable the board's watchdog (iTCO_wdt, ipmi_watchdog) or load softdog" };

describe("the questions", () => {
  test("everything the flags leave open, in order: name (with a default), witness, role, then the address the role needs", () => {
    let state = fresh();
    expect(state.fields).toEqual(["name", "witness", "role"]);
    expect(state.prompt).toMatchObject({ kind: "field", field: "name", value: "edge-07" });
    state = keys(state, "\r");
    expect(state.settings.name).toBe("edge-07");
    state = keys(state, "disk", "\r");
    expect(state.prompt).toMatchObject({ field: "witness", error: expect.stringContaining("an absolute path") });
    state = keys(state, "\u007f", "\u007f", "\u007f", "\u007f", "/dev/disk/by-id/wwn-0x1", "\r");
    expect(state.settings.witness).toBe("/dev/disk/by-id/wwn-0x1");
    state = keys(state, "x");
    expect(state.prompt).toMatchObject({ field: "role" });
    state = keys(state, "s");
    expect(state.shows).toBe(true);
    expect(state.prompt).toMatchObject({ field: "listen" });
    state = keys(state, "0.0.0.0", "\r");
    expect(state.prompt).toMatchObject({ field: "listen", error: expect.stringContaining("every address of a machine") });
    state = keys(state, ...Array(7).fill("\u007f"), "10.99.0.1:99999", "\r");
    expect(state.prompt).toMatchObject({ field: "listen", error: "port 99999 is out of range" });
    state = keys(state, ...Array(6).fill("\u007f"), "\r");
    expect(state.settings.listen).toEqual({ hostname: "10.99.0.1", port: 7788 });
    expect(state.phase.kind).toBe("running");
  });

  test("typing a code: the peer's address is asked, this node's own is not", () => {
    const state = keys(fresh({ ...base, name: "b", witness: "/dev/w" }), "t", "10.99.0.1", "\r");
    expect(state.settings.peer).toEqual({ hostname: "10.99.0.1", port: 7788 });
    expect(state.settings.listen).toBeUndefined();
    expect(state.phase.kind).toBe("running");
  });

  test("flags answer their questions; a paired node is asked nothing", () => {
    expect(fresh({ ...base, name: "a", witness: "/dev/w", peer: { hostname: "10.99.0.1", port: 7788 } }).phase.kind).toBe("running");
    expect(fresh({ ...base, name: "a", witness: "/dev/w", code: "K7QM3XPA" }).fields).toEqual(["listen"]);
    expect(initialWizardState(base, { paired: true, defaultName: "a", nowMs: t0 }).phase.kind).toBe("running");
  });

  test("the step's questions: a code (normalised; Esc gives up), warnings (y / n), the first volume (name then size; empty: none)", () => {
    const running = fresh({ ...base, name: "b", witness: "/dev/w", peer: { hostname: "10.99.0.1", port: 7788 } });
    let state = reduce(running, { kind: "ask", prompt: "code", error: undefined });
    state = keys(state, "k7qm-3xp0", "\r");
    expect(state.prompt).toMatchObject({ kind: "code", error: expect.stringContaining("has no 0") });
    state = keys(state, "\u007f", "a", "\r");
    expect(state.answer).toEqual({ kind: "code", code: "K7QM3XPA" });
    expect(keys(reduce(running, { kind: "ask", prompt: "code" }), "\u001b").answer).toEqual({ kind: "code", code: null });

    const warned = reduce(running, { kind: "ask", prompt: "warnings", checks: [warning] });
    expect(keys(warned, "x").answer).toBeUndefined();
    expect(keys(warned, "y").answer).toEqual({ kind: "warnings", proceed: true });
    expect(keys(warned, "n").answer).toEqual({ kind: "warnings", proceed: false });

    const volume = reduce(running, { kind: "ask", prompt: "volume" });
    expect(keys(volume, "\r").answer).toEqual({ kind: "volume", volume: null });
    expect(keys(volume, "Bad Name", "\r").prompt).toMatchObject({ kind: "volume-name", error: expect.stringContaining("1-63 of") });
    const sized = keys(volume, "vm1", "\r", "10X", "\r");
    expect(sized.prompt).toMatchObject({ kind: "volume-size", error: expect.stringContaining("invalid size") });
    expect(keys(sized, "\u007f", "\u007f", "00G", "\r").answer).toEqual({ kind: "volume", volume: { name: "vm1", sizeBytes: 100 * 2 ** 30 } });
  });

  test("every state's screen fits 80x24", () => {
    const states: WizardState[] = [fresh(), keys(fresh(), "\r", "/dev/w", "\r")];
    let running = fresh({ ...base, name: "a", witness: "/dev/w", code: "K7QM3XPA", listen: { hostname: "10.99.0.1", port: 7788 } });
    running = reduce(running, { kind: "step-finished", result: { id: "preflight", status: "done", detail: "6 checks passed, 1 warnings, 2 judged later or not applicable ".repeat(3), checks: [warning] } });
    running = reduce(running, { kind: "show-code", code: "K7QM-3XPA", expiresAtMs: t0 + 900_000, listen: "10.99.0.1:7788" });
    for (let attempt = 0; attempt < 5; attempt++) running = reduce(running, { kind: "attempt-failed", remote: "10.99.0.2", reason: "the confirmation does not match: the other node typed another code", attemptsLeft: 4 - attempt });
    states.push(running, reduce(running, { kind: "ask", prompt: "warnings", checks: Array(12).fill(warning) }));
    for (const state of states) {
      const lines = wizardLines(state, 80, 24);
      expect(lines.length).toBe(24);
    }
    expect(text(running)).toContain("failed attempt from 10.99.0.2");
  });
});

/** A run the test steps by hand: the App hands it the settings and the UI; `finish` ends it. */
function scriptedRun() {
  let ui: InstallUi | undefined;
  let settings: InstallSettings | undefined;
  let finish: (report: InstallReport) => void = () => {};
  const run: InstallRun = (given, handed) => {
    settings = given;
    ui = handed;
    return new Promise((resolve) => (finish = resolve));
  };
  return { run, ui: () => ui, settings: () => settings, finish: (report: InstallReport) => finish(report) };
}

type App = ReturnType<typeof render>;

/** Type `text` into the App and wait until the screen shows `shows` (what was typed, by default). */
async function typeIn(app: App, text: string, shows = `${text}_`): Promise<void> {
  app.stdin.write(text);
  await until(`"${text}" typed`, () => app.lastFrame()?.includes(shows));
}

/** Press Enter and wait for the next screen to show `shows`. */
async function enter(app: App, shows: string): Promise<string> {
  app.stdin.write("\r");
  return until(`after Enter: ${shows}`, () => (app.lastFrame()?.includes(shows) ? app.lastFrame() : undefined));
}

const fits = (frame: string) => {
  const lines = frame.split("\n");
  expect(lines.length).toBeLessThanOrEqual(24);
  for (const line of lines) expect(Bun.stringWidth(line)).toBeLessThanOrEqual(80);
  expect(frame).not.toContain("\u001b");
};

const result = (id: StepResult["id"], status: StepResult["status"], detail: string, extra: Partial<StepResult> = {}): StepResult => ({ id, status, detail, ...extra });

describe("the wizard rendered at 80x24", () => {
  test("the node that shows the code: questions, the code with its time, a failed attempt, then the witness stops it", async () => {
    const script = scriptedRun();
    let now = t0;
    const app = render(<WizardApp initial={fresh()} run={script.run} color={false} width={80} height={24} now={() => now} />);
    await until("the name question", () => app.lastFrame()?.includes("This node's name"));
    fits(app.lastFrame()!);
    expect(app.lastFrame()).toContain("  > edge-07_");
    for (let erase = 0; erase < 7; erase++) app.stdin.write("\u007f");
    await typeIn(app, "a", "  > a_");
    await enter(app, "The witness disk");
    await typeIn(app, "/dev/disk/by-id/wwn-0x5000c500a1b2c3d4");
    await enter(app, "s: show a code here");
    await typeIn(app, "s", "This node's replication address");
    await typeIn(app, "10.99.0.1");
    app.stdin.write("\r");
    const ui = await until("the run started", () => script.ui());
    expect(script.settings()).toMatchObject({ name: "a", witness: "/dev/disk/by-id/wwn-0x5000c500a1b2c3d4", listen: { hostname: "10.99.0.1", port: 7788 } });

    ui.stepStarted("preflight");
    ui.stepFinished(result("preflight", "done", "6 checks passed, 1 warnings, 2 judged later or not applicable", { checks: [warning] }));
    ui.stepStarted("pairing");
    ui.showCode({ code: "K7QM-3XPA", expiresAtMs: t0 + 900_000, listen: "10.99.0.1:7788" });
    const shown = await until("the code", () => (app.lastFrame()?.includes("PAIRING CODE   K7QM-3XPA") ? app.lastFrame() : undefined));
    fits(shown);
    expect(shown).toContain(" done     Preflight checks  6 checks passed");
    expect(shown).toContain(" ...      Pairing");
    expect(shown).toContain("choose t, give this node's address\n  10.99.0.1:7788 and type the code. It is good for one pairing, for 15m00s more.");
    now = t0 + 60_000;
    await until("the time left moves", () => app.lastFrame()?.includes("for 14m00s more"));
    ui.attemptFailed({ remote: "10.99.0.2", reason: "the confirmation does not match: the other node typed another code", attemptsLeft: 4 });
    await until("the failed attempt", () => app.lastFrame()?.includes("failed attempt from 10.99.0.2: the confirmation does not match"));

    ui.stepFinished(result("pairing", "done", "paired with b (10.99.0.2:7788); this node accepts b's connection"));
    await until("the code gone", () => !app.lastFrame()?.includes("PAIRING CODE"));
    const witness = result("witness", "failed", "/dev/disk/by-id/wwn-0x5000c500a1b2c3d4 holds the witness of another cluster (ffeeddccbbaa99887766554433221100)", { fix: "check that it is the shared witness disk of this pair, then run tandem install again" });
    ui.stepFinished(witness);
    script.finish({ ok: false, node: "a", config: base.configPath, steps: [result("preflight", "done", "x"), result("pairing", "done", "y"), witness, result("service", "skipped", "not run: the witness step failed")] });
    const stopped = await until("the outcome", () => (app.lastFrame()?.includes("STOPPED at witness:") ? app.lastFrame() : undefined));
    fits(stopped);
    expect(stopped).toContain(" FAILED   Witness");
    expect(stopped).toContain("-> check that it is the shared witness disk of this pair, then run tandem");
    expect(stopped).toContain("Enter exit");
  });

  test("the node that types the code: a wrong code asked again, warnings accepted, the first volume, INSTALLED", async () => {
    const script = scriptedRun();
    const initial = fresh({ ...base, name: "b", witness: "/dev/w", peer: { hostname: "10.99.0.1", port: 7788 } });
    const app = render(<WizardApp initial={initial} run={script.run} color={false} width={80} height={24} now={() => t0} />);
    const ui = await until("the run started", () => script.ui());

    const warnings = ui.confirmWarnings!([warning]);
    await until("the warnings", () => app.lastFrame()?.includes("Go on anyway?"));
    expect(app.lastFrame()).toContain("warn watchdog: no /dev/watchdog");
    app.stdin.write("y");
    expect(await warnings).toBe(true);

    const first = ui.askCode!(undefined);
    await until("the code prompt", () => app.lastFrame()?.includes("Type the pairing code the other node shows"));
    expect(app.lastFrame()).toContain("  > XXXX-XXXX_");
    await typeIn(app, "K7QM-3XPB");
    app.stdin.write("\r");
    expect(await first).toBe("K7QM3XPB");
    const second = ui.askCode!("the code does not match the one the other node shows (or another machine answers at that address): check the code and try again");
    await until("asked again with the reason", () => app.lastFrame()?.includes("the code does not match the one the other node shows"));
    expect(app.lastFrame()).toContain("  > XXXX-XXXX_");
    await typeIn(app, "k7qm3xpa");
    app.stdin.write("\r");
    expect(await second).toBe("K7QM3XPA");

    const volume = ui.askVolume!();
    await until("the volume name", () => app.lastFrame()?.includes("First volume: its name"));
    await typeIn(app, "vm1");
    await enter(app, "Size of vm1");
    await typeIn(app, "100G");
    app.stdin.write("\r");
    expect(await volume).toEqual({ name: "vm1", sizeBytes: 100 * 2 ** 30 });

    const steps: StepResult[] = [
      result("preflight", "done", "7 checks passed, 1 warnings"),
      result("pairing", "done", "paired with a (10.99.0.1:7788); this node dials a"),
      result("witness", "done", "a formatted /dev/w for this pair"),
      result("service", "skipped", "systemd does not run this machine (PID 1 is init)", { fix: "run the daemon under your own supervisor: tandem node run --config /etc/tandem/node.toml" }),
      result("link", "done", "the link to a is up with the new secret, round trip 0.21 ms"),
      result("volume", "done", "created vm1 (100 GiB), primary on b; b synced, a synced"),
    ];
    for (const step of steps) ui.stepFinished(step);
    script.finish({ ok: true, node: "b", config: base.configPath, steps });
    const done = await until("installed", () => (app.lastFrame()?.includes("INSTALLED: node b") ? app.lastFrame() : undefined));
    fits(done);
    expect(done).toMatch(/ done +First volume +created vm1 \(100 GiB\), primary on b/);
    expect(done).toMatch(/ skipped +Service +systemd does not run this machine/);
    expect(done).toContain("Service: systemd does not run this machine (PID 1 is init) -> run the daemon");
    app.stdin.write("\r");
  });
});

test("progress shows on the running step, and a late progress report never takes a finished step back", () => {
  const actions: Action[] = [
    { kind: "step-started", id: "preflight" },
    { kind: "step-progress", id: "preflight", text: "checking this machine" },
  ];
  const running = actions.reduce(reduce, fresh({ ...base, name: "a", witness: "/dev/w", peer: { hostname: "h", port: 1 } }));
  expect(text(running)).toContain(" ...      Preflight checks  checking this machine");
  const finished = reduce(running, { kind: "step-finished", result: result("preflight", "done", "7 checks passed") });
  const late = reduce(finished, { kind: "step-progress", id: "preflight", text: "checking this machine" });
  expect(text(late)).toContain(" done     Preflight checks  7 checks passed");
});
