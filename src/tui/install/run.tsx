// `tandem install`'s wizard: the App keeps the wizard's state with its pure reducer (state.ts), asks
// the questions the flags left open, then runs the install's steps through an InstallUi that turns
// every step event into an action and every question into a prompt whose answer comes back through
// the reducer. The steps (the only IO) come in as `run`, so component tests drive the screens with a
// scripted run and no network.
import { render, type Key, useApp, useInput } from "ink";
import { useEffect, useReducer, useRef } from "react";
import { readExistingConfig } from "../../node/install/config-file.ts";
import { defaultEnvironment, defaultNodeName, type InstallReport, type InstallSettings, type InstallUi, runInstall } from "../../node/install/steps.ts";
import { LinesView } from "../screens.tsx";
import { wizardLines } from "./lines.ts";
import { type Answer, initialWizardState, type KeyName, reduce, type WizardState } from "./state.ts";

export type InstallRun = (settings: InstallSettings, ui: InstallUi) => Promise<InstallReport>;

export function wizardKey(input: string, key: Key): KeyName {
  if (key.return) return "enter";
  if (key.escape) return "escape";
  if (key.backspace || key.delete) return "backspace";
  if (key.upArrow) return "up";
  if (key.downArrow) return "down";
  return "char";
}

type Resolvers = { code?: (code: string | null) => void; warnings?: (proceed: boolean) => void; volume?: (volume: { name: string; sizeBytes: number } | null) => void };

function deliver(resolvers: Resolvers, answer: Answer): void {
  if (answer.kind === "code") resolvers.code?.(answer.code);
  else if (answer.kind === "warnings") resolvers.warnings?.(answer.proceed);
  else resolvers.volume?.(answer.volume);
  resolvers[answer.kind] = undefined;
}

export interface WizardProps {
  initial: WizardState;
  run: InstallRun;
  color: boolean;
  width: number;
  height: number;
  now?: () => number;
  onFinished?: (report: InstallReport) => void;
}

export function WizardApp({ initial, run, color, width, height, now = Date.now, onFinished }: WizardProps) {
  const [state, dispatch] = useReducer(reduce, initial);
  const { exit } = useApp();
  const resolvers = useRef<Resolvers>({});
  const started = useRef(false);

  useEffect(() => {
    if (state.phase.kind !== "running" || started.current) return;
    started.current = true;
    const ui: InstallUi = {
      stepStarted: (id) => dispatch({ kind: "step-started", id }),
      stepFinished: (result) => dispatch({ kind: "step-finished", result }),
      progress: (id, text) => dispatch({ kind: "step-progress", id, text }),
      showCode: (info) => dispatch({ kind: "show-code", ...info }),
      attemptFailed: (info) => dispatch({ kind: "attempt-failed", ...info }),
      askCode: (error) => new Promise((resolve) => ((resolvers.current.code = resolve), dispatch({ kind: "ask", prompt: "code", error }))),
      confirmWarnings: (checks) => new Promise((resolve) => ((resolvers.current.warnings = resolve), dispatch({ kind: "ask", prompt: "warnings", checks }))),
      askVolume: () => new Promise((resolve) => ((resolvers.current.volume = resolve), dispatch({ kind: "ask", prompt: "volume" }))),
    };
    void run(state.settings, ui).then((report) => {
      dispatch({ kind: "finished", report });
      onFinished?.(report);
    });
  }, [state.phase.kind]);

  useEffect(() => {
    if (!state.answer) return;
    const answer = state.answer;
    dispatch({ kind: "answered" });
    deliver(resolvers.current, answer);
  }, [state.answer]);

  useEffect(() => {
    if (state.phase.kind === "quit") exit();
  }, [state.phase.kind, exit]);

  useEffect(() => {
    const timer = setInterval(() => dispatch({ kind: "tick", nowMs: now() }), 1_000);
    return () => clearInterval(timer);
  }, [now]);

  useInput((input, key) => dispatch({ kind: "key", key: wizardKey(input, key), char: input }));

  return <LinesView lines={wizardLines(state, width, height)} width={width} height={height} color={color} />;
}

/** Run the wizard on this terminal; the report, or undefined when the operator quit before the end. */
export async function runInstallWizard(options: { settings: InstallSettings; color: boolean }): Promise<InstallReport | undefined> {
  const existing = readExistingConfig(options.settings.configPath);
  const initial = initialWizardState(options.settings, { paired: existing.config?.peer !== undefined, defaultName: defaultNodeName(existing.raw), nowMs: Date.now() });
  const controller = new AbortController();
  let report: InstallReport | undefined;
  const width = Math.max(60, Math.min(process.stdout.columns ?? 80, 120));
  const height = Math.max(20, process.stdout.rows ?? 24);
  const instance = render(
    <WizardApp initial={initial} run={(settings, ui) => runInstall(settings, ui, defaultEnvironment(controller.signal))} color={options.color} width={width} height={height} onFinished={(done) => (report = done)} />,
    // Ink takes CI=true to mean "not interactive" and draws nothing until exit; a terminal is a terminal.
    { exitOnCtrlC: true, patchConsole: false, alternateScreen: true, interactive: Boolean(process.stdout.isTTY) },
  );
  await instance.waitUntilExit();
  // Ctrl-C before the end: stop whatever step waits (the pairing listener, a dial, the daemon).
  if (!report) controller.abort();
  return report;
}
