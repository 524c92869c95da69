// `tandem status` as a monitoring script uses it, against real daemons: the --json report matches
// docs/status.schema.json (standalone and paired, healthy and degraded), and the exit status alone
// tells healthy (0) from degraded (6) without parsing. The paired case is the two-node lab, cut
// and healed through its relay; waits poll the CLI with deadlines.
import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import type { StatusReport } from "../../src/node/control/status.ts";
import { TestDaemon } from "../helpers/daemon.ts";
import { labCli, createLab, type TestLab, waitLabSynced } from "../helpers/lab.ts";
import { assertStatusSchema } from "../helpers/status-schema.ts";
import { eventually } from "../helpers/until.ts";

async function statusOf(run: () => Promise<{ code: number; stdout: string }>): Promise<{ code: number; report: StatusReport }> {
  const result = await run();
  return { code: result.code, report: JSON.parse(result.stdout) as StatusReport };
}

describe("status contract: a standalone daemon", () => {
  let daemon: TestDaemon;
  beforeAll(async () => {
    daemon = await TestDaemon.start();
    expect((await daemon.cli(["volume", "create", "vm1", "--size", "8M"])).code).toBe(0);
  });
  afterAll(() => daemon.cleanup());

  test("the report matches the schema, says healthy and every volume writable; exit 0", async () => {
    const { code, report } = await statusOf(() => daemon.cli(["status", "--json"]));
    assertStatusSchema(report);
    expect(code).toBe(0);
    expect(report.schemaVersion).toBe(1);
    expect(report.health).toEqual({ state: "healthy", reasons: [] });
    expect(report.quorum).toEqual({ state: "not-configured" });
    expect(report.node.link).toBeNull();
    expect(report.volumes.map((volume) => [volume.name, volume.access])).toEqual([["vm1", { write: true, reason: null, next: null }]]);
    const text = await daemon.cli(["status"]);
    expect(text.code).toBe(0);
    expect(text.stdout.split("\n")[0]).toEndWith(": HEALTHY");
    expect(text.stdout.split("\n").find((line) => line.startsWith("vm1 "))).toEndWith("  yes");
  });
});

describe("status contract: the two-node lab", () => {
  let testLab: TestLab;
  let dir: string;
  const lab = (args: string[]) => testLab.lab(args);
  beforeAll(async () => {
    testLab = createLab("tandem-status-");
    dir = testLab.dir;
    await testLab.up();
  });
  afterAll(() => testLab?.stop());

  test("synced: both reports match the schema and are healthy; the secondary says it cannot write and where to go", async () => {
    const a = await statusOf(() => labCli(dir, ["status", "--json"], "a"));
    const b = await statusOf(() => labCli(dir, ["status", "--json"], "b"));
    assertStatusSchema(a.report);
    assertStatusSchema(b.report);
    expect([a.code, b.code]).toEqual([0, 0]);
    expect(a.report.node.link?.connected).toBe(true);
    expect(b.report.volumes[0]!.access).toEqual({ write: false, reason: "secondary replica (synced); a is the primary", next: "serve it from a" });
    // The round trip is measured in the background once the link is up.
    const rtt = await eventually("a measured round trip", async () => (await statusOf(() => labCli(dir, ["status", "--json"], "a"))).report.node.link?.rttMs ?? undefined, 15_000);
    expect(rtt).toBeGreaterThan(0);
  });

  test("link cut: exit 6 and a degraded report that matches the schema; healed: exit 0 again", async () => {
    expect((await lab(["cut"])).code).toBe(0);
    const cut = await eventually(
      "a to see the link down",
      async () => {
        const seen = await statusOf(() => labCli(dir, ["status", "--json"], "a"));
        return !seen.report.node.link?.connected && seen;
      },
      30_000,
    );
    assertStatusSchema(cut.report);
    expect(cut.code).toBe(6);
    expect(cut.report.health.state).toBe("degraded");
    expect(cut.report.health.reasons[0]).toMatch(/^replication link to b is (down|connecting)$/);
    expect(cut.report.volumes[0]!.access.write).toBe(true);
    expect(cut.report.node.link?.rttMs).toBeNull();
    const text = await labCli(dir, ["status"], "a");
    expect(text.code).toBe(6);
    expect(text.stdout.split("\n").find((line) => line.startsWith("demo "))).toContain("yes, but peer b unreachable: writes are not mirrored");

    expect((await lab(["heal"])).code).toBe(0);
    await waitLabSynced(dir, "demo", 60_000);
    expect((await labCli(dir, ["status"], "a")).code).toBe(0);
  });
});
