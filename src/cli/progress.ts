// Progress for CLI steps that take more than a moment (lab up/down, volume create with an initial
// sync, verify, later failover and install): an ora spinner on stderr whose text each step updates.
// Only on a terminal and never with --json: when stdout or stderr is not a TTY the work runs
// silently, so scripts and logs read clean output.
import ora from "ora";
import type { TandemCommand } from "./base.ts";

/** Whether `command` may draw a spinner: both streams are terminals and the output is not JSON. */
export function spinnerEnabled(command: TandemCommand): boolean {
  const stdout = command.context.stdout as NodeJS.WriteStream;
  const stderr = command.context.stderr as NodeJS.WriteStream;
  return !command.json && stdout.isTTY === true && stderr.isTTY === true;
}

/** Run `work` under a spinner titled `title`; `progress(text)` changes what it says. */
export async function withSpinner<T>(command: TandemCommand, title: string, work: (progress: (step: string) => void) => Promise<T>): Promise<T> {
  if (!spinnerEnabled(command)) return work(() => {});
  const spinner = ora({ text: title, stream: command.context.stderr as NodeJS.WriteStream, isEnabled: true }).start();
  try {
    const result = await work((step) => (spinner.text = `${title}: ${step}`));
    spinner.succeed(title);
    return result;
  } catch (error) {
    spinner.fail(title);
    throw error;
  }
}

/**
 * Run `work` while `poll` reports its progress every `intervalMs` (a long control request, say,
 * whose progress another endpoint shows). A failed poll is ignored: the work decides the outcome.
 */
export async function whilePolling<T>(work: Promise<T>, intervalMs: number, poll: () => Promise<void>): Promise<T> {
  let done = false;
  const loop = (async () => {
    while (!done) {
      await Promise.race([work.then(() => {}, () => {}), Bun.sleep(intervalMs)]);
      if (!done) await poll().catch(() => {});
    }
  })();
  try {
    return await work;
  } finally {
    done = true;
    await loop;
  }
}
