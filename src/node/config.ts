// The daemon's configuration file: where its data lives, where it listens, and (when paired) how to
// reach its peer. JSON (`.json`) or TOML (any other extension), parsed from a table of fields with
// their types and defaults rather than an if-chain (CONVENTIONS.md §7). Relative paths are taken
// relative to the file's directory, so a lab or an installer can write a self-contained directory.
// Every mistake is reported with the field's name; nothing is guessed: an unknown key is refused in
// every table, a pairing secret others can read is refused, and a path that cannot be what it names
// (a data directory that is a file, a socket path longer than a unix socket address holds) is a field
// error at load time, not a stack trace later.
import fs from "node:fs";
import path from "node:path";
import { TandemError } from "../common/errors.ts";
import { isLogLevel, type LogLevel } from "../common/log.ts";
import { parseSize } from "../common/size.ts";
import { nbdMemoryBudgetBytesDefault, nbdMemoryBudgetBytesMin, replicaResyncRateBytesPerSecondDefault, replicaSecretBytesMax, replicaSecretBytesMin, unixSocketPathBytesMax } from "../constants.ts";
import { parseWatchdogConfig, parseWitnessConfig, type WatchdogConfig, type WitnessConfig } from "../quorum/config.ts";

/** Where the CLI finds the daemon when neither --socket nor TANDEM_SOCKET says otherwise. */
export const defaultControlSocketPath = "/run/tandem/control.sock";

export interface HostPort {
  hostname: string;
  port: number;
}

export interface PeerConfig {
  /** The peer node's name. */
  name: string;
  /** This node's half of the link: it dials the peer, or accepts the peer's connection (docs/security.md). */
  connect: "dial" | "accept";
  /** Where the peer's replication listener is (the dialer connects there). */
  address: HostPort;
  /** Where this node's replication listener binds: required to accept; a dialer that has one only refuses and reports what connects. */
  listen: HostPort | undefined;
  /** The pairing secret shared by both nodes (read from `secretFile`). */
  secret: Uint8Array;
  /** 16 bytes naming the pair (hex in the file). */
  clusterId: Uint8Array;
  /** Resync bandwidth cap in bytes per second (`resyncRate = "200M"`): VM IO keeps priority. */
  resyncRateBytesPerSecond: number;
}

export interface NodeConfig {
  /** This node's name: short, the same alphabet as volume names. */
  name: string;
  dataDir: string;
  controlSocket: string;
  nbdSocket: string;
  /** Only when the operator names an address. */
  nbdTcp: HostPort | undefined;
  /** Memory all NBD connections may hold together for payloads and replies (`nbd.memoryBudget = "256M"`). */
  nbdMemoryBudgetBytes: number;
  /** Directory vhost-user sockets go to when an export names no path. */
  vhostSocketDir: string;
  /** Group given access to vhost-user sockets (mode 0660); undefined: root only (mode 0600). */
  vhostSocketGroup: { name: string; gid: number } | undefined;
  /** Whether `export vhost --path` may name a socket outside `vhostSocketDir`. */
  vhostAllowAnyPath: boolean;
  logLevel: LogLevel;
  peer: PeerConfig | undefined;
  /** The witness disk or file (used by the quorum; recorded now so a lab can name it). */
  witnessPath: string | undefined;
  /** `[witness]`: the path and the lease's timings (src/quorum/config.ts parses and checks them, unknown keys included). */
  witness: WitnessConfig | undefined;
  /** `watchdog`: auto | required | off, and the device. */
  watchdog: WatchdogConfig;
  /** `[hooks]`: commands run when this node gains (promoted) or loses (fenced) a volume's primary role. */
  hooks: HookConfig;
  /** The file this came from, for status. */
  source: string;
}

const nodeNamePattern = /^[a-z0-9][a-z0-9_-]{0,30}$/;

/** A hook command: argv (an array in the config), or a shell command line (a string, run by /bin/sh -c). */
export interface HookConfig {
  promoted: string[] | undefined;
  fenced: string[] | undefined;
}

function hookCommand(source: string, raw: Raw, field: "promoted" | "fenced"): string[] | undefined {
  const value = raw[field];
  if (value === undefined) return undefined;
  if (typeof value === "string" && value.trim() !== "") return ["/bin/sh", "-c", value];
  if (Array.isArray(value) && value.length > 0 && value.every((part) => typeof part === "string" && part !== "")) return value as string[];
  return fail(source, `hooks.${field}`, "must be a command line (a string) or a non-empty array of arguments");
}

function fail(source: string, field: string, why: string): never {
  throw new TandemError("invalid_argument", `${source}: ${field}: ${why}`);
}

export function parseHostPort(text: string, what: string): HostPort {
  const match = /^(\[[0-9a-fA-F:]+\]|[A-Za-z0-9.-]+):(\d{1,5})$/.exec(text);
  const port = match ? Number(match[2]) : NaN;
  if (!match || port > 65535) throw new TandemError("invalid_argument", `${what}: "${text}" is not HOST:PORT`);
  return { hostname: match[1]!.replace(/^\[|\]$/g, ""), port };
}

export function formatHostPort(address: HostPort): string {
  return address.hostname.includes(":") ? `[${address.hostname}]:${address.port}` : `${address.hostname}:${address.port}`;
}

type Raw = Record<string, unknown>;

function table(source: string, raw: Raw, field: string): Raw | undefined {
  const value = raw[field];
  if (value === undefined) return undefined;
  if (typeof value !== "object" || value === null || Array.isArray(value)) fail(source, field, "must be a table");
  return value as Raw;
}

function text(source: string, raw: Raw, field: string, prefix = ""): string | undefined {
  const value = raw[field];
  if (value === undefined) return undefined;
  if (typeof value !== "string" || value.length === 0) fail(source, prefix + field, "must be a non-empty string");
  return value;
}

function flag(source: string, raw: Raw, field: string, prefix: string): boolean {
  const value = raw[field];
  if (value === undefined) return false;
  if (typeof value !== "boolean") fail(source, prefix + field, "must be true or false");
  return value;
}

/** The keys each table may hold; anything else is a mistake (a typo would otherwise be ignored). */
const knownFields = {
  "": ["name", "dataDir", "controlSocket", "nbd", "vhost", "log", "peer", "witness", "watchdog", "hooks"],
  "hooks.": ["promoted", "fenced"],
  "nbd.": ["socket", "tcp", "memoryBudget"],
  "vhost.": ["socketDir", "socketGroup", "allowAnyPath"],
  "log.": ["level"],
  "peer.": ["name", "connect", "address", "listen", "secretFile", "clusterId", "resyncRate"],
} as const;

function refuseUnknown(source: string, raw: Raw, prefix: keyof typeof knownFields): void {
  const known: readonly string[] = knownFields[prefix];
  for (const key of Object.keys(raw)) if (!known.includes(key)) fail(source, prefix + key, "unknown field");
}

/** A unix socket path must fit sockaddr_un.sun_path with its terminating NUL. */
function socketPath(source: string, field: string, value: string): string {
  const bytes = Buffer.byteLength(value);
  if (bytes > unixSocketPathBytesMax) fail(source, field, `${value} is ${bytes} bytes; a unix socket path holds at most ${unixSocketPathBytesMax}`);
  return value;
}

/** A group name or number from the group database. */
function resolveGroup(source: string, field: string, value: unknown): { name: string; gid: number } {
  if (typeof value !== "string" && typeof value !== "number") fail(source, field, "must be a group name or number");
  let lines: string[] = [];
  try {
    lines = fs.readFileSync("/etc/group", "utf8").split("\n");
  } catch {
    // No group database: only a number can be used.
  }
  for (const line of lines) {
    const [name, , gid] = line.split(":");
    if (name && gid !== undefined && (name === String(value) || gid === String(value))) return { name, gid: Number(gid) };
  }
  if (typeof value === "number" && Number.isInteger(value) && value >= 0) return { name: String(value), gid: value };
  fail(source, field, `no group named ${value}`);
}

/** A secret file must be private: readable by its owner only. */
function readSecretFile(source: string, file: string): Uint8Array {
  let mode: number;
  let secret: Uint8Array;
  try {
    mode = fs.statSync(file).mode;
    secret = new Uint8Array(fs.readFileSync(file));
  } catch (error) {
    fail(source, "peer.secretFile", `cannot read ${file}: ${(error as Error).message}`);
  }
  if ((mode & 0o077) !== 0) fail(source, "peer.secretFile", `${file} has mode ${(mode & 0o777).toString(8).padStart(4, "0")}: group or others may read or change the pairing secret; chmod 600 it`);
  return secret;
}

/** Parse a config document (already decoded from JSON or TOML). `baseDir` resolves relative paths. */
export function parseNodeConfig(raw: unknown, baseDir: string, source = "config"): NodeConfig {
  if (typeof raw !== "object" || raw === null || Array.isArray(raw)) fail(source, "(top)", "must be a table");
  const top = raw as Raw;
  refuseUnknown(source, top, "");
  const resolve = (value: string) => path.resolve(baseDir, value);

  const name = text(source, top, "name") ?? fail(source, "name", "is required");
  if (!nodeNamePattern.test(name)) fail(source, "name", `"${name}" must be 1-31 of a-z 0-9 _ - starting with a letter or digit`);
  const dataDir = resolve(text(source, top, "dataDir") ?? fail(source, "dataDir", "is required"));
  let dataDirStat: fs.Stats | undefined;
  try {
    dataDirStat = fs.statSync(dataDir);
  } catch {
    // Created at start-up.
  }
  if (dataDirStat && !dataDirStat.isDirectory()) fail(source, "dataDir", `${dataDir} exists and is not a directory`);
  const controlSocket = socketPath(source, "controlSocket", resolve(text(source, top, "controlSocket") ?? path.join(dataDir, "control.sock")));

  const nbd = table(source, top, "nbd") ?? {};
  refuseUnknown(source, nbd, "nbd.");
  const nbdSocket = socketPath(source, "nbd.socket", resolve(text(source, nbd, "socket", "nbd.") ?? path.join(dataDir, "nbd.sock")));
  const nbdTcpText = text(source, nbd, "tcp", "nbd.");
  const nbdTcp = nbdTcpText === undefined ? undefined : parseHostPort(nbdTcpText, `${source}: nbd.tcp`);
  const budgetText = text(source, nbd, "memoryBudget", "nbd.");
  let nbdMemoryBudgetBytes = nbdMemoryBudgetBytesDefault;
  if (budgetText !== undefined) {
    try {
      nbdMemoryBudgetBytes = parseSize(budgetText);
    } catch (error) {
      fail(source, "nbd.memoryBudget", `${(error as Error).message} (bytes, e.g. "256M")`);
    }
    if (nbdMemoryBudgetBytes < nbdMemoryBudgetBytesMin) fail(source, "nbd.memoryBudget", `must be at least ${nbdMemoryBudgetBytesMin / (1024 * 1024)}M (one maximal write beside a read stream, twice)`);
  }

  const vhost = table(source, top, "vhost") ?? {};
  refuseUnknown(source, vhost, "vhost.");
  const vhostSocketDir = resolve(text(source, vhost, "socketDir", "vhost.") ?? path.join(dataDir, "vhost"));
  const vhostSocketGroup = vhost.socketGroup === undefined ? undefined : resolveGroup(source, "vhost.socketGroup", vhost.socketGroup);
  const vhostAllowAnyPath = flag(source, vhost, "allowAnyPath", "vhost.");

  const log = table(source, top, "log") ?? {};
  refuseUnknown(source, log, "log.");
  const level = log.level ?? "info";
  if (!isLogLevel(level)) fail(source, "log.level", "must be debug, info, warn or error");

  const witnessTable = table(source, top, "witness");
  const witness = witnessTable ? parseWitnessConfig(witnessTable, source, resolve) : undefined;
  const witnessPath = witness?.path;
  const watchdog = parseWatchdogConfig(top.watchdog, source);
  const hooksRaw = table(source, top, "hooks") ?? {};
  refuseUnknown(source, hooksRaw, "hooks.");
  const hooks: HookConfig = { promoted: hookCommand(source, hooksRaw, "promoted"), fenced: hookCommand(source, hooksRaw, "fenced") };

  let peer: PeerConfig | undefined;
  const peerRaw = table(source, top, "peer");
  if (peerRaw) {
    refuseUnknown(source, peerRaw, "peer.");
    const peerName = text(source, peerRaw, "name", "peer.") ?? fail(source, "peer.name", "is required");
    if (!nodeNamePattern.test(peerName) || peerName === name) fail(source, "peer.name", `"${peerName}" must be a valid node name other than "${name}"`);
    // Absent: the node whose name sorts first dials (what both nodes derive alike from the same two names).
    const connectText = text(source, peerRaw, "connect", "peer.") ?? (name < peerName ? "dial" : "accept");
    if (connectText !== "dial" && connectText !== "accept") fail(source, "peer.connect", `must be "dial" or "accept" (exactly one of the two nodes dials)`);
    const connect: "dial" | "accept" = connectText;
    const address = parseHostPort(text(source, peerRaw, "address", "peer.") ?? fail(source, "peer.address", "is required"), `${source}: peer.address`);
    const listenText = text(source, peerRaw, "listen", "peer.");
    if (listenText === undefined && connect === "accept") fail(source, "peer.listen", `is required: this node accepts the peer's connection (peer.connect = "accept")`);
    const listen = listenText === undefined ? undefined : parseHostPort(listenText, `${source}: peer.listen`);
    const secretFile = resolve(text(source, peerRaw, "secretFile", "peer.") ?? fail(source, "peer.secretFile", "is required"));
    const secret = readSecretFile(source, secretFile);
    if (secret.length < replicaSecretBytesMin || secret.length > replicaSecretBytesMax) {
      fail(source, "peer.secretFile", `the secret must be ${replicaSecretBytesMin}..${replicaSecretBytesMax} bytes, it is ${secret.length}`);
    }
    const clusterHex = text(source, peerRaw, "clusterId", "peer.") ?? fail(source, "peer.clusterId", "is required");
    if (!/^[0-9a-f]{32}$/.test(clusterHex)) fail(source, "peer.clusterId", "must be 32 lowercase hex digits");
    const clusterId = Uint8Array.from(Buffer.from(clusterHex, "hex"));
    const rateText = text(source, peerRaw, "resyncRate", "peer.");
    let resyncRateBytesPerSecond = replicaResyncRateBytesPerSecondDefault;
    if (rateText !== undefined) {
      try {
        resyncRateBytesPerSecond = parseSize(rateText);
      } catch (error) {
        fail(source, "peer.resyncRate", `${(error as Error).message} (bytes per second, e.g. "200M")`);
      }
      if (resyncRateBytesPerSecond < 1024 * 1024) fail(source, "peer.resyncRate", "must be at least 1M (bytes per second)");
    }
    peer = { name: peerName, connect, address, listen, secret, clusterId, resyncRateBytesPerSecond };
  }

  return { name, dataDir, controlSocket, nbdSocket, nbdTcp, nbdMemoryBudgetBytes, vhostSocketDir, vhostSocketGroup, vhostAllowAnyPath, logLevel: level, peer, witnessPath, witness, watchdog, hooks, source };
}

/** Read and parse a config file: JSON when it ends in .json, TOML otherwise. */
export function loadNodeConfig(file: string): NodeConfig {
  const absolute = path.resolve(file);
  let body: string;
  try {
    body = fs.readFileSync(absolute, "utf8");
  } catch (error) {
    throw new TandemError("invalid_argument", `cannot read config ${file}: ${(error as Error).message}`);
  }
  let raw: unknown;
  try {
    raw = absolute.endsWith(".json") ? JSON.parse(body) : Bun.TOML.parse(body);
  } catch (error) {
    throw new TandemError("invalid_argument", `${file}: not valid ${absolute.endsWith(".json") ? "JSON" : "TOML"}: ${(error as Error).message}`);
  }
  return parseNodeConfig(raw, path.dirname(absolute), file);
}
