// The pairing exchange over real TCP on loopback (src/node/install/pairing-driver.ts): a listener
// with a fresh code and dialers typing codes. The right code pairs both ends with the same secret;
// a wrong code is refused on the dialer and reported on the listener, which keeps listening; the
// preflight's round-trip probes (connect, close) and garbage bytes cost the code nothing and do not
// disturb it; silent connections opened during an exchange do not push it out; a dialer that
// reaches no listener says so. Each test's listener ends with its promise.
import { describe, expect, test } from "bun:test";
import net from "node:net";
import type { HostPort } from "../../src/node/config.ts";
import { dialForPairing, listenForPairing, newPairingCode } from "../../src/node/install/pairing-driver.ts";
import { randomBytes } from "node:crypto";
import { formatPairingCode, type OfferBase, PairingError, PairingInitiator } from "../../src/node/install/pairing-exchange.ts";
import { encodePairingMessage, PairingFramer, type PairingMessage } from "../../src/node/install/pairing-wire.ts";
import { until } from "../helpers/until.ts";
import { pairingAttemptsMax, pairingCodeAlphabet, pairingCodeLength, pairingSessionsMax } from "../../src/constants.ts";

const offerA: OfferBase = { name: "a", listen: "127.0.0.1:7788", connect: null, witnessId: null, witnessPath: null, linkRttMs: null, version: "0.1.0" };
const offerB = { name: "b", listen: null, connect: null, witnessId: null, witnessPath: null, linkRttMs: 0.1, version: "0.1.0" };

async function listening(code: string, extra: Partial<Parameters<typeof listenForPairing>[0]> = {}) {
  let resolveAddress: (address: HostPort) => void = () => {};
  const address = new Promise<HostPort>((resolve) => (resolveAddress = resolve));
  const failures: { reason: string; attemptsLeft: number }[] = [];
  const controller = new AbortController();
  const result = listenForPairing({
    listen: { hostname: "127.0.0.1", port: 0 },
    code,
    offer: offerA,
    onListening: resolveAddress,
    onAttemptFailed: (info) => failures.push(info),
    signal: controller.signal,
    ...extra,
  });
  result.catch(() => {});
  return { address: await address, result, failures, stop: () => controller.abort() };
}

describe("pairing over loopback", () => {
  test("codes are 8 characters of the unambiguous alphabet", () => {
    const codes = Array.from({ length: 50 }, () => newPairingCode());
    expect(codes.every((code) => code.length === pairingCodeLength && [...code].every((char) => pairingCodeAlphabet.includes(char)))).toBe(true);
    expect(new Set(codes).size).toBe(50);
  });

  test("probes and garbage first, then a wrong code, then the right one: paired with the same secret", async () => {
    const code = newPairingCode();
    const listener = await listening(code);
    // The preflight's round-trip probes: connect and close.
    for (let probe = 0; probe < 3; probe++) {
      await new Promise<void>((resolve, reject) => {
        const socket = net.connect({ host: "127.0.0.1", port: listener.address.port }, () => {
          socket.destroy();
          resolve();
        });
        socket.on("error", reject);
      });
    }
    // Garbage: a frame length far beyond the limit.
    await new Promise<void>((resolve) => {
      const socket = net.connect({ host: "127.0.0.1", port: listener.address.port }, () => socket.write(Buffer.from([0xff, 0xff, 0xff, 0xff, 1, 2, 3])));
      socket.resume(); // read (and drop) the hello, so the close is seen
      socket.on("close", () => resolve());
      socket.on("error", () => {});
    });
    const wrong = code.startsWith("2") ? "3" + code.slice(1) : "2" + code.slice(1);
    const refused = await dialForPairing({ peer: listener.address, code: wrong, offer: offerB, defaultListenPort: 7788 }).catch((error) => error);
    expect(refused).toBeInstanceOf(PairingError);
    expect(refused.code).toBe("wrong-code");

    const mine = await dialForPairing({ peer: listener.address, code: formatPairingCode(code).toLowerCase(), offer: offerB, defaultListenPort: 7788 });
    const theirs = await listener.result;
    expect(Buffer.from(mine.secret).equals(Buffer.from(theirs.result.secret))).toBe(true);
    expect(Buffer.from(mine.clusterId).equals(Buffer.from(theirs.result.clusterId))).toBe(true);
    // The dialer gave no listen address: it is the address it reached the peer from, on the default port.
    expect(mine.local).toEqual({ name: "b", listen: "127.0.0.1:7788", connect: "dial" });
    expect(theirs.result.peer).toMatchObject({ name: "b", listen: "127.0.0.1:7788", connect: "dial" });
    expect(theirs.remoteAddress).toBe("127.0.0.1");
    expect(listener.failures).toEqual([expect.objectContaining({ attemptsLeft: pairingAttemptsMax - 1, reason: expect.stringContaining("closed") })]);
    expect(Math.abs(theirs.result.clockOffsetMs!)).toBeLessThan(1_000);
  });

  test("connections opened without a word during an exchange evict each other, not the exchange", async () => {
    const code = newPairingCode();
    const listener = await listening(code);
    // An initiator driven by hand, so the test can hold it between its share and its confirm.
    const initiator = new PairingInitiator({ code, offer: { ...offerB, listen: "127.0.0.1:7788" }, random: (bytes) => new Uint8Array(randomBytes(bytes)) });
    const socket = net.connect({ host: "127.0.0.1", port: listener.address.port });
    const framer = new PairingFramer();
    const inbox: PairingMessage[] = [];
    socket.on("data", (chunk: Buffer) => inbox.push(...framer.push(new Uint8Array(chunk))));
    const next = async () => until("a message from the listener", () => inbox.shift(), 5_000);
    const step = (message: PairingMessage) => {
      for (const action of initiator.received(message, Date.now())) if (action.kind === "send") socket.write(encodePairingMessage(action.message));
    };
    step(await next()); // hello → share
    const reply = await next();
    expect(reply.type).toBe("reply");
    // Now a crowd of silent connections, more than the listener holds.
    const idle = await Promise.all(
      Array.from({ length: pairingSessionsMax + 2 }, () => new Promise<net.Socket>((resolve) => {
        const other = net.connect({ host: "127.0.0.1", port: listener.address.port }, () => resolve(other));
        other.on("error", () => {});
        other.resume();
      })),
    );
    step(reply); // reply → confirm
    const done = await next();
    expect(done.type).toBe("done");
    const outcome = initiator.received(done, Date.now());
    expect(outcome[0]?.kind).toBe("paired");
    expect((await listener.result).result.peer.name).toBe("b");
    for (const other of [socket, ...idle]) other.destroy();
  });

  test("the listener stops after pairing: a second dial finds nobody", async () => {
    const code = newPairingCode();
    const listener = await listening(code);
    await dialForPairing({ peer: listener.address, code, offer: offerB, defaultListenPort: 7788 });
    await listener.result;
    const again = await dialForPairing({ peer: listener.address, code, offer: offerB, defaultListenPort: 7788 }).catch((error) => error);
    expect(again).toMatchObject({ code: "closed", message: expect.stringContaining("start tandem install on that node first") });
  });

  test("a code whose life ends is refused, and the listener gives up", async () => {
    const code = newPairingCode();
    let clock = 0;
    const listener = await listening(code, { lifetimeMs: 60_000, now: () => clock });
    clock = 60_000;
    const refused = await dialForPairing({ peer: listener.address, code, offer: offerB, defaultListenPort: 7788 }).catch((error) => error);
    expect(refused).toMatchObject({ code: "expired" });
    expect(await listener.result.catch((error) => error)).toMatchObject({ code: "expired" });
  });

  test("cancelling the listener rejects it and frees the port", async () => {
    const listener = await listening(newPairingCode());
    listener.stop();
    expect(await listener.result.catch((error) => error)).toMatchObject({ code: "closed", message: "pairing was cancelled" });
    const again = await listening(newPairingCode(), { listen: { hostname: "127.0.0.1", port: listener.address.port } });
    expect(again.address.port).toBe(listener.address.port);
    again.stop();
  });
});
