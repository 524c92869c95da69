// `tandem lab relay --dir DIR` (started by `lab up`, not by hand): runs the lab's link relays, one
// forwarding to each node's replication listener, and answers `lab cut|heal|delay` on
// DIR/relay.sock until SIGTERM.
import { Command } from "clipanion";
import fs from "node:fs";
import path from "node:path";
import { LinkRelay } from "../../../node/lab/relay.ts";
import { readLab } from "../../../node/lab/lab.ts";
import { TandemCommand } from "../../base.ts";
import { labDirOption } from "../../lab-common.ts";

export class LabRelayCommand extends TandemCommand {
  static override paths = [["lab", "relay"]];
  static override usage = Command.Usage({
    category: "Lab",
    description: "Run the lab's link relay (started by `tandem lab up`)",
    details: "Forwards each node's replication traffic to its peer over loopback and obeys `tandem lab cut|heal|delay` through DIR/relay.sock.",
  });

  dir = labDirOption();

  async run(): Promise<number> {
    const dir = path.resolve(this.dir);
    const lab = readLab(dir) as unknown as { nodes: string[]; ports: { listen: Record<string, number>; relay: Record<string, number> } };
    const relays = lab.nodes.map((node) => LinkRelay.start({ listen: { hostname: "127.0.0.1", port: lab.ports.relay[node]! }, target: { hostname: "127.0.0.1", port: lab.ports.listen[node]! } }));
    const state = () => {
      const states = relays.map((relay) => relay.state());
      return { cut: states.some((s) => s.cut), delayMs: states[0]?.delayMs ?? 0, connections: states.reduce((n, s) => n + s.connections, 0), bytesForwarded: states.reduce((n, s) => n + s.bytesForwarded, 0) };
    };
    const socketPath = path.join(dir, "relay.sock");
    fs.rmSync(socketPath, { force: true });
    const server = Bun.serve({
      unix: socketPath,
      fetch: async (request) => {
        const action = new URL(request.url).pathname.slice(1);
        if (action === "cut") relays.forEach((relay) => relay.cut());
        else if (action === "heal") relays.forEach((relay) => relay.heal());
        else if (action === "delay") {
          const body = (await request.json().catch(() => ({}))) as { ms?: unknown };
          if (typeof body.ms !== "number" || !Number.isInteger(body.ms) || body.ms < 0) {
            return Response.json({ error: { code: "invalid_argument", message: "delay needs ms, a whole number >= 0" } }, { status: 400 });
          }
          relays.forEach((relay) => relay.delay(body.ms as number));
        } else if (action !== "state") return Response.json({ error: { code: "not_found", message: `unknown relay action ${action}` } }, { status: 404 });
        if (action !== "state") this.context.stdout.write(JSON.stringify({ time: new Date().toISOString(), msg: `relay ${action}`, ...state() }) + "\n");
        return Response.json(state());
      },
    });
    fs.chmodSync(socketPath, 0o600);
    this.context.stdout.write(JSON.stringify({ time: new Date().toISOString(), msg: "relay running", ports: lab.ports }) + "\n");
    await new Promise<void>((resolve) => {
      process.on("SIGTERM", resolve);
      process.on("SIGINT", resolve);
    });
    relays.forEach((relay) => relay.close());
    await server.stop(true);
    fs.rmSync(socketPath, { force: true });
    return 0;
  }
}
