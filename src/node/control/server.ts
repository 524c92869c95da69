// The control API: HTTP/JSON on a unix socket only root can open (mode 0600 in a 0700 directory
// when the daemon creates it). Routes are a table of method + path pattern → handler; each handler
// takes the parsed request and returns a JSON-able value, or throws a TandemError whose code picks
// the HTTP status (http.ts). Any other exception is a bug: it is logged with its stack and answered
// as `internal`, and the daemon keeps serving. Whatever arrives gets a JSON answer, never Bun's HTML
// error page: a malformed URL is a 400, an unknown path a 404, a wrong method a 405, a body over the
// bound (constants.ts) a 413 — declared or streamed, it is never read past the bound. Only a request
// line Bun's HTTP parser cannot read at all gets the parser's own bodiless 400.
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

function errorResponse(code: keyof typeof httpStatusOf, message: string, details?: Record<string, unknown>, status = httpStatusOf[code], headers?: Record<string, string>): Response {
  const body: ErrorBody = { error: { code, message, ...(details ? { details } : {}) } };
  return Response.json(body, { status, headers });
}

/** A request refused before any handler runs, with its own HTTP status (400, 405, 413). */
class RequestRefused extends TandemError {
  constructor(
    readonly status: number,
    message: string,
    readonly headers?: Record<string, string>,
  ) {
    super("invalid_argument", message);
  }
}

const bodyTooLarge = () => new RequestRefused(413, `request body over ${controlRequestBytesMax} bytes`);

/** The body as text, read no further than the bound whether its length was declared or not. */
async function readBoundedText(request: Request): Promise<string> {
  const declared = request.headers.get("content-length");
  if (declared !== null && !(Number(declared) <= controlRequestBytesMax)) throw bodyTooLarge();
  const reader = request.body?.getReader();
  if (!reader) return "";
  const chunks: Uint8Array[] = [];
  let total = 0;
  for (;;) {
    const { done, value } = await reader.read();
    if (done) break;
    total += value.length;
    if (total > controlRequestBytesMax) {
      await reader.cancel().catch(() => {});
      throw bodyTooLarge();
    }
    chunks.push(value);
  }
  return new TextDecoder().decode(Buffer.concat(chunks));
}

async function readBody(request: Request): Promise<Record<string, unknown>> {
  if (request.method === "GET" || request.method === "DELETE") return {};
  const text = await readBoundedText(request);
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

  /** The route for a path, with its decoded parameters; 404 or 405 as a RequestRefused. */
  const route = (method: string, pathname: string): { route: CompiledRoute; params: Record<string, string> } => {
    const allowed: string[] = [];
    for (const candidate of routes) {
      const match = candidate.pattern.exec(pathname);
      if (!match) continue;
      if (candidate.method !== method) {
        allowed.push(candidate.method);
        continue;
      }
      const params: Record<string, string> = {};
      candidate.names.forEach((name, index) => {
        try {
          params[name] = decodeURIComponent(match[index + 1]!);
        } catch {
          throw new RequestRefused(400, `malformed URL: the ${name} in ${pathname} is not valid percent-encoding`);
        }
      });
      return { route: candidate, params };
    }
    if (allowed.length > 0) throw new RequestRefused(405, `${method} is not allowed on ${pathname} (allowed: ${allowed.join(", ")})`, { allow: allowed.join(", ") });
    throw new TandemError("not_found", `no such endpoint: ${method} ${pathname}`);
  };

  const handle = async (request: Request): Promise<Response> => {
    let method = request.method;
    let pathname = "(unparsed)";
    try {
      const url = new URL(request.url);
      pathname = url.pathname;
      const { route: matched, params } = route(method, pathname);
      const body = await readBody(request);
      const result = await matched.handler({ params, query: url.searchParams, body });
      return Response.json(result ?? {});
    } catch (error) {
      if (error instanceof RequestRefused) {
        log.info("request refused", { method, path: pathname, status: error.status, message: error.message });
        return errorResponse(error.code, error.message, undefined, error.status, error.headers);
      }
      if (error instanceof TandemError) {
        log.info("request refused", { method, path: pathname, code: error.code, message: error.message });
        return errorResponse(error.code, error.message, error.details);
      }
      log.error("request failed with an unexpected error", { method, path: pathname, error, stack: (error as Error)?.stack });
      return errorResponse("internal", `internal error: ${(error as Error)?.message ?? String(error)}`);
    }
  };

  // Bun's own limit would answer an oversized body with a bare 413; readBoundedText answers it in
  // JSON instead, so Bun's is set far above ours. `development: false` and `error` keep Bun's HTML
  // error page (with source paths) out of every answer, even if a bug escapes `handle`.
  const server = Bun.serve({
    unix: options.socketPath,
    fetch: handle,
    development: false,
    maxRequestBodySize: Number.MAX_SAFE_INTEGER,
    error: (error) => {
      log.error("request failed outside its handler", { error, stack: error?.stack });
      return errorResponse("internal", `internal error: ${error?.message ?? String(error)}`);
    },
  });
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
