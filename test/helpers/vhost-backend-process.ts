// Runs test/helpers/vhost-backend.ts as a separate process (so a test can SIGKILL it like a crashed
// daemon and start it again), waits until it listens, and keeps its output in a log file.
import fs from "node:fs";
import path from "node:path";
import type { Subprocess } from "bun";

export interface BackendProcess {
  readonly pid: number;
  readonly logFile: string;
  /** Send a signal (SIGKILL to crash it, SIGTERM to stop it cleanly) and wait for the exit. */
  stop(signal: "SIGKILL" | "SIGTERM"): Promise<number | null>;
  log(): string;
}

const runner = path.join(import.meta.dir, "vhost-backend.ts");

export async function startBackendProcess(options: {
  file: string;
  socket: string;
  queues?: number;
  logFile: string;
  buffered?: boolean;
  logLevel?: string;
  writeDelayMs?: number;
}): Promise<BackendProcess> {
  const out = fs.openSync(options.logFile, "a");
  const args = [process.execPath, runner, "--file", options.file, "--socket", options.socket, "--queues", String(options.queues ?? 1), "--log-level", options.logLevel ?? "info"];
  if (options.buffered) args.push("--buffered");
  if (options.writeDelayMs) args.push("--write-delay-ms", String(options.writeDelayMs));
  // The same thread pool as the daemon gets from packaging/tandem.service and the lab: O_DIRECT IO
  // runs on it, so its size bounds the IO in flight.
  const env = { ...process.env, UV_THREADPOOL_SIZE: process.env.UV_THREADPOOL_SIZE ?? "32" };
  const child: Subprocess = Bun.spawn(args, { stdout: out, stderr: out, stdin: "ignore", env });
  fs.closeSync(out);
  const deadline = Date.now() + 15_000;
  const read = () => (fs.existsSync(options.logFile) ? fs.readFileSync(options.logFile, "utf8") : "");
  while (!read().includes(`"ready":true`)) {
    if (child.exitCode !== null || Date.now() > deadline) {
      child.kill("SIGKILL");
      throw new Error(`vhost back-end did not start: ${read().slice(-2000)}`);
    }
    await Bun.sleep(20);
  }
  return {
    pid: child.pid,
    logFile: options.logFile,
    stop: async (signal) => {
      if (child.exitCode === null && child.signalCode === null) child.kill(signal);
      await child.exited;
      return child.exitCode;
    },
    log: read,
  };
}
