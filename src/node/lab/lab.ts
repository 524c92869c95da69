// The lab: a whole Tandem cluster on this one machine, for the try-it-now demo, fire drills and the
// integration tests. `up` writes each node's config into DIR/<node>/, starts the daemons as
// detached processes (logs in DIR/<node>/node.log, pid in DIR/<node>/node.pid), waits until each
// answers on DIR/<node>/control.sock, creates the demo volume, and returns. `down` sends SIGTERM to
// the processes it started (their pids from the files), waits for them to drain, and SIGKILLs only a
// process that does not stop in time. The lab's layout and ports are kept in DIR/lab.json so every
// later command (`kill`, `start`, `down`) finds them again.
import { spawn } from "node:child_process";
import fs from "node:fs";
import path from "node:path";
import { TandemError } from "../../common/errors.ts";
import { freeLoopbackPorts } from "../../common/ports.ts";
import { daemonEnvironment } from "../../constants.ts";
import { ControlClient } from "../control/client.ts";
import type { VolumeView } from "../volumes.ts";
import { defaultQuorumTiming } from "../../quorum/config.ts";
import { parseClusterId } from "../../quorum/format.ts";
import { formatWitness } from "../../quorum/witness-io.ts";
import { type LabWitnessState, labWitnessState, processStopped, startLabWitness, stopLabWitness } from "./witness.ts";

export const labNodeNames = ["a", "b"] as const;
export const labDemoVolume = "demo";
export const labDemoVolumeBytes = 1024 * 1024 * 1024;
const startTimeoutMs = 30_000;
const stopTimeoutMs = 30_000;

export interface LabNodeInfo {
  name: string;
  control: string;
  nbd: string;
  dataDir: string;
  pid: number | null;
  running: boolean;
  /** Stopped by `tandem lab pause` (SIGSTOP). */
  paused: boolean;
  log: string;
}

export interface LabInfo {
  dir: string;
  nodes: LabNodeInfo[];
  volumes: { name: string; size: number }[];
  witness: LabWitnessState;
}

interface LabFile {
  version: 2;
  nodes: string[];
  /** Replication listeners of the nodes, and the relay ports that forward to them (loopback). */
  ports: { listen: Record<string, number>; relay: Record<string, number> };
  /** The nodes dial each other's listener, as production nodes do: no relay, so no cut, heal or delay. */
  direct?: boolean;
}

/** How to run this program again: the compiled binary alone, or the runtime with the entry script. */
export function selfCommand(): string[] {
  const main = Bun.main;
  if (main.startsWith("/$bunfs/") || main.includes("~BUN")) return [process.execPath];
  return [process.execPath, main.endsWith("main.ts") ? main : path.resolve(import.meta.dir, "../../cli/main.ts")];
}

function nodeDir(dir: string, node: string): string {
  return path.join(dir, node);
}

function nodePaths(dir: string, node: string) {
  const base = nodeDir(dir, node);
  return {
    base,
    config: path.join(base, "config.json"),
    control: path.join(base, "control.sock"),
    nbd: path.join(base, "nbd.sock"),
    dataDir: path.join(base, "data"),
    log: path.join(base, "node.log"),
    pid: path.join(base, "node.pid"),
  };
}

function readPid(file: string): number | null {
  try {
    const pid = Number(fs.readFileSync(file, "utf8").trim());
    return Number.isInteger(pid) && pid > 0 ? pid : null;
  } catch {
    return null;
  }
}

export function processAlive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch (error) {
    return (error as NodeJS.ErrnoException).code === "EPERM";
  }
}

/** A process we started is alive and still runs our daemon (not a recycled pid). */
function labProcessAlive(pid: number | null, configPath: string): boolean {
  if (pid === null || !processAlive(pid)) return false;
  try {
    return fs.readFileSync(`/proc/${pid}/cmdline`, "utf8").replaceAll("\0", " ").includes(configPath);
  } catch {
    return true;
  }
}

function writeNodeConfig(dir: string, node: string, lab: LabFile): void {
  const paths = nodePaths(dir, node);
  fs.mkdirSync(paths.base, { recursive: true, mode: 0o700 });
  const peer = lab.nodes.find((other) => other !== node)!;
  const config = {
    name: node,
    dataDir: "data",
    controlSocket: "control.sock",
    nbd: { socket: "nbd.sock" },
    vhost: { socketDir: "vhost" },
    log: { level: "info" },
    // The node reaches its peer through the lab's relay (which `lab cut|heal|delay` acts on), or
    // straight at the peer's listener in a direct lab. The first node dials, the second accepts;
    // the dialer still listens, to refuse and report what connects.
    peer: {
      name: peer,
      connect: node === lab.nodes[0] ? "dial" : "accept",
      address: `127.0.0.1:${lab.direct ? lab.ports.listen[peer] : lab.ports.relay[peer]}`,
      listen: `127.0.0.1:${lab.ports.listen[node]}`,
      secretFile: "../pairing.secret",
      clusterId: fs.readFileSync(path.join(dir, "cluster.id"), "utf8").trim(),
    },
    witness: { path: "../witness.img" },
    // Both nodes share this one machine: a kernel watchdog would reset the whole lab host.
    watchdog: "off",
  };
  fs.writeFileSync(paths.config, JSON.stringify(config, null, 2) + "\n", { mode: 0o600 });
}

async function waitForControl(socket: string, pid: number, log: string): Promise<void> {
  const client = new ControlClient(socket);
  const deadline = Date.now() + startTimeoutMs;
  for (;;) {
    try {
      await client.request("GET", "/status");
      return;
    } catch (error) {
      if (!processAlive(pid)) {
        const tail = fs.existsSync(log) ? fs.readFileSync(log, "utf8").trim().split("\n").slice(-5).join("\n") : "";
        throw new TandemError("failed_precondition", `the node process exited during start-up; the end of ${log}:\n${tail}`);
      }
      if (Date.now() > deadline) throw new TandemError("unavailable", `the node did not answer on ${socket} within ${startTimeoutMs / 1000} s: ${(error as Error).message}`);
      await Bun.sleep(50);
    }
  }
}

export function readLab(dir: string): LabFile {
  const file = path.join(dir, "lab.json");
  if (!fs.existsSync(file)) throw new TandemError("not_found", `${dir} holds no lab (no lab.json); start one with tandem lab up --dir ${dir}`);
  return JSON.parse(fs.readFileSync(file, "utf8")) as LabFile;
}

/** Start one lab node's daemon (it must be configured already); no-op when it runs. */
export async function startLabNode(dir: string, node: string): Promise<void> {
  const paths = nodePaths(dir, node);
  if (!fs.existsSync(paths.config)) throw new TandemError("not_found", `the lab in ${dir} has no node ${node}`);
  if (labProcessAlive(readPid(paths.pid), paths.config)) return;
  const logFd = fs.openSync(paths.log, "a", 0o600);
  const child = spawn(selfCommand()[0]!, [...selfCommand().slice(1), "node", "run", "--config", paths.config], {
    detached: true,
    stdio: ["ignore", logFd, logFd],
    cwd: paths.base,
    // As packaging/tandem.service runs the daemon (daemonEnvironment); a variable already set wins.
    env: { ...daemonEnvironment, ...process.env, TANDEM_SOCKET: paths.control },
  });
  fs.closeSync(logFd);
  const pid = child.pid;
  if (pid === undefined) throw new TandemError("internal", `could not start the daemon for node ${node}`);
  child.unref();
  fs.writeFileSync(paths.pid, `${pid}\n`);
  await waitForControl(paths.control, pid, paths.log);
}

/** Stop one lab node: SIGTERM, wait for it to drain, SIGKILL only if it does not stop in time. */
export async function stopLabNode(dir: string, node: string, signal: "SIGTERM" | "SIGKILL" = "SIGTERM"): Promise<boolean> {
  const paths = nodePaths(dir, node);
  const pid = readPid(paths.pid);
  if (!labProcessAlive(pid, paths.config)) {
    fs.rmSync(paths.pid, { force: true });
    return false;
  }
  if (signal === "SIGTERM") process.kill(pid!, "SIGCONT"); // a paused node must run to drain
  process.kill(pid!, signal);
  const deadline = Date.now() + stopTimeoutMs;
  while (processAlive(pid!) && Date.now() < deadline) await Bun.sleep(25);
  if (processAlive(pid!)) {
    process.kill(pid!, "SIGKILL");
    while (processAlive(pid!)) await Bun.sleep(25);
  }
  fs.rmSync(paths.pid, { force: true });
  return true;
}

/** Stop (SIGSTOP) or continue (SIGCONT) a lab node's daemon: a hung daemon, for drills. */
export function signalLabNode(dir: string, node: string, signal: "SIGSTOP" | "SIGCONT"): { node: string; paused: boolean } {
  const paths = nodePaths(path.resolve(dir), node);
  if (!fs.existsSync(paths.config)) throw new TandemError("not_found", `the lab in ${dir} has no node ${node}`);
  const pid = readPid(paths.pid);
  if (!labProcessAlive(pid, paths.config)) throw new TandemError("failed_precondition", `node ${node} is not running; start it with tandem lab start ${node}`);
  process.kill(pid!, signal);
  return { node, paused: signal === "SIGSTOP" };
}

async function waitForLink(client: ControlClient): Promise<void> {
  const deadline = Date.now() + startTimeoutMs;
  for (;;) {
    const status = await client.request<{ node: { link?: { connected?: boolean } } }>("GET", "/status");
    if (status.node.link?.connected) return;
    if (Date.now() > deadline) throw new TandemError("unavailable", "the lab's nodes did not pair within 30 s; see their node.log");
    await Bun.sleep(50);
  }
}

/** SIGTERM a process started by the lab (pid file + a marker in its command line), waiting for it. */
async function stopProcess(pidFile: string, marker: string): Promise<boolean> {
  const pid = readPid(pidFile);
  if (!labProcessAlive(pid, marker)) {
    fs.rmSync(pidFile, { force: true });
    return false;
  }
  process.kill(pid!, "SIGTERM");
  const deadline = Date.now() + stopTimeoutMs;
  while (processAlive(pid!) && Date.now() < deadline) await Bun.sleep(25);
  if (processAlive(pid!)) process.kill(pid!, "SIGKILL");
  fs.rmSync(pidFile, { force: true });
  return true;
}

/** The relay between the nodes runs as its own process (`tandem lab relay`), so it outlives `up`. */
async function startRelayProcess(dir: string): Promise<void> {
  const pidFile = path.join(dir, "relay.pid");
  const socket = path.join(dir, "relay.sock");
  if (labProcessAlive(readPid(pidFile), "lab relay")) return;
  fs.rmSync(socket, { force: true });
  const log = path.join(dir, "relay.log");
  const logFd = fs.openSync(log, "a", 0o600);
  const child = spawn(selfCommand()[0]!, [...selfCommand().slice(1), "lab", "relay", "--dir", dir], { detached: true, stdio: ["ignore", logFd, logFd], cwd: dir });
  fs.closeSync(logFd);
  if (child.pid === undefined) throw new TandemError("internal", "could not start the lab relay");
  child.unref();
  fs.writeFileSync(pidFile, `${child.pid}\n`);
  const deadline = Date.now() + startTimeoutMs;
  while (!fs.existsSync(socket)) {
    if (!processAlive(child.pid)) throw new TandemError("failed_precondition", `the lab relay exited during start-up; see ${log}`);
    if (Date.now() > deadline) throw new TandemError("unavailable", `the lab relay did not start within 30 s; see ${log}`);
    await Bun.sleep(25);
  }
}

/** Ask the lab's relay to cut, heal or delay the link; returns its state. */
export async function relayRequest<T>(dir: string, action: "cut" | "heal" | "delay" | "state", body: Record<string, unknown> = {}): Promise<T> {
  dir = path.resolve(dir);
  if (readLab(dir).direct) throw new TandemError("failed_precondition", `the lab in ${dir} links its nodes directly (lab up --direct): there is no relay to ${action === "state" ? "ask" : action}; start a lab without --direct for fault drills`);
  const socket = path.join(dir, "relay.sock");
  let response: Response;
  try {
    response = await fetch(`http://relay/${action}`, { method: action === "state" ? "GET" : "POST", unix: socket, body: action === "state" ? undefined : JSON.stringify(body) });
  } catch (error) {
    throw new TandemError("unavailable", `the lab relay does not answer on ${socket} (${(error as Error).message}); is the lab up?`);
  }
  const parsed = (await response.json()) as T | { error: { code: TandemError["code"]; message: string } };
  if (!response.ok) {
    const error = (parsed as { error: { code: TandemError["code"]; message: string } }).error;
    throw new TandemError(error.code, error.message);
  }
  return parsed as T;
}

export async function labInfo(dir: string): Promise<LabInfo> {
  const lab = readLab(dir);
  const nodes: LabNodeInfo[] = lab.nodes.map((node) => {
    const paths = nodePaths(dir, node);
    const pid = readPid(paths.pid);
    const running = labProcessAlive(pid, paths.config);
    return { name: node, control: paths.control, nbd: paths.nbd, dataDir: paths.dataDir, pid: running ? pid : null, running, paused: running && processStopped(pid!), log: paths.log };
  });
  let volumes: { name: string; size: number }[] = [];
  const reachable = nodes.find((node) => node.running && !node.paused);
  if (reachable) {
    const reply = await new ControlClient(reachable.control).request<{ volumes: VolumeView[] }>("GET", "/volumes");
    volumes = reply.volumes.map((volume) => ({ name: volume.name, size: volume.size }));
  }
  return { dir, nodes, volumes, witness: labWitnessState(dir) };
}

/**
 * Bring the lab up in `dir` (created if needed); idempotent: a running lab is left as it is.
 * `direct`: the nodes link straight to each other (what production does, and what benchmarks
 * measure) instead of through the relay the fault drills need; fixed when the lab is created.
 */
export async function labUp(dir: string, progress: (step: string) => void = () => {}, options: { direct?: boolean } = {}): Promise<LabInfo> {
  dir = path.resolve(dir);
  fs.mkdirSync(dir, { recursive: true, mode: 0o700 });
  const labFile = path.join(dir, "lab.json");
  if (!fs.existsSync(labFile)) {
    progress("writing node configs");
    const ports = freeLoopbackPorts(labNodeNames.length * 2);
    const lab: LabFile = {
      version: 2,
      nodes: [...labNodeNames],
      ports: {
        listen: Object.fromEntries(labNodeNames.map((node, index) => [node, ports[index]!])),
        relay: Object.fromEntries(labNodeNames.map((node, index) => [node, ports[labNodeNames.length + index]!])),
      },
      ...(options.direct ? { direct: true } : {}),
    };
    const secret = new Uint8Array(32);
    crypto.getRandomValues(secret);
    fs.writeFileSync(path.join(dir, "pairing.secret"), secret, { mode: 0o600 });
    fs.writeFileSync(path.join(dir, "cluster.id"), Buffer.from(crypto.getRandomValues(new Uint8Array(16))).toString("hex") + "\n");
    for (const node of lab.nodes) writeNodeConfig(dir, node, lab);
    fs.writeFileSync(labFile, JSON.stringify(lab, null, 2) + "\n");
  }
  const lab = readLab(dir);
  if (options.direct !== undefined && options.direct !== (lab.direct === true)) {
    throw new TandemError("failed_precondition", `the lab in ${dir} was created ${lab.direct ? "with" : "without"} --direct; remove it (lab down, then delete ${dir}) to change how its nodes link`);
  }
  // The witness both nodes name (DIR/witness.img), served so that drills can fail or hang it.
  progress("starting the witness");
  const witness = await startLabWitness(dir);
  if (witness.created) {
    progress("formatting the witness");
    const clusterId = parseClusterId(fs.readFileSync(path.join(dir, "cluster.id"), "utf8").trim());
    await formatWitness(path.join(dir, "witness.img"), { clusterId, timing: defaultQuorumTiming, force: false, nowMs: Date.now() });
  }
  if (!lab.direct) {
    progress("starting the link relay");
    await startRelayProcess(dir);
  }
  for (const node of lab.nodes) {
    progress(`starting node ${node}`);
    await startLabNode(dir, node);
  }
  const primary = nodePaths(dir, lab.nodes[0]!);
  const client = new ControlClient(primary.control);
  progress("waiting for the nodes to pair");
  await waitForLink(client);
  const existing = await client.request<{ volumes: VolumeView[] }>("GET", "/volumes");
  if (!existing.volumes.some((volume) => volume.name === labDemoVolume)) {
    progress(`creating volume ${labDemoVolume}`);
    await client.request("POST", "/volumes", { name: labDemoVolume, size: labDemoVolumeBytes });
  }
  return labInfo(dir);
}

/** Stop every process the lab started. The data stays, so `up` brings the same cluster back. */
export async function labDown(dir: string, progress: (step: string) => void = () => {}): Promise<{ dir: string; stopped: string[] }> {
  dir = path.resolve(dir);
  const lab = readLab(dir);
  const stopped: string[] = [];
  for (const node of [...lab.nodes].reverse()) {
    progress(`stopping node ${node}`);
    if (await stopLabNode(dir, node)) stopped.push(node);
  }
  progress("stopping the link relay");
  if (await stopProcess(path.join(dir, "relay.pid"), "lab relay")) stopped.push("relay");
  progress("stopping the witness");
  if (await stopLabWitness(dir)) stopped.push("witness");
  return { dir, stopped };
}
