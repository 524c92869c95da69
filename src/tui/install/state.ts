// The install wizard's state and reducer (CONVENTIONS.md §9). The wizard first asks what the flags
// did not say (this node's name, the witness disk, whether this node shows the code or types the
// other's, the addresses), then runs the install's steps (src/node/install/steps.ts) and shows each
// one's progress and result; the steps' questions (the code to type, going on despite warnings, the
// first volume) become prompts here. No IO: the driver (run.tsx) feeds step events and keys in and
// takes answers out (`answer`, which it hands to the waiting step and then acknowledges).
import { parseSize } from "../../common/size.ts";
import { installReplicationPortDefault, volumeNamePattern, volumeSizeAlignmentBytes, volumeSizeBytesMin } from "../../constants.ts";
import { isWildcardHost, normalizePairingCode } from "../../node/install/pairing-code.ts";
import type { PreflightCheck } from "../../node/install/preflight.ts";
import { type InstallReport, type InstallSettings, type StepId, type StepResult, stepOrder } from "../../node/install/steps.ts";

export type FieldId = "name" | "witness" | "role" | "peer" | "listen";

export type KeyName = "enter" | "escape" | "backspace" | "up" | "down" | "char";

export type StepView = { state: "pending" } | { state: "running"; progress: string | undefined } | { state: "finished"; result: StepResult };

/** What the wizard asks right now. */
export type Prompt =
  | { kind: "field"; field: FieldId; value: string; error: string | undefined }
  | { kind: "code"; value: string; error: string | undefined }
  | { kind: "warnings"; checks: PreflightCheck[] }
  | { kind: "volume-name"; value: string; error: string | undefined }
  | { kind: "volume-size"; name: string; value: string; error: string | undefined };

/** An answer the driver must hand to the step that asked. */
export type Answer = { kind: "code"; code: string | null } | { kind: "warnings"; proceed: boolean } | { kind: "volume"; volume: { name: string; sizeBytes: number } | null };

export type Phase = { kind: "questions" } | { kind: "running" } | { kind: "finished"; report: InstallReport } | { kind: "quit" };

export interface WizardState {
  /** What the flags said; the questions fill in the rest. */
  settings: InstallSettings;
  /** Fields still to ask, in order (the first is on screen). */
  fields: FieldId[];
  /** This node shows the code (true) or types the other's (false); undefined until known. */
  shows: boolean | undefined;
  phase: Phase;
  prompt: Prompt | undefined;
  answer: Answer | undefined;
  steps: Record<StepId, StepView>;
  code: { code: string; expiresAtMs: number; listen: string } | undefined;
  /** Failed attempts against the code this node shows, newest last. */
  attempts: string[];
  nowMs: number;
}

export type Action =
  | { kind: "key"; key: KeyName; char?: string }
  | { kind: "tick"; nowMs: number }
  | { kind: "step-started"; id: StepId }
  | { kind: "step-progress"; id: StepId; text: string }
  | { kind: "step-finished"; result: StepResult }
  | { kind: "show-code"; code: string; expiresAtMs: number; listen: string }
  | { kind: "attempt-failed"; remote: string; reason: string; attemptsLeft: number }
  | { kind: "ask"; prompt: "code" | "warnings" | "volume"; error?: string; checks?: PreflightCheck[] }
  /** The driver handed the answer over. */
  | { kind: "answered" }
  | { kind: "finished"; report: InstallReport };

export const fieldQuestions: Record<FieldId, { title: string; hint: string }> = {
  name: { title: "This node's name", hint: "1-31 of a-z 0-9 _ -, different on the two nodes" },
  witness: { title: "The witness disk", hint: "the small shared disk both nodes see, by its /dev/disk/by-id name" },
  role: { title: "Pairing", hint: "s: show a code here (do this on the first node)   t: type the code the other node shows" },
  peer: { title: "The other node's replication address", hint: `HOST[:PORT] where it shows its code (port ${installReplicationPortDefault} by default)` },
  listen: { title: "This node's replication address", hint: `HOST[:PORT] on the replication link (port ${installReplicationPortDefault} by default)` },
};

/** HOST[:PORT] → settings' HostPort, or a message. */
export function parseWizardAddress(text: string): { hostname: string; port: number } | string {
  const trimmed = text.trim();
  const match = /^(\[[0-9a-fA-F:]+\]|[A-Za-z0-9.-]+)(?::(\d{1,5}))?$/.exec(trimmed);
  if (!match) return `"${trimmed}" is not HOST or HOST:PORT`;
  const port = match[2] === undefined ? installReplicationPortDefault : Number(match[2]);
  if (port < 1 || port > 65535) return `port ${port} is out of range`;
  const hostname = match[1]!.replace(/^\[|\]$/g, "");
  if (isWildcardHost(hostname)) return `${hostname} means every address of a machine: give the node's own address on the replication link`;
  return { hostname, port };
}

function fieldPrompt(field: FieldId, value = ""): Prompt {
  return { kind: "field", field, value, error: undefined };
}

/** The fields to ask, given what the flags said and whether the node is already paired. */
export function fieldsToAsk(settings: InstallSettings, paired: boolean, defaultName: string): { fields: FieldId[]; shows: boolean | undefined; settings: InstallSettings } {
  if (paired) return { fields: [], shows: undefined, settings };
  const fields: FieldId[] = [];
  const filled = { ...settings };
  if (!filled.name) fields.push("name");
  if (!filled.witness) fields.push("witness");
  let shows: boolean | undefined = filled.peer ? false : filled.code ? true : undefined;
  if (shows === undefined) fields.push("role");
  // The typing node's own address is optional (it defaults to the one it reaches the peer from);
  // the showing node waits on its own, so that one is needed.
  if (shows === true && !filled.listen) fields.push("listen");
  if (!filled.name) filled.name = defaultName;
  return { fields, shows, settings: filled };
}

export function initialWizardState(settings: InstallSettings, options: { paired: boolean; defaultName: string; nowMs: number }): WizardState {
  const asked = fieldsToAsk(settings, options.paired, options.defaultName);
  const steps = Object.fromEntries(stepOrder.map((id) => [id, { state: "pending" }])) as Record<StepId, StepView>;
  const first = asked.fields[0];
  return {
    settings: asked.settings,
    fields: asked.fields,
    shows: asked.shows,
    phase: first ? { kind: "questions" } : { kind: "running" },
    prompt: first ? fieldPrompt(first, first === "name" ? asked.settings.name : "") : undefined,
    answer: undefined,
    steps,
    code: undefined,
    attempts: [],
    nowMs: options.nowMs,
  };
}

/** Take the value of the field on screen; the next field, or the run, follows. */
function submitField(state: WizardState, field: FieldId, value: string): WizardState {
  const settings = { ...state.settings };
  let shows = state.shows;
  let fields = state.fields.slice(1);
  const reject = (error: string): WizardState => ({ ...state, prompt: { kind: "field", field, value, error } });
  const text = value.trim();
  switch (field) {
    case "name":
      if (!/^[a-z0-9][a-z0-9_-]{0,30}$/.test(text)) return reject("1-31 of a-z 0-9 _ -, starting with a letter or digit");
      settings.name = text;
      break;
    case "witness":
      if (!text.startsWith("/")) return reject("an absolute path, e.g. /dev/disk/by-id/wwn-0x5000c500a1b2c3d4");
      settings.witness = text;
      break;
    case "role": {
      const choice = text.toLowerCase();
      if (choice !== "s" && choice !== "t") return reject("s to show a code here, t to type the other node's");
      shows = choice === "s";
      fields = shows ? [...(settings.listen ? [] : (["listen"] as FieldId[])), ...fields] : ["peer", ...fields];
      break;
    }
    case "peer": {
      const address = parseWizardAddress(text);
      if (typeof address === "string") return reject(address);
      settings.peer = address;
      break;
    }
    case "listen": {
      const address = parseWizardAddress(text);
      if (typeof address === "string") return reject(address);
      settings.listen = address;
      break;
    }
  }
  const next = fields[0];
  if (next) return { ...state, settings, shows, fields, prompt: fieldPrompt(next) };
  return { ...state, settings, shows, fields, prompt: undefined, phase: { kind: "running" } };
}

/** Typing into a field: printable characters (one key, or several pasted at once) append, up to `max`. */
function edit(value: string, key: KeyName, char: string | undefined, max: number): string {
  if (key === "backspace") return value.slice(0, -1);
  if (key !== "char" || char === undefined) return value;
  const printable = [...char].filter((one) => one >= " " && one !== "\u007f").join("");
  return (value + printable).slice(0, max);
}

function onKey(state: WizardState, key: KeyName, char: string | undefined): WizardState {
  const prompt = state.prompt;
  if (state.phase.kind === "finished") return key === "enter" || key === "escape" || char === "q" ? { ...state, phase: { kind: "quit" } } : state;
  if (!prompt || state.answer) return state;
  switch (prompt.kind) {
    case "field":
      if (prompt.field === "role" && key === "char" && (char === "s" || char === "t")) return submitField(state, "role", char);
      if (key === "enter") return submitField(state, prompt.field, prompt.value);
      return { ...state, prompt: { ...prompt, value: edit(prompt.value, key, char, 255), error: prompt.error } };
    case "code": {
      if (key === "escape") return { ...state, prompt: undefined, answer: { kind: "code", code: null } };
      if (key !== "enter") return { ...state, prompt: { ...prompt, value: edit(prompt.value, key, char, 16) } };
      try {
        return { ...state, prompt: undefined, answer: { kind: "code", code: normalizePairingCode(prompt.value) } };
      } catch (error) {
        return { ...state, prompt: { ...prompt, error: (error as Error).message } };
      }
    }
    case "warnings":
      if (char === "y" || char === "Y") return { ...state, prompt: undefined, answer: { kind: "warnings", proceed: true } };
      if (char === "n" || char === "N" || key === "escape") return { ...state, prompt: undefined, answer: { kind: "warnings", proceed: false } };
      return state;
    case "volume-name": {
      if (key === "escape") return { ...state, prompt: undefined, answer: { kind: "volume", volume: null } };
      if (key !== "enter") return { ...state, prompt: { ...prompt, value: edit(prompt.value, key, char, 63) } };
      const name = prompt.value.trim();
      if (name === "") return { ...state, prompt: undefined, answer: { kind: "volume", volume: null } };
      if (!volumeNamePattern.test(name)) return { ...state, prompt: { ...prompt, error: "1-63 of a-z 0-9 _ . -, starting with a letter or digit" } };
      return { ...state, prompt: { kind: "volume-size", name, value: "", error: undefined } };
    }
    case "volume-size": {
      if (key === "escape") return { ...state, prompt: { kind: "volume-name", value: prompt.name, error: undefined } };
      if (key !== "enter") return { ...state, prompt: { ...prompt, value: edit(prompt.value, key, char, 16) } };
      let sizeBytes: number;
      try {
        sizeBytes = parseSize(prompt.value);
      } catch (error) {
        return { ...state, prompt: { ...prompt, error: (error as Error).message } };
      }
      if (sizeBytes < volumeSizeBytesMin || sizeBytes % volumeSizeAlignmentBytes !== 0) return { ...state, prompt: { ...prompt, error: "at least 1M and a multiple of 4K" } };
      return { ...state, prompt: undefined, answer: { kind: "volume", volume: { name: prompt.name, sizeBytes } } };
    }
  }
}

export function reduce(state: WizardState, action: Action): WizardState {
  switch (action.kind) {
    case "key":
      return onKey(state, action.key, action.char);
    case "tick":
      return { ...state, nowMs: Math.max(state.nowMs, action.nowMs) };
    case "step-started":
      return { ...state, steps: { ...state.steps, [action.id]: { state: "running", progress: undefined } } };
    case "step-progress": {
      const current = state.steps[action.id];
      return current.state === "finished" ? state : { ...state, steps: { ...state.steps, [action.id]: { state: "running", progress: action.text } } };
    }
    case "step-finished":
      // The code is shown while pairing runs; once pairing ends it is of no more use.
      return { ...state, steps: { ...state.steps, [action.result.id]: { state: "finished", result: action.result } }, code: action.result.id === "pairing" ? undefined : state.code };
    case "show-code":
      return { ...state, code: { code: action.code, expiresAtMs: action.expiresAtMs, listen: action.listen }, attempts: [] };
    case "attempt-failed":
      return { ...state, attempts: [...state.attempts, `${action.remote}: ${action.reason} (${action.attemptsLeft} left)`].slice(-3) };
    case "ask":
      if (action.prompt === "code") return { ...state, prompt: { kind: "code", value: "", error: action.error } };
      if (action.prompt === "warnings") return { ...state, prompt: { kind: "warnings", checks: action.checks ?? [] } };
      return { ...state, prompt: { kind: "volume-name", value: "", error: undefined } };
    case "answered":
      return { ...state, answer: undefined };
    case "finished":
      return { ...state, phase: { kind: "finished", report: action.report }, prompt: undefined, code: undefined };
  }
}
