// Proves `tandem lab up --direct`: the nodes dial each other's replication listener (no relay process
// is started, and each node's peer address is the other's listen port), they pair and mirror (bytes
// written on a through NBD are read back from b's replica file once synced), the fault-drill
// commands that need the relay say so with exit 1, and asking for the other kind of link on an
// existing lab is refused rather than silently ignored.
import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import fs from "node:fs";
import os from "node:os";
import path from "node:path";
import { runCli } from "../helpers/daemon.ts";
import { labVolume, waitLabSynced } from "../helpers/lab.ts";

let dir: string;
const lab = (args: string[]) => runCli(["lab", ...args, "--dir", dir], { timeoutMs: 90_000 });

describe("a lab whose nodes link directly", () => {
  beforeAll(async () => {
    dir = fs.mkdtempSync(path.join(os.tmpdir(), "tandem-lab-direct-"));
    const up = await lab(["up", "--direct", "--json"]);
    if (up.code !== 0) throw new Error(`lab up --direct failed: ${up.stdout}${up.stderr}`);
  });

  afterAll(async () => {
    await lab(["down"]);
    fs.rmSync(dir, { recursive: true, force: true });
  });

  test("each node's peer address is the other's listener, and no relay runs", () => {
    const labFile = JSON.parse(fs.readFileSync(path.join(dir, "lab.json"), "utf8")) as { direct: boolean; ports: { listen: Record<string, number> } };
    expect(labFile.direct).toBe(true);
    for (const [node, peer] of [["a", "b"], ["b", "a"]] as const) {
      const config = JSON.parse(fs.readFileSync(path.join(dir, node, "config.json"), "utf8")) as { peer: { address: string; listen: string } };
      expect(config.peer.address).toBe(`127.0.0.1:${labFile.ports.listen[peer]}`);
    }
    expect(fs.existsSync(path.join(dir, "relay.pid"))).toBe(false);
    expect(fs.existsSync(path.join(dir, "relay.sock"))).toBe(false);
  });

  test("the demo volume is mirrored: bytes written on a are in b's replica", async () => {
    const socket = path.join(dir, "a", "nbd.sock");
    const payload = ("direct-link-" + Math.random().toString(36).slice(2)).padEnd(512, ".");
    const write = Bun.spawn(["nbdsh", "-u", `nbd+unix:///demo?socket=${socket}`, "-c", `h.pwrite(b"${payload}", 1048576); h.flush()`], {
      stdout: "pipe",
      stderr: "pipe",
      // nbdsh is Python: the system's interpreter has the nbd module, another first on PATH may not.
      env: { ...process.env, PATH: `/usr/bin:${process.env.PATH}` },
    });
    expect({ code: await write.exited, stderr: await new Response(write.stderr).text() }).toEqual({ code: 0, stderr: "" });
    await waitLabSynced(dir, "demo", 60_000);
    const replica = (await labVolume(dir, "demo", "b"))!.nodes.find((entry) => entry.node === "b")!;
    const fd = fs.openSync(replica.backing, "r");
    const back = Buffer.alloc(payload.length);
    fs.readSync(fd, back, 0, back.length, 1048576);
    fs.closeSync(fd);
    expect(back.toString()).toBe(payload);
  });

  test("cut, heal and delay need the relay: exit 1 with the reason", async () => {
    for (const action of [["cut"], ["heal"], ["delay", "5"]]) {
      const result = await lab([...action, "--json"]);
      expect({ action, code: result.code }).toEqual({ action, code: 1 });
      expect(result.stdout + result.stderr).toContain("links its nodes directly");
    }
  });

  test("lab up without --direct on this lab is idempotent; asking for the relay kind is refused", async () => {
    expect((await lab(["up", "--json"])).code).toBe(0);
    const other = await lab(["up", "--no-direct", "--json"]);
    expect(other.code).toBe(1);
    expect(other.stdout + other.stderr).toContain("was created with --direct");
  });
});
