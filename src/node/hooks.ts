// The node's hooks (`[hooks]` in the config): commands the daemon runs when this node becomes a
// volume's primary (`promoted`: start the VMs that use it) or stops being it (`fenced`: stop them),
// so a hypervisor follows the quorum's decisions with no operator. Each run gets one JSON event on
// stdin — {"event", "node", "volume", "volumeId", "epoch", "reason", "timeMs"} — and has
// hookTimeoutMs to finish before it is killed; its exit status and output (truncated) go to the
// daemon's log and the event log. Runs never block the data path and never overlap for one volume:
// a later event for a volume waits for the run before it, so "fenced" then "promoted" arrive in
// that order. docs/hooks.md has a libvirt example.
import { hookOutputBytesMax, hookTimeoutMs } from "../constants.ts";
import type { Logger } from "../common/log.ts";
import type { HookConfig } from "./config.ts";
import type { EventRecord } from "./state.ts";

export interface HookEvent {
  event: "promoted" | "fenced";
  node: string;
  volume: string;
  volumeId: number;
  epoch: number;
  reason: string;
  timeMs: number;
}

export interface HookOutcome {
  code: number | null;
  timedOut: boolean;
  output: string;
}

export class Hooks {
  private readonly chains = new Map<number, Promise<void>>();

  constructor(
    private readonly config: HookConfig,
    private readonly log: Logger,
    private readonly addEvent: (level: EventRecord["level"], kind: string, volume: string | null, message: string) => void,
    private readonly timeoutMs = hookTimeoutMs,
  ) {}

  /** Run the hook for `event` (if one is configured), after any earlier run for the same volume. */
  fire(event: HookEvent): Promise<void> {
    const command = this.config[event.event];
    if (!command) return Promise.resolve();
    const previous = this.chains.get(event.volumeId) ?? Promise.resolve();
    const next = previous.then(() => this.run(command, event)).then(
      (outcome) => this.record(event, outcome),
      (error) => this.record(event, { code: null, timedOut: false, output: `could not start: ${(error as Error)?.message ?? String(error)}` }),
    );
    this.chains.set(event.volumeId, next);
    void next.finally(() => {
      if (this.chains.get(event.volumeId) === next) this.chains.delete(event.volumeId);
    });
    return next;
  }

  private async run(command: string[], event: HookEvent): Promise<HookOutcome> {
    const child = Bun.spawn(command, { stdin: "pipe", stdout: "pipe", stderr: "pipe" });
    try {
      child.stdin.write(`${JSON.stringify(event)}\n`);
      await child.stdin.end();
    } catch {
      // The hook exited without reading its event (EPIPE): what counts is how it exited.
    }
    let timedOut = false;
    const timer = setTimeout(() => {
      timedOut = true;
      child.kill("SIGKILL");
    }, this.timeoutMs);
    const texts = Promise.all([new Response(child.stdout).text(), new Response(child.stderr).text()]);
    const code = await child.exited;
    clearTimeout(timer);
    // A killed hook's own children may hold its pipes open: take what arrived, do not wait for them.
    const [stdout, stderr] = timedOut ? await Promise.race([texts, Bun.sleep(100).then(() => ["", ""])]) : await texts;
    const output = `${stdout}${stderr}`.trim();
    return { code: timedOut ? null : code, timedOut, output: output.length > hookOutputBytesMax ? `${output.slice(0, hookOutputBytesMax)}...` : output };
  }

  private record(event: HookEvent, outcome: HookOutcome): void {
    const ok = outcome.code === 0;
    const what = outcome.timedOut ? `killed after ${this.timeoutMs} ms` : outcome.code === null ? "did not run" : `exited ${outcome.code}`;
    const message = `hook ${event.event} for ${event.volume} (epoch ${event.epoch}) ${what}${outcome.output ? `: ${outcome.output}` : ""}`;
    if (ok) this.log.info("hook ran", { hook: event.event, volume: event.volume, code: outcome.code, output: outcome.output });
    else this.log.warn("hook failed", { hook: event.event, volume: event.volume, code: outcome.code, timedOut: outcome.timedOut, output: outcome.output });
    this.addEvent(ok ? "info" : "warn", `hook-${event.event}`, event.volume, message);
  }
}
