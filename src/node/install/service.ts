// The install's service step: `systemctl enable --now tandem.service`, so the daemon runs now and
// after every boot. Facts first (is systemd the init system, is the unit installed and which config
// it runs, is it enabled and active), then a plain verdict (`planService`), then the commands.
// systemd runs the system when /run/systemd/system exists (sd_booted(3)); where it does not (a
// container, a chroot, this kind of test machine) the step is skipped with the reason and the way to
// run the daemon by hand. TANDEM_SYSTEMCTL names another systemctl to run instead (tests point it at
// a stand-in that records its arguments); that program then speaks for systemd.
import fs from "node:fs";
import path from "node:path";

export interface ServiceFacts {
  /** The systemctl to run, or null when systemd does not run this machine. */
  systemctl: string | null;
  /** What PID 1 is, for the message when systemd is not it. */
  initName: string;
  /** The config the tandem unit runs (`--config` of its ExecStart); null when the unit is not installed. */
  unitConfig: string | null;
  unitError: string | undefined;
  enabled: boolean;
  active: boolean;
}

export const serviceUnit = "tandem.service";

export type ServicePlan =
  | { kind: "skip"; reason: string; fix: string }
  | { kind: "fail"; reason: string; fix: string }
  | { kind: "already"; detail: string }
  /** Commands to run, each an argument list for systemctl. */
  | { kind: "run"; commands: string[][] };

/** What to do, from the facts and whether this install changed the config the daemon reads. */
export function planService(facts: ServiceFacts, configPath: string, configChanged: boolean): ServicePlan {
  const manual = `tandem node run --config ${configPath}`;
  if (!facts.systemctl) return { kind: "skip", reason: `systemd does not run this machine (PID 1 is ${facts.initName})`, fix: `run the daemon under your own supervisor: ${manual}` };
  if (facts.unitConfig === null) return { kind: "fail", reason: `the ${serviceUnit} unit is not installed (${facts.unitError ?? "systemctl cat found none"})`, fix: `install the tandem package, or run ${manual}` };
  if (path.resolve(facts.unitConfig) !== path.resolve(configPath)) {
    return { kind: "fail", reason: `the ${serviceUnit} unit runs ${facts.unitConfig}, but this install wrote ${configPath}`, fix: `install with --config ${facts.unitConfig}, or run ${manual}` };
  }
  if (facts.enabled && facts.active && !configChanged) return { kind: "already", detail: `${serviceUnit} is enabled and running` };
  const commands = [["enable", "--now", serviceUnit]];
  // A daemon already running reads its config only at start.
  if (facts.active && configChanged) commands.push(["restart", serviceUnit]);
  return { kind: "run", commands };
}

export interface CommandResult {
  code: number;
  stdout: string;
  stderr: string;
}

function run(command: string[], timeoutMs = 60_000): CommandResult {
  try {
    const result = Bun.spawnSync(command, { stdout: "pipe", stderr: "pipe", timeout: timeoutMs });
    return { code: result.exitCode ?? -1, stdout: result.stdout.toString(), stderr: result.stderr.toString() };
  } catch (error) {
    return { code: -1, stdout: "", stderr: (error as Error).message };
  }
}

export function systemctlProgram(env: Record<string, string | undefined> = process.env, runDir = "/run/systemd/system"): string | null {
  if (env.TANDEM_SYSTEMCTL) return env.TANDEM_SYSTEMCTL;
  if (!fs.existsSync(runDir)) return null;
  return Bun.which("systemctl");
}

function initName(): string {
  try {
    return fs.readFileSync("/proc/1/comm", "utf8").trim() || "unknown";
  } catch {
    return "unknown";
  }
}

/** The config path of the unit's ExecStart, from `systemctl cat` output. */
export function unitConfigPath(unitText: string): string | null {
  for (const line of unitText.split("\n")) {
    const match = /^\s*ExecStart=.*\s--config[= ](\S+)/.exec(line);
    if (match) return match[1]!;
  }
  return null;
}

export function gatherServiceFacts(env: Record<string, string | undefined> = process.env): ServiceFacts {
  const systemctl = systemctlProgram(env);
  const facts: ServiceFacts = { systemctl, initName: initName(), unitConfig: null, unitError: undefined, enabled: false, active: false };
  if (!systemctl) return facts;
  const unit = run([systemctl, "cat", serviceUnit]);
  if (unit.code !== 0) return { ...facts, unitError: (unit.stderr.trim() || `exit ${unit.code}`).split("\n")[0] };
  facts.unitConfig = unitConfigPath(unit.stdout);
  if (facts.unitConfig === null) facts.unitError = "its ExecStart names no --config";
  facts.enabled = run([systemctl, "is-enabled", serviceUnit]).stdout.trim() === "enabled";
  facts.active = run([systemctl, "is-active", serviceUnit]).stdout.trim() === "active";
  return facts;
}

/** Run the plan's commands; the first that fails ends it with its output. */
export function runServiceCommands(systemctl: string, commands: string[][]): { ok: true } | { ok: false; reason: string } {
  for (const command of commands) {
    const result = run([systemctl, ...command]);
    if (result.code !== 0) return { ok: false, reason: `systemctl ${command.join(" ")} failed (exit ${result.code}): ${(result.stderr.trim() || result.stdout.trim()).split("\n").slice(0, 3).join(" ")}` };
  }
  return { ok: true };
}
