// The one client of the control API, used by the CLI, the lab and the TUI: one request, one JSON
// answer. A daemon that is not there (or does not answer in time) is a TandemError "unavailable"
// naming the socket tried and how to pick another; an error body from the daemon becomes a
// TandemError with the daemon's code and message, so callers just throw or show it. A caller that
// must never wait long (the TUI polls a daemon that may hang) passes its own timeout per request.
import { TandemError } from "../../common/errors.ts";
import { controlRequestTimeoutMs } from "../../constants.ts";
import { apiPrefix, isErrorBody } from "./http.ts";
import type { StatusReport } from "./status.ts";

export type ControlMethod = "GET" | "POST" | "DELETE";

export interface ControlRequestOptions {
  /** Give up after this long (default: the client's, else controlRequestTimeoutMs). */
  timeoutMs?: number;
}

export class ControlClient {
  constructor(
    readonly socketPath: string,
    private readonly defaults: ControlRequestOptions = {},
  ) {}

  async request<T = Record<string, unknown>>(method: ControlMethod, path: string, body?: unknown, options: ControlRequestOptions = {}): Promise<T> {
    const timeoutMs = options.timeoutMs ?? this.defaults.timeoutMs ?? controlRequestTimeoutMs;
    let response: Response;
    let parsed: unknown;
    try {
      const signal = AbortSignal.timeout(timeoutMs);
      response = await fetch(`http://tandem${apiPrefix}${path}`, {
        method,
        unix: this.socketPath,
        headers: body === undefined ? {} : { "content-type": "application/json" },
        body: body === undefined ? undefined : JSON.stringify(body),
        signal,
      });
      try {
        parsed = await response.json();
      } catch (error) {
        if (signal.aborted) throw error;
        throw new TandemError("internal", `the daemon at ${this.socketPath} answered ${response.status} without JSON`);
      }
    } catch (error) {
      if (error instanceof TandemError) throw error;
      const reason = (error as Error)?.name === "TimeoutError" ? `no answer within ${timeoutMs} ms` : ((error as Error)?.message ?? String(error));
      throw new TandemError("unavailable", `cannot reach the Tandem daemon at ${this.socketPath} (${reason}); is it running? Choose another with --socket or TANDEM_SOCKET`);
    }
    if (isErrorBody(parsed)) throw new TandemError(parsed.error.code, parsed.error.message, parsed.error.details);
    if (!response.ok) throw new TandemError("internal", `the daemon answered ${response.status}`);
    return parsed as T;
  }

  /** The node's status report (docs/status.schema.json). */
  status(options: ControlRequestOptions = {}): Promise<StatusReport> {
    return this.request<StatusReport>("GET", "/status", undefined, options);
  }
}
