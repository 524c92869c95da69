// `tandem install`: make this node one half of a pair. Without --yes it is the Ink wizard
// (src/tui/install/); with --yes every answer comes from the flags and each step prints one line
// (or, with --json, the whole report at the end). The steps and their order are in
// src/node/install/steps.ts; docs/install.md walks an operator through both ways.
import path from "node:path";
import { Command, Option, UsageError } from "clipanion";
import ora, { type Ora } from "ora";
import { parseSize } from "../../common/size.ts";
import { installReplicationPortDefault, volumeNamePattern, volumeSizeAlignmentBytes, volumeSizeBytesMin } from "../../constants.ts";
import { type HostPort, parseHostPort } from "../../node/config.ts";
import { formatPairingCode, isWildcardHost, normalizePairingCode } from "../../node/install/pairing-code.ts";
import type { PreflightCheck } from "../../node/install/preflight.ts";
import { type InstallReport, type InstallSettings, type InstallUi, type StepResult, stepTitles } from "../../node/install/report.ts";
import { exitCodes, TandemCommand } from "../base.ts";
import { spinnerEnabled } from "../progress.ts";

export const defaultInstallConfigPath = "/etc/tandem/node.toml";

/** HOST:PORT, or HOST alone for the default replication port. */
export function parseAddress(text: string, option: string): HostPort {
  let withPort = text;
  if (/^\[[^\]]*\]$/.test(text) || !text.includes(":")) withPort = `${text}:${installReplicationPortDefault}`;
  else if (/^[0-9a-fA-F]*:[0-9a-fA-F:]*$/.test(text) && text.split(":").length > 2) withPort = `[${text}]:${installReplicationPortDefault}`;
  let address: HostPort;
  try {
    address = parseHostPort(withPort, option);
  } catch (error) {
    throw new UsageError((error as Error).message);
  }
  if (isWildcardHost(address.hostname)) throw new UsageError(`${option}: ${text} means every address of a machine; give the node's own address on the replication link`);
  return address;
}

const statusWord: Record<StepResult["status"], string> = { done: "done", "already-done": "already done", skipped: "skipped", failed: "FAILED" };

function checkLine(check: PreflightCheck): string {
  return `${check.status === "fail" ? "FAIL" : check.status === "warn" ? "warn" : check.status} ${check.id}: ${check.detail}${check.fix && check.status !== "ok" && check.status !== "skip" ? ` (${check.fix})` : ""}`;
}

/** One step as text: its status and detail, the checks that need attention, and what to do. */
export function renderStep(result: StepResult): string {
  const lines = [`${statusWord[result.status].padEnd(12)} ${stepTitles[result.id]}: ${result.detail}`];
  for (const check of result.checks ?? []) if (check.status === "warn" || check.status === "fail") lines.push(`             ${checkLine(check)}`);
  if (result.fix) lines.push(`             -> ${result.fix}`);
  return lines.join("\n");
}

export function renderReport(report: InstallReport): string {
  const tail = report.ok ? `node ${report.node} is installed (config ${report.config})` : `the install stopped; run tandem install again once the failed step is fixed: steps already done are kept`;
  return tail;
}

export class InstallCommand extends TandemCommand {
  static override paths = [["install"]];
  static override usage = Command.Usage({
    category: "Node",
    description: "Install this node as one half of a pair: preflight, pairing, witness, service, first volume",
    details: `
      Run it on both nodes. One node shows a short one-time code and waits on its replication
      address (--listen); the other dials that address (--peer) and types the code. The code is not
      the secret: it authenticates a key exchange (CPace) from which both nodes derive the pairing
      secret and the cluster id, written to the config's directory (pairing.secret, mode 0600).
      A code expires after 15 minutes, is good for one pairing, and is burnt after 5 failed tries.

      Steps, in order: preflight (witness reachable and the same disk on both nodes, watchdog, free
      disks, the link's round trip and MTU, clocks), pairing (writes the config: [peer], [witness]),
      witness (formats the shared disk once, with tandem witness format's code; a disk holding
      anything but zeros or this pair's witness stops the install untouched), service (systemctl
      enable --now tandem; skipped where systemd does not run), link (the daemons connect with the
      new secret), the first volume.
      The first failure stops the install; running it again is safe and says what is already done.

      Without --yes it is a wizard in the terminal and asks for what the flags do not say. With
      --yes nothing is asked: flags only. --json prints {"ok", "node", "config", "steps": [{"id",
      "status": "done|already-done|skipped|failed", "detail", "fix"?, "checks"?}]}; the code a
      listening node shows goes to stderr. Exit 0 when no step failed, 1 when one did, 2 for bad
      usage. docs/install.md has the walk-through.
    `,
    examples: [
      ["The node that shows the code (scripted)", "tandem install --yes --name a --listen 10.99.0.1 --witness /dev/disk/by-id/wwn-0x5000c500a1b2c3d4 --code K7QM-3XPA"],
      ["The node that types it", "tandem install --yes --name b --peer 10.99.0.1 --listen 10.99.0.2 --code K7QM-3XPA --witness /dev/disk/by-id/wwn-0x5000c500a1b2c3d4 --volume vm1 --size 100G"],
      ["A fresh code for a script to hand to both nodes", "tandem install --new-code"],
      ["The wizard", "tandem install"],
    ],
  });

  yes = Option.Boolean("--yes", false, { description: "Ask nothing: every answer comes from the flags (for scripts)" });
  config = Option.String("--config", defaultInstallConfigPath, { description: `The node config to write (default ${defaultInstallConfigPath}, which the tandem unit runs)` });
  name = Option.String("--name", { description: "This node's name (1-31 of a-z 0-9 _ -; default: the host name)" });
  dataDir = Option.String("--data-dir", { description: "Where volumes and state live (default: the config's, else /var/lib/tandem)" });
  listen = Option.String("--listen", { description: `This node's replication address, HOST[:PORT] (port ${installReplicationPortDefault} by default); the node that shows the code waits there` });
  peer = Option.String("--peer", { description: "The other node's replication address: this node dials it and types the code it shows" });
  code = Option.String("--code", { description: "The pairing code: the one the other node shows (with --peer), or the one this node shows" });
  connect = Option.String("--connect", { description: "This node's end of the link: dial or accept (default: the node that types the code dials)" });
  witness = Option.String("--witness", { description: "The shared witness disk (/dev/disk/by-id/...), the same on both nodes" });
  volume = Option.String("--volume", { description: "Name of the first volume, created here (this node is its primary)" });
  size = Option.String("--size", { description: "Size of the first volume: 10G, 512M, 1T" });
  newCode = Option.Boolean("--new-code", false, { description: "Print a fresh pairing code and exit (for scripts that pass --code to both nodes)" });

  settings(): InstallSettings {
    const settings: InstallSettings = { configPath: path.resolve(this.config) };
    if (this.name !== undefined) {
      if (!/^[a-z0-9][a-z0-9_-]{0,30}$/.test(this.name)) throw new UsageError(`--name "${this.name}" must be 1-31 of a-z 0-9 _ - starting with a letter or digit`);
      settings.name = this.name;
    }
    if (this.dataDir !== undefined) settings.dataDir = path.resolve(this.dataDir);
    if (this.listen !== undefined) settings.listen = parseAddress(this.listen, "--listen");
    if (this.peer !== undefined) settings.peer = parseAddress(this.peer, "--peer");
    if (this.code !== undefined) {
      try {
        settings.code = normalizePairingCode(this.code);
      } catch (error) {
        throw new UsageError(`--code: ${(error as Error).message}`);
      }
    }
    if (this.connect !== undefined) {
      if (this.connect !== "dial" && this.connect !== "accept") throw new UsageError(`--connect must be dial or accept`);
      settings.connect = this.connect;
    }
    if (this.witness !== undefined) settings.witness = path.resolve(this.witness);
    if ((this.volume === undefined) !== (this.size === undefined)) throw new UsageError("--volume and --size go together");
    if (this.volume !== undefined && this.size !== undefined) {
      if (!volumeNamePattern.test(this.volume)) throw new UsageError(`--volume "${this.volume}" must be 1-63 of a-z 0-9 _ . - starting with a letter or digit`);
      let sizeBytes: number;
      try {
        sizeBytes = parseSize(this.size);
      } catch (error) {
        throw new UsageError(`--size: ${(error as Error).message}`);
      }
      if (sizeBytes < volumeSizeBytesMin || sizeBytes % volumeSizeAlignmentBytes !== 0) throw new UsageError(`--size must be at least 1M and a multiple of 4K`);
      settings.volume = { name: this.volume, sizeBytes };
    }
    if (this.socket !== undefined) settings.socket = this.socket;
    return settings;
  }

  async run(): Promise<number> {
    if (this.newCode) {
      const { newPairingCode } = await import("../../node/install/pairing-driver.ts");
      const code = formatPairingCode(newPairingCode());
      this.output({ code }, () => code);
      return exitCodes.ok;
    }
    const settings = this.settings();
    if (!this.yes) {
      if (this.json) throw new UsageError("--json needs --yes: a script cannot answer the wizard's questions");
      const stdout = this.context.stdout as NodeJS.WriteStream;
      if (!stdout.isTTY || !process.stdin.isTTY) throw new UsageError("the install wizard needs a terminal; for a scripted install pass --yes and the flags (tandem install --help)");
      const { runInstallWizard } = await import("../../tui/install/run.tsx");
      const noColor = process.env.NO_COLOR !== undefined && process.env.NO_COLOR !== "";
      const report = await runInstallWizard({ settings, color: !noColor });
      if (!report) {
        this.context.stderr.write("tandem: the install was cancelled; run tandem install again to go on (what is done is kept)\n");
        return exitCodes.failed;
      }
      this.context.stdout.write(report.steps.map(renderStep).join("\n") + "\n" + renderReport(report) + "\n");
      return report.ok ? exitCodes.ok : exitCodes.failed;
    }
    // Loaded here, not at the top: every other command starts without the install's modules.
    const { defaultEnvironment, runInstall } = await import("../../node/install/steps.ts");
    const report = await runInstall(settings, this.scriptedUi(), defaultEnvironment());
    if (this.json) this.context.stdout.write(JSON.stringify(report, null, 2) + "\n");
    else this.context.stdout.write(renderReport(report) + "\n");
    return report.ok ? exitCodes.ok : exitCodes.failed;
  }

  /** Answers from the flags; a line per step (a spinner while it runs, on a terminal), nothing but the report with --json. */
  private scriptedUi(): InstallUi {
    const stdout = this.context.stdout;
    const stderr = this.context.stderr;
    const spinning = spinnerEnabled(this);
    let spinner: Ora | undefined;
    return {
      stepStarted: (id) => {
        if (spinning) spinner = ora({ text: stepTitles[id], stream: stderr as NodeJS.WriteStream, isEnabled: true }).start();
      },
      progress: (id, text) => {
        if (spinner) spinner.text = `${stepTitles[id]}: ${text}`;
      },
      stepFinished: (result) => {
        spinner?.stop();
        spinner = undefined;
        if (!this.json) stdout.write(renderStep(result) + "\n");
      },
      showCode: ({ code, expiresAtMs, listen }) => {
        const line = `pairing code ${code}: on the other node run tandem install --peer ${listen} --code ${code} (valid until ${new Date(expiresAtMs).toISOString().slice(11, 19)} UTC)\n`;
        spinner?.clear();
        (this.json ? stderr : stdout).write(line);
      },
      attemptFailed: ({ remote, reason, attemptsLeft }) => {
        spinner?.clear();
        stderr.write(`tandem: a pairing attempt from ${remote} failed (${reason}); ${attemptsLeft} left for this code\n`);
      },
    };
  }
}

