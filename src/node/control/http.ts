// What the control API and its clients agree on: the error body, the HTTP status each error code
// travels with, and the version prefix of every path. Shared by the server (src/node/control/server.ts)
// and the one client (src/node/control/client.ts) so the two cannot drift.
import type { ErrorCode } from "../../common/errors.ts";

export const apiPrefix = "/v1";

export interface ErrorBody {
  error: { code: ErrorCode; message: string; details?: Record<string, unknown> };
}

export const httpStatusOf: Record<ErrorCode, number> = {
  invalid_argument: 400,
  not_found: 404,
  already_exists: 409,
  in_use: 409,
  failed_precondition: 412,
  io_error: 500,
  no_space: 507,
  unavailable: 503,
  internal: 500,
};

export function isErrorBody(body: unknown): body is ErrorBody {
  const error = (body as ErrorBody | undefined)?.error;
  return typeof error === "object" && error !== null && typeof error.code === "string" && typeof error.message === "string";
}
