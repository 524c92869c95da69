// `tandem witness format` and `tandem witness show` in-process on real files: format writes a
// witness the codec reads back; it refuses zeros-only-or-nothing violations (this cluster's witness,
// another cluster's, data at the start or at the end) unless --force, with the documented exit codes;
// show marks torn and foreign copies; without --cluster, format takes the cluster and timings from
// the daemon (a control API stub here; the real daemon in test/integration/witness-lab.test.ts).
import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import fs from "node:fs";
import os from "node:os";
import path from "node:path";
import { silentLogger } from "../../src/common/log.ts";
import { witnessRecordBytes } from "../../src/constants.ts";
import { type ControlServer, startControlServer } from "../../src/node/control/server.ts";
import { defaultQuorumTiming } from "../../src/quorum/config.ts";
import { decodeWitness, parseClusterId, witnessLayout } from "../../src/quorum/format.ts";
import { runInProcess as run } from "../helpers/cli-in-process.ts";

const cluster = "00112233445566778899aabbccddeeff";
const other = "ffeeddccbbaa99887766554433221100";
const dir = fs.mkdtempSync(path.join(os.tmpdir(), "tandem-witness-cli-"));
afterAll(() => fs.rmSync(dir, { recursive: true, force: true }));

let counter = 0;
function file(size = 1024 * 1024): string {
  const name = path.join(dir, `w${++counter}.img`);
  fs.writeFileSync(name, new Uint8Array(size));
  return name;
}

describe("witness format", () => {
  test("formats a zeroed file; the codec reads the superblock back", async () => {
    const target = file();
    const result = await run(["witness", "format", target, "--cluster", cluster, "--json"]);
    expect(result.code).toBe(0);
    expect(JSON.parse(result.stdout)).toMatchObject({ path: target, cluster, sizeBytes: 1024 * 1024, blockDevice: false, areaBytes: 128 * 1024, previously: "zeros", timing: defaultQuorumTiming });
    const state = decodeWitness(fs.readFileSync(target).subarray(0, witnessLayout.sectors * witnessRecordBytes), parseClusterId(cluster));
    expect(state.superblock.copies.map((copy) => copy.state)).toEqual(["valid", "valid"]);
    expect(state.superblock.newest?.record.timing.deadTimeoutMs).toBe(5000);
  });

  test("refuses this cluster's witness, another cluster's, and data at the start or the end (exit 5), unless --force", async () => {
    const target = file();
    expect((await run(["witness", "format", target, "--cluster", cluster])).code).toBe(0);
    const again = await run(["witness", "format", target, "--cluster", cluster]);
    expect(again.code).toBe(5);
    expect(again.stderr).toContain("holds this cluster's witness; formatting it would destroy that");
    const foreign = await run(["witness", "format", target, "--cluster", other, "--json"]);
    expect(foreign.code).toBe(5);
    expect(JSON.parse(foreign.stdout).error).toMatchObject({ code: "already_exists" });
    expect(JSON.parse(foreign.stdout).error.message).toContain(`holds the witness of another cluster (${cluster})`);

    const data = file();
    const bytes = fs.readFileSync(data);
    bytes[1024 * 1024 - 100] = 0x53; // a backup GPT or a filesystem's tail
    fs.writeFileSync(data, bytes);
    const tail = await run(["witness", "format", data, "--cluster", cluster]);
    expect(tail.code).toBe(5);
    expect(tail.stderr).toContain(`holds data (the first non-zero byte is at offset ${1024 * 1024 - 100})`);
    const forced = await run(["witness", "format", data, "--cluster", cluster, "--force", "--json"]);
    expect(forced.code).toBe(0);
    expect(JSON.parse(forced.stdout).previously).toContain("data (the first non-zero byte is at offset");
  });

  test("a path too small, a path that does not exist, a malformed cluster id", async () => {
    const small = file(64 * 1024);
    const tooSmall = await run(["witness", "format", small, "--cluster", cluster]);
    expect(tooSmall.code).toBe(2);
    expect(tooSmall.stderr).toContain("holds 65536 bytes; a witness needs at least 128 KiB");
    const missing = await run(["witness", "format", path.join(dir, "nope.img"), "--cluster", cluster]);
    expect(missing.code).toBe(4);
    expect(missing.stderr).toContain("does not exist");
    const bad = await run(["witness", "format", file(), "--cluster", "xyz"]);
    expect(bad.code).toBe(2);
    expect(bad.stderr).toContain('--cluster: a cluster id is 32 lowercase hex digits, not "xyz"');
  });

  describe("without --cluster", () => {
    let server: ControlServer;
    const socket = path.join(dir, "control.sock");
    beforeAll(async () => {
      server = await startControlServer({
        socketPath: socket,
        log: silentLogger,
        routes: [{ method: "GET", path: "/witness/identity", handler: () => ({ clusterId: other, timing: { ...defaultQuorumTiming, deadTimeoutMs: 8000 } }) }],
      });
    });
    afterAll(() => server.stop());

    test("takes the cluster and the timings from the daemon", async () => {
      const target = file();
      const result = await run(["witness", "format", target, "--socket", socket, "--json"]);
      expect(result.code).toBe(0);
      expect(JSON.parse(result.stdout)).toMatchObject({ cluster: other, timing: { deadTimeoutMs: 8000 } });
    });

    test("says how to name the cluster when no daemon answers", async () => {
      const result = await run(["witness", "format", file(), "--socket", path.join(dir, "none.sock")]);
      expect(result.code).toBe(2);
      expect(result.stderr).toContain("name the cluster with --cluster ID");
    });
  });
});

describe("witness show", () => {
  test("decodes every record and marks a torn copy and a foreign one", async () => {
    const target = file();
    expect((await run(["witness", "format", target, "--cluster", cluster])).code).toBe(0);
    const bytes = fs.readFileSync(target);
    // The second superblock copy torn (its record half rewritten), the first decided copy of node 1 someone else's data.
    bytes.fill(0x11, witnessRecordBytes + 50, witnessRecordBytes + 60);
    bytes.fill(0x77, witnessLayout.decided(1) * witnessRecordBytes, witnessLayout.decided(1) * witnessRecordBytes + 100);
    fs.writeFileSync(target, bytes);
    const result = await run(["witness", "show", target, "--json"]);
    expect(result.code).toBe(0);
    const view = JSON.parse(result.stdout);
    expect(view).toMatchObject({ path: target, cluster, formatted: true, decided: null });
    expect(view.superblock.copies.map((copy: { state: string }) => copy.state)).toEqual(["valid", "torn"]);
    expect(view.nodes[1].decided.copies[0]).toMatchObject({ state: "foreign", why: "not a Tandem witness record" });
    expect(view.problems).toEqual([
      "superblock, copy 1: torn: checksum mismatch (a write was interrupted or the medium decayed)",
      "decided record of node 1, copy 0: foreign: not a Tandem witness record",
    ]);
    const text = await run(["witness", "show", target]);
    expect(text.stdout).toContain(`cluster ${cluster}`);
    expect(text.stdout).toContain("! superblock, copy 1: torn");
  });

  test("a path that holds no witness says so; decoded as another cluster nothing is trusted", async () => {
    const zeros = file();
    const plain = await run(["witness", "show", zeros]);
    expect(plain.code).toBe(0);
    expect(plain.stdout).toContain("not a Tandem witness (no superblock)");
    const target = file();
    expect((await run(["witness", "format", target, "--cluster", cluster])).code).toBe(0);
    const view = JSON.parse((await run(["witness", "show", target, "--cluster", other, "--json"])).stdout);
    expect(view.formatted).toBe(false);
    expect(view.superblock.copies[0]).toEqual({ copy: 0, state: "foreign", sequence: null, why: `cluster ${cluster}` });
  });
});
