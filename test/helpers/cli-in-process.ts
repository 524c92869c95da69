// The CLI in-process (clipanion's cli.run) with captured stdout and stderr, optionally posing as a
// terminal (isTTY and the cursor calls a spinner makes), for tests of what commands print.
import { PassThrough } from "node:stream";
import { createCli } from "../../src/cli/commands.ts";

function capture(tty: boolean): PassThrough & { text: string } {
  const stream = Object.assign(new PassThrough(), { text: "" });
  stream.on("data", (chunk) => (stream.text += chunk));
  if (tty) Object.assign(stream, { isTTY: true, columns: 100, rows: 40, cursorTo: () => true, moveCursor: () => true, clearLine: () => true });
  return stream;
}

/** Run `tandem ARGS` in this process; `tty`: stdout and stderr claim to be terminals. */
export async function runInProcess(args: string[], options: { tty?: boolean } = {}): Promise<{ code: number; stdout: string; stderr: string }> {
  const stdout = capture(options.tty === true);
  const stderr = capture(options.tty === true);
  const code = await createCli().run(args, { stdin: process.stdin, stdout, stderr, env: process.env, colorDepth: 1 });
  return { code, stdout: stdout.text, stderr: stderr.text };
}
