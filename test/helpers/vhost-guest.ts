// Boots a throw-away QEMU guest (TCG here: this machine class's KVM cannot run a stock kernel)
// whose one disk is a vhost-user-blk device on a given socket, runs a busybox-sh script in it and
// returns what it printed. Self-contained: the base initramfs (static busybox, test/helpers/guest/init,
// the kernel's virtio modules, the host's fio with its libraries) is built here from the Debian
// packages packaging/setup.sh installs, and cached per kernel and init script. On top:
//  - `reconnect`: the chardev gets `reconnect=1`, so QEMU reconnects when the back-end restarts;
//  - `ext4`: the host's mke2fs (with its libraries and mke2fs.conf) and the guest kernel's ext4
//    module chain are added to the initramfs, because busybox can only make ext2 and the Debian
//    kernel has ext4 as a module;
//  - `marks`: lines the script writes to the console as `TANDEM_MARK name` are reported while the
//    guest runs, so a test can act at a given point of the workload (kill the back-end mid-IO).
// Every run is bounded (guest-side timeout, host-side wall clock) and QEMU is killed by its PID.
import fs from "node:fs";
import os from "node:os";
import path from "node:path";

export interface GuestOptions {
  socket: string;
  script: string;
  /** Scratch directory (the initramfs cache lives in `<labDir>/cache`). */
  labDir: string;
  queues?: number;
  smp?: number;
  memoryMb?: number;
  reconnect?: boolean;
  ext4?: boolean;
  timeoutSeconds?: number;
  onMark?: (mark: string) => void;
}

export interface GuestResult {
  ok: boolean;
  rc: number;
  /** The script's stdout (when it did not write /tmp/result.json). */
  output: string;
  /** The parsed /tmp/result.json when the script wrote one (fio JSON). */
  json: unknown;
  stderr: string;
  console: string;
  qemuStderr: string;
  wallSeconds: number;
}

function run(command: string[], env: Record<string, string> = {}): { code: number; stdout: string; stderr: string } {
  const result = Bun.spawnSync(command, { env: { ...process.env, ...env }, stdout: "pipe", stderr: "pipe" });
  return { code: result.exitCode ?? -1, stdout: result.stdout.toString(), stderr: result.stderr.toString() };
}

function kernel(): { path: string; version: string } {
  const kernels = fs.readdirSync("/boot").filter((name) => name.startsWith("vmlinuz-")).sort((a, b) => a.localeCompare(b, undefined, { numeric: true }));
  const name = kernels[kernels.length - 1];
  if (!name) throw new Error("no guest kernel in /boot (apt-get install linux-image-amd64)");
  return { path: path.join("/boot", name), version: name.slice("vmlinuz-".length) };
}

const guestInit = path.join(import.meta.dir, "guest", "init");

function decompressModule(source: string, target: string): void {
  if (source.endsWith(".xz")) fs.writeFileSync(target, run(["xz", "-dc", source]).stdout);
  else if (source.endsWith(".zst")) fs.writeFileSync(target, run(["zstd", "-qdc", source]).stdout);
  else if (source.endsWith(".gz")) fs.writeFileSync(target, run(["gzip", "-dc", source]).stdout);
  else fs.copyFileSync(source, target);
}

/** Module files (relative to the module tree) for `wanted`, dependencies first; built-in ones are absent. */
function moduleChain(moduleRoot: string, wanted: string[]): string[] {
  const dependencies = new Map<string, string[]>();
  for (const line of fs.readFileSync(path.join(moduleRoot, "modules.dep"), "utf8").split("\n")) {
    const [name, rest] = line.split(":");
    if (name) dependencies.set(name.trim(), (rest ?? "").split(/\s+/).filter(Boolean));
  }
  const byName = new Map<string, string>();
  for (const file of dependencies.keys()) byName.set(path.basename(file).replace(/\.ko.*$/, "").replaceAll("-", "_"), file);
  const order: string[] = [];
  const visit = (file: string) => {
    for (const dependency of [...(dependencies.get(file) ?? [])].reverse()) visit(dependency);
    if (!order.includes(file)) order.push(file);
  };
  for (const name of wanted) {
    const file = byName.get(name);
    if (file) visit(file);
  }
  return order;
}

/** Copy `wanted` kernel modules and their dependencies into `directory`; their names in load order. */
function copyModules(version: string, directory: string, wanted: string[]): string[] {
  const moduleRoot = path.join("/lib/modules", version);
  fs.mkdirSync(directory, { recursive: true });
  const names: string[] = [];
  for (const relative of moduleChain(moduleRoot, wanted)) {
    const name = path.basename(relative).replace(/\.ko.*$/, "");
    decompressModule(path.join(moduleRoot, relative), path.join(directory, `${name}.ko`));
    names.push(name);
  }
  return names;
}

/** The base initramfs: static busybox, our /init, the virtio modules and fio; built once per key. */
function baseInitramfs(labDir: string): string {
  const { version } = kernel();
  const fio = Bun.which("fio");
  if (!fio) throw new Error("fio is not installed (packaging/setup.sh installs it)");
  if (!fs.existsSync("/bin/busybox") || run(["ldd", "/bin/busybox"]).code === 0) throw new Error("/bin/busybox is not the static one (apt-get install busybox-static)");
  const hasher = new Bun.CryptoHasher("md5");
  hasher.update(fs.readFileSync(guestInit));
  hasher.update(version);
  for (const file of [fio, "/bin/busybox"]) hasher.update(`${file}:${fs.statSync(file).size}:${fs.statSync(file).mtimeMs}`);
  const base = path.join(labDir, "cache", `initramfs-${version}-${hasher.digest("hex").slice(0, 12)}.cpio`);
  if (fs.existsSync(base)) return base;
  fs.mkdirSync(path.dirname(base), { recursive: true });
  const root = fs.mkdtempSync(path.join(path.dirname(base), "root-"));
  try {
    for (const directory of ["bin", "sbin", "lib/modules", "lib64", "proc", "sys", "dev", "tmp", "etc"]) fs.mkdirSync(path.join(root, directory), { recursive: true });
    fs.copyFileSync("/bin/busybox", path.join(root, "bin/busybox"));
    fs.chmodSync(path.join(root, "bin/busybox"), 0o755);
    fs.copyFileSync(guestInit, path.join(root, "init"));
    fs.chmodSync(path.join(root, "init"), 0o755);
    const names = copyModules(version, path.join(root, "lib/modules"), ["virtio_pci", "virtio_blk"]);
    fs.writeFileSync(path.join(root, "modules.order"), names.join("\n") + "\n");
    addBinary(root, fio, "bin/fio");
    fs.copyFileSync(fs.realpathSync("/lib64/ld-linux-x86-64.so.2"), path.join(root, "lib64/ld-linux-x86-64.so.2"));
    const temporary = `${base}.tmp`;
    const packed = run(["bash", "-c", `cd "${root}" && find . -print0 | cpio --null -o -H newc --quiet > "${temporary}"`]);
    if (packed.code !== 0) throw new Error(`cpio failed: ${packed.stderr}`);
    fs.renameSync(temporary, base);
  } finally {
    fs.rmSync(root, { recursive: true, force: true });
  }
  return base;
}

/** A workload running fio on the disk with the given arguments; its JSON report becomes the result. */
export function fioScript(args: string): string {
  return `fio --name=job --filename="$DEV" --direct=1 --ioengine=libaio ${args} --output-format=json --output=/tmp/result.json`;
}

/** Copy a host binary and every library it links into `root`. */
function addBinary(root: string, binary: string, as: string): void {
  fs.mkdirSync(path.join(root, path.dirname(as)), { recursive: true });
  fs.copyFileSync(binary, path.join(root, as));
  fs.chmodSync(path.join(root, as), 0o755);
  const ldd = run(["ldd", binary]).stdout;
  for (const match of ldd.matchAll(/=> (\/\S+)/g)) {
    const library = match[1]!;
    const target = path.join(root, library);
    fs.mkdirSync(path.dirname(target), { recursive: true });
    fs.copyFileSync(fs.realpathSync(library), target);
  }
}

function addExt4(root: string): void {
  addBinary(root, "/usr/sbin/mke2fs", "opt/tandem/mke2fs");
  fs.mkdirSync(path.join(root, "etc"), { recursive: true });
  if (fs.existsSync("/etc/mke2fs.conf")) fs.copyFileSync("/etc/mke2fs.conf", path.join(root, "etc/mke2fs.conf"));
  // ext4 and what modules.dep says it needs; crc32c_generic is only its soft dependency, named here.
  const directory = path.join(root, "lib/modules/extra");
  const order = copyModules(kernel().version, directory, ["crc32c_generic", "ext4"]);
  fs.writeFileSync(path.join(directory, "order"), order.join("\n") + "\n");
}

/**
 * Shell lines that load the ext4 modules added by `ext4: true` and set $MKE2FS to the host's mke2fs
 * (busybox's own mke2fs, first on PATH, makes ext2 only).
 */
export const loadExt4 = "MKE2FS=/opt/tandem/mke2fs; for m in $(cat /lib/modules/extra/order); do insmod /lib/modules/extra/$m.ko || exit 90; done";

export async function runGuest(options: GuestOptions): Promise<GuestResult> {
  const kernelPath = kernel().path;
  const timeoutSeconds = options.timeoutSeconds ?? 120;
  const memoryMb = options.memoryMb ?? 512;
  fs.mkdirSync(options.labDir, { recursive: true });
  const base = baseInitramfs(options.labDir);
  const runDir = fs.mkdtempSync(path.join(options.labDir, "guest-"));
  try {
    const root = path.join(runDir, "w");
    fs.mkdirSync(root);
    fs.writeFileSync(path.join(root, "workload.sh"), `DEV=$1; export DEV\n${options.script}\n`);
    if (options.ext4) addExt4(root);
    const workCpio = path.join(runDir, "work.cpio");
    const packed = run(["bash", "-c", `cd "${root}" && find . | cpio -o -H newc --quiet > "${workCpio}"`]);
    if (packed.code !== 0) throw new Error(`cpio failed: ${packed.stderr}`);
    const initrd = path.join(runDir, "initrd.cpio");
    fs.writeFileSync(initrd, Buffer.concat([fs.readFileSync(base), fs.readFileSync(workCpio)]));
    const consoleLog = path.join(runDir, "console.log");
    const resultLog = path.join(runDir, "result.txt");
    fs.writeFileSync(resultLog, "");
    const append = `console=ttyS0 quiet loglevel=1 panic=-1 edd=off nokaslr tsc=reliable mitigations=off tandem.timeout=${timeoutSeconds}`;
    const chardev = `socket,id=vu0,path=${options.socket}${options.reconnect ? ",reconnect=1" : ""}`;
    const command = [
      "qemu-system-x86_64", "-accel", "tcg,thread=multi", "-cpu", "max", "-m", String(memoryMb), "-smp", String(options.smp ?? 1),
      "-nodefaults", "-no-user-config", "-nographic", "-no-reboot",
      "-object", `memory-backend-memfd,id=mem0,size=${memoryMb}M,share=on`, "-machine", "pc,memory-backend=mem0",
      "-kernel", kernelPath, "-initrd", initrd, "-append", append,
      "-chardev", `file,id=con0,path=${consoleLog}`, "-serial", "chardev:con0",
      "-chardev", `file,id=res0,path=${resultLog}`, "-serial", "chardev:res0",
      "-chardev", chardev, "-device", `vhost-user-blk-pci,chardev=vu0,num-queues=${options.queues ?? 1}`,
    ];
    const started = performance.now();
    const qemu = Bun.spawn(command, { stdout: "ignore", stderr: "pipe" });
    const wallMs = (timeoutSeconds + 120) * 1000;
    const killer = setTimeout(() => qemu.kill("SIGKILL"), wallMs);
    const seen = new Set<string>();
    const watcher = setInterval(() => {
      if (!options.onMark || !fs.existsSync(consoleLog)) return;
      for (const match of fs.readFileSync(consoleLog, "latin1").matchAll(/TANDEM_MARK (\S+)/g)) {
        if (!seen.has(match[1]!)) {
          seen.add(match[1]!);
          options.onMark(match[1]!);
        }
      }
    }, 50);
    const stderrText = new Response(qemu.stderr).text();
    await qemu.exited;
    clearTimeout(killer);
    clearInterval(watcher);
    const consoleText = fs.existsSync(consoleLog) ? fs.readFileSync(consoleLog, "latin1") : "";
    const line = [fs.readFileSync(resultLog, "latin1"), consoleText].map((text) => /TANDEM_RESULT (\{.*\})/.exec(text)?.[1]).find(Boolean);
    const qemuStderr = await stderrText;
    if (!line) {
      throw new Error(`guest produced no result (qemu exit ${qemu.exitCode}); qemu: ${qemuStderr.slice(-1500)}; console: ${consoleText.slice(-1500)}`);
    }
    const result = JSON.parse(line) as { ok: boolean; rc: number; stderr_b64: string; result: unknown };
    const decode = (text: string) => Buffer.from(text, "base64").toString();
    return {
      ok: result.ok,
      rc: result.rc,
      output: typeof result.result === "string" ? decode(result.result) : "",
      json: typeof result.result === "string" ? undefined : result.result,
      stderr: decode(result.stderr_b64 ?? ""),
      console: consoleText,
      qemuStderr,
      wallSeconds: (performance.now() - started) / 1000,
    };
  } finally {
    fs.rmSync(runDir, { recursive: true, force: true });
  }
}

/** A scratch lab directory shared by the vhost e2e tests and benchmark (keeps the initramfs cache). */
export function vhostLabDirectory(): string {
  const directory = path.join(os.tmpdir(), "tandem-vhost-lab");
  fs.mkdirSync(directory, { recursive: true });
  return directory;
}
