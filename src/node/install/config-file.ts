// The node configuration as `tandem install` reads and writes it. Pairing ends here: the secret goes
// to a file of its own (mode 0600, written to a temporary name, fsynced, renamed), then the config
// gains [peer] and [witness] and is written the same way. Fields the operator set before (sockets,
// NBD, vhost, log level) are kept; only comments are lost, and the file says where every field is
// documented. The new document is checked with the daemon's own parser before it replaces the old
// one, so an install never leaves a config the daemon would refuse.
import fs from "node:fs";
import path from "node:path";
import { TandemError } from "../../common/errors.ts";
import { loadNodeConfig, type NodeConfig, parseNodeConfig } from "../config.ts";

export type RawConfig = Record<string, unknown>;

/** The packaged default's name: a node still called this has not been named yet. */
export const packagedNodeName = "node1";
export const defaultDataDir = "/var/lib/tandem";
export const defaultSecretFileName = "pairing.secret";

export interface ExistingConfig {
  path: string;
  /** The document as parsed (TOML or JSON); undefined when there is no file. */
  raw: RawConfig | undefined;
  /** The daemon's view of it; undefined when there is no file or it does not load. */
  config: NodeConfig | undefined;
  /** Why the file does not load. */
  error: string | undefined;
}

export function readExistingConfig(configPath: string): ExistingConfig {
  const absolute = path.resolve(configPath);
  if (!fs.existsSync(absolute)) return { path: absolute, raw: undefined, config: undefined, error: undefined };
  let raw: RawConfig | undefined;
  try {
    const body = fs.readFileSync(absolute, "utf8");
    const parsed: unknown = absolute.endsWith(".json") ? JSON.parse(body) : Bun.TOML.parse(body);
    if (typeof parsed === "object" && parsed !== null && !Array.isArray(parsed)) raw = parsed as RawConfig;
  } catch (error) {
    return { path: absolute, raw: undefined, config: undefined, error: `${absolute} is not valid ${absolute.endsWith(".json") ? "JSON" : "TOML"}: ${(error as Error).message}` };
  }
  try {
    return { path: absolute, raw, config: loadNodeConfig(absolute), error: undefined };
  } catch (error) {
    return { path: absolute, raw, config: undefined, error: (error as Error).message };
  }
}

// ---- TOML for our config's shape: top-level scalars, then one level of tables of scalars

function tomlString(value: string): string {
  return JSON.stringify(value);
}

function tomlValue(value: unknown, where: string): string {
  if (typeof value === "string") return tomlString(value);
  if (typeof value === "number" && Number.isFinite(value)) return String(value);
  if (typeof value === "boolean") return String(value);
  throw new TandemError("internal", `cannot write ${where} as TOML (${typeof value})`);
}

const keyPattern = /^[A-Za-z0-9_-]+$/;

export function renderConfigToml(raw: RawConfig, header: string[]): string {
  const lines = header.map((line) => `# ${line}`.trimEnd());
  const tables: [string, RawConfig][] = [];
  for (const [key, value] of Object.entries(raw)) {
    if (!keyPattern.test(key)) throw new TandemError("internal", `cannot write the key ${key} as TOML`);
    if (value === undefined) continue;
    if (typeof value === "object" && value !== null && !Array.isArray(value)) tables.push([key, value as RawConfig]);
    else lines.push(`${key} = ${tomlValue(value, key)}`);
  }
  for (const [name, table] of tables) {
    lines.push("", `[${name}]`);
    for (const [key, value] of Object.entries(table)) {
      if (!keyPattern.test(key)) throw new TandemError("internal", `cannot write the key ${name}.${key} as TOML`);
      if (value !== undefined) lines.push(`${key} = ${tomlValue(value, `${name}.${key}`)}`);
    }
  }
  return lines.join("\n") + "\n";
}

/** Write `bytes` to `file` atomically: a temporary file with `mode`, fsynced, renamed over it, the directory fsynced. */
export function writeFileAtomic(file: string, bytes: Uint8Array | string, mode: number): void {
  const directory = path.dirname(file);
  fs.mkdirSync(directory, { recursive: true, mode: 0o755 });
  const temporary = path.join(directory, `.${path.basename(file)}.${process.pid}.tmp`);
  const fd = fs.openSync(temporary, fs.constants.O_WRONLY | fs.constants.O_CREAT | fs.constants.O_TRUNC, mode);
  try {
    fs.fchmodSync(fd, mode);
    fs.writeSync(fd, typeof bytes === "string" ? Buffer.from(bytes) : bytes);
    fs.fsyncSync(fd);
  } finally {
    fs.closeSync(fd);
  }
  fs.renameSync(temporary, file);
  const directoryFd = fs.openSync(directory, fs.constants.O_RDONLY);
  try {
    fs.fsyncSync(directoryFd);
  } finally {
    fs.closeSync(directoryFd);
  }
}

export interface PairedConfigInput {
  name: string;
  dataDir: string;
  peer: { name: string; connect: "dial" | "accept"; address: string; listen: string; clusterIdHex: string };
  witnessPath: string | undefined;
  secret: Uint8Array;
}

/**
 * The document a paired node runs with: the existing one (or the packaged defaults when there is
 * none) with this node's name and data directory, [peer] and [witness].
 */
export function pairedDocument(existing: RawConfig | undefined, input: PairedConfigInput, secretFile: string): RawConfig {
  const base: RawConfig = existing
    ? { ...existing }
    : input.dataDir === defaultDataDir
      ? { controlSocket: "/run/tandem/control.sock", nbd: { socket: "/run/tandem/nbd.sock" }, vhost: { socketDir: "/run/tandem/vhost" }, log: { level: "info" } }
      : {};
  const previousPeer = typeof base.peer === "object" && base.peer !== null ? (base.peer as RawConfig) : {};
  const previousWitness = typeof base.witness === "object" && base.witness !== null ? (base.witness as RawConfig) : {};
  const { name: _name, dataDir: _dataDir, peer: _peer, witness: _witness, ...rest } = base;
  const document: RawConfig = { name: input.name, dataDir: input.dataDir, ...rest };
  document.peer = {
    name: input.peer.name,
    connect: input.peer.connect,
    address: input.peer.address,
    listen: input.peer.listen,
    secretFile,
    clusterId: input.peer.clusterIdHex,
    ...(previousPeer.resyncRate !== undefined ? { resyncRate: previousPeer.resyncRate } : {}),
  };
  if (input.witnessPath !== undefined) document.witness = { ...previousWitness, path: input.witnessPath };
  return document;
}

/**
 * Write the secret, then the config that names it, each atomically; the document is checked with
 * the daemon's parser (which also checks the secret file's mode and length) before the config is
 * replaced. Returns what the daemon will load.
 */
export function writePairedConfig(configPath: string, existing: RawConfig | undefined, input: PairedConfigInput): NodeConfig {
  const absolute = path.resolve(configPath);
  const directory = path.dirname(absolute);
  const previousSecret = typeof existing?.peer === "object" && existing.peer !== null ? (existing.peer as RawConfig).secretFile : undefined;
  const secretFile = typeof previousSecret === "string" ? previousSecret : defaultSecretFileName;
  writeFileAtomic(path.resolve(directory, secretFile), input.secret, 0o600);
  const document = pairedDocument(existing, input, secretFile);
  parseNodeConfig(document, directory, absolute);
  const json = absolute.endsWith(".json");
  const header = ["Tandem node configuration, written by tandem install.", "Every field is described in docs/configuration.md."];
  writeFileAtomic(absolute, json ? JSON.stringify(document, null, 2) + "\n" : renderConfigToml(document, header), 0o600);
  return loadNodeConfig(absolute);
}
