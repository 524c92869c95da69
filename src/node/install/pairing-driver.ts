// The pairing exchange on real sockets: the responder's listener (the node that shows the code
// listens on its replication address while `tandem install` waits) and the initiator's dial (the
// node where the code is typed). The protocol is the pure core in pairing-exchange.ts; this file
// only moves its messages over TCP, gives it the clock and the random source, and enforces the
// bounds: pairingSessionTimeoutMs per connection, pairingSessionsMax connections at once (a newer
// one evicts the oldest silent one), a frame size limit in the codec. Malformed input closes that connection
// only. Codes are made here with nanoid from an unambiguous alphabet.
import net from "node:net";
import { randomBytes } from "node:crypto";
import { customAlphabet } from "nanoid";
import { pairingCodeAlphabet, pairingCodeLength, pairingSessionsMax, pairingSessionTimeoutMs } from "../../constants.ts";
import { formatHostPort, type HostPort } from "../config.ts";
import { type OfferBase, PairingError, PairingInitiator, PairingResponder, type PairingResult, type ResponderAction } from "./pairing-exchange.ts";
import { encodePairingMessage, PairingFramer } from "./pairing-wire.ts";

const random = (bytes: number) => new Uint8Array(randomBytes(bytes));

/** A fresh pairing code (canonical form; show it with formatPairingCode). */
export const newPairingCode: () => string = customAlphabet(pairingCodeAlphabet, pairingCodeLength);

export interface ListenOptions {
  listen: HostPort;
  code: string;
  offer: OfferBase;
  /** Told where the listener is once it listens (a test binds port 0). */
  onListening?: (address: HostPort) => void;
  /** An exchange reached the reply and did not confirm: a wrong code was typed (or guessed). */
  onAttemptFailed?: (info: { remote: string; reason: string; attemptsLeft: number }) => void;
  /** Stops listening (the operator gave up); the promise rejects with code "closed". */
  signal?: AbortSignal;
  /** Tests shorten the code's life. */
  lifetimeMs?: number;
  now?: () => number;
}

export interface ListenResult {
  result: PairingResult;
  /** The address the initiator connected from. */
  remoteAddress: string;
}

/** Listen on `listen` with `code` until one exchange pairs, or the code expires, is exhausted or refused. */
export function listenForPairing(options: ListenOptions): Promise<ListenResult> {
  const now = options.now ?? Date.now;
  const core = new PairingResponder({ code: options.code, offer: options.offer, startedMs: now(), lifetimeMs: options.lifetimeMs, random });
  return new Promise<ListenResult>((resolve, reject) => {
    const sockets = new Map<number, { socket: net.Socket; remote: string; timer: ReturnType<typeof setTimeout>; spoke: boolean }>();
    let nextSession = 1;
    let settled = false;
    let ticker: ReturnType<typeof setInterval> | undefined;
    const server = net.createServer();

    const finish = (error: PairingError | undefined, value?: ListenResult) => {
      if (settled) return;
      settled = true;
      if (ticker) clearInterval(ticker);
      options.signal?.removeEventListener("abort", onAbort);
      server.close();
      for (const { socket, timer } of sockets.values()) {
        clearTimeout(timer);
        socket.end();
      }
      sockets.clear();
      if (error) reject(error);
      else resolve(value!);
    };

    // Where each session came from, kept after its socket is gone (the pairing is reported after its close).
    const remotes = new Map<number, string>();
    const apply = (actions: ResponderAction[]) => {
      for (const action of actions) {
        const entry = "session" in action ? sockets.get(action.session) : undefined;
        switch (action.kind) {
          case "send":
            entry?.socket.write(encodePairingMessage(action.message));
            break;
          case "close":
            if (entry) {
              clearTimeout(entry.timer);
              sockets.delete(action.session);
              entry.socket.end();
            }
            break;
          case "attempt-failed":
            options.onAttemptFailed?.({ remote: remotes.get(action.session) ?? "?", reason: action.reason, attemptsLeft: action.attemptsLeft });
            break;
          case "paired":
            finish(undefined, { result: action.result, remoteAddress: remotes.get(action.session) ?? "" });
            break;
          case "failed":
            finish(new PairingError(action.code, action.reason));
            break;
        }
      }
      for (const session of remotes.keys()) if (!sockets.has(session)) remotes.delete(session);
    };

    const onAbort = () => finish(new PairingError("closed", "pairing was cancelled"));
    if (options.signal?.aborted) return onAbort();
    options.signal?.addEventListener("abort", onAbort);

    server.on("connection", (socket) => {
      if (settled) return void socket.destroy();
      const session = nextSession++;
      const remote = socket.remoteAddress ?? "?";
      // Bounded: the oldest connection that has not sent anything yet makes room for a newer one
      // (so a flood of idle connections cannot push out an exchange under way), else the oldest.
      if (sockets.size >= pairingSessionsMax) {
        const oldest = [...sockets.entries()].find(([, entry]) => !entry.spoke)?.[0] ?? sockets.keys().next().value;
        if (oldest !== undefined) {
          const evicted = sockets.get(oldest)!;
          clearTimeout(evicted.timer);
          sockets.delete(oldest);
          evicted.socket.destroy();
          apply(core.disconnected(oldest, "evicted by a newer connection"));
        }
      }
      const timer = setTimeout(() => {
        if (!sockets.has(session)) return;
        sockets.delete(session);
        socket.destroy();
        apply(core.disconnected(session, `no complete exchange within ${pairingSessionTimeoutMs / 1000} s`));
      }, pairingSessionTimeoutMs);
      const entry = { socket, remote, timer, spoke: false };
      sockets.set(session, entry);
      remotes.set(session, remote);
      const framer = new PairingFramer();
      socket.on("data", (chunk: Buffer) => {
        if (!sockets.has(session)) return;
        entry.spoke = true;
        let messages;
        try {
          messages = framer.push(new Uint8Array(chunk));
        } catch (error) {
          clearTimeout(timer);
          sockets.delete(session);
          socket.destroy();
          apply(core.disconnected(session, `malformed: ${(error as Error).message}`));
          return;
        }
        for (const message of messages) {
          if (!sockets.has(session)) break;
          apply(core.received(session, message, now()));
        }
      });
      const gone = (reason: string) => {
        if (!sockets.has(session)) return;
        clearTimeout(timer);
        sockets.delete(session);
        apply(core.disconnected(session, reason));
      };
      socket.on("error", (error) => gone(error.message));
      socket.on("close", () => gone("connection closed"));
      apply(core.connected(session, now()));
    });
    server.on("error", (error: NodeJS.ErrnoException) => {
      const hint = error.code === "EADDRINUSE" ? " (is the daemon or another install already listening there?)" : error.code === "EADDRNOTAVAIL" ? " (no interface of this machine has that address)" : "";
      finish(new PairingError("closed", `cannot listen for the pairing on ${formatHostPort(options.listen)}: ${error.message}${hint}`));
    });
    server.listen({ host: options.listen.hostname, port: options.listen.port }, () => {
      const address = server.address() as net.AddressInfo;
      options.onListening?.({ hostname: address.address, port: address.port });
      ticker = setInterval(() => apply(core.tick(now())), 1_000);
    });
  });
}

export interface DialOptions {
  peer: HostPort;
  code: string;
  /** `listen` null: this node's replication address is the one it reaches the peer from, on the default port. */
  offer: Omit<OfferBase, "listen"> & { listen: string | null };
  defaultListenPort: number;
  signal?: AbortSignal;
  now?: () => number;
}

/** Dial the node that shows the code and run the exchange; resolves when both have agreed. */
export function dialForPairing(options: DialOptions): Promise<PairingResult> {
  const now = options.now ?? Date.now;
  const where = formatHostPort(options.peer);
  return new Promise<PairingResult>((resolve, reject) => {
    let settled = false;
    let initiator: PairingInitiator | undefined;
    const socket = net.connect({ host: options.peer.hostname, port: options.peer.port });
    const timer = setTimeout(() => finish(new PairingError("timeout", `no complete exchange with ${where} within ${pairingSessionTimeoutMs / 1000} s`)), pairingSessionTimeoutMs);
    const finish = (error: PairingError | undefined, result?: PairingResult) => {
      if (settled) return;
      settled = true;
      clearTimeout(timer);
      options.signal?.removeEventListener("abort", onAbort);
      if (error) {
        socket.destroy();
        reject(error);
      } else {
        socket.end();
        resolve(result!);
      }
    };
    const onAbort = () => finish(new PairingError("closed", "pairing was cancelled"));
    if (options.signal?.aborted) return onAbort();
    options.signal?.addEventListener("abort", onAbort);

    const apply = (actions: ReturnType<PairingInitiator["received"]>) => {
      for (const action of actions) {
        if (action.kind === "send") socket.write(encodePairingMessage(action.message));
        else if (action.kind === "paired") finish(undefined, action.result);
        else finish(new PairingError(action.code, action.reason));
      }
    };
    socket.once("connect", () => {
      const listen = options.offer.listen ?? formatHostPort({ hostname: socket.localAddress ?? "127.0.0.1", port: options.defaultListenPort });
      try {
        initiator = new PairingInitiator({ code: options.code, offer: { ...options.offer, listen }, random });
      } catch (error) {
        finish(error instanceof PairingError ? error : new PairingError("invalid-code", (error as Error).message));
      }
    });
    const framer = new PairingFramer();
    socket.on("data", (chunk: Buffer) => {
      if (settled || !initiator) return;
      try {
        for (const message of framer.push(new Uint8Array(chunk))) apply(initiator.received(message, now()));
      } catch (error) {
        finish(new PairingError("protocol", `${where} sent something that is not the pairing protocol (${(error as Error).message}): is it a Tandem installer waiting with a code?`));
      }
    });
    socket.on("error", (error: NodeJS.ErrnoException) => {
      if (!initiator) {
        const hint = error.code === "ECONNREFUSED" ? `: start tandem install on that node first (it shows the code and listens there)` : "";
        finish(new PairingError("closed", `cannot reach the other node's installer at ${where}: ${error.message}${hint}`));
      } else apply(initiator.disconnected(error.message));
    });
    socket.on("close", () => {
      if (!settled) apply(initiator ? initiator.disconnected("connection closed") : []);
      if (!settled) finish(new PairingError("closed", `${where} closed the connection before the exchange began`));
    });
  });
}
