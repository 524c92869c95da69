// The gate's quorum hold (src/node/block/gate.ts): while the quorum forbids IO, a volume with
// onFreeze suspend makes requests wait (they complete once released), with onFreeze error fails
// them with EIO at once; the hold is separate from a copy-out's freeze (thawing one does not lift
// the other); and the quorum catches up with the clock before each request (beforeRequest), so a
// hold it places then stops that very request.
import { describe, expect, test } from "bun:test";
import { BlockError } from "../../src/common/errors.ts";
import { GateLayer } from "../../src/node/block/gate.ts";
import { MemoryLayer } from "../../src/node/block/memory.ts";
import { until } from "../helpers/until.ts";

const block = (byte: number) => new Uint8Array(4096).fill(byte);

function gate() {
  const memory = new MemoryLayer(1 << 20);
  return { memory, gate: new GateLayer(memory, () => 0) };
}

async function read(layer: { read(offset: number, target: Uint8Array): Promise<void> }): Promise<number> {
  const target = new Uint8Array(4096);
  await layer.read(0, target);
  return target[0]!;
}

describe("quorum hold", () => {
  test("suspend: a write waits while held and lands once released", async () => {
    const { memory, gate: g } = gate();
    g.holdForQuorum("link lost: deciding", "suspend");
    let done = false;
    const write = g.write(0, block(7)).then(() => (done = true));
    await Bun.sleep(0);
    expect(done).toBe(false);
    expect(await read(memory)).toBe(0);
    g.releaseQuorumHold();
    await write;
    expect(await read(memory)).toBe(7);
  });

  test("error: requests fail with EIO at once, including those already waiting; nothing reaches the disk", async () => {
    const { memory, gate: g } = gate();
    g.holdForQuorum("deciding", "suspend");
    const waiting = g.write(0, block(9));
    g.holdForQuorum("no quorum", "error");
    await expect(waiting).rejects.toMatchObject({ code: "EIO" });
    const error = await g.write(0, block(9)).catch((caught: BlockError) => caught);
    expect(error).toBeInstanceOf(BlockError);
    expect((error as BlockError).message).toContain("no quorum");
    expect(await read(memory)).toBe(0);
  });

  test("a copy-out's thaw does not lift the quorum's hold", async () => {
    const { memory, gate: g } = gate();
    g.freeze("copy-out point");
    g.holdForQuorum("outdated", "suspend");
    let done = false;
    const write = g.write(0, block(3)).then(() => (done = true));
    g.thaw();
    await Bun.sleep(0);
    expect(done).toBe(false);
    g.releaseQuorumHold();
    await until("the write lands", () => done);
    await write;
    expect(await read(memory)).toBe(3);
  });

  test("beforeRequest runs first: a hold it places stops the request it runs for", async () => {
    const { memory, gate: g } = gate();
    g.beforeRequest = () => g.holdForQuorum("the lease ran out while this process was stopped", "error");
    await expect(g.write(0, block(5))).rejects.toMatchObject({ code: "EIO" });
    expect(await read(memory)).toBe(0);
  });
});
