// The install's witness step against a real file witness, through the quorum's own format and read
// (the code `tandem witness format` and `tandem witness show` run). Two paired configs name the same
// file: a accepts the link and formats, b dials and waits to see a's format. What it proves:
//  - a blank file is formatted once, for this pair's cluster and with the timings of a's [witness]
//    settings (read back by `tandem witness show`); a re-run on either node says already done;
//  - b, started first, waits for a's format and then reports it done;
//  - another cluster's witness, data at the start (an MBR signature), data only past the witness
//    area (a GPT's backup header near the end) and this pair's witness formatted with other timings
//    each fail the step with the fix, and the file is left byte for byte as it was; the fix's own
//    command (tandem witness format --force --cluster ...) makes the next run already done;
//  - a path that does not exist fails with how to create it; a paired node asked for another
//    witness than its config names is refused at the pairing step (nothing is formatted);
//  - the lab's witness (qemu-storage-daemon serving a FUSE file, where this machine has both) is
//    formatted by a and seen by b the same way; while it fails every IO (EIO), the step fails with
//    the IO error and a fix instead of pretending it is blank.
import { afterAll, describe, expect, test } from "bun:test";
import fs from "node:fs";
import os from "node:os";
import path from "node:path";
import { writePairedConfig } from "../../src/node/install/config-file.ts";
import { defaultEnvironment, type InstallReport, type InstallUi, runInstall, type StepResult } from "../../src/node/install/steps.ts";
import { defaultQuorumTiming } from "../../src/quorum/config.ts";
import { formatWitness } from "../../src/quorum/witness-io.ts";
import { fuseWitnessAvailable, labWitnessDrill, startLabWitness, stopLabWitness } from "../../src/node/lab/witness.ts";
import { runCli } from "../helpers/daemon.ts";
import { until } from "../helpers/until.ts";

const cluster = "00112233445566778899aabbccddeeff";
const otherCluster = "ffeeddccbbaa99887766554433221100";
const dir = fs.mkdtempSync(path.join(os.tmpdir(), "tandem-install-witness-"));
afterAll(() => fs.rmSync(dir, { recursive: true, force: true }));

let serial = 0;

/** A fresh witness file (or the given witness) and the two paired nodes' configs naming it (b's with `bWitness` settings). */
function pairOn(fill: (bytes: Uint8Array) => void = () => {}, bWitness: Record<string, number> = {}, given?: string): { witness: string; a: string; b: string } {
  const base = path.join(dir, `case-${++serial}`);
  fs.mkdirSync(base);
  const witness = given ?? path.join(base, "witness.img");
  if (!given) {
    const bytes = new Uint8Array(1024 * 1024);
    fill(bytes);
    fs.writeFileSync(witness, bytes);
  }
  const secret = new Uint8Array(32).fill(3);
  const node = (name: string, peer: string, connect: "dial" | "accept", existing: Record<string, unknown> | undefined) => {
    const config = path.join(base, name, "node.toml");
    writePairedConfig(config, existing, { name, dataDir: path.join(base, name, "data"), peer: { name: peer, connect, address: "127.0.0.1:7788", listen: "127.0.0.1:7789", clusterIdHex: cluster }, witnessPath: witness, secret });
    return config;
  };
  return { witness, a: node("a", "b", "accept", undefined), b: node("b", "a", "dial", Object.keys(bWitness).length > 0 ? { witness: bWitness } : undefined) };
}

function recordingUi(): InstallUi & { progressed: string[] } {
  const progressed: string[] = [];
  return { progressed, stepStarted() {}, stepFinished() {}, progress: (_id, text) => progressed.push(text), showCode() {}, attemptFailed() {} };
}

async function witnessStep(config: string, ui: InstallUi = recordingUi()): Promise<StepResult> {
  const report: InstallReport = await runInstall({ configPath: config }, ui, defaultEnvironment(), ["witness"]);
  expect(report.steps.length).toBe(1);
  return report.steps[0]!;
}

async function show(witness: string): Promise<{ cluster: string | null; formatted: boolean; superblock: { record: { timing: Record<string, number> } | null } }> {
  const result = await runCli(["witness", "show", witness, "--json"]);
  expect(result.code).toBe(0);
  return JSON.parse(result.stdout);
}

describe("the install's witness step on a file witness", () => {
  test("a formats a blank witness once for the pair; a re-run on either node is already done", async () => {
    const pair = pairOn();
    const ui = recordingUi();
    const formatted = await witnessStep(pair.a, ui);
    expect(formatted).toEqual({ id: "witness", status: "done", detail: `formatted ${pair.witness} for this pair (cluster ${cluster}): a 128 KiB witness area; it held zeros` });
    expect(ui.progressed).toEqual([`opening ${pair.witness}`, "checking it holds nothing", "writing the witness area"]);
    const seen = await show(pair.witness);
    expect(seen).toMatchObject({ cluster, formatted: true });
    expect(seen.superblock.record!.timing).toMatchObject({ heartbeatIntervalMs: defaultQuorumTiming.heartbeatIntervalMs, deadTimeoutMs: defaultQuorumTiming.deadTimeoutMs });
    const written = fs.readFileSync(pair.witness);
    for (const config of [pair.a, pair.b]) {
      expect(await witnessStep(config)).toEqual({ id: "witness", status: "already-done", detail: `${pair.witness} holds this pair's witness (formatted, no lease decided yet)` });
    }
    // Already done means untouched: the superblock (with its format time) is the one written first.
    expect(fs.readFileSync(pair.witness).equals(written)).toBe(true);
  });

  test("b, which dials, waits for a to format and then reports a's format", async () => {
    const pair = pairOn();
    const ui = recordingUi();
    const waiting = witnessStep(pair.b, ui);
    await until("b waiting for a's format", () => ui.progressed.includes(`waiting for a to format ${pair.witness}`), 10_000);
    expect((await show(pair.witness)).cluster).toBeNull();
    expect((await witnessStep(pair.a)).status).toBe("done");
    expect(await waiting).toEqual({ id: "witness", status: "done", detail: `a formatted ${pair.witness} for this pair (formatted, no lease decided yet)` });
  });

  test("another cluster's witness: failed with the fix, untouched; the fix's command makes the next run already done", async () => {
    const pair = pairOn();
    await formatWitness(pair.witness, { clusterId: Buffer.from(otherCluster, "hex"), timing: defaultQuorumTiming, force: false, nowMs: 0 });
    const before = fs.readFileSync(pair.witness);
    for (const config of [pair.a, pair.b]) {
      const result = await witnessStep(config);
      expect(result).toMatchObject({ status: "failed", detail: `${pair.witness} holds the witness of another cluster (${otherCluster})` });
      expect(result.fix).toContain(`tandem witness format --force --cluster ${cluster} ${pair.witness}`);
    }
    expect(fs.readFileSync(pair.witness).equals(before)).toBe(true);
    const fixed = await runCli(["witness", "format", "--force", "--cluster", cluster, pair.witness, "--json"]);
    expect(fixed.code).toBe(0);
    expect(JSON.parse(fixed.stdout).previously).toBe(`the witness of another cluster (${otherCluster})`);
    expect((await witnessStep(pair.a)).status).toBe("already-done");
  });

  test("data at the start or only past the witness area: failed with the fix, untouched", async () => {
    const mbr = pairOn((bytes) => bytes.set([0x55, 0xaa], 510));
    const gptBackup = pairOn((bytes) => bytes.set(Buffer.from("EFI PART"), bytes.length - 512));
    for (const pair of [mbr, gptBackup]) {
      const before = fs.readFileSync(pair.witness);
      const result = await witnessStep(pair.a);
      expect(result.status).toBe("failed");
      expect(result.fix).toContain(`tandem witness format --force --cluster ${cluster} ${pair.witness}`);
      expect(fs.readFileSync(pair.witness).equals(before)).toBe(true);
    }
    // At the start, both nodes see it without formatting; past the area, formatting's own check finds it.
    expect((await witnessStep(mbr.a)).detail).toBe(`${mbr.witness} holds data that is not a Tandem witness (superblock, copy 0: foreign: not a Tandem witness record)`);
    expect((await witnessStep(mbr.b)).detail).toStartWith(`${mbr.witness} holds data that is not a Tandem witness`);
    expect((await witnessStep(gptBackup.a)).detail).toStartWith(`${gptBackup.witness} holds data (the first non-zero byte is at offset ${1024 * 1024 - 512}); formatting it would destroy that`);
  });

  test("this pair's witness formatted with other timings than the node's [witness] settings: failed with both ways out", async () => {
    const pair = pairOn(undefined, { deadTimeoutMs: defaultQuorumTiming.deadTimeoutMs + 1000 });
    expect((await witnessStep(pair.a)).status).toBe("done");
    const result = await witnessStep(pair.b);
    expect(result).toMatchObject({ status: "failed", detail: `${pair.witness} holds this pair's witness, formatted with other timings than this node's [witness] settings (deadTimeoutMs: configured ${defaultQuorumTiming.deadTimeoutMs + 1000}, witness formatted with ${defaultQuorumTiming.deadTimeoutMs})` });
    expect(result.fix).toContain(`tandem witness show ${pair.witness}`);
  });

  test("a witness path that does not exist: failed with how to create a file witness", async () => {
    const pair = pairOn();
    fs.rmSync(pair.witness);
    const result = await witnessStep(pair.a);
    expect(result).toMatchObject({ status: "failed", detail: `${pair.witness} does not exist` });
    expect(result.fix).toContain(`truncate -s 1M ${pair.witness}`);
  });

  test("a paired node asked for another witness than its config's: the pairing step refuses instead of formatting the old one", async () => {
    const pair = pairOn();
    const other = path.join(path.dirname(pair.witness), "other.img");
    fs.writeFileSync(other, new Uint8Array(1024 * 1024));
    const report = await runInstall({ configPath: pair.a, witness: other }, recordingUi(), defaultEnvironment(), ["pairing", "witness"]);
    expect(report.steps[0]).toMatchObject({ id: "pairing", status: "failed", detail: `this node is already paired with the witness ${pair.witness}, not ${other}` });
    expect(report.steps[0]!.fix).toContain("[witness]");
    expect(report.steps[1]).toMatchObject({ id: "witness", status: "skipped" });
    expect((await show(pair.witness)).cluster).toBeNull();
    // The same path, named again: already done.
    expect((await runInstall({ configPath: pair.a, witness: pair.witness }, recordingUi(), defaultEnvironment(), ["pairing"])).steps[0]!.status).toBe("already-done");
  });

  test.skipIf(!fuseWitnessAvailable())("the lab's FUSE witness: a formats, b sees it; a witness failing every IO fails the step with the fix", async () => {
    const labDir = path.join(dir, "lab");
    fs.mkdirSync(labDir);
    try {
      expect((await startLabWitness(labDir)).mode).toBe("fuse");
      const pair = pairOn(undefined, {}, path.join(labDir, "witness.img"));
      expect((await witnessStep(pair.a)).status).toBe("done");
      expect((await witnessStep(pair.b)).status).toBe("already-done");
      expect(await show(pair.witness)).toMatchObject({ cluster, formatted: true });
      await labWitnessDrill(labDir, "fail");
      const failing = await witnessStep(pair.b);
      expect(failing).toMatchObject({ status: "failed", detail: expect.stringContaining(`witness ${pair.witness}: `) });
      expect(failing.fix).toContain(`tandem witness show ${pair.witness}`);
      await labWitnessDrill(labDir, "heal");
      expect((await witnessStep(pair.b)).status).toBe("already-done");
    } finally {
      await stopLabWitness(labDir);
    }
  }, 60_000);
});
