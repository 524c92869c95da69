// Two network namespaces joined by one veth pair: the replication cable between two test nodes.
// Names and the /30 subnet are derived from this process's pid so concurrent runs do not collide;
// the addresses exist only inside the namespaces and nothing is routed anywhere else. `cut` takes
// the cable's carrier down on both ends, `heal` brings it back. `destroy` deletes both namespaces
// (which removes the veth). Needs root and iproute2.

export interface NamespacePair {
  a: { namespace: string; address: string };
  b: { namespace: string; address: string };
  cut(): void;
  heal(): void;
  destroy(): void;
}

function ip(args: string[]): void {
  const result = Bun.spawnSync(["ip", ...args], { stderr: "pipe" });
  if (result.exitCode !== 0) throw new Error(`ip ${args.join(" ")}: ${result.stderr.toString().trim()}`);
}

export function namespacesAvailable(): boolean {
  return process.getuid?.() === 0 && Bun.which("ip") !== null;
}

export function createNamespacePair(): NamespacePair {
  const tag = `tdm${process.pid % 100000}`;
  const octet = (process.pid % 250) + 1;
  const a = { namespace: `${tag}a`, address: `10.98.${octet}.1` };
  const b = { namespace: `${tag}b`, address: `10.98.${octet}.2` };
  const destroy = () => {
    for (const side of [a, b]) Bun.spawnSync(["ip", "netns", "del", side.namespace], { stderr: "ignore" });
  };
  destroy();
  try {
    ip(["netns", "add", a.namespace]);
    ip(["netns", "add", b.namespace]);
    ip(["link", "add", `${tag}x`, "netns", a.namespace, "type", "veth", "peer", "name", `${tag}y`, "netns", b.namespace]);
    ip(["-n", a.namespace, "addr", "add", `${a.address}/30`, "dev", `${tag}x`]);
    ip(["-n", b.namespace, "addr", "add", `${b.address}/30`, "dev", `${tag}y`]);
    for (const [side, device] of [[a, `${tag}x`], [b, `${tag}y`]] as const) {
      ip(["-n", side.namespace, "link", "set", "lo", "up"]);
      ip(["-n", side.namespace, "link", "set", device, "up"]);
    }
  } catch (error) {
    destroy();
    throw error;
  }
  const setLink = (state: "up" | "down") => {
    ip(["-n", a.namespace, "link", "set", `${tag}x`, state]);
    ip(["-n", b.namespace, "link", "set", `${tag}y`, state]);
  };
  return { a, b, cut: () => setLink("down"), heal: () => setLink("up"), destroy };
}
