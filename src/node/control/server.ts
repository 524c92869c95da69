// The control API: HTTP/JSON on a unix socket only root can open (mode 0600 in a 0700 directory
// when the daemon creates it). Routes are a table of method + path pattern → handler; each handler
// takes the parsed request and returns a JSON-able value, or throws a TandemError whose code picks
// the HTTP status (http.ts). Any other exception is a bug: it is logged with its stack and answered
// as `internal`, and the daemon keeps serving. Bodies are bounded (constants.ts).
import fs from "node:fs";
import path from "node:path";
import { TandemError } from "../../common/errors.ts";
import type { Logger } from "../../common/log.ts";
import { controlRequestBytesMax } from "../../constants.ts";
import { apiPrefix, type ErrorBody, httpStatusOf } from "./http.ts";

export interface ControlRequest {
  params: Record<string, string>;
  query: URLSearchParams;
  body: Record<string, unknown>;
}

export type ControlHandler = (request: ControlRequest) => unknown | Promise<unknown>;

export interface Route {
  method: "GET" | "POST" | "DELETE";
  /** Path after the version prefix; `:name` segments become params. */
  path: string;
  handler: ControlHandler;
}

interface CompiledRoute {
  method: string;
  pattern: RegExp;
  names: string[];
  handler: ControlHandler;
}

function compile(route: Route): CompiledRoute {
  const names: string[] = [];
  const source = route.path
    .split("/")
    .map((segment) => {
      if (!segment.startsWith(":")) return segment.replace(/[.*+?^${}()|[\]\\]/g, "\\$&");
      names.push(segment.slice(1));
      return "([^/]+)";
    })
    .join("/");
  return { method: route.method, pattern: new RegExp(`^${apiPrefix}${source}$`), names, handler: route.handler };
}

function errorResponse(code: keyof typeof httpStatusOf, message: string, details?: Record<string, unknown>): Response {
  const body: ErrorBody = { error: { code, message, ...(details ? { details } : {}) } };
  return Response.json(body, { status: httpStatusOf[code] });
}

async function readBody(request: Request): Promise<Record<string, unknown>> {
  if (request.method === "GET" || request.method === "DELETE") return {};
  const declared = Number(request.headers.get("content-length") ?? "0");
  if (declared > controlRequestBytesMax) throw new TandemError("invalid_argument", `request body over ${controlRequestBytesMax} bytes`);
  const text = await request.text();
  if (text.length > controlRequestBytesMax) throw new TandemError("invalid_argument", `request body over ${controlRequestBytesMax} bytes`);
  if (text.trim() === "") return {};
  let parsed: unknown;
  try {
    parsed = JSON.parse(text);
  } catch {
    throw new TandemError("invalid_argument", "request body is not JSON");
  }
  if (typeof parsed !== "object" || parsed === null || Array.isArray(parsed)) throw new TandemError("invalid_argument", "request body must be a JSON object");
  return parsed as Record<string, unknown>;
}

export interface ControlServer {
  readonly socketPath: string;
  stop(): Promise<void>;
}

/** Refuse to start over a live daemon; remove a stale socket left by one that died. */
async function claimSocket(socketPath: string): Promise<void> {
  let stat: fs.Stats;
  try {
    stat = fs.lstatSync(socketPath);
  } catch {
    return;
  }
  if (!stat.isSocket()) throw new TandemError("already_exists", `${socketPath} exists and is not a socket`);
  const alive = await fetch(`http://localhost${apiPrefix}/status`, { unix: socketPath, signal: AbortSignal.timeout(2_000) }).then(
    () => true,
    () => false,
  );
  if (alive) throw new TandemError("already_exists", `another daemon answers on ${socketPath}`);
  fs.unlinkSync(socketPath);
}

export async function startControlServer(options: { socketPath: string; routes: Route[]; log: Logger }): Promise<ControlServer> {
  const log = options.log.child("control");
  const routes = options.routes.map(compile);
  const directory = path.dirname(options.socketPath);
  if (!fs.existsSync(directory)) fs.mkdirSync(directory, { recursive: true, mode: 0o700 });
  await claimSocket(options.socketPath);

  const handle = async (request: Request): Promise<Response> => {
    const url = new URL(request.url);
    let allowed: string[] = [];
    for (const route of routes) {
      const match = route.pattern.exec(url.pathname);
      if (!match) continue;
      if (route.method !== request.method) {
        allowed.push(route.method);
        continue;
      }
      const params: Record<string, string> = {};
      route.names.forEach((name, index) => (params[name] = decodeURIComponent(match[index + 1]!)));
      try {
        const body = await readBody(request);
        const result = await route.handler({ params, query: url.searchParams, body });
        return Response.json(result ?? {});
      } catch (error) {
        if (error instanceof TandemError) {
          log.info("request refused", { method: request.method, path: url.pathname, code: error.code, message: error.message });
          return errorResponse(error.code, error.message, error.details);
        }
        log.error("request failed with an unexpected error", { method: request.method, path: url.pathname, error, stack: (error as Error)?.stack });
        return errorResponse("internal", `internal error: ${(error as Error)?.message ?? String(error)}`);
      }
    }
    if (allowed.length > 0) return errorResponse("invalid_argument", `${request.method} is not allowed on ${url.pathname} (allowed: ${allowed.join(", ")})`);
    return errorResponse("not_found", `no such endpoint: ${request.method} ${url.pathname}`);
  };

  const server = Bun.serve({ unix: options.socketPath, fetch: handle, maxRequestBodySize: controlRequestBytesMax });
  fs.chmodSync(options.socketPath, 0o600);
  log.info("control API listening", { socket: options.socketPath });
  return {
    socketPath: options.socketPath,
    async stop() {
      await server.stop(true);
      fs.rmSync(options.socketPath, { force: true });
    },
  };
}
