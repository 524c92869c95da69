// The config parser: defaults and relative paths resolved against the file's directory, JSON and
// TOML read alike, and every kind of mistake refused with the field's name in the message.
import { describe, expect, test } from "bun:test";
import fs from "node:fs";
import os from "node:os";
import path from "node:path";
import { loadNodeConfig, parseHostPort, parseNodeConfig } from "../../src/node/config.ts";

describe("node config", () => {
  test("defaults hang off the data directory; relative paths resolve against the file", () => {
    const config = parseNodeConfig({ name: "a", dataDir: "data" }, "/srv/lab");
    expect(config).toMatchObject({
      name: "a",
      dataDir: "/srv/lab/data",
      controlSocket: "/srv/lab/data/control.sock",
      nbdSocket: "/srv/lab/data/nbd.sock",
      nbdTcp: undefined,
      nbdMemoryBudgetBytes: 256 * 1024 * 1024,
      vhostSocketDir: "/srv/lab/data/vhost",
      vhostSocketGroup: undefined,
      vhostAllowAnyPath: false,
      logLevel: "info",
      peer: undefined,
    });
  });

  test("TOML and JSON files give the same config, with a peer and its secret", () => {
    const dir = fs.mkdtempSync(path.join(os.tmpdir(), "tandem-config-"));
    try {
      fs.writeFileSync(path.join(dir, "secret"), "0123456789abcdef0123", { mode: 0o600 });
      const fields = { name: "a", dataDir: "d", nbd: { tcp: "127.0.0.1:10809" }, peer: { name: "b", address: "10.0.0.2:7788", listen: "[::1]:7788", secretFile: "secret", clusterId: "00112233445566778899aabbccddeeff" } };
      fs.writeFileSync(path.join(dir, "node.json"), JSON.stringify(fields));
      fs.writeFileSync(
        path.join(dir, "node.toml"),
        `name = "a"\ndataDir = "d"\n[nbd]\ntcp = "127.0.0.1:10809"\n[peer]\nname = "b"\naddress = "10.0.0.2:7788"\nlisten = "[::1]:7788"\nsecretFile = "secret"\nclusterId = "00112233445566778899aabbccddeeff"\n`,
      );
      const fromJson = loadNodeConfig(path.join(dir, "node.json"));
      const fromToml = loadNodeConfig(path.join(dir, "node.toml"));
      expect({ ...fromJson, source: "" }).toEqual({ ...fromToml, source: "" });
      expect(fromToml.nbdTcp).toEqual({ hostname: "127.0.0.1", port: 10809 });
      expect(parseNodeConfig({ ...fields, nbd: { memoryBudget: "1G" } }, dir).nbdMemoryBudgetBytes).toBe(1024 * 1024 * 1024);
      expect(fromToml.peer!.listen).toEqual({ hostname: "::1", port: 7788 });
      expect(new TextDecoder().decode(fromToml.peer!.secret)).toBe("0123456789abcdef0123");
      expect(fromToml.peer!.clusterId.length).toBe(16);
      expect(fromToml.peer!.resyncRateBytesPerSecond).toBe(200 * 1024 * 1024); // the default
      const capped = parseNodeConfig({ ...fields, peer: { ...fields.peer, resyncRate: "50M" } }, dir);
      expect(capped.peer!.resyncRateBytesPerSecond).toBe(50 * 1024 * 1024);
      expect(() => parseNodeConfig({ ...fields, peer: { ...fields.peer, resyncRate: "fast" } }, dir)).toThrow(/peer.resyncRate: .*bytes per second/);
      expect(() => parseNodeConfig({ ...fields, peer: { ...fields.peer, resyncRate: "512K" } }, dir)).toThrow(/peer.resyncRate: must be at least 1M/);
    } finally {
      fs.rmSync(dir, { recursive: true, force: true });
    }
  });

  test("mistakes name the field", () => {
    const cases: [unknown, RegExp][] = [
      [[], /must be a table/],
      [{ dataDir: "d" }, /name: is required/],
      [{ name: "A!", dataDir: "d" }, /name: "A!" must be/],
      [{ name: "a" }, /dataDir: is required/],
      [{ name: "a", dataDir: "d", colour: "blue" }, /colour: unknown field/],
      [{ name: "a", dataDir: "d", nbd: "x" }, /nbd: must be a table/],
      [{ name: "a", dataDir: "d", nbd: { tcp: "nohost" } }, /nbd.tcp: "nohost" is not HOST:PORT/],
      [{ name: "a", dataDir: "d", nbd: { tcp: "h:70000" } }, /is not HOST:PORT/],
      [{ name: "a", dataDir: "d", nbd: { memoryBudget: "lots" } }, /nbd.memoryBudget: .*bytes, e.g. "256M"/],
      [{ name: "a", dataDir: "d", nbd: { memoryBudget: "16M" } }, /nbd.memoryBudget: must be at least 72M/],
      [{ name: "a", dataDir: "d", log: { level: "loud" } }, /log.level/],
      [{ name: "a", dataDir: "d", peer: { name: "a" } }, /peer.name: "a" must be a valid node name other than "a"/],
      [{ name: "a", dataDir: "d", peer: { name: "b", address: "h:1", listen: "h:2", secretFile: "/nonexistent/secret", clusterId: "00" } }, /peer.secretFile: cannot read/],
    ];
    for (const [raw, message] of cases) expect(() => parseNodeConfig(raw, "/x", "node.toml")).toThrow(message);
  });

  test("unknown keys inside tables are refused as top-level ones are", () => {
    const base = { name: "a", dataDir: "d" };
    const cases: [Record<string, unknown>, string][] = [
      [{ nbd: { socket: "n.sock", tpc: "127.0.0.1:1" } }, "nbd.tpc"],
      [{ vhost: { socketdir: "v" } }, "vhost.socketdir"],
      [{ log: { level: "info", format: "json" } }, "log.format"],
      [{ witness: { path: "w", size: 1 } }, "witness.size"],
      [{ peer: { name: "b", address: "h:1", listen: "h:2", secretFile: "s", clusterId: "00", resync: "1G" } }, "peer.resync"],
    ];
    for (const [fields, key] of cases) expect(() => parseNodeConfig({ ...base, ...fields }, "/x", "node.toml")).toThrow(`node.toml: ${key}: unknown field`);
  });

  test("a pairing secret that group or others can read is refused; mode 0600 and 0400 are accepted", () => {
    const dir = fs.mkdtempSync(path.join(os.tmpdir(), "tandem-config-"));
    try {
      const secretFile = path.join(dir, "secret");
      fs.writeFileSync(secretFile, "0123456789abcdef0123");
      const config = { name: "a", dataDir: "d", peer: { name: "b", address: "h:1", listen: "h:2", secretFile, clusterId: "00112233445566778899aabbccddeeff" } };
      for (const mode of [0o644, 0o640, 0o604, 0o660, 0o606]) {
        fs.chmodSync(secretFile, mode);
        expect(() => parseNodeConfig(config, dir, "node.toml")).toThrow(`node.toml: peer.secretFile: ${secretFile} has mode 0${mode.toString(8)}: group or others may read or change the pairing secret; chmod 600 it`);
      }
      for (const mode of [0o600, 0o400]) {
        fs.chmodSync(secretFile, mode);
        expect(new TextDecoder().decode(parseNodeConfig(config, dir).peer!.secret)).toBe("0123456789abcdef0123");
      }
    } finally {
      fs.rmSync(dir, { recursive: true, force: true });
    }
  });

  test("peer.connect: explicit, or derived alike on both nodes from their names; an acceptor needs peer.listen", () => {
    const dir = fs.mkdtempSync(path.join(os.tmpdir(), "tandem-config-"));
    try {
      fs.writeFileSync(path.join(dir, "secret"), "0123456789abcdef0123", { mode: 0o600 });
      const peer = (fields: Record<string, unknown>) => ({ address: "10.0.0.2:7788", secretFile: "secret", clusterId: "00112233445566778899aabbccddeeff", ...fields });
      // Without the field, the node whose name sorts first dials: both nodes derive the same pairing.
      expect(parseNodeConfig({ name: "a", dataDir: "d", peer: peer({ name: "b", listen: "h:1" }) }, dir).peer!.connect).toBe("dial");
      expect(parseNodeConfig({ name: "b", dataDir: "d", peer: peer({ name: "a", listen: "h:1" }) }, dir).peer!.connect).toBe("accept");
      const accepting = parseNodeConfig({ name: "a", dataDir: "d", peer: peer({ name: "b", listen: "h:1", connect: "accept" }) }, dir);
      expect(accepting.peer).toMatchObject({ connect: "accept", listen: { hostname: "h", port: 1 } });
      // A dialer needs no listener; an acceptor does.
      expect(parseNodeConfig({ name: "a", dataDir: "d", peer: peer({ name: "b", connect: "dial" }) }, dir).peer!.listen).toBeUndefined();
      expect(() => parseNodeConfig({ name: "a", dataDir: "d", peer: peer({ name: "b", connect: "accept" }) }, dir)).toThrow(/peer.listen: is required: this node accepts/);
      expect(() => parseNodeConfig({ name: "b", dataDir: "d", peer: peer({ name: "a" }) }, dir)).toThrow(/peer.listen: is required/);
      expect(() => parseNodeConfig({ name: "a", dataDir: "d", peer: peer({ name: "b", listen: "h:1", connect: "both" }) }, dir)).toThrow(/peer.connect: must be "dial" or "accept"/);
    } finally {
      fs.rmSync(dir, { recursive: true, force: true });
    }
  });

  test("dataDir naming a file is a field error; a socket path longer than a unix address holds is too", () => {
    const dir = fs.mkdtempSync(path.join(os.tmpdir(), "tandem-config-"));
    try {
      fs.writeFileSync(path.join(dir, "file"), "");
      expect(() => parseNodeConfig({ name: "a", dataDir: "file" }, dir, "node.toml")).toThrow(`node.toml: dataDir: ${path.join(dir, "file")} exists and is not a directory`);
      const long = "/run/" + "x".repeat(100) + ".sock"; // 110 bytes
      expect(() => parseNodeConfig({ name: "a", dataDir: "d", controlSocket: long }, dir, "node.toml")).toThrow(`node.toml: controlSocket: ${long} is 110 bytes; a unix socket path holds at most 107`);
      expect(() => parseNodeConfig({ name: "a", dataDir: "d", nbd: { socket: long } }, dir, "node.toml")).toThrow(/nbd.socket: .* is 110 bytes/);
      const longest = "/run/" + "x".repeat(97) + ".sock"; // 107 bytes
      expect(parseNodeConfig({ name: "a", dataDir: "d", controlSocket: longest }, dir).controlSocket).toBe(longest);
    } finally {
      fs.rmSync(dir, { recursive: true, force: true });
    }
  });

  test("vhost.socketGroup names a group by name or number; vhost.allowAnyPath is a boolean", () => {
    const root = parseNodeConfig({ name: "a", dataDir: "d", vhost: { socketGroup: "root", allowAnyPath: true } }, "/x");
    expect(root.vhostSocketGroup).toEqual({ name: "root", gid: 0 });
    expect(root.vhostAllowAnyPath).toBe(true);
    expect(parseNodeConfig({ name: "a", dataDir: "d", vhost: { socketGroup: 0 } }, "/x").vhostSocketGroup).toEqual({ name: "root", gid: 0 });
    expect(() => parseNodeConfig({ name: "a", dataDir: "d", vhost: { socketGroup: "no-such-group-here" } }, "/x", "node.toml")).toThrow("node.toml: vhost.socketGroup: no group named no-such-group-here");
    expect(() => parseNodeConfig({ name: "a", dataDir: "d", vhost: { allowAnyPath: "yes" } }, "/x", "node.toml")).toThrow("node.toml: vhost.allowAnyPath: must be true or false");
  });

  test("an unreadable or malformed file is a clear error", () => {
    expect(() => loadNodeConfig("/nonexistent/node.toml")).toThrow(/cannot read config/);
    const dir = fs.mkdtempSync(path.join(os.tmpdir(), "tandem-config-"));
    try {
      fs.writeFileSync(path.join(dir, "bad.json"), "{");
      expect(() => loadNodeConfig(path.join(dir, "bad.json"))).toThrow(/not valid JSON/);
      fs.writeFileSync(path.join(dir, "bad.toml"), "name = = 1");
      expect(() => loadNodeConfig(path.join(dir, "bad.toml"))).toThrow(/not valid TOML/);
    } finally {
      fs.rmSync(dir, { recursive: true, force: true });
    }
  });

  test("host:port parsing", () => {
    expect(parseHostPort("localhost:1", "x")).toEqual({ hostname: "localhost", port: 1 });
    expect(() => parseHostPort("[::1]", "x")).toThrow(/HOST:PORT/);
  });
});
