// The lab's witness: a 1 MiB image served by qemu-storage-daemon as a FUSE file (DIR/witness.img,
// the path both lab nodes name), so witness faults are real IO faults the nodes' drivers see, not
// flags inside the daemon:
//   - fail: QMP blockdev-reopen points the exported throttle node at a blkdebug node that fails
//     every read and write with EIO (not flushes: a heal reopens the node, which flushes the failing
//     child first, and a failed flush there would refuse the heal once the nodes have written);
//   - hang: the storage daemon is stopped (SIGSTOP): every witness IO blocks in the kernel until it
//     is continued, exactly as a witness whose path stopped answering;
//   - heal: continue it and point the export back at the image.
// (A throttle group could stall IO too, but QEMU drains throttled requests before it changes their
// limits, so a stall made that way cannot be healed at once; stopping the server can.)
// Without qemu-storage-daemon or /dev/fuse the lab falls back to a plain file and has no witness
// drills. The process is started detached like the relay (pid in DIR/witness.pid, log in
// DIR/witness.log) and stopped by that pid.
import { spawn, spawnSync } from "node:child_process";
import fs from "node:fs";
import net from "node:net";
import path from "node:path";
import { TandemError } from "../../common/errors.ts";

export const labWitnessImageBytes = 1024 * 1024;
const startTimeoutMs = 30_000;
const stopTimeoutMs = 30_000;

export interface LabWitnessState {
  /** fuse: served by qemu-storage-daemon (drills work); file: a plain file; absent: none yet. */
  mode: "fuse" | "file" | "absent";
  path: string;
  pid: number | null;
  running: boolean;
  /** Every witness IO fails with EIO (witness-fail). */
  failing: boolean;
  /** The storage daemon is stopped: every witness IO hangs (witness-hang). */
  hung: boolean;
}

function paths(dir: string) {
  return {
    disk: path.join(dir, "witness.disk"),
    image: path.join(dir, "witness.img"),
    qmp: path.join(dir, "witness.qmp"),
    pid: path.join(dir, "witness.pid"),
    log: path.join(dir, "witness.log"),
    state: path.join(dir, "witness.state"),
  };
}

function which(program: string): string | undefined {
  for (const directory of (process.env.PATH ?? "/usr/sbin:/usr/bin:/sbin:/bin").split(":")) {
    const candidate = path.join(directory, program);
    if (fs.existsSync(candidate)) return candidate;
  }
  return undefined;
}

function readPid(file: string): number | null {
  try {
    const pid = Number(fs.readFileSync(file, "utf8").trim());
    return Number.isInteger(pid) && pid > 0 ? pid : null;
  } catch {
    return null;
  }
}

/** The pid runs the storage daemon serving this lab's witness (not a recycled pid). */
function serverAlive(pid: number | null, dir: string): boolean {
  if (pid === null) return false;
  try {
    return fs.readFileSync(`/proc/${pid}/cmdline`, "utf8").includes(paths(dir).image);
  } catch {
    return false;
  }
}

/** The process is stopped (SIGSTOP): state T in /proc/PID/stat. */
export function processStopped(pid: number): boolean {
  try {
    const stat = fs.readFileSync(`/proc/${pid}/stat`, "utf8");
    return stat.slice(stat.lastIndexOf(")") + 2).startsWith("T");
  } catch {
    return false;
  }
}

function mounted(file: string): boolean {
  try {
    return fs.readFileSync("/proc/mounts", "utf8").split("\n").some((line) => line.split(" ")[1] === file);
  } catch {
    return false;
  }
}

function readFlags(dir: string): { failing: boolean } {
  try {
    return JSON.parse(fs.readFileSync(paths(dir).state, "utf8")) as { failing: boolean };
  } catch {
    return { failing: false };
  }
}

function writeFlags(dir: string, flags: { failing: boolean }): void {
  fs.writeFileSync(paths(dir).state, JSON.stringify(flags) + "\n");
}

export function labWitnessState(dir: string): LabWitnessState {
  const files = paths(dir);
  const pid = readPid(files.pid);
  const running = serverAlive(pid, dir);
  const mode = fs.existsSync(files.disk) ? "fuse" : fs.existsSync(files.image) ? "file" : "absent";
  return { mode, path: files.image, pid: running ? pid : null, running, failing: running && readFlags(dir).failing, hung: running && processStopped(pid!) };
}

/** Whether this machine can serve the lab witness over FUSE. */
export function fuseWitnessAvailable(): boolean {
  return which("qemu-storage-daemon") !== undefined && fs.existsSync("/dev/fuse");
}

/**
 * Create (first time) and start the lab witness. Returns whether it is new (it then needs
 * formatting). A lab created where FUSE is not available keeps a plain file.
 */
export async function startLabWitness(dir: string): Promise<{ created: boolean; mode: LabWitnessState["mode"] }> {
  const files = paths(dir);
  let created = false;
  if (!fs.existsSync(files.disk) && !fs.existsSync(files.image)) {
    created = true;
    if (fuseWitnessAvailable()) fs.writeFileSync(files.disk, new Uint8Array(labWitnessImageBytes), { mode: 0o600 });
  }
  if (!fs.existsSync(files.disk)) {
    if (!fs.existsSync(files.image)) fs.writeFileSync(files.image, new Uint8Array(labWitnessImageBytes), { mode: 0o600 });
    return { created, mode: "file" };
  }
  if (serverAlive(readPid(files.pid), dir)) return { created, mode: "fuse" };
  // A server killed without unmounting leaves a dead mount behind: take it away first.
  if (mounted(files.image)) spawnSync("umount", ["-l", files.image], { stdio: "ignore" });
  if (!fs.existsSync(files.image)) fs.writeFileSync(files.image, "", { mode: 0o600 });
  fs.rmSync(files.qmp, { force: true });
  writeFlags(dir, { failing: false });
  const args = [
    "--blockdev", `driver=file,node-name=image,filename=${files.disk},cache.direct=on`,
    "--blockdev", JSON.stringify({ driver: "blkdebug", "node-name": "failing", image: "image", "inject-error": [{ event: "none", iotype: "read", errno: 5 }, { event: "none", iotype: "write", errno: 5 }] }),
    "--object", "throttle-group,id=witness-group",
    "--blockdev", "driver=throttle,node-name=witness,throttle-group=witness-group,file=image",
    "--export", `type=fuse,id=witness,node-name=witness,mountpoint=${files.image},writable=on`,
    "--chardev", `socket,id=qmp,path=${files.qmp},server=on,wait=off`,
    "--monitor", "chardev=qmp",
  ];
  const logFd = fs.openSync(files.log, "a", 0o600);
  const child = spawn(which("qemu-storage-daemon")!, args, { detached: true, stdio: ["ignore", logFd, logFd], cwd: dir });
  fs.closeSync(logFd);
  if (child.pid === undefined) throw new TandemError("internal", "could not start qemu-storage-daemon for the lab witness");
  // Watch the child itself: until it has exec'd, /proc/PID/cmdline still shows our own command line.
  let exited = false;
  child.on("exit", () => (exited = true));
  child.unref();
  fs.writeFileSync(files.pid, `${child.pid}\n`);
  const deadline = Date.now() + startTimeoutMs;
  while (!(fs.existsSync(files.qmp) && mounted(files.image))) {
    if (exited) {
      const tail = fs.existsSync(files.log) ? fs.readFileSync(files.log, "utf8").trim().split("\n").slice(-3).join("\n") : "";
      throw new TandemError("failed_precondition", `qemu-storage-daemon exited while starting the lab witness; the end of ${files.log}:\n${tail}`);
    }
    if (Date.now() > deadline) throw new TandemError("unavailable", `the lab witness was not served within ${startTimeoutMs / 1000} s; see ${files.log}`);
    await Bun.sleep(25);
  }
  return { created, mode: "fuse" };
}

/** Stop the witness server (continue it first if a drill stopped it). The image stays. */
export async function stopLabWitness(dir: string): Promise<boolean> {
  const files = paths(dir);
  const pid = readPid(files.pid);
  if (!serverAlive(pid, dir)) {
    fs.rmSync(files.pid, { force: true });
    return false;
  }
  process.kill(pid!, "SIGCONT");
  process.kill(pid!, "SIGTERM");
  const deadline = Date.now() + stopTimeoutMs;
  while (serverAlive(pid, dir) && Date.now() < deadline) await Bun.sleep(25);
  if (serverAlive(pid, dir)) process.kill(pid!, "SIGKILL");
  while (serverAlive(pid, dir)) await Bun.sleep(25);
  if (mounted(files.image)) spawnSync("umount", ["-l", files.image], { stdio: "ignore" });
  fs.rmSync(files.pid, { force: true });
  return true;
}

/** One QMP command on the storage daemon's monitor socket (greeting, capabilities, command). */
async function qmp(socket: string, command: Record<string, unknown>, timeoutMs = 10_000): Promise<unknown> {
  return new Promise((resolve, reject) => {
    const connection = net.createConnection(socket);
    const timer = setTimeout(() => {
      connection.destroy();
      reject(new TandemError("unavailable", `the lab witness server does not answer on ${socket} within ${timeoutMs / 1000} s`));
    }, timeoutMs);
    let buffer = "";
    let stage = 0;
    connection.on("error", (error) => {
      clearTimeout(timer);
      reject(new TandemError("unavailable", `the lab witness server's monitor ${socket}: ${error.message}`));
    });
    connection.on("data", (chunk) => {
      buffer += chunk.toString();
      let newline: number;
      while ((newline = buffer.indexOf("\n")) >= 0) {
        const line = buffer.slice(0, newline).trim();
        buffer = buffer.slice(newline + 1);
        if (!line) continue;
        const message = JSON.parse(line) as { QMP?: unknown; return?: unknown; error?: { desc: string }; event?: string };
        if (message.event) continue;
        if (stage === 0 && message.QMP) {
          stage = 1;
          connection.write(JSON.stringify({ execute: "qmp_capabilities" }) + "\n");
        } else if (stage === 1) {
          stage = 2;
          connection.write(JSON.stringify(command) + "\n");
        } else if (stage === 2) {
          clearTimeout(timer);
          connection.end();
          if (message.error) reject(new TandemError("failed_precondition", `the lab witness server refused ${JSON.stringify(command.execute)}: ${message.error.desc}`));
          else resolve(message.return);
        }
      }
    });
  });
}

function reopenOn(child: "image" | "failing") {
  return { execute: "blockdev-reopen", arguments: { options: [{ driver: "throttle", "node-name": "witness", "throttle-group": "witness-group", file: child }] } };
}

/** Drive a witness drill; returns the witness state after it. */
export async function labWitnessDrill(dir: string, drill: "fail" | "hang" | "heal"): Promise<LabWitnessState> {
  const state = labWitnessState(dir);
  if (state.mode !== "fuse") throw new TandemError("failed_precondition", `the lab witness in ${dir} is a plain file (qemu-storage-daemon or /dev/fuse was missing when the lab was made): it has no drills`);
  if (!state.running) throw new TandemError("unavailable", `the lab witness server is not running; start the lab with tandem lab up --dir ${dir}`);
  const files = paths(dir);
  switch (drill) {
    case "fail":
      if (state.hung) throw new TandemError("failed_precondition", "the witness hangs: heal it first (tandem lab witness-heal)");
      await qmp(files.qmp, reopenOn("failing"));
      writeFlags(dir, { failing: true });
      break;
    case "hang":
      process.kill(state.pid!, "SIGSTOP");
      break;
    case "heal":
      process.kill(state.pid!, "SIGCONT");
      await qmp(files.qmp, reopenOn("image"));
      writeFlags(dir, { failing: false });
      break;
  }
  return labWitnessState(dir);
}
