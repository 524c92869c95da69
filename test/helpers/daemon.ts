// Runs the real daemon (`tandem node run`) as a child process in a temp directory, for tests that
// must go through everything a user does: the config file, the state database, the control socket,
// the CLI as a separate process, NBD clients on the node's socket. Each test daemon is stopped by
// its test (stop / kill / cleanup); `cleanup` also removes the directory. Processes are ended by the
// pid we started, never by name.
import fs from "node:fs";
import os from "node:os";
import path from "node:path";
import { ControlClient } from "../../src/node/control/client.ts";
import { runBounded, type RunResult } from "./run.ts";

export const repositoryRoot = path.resolve(import.meta.dir, "../..");
export const cliEntry = path.join(repositoryRoot, "src/cli/main.ts");

/**
 * The `tandem` program the tests run: the compiled binary when TANDEM_BIN names one (say
 * `TANDEM_BIN=dist/tandem npx bun run test`, after `npx bun run build`), else Bun with the entry
 * script. The lab started by that program re-runs the same program (src/node/lab/lab.ts).
 */
export const tandemCommand: string[] = process.env.TANDEM_BIN ? [path.resolve(repositoryRoot, process.env.TANDEM_BIN)] : [process.execPath, cliEntry];

export type CliResult = RunResult;

/** Run the CLI as its own process (as a user would), with a bounded wait. */
export function runCli(args: string[], options: { env?: Record<string, string>; timeoutMs?: number; cwd?: string } = {}): Promise<CliResult> {
  return runBounded([...tandemCommand, ...args], { timeoutMs: options.timeoutMs ?? 60_000, cwd: options.cwd ?? repositoryRoot, env: { ...process.env, ...options.env } }).done;
}

export interface TestDaemonOptions {
  /** Reuse a directory (a restart test passes the first daemon's). */
  dir?: string;
  name?: string;
  /** Extra fields merged into the config. */
  config?: Record<string, unknown>;
  /** Run the daemon under this command prefix (["ip", "netns", "exec", NS] puts it in a namespace). */
  wrap?: string[];
}

export class TestDaemon {
  private child: ReturnType<typeof Bun.spawn> | undefined;
  private logFd: number | undefined;

  private constructor(
    readonly dir: string,
    readonly configPath: string,
    readonly name: string,
    private readonly wrap: string[] = [],
  ) {}

  get controlSocket(): string {
    return path.join(this.dir, "control.sock");
  }
  get nbdSocket(): string {
    return path.join(this.dir, "nbd.sock");
  }
  get dataDir(): string {
    return path.join(this.dir, "data");
  }
  get logPath(): string {
    return path.join(this.dir, "node.log");
  }
  /** The process we started has not exited (by code or by signal). */
  running(): boolean {
    return this.child !== undefined && this.child.exitCode === null && this.child.signalCode === null;
  }

  get pid(): number | undefined {
    return this.child?.pid;
  }

  nbdUri(volume: string): string {
    return `nbd+unix:///${encodeURIComponent(volume)}?socket=${this.nbdSocket}`;
  }

  static async start(options: TestDaemonOptions = {}): Promise<TestDaemon> {
    const dir = options.dir ?? fs.mkdtempSync(path.join(os.tmpdir(), "tandem-node-"));
    const name = options.name ?? "a";
    const configPath = path.join(dir, "config.json");
    if (!fs.existsSync(configPath) || options.config) {
      const config = { name, dataDir: "data", controlSocket: "control.sock", nbd: { socket: "nbd.sock" }, vhost: { socketDir: "vhost" }, log: { level: "debug" }, ...options.config };
      fs.writeFileSync(configPath, JSON.stringify(config, null, 2));
    }
    const daemon = new TestDaemon(dir, configPath, name, options.wrap);
    try {
      await daemon.start();
    } catch (error) {
      // A daemon that did not come up leaves no object to clean up with: remove a directory made here.
      if (options.dir === undefined) fs.rmSync(dir, { recursive: true, force: true });
      throw error;
    }
    return daemon;
  }

  /** Start (again) on the same directory and wait until the control API answers. */
  async start(): Promise<void> {
    if (this.running()) throw new Error("test daemon already running");
    this.logFd = fs.openSync(this.logPath, "a");
    const child = Bun.spawn([...this.wrap, ...tandemCommand, "node", "run", "--config", this.configPath], {
      stdout: this.logFd,
      stderr: this.logFd,
      cwd: this.dir,
    });
    this.child = child;
    const deadline = Date.now() + 20_000;
    const client = new ControlClient(this.controlSocket);
    for (;;) {
      if (child.exitCode !== null || child.signalCode !== null) throw new Error(`daemon exited with ${child.exitCode} during start-up:\n${this.logTail()}`);
      try {
        await client.request("GET", "/status");
        return;
      } catch {
        if (Date.now() > deadline) {
          child.kill("SIGKILL");
          throw new Error(`daemon did not answer within 20 s:\n${this.logTail()}`);
        }
        await Bun.sleep(25);
      }
    }
  }

  logTail(lines = 20): string {
    try {
      return fs.readFileSync(this.logPath, "utf8").trim().split("\n").slice(-lines).join("\n");
    } catch {
      return "(no log)";
    }
  }

  /** Log lines parsed as JSON records. */
  logRecords(): Record<string, unknown>[] {
    return fs
      .readFileSync(this.logPath, "utf8")
      .trim()
      .split("\n")
      .filter((line) => line.startsWith("{"))
      .map((line) => JSON.parse(line) as Record<string, unknown>);
  }

  /** The CLI against this daemon. */
  cli(args: string[], options: { env?: Record<string, string>; timeoutMs?: number; cwd?: string } = {}): Promise<CliResult> {
    return runCli([...args, "--socket", this.controlSocket], options);
  }

  async cliJson<T = Record<string, unknown>>(args: string[]): Promise<T> {
    const result = await this.cli([...args, "--json"]);
    if (result.code !== 0) throw new Error(`tandem ${args.join(" ")} exited ${result.code}: ${result.stdout}${result.stderr}`);
    return JSON.parse(result.stdout) as T;
  }

  api<T = Record<string, unknown>>(method: "GET" | "POST" | "DELETE", path: string, body?: unknown): Promise<T> {
    return new ControlClient(this.controlSocket).request<T>(method, path, body);
  }

  private async waitExit(timeoutMs: number): Promise<number> {
    const child = this.child!;
    const timer = setTimeout(() => child.kill("SIGKILL"), timeoutMs);
    const code = await child.exited;
    clearTimeout(timer);
    if (this.logFd !== undefined) fs.closeSync(this.logFd);
    this.logFd = undefined;
    return code;
  }

  /** SIGTERM and wait: the daemon drains and exits; returns its exit code. */
  async stop(timeoutMs = 30_000): Promise<number> {
    if (!this.running()) return this.child?.exitCode ?? 0;
    this.child!.kill("SIGTERM");
    return this.waitExit(timeoutMs);
  }

  /** SIGKILL: the crash case. */
  async kill(): Promise<void> {
    if (!this.running()) return;
    this.child!.kill("SIGKILL");
    await this.waitExit(10_000);
  }

  async cleanup(): Promise<void> {
    await this.stop().catch(() => this.kill());
    fs.rmSync(this.dir, { recursive: true, force: true });
  }
}
