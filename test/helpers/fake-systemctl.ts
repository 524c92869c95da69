// A stand-in for systemctl, for tests of `tandem install`'s service step on machines where systemd
// does not run (TANDEM_SYSTEMCTL names it). It records every call's arguments, answers `cat` with
// a unit whose ExecStart runs the given config, keeps "enabled" as a file, and does what systemd
// would do for `enable --now`, `start`, `restart` and `stop` of the unit: it starts the real daemon
// (`tandem node run --config CONFIG`, detached, its pid in a file) or stops it with SIGTERM. Its
// daemon is stopped by the test through `stop()` (by the pid it wrote, never by name).
import fs from "node:fs";
import path from "node:path";
import { tandemCommand } from "./daemon.ts";

export interface FakeSystemctl {
  /** The program to put in TANDEM_SYSTEMCTL. */
  program: string;
  /** Each call's arguments, in order. */
  calls(): string[];
  /** The pid of the daemon it started, if that runs. */
  daemonPid(): number | undefined;
  /** Stop the daemon it started (SIGTERM, then SIGKILL after 30 s). */
  stop(): Promise<void>;
}

const quote = (word: string) => `'${word.replaceAll("'", "'\\''")}'`;

export function writeFakeSystemctl(dir: string, configPath: string): FakeSystemctl {
  const state = path.join(dir, "fake-systemd");
  fs.mkdirSync(state, { recursive: true });
  const program = path.join(state, "systemctl");
  const pidFile = path.join(state, "tandem.pid");
  const daemon = [...tandemCommand, "node", "run", "--config", configPath].map(quote).join(" ");
  fs.writeFileSync(
    program,
    `#!/bin/bash
state=${quote(state)}
printf '%s\\n' "$*" >> "$state/calls"
running() { [ -s "$state/tandem.pid" ] && [ -r "/proc/$(cat "$state/tandem.pid")/stat" ] && ! grep -q ') Z' "/proc/$(cat "$state/tandem.pid")/stat"; }
start() { running || { setsid ${daemon} >> "$state/daemon.log" 2>&1 < /dev/null & echo $! > "$state/tandem.pid"; }; }
stop() { if running; then pid=$(cat "$state/tandem.pid"); kill -TERM "$pid"; for _ in $(seq 300); do running || break; sleep 0.1; done; fi; rm -f "$state/tandem.pid"; }
case "$1" in
  cat) printf '# /lib/systemd/system/tandem.service\\n[Service]\\nExecStart=/usr/bin/tandem node run --config %s\\n' ${quote(configPath)} ;;
  is-enabled) if [ -e "$state/enabled" ]; then echo enabled; else echo disabled; exit 1; fi ;;
  is-active) if running; then echo active; else echo inactive; exit 3; fi ;;
  enable) touch "$state/enabled"; [ "$2" = "--now" ] && start ;;
  start) start ;;
  restart) stop; start ;;
  stop) stop ;;
  *) echo "fake systemctl: $1 is not known here" >&2; exit 1 ;;
esac
exit 0
`,
    { mode: 0o755 },
  );
  const daemonPid = () => {
    try {
      const pid = Number(fs.readFileSync(pidFile, "utf8").trim());
      if (!(pid > 0)) return undefined;
      // Gone, or a zombie nobody has reaped yet: not running.
      return fs.readFileSync(`/proc/${pid}/stat`, "utf8").split(") ")[1]?.startsWith("Z") ? undefined : pid;
    } catch {
      return undefined;
    }
  };
  return {
    program,
    calls: () => (fs.existsSync(path.join(state, "calls")) ? fs.readFileSync(path.join(state, "calls"), "utf8").trim().split("\n") : []),
    daemonPid,
    async stop() {
      const pid = daemonPid();
      if (pid === undefined) return;
      process.kill(pid, "SIGTERM");
      const deadline = Date.now() + 30_000;
      while (daemonPid() !== undefined && Date.now() < deadline) await Bun.sleep(25);
      if (daemonPid() !== undefined) process.kill(pid, "SIGKILL");
      fs.rmSync(pidFile, { force: true });
    },
  };
}
