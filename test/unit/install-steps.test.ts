// The install's pieces that need no peer: the service step's verdicts from plain facts (no systemd,
// unit missing, unit running another config, already enabled and active, a running daemon restarted
// when the config changed), the unit's config read from `systemctl cat`, the config written over the
// packaged default (its sockets kept, [peer] and [witness] added, TOML the daemon loads, the secret
// 0600), addresses with and without a port, and node names made from host names.
import { afterAll, describe, expect, test } from "bun:test";
import fs from "node:fs";
import os from "node:os";
import path from "node:path";
import { parseAddress } from "../../src/cli/commands/install.ts";
import { daemonEnvironment } from "../../src/constants.ts";
import { loadNodeConfig } from "../../src/node/config.ts";
import { pairedDocument, readExistingConfig, renderConfigToml, writePairedConfig } from "../../src/node/install/config-file.ts";
import { planService, type ServiceFacts, unitConfigPath } from "../../src/node/install/service.ts";
import { nodeNameFromHost } from "../../src/node/install/steps.ts";
import { repositoryRoot } from "../helpers/daemon.ts";

const facts: ServiceFacts = { systemctl: "/usr/bin/systemctl", initName: "systemd", unitConfig: "/etc/tandem/node.toml", unitError: undefined, enabled: false, active: false };
const config = "/etc/tandem/node.toml";

describe("the service step's plan", () => {
  test("no systemd: skipped, with the way to run the daemon", () => {
    expect(planService({ ...facts, systemctl: null, initName: "process_api" }, config, true)).toEqual({ kind: "skip", reason: "systemd does not run this machine (PID 1 is process_api)", fix: "run the daemon under your own supervisor: tandem node run --config /etc/tandem/node.toml" });
  });
  test("the unit missing, or running another config: failed with the fix", () => {
    expect(planService({ ...facts, unitConfig: null, unitError: "No files found for tandem.service." }, config, true)).toMatchObject({ kind: "fail", reason: "the tandem.service unit is not installed (No files found for tandem.service.)" });
    expect(planService(facts, "/srv/tandem/node.toml", true)).toMatchObject({ kind: "fail", reason: "the tandem.service unit runs /etc/tandem/node.toml, but this install wrote /srv/tandem/node.toml", fix: expect.stringContaining("--config /etc/tandem/node.toml") });
  });
  test("enable --now; a running daemon is restarted when the config changed; nothing when all is done", () => {
    expect(planService(facts, config, true)).toEqual({ kind: "run", commands: [["enable", "--now", "tandem.service"]] });
    expect(planService({ ...facts, enabled: true, active: true }, config, true)).toEqual({ kind: "run", commands: [["enable", "--now", "tandem.service"], ["restart", "tandem.service"]] });
    expect(planService({ ...facts, enabled: false, active: true }, config, false)).toEqual({ kind: "run", commands: [["enable", "--now", "tandem.service"]] });
    expect(planService({ ...facts, enabled: true, active: true }, config, false)).toEqual({ kind: "already", detail: "tandem.service is enabled and running" });
  });
  test("the unit's config, from systemctl cat (the packaged unit)", () => {
    const unit = fs.readFileSync(path.join(repositoryRoot, "packaging/tandem.service"), "utf8");
    expect(unitConfigPath(`# /lib/systemd/system/tandem.service\n${unit}`)).toBe("/etc/tandem/node.toml");
    expect(unitConfigPath("[Service]\nExecStart=/usr/bin/tandem node run --config=/srv/n.toml\n")).toBe("/srv/n.toml");
    expect(unitConfigPath("[Service]\nExecStart=/usr/bin/tandem node run\n")).toBeNull();
  });
  test("the packaged unit gives the daemon the environment the lab and the benchmarks give it", () => {
    const unit = fs.readFileSync(path.join(repositoryRoot, "packaging/tandem.service"), "utf8");
    const set = Object.fromEntries([...unit.matchAll(/^Environment=([A-Z_]+)=(.*)$/gm)].map((match) => [match[1]!, match[2]!]));
    expect(Object.keys(daemonEnvironment).length).toBeGreaterThan(0);
    for (const [name, value] of Object.entries(daemonEnvironment)) expect({ name, value: set[name] }).toEqual({ name, value });
  });
});

describe("the config the install writes", () => {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), "tandem-install-config-"));
  afterAll(() => fs.rmSync(dir, { recursive: true, force: true }));
  const peer = { name: "b", connect: "accept" as const, address: "10.99.0.2:7788", listen: "10.99.0.1:7788", clusterIdHex: "00112233445566778899aabbccddeeff" };

  test("over the packaged default: its sockets are kept, [peer] and [witness] added, the daemon loads it", () => {
    const file = path.join(dir, "node.toml");
    fs.copyFileSync(path.join(repositoryRoot, "packaging/node.toml"), file);
    const existing = readExistingConfig(file);
    expect(existing.config?.name).toBe("node1");
    const secret = new Uint8Array(32).fill(7);
    const loaded = writePairedConfig(file, existing.raw, { name: "a", dataDir: path.join(dir, "data"), peer, witnessPath: "/dev/disk/by-id/wwn-0x1", secret });
    expect(loaded).toMatchObject({ name: "a", dataDir: path.join(dir, "data"), controlSocket: "/run/tandem/control.sock", nbdSocket: "/run/tandem/nbd.sock", vhostSocketDir: "/run/tandem/vhost", witnessPath: "/dev/disk/by-id/wwn-0x1" });
    expect(loaded.peer).toMatchObject({ name: "b", connect: "accept", address: { hostname: "10.99.0.2", port: 7788 }, listen: { hostname: "10.99.0.1", port: 7788 } });
    expect(Buffer.from(loaded.peer!.secret).equals(Buffer.from(secret))).toBe(true);
    expect(fs.statSync(path.join(dir, "pairing.secret")).mode & 0o777).toBe(0o600);
    expect(fs.statSync(file).mode & 0o777).toBe(0o600);
    const text = fs.readFileSync(file, "utf8");
    expect(text).toStartWith("# Tandem node configuration, written by tandem install.");
    expect(text).toContain('[peer]\nname = "b"\nconnect = "accept"');
    // No temporary file is left behind.
    expect(fs.readdirSync(dir).filter((name) => name.endsWith(".tmp"))).toEqual([]);
  });

  test("without an existing config, the packaged socket paths go with the packaged data directory", () => {
    const document = pairedDocument(undefined, { name: "a", dataDir: "/var/lib/tandem", peer, witnessPath: undefined, secret: new Uint8Array(32) }, "pairing.secret");
    expect(document).toMatchObject({ controlSocket: "/run/tandem/control.sock", nbd: { socket: "/run/tandem/nbd.sock" } });
    expect(pairedDocument(undefined, { name: "a", dataDir: "/srv/tandem", peer, witnessPath: undefined, secret: new Uint8Array(32) }, "pairing.secret").controlSocket).toBeUndefined();
  });

  test("TOML out reads back the same, quotes and all", () => {
    const document = { name: "a", dataDir: 'odd "dir" \\ name', nbd: { socket: "/run/x.sock", memoryBudget: "256M" }, log: { level: "info" }, vhost: { allowAnyPath: true } };
    expect(Bun.TOML.parse(renderConfigToml(document, ["header"]))).toEqual(document);
  });

  test("a config that the daemon would refuse is never written", () => {
    const file = path.join(dir, "bad.toml");
    expect(() => writePairedConfig(file, { nbd: { tpc: "x" } }, { name: "a", dataDir: path.join(dir, "data"), peer, witnessPath: undefined, secret: new Uint8Array(32) })).toThrow("nbd.tpc: unknown field");
    expect(fs.existsSync(file)).toBe(false);
    expect(() => loadNodeConfig(file)).toThrow();
  });
});

describe("addresses and names", () => {
  test("HOST alone gets the default replication port; IPv6 in brackets or bare", () => {
    expect(parseAddress("10.99.0.1", "--peer")).toEqual({ hostname: "10.99.0.1", port: 7788 });
    expect(parseAddress("10.99.0.1:7000", "--peer")).toEqual({ hostname: "10.99.0.1", port: 7000 });
    expect(parseAddress("node-b.example", "--peer")).toEqual({ hostname: "node-b.example", port: 7788 });
    expect(parseAddress("[fd00::2]:7000", "--peer")).toEqual({ hostname: "fd00::2", port: 7000 });
    expect(parseAddress("[fd00::2]", "--peer")).toEqual({ hostname: "fd00::2", port: 7788 });
    expect(parseAddress("fd00::2", "--peer")).toEqual({ hostname: "fd00::2", port: 7788 });
    expect(() => parseAddress("10.99.0.1:99999", "--peer")).toThrow("is not HOST:PORT");
    for (const wildcard of ["0.0.0.0", "0.0.0.0:7788", "::", "[::]:7788"]) expect(() => parseAddress(wildcard, "--listen")).toThrow("means every address of a machine");
  });
  test("node names from host names", () => {
    expect(nodeNameFromHost("Edge-Box-07.shop.example")).toBe("edge-box-07");
    expect(nodeNameFromHost("__x")).toBe("x");
    expect(nodeNameFromHost("...")).toBe("node");
    expect(nodeNameFromHost("a".repeat(40))).toHaveLength(31);
  });
});
