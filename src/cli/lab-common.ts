// Shared by the `tandem lab` commands: the default directory and a spinner for slow steps (on a
// terminal, without --json; otherwise silent so scripts read clean output).
import { Option } from "clipanion";
import os from "node:os";
import path from "node:path";
import ora from "ora";
import type { TandemCommand } from "./base.ts";

export function defaultLabDir(): string {
  return process.env.TANDEM_LAB_DIR ?? path.join(os.tmpdir(), "tandem-lab");
}

/** The `--dir DIR` option every lab command takes. */
export function labDirOption(): string {
  return Option.String("--dir", defaultLabDir(), { description: "Directory of the lab (default: $TANDEM_LAB_DIR or $TMPDIR/tandem-lab)" });
}

export async function withSpinner<T>(command: TandemCommand, title: string, work: (progress: (step: string) => void) => Promise<T>): Promise<T> {
  const stderr = command.context.stderr as NodeJS.WriteStream;
  if (command.json || !stderr.isTTY) return work(() => {});
  const spinner = ora({ text: title, stream: stderr }).start();
  try {
    const result = await work((step) => (spinner.text = step));
    spinner.succeed(title);
    return result;
  } catch (error) {
    spinner.fail(title);
    throw error;
  }
}
