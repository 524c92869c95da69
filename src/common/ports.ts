// Free loopback TCP ports for the lab and the benchmarks: the kernel picks them (bind to port 0),
// and they are released at once for the caller to take.

/** `count` distinct loopback TCP ports nothing listens on now. */
export function freeLoopbackPorts(count: number): number[] {
  const listeners = Array.from({ length: count }, () => Bun.listen({ hostname: "127.0.0.1", port: 0, socket: { data() {} } }));
  const ports = listeners.map((listener) => listener.port);
  for (const listener of listeners) listener.stop(true);
  return ports;
}
