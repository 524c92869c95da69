// Two real daemons in two network namespaces, paired over a veth "cable" with real addresses (no
// relay): a mirrored volume is created on both, fio writes and verifies through the primary's NBD
// export while the cable is pulled and plugged back, the pair resyncs by itself, and afterwards
// `tandem verify` finds no difference and the two backing files hash the same.
import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import { createHash } from "node:crypto";
import fs from "node:fs";
import os from "node:os";
import path from "node:path";
import { TestDaemon } from "../helpers/daemon.ts";
import { runBounded } from "../helpers/run.ts";
import { eventually } from "../helpers/until.ts";
import { replicaLinkTimeoutMs } from "../../src/constants.ts";
import { createNamespacePair, type NamespacePair } from "../helpers/netns.ts";
import { verifiedWorkload } from "../helpers/fio.ts";

const MiB = 1024 * 1024;
const port = 7788;

interface VolumeJson {
  name: string;
  nodes: { node: string; role: string; state: string; backing: string }[];
}

describe("mirroring across network namespaces", () => {
  let pair: NamespacePair;
  let root: string;
  let a: TestDaemon;
  let b: TestDaemon;

  beforeAll(async () => {
    pair = createNamespacePair();
    root = fs.mkdtempSync(path.join(os.tmpdir(), "tandem-netns-"));
    const secretFile = path.join(root, "pairing.secret");
    fs.writeFileSync(secretFile, crypto.getRandomValues(new Uint8Array(32)), { mode: 0o600 });
    const clusterId = Buffer.from(crypto.getRandomValues(new Uint8Array(16))).toString("hex");
    const peerConfig = (peer: string, peerAddress: string, listen: string) => ({
      peer: { name: peer, address: `${peerAddress}:${port}`, listen: `${listen}:${port}`, secretFile, clusterId },
    });
    for (const name of ["a", "b"]) fs.mkdirSync(path.join(root, name));
    a = await TestDaemon.start({ dir: path.join(root, "a"), name: "a", config: peerConfig("b", pair.b.address, pair.a.address), wrap: ["ip", "netns", "exec", pair.a.namespace] });
    b = await TestDaemon.start({ dir: path.join(root, "b"), name: "b", config: peerConfig("a", pair.a.address, pair.b.address), wrap: ["ip", "netns", "exec", pair.b.namespace] });
  });

  afterAll(async () => {
    await a?.cleanup();
    await b?.cleanup();
    pair?.destroy();
    fs.rmSync(root, { recursive: true, force: true });
  });

  async function states(): Promise<string[]> {
    const list = async (daemon: TestDaemon) => (await daemon.cliJson<{ volumes: VolumeJson[] }>(["volume", "list"])).volumes.find((v) => v.name === "nsvol");
    const [fromA, fromB] = await Promise.all([list(a), list(b)]);
    return [...(fromA?.nodes ?? []), ...(fromB?.nodes ?? [])].map((node) => node.state);
  }

  async function waitSynced(timeoutMs = 60_000): Promise<void> {
    let last: string[] = [];
    await eventually("both replicas synced on both nodes", async () => {
      last = await states();
      return last.length === 4 && last.every((state) => state === "synced");
    }, timeoutMs, 200).catch((error: Error) => {
      throw new Error(`not synced: ${last.join(", ")} (${error.message})`);
    });
  }

  test("fio through the primary while the cable is pulled and plugged back; replicas end identical", async () => {
    await eventually("the nodes to pair", async () => (await a.api<{ node: { link: { connected: boolean } } }>("GET", "/status")).node.link.connected, 30_000).catch((error: Error) => {
      throw new Error(`${error.message}:\n${a.logTail()}`);
    });
    const created = await a.cli(["volume", "create", "nsvol", "--size", "32M"]);
    expect(created.code).toBe(0);
    await waitSynced();

    const fio = runBounded(
      ["fio", "--name=ns", "--ioengine=nbd", `--uri=${a.nbdUri("nsvol")}`, ...verifiedWorkload({ sizeBytes: 32 * MiB, seconds: 6, iodepth: 16 }), "--output-format=json"],
      { timeoutMs: 120_000, cwd: root }, // fio leaves its verify state file in its directory
    );
    await Bun.sleep(1000); // fio writes a while before the cut, so its run spans it (time that must pass)
    pair.cut();
    // The primary notices within a link timeout (room for a loaded machine), then fio writes through it degraded.
    await eventually("the primary's replica degraded", async () => (await states())[0] === "degraded", 10 * replicaLinkTimeoutMs);
    await Bun.sleep(1000); // through the degraded primary (time that must pass)
    pair.heal();
    const { stdout, stderr, code } = await fio.done;
    expect(stderr).toBe("");
    expect(code).toBe(0);
    // It wrote and read back (verified) across the cut, not just before it.
    const job = (JSON.parse(stdout.slice(stdout.indexOf("{"))) as { jobs: { write: { io_bytes: number; runtime: number }; read: { io_bytes: number } }[] }).jobs[0]!;
    expect(job.write.runtime).toBeGreaterThanOrEqual(5000);
    expect(job.read.io_bytes).toBeGreaterThan(MiB);
    await waitSynced();

    const verify = await a.cliJson<{ mismatchCount: number; complete: boolean }>(["verify", "nsvol"]);
    expect(verify).toMatchObject({ mismatchCount: 0, complete: true });
    // A clean stop exits 0; otherwise the daemon's last log lines say why.
    expect(await a.stop(), a.logTail(30)).toBe(0);
    expect(await b.stop(), b.logTail(30)).toBe(0);
    const hash = (daemon: TestDaemon) => createHash("sha256").update(fs.readFileSync(path.join(daemon.dataDir, "volumes/nsvol.img"))).digest("hex");
    expect(hash(a)).toBe(hash(b));
  });
});
