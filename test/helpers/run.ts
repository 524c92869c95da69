// A process a test starts, bounded in time: SIGKILLed by its own pid if it outlives `timeoutMs`,
// its output collected. Every tool a test runs (the CLI, fio, nbdkit) goes through here, so none can
// outlive the test that started it.

export interface RunResult {
  code: number;
  stdout: string;
  stderr: string;
}

export interface BoundedProcess {
  child: ReturnType<typeof Bun.spawn>;
  /** Its exit status and output, once it has exited (or was killed at the deadline). */
  done: Promise<RunResult>;
}

export function runBounded(command: string[], options: { timeoutMs: number; cwd?: string; env?: Record<string, string | undefined> }): BoundedProcess {
  const child = Bun.spawn(command, { stdout: "pipe", stderr: "pipe", cwd: options.cwd, env: options.env ?? process.env });
  const timer = setTimeout(() => child.kill("SIGKILL"), options.timeoutMs);
  const done = (async () => {
    const [stdout, stderr, code] = await Promise.all([new Response(child.stdout).text(), new Response(child.stderr).text(), child.exited]);
    clearTimeout(timer);
    return { code, stdout, stderr };
  })();
  return { child, done };
}
