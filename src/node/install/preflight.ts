// The install wizard's preflight (`tandem install` will run it on each node before pairing): what
// must hold on this machine for a safe two-node box, each check a plain verdict with the reason and
// the fix. Two halves, as everywhere in Tandem: `gatherFacts` reads the machine (the witness path,
// /dev/watchdog*, /sys/block and /proc/mounts, a TCP round trip to the peer's replication port and
// the MTU of the interface that reaches it, the clock's synchronisation), and `assessPreflight`
// judges those facts without IO, so every verdict is tested from plain data.
// Clock skew against the peer needs the peer's clock, which only the pairing step can read: it is
// judged when the offset is given and reported as "skip" until then.
import fs from "node:fs";
import net from "node:net";
import path from "node:path";
import {
  preflightClockSkewMsMax,
  preflightLinkMtuBytesMin,
  preflightLinkRttMsMax,
  preflightLinkRttMsWarn,
  preflightLinkRttProbes,
  preflightLinkRttTimeoutMs,
  preflightWitnessBytesMin,
} from "../../constants.ts";

export type CheckStatus = "ok" | "warn" | "fail" | "skip";

export interface PreflightCheck {
  id: "witness" | "witness-same" | "watchdog" | "disks" | "link-rtt" | "link-mtu" | "clock-sync" | "clock-skew";
  status: CheckStatus;
  /** What was found, in one sentence. */
  detail: string;
  /** What to do about a warn or fail. */
  fix?: string;
}

export interface WitnessFacts {
  path: string;
  /** Could be opened for reading and writing. */
  reachable: boolean;
  error?: string;
  kind: "block-device" | "file" | "missing" | "other";
  sizeBytes: number;
  /** The /dev/disk/by-id name of the device, when one points at it. */
  byId: string | null;
}

export interface DiskFacts {
  name: string;
  sizeBytes: number;
  partitions: number;
  mounted: boolean;
  holders: number;
}

export interface PreflightFacts {
  witness: WitnessFacts | null;
  /** The witness id the peer reports (pairing); null before pairing. */
  peerWitnessId: string | null;
  watchdogs: string[];
  disks: DiskFacts[];
  /** TCP handshake times to the peer's replication port; empty when it could not be reached. */
  linkRttMs: number[];
  linkError?: string;
  /** The MTU of the interface that routes to the peer; null when unknown. */
  linkMtuBytes: number | null;
  linkInterface: string | null;
  /** The system clock is synchronised (NTP); null when that cannot be told. */
  clockSynchronised: boolean | null;
  /** This clock minus the peer's (ms); null before pairing. */
  clockOffsetMs: number | null;
}

/**
 * The link's round trip from timed TCP handshakes: the fastest. What the cable adds is in every
 * probe; what a busy machine adds (the measuring process waiting for a CPU) only ever adds, so the
 * minimum is the link and the median would be the load.
 */
export function linkRoundTripMs(samplesMs: number[]): number {
  return Math.min(...samplesMs);
}

/** Verdicts on the facts; no IO. */
export function assessPreflight(facts: PreflightFacts): PreflightCheck[] {
  const checks: PreflightCheck[] = [];
  const witness = facts.witness;
  if (!witness) checks.push({ id: "witness", status: "fail", detail: "no witness named", fix: "name the shared witness disk (--witness /dev/disk/by-id/...)" });
  else if (!witness.reachable) checks.push({ id: "witness", status: "fail", detail: `${witness.path} cannot be opened: ${witness.error ?? witness.kind}`, fix: "check that both nodes see the shared disk (multipath, SAS cabling) and that it is not in use" });
  else if (witness.sizeBytes < preflightWitnessBytesMin) checks.push({ id: "witness", status: "fail", detail: `${witness.path} holds ${witness.sizeBytes} bytes; the witness needs at least ${preflightWitnessBytesMin}`, fix: "use a larger partition or LUN" });
  else if (witness.kind === "block-device" && !witness.byId) checks.push({ id: "witness", status: "warn", detail: `${witness.path} has no /dev/disk/by-id name: kernel names like /dev/sdb can change at boot`, fix: "name it by its /dev/disk/by-id path" });
  else checks.push({ id: "witness", status: "ok", detail: `${witness.path} is reachable${witness.byId ? ` (id ${witness.byId})` : ""}` });

  if (facts.peerWitnessId === null) checks.push({ id: "witness-same", status: "skip", detail: "the peer's view of the witness is compared during pairing" });
  else if (witness?.byId && witness.byId === facts.peerWitnessId) checks.push({ id: "witness-same", status: "ok", detail: `both nodes see ${witness.byId}` });
  else checks.push({ id: "witness-same", status: "fail", detail: `this node sees ${witness?.byId ?? "no id"}, the peer ${facts.peerWitnessId}: not the same device`, fix: "name the same shared disk on both nodes" });

  if (facts.watchdogs.length > 0) checks.push({ id: "watchdog", status: "ok", detail: `watchdog ${facts.watchdogs.join(", ")}` });
  else checks.push({ id: "watchdog", status: "warn", detail: "no /dev/watchdog: a hung node cannot be reset by the hardware", fix: "enable the board's watchdog (iTCO_wdt, ipmi_watchdog) or load softdog" });

  const free = facts.disks.filter((disk) => disk.partitions === 0 && !disk.mounted && disk.holders === 0);
  if (free.length > 0) checks.push({ id: "disks", status: "ok", detail: `free disks: ${free.map((disk) => `${disk.name} (${Math.round(disk.sizeBytes / 1e9)} GB)`).join(", ")}` });
  else checks.push({ id: "disks", status: "warn", detail: "no free disk (every disk is partitioned, mounted or in use)", fix: "volumes will be files in the data directory; or free a disk for them" });

  if (facts.linkRttMs.length === 0) checks.push({ id: "link-rtt", status: "fail", detail: `the peer's replication port does not answer: ${facts.linkError ?? "no answer"}`, fix: "check the cable, the addresses and that the peer's installer is waiting" });
  else {
    const rtt = linkRoundTripMs(facts.linkRttMs);
    const detail = `round trip ${rtt.toFixed(2)} ms (best of ${facts.linkRttMs.length})`;
    if (rtt > preflightLinkRttMsMax) checks.push({ id: "link-rtt", status: "fail", detail, fix: `every mirrored write waits one round trip: use a direct link under ${preflightLinkRttMsMax} ms` });
    else if (rtt > preflightLinkRttMsWarn) checks.push({ id: "link-rtt", status: "warn", detail, fix: `a direct cable gives under ${preflightLinkRttMsWarn} ms; every mirrored write waits one round trip` });
    else checks.push({ id: "link-rtt", status: "ok", detail });
  }

  if (facts.linkMtuBytes === null) checks.push({ id: "link-mtu", status: "skip", detail: "the interface to the peer is not known" });
  else if (facts.linkMtuBytes < preflightLinkMtuBytesMin) checks.push({ id: "link-mtu", status: "warn", detail: `MTU ${facts.linkMtuBytes} on ${facts.linkInterface}`, fix: `set the replication interface's MTU to at least ${preflightLinkMtuBytesMin} (9000 on a direct cable)` });
  else checks.push({ id: "link-mtu", status: "ok", detail: `MTU ${facts.linkMtuBytes} on ${facts.linkInterface}` });

  if (facts.clockSynchronised === null) checks.push({ id: "clock-sync", status: "skip", detail: "cannot tell whether the clock is synchronised (no timedatectl)" });
  else if (facts.clockSynchronised) checks.push({ id: "clock-sync", status: "ok", detail: "the system clock is synchronised" });
  else checks.push({ id: "clock-sync", status: "warn", detail: "the system clock is not synchronised", fix: "enable NTP (timedatectl set-ntp true) so logs and events of both nodes line up" });

  if (facts.clockOffsetMs === null) checks.push({ id: "clock-skew", status: "skip", detail: "the peer's clock is compared during pairing" });
  else if (Math.abs(facts.clockOffsetMs) > preflightClockSkewMsMax) checks.push({ id: "clock-skew", status: "fail", detail: `the clocks are ${(facts.clockOffsetMs / 1000).toFixed(1)} s apart`, fix: `synchronise both clocks (NTP) to within ${preflightClockSkewMsMax / 1000} s` });
  else checks.push({ id: "clock-skew", status: "ok", detail: `the clocks are ${Math.abs(facts.clockOffsetMs)} ms apart` });
  return checks;
}

/** Whether the install may go on: no check failed. */
export function preflightPassed(checks: PreflightCheck[]): boolean {
  return checks.every((check) => check.status !== "fail");
}

// ---- gathering facts (IO)

function witnessFacts(witnessPath: string, byIdDir: string): WitnessFacts {
  let stat: fs.Stats;
  try {
    stat = fs.statSync(witnessPath);
  } catch (error) {
    return { path: witnessPath, reachable: false, error: (error as Error).message, kind: "missing", sizeBytes: 0, byId: null };
  }
  const kind = stat.isBlockDevice() ? "block-device" : stat.isFile() ? "file" : "other";
  let byId: string | null = null;
  const real = fs.realpathSync(witnessPath);
  if (path.dirname(witnessPath) === byIdDir) byId = path.basename(witnessPath);
  else if (fs.existsSync(byIdDir)) byId = fs.readdirSync(byIdDir).find((name) => fs.realpathSync(path.join(byIdDir, name)) === real) ?? null;
  try {
    const fd = fs.openSync(witnessPath, fs.constants.O_RDWR);
    try {
      const sizeBytes = kind === "block-device" ? Number(fs.readFileSync(`/sys/class/block/${path.basename(real)}/size`, "utf8").trim()) * 512 : fs.fstatSync(fd).size;
      return { path: witnessPath, reachable: true, kind, sizeBytes, byId };
    } finally {
      fs.closeSync(fd);
    }
  } catch (error) {
    return { path: witnessPath, reachable: false, error: (error as Error).message, kind, sizeBytes: 0, byId };
  }
}

/** Whole disks from /sys/block (no loop, RAM, optical or virtual-mapper devices). */
function diskFacts(sysBlock: string, mounts: string): DiskFacts[] {
  if (!fs.existsSync(sysBlock)) return [];
  const mountedDevices = new Set(mounts.split("\n").map((line) => line.split(" ")[0] ?? "").filter((device) => device.startsWith("/dev/")).map((device) => path.basename(device)));
  return fs
    .readdirSync(sysBlock)
    .filter((name) => !/^(loop|ram|zram|sr|dm-|md|nbd|fd)/.test(name))
    .map((name) => {
      const base = path.join(sysBlock, name);
      const entries = fs.readdirSync(base);
      const partitions = entries.filter((entry) => entry.startsWith(name)).length;
      const holders = fs.existsSync(path.join(base, "holders")) ? fs.readdirSync(path.join(base, "holders")).length : 0;
      const mounted = mountedDevices.has(name) || entries.some((entry) => entry.startsWith(name) && mountedDevices.has(entry));
      const sizeBytes = Number(fs.readFileSync(path.join(base, "size"), "utf8").trim()) * 512;
      return { name, sizeBytes, partitions, mounted, holders };
    });
}

/** TCP handshake times to HOST:PORT (connect, then close): the round trip, and proof the port answers. */
export async function tcpRoundTrips(host: string, port: number, count: number, timeoutMs: number): Promise<{ samplesMs: number[]; error?: string }> {
  const samplesMs: number[] = [];
  for (let index = 0; index < count; index++) {
    try {
      samplesMs.push(
        await new Promise<number>((resolve, reject) => {
          const started = performance.now();
          const socket = net.connect({ host, port });
          const timer = setTimeout(() => socket.destroy(new Error(`no answer within ${timeoutMs} ms`)), timeoutMs);
          socket.once("connect", () => {
            clearTimeout(timer);
            resolve(performance.now() - started);
            socket.destroy();
          });
          socket.once("error", (error) => {
            clearTimeout(timer);
            reject(error);
          });
        }),
      );
    } catch (error) {
      return { samplesMs, error: (error as Error).message };
    }
  }
  return { samplesMs };
}

function routeInterface(host: string): string | null {
  const result = Bun.spawnSync(["ip", "-o", "route", "get", host], { timeout: 5_000 });
  if (result.exitCode !== 0) return null;
  return / dev (\S+)/.exec(result.stdout.toString())?.[1] ?? null;
}

function clockSynchronised(): boolean | null {
  if (!Bun.which("timedatectl")) return null;
  const result = Bun.spawnSync(["timedatectl", "show", "-p", "NTPSynchronized", "--value"], { timeout: 5_000 });
  if (result.exitCode !== 0) return null;
  return result.stdout.toString().trim() === "yes";
}

export interface GatherOptions {
  witnessPath: string | null;
  peer: { host: string; port: number } | null;
  peerWitnessId?: string | null;
  clockOffsetMs?: number | null;
  /** Where to look (tests point these at fixtures). */
  devDir?: string;
  sysBlockDir?: string;
  mountsFile?: string;
}

/** The interface that routes to `host` and its MTU (null when unknown). */
export function linkInterfaceFacts(host: string): { linkInterface: string | null; linkMtuBytes: number | null } {
  const linkInterface = routeInterface(host);
  let linkMtuBytes: number | null = null;
  if (linkInterface) {
    try {
      linkMtuBytes = Number(fs.readFileSync(`/sys/class/net/${linkInterface}/mtu`, "utf8").trim());
    } catch {
      linkMtuBytes = null;
    }
  }
  return { linkInterface, linkMtuBytes };
}

export async function gatherFacts(options: GatherOptions): Promise<PreflightFacts> {
  const devDir = options.devDir ?? "/dev";
  const link = options.peer ? await tcpRoundTrips(options.peer.host, options.peer.port, preflightLinkRttProbes, preflightLinkRttTimeoutMs) : { samplesMs: [], error: "no peer address given" };
  const { linkInterface, linkMtuBytes } = options.peer ? linkInterfaceFacts(options.peer.host) : { linkInterface: null, linkMtuBytes: null };
  let mounts = "";
  try {
    mounts = fs.readFileSync(options.mountsFile ?? "/proc/mounts", "utf8");
  } catch {
    mounts = "";
  }
  return {
    witness: options.witnessPath ? witnessFacts(options.witnessPath, path.join(devDir, "disk", "by-id")) : null,
    peerWitnessId: options.peerWitnessId ?? null,
    watchdogs: fs.existsSync(devDir) ? fs.readdirSync(devDir).filter((name) => /^watchdog\d*$/.test(name)).map((name) => path.join(devDir, name)) : [],
    disks: diskFacts(options.sysBlockDir ?? "/sys/block", mounts),
    linkRttMs: link.samplesMs,
    ...(link.error ? { linkError: link.error } : {}),
    linkMtuBytes,
    linkInterface,
    clockSynchronised: clockSynchronised(),
    clockOffsetMs: options.clockOffsetMs ?? null,
  };
}
