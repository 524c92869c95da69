// The install wizard's screen as lines of styled segments, computed from its state alone (like the
// dashboard's, src/tui/lines.ts): the steps with their state, then what the wizard shows or asks
// now (a question, the pairing code with its time left, the code to type, warnings to accept, the
// first volume, the outcome), then the keys. At most `height` lines, each cut to `width` when drawn;
// states are words, so it reads the same without colour.
import { type Line, plain, type Tone, wrap, formatSeconds } from "../lines.ts";
import { type StepId, stepOrder, stepTitles } from "../../node/install/steps.ts";
import type { PreflightCheck } from "../../node/install/preflight.ts";
import { fieldQuestions, type StepView, type WizardState } from "./state.ts";

const statusText: Record<string, [string, Tone | undefined]> = {
  pending: ["", undefined],
  running: ["...", "warn"],
  done: ["done", "good"],
  "already-done": ["already", "good"],
  skipped: ["skipped", "dim"],
  failed: ["FAILED", "bad"],
};

function stepLine(id: StepId, view: StepView): Line {
  const key = view.state === "finished" ? view.result.status : view.state;
  const [word, tone] = statusText[key]!;
  const detail = view.state === "finished" ? view.result.detail : view.state === "running" ? (view.progress ?? "") : "";
  return [{ text: ` ${word.padEnd(8)}`, tone }, { text: ` ${stepTitles[id].padEnd(18)}`, tone: view.state === "pending" ? "dim" : undefined }, { text: detail, tone: view.state === "running" ? "dim" : undefined }];
}

function checkLines(checks: PreflightCheck[], width: number): Line[] {
  const lines: Line[] = [];
  for (const check of checks) {
    const tone: Tone = check.status === "fail" ? "bad" : "warn";
    for (const text of wrap(`${check.status === "fail" ? "FAIL" : "warn"} ${check.id}: ${check.detail}${check.fix ? ` -> ${check.fix}` : ""}`, width, "  ")) lines.push(plain(text, tone));
  }
  return lines;
}

function input(value: string, placeholder = ""): Line {
  return [{ text: "  > " }, { text: value === "" ? placeholder : value, tone: value === "" ? "dim" : undefined }, { text: "_", tone: "dim" }];
}

/** What the wizard shows or asks now, and the keys that go with it. */
function panel(state: WizardState, width: number): { lines: Line[]; keys: string } {
  const prompt = state.prompt;
  const lines: Line[] = [];
  const error = (text: string | undefined) => (text ? wrap(text, width, "  ").map((line) => plain(line, "bad")) : []);
  if (state.phase.kind === "finished") {
    const report = state.phase.report;
    const failed = report.steps.find((step) => step.status === "failed");
    if (!failed) {
      lines.push(plain(`INSTALLED: node ${report.node} (config ${report.config})`, "good"));
      for (const step of report.steps.filter((step) => step.status === "skipped" && step.fix)) for (const text of wrap(`${stepTitles[step.id]}: ${step.detail} -> ${step.fix}`, width, "  ")) lines.push(plain(text, "dim"));
      lines.push(plain("Next: tandem status, tandem tui", "dim"));
    } else {
      lines.push(plain(`STOPPED at ${stepTitles[failed.id].toLowerCase()}:`, "bad"));
      // Failed checks carry their own detail and fix; other failures have one of each.
      const failedChecks = (failed.checks ?? []).filter((check) => check.status === "fail");
      if (failedChecks.length > 0) lines.push(...checkLines(failedChecks, width));
      else {
        for (const text of wrap(failed.detail, width, "  ")) lines.push(plain(text, "bad"));
        if (failed.fix) for (const text of wrap(`-> ${failed.fix}`, width, "  ")) lines.push(plain(text));
      }
      lines.push(plain("Run tandem install again once it is fixed: what is done is kept.", "dim"));
    }
    return { lines, keys: "Enter exit" };
  }
  if (prompt?.kind === "field") {
    const question = fieldQuestions[prompt.field];
    lines.push(plain(question.title, "title"));
    for (const text of wrap(question.hint, width, "  ")) lines.push(plain(text, "dim"));
    if (prompt.field !== "role") lines.push(input(prompt.value));
    lines.push(...error(prompt.error));
    return { lines, keys: prompt.field === "role" ? "s show a code  t type a code  Ctrl-C quit" : "Enter next  Backspace erase  Ctrl-C quit" };
  }
  if (prompt?.kind === "code") {
    lines.push(plain("Type the pairing code the other node shows", "title"));
    for (const text of wrap("It has 8 characters (letters and digits, the dash is optional). The other node counts wrong codes: after 5 it needs a new one.", width, "  ")) lines.push(plain(text, "dim"));
    lines.push(input(prompt.value, "XXXX-XXXX"));
    lines.push(...error(prompt.error));
    return { lines, keys: "Enter pair  Backspace erase  Esc give up" };
  }
  if (prompt?.kind === "warnings") {
    lines.push(plain("The preflight found things to look at:", "warn"));
    lines.push(...checkLines(prompt.checks, width));
    lines.push(plain("Go on anyway?", "title"));
    return { lines, keys: "y go on  n stop here" };
  }
  if (prompt?.kind === "volume-name") {
    lines.push(plain("First volume: its name", "title"));
    for (const text of wrap("This node becomes its primary; the other node holds its mirror. Enter with no name: no volume now (tandem volume create later).", width, "  ")) lines.push(plain(text, "dim"));
    lines.push(input(prompt.value));
    lines.push(...error(prompt.error));
    return { lines, keys: "Enter next  Esc no volume" };
  }
  if (prompt?.kind === "volume-size") {
    lines.push(plain(`Size of ${prompt.name}`, "title"));
    lines.push(plain("  with a binary unit: 512M, 100G, 2T", "dim"));
    lines.push(input(prompt.value));
    lines.push(...error(prompt.error));
    return { lines, keys: "Enter create  Esc back" };
  }
  if (state.code) {
    const left = Math.max(0, state.code.expiresAtMs - state.nowMs);
    lines.push([{ text: "PAIRING CODE   ", tone: "title" }, { text: state.code.code, tone: "good" }]);
    for (const text of wrap(`On the other node run tandem install, choose t, give this node's address ${state.code.listen} and type the code. It is good for one pairing, for ${formatSeconds(left / 1000)} more.`, width, "  ")) lines.push(plain(text));
    for (const attempt of state.attempts) for (const text of wrap(`failed attempt from ${attempt}`, width, "  ")) lines.push(plain(text, "warn"));
    return { lines, keys: "waiting for the other node  Ctrl-C quit" };
  }
  const preflight = state.steps.preflight;
  if (preflight.state === "finished" && preflight.result.checks) lines.push(...checkLines(preflight.result.checks.filter((check) => check.status === "warn"), width));
  return { lines, keys: "Ctrl-C quit" };
}

export function wizardLines(state: WizardState, width: number, height: number): Line[] {
  const name = state.settings.name ?? "?";
  const lines: Line[] = [[{ text: "TANDEM INSTALL", tone: "title" }, { text: `  node ${name}  config ${state.settings.configPath}`, tone: "dim" }], []];
  for (const id of stepOrder) lines.push(stepLine(id, state.steps[id]));
  lines.push([]);
  const { lines: body, keys } = panel(state, width);
  const room = height - lines.length - 1;
  lines.push(...body.slice(0, Math.max(0, room)));
  while (lines.length < height - 1) lines.push([]);
  lines.push(plain(keys, "dim"));
  return lines;
}
