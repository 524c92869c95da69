// Creating and deleting mirrored volumes in the two-node lab is atomic across the pair, through the
// CLI an operator uses: a delete while the link is down is refused unless forced, and a forced one
// is listed as pending on the peer (with what happens next) until the link is back, when the peer's
// replica goes by itself; a volume only one node holds (a leftover from an older version or a lost
// state database) is listed with the command that removes it, and `delete --force` on either node
// removes it; the two nodes creating at the same moment never pick the same id, and a leftover never
// blocks a later create; importing a backing that already holds data gives the peer a full copy.
import { Database } from "bun:sqlite";
import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import { createHash } from "node:crypto";
import fs from "node:fs";
import os from "node:os";
import path from "node:path";
import { runCli } from "../helpers/daemon.ts";
import { labCli, labHoldings, labVolume, waitLabSettled, waitLabSynced } from "../helpers/lab.ts";
import { eventually } from "../helpers/until.ts";

const MiB = 1024 * 1024;
let dir: string;

const cli = (args: string[], node = "a") => labCli(dir, args, node);
const lab = (args: string[]) => runCli(["lab", ...args, "--dir", dir], { timeoutMs: 90_000 });
const json = async <T>(args: string[], node = "a"): Promise<T> => {
  const result = await cli([...args, "--json"], node);
  if (result.code !== 0) throw new Error(`tandem ${args.join(" ")} on ${node} exited ${result.code}: ${result.stdout}${result.stderr}`);
  return JSON.parse(result.stdout) as T;
};
const sha256 = (file: string) => createHash("sha256").update(fs.readFileSync(file)).digest("hex");

/** Remove a volume's record from a stopped node's state database: what an older version's leftover looks like. */
function forgetVolume(node: string, volume: string): void {
  const db = new Database(path.join(dir, node, "data", "state.db"));
  db.run("DELETE FROM volumes WHERE name = ?", [volume]);
  db.close();
}

describe("mirrored create and delete across the pair", () => {
  beforeAll(async () => {
    dir = fs.mkdtempSync(path.join(os.tmpdir(), "tandem-lifecycle-"));
    const up = await lab(["up", "--json"]);
    if (up.code !== 0) throw new Error(`lab up failed: ${up.stdout}${up.stderr}`);
    await waitLabSettled(dir);
  });

  afterAll(async () => {
    await lab(["down"]);
    fs.rmSync(dir, { recursive: true, force: true });
  });

  test("a delete while the link is down: refused unless forced, then pending on the peer until the link is back", async () => {
    await json(["volume", "create", "cut1", "--size", "4M"]);
    expect((await lab(["cut"])).code).toBe(0);

    const refused = await cli(["volume", "delete", "cut1"]);
    expect(refused.code).toBe(3);
    expect(refused.stderr).toBe("tandem: peer b is not connected; a mirrored volume is deleted on both nodes at once. Pass --force to delete it here now and on b when it is reachable\n");
    expect((await labHoldings(dir, "a"))!.volumes.has("cut1")).toBe(true);

    const forced = await json<{ deleted: string; peer: string }>(["volume", "delete", "cut1", "--force"]);
    expect(forced).toEqual({ deleted: "cut1", peer: "pending" });
    const listed = await json<{ volumes: { name: string }[]; pending: { volume: string; state: string; node: string; next: string }[] }>(["volume", "list"]);
    expect(listed.volumes.map((volume) => volume.name)).not.toContain("cut1");
    expect(listed.pending).toMatchObject([{ volume: "cut1", state: "delete-pending", node: "b", next: "deleted here; b's replica is removed when b is reachable again. Nothing else to do" }]);
    const text = await cli(["volume", "list"]);
    expect(text.stdout).toMatch(/^! cut1 \(id \d+\): delete pending on b for \d+s: deleted here; b's replica is removed when b is reachable again\. Nothing else to do$/m);
    expect((await cli(["status"])).stdout).toMatch(/^! cut1 \(id \d+\): delete pending on b/m);
    expect((await labHoldings(dir, "b"))!.volumes.has("cut1")).toBe(true); // b has not heard yet

    expect((await lab(["heal"])).code).toBe(0);
    const settled = await waitLabSettled(dir);
    expect(settled.has("cut1")).toBe(false);
    expect(fs.existsSync(path.join(dir, "b", "data", "volumes", "cut1.img"))).toBe(false);
    const events = await json<{ events: { kind: string; volume: string | null }[] }>(["events"]);
    expect(events.events.filter((event) => event.volume === "cut1").map((event) => event.kind)).toEqual(["volume-created", "volume-mirrored", "volume-deleted", "volume-delete-pending", "volume-delete-completed"]);
    // The name and the pair are free again.
    await json(["volume", "create", "cut1", "--size", "4M"]);
    expect((await waitLabSettled(dir)).has("cut1")).toBe(true);
    await json(["volume", "delete", "cut1"]);
  });

  test("a volume only one node holds is listed with the next action and removed by --force from either node; it never blocks a create", async () => {
    await json(["volume", "create", "left1", "--size", "4M"]);
    await json(["volume", "create", "left2", "--size", "4M"]);
    const ids = await waitLabSettled(dir);
    // a loses its record of left1 (b keeps the only replica); b loses its record of left2.
    expect((await lab(["kill", "a"])).code).toBe(0);
    forgetVolume("a", "left1");
    expect((await lab(["start", "a"])).code).toBe(0);
    expect((await lab(["kill", "b"])).code).toBe(0);
    forgetVolume("b", "left2");
    expect((await lab(["start", "b"])).code).toBe(0);

    const pendingA = await eventually(
      "a to list both volumes left on one node",
      async () => {
        const pending = (await labHoldings(dir, "a"))?.pending ?? [];
        return pending.length >= 2 && pending;
      },
      30_000,
    );
    expect(pendingA).toEqual([
      { volume: "left2", id: ids.get("left2"), state: "only-here", node: "a", sinceMs: null, next: "b has no replica of it: `tandem volume delete left2 --force` removes it here" },
      { volume: "left1", id: ids.get("left1"), state: "only-on-peer", node: "b", sinceMs: null, next: "only b holds it: `tandem volume delete left1 --force` (on either node) removes it there" },
    ] as never);

    // Creating while the leftovers exist works: ids come from each node's own share, never reused.
    const fresh = await json<{ id: number }>(["volume", "create", "fresh", "--size", "4M"]);
    expect([...ids.values()]).not.toContain(fresh.id);

    const unforced = await cli(["volume", "delete", "left1"]);
    expect(unforced.code).toBe(1);
    expect(unforced.stderr).toBe("tandem: volume left1 exists only on b (a leftover); tandem volume delete left1 --force removes it there\n");
    expect(await json(["volume", "delete", "left1", "--force"])).toEqual({ deleted: "left1", peer: "deleted" });
    // left2 lives on a only: removed from a, and b (which has nothing) agrees.
    expect(await json(["volume", "delete", "left2", "--force"], "a")).toEqual({ deleted: "left2", peer: "deleted" });
    await json(["volume", "delete", "fresh"]);
    const settled = await waitLabSettled(dir);
    expect([...settled.keys()]).toEqual(["demo"]);
  });

  test("both nodes creating at the same moment never pick the same id; both end with every volume", async () => {
    const rounds = 4;
    const results = await Promise.all(
      Array.from({ length: rounds }, (_, round) => [
        json<{ name: string; id: number }>(["volume", "create", `ca${round}`, "--size", "4M"], "a"),
        json<{ name: string; id: number }>(["volume", "create", `cb${round}`, "--size", "4M"], "b"),
      ]).flat(),
    );
    const ids = results.map((result) => result.id);
    expect(new Set(ids).size).toBe(ids.length);
    expect(results.filter((result) => result.name.startsWith("ca")).every((result) => result.id % 2 === 1)).toBe(true); // a's share
    expect(results.filter((result) => result.name.startsWith("cb")).every((result) => result.id % 2 === 0)).toBe(true); // b's share
    const settled = await waitLabSettled(dir);
    for (const result of results) expect(settled.get(result.name)).toBe(result.id);
    for (const result of results) await json(["volume", "delete", result.name], result.name.startsWith("ca") ? "a" : "b");
    expect([...(await waitLabSettled(dir)).keys()]).toEqual(["demo"]);
  });

  test("importing a backing that already holds data copies all of it to the peer", async () => {
    const image = path.join(dir, "import.img");
    fs.writeFileSync(image, crypto.getRandomValues(new Uint8Array(65536)));
    fs.appendFileSync(image, new Uint8Array(8 * MiB - 65536).fill(0x5a));
    await json(["volume", "create", "imported", "--backing", image]);
    await waitLabSynced(dir, "imported", 60_000);
    const replicaB = (await labVolume(dir, "imported", "b"))!.nodes.find((node) => node.node === "b")!.backing;
    expect(sha256(replicaB)).toBe(sha256(image));
    const verify = await cli(["verify", "imported", "--json"]);
    expect((JSON.parse(verify.stdout) as { mismatchCount: number }).mismatchCount).toBe(0);
    await json(["volume", "delete", "imported"]);
    expect(fs.existsSync(image)).toBe(true); // the operator's file stays
  });
});
