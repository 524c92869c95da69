// The install preflight (src/node/install/preflight.ts): verdicts from plain facts for each check
// (witness reachable, big enough, named by id, the same device on both nodes; watchdog; free disks;
// link round trip and MTU; clock synchronisation and skew), then the gatherer on this machine with
// fixtures: a witness file behind a by-id link in a fake /dev, a fake /sys/block with a free, a
// partitioned and a mounted disk, and a TCP listener on loopback standing in for the peer's port.
import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import fs from "node:fs";
import net from "node:net";
import os from "node:os";
import path from "node:path";
import { assessPreflight, gatherFacts, type PreflightCheck, type PreflightFacts, preflightPassed } from "../../src/node/install/preflight.ts";

const good: PreflightFacts = {
  witness: { path: "/dev/disk/by-id/wwn-0x5000c500a1b2c3d4", reachable: true, kind: "block-device", sizeBytes: 64 << 20, byId: "wwn-0x5000c500a1b2c3d4" },
  peerWitnessId: "wwn-0x5000c500a1b2c3d4",
  watchdogs: ["/dev/watchdog0"],
  disks: [{ name: "nvme1n1", sizeBytes: 960e9, partitions: 0, mounted: false, holders: 0 }],
  linkRttMs: [0.12, 0.1, 0.2],
  linkMtuBytes: 9000,
  linkInterface: "enp1s0f1",
  clockSynchronised: true,
  clockOffsetMs: 40,
};
const verdict = (facts: Partial<PreflightFacts>, id: PreflightCheck["id"]) => assessPreflight({ ...good, ...facts }).find((check) => check.id === id)!;

describe("preflight verdicts", () => {
  test("a well-built box passes every check", () => {
    const checks = assessPreflight(good);
    expect(checks.map((check) => [check.id, check.status])).toEqual([
      ["witness", "ok"],
      ["witness-same", "ok"],
      ["watchdog", "ok"],
      ["disks", "ok"],
      ["link-rtt", "ok"],
      ["link-mtu", "ok"],
      ["clock-sync", "ok"],
      ["clock-skew", "ok"],
    ]);
    expect(preflightPassed(checks)).toBe(true);
  });

  test("the witness: missing, unreachable, too small, not named by id, another device on the peer", () => {
    expect(verdict({ witness: null }, "witness").status).toBe("fail");
    expect(verdict({ witness: { ...good.witness!, reachable: false, error: "EBUSY" } }, "witness")).toMatchObject({ status: "fail", detail: expect.stringContaining("EBUSY") });
    expect(verdict({ witness: { ...good.witness!, sizeBytes: 4096 } }, "witness").status).toBe("fail");
    expect(verdict({ witness: { ...good.witness!, path: "/dev/sdb", byId: null } }, "witness")).toMatchObject({ status: "warn", fix: "name it by its /dev/disk/by-id path" });
    expect(verdict({ peerWitnessId: "wwn-0x5000c500ffffffff" }, "witness-same").status).toBe("fail");
    expect(verdict({ peerWitnessId: null }, "witness-same").status).toBe("skip");
    expect(preflightPassed(assessPreflight({ ...good, peerWitnessId: "other" }))).toBe(false);
  });

  test("no watchdog or free disk warns; a slow or dead link fails; a small MTU warns", () => {
    expect(verdict({ watchdogs: [] }, "watchdog").status).toBe("warn");
    expect(verdict({ disks: [{ name: "sda", sizeBytes: 1e12, partitions: 3, mounted: true, holders: 0 }] }, "disks").status).toBe("warn");
    expect(verdict({ linkRttMs: [2.5, 3, 2] }, "link-rtt")).toMatchObject({ status: "warn", detail: "round trip 2.00 ms (best of 3)" });
    // A busy machine delays some probes (the measuring process waits for a CPU): that is not the link.
    expect(verdict({ linkRttMs: [0.2, 7.5, 6.1, 0.3, 9] }, "link-rtt")).toMatchObject({ status: "ok", detail: "round trip 0.20 ms (best of 5)" });
    expect(verdict({ linkRttMs: [9, 12, 10] }, "link-rtt").status).toBe("fail");
    expect(verdict({ linkRttMs: [], linkError: "ECONNREFUSED" }, "link-rtt")).toMatchObject({ status: "fail", detail: expect.stringContaining("ECONNREFUSED") });
    expect(verdict({ linkMtuBytes: 1400 }, "link-mtu").status).toBe("warn");
  });

  test("clocks: unsynchronised warns, wildly apart fails, unknown before pairing is skipped", () => {
    expect(verdict({ clockSynchronised: false }, "clock-sync").status).toBe("warn");
    expect(verdict({ clockOffsetMs: -65_000 }, "clock-skew")).toMatchObject({ status: "fail", detail: "the clocks are -65.0 s apart" });
    expect(verdict({ clockOffsetMs: null }, "clock-skew").status).toBe("skip");
  });
});

describe("gathering facts on this machine", () => {
  let dir: string;
  let listener: net.Server;
  let port: number;

  beforeAll(async () => {
    dir = fs.mkdtempSync(path.join(os.tmpdir(), "tandem-preflight-"));
    fs.mkdirSync(path.join(dir, "dev/disk/by-id"), { recursive: true });
    fs.writeFileSync(path.join(dir, "witness.img"), new Uint8Array(2 << 20));
    fs.symlinkSync(path.join(dir, "witness.img"), path.join(dir, "dev/disk/by-id/test-witness"));
    fs.writeFileSync(path.join(dir, "dev/watchdog0"), "");
    for (const [name, parts] of [["sdf", []], ["sdg", ["sdg1"]], ["sdh", []], ["loop0", []]] as const) {
      fs.mkdirSync(path.join(dir, "sys/block", name, "holders"), { recursive: true });
      fs.writeFileSync(path.join(dir, "sys/block", name, "size"), "2048\n");
      for (const part of parts) fs.mkdirSync(path.join(dir, "sys/block", name, part));
    }
    fs.writeFileSync(path.join(dir, "mounts"), "/dev/sdh /srv ext4 rw 0 0\nproc /proc proc rw 0 0\n");
    listener = net.createServer((socket) => socket.destroy());
    await new Promise<void>((resolve) => listener.listen(0, "127.0.0.1", resolve));
    port = (listener.address() as net.AddressInfo).port;
  });
  afterAll(() => {
    listener.close();
    fs.rmSync(dir, { recursive: true, force: true });
  });

  test("the witness by its id, the watchdog, the free disk, the round trip to a listening port", async () => {
    const facts = await gatherFacts({ witnessPath: path.join(dir, "witness.img"), peer: { host: "127.0.0.1", port }, devDir: path.join(dir, "dev"), sysBlockDir: path.join(dir, "sys/block"), mountsFile: path.join(dir, "mounts") });
    expect(facts.witness).toMatchObject({ reachable: true, kind: "file", sizeBytes: 2 << 20, byId: "test-witness" });
    expect(facts.watchdogs).toEqual([path.join(dir, "dev/watchdog0")]);
    expect(facts.disks.map((disk) => [disk.name, disk.partitions, disk.mounted])).toEqual(
      expect.arrayContaining([
        ["sdf", 0, false],
        ["sdg", 1, false],
        ["sdh", 0, true],
      ]),
    );
    expect(facts.disks.some((disk) => disk.name === "loop0")).toBe(false);
    expect(facts.linkRttMs.length).toBe(5);
    expect(facts.linkInterface).toBe("lo");
    const checks = assessPreflight(facts);
    expect(checks.find((check) => check.id === "disks")!.detail).toBe("free disks: sdf (0 GB)");
    expect(checks.find((check) => check.id === "witness")!.status).toBe("ok");
  });

  test("a closed port fails the link check with the reason", async () => {
    const closed = net.createServer();
    await new Promise<void>((resolve) => closed.listen(0, "127.0.0.1", resolve));
    const closedPort = (closed.address() as net.AddressInfo).port;
    await new Promise<void>((resolve) => closed.close(() => resolve()));
    const facts = await gatherFacts({ witnessPath: null, peer: { host: "127.0.0.1", port: closedPort }, devDir: path.join(dir, "dev"), sysBlockDir: path.join(dir, "sys/block"), mountsFile: path.join(dir, "mounts") });
    expect(assessPreflight(facts).find((check) => check.id === "link-rtt")).toMatchObject({ status: "fail", detail: expect.stringContaining("ECONNREFUSED") });
  });
});
