// Two fresh node directories for tests of `tandem install`, laid out as the lab lays out its nodes
// (DIR/a, DIR/b: config, data, sockets) but empty: no config, no secret, no cluster. A shared 1 MiB
// witness file, free loopback ports for each node's replication address, and a systemctl stand-in
// per node (fake-systemctl.ts) that starts the real daemon when the install enables the unit.
// `cleanup` stops those daemons (by pid) and removes the directory.
import fs from "node:fs";
import os from "node:os";
import path from "node:path";
import { freeLoopbackPorts } from "../../src/common/ports.ts";
import { writeFakeSystemctl, type FakeSystemctl } from "./fake-systemctl.ts";

export interface InstallNode {
  name: string;
  dir: string;
  config: string;
  dataDir: string;
  controlSocket: string;
  port: number;
  listen: string;
  systemctl: FakeSystemctl;
  /** Environment for a `tandem install` of this node. */
  env: Record<string, string>;
}

export interface InstallPair {
  dir: string;
  witness: string;
  a: InstallNode;
  b: InstallNode;
  cleanup(): Promise<void>;
}

export async function installPair(prefix = "tandem-install-"): Promise<InstallPair> {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), prefix));
  const witness = path.join(dir, "witness.img");
  fs.writeFileSync(witness, new Uint8Array(1024 * 1024), { mode: 0o600 });
  const ports = freeLoopbackPorts(2);
  const node = (name: string, port: number): InstallNode => {
    const base = path.join(dir, name);
    fs.mkdirSync(base, { recursive: true, mode: 0o700 });
    const config = path.join(base, "node.toml");
    const systemctl = writeFakeSystemctl(base, config);
    return { name, dir: base, config, dataDir: path.join(base, "data"), controlSocket: path.join(base, "data", "control.sock"), port, listen: `127.0.0.1:${port}`, systemctl, env: { TANDEM_SYSTEMCTL: systemctl.program } };
  };
  const a = node("a", ports[0]!);
  const b = node("b", ports[1]!);
  return {
    dir,
    witness,
    a,
    b,
    async cleanup() {
      await Promise.all([a.systemctl.stop(), b.systemctl.stop()]);
      fs.rmSync(dir, { recursive: true, force: true });
    },
  };
}
