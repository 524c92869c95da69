// What every command shares: `--json` and `--socket`, the control client, rendering, and the exit
// status. A command implements `run()`; `execute()` turns what it throws into one clear line (or a
// JSON error object with --json) and an exit code from the table below, documented in docs/cli.md:
//   0 success · 1 the operation failed · 2 bad usage or invalid argument · 3 the daemon cannot be
//   reached · 4 no such volume/export · 5 conflict (exists already, in use, busy); `tandem status`
//   adds 6 degraded · 7 no quorum (docs/cli.md)
import { Command, Option, UsageError } from "clipanion";
import { type ErrorCode, TandemError } from "../common/errors.ts";
import { defaultControlSocketPath } from "../node/config.ts";
import { ControlClient } from "../node/control/client.ts";

export const exitCodes = { ok: 0, failed: 1, usage: 2, unreachable: 3, notFound: 4, conflict: 5, degraded: 6, noQuorum: 7 } as const;

const exitCodeOf: Record<ErrorCode, number> = {
  invalid_argument: exitCodes.usage,
  not_found: exitCodes.notFound,
  already_exists: exitCodes.conflict,
  in_use: exitCodes.conflict,
  failed_precondition: exitCodes.failed,
  io_error: exitCodes.failed,
  no_space: exitCodes.failed,
  unavailable: exitCodes.unreachable,
  internal: exitCodes.failed,
};

export abstract class TandemCommand extends Command {
  json = Option.Boolean("--json", false, { description: "Print the result as JSON" });
  socket = Option.String("--socket", { description: "The daemon's control socket (default: $TANDEM_SOCKET, else " + defaultControlSocketPath + ")" });

  abstract run(): Promise<number | void>;

  get socketPath(): string {
    return this.socket ?? process.env.TANDEM_SOCKET ?? defaultControlSocketPath;
  }

  client(): ControlClient {
    return new ControlClient(this.socketPath);
  }

  /** Print `value` as JSON with --json, else the text `render` makes of it. */
  output<T>(value: T, render: (value: T) => string): void {
    if (this.json) this.context.stdout.write(JSON.stringify(value, null, 2) + "\n");
    else {
      const text = render(value);
      if (text) this.context.stdout.write(text.endsWith("\n") ? text : text + "\n");
    }
  }

  /** Option validation (typanion) fails before `execute`: report it like every usage error. */
  override async validateAndExecute(): Promise<number> {
    try {
      return await super.validateAndExecute();
    } catch (error) {
      if (!(error instanceof UsageError)) throw error;
      if (this.json) this.context.stdout.write(JSON.stringify({ error: { code: "invalid_argument", message: error.message } }, null, 2) + "\n");
      else this.context.stderr.write(`tandem: ${error.message}\n`);
      return exitCodes.usage;
    }
  }

  async execute(): Promise<number> {
    try {
      return (await this.run()) ?? exitCodes.ok;
    } catch (error) {
      let code: ErrorCode = "internal";
      let message: string;
      if (error instanceof TandemError) {
        code = error.code;
        message = error.message;
      } else if (error instanceof UsageError) {
        code = "invalid_argument";
        message = error.message;
      } else {
        message = `unexpected error: ${(error as Error)?.stack ?? String(error)}`;
      }
      if (this.json) this.context.stdout.write(JSON.stringify({ error: { code, message } }, null, 2) + "\n");
      else this.context.stderr.write(`tandem: ${message}\n`);
      return exitCodeOf[code];
    }
  }
}

/** Fixed-width text table; the first row is the header. */
export function table(rows: string[][]): string {
  const widths: number[] = [];
  for (const row of rows) row.forEach((cell, index) => (widths[index] = Math.max(widths[index] ?? 0, cell.length)));
  return rows.map((row) => row.map((cell, index) => (index === row.length - 1 ? cell : cell.padEnd(widths[index]!))).join("  ")).join("\n");
}
