// `tandem tui`'s driver: the App component keeps the dashboard state with the pure reducer
// (state.ts), turns keys into actions, and takes snapshots from a DashboardSource. The source is
// the only IO: `controlSource` polls the daemon through the one control client every
// tuiPollIntervalMs, each request bounded by tuiRequestTimeoutMs, one poll at a time, so a slow or
// dead daemon never blocks the screen: its data turns STALE with its age instead.
import { render, useApp, useInput, useWindowSize, type Key } from "ink";
import { useEffect, useReducer, useRef } from "react";
import { TandemError } from "../common/errors.ts";
import { ControlClient } from "../node/control/client.ts";
import { statusSchemaVersion } from "../node/control/status.ts";
import type { EventRecord } from "../node/state.ts";
import { tuiEventsKept, tuiFailoverTimeoutMs, tuiPollIntervalMs, tuiRequestTimeoutMs } from "../constants.ts";
import { Screen } from "./screens.tsx";
import { type Action, initialState, type KeyName, reduce } from "./state.ts";

/** Where snapshots come from: started once, stopped on quit; `refresh` asks at once. */
export interface DashboardSource {
  start(dispatch: (action: Action) => void): { refresh(): void; stop(): void };
  /** Run `tandem failover VOLUME --to NODE [--force]` through the daemon; resolves to its message. */
  failover?(volume: string, to: string, force: boolean): Promise<string>;
}

/** The dashboard's key for what Ink read; "char" for anything else (typed into the confirmation). */
export function keyOf(input: string, key: Key): KeyName {
  if (key.upArrow || input === "k") return "up";
  if (key.downArrow || input === "j") return "down";
  if (key.return) return "enter";
  if (key.escape) return "escape";
  if (key.backspace || key.delete) return "backspace";
  const named: Record<string, KeyName> = { "?": "help", f: "failover", q: "quit", r: "refresh", y: "yes" };
  return named[input] ?? "char";
}

export function controlSource(client: ControlClient, now: () => number = Date.now): DashboardSource {
  return {
    start(dispatch) {
      let stopped = false;
      let polling = false;
      const poll = async () => {
        if (stopped || polling) return;
        polling = true;
        try {
          const options = { timeoutMs: tuiRequestTimeoutMs };
          const [status, events] = await Promise.all([client.status(options), client.request<{ events: EventRecord[] }>("GET", `/events?limit=${tuiEventsKept}`, undefined, options)]);
          if (status.schemaVersion !== statusSchemaVersion) throw new TandemError("failed_precondition", `the daemon reports status schema ${status.schemaVersion}; this tandem reads ${statusSchemaVersion}`);
          if (!stopped) dispatch({ kind: "snapshot", status, events: events.events, atMs: now() });
        } catch (error) {
          if (!stopped) dispatch({ kind: "pollFailed", error: (error as Error)?.message ?? String(error), atMs: now() });
        } finally {
          polling = false;
        }
      };
      void poll();
      const pollTimer = setInterval(() => void poll(), tuiPollIntervalMs);
      const tickTimer = setInterval(() => dispatch({ kind: "tick", nowMs: now() }), 250);
      return {
        refresh: () => void poll(),
        stop() {
          stopped = true;
          clearInterval(pollTimer);
          clearInterval(tickTimer);
        },
      };
    },
    async failover(volume, to, force) {
      const result = await client.request<{ message: string }>("POST", `/volumes/${encodeURIComponent(volume)}/failover`, { to, wait: false, force }, { timeoutMs: tuiFailoverTimeoutMs });
      return result.message;
    },
  };
}

export interface AppProps {
  socket: string;
  source: DashboardSource;
  color: boolean;
  /** Fixed size (tests); otherwise the terminal's. */
  width?: number;
  height?: number;
  now?: () => number;
}

export function App({ socket, source, color, width, height, now = Date.now }: AppProps) {
  const [state, dispatch] = useReducer(reduce, undefined, () => initialState(socket, now()));
  const { exit } = useApp();
  const window = useWindowSize();
  const running = useRef<{ refresh(): void; stop(): void } | undefined>(undefined);

  useEffect(() => {
    running.current = source.start(dispatch);
    return () => running.current?.stop();
  }, [source]);
  useEffect(() => {
    if (state.refreshRequested) running.current?.refresh();
  }, [state.refreshRequested]);
  useEffect(() => {
    if (state.screen.kind === "quit") {
      running.current?.stop();
      exit();
    }
  }, [state.screen.kind, exit]);
  const screen = state.screen;
  const request = screen.kind === "failover" && screen.outcome?.kind === "running" ? { volume: screen.volume, to: screen.outcome.to, force: screen.outcome.force } : undefined;
  useEffect(() => {
    if (!request) return;
    const answer = source.failover ? source.failover(request.volume, request.to, request.force) : Promise.reject(new Error("this dashboard cannot run a failover"));
    answer.then(
      (message) => dispatch({ kind: "failoverResult", volume: request.volume, ok: true, message }),
      (error: Error) => dispatch({ kind: "failoverResult", volume: request.volume, ok: false, message: error?.message ?? String(error) }),
    );
  }, [request?.volume, request?.to, request?.force, source]);
  useInput((input, key) => dispatch({ kind: "key", key: keyOf(input, key), char: input }));

  return <Screen state={state} width={width ?? Math.max(40, window.columns)} height={height ?? Math.max(10, window.rows)} color={color} />;
}

/** Run the dashboard on this terminal until the operator quits. */
export async function runDashboard(options: { socket: string; color: boolean }): Promise<void> {
  const client = new ControlClient(options.socket, { timeoutMs: tuiRequestTimeoutMs });
  // Interactive is decided by the terminal alone: Ink would otherwise treat any environment with
  // CI set (a provisioning job, a CI runner driving a real pty) as non-interactive and draw nothing
  // until exit, leaving the operator a blank screen.
  const interactive = Boolean(process.stdout.isTTY);
  const instance = render(<App socket={options.socket} source={controlSource(client)} color={options.color} />, { exitOnCtrlC: true, patchConsole: false, alternateScreen: true, interactive });
  await instance.waitUntilExit();
}
