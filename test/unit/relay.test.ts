// The lab's link relay over real loopback sockets: bytes pass unchanged and in order both ways,
// `cut` drops live connections and refuses new ones until `heal`, and `delay` holds traffic for
// at least the time asked while keeping its order.
import { afterEach, describe, expect, test } from "bun:test";
import net from "node:net";
import { LinkRelay } from "../../src/node/lab/relay.ts";
import { until } from "../helpers/until.ts";

const cleanups: (() => void)[] = [];
afterEach(() => {
  for (const cleanup of cleanups.splice(0)) cleanup();
});

/** An echo server on a free loopback port. */
async function echoServer(): Promise<number> {
  const server = net.createServer((socket) => socket.pipe(socket));
  await new Promise<void>((resolve) => server.listen(0, "127.0.0.1", resolve));
  cleanups.push(() => server.close());
  return (server.address() as net.AddressInfo).port;
}

function connect(port: number): Promise<{ socket: net.Socket; received: () => Buffer; closed: Promise<void> }> {
  return new Promise((resolve, reject) => {
    const chunks: Buffer[] = [];
    const socket = net.connect(port, "127.0.0.1");
    const closed = new Promise<void>((done) => socket.on("close", () => done()));
    socket.on("data", (chunk) => chunks.push(chunk as Buffer));
    socket.on("error", () => {});
    socket.once("connect", () => resolve({ socket, received: () => Buffer.concat(chunks), closed }));
    socket.once("error", reject);
    cleanups.push(() => socket.destroy());
  });
}


describe("link relay", () => {
  test("forwards bytes both ways, unchanged and in order", async () => {
    const relay = LinkRelay.start({ listen: { hostname: "127.0.0.1", port: 0 }, target: { hostname: "127.0.0.1", port: await echoServer() } });
    cleanups.push(() => relay.close());
    const client = await connect(relay.port);
    const payload = Buffer.alloc(4 * 1024 * 1024);
    for (let i = 0; i < payload.length; i++) payload[i] = (i * 7919) & 0xff;
    client.socket.write(payload);
    await until("the whole payload through the relay", () => client.received().length >= payload.length, 10_000);
    expect(client.received().equals(payload)).toBe(true);
    expect(relay.state().bytesForwarded).toBe(payload.length * 2);
  });

  test("cut drops live connections and refuses new ones; heal lets them through again", async () => {
    const relay = LinkRelay.start({ listen: { hostname: "127.0.0.1", port: 0 }, target: { hostname: "127.0.0.1", port: await echoServer() } });
    cleanups.push(() => relay.close());
    const live = await connect(relay.port);
    live.socket.write("ping");
    await until("ping through the relay", () => live.received().toString() === "ping");
    relay.cut();
    await live.closed;
    expect(relay.state()).toMatchObject({ cut: true, connections: 0 });
    const refused = await connect(relay.port);
    refused.socket.write("lost");
    await refused.closed;
    expect(refused.received().length).toBe(0);
    relay.heal();
    const again = await connect(relay.port);
    again.socket.write("back");
    await until("back through the healed relay", () => again.received().toString() === "back");
  });

  test("delay holds traffic for the time asked and keeps order", async () => {
    const relay = LinkRelay.start({ listen: { hostname: "127.0.0.1", port: 0 }, target: { hostname: "127.0.0.1", port: await echoServer() } });
    cleanups.push(() => relay.close());
    relay.delay(40);
    const client = await connect(relay.port);
    const started = performance.now();
    for (let i = 0; i < 50; i++) client.socket.write(`${String(i).padStart(3, "0")};`);
    const expected = Array.from({ length: 50 }, (_, i) => `${String(i).padStart(3, "0")};`).join("");
    await until("every byte through the relay", () => client.received().length >= expected.length);
    const elapsed = performance.now() - started;
    expect(client.received().toString()).toBe(expected);
    expect(elapsed).toBeGreaterThanOrEqual(80); // 40 ms each way
    expect(() => relay.delay(-1)).toThrow();
  });
});
