// The control API's answers to bad requests: a malformed URL is a JSON 400 (never Bun's HTML error
// page, which carries source paths), an unknown path a JSON 404, a wrong method a JSON 405, a body
// over the bound a JSON 413 whether its length was declared or streamed in chunks, and a bug that
// escapes a handler a JSON 500. Each case is sent as raw HTTP over the real unix socket.
import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import fs from "node:fs";
import net from "node:net";
import os from "node:os";
import path from "node:path";
import { createLogger } from "../../src/common/log.ts";
import { controlRequestBytesMax } from "../../src/constants.ts";
import { type ControlServer, startControlServer } from "../../src/node/control/server.ts";

let dir: string;
let server: ControlServer;
const seen: Record<string, unknown>[] = [];

/** One raw HTTP exchange: the status line, the headers and the parsed JSON body (or the raw text). */
async function exchange(head: string, body: string | Uint8Array[] = ""): Promise<{ status: number; contentType: string; body: unknown; raw: string }> {
  const raw = await new Promise<string>((resolve) => {
    const socket = net.connect(server.socketPath);
    let text = "";
    socket.on("data", (chunk) => (text += chunk));
    socket.on("close", () => resolve(text));
    // The server may answer and close before the whole body is sent (a 413): writing then fails,
    // and the answer already read is what counts.
    socket.on("error", () => {});
    socket.on("connect", async () => {
      socket.write(head + "\r\n");
      if (typeof body === "string") return socket.write(body);
      // Chunks one at a time, stopping as soon as an answer arrives (as an HTTP client would).
      for (const chunk of body) {
        if (text || socket.destroyed) return;
        await new Promise((written) => socket.write(chunk, written));
      }
    });
  });
  const [headerText, ...rest] = raw.split("\r\n\r\n");
  const status = Number(/^HTTP\/1\.1 (\d{3})/.exec(headerText ?? "")?.[1]);
  const contentType = /content-type: ([^\r\n]+)/i.exec(headerText ?? "")?.[1] ?? "";
  const bodyText = rest.join("\r\n\r\n");
  let parsed: unknown = bodyText;
  try {
    parsed = JSON.parse(bodyText);
  } catch {
    // left as text
  }
  return { status, contentType, body: parsed, raw };
}

const request = (line: string, headers: string[] = []) => [line, "Host: tandem", "Connection: close", ...headers, ""].join("\r\n");

beforeAll(async () => {
  dir = fs.mkdtempSync(path.join(os.tmpdir(), "tandem-control-"));
  server = await startControlServer({
    socketPath: path.join(dir, "control.sock"),
    log: createLogger({ level: "error", sink: () => {} }),
    routes: [
      { method: "GET", path: "/volumes/:name", handler: ({ params }) => ({ name: params.name }) },
      {
        method: "POST",
        path: "/volumes",
        handler: ({ body }) => {
          seen.push(body);
          return { ok: true };
        },
      },
      {
        method: "GET",
        path: "/bug",
        handler: () => {
          throw new RangeError("a bug");
        },
      },
    ],
  });
});

afterAll(async () => {
  await server.stop();
  fs.rmSync(dir, { recursive: true, force: true });
});

describe("control API input", () => {
  test("a parameter that is not valid percent-encoding is a JSON 400 naming the problem", async () => {
    for (const target of ["/v1/volumes/%E0%A4%A", "/v1/volumes/%ZZ", "/v1/volumes/%"]) {
      const reply = await exchange(request(`GET ${target} HTTP/1.1`));
      expect({ target, status: reply.status }).toEqual({ target, status: 400 });
      expect(reply.contentType).toMatch(/application\/json/);
      expect(reply.body).toMatchObject({ error: { code: "invalid_argument", message: expect.stringMatching(/malformed URL/) } });
      expect(reply.raw).not.toMatch(/<html|\.ts:/i);
    }
    const good = await exchange(request("GET /v1/volumes/a%2Eb HTTP/1.1"));
    expect(good.body).toEqual({ name: "a.b" });
  });

  test("unknown paths are a JSON 404 and a wrong method a JSON 405 with Allow", async () => {
    const unknown = await exchange(request("GET /v1/nothing/here HTTP/1.1"));
    expect(unknown.status).toBe(404);
    expect(unknown.body).toMatchObject({ error: { code: "not_found", message: "no such endpoint: GET /v1/nothing/here" } });
    const outside = await exchange(request("GET /etc/passwd HTTP/1.1"));
    expect(outside.status).toBe(404);
    const method = await exchange(request("DELETE /v1/volumes HTTP/1.1"));
    expect(method.status).toBe(405);
    expect(method.raw).toMatch(/allow: POST/i);
    expect(method.body).toMatchObject({ error: { code: "invalid_argument", message: expect.stringMatching(/DELETE is not allowed/) } });
  });

  test("a body over the bound is a JSON 413 whether declared or streamed, and is not read past the bound", async () => {
    const declared = await exchange(request("POST /v1/volumes HTTP/1.1", [`Content-Length: ${controlRequestBytesMax + 1}`, "Content-Type: application/json"]), "{");
    expect(declared.status).toBe(413);
    expect(declared.body).toMatchObject({ error: { code: "invalid_argument", message: `request body over ${controlRequestBytesMax} bytes` } });

    // Chunked: no length declared; 64 KiB chunks until past the bound.
    const chunkBytes = 64 * 1024;
    const chunks: Uint8Array[] = [];
    for (let sent = 0; sent <= controlRequestBytesMax; sent += chunkBytes) chunks.push(new TextEncoder().encode(`${chunkBytes.toString(16)}\r\n${" ".repeat(chunkBytes)}\r\n`));
    chunks.push(new TextEncoder().encode("0\r\n\r\n"));
    const streamed = await exchange(request("POST /v1/volumes HTTP/1.1", ["Transfer-Encoding: chunked"]), chunks);
    expect(streamed.status).toBe(413);
    expect(streamed.body).toMatchObject({ error: { code: "invalid_argument" } });
    expect(seen).toEqual([]);

    const fits = await exchange(request("POST /v1/volumes HTTP/1.1", ["Content-Length: 11"]), '{"name":"x"}'.slice(0, 11));
    expect(fits.status).toBe(400); // 11 bytes of a 12-byte document: not JSON, but read and judged
    const good = await exchange(request("POST /v1/volumes HTTP/1.1", ["Content-Length: 12"]), '{"name":"x"}');
    expect(good.status).toBe(200);
    expect(seen).toEqual([{ name: "x" }]);
  });

  test("a bug in a handler is a JSON 500, and the server keeps answering", async () => {
    const bug = await exchange(request("GET /v1/bug HTTP/1.1"));
    expect(bug.status).toBe(500);
    expect(bug.body).toMatchObject({ error: { code: "internal", message: "internal error: a bug" } });
    expect(bug.raw).not.toMatch(/<html/i);
    expect((await exchange(request("GET /v1/volumes/x HTTP/1.1"))).body).toEqual({ name: "x" });
  });
});
