// The CLI's side of the control API: one request, one JSON answer. A daemon that is not there is a
// TandemError "unavailable" naming the socket tried and how to pick another; an error body from the
// daemon becomes a TandemError with the daemon's code and message, so commands just throw.
import { TandemError } from "../common/errors.ts";
import { apiPrefix, isErrorBody } from "../node/control/http.ts";

export const controlTimeoutMs = 120_000;

export class ControlClient {
  constructor(readonly socketPath: string) {}

  async request<T = Record<string, unknown>>(method: "GET" | "POST" | "DELETE", path: string, body?: unknown): Promise<T> {
    let response: Response;
    try {
      response = await fetch(`http://tandem${apiPrefix}${path}`, {
        method,
        unix: this.socketPath,
        headers: body === undefined ? {} : { "content-type": "application/json" },
        body: body === undefined ? undefined : JSON.stringify(body),
        signal: AbortSignal.timeout(controlTimeoutMs),
      });
    } catch (error) {
      const reason = (error as Error)?.message ?? String(error);
      throw new TandemError("unavailable", `cannot reach the Tandem daemon at ${this.socketPath} (${reason}); is it running? Choose another with --socket or TANDEM_SOCKET`);
    }
    let parsed: unknown;
    try {
      parsed = await response.json();
    } catch {
      throw new TandemError("internal", `the daemon at ${this.socketPath} answered ${response.status} without JSON`);
    }
    if (isErrorBody(parsed)) throw new TandemError(parsed.error.code, parsed.error.message, parsed.error.details);
    if (!response.ok) throw new TandemError("internal", `the daemon answered ${response.status}`);
    return parsed as T;
  }
}
