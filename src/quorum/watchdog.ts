// The kernel watchdog (DESIGN.md §5 rule 7): a daemon that hangs must not keep serving. Once armed,
// /dev/watchdog resets the machine unless it is fed within its timeout; the quorum feeds it while
// the node honours its lease, so a hung daemon (or one that cannot enforce its lease) is reset no
// later than the peer may count it fenced (watchdogTimeout ≤ selfFenceTimeout).
//
// Modes (config `watchdog`): `off` never arms; `auto` arms the device when there is one, loading the
// softdog module first when the device is missing and the module exists, and runs without one
// otherwise; `required` refuses to start without an armed watchdog. A clean stop writes the magic
// 'V' before closing, which disarms it; a crash or a kill leaves it armed, and the machine resets:
// that is the point.
import fs from "node:fs";
import { spawnSync } from "node:child_process";
import { TandemError } from "../common/errors.ts";
import { systemError } from "../common/libc.ts";
import type { WatchdogConfig } from "./config.ts";

/** What arming found: whether a watchdog is armed, on which device, and why (for the start-up log and status). */
export interface WatchdogState {
  mode: WatchdogConfig["mode"];
  armed: boolean;
  device: string | null;
  /** The timeout in force, in seconds (null when the device would not say). */
  timeoutSeconds: number | null;
  reason: string;
  feeds: number;
}

/** The system calls the watchdog needs; tests substitute a fake device. */
export interface WatchdogSystem {
  exists(path: string): boolean;
  open(path: string): number;
  write(fd: number, bytes: Uint8Array): void;
  close(fd: number): void;
  /** WDIOC_SETTIMEOUT; returns the timeout the device accepted, or throws (ENOTTY on a file that is no watchdog). */
  setTimeout(fd: number, seconds: number): number;
  /** Load the softdog module if it exists; returns why not when it could not. */
  loadSoftdog(): string | null;
}

// linux/watchdog.h: _IOWR('W', 6, int)
const WDIOC_SETTIMEOUT = 0xc0045706n;

export const systemWatchdog: WatchdogSystem = {
  exists: (path) => fs.existsSync(path),
  open: (path) => fs.openSync(path, fs.constants.O_WRONLY),
  write: (fd, bytes) => {
    fs.writeSync(fd, bytes);
  },
  close: (fd) => fs.closeSync(fd),
  setTimeout: (fd, seconds) => {
    // Loaded lazily: only a node that arms a watchdog needs bun:ffi here.
    const { dlopen, FFIType } = require("bun:ffi") as typeof import("bun:ffi");
    const libc = dlopen("libc.so.6", { ioctl: { args: [FFIType.i32, FFIType.u64, FFIType.ptr], returns: FFIType.i32 } }).symbols;
    const value = new Int32Array([seconds]);
    if (libc.ioctl(fd, WDIOC_SETTIMEOUT, value) !== 0) throw systemError("ioctl(WDIOC_SETTIMEOUT)");
    return value[0]!;
  },
  loadSoftdog: () => {
    const probe = spawnSync("modprobe", ["--dry-run", "--quiet", "softdog"], { stdio: "ignore" });
    if (probe.error || probe.status !== 0) return "the softdog module is not available";
    const load = spawnSync("modprobe", ["softdog"], { stdio: ["ignore", "ignore", "pipe"] });
    if (load.error || load.status !== 0) return `modprobe softdog failed: ${load.stderr?.toString().trim() || load.error?.message || `exit ${load.status}`}`;
    return null;
  },
};

const feedByte = Uint8Array.of(0x2e); // any byte but 'V' feeds it
const magicClose = Uint8Array.of(0x56); // 'V': disarm on close

export class Watchdog {
  private fd: number | undefined;
  readonly state: WatchdogState;

  private constructor(state: WatchdogState, fd: number | undefined, private readonly system: WatchdogSystem) {
    this.state = state;
    this.fd = fd;
  }

  /**
   * Arm per the config. `auto` never fails (it says why nothing was armed); `required` throws a
   * TandemError when it cannot arm; `off` arms nothing.
   */
  static arm(config: WatchdogConfig, timeoutSeconds: number, system: WatchdogSystem = systemWatchdog): Watchdog {
    const base = { mode: config.mode, device: null, timeoutSeconds: null, feeds: 0 };
    if (config.mode === "off") return new Watchdog({ ...base, armed: false, reason: "watchdog is off in the config" }, undefined, system);
    let loadFailure: string | null = null;
    if (!system.exists(config.device)) {
      loadFailure = system.loadSoftdog();
      if (!system.exists(config.device)) {
        const reason = `no watchdog: ${config.device} does not exist${loadFailure ? ` and ${loadFailure}` : " (softdog was loaded but made no device)"}`;
        if (config.mode === "required") throw new TandemError("failed_precondition", `${reason}; the config requires one (watchdog = "required")`);
        return new Watchdog({ ...base, armed: false, reason }, undefined, system);
      }
    }
    let fd: number;
    try {
      fd = system.open(config.device);
    } catch (error) {
      const reason = `no watchdog: cannot open ${config.device}: ${(error as Error).message}`;
      if (config.mode === "required") throw new TandemError("failed_precondition", `${reason}; the config requires one (watchdog = "required")`);
      return new Watchdog({ ...base, armed: false, reason }, undefined, system);
    }
    // Opening armed it. Now its timeout: the device may refuse or round it.
    let accepted: number | null = null;
    let note = "";
    try {
      accepted = system.setTimeout(fd, timeoutSeconds);
      if (accepted > timeoutSeconds) note = `; the device rounded the timeout up to ${accepted} s, more than the ${timeoutSeconds} s asked`;
    } catch (error) {
      note = `; its timeout could not be set (${(error as Error).message}), the device's own applies`;
    }
    const watchdog = new Watchdog({ ...base, armed: true, device: config.device, timeoutSeconds: accepted, reason: `watchdog armed on ${config.device}${accepted === null ? "" : ` with a ${accepted} s timeout`}${note}` }, fd, system);
    watchdog.feed();
    return watchdog;
  }

  get armed(): boolean {
    return this.fd !== undefined;
  }

  feed(): void {
    if (this.fd === undefined) return;
    this.system.write(this.fd, feedByte);
    this.state.feeds++;
  }

  /** A clean stop: the magic close disarms the watchdog (a crash never gets here, and the machine resets). */
  disarm(): void {
    if (this.fd === undefined) return;
    const fd = this.fd;
    this.fd = undefined;
    try {
      this.system.write(fd, magicClose);
    } finally {
      this.system.close(fd);
    }
    this.state.armed = false;
    this.state.reason = `watchdog on ${this.state.device} disarmed (clean stop)`;
  }
}
