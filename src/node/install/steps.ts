// `tandem install`'s steps and the runner both the scripted install (--yes) and the wizard use.
// Each step is idempotent and ends as done, already-done, skipped or failed, with a sentence saying
// what it found and, when it failed or was skipped, what to do; the first failure stops the install
// and every later step is reported as not run. Re-running on an installed node therefore walks the
// same steps and says what was already done.
//
//   preflight  this machine and the way to the peer (src/node/install/preflight.ts)
//   pairing    the code exchange (pairing-driver.ts), then the secret and the config are written
//   witness    the shared witness disk is formatted for this pair (by the accepting node; the
//              dialing one waits to see it)
//   service    systemctl enable --now tandem.service (service.ts)
//   link       the daemons connect with the new secret
//   volume     the first volume, created on the node that asked for it, mirrored to the other
//
// The service starts before the first volume because a mirrored volume is created by the running
// daemons over their link; the link step proves both nodes run with the same secret first.
// Questions (the code to type, whether to go on despite warnings, the first volume) go through the
// InstallUi: the wizard asks them, the scripted install takes the answers from its flags.
import os from "node:os";
import path from "node:path";
import { TandemError } from "../../common/errors.ts";
import { formatSize } from "../../common/size.ts";
import { tandemVersion } from "../../common/version.ts";
import { installDaemonStartTimeoutMs, installLinkUpTimeoutMs, installPeerWaitMs, installReplicationPortDefault, installWitnessPollMs, installWitnessWaitMs, pairingCodeLifetimeMs, preflightLinkRttTimeoutMs } from "../../constants.ts";
import { formatHostPort, type NodeConfig } from "../config.ts";
import { ControlClient } from "../control/client.ts";
import type { StatusReport } from "../control/status.ts";
import type { VolumeView } from "../volumes.ts";
import { defaultDataDir, type ExistingConfig, packagedNodeName, type RawConfig, readExistingConfig, writePairedConfig } from "./config-file.ts";
import { dialForPairing, listenForPairing, newPairingCode } from "./pairing-driver.ts";
import { formatPairingCode, normalizePairingCode, type OfferBase, PairingError, type PairingFailureCode, type PairingResult } from "./pairing-exchange.ts";
import { assessPreflight, gatherFacts, type GatherOptions, linkInterfaceFacts, linkRoundTripMs, type PreflightCheck, type PreflightFacts, tcpRoundTrips } from "./preflight.ts";
import { gatherServiceFacts, planService, runServiceCommands, type ServiceFacts } from "./service.ts";
import { type InstallReport, type InstallSettings, type InstallUi, type StepId, type StepResult, stepOrder, stepTitles } from "./report.ts";
import { type WitnessContent, type WitnessFormatter, witnessFormatter, WitnessHoldsData } from "./witness.ts";

export { type InstallReport, type InstallSettings, type InstallUi, type StepId, type StepResult, type StepStatus, stepOrder, stepTitles } from "./report.ts";

export interface InstallEnvironment {
  env: Record<string, string | undefined>;
  witnessFormatter: WitnessFormatter;
  gather: (options: GatherOptions) => Promise<PreflightFacts>;
  serviceFacts: (env: Record<string, string | undefined>) => ServiceFacts;
  now: () => number;
  signal?: AbortSignal;
}

export function defaultEnvironment(signal?: AbortSignal): InstallEnvironment {
  return { env: process.env, witnessFormatter, gather: gatherFacts, serviceFacts: gatherServiceFacts, now: Date.now, signal };
}


interface InstallContext {
  settings: InstallSettings;
  ui: InstallUi;
  environment: InstallEnvironment;
  existing: ExistingConfig;
  /** The config the daemon runs with: the existing one when paired, the written one after pairing. */
  config: NodeConfig | undefined;
  configChanged: boolean;
  facts: PreflightFacts | undefined;
}

const failed = (id: StepId, detail: string, fix?: string, checks?: PreflightCheck[]): StepResult => ({ id, status: "failed", detail, ...(fix ? { fix } : {}), ...(checks ? { checks } : {}) });

/** A node name from the host name: lower case, only a-z 0-9 _ -, at most 31. */
export function nodeNameFromHost(host: string): string {
  const name = host.toLowerCase().split(".")[0]!.replace(/[^a-z0-9_-]/g, "-").replace(/^[-_]+/, "").slice(0, 31);
  return name.length > 0 ? name : "node";
}

/** The name a node gets when none is given: the config's (unless still the packaged one), else the host's. */
export function defaultNodeName(existing: RawConfig | undefined): string {
  const name = existing?.name;
  return typeof name === "string" && name !== packagedNodeName ? name : nodeNameFromHost(os.hostname());
}

function nodeName(context: InstallContext): string {
  return context.settings.name ?? defaultNodeName(context.existing.raw);
}

function dataDir(context: InstallContext): string {
  if (context.settings.dataDir) return path.resolve(context.settings.dataDir);
  const existing = context.existing.raw?.dataDir;
  return typeof existing === "string" ? path.resolve(path.dirname(context.existing.path), existing) : defaultDataDir;
}

function controlSocket(context: InstallContext): string {
  return context.settings.socket ?? context.config!.controlSocket;
}

/** Wait `ms`, or stop the step when the operator cancelled the install (the wizard's Ctrl-C). */
async function pause(signal: AbortSignal | undefined, ms: number): Promise<void> {
  await new Promise((resolve) => setTimeout(resolve, ms));
  if (signal?.aborted) throw new TandemError("failed_precondition", "the install was cancelled");
}

// ---- preflight

async function preflightStep(context: InstallContext): Promise<StepResult> {
  const { settings, ui, environment } = context;
  const paired = context.existing.config?.peer;
  const witnessPath = settings.witness ? path.resolve(settings.witness) : (context.existing.config?.witnessPath ?? null);
  const dialing = !paired && settings.peer ? { host: settings.peer.hostname, port: settings.peer.port } : null;
  if (dialing) {
    // The other node's installer may not be listening yet: wait for it (both installs may start at once).
    const deadline = environment.now() + installPeerWaitMs;
    for (;;) {
      const probe = await tcpRoundTrips(dialing.host, dialing.port, 1, preflightLinkRttTimeoutMs);
      if (probe.samplesMs.length > 0 || environment.now() > deadline) break;
      ui.progress("preflight", `waiting for the other node's installer at ${formatHostPort(settings.peer!)} (start tandem install there: it shows the code): ${probe.error}`);
      await pause(environment.signal, 1_000);
    }
  }
  ui.progress("preflight", dialing ? `checking this machine and the round trip to ${formatHostPort(settings.peer!)}` : "checking this machine");
  const facts = await environment.gather({ witnessPath, peer: dialing });
  context.facts = facts;
  const later = paired ? "the node is paired: the link step checks the link" : "measured by the other node when it dials this one, and judged during pairing";
  const checks = assessPreflight(facts).map((check): PreflightCheck => (!dialing && (check.id === "link-rtt" || check.id === "link-mtu") ? { id: check.id, status: "skip", detail: later } : check));
  const failures = checks.filter((check) => check.status === "fail");
  if (failures.length > 0) return failed("preflight", failures.map((check) => check.detail).join("; "), failures.map((check) => check.fix).filter(Boolean).join("; "), checks);
  const warnings = checks.filter((check) => check.status === "warn");
  if (warnings.length > 0 && ui.confirmWarnings && !(await ui.confirmWarnings(warnings))) return failed("preflight", "stopped at the operator's request after the warnings", "fix what the warnings say and run tandem install again", checks);
  const counts = (status: PreflightCheck["status"]) => checks.filter((check) => check.status === status).length;
  return { id: "preflight", status: "done", detail: `${counts("ok")} checks passed, ${counts("warn")} warnings, ${counts("skip")} judged later or not applicable`, checks };
}

// ---- pairing

const pairingFixes: Partial<Record<PairingFailureCode, string>> = {
  "wrong-code": "type the code the other node shows (tandem install --code CODE)",
  "invalid-code": "type the code the other node shows (tandem install --code CODE)",
  expired: "run tandem install on the other node again for a new code",
  "attempts-exhausted": "run tandem install on the other node again for a new code; if nobody typed wrong codes, someone on the replication network is guessing",
  "code-used": "the code was used by another exchange: run tandem install on the other node again for a new code",
  refused: "fix what the reason says on the named node, then run tandem install on both nodes again",
  closed: "start tandem install on the other node first (it shows the code and listens), and check the address",
  timeout: "check the replication link and the address, then try again",
};

function describeEnd(connect: "dial" | "accept", peer: string): string {
  return connect === "dial" ? `this node dials ${peer}` : `this node accepts ${peer}'s connection`;
}

async function pairingStep(context: InstallContext): Promise<StepResult> {
  const { settings, ui, environment } = context;
  const existing = context.existing;
  const paired = existing.config?.peer;
  if (paired) {
    if (settings.peer && formatHostPort(settings.peer) !== formatHostPort(paired.address)) {
      return failed("pairing", `this node is already paired with ${paired.name} at ${formatHostPort(paired.address)}, not ${formatHostPort(settings.peer)}`, `to pair it with another node, remove the [peer] table from ${existing.path} first (docs/install.md)`);
    }
    const witness = existing.config!.witnessPath;
    if (settings.witness && witness && path.resolve(settings.witness) !== witness) {
      return failed("pairing", `this node is already paired with the witness ${witness}, not ${path.resolve(settings.witness)}`, `to move the pair to another witness disk, change [witness] path in ${existing.path} on both nodes, restart both daemons and format it (tandem witness format)`);
    }
    context.config = existing.config;
    return { id: "pairing", status: "already-done", detail: `paired with ${paired.name} (${formatHostPort(paired.address)}); ${describeEnd(paired.connect, paired.name)}; cluster ${Buffer.from(paired.clusterId).toString("hex")}` };
  }
  if (existing.raw?.peer !== undefined && existing.error) return failed("pairing", `${existing.path} names a peer but does not load: ${existing.error}`, `fix it, or remove its [peer] table and pair again`);
  if (existing.raw === undefined && existing.error) return failed("pairing", existing.error, `fix or remove ${existing.path}`);

  const name = nodeName(context);
  const witnessPath = settings.witness ? path.resolve(settings.witness) : existing.config?.witnessPath;
  const facts = context.facts;
  const base: Omit<OfferBase, "listen"> = {
    name,
    connect: settings.connect ?? null,
    witnessId: facts?.witness?.byId ?? null,
    witnessPath: witnessPath ?? null,
    linkRttMs: facts && facts.linkRttMs.length > 0 ? linkRoundTripMs(facts.linkRttMs) : null,
    version: tandemVersion,
  };
  let result: PairingResult;
  const peerChecks: PreflightCheck["id"][] = ["witness-same", "clock-skew"];
  try {
    if (settings.peer) {
      const where = formatHostPort(settings.peer);
      let code = settings.code;
      let lastError: string | undefined;
      for (;;) {
        if (code === undefined) {
          if (!ui.askCode) return failed("pairing", `the code shown on the other node is needed to pair with ${where}`, "pass it with --code CODE");
          const typed = await ui.askCode(lastError);
          if (typed === null) return failed("pairing", "no code was typed", "run tandem install again when the other node shows its code");
          code = typed;
        }
        ui.progress("pairing", `exchanging keys with ${where}`);
        try {
          result = await dialForPairing({ peer: settings.peer, code, offer: { ...base, listen: settings.listen ? formatHostPort(settings.listen) : null }, defaultListenPort: installReplicationPortDefault, signal: environment.signal, now: environment.now });
          break;
        } catch (error) {
          // In the wizard a mistyped code is asked again; the other node counts the attempts.
          if (error instanceof PairingError && (error.code === "wrong-code" || error.code === "invalid-code") && ui.askCode) {
            lastError = error.message;
            code = undefined;
            continue;
          }
          throw error;
        }
      }
    } else {
      if (!settings.listen) return failed("pairing", "this node shows the code and listens for the other node on its replication address, but none was given", "pass --listen HOST:PORT (the address of this node on the replication link), or --peer ADDR to type the code the other node shows");
      const code = settings.code ? normalizePairingCode(settings.code) : newPairingCode();
      const listen = formatHostPort(settings.listen);
      ui.showCode({ code: formatPairingCode(code), expiresAtMs: environment.now() + pairingCodeLifetimeMs, listen });
      ui.progress("pairing", `waiting on ${listen} for the other node to type ${formatPairingCode(code)}`);
      const listened = await listenForPairing({ listen: settings.listen, code, offer: { ...base, listen }, onAttemptFailed: (info) => ui.attemptFailed(info), signal: environment.signal, now: environment.now });
      result = listened.result;
      // The link's round trip was measured by the initiator; the MTU is this side's interface towards it.
      if (facts) {
        Object.assign(facts, { linkRttMs: result.peer.offer.linkRttMs === null ? [] : [result.peer.offer.linkRttMs], linkError: undefined }, linkInterfaceFacts(listened.remoteAddress));
        peerChecks.push("link-rtt", "link-mtu");
      }
    }
  } catch (error) {
    if (error instanceof PairingError) return failed("pairing", error.message, pairingFixes[error.code]);
    throw error;
  }
  const judged = facts ? assessPreflight({ ...facts, peerWitnessId: result.peer.offer.witnessId, clockOffsetMs: result.clockOffsetMs }).filter((check) => peerChecks.includes(check.id)) : [];
  ui.progress("pairing", `writing ${settings.configPath}`);
  context.config = writePairedConfig(settings.configPath, existing.raw, {
    name,
    dataDir: dataDir(context),
    peer: { name: result.peer.name, connect: result.local.connect, address: result.peer.listen, listen: result.local.listen, clusterIdHex: Buffer.from(result.clusterId).toString("hex") },
    witnessPath,
    secret: result.secret,
  });
  context.configChanged = true;
  const clocks = result.clockOffsetMs === null ? "" : `; clocks ${Math.abs(result.clockOffsetMs)} ms apart`;
  return {
    id: "pairing",
    status: "done",
    detail: `paired with ${result.peer.name} (${result.peer.listen}); ${describeEnd(result.local.connect, result.peer.name)}; cluster ${Buffer.from(result.clusterId).toString("hex")}${clocks}; secret in ${path.join(path.dirname(settings.configPath), "pairing.secret")}`,
    checks: judged,
  };
}

// ---- witness

/** What the witness path holds; a path that does not exist is a failure with its fix, not an error. */
async function inspectWitness(context: InstallContext, witnessPath: string): Promise<WitnessContent | StepResult> {
  try {
    return await context.environment.witnessFormatter.inspect(context.config!);
  } catch (error) {
    if (error instanceof TandemError && error.code === "not_found") return failed("witness", `${witnessPath} does not exist`, `name the shared witness disk (/dev/disk/by-id/...) with --witness, or for a file witness create it on the shared storage first (truncate -s 1M ${witnessPath}), then run tandem install again`);
    if (error instanceof TandemError && error.code === "io_error") return failed("witness", error.message, `check the witness disk and this node's way to it (tandem witness show ${witnessPath} reads it), then run tandem install again`);
    throw error;
  }
}

async function witnessStep(context: InstallContext): Promise<StepResult> {
  const config = context.config!;
  const witnessPath = config.witnessPath;
  if (!witnessPath) return failed("witness", "no witness is named", "name the shared witness disk with --witness /dev/disk/by-id/... and run tandem install again");
  const peer = config.peer!;
  const cluster = Buffer.from(peer.clusterId).toString("hex");
  const overwrite = `check that ${witnessPath} is the shared witness disk of this pair, not a disk in use; to format it anyway (destroying what it holds): tandem witness format --force --cluster ${cluster} ${witnessPath}, then run tandem install again`;
  /** Anything but blank or this pair's witness stops the install: it never overwrites by itself. */
  const refuse = (content: Exclude<WitnessContent, { kind: "blank" | "ours" }>): StepResult =>
    content.kind === "other-timings"
      ? failed("witness", `${witnessPath} holds ${content.detail}`, `give both nodes the [witness] timings it was formatted with (tandem witness show ${witnessPath}), or, while no volume is in use, format it again: tandem witness format --force --cluster ${cluster} ${witnessPath}`)
      : failed("witness", `${witnessPath} holds ${content.detail}`, overwrite);
  const content = await inspectWitness(context, witnessPath);
  if ("id" in content) return content;
  if (content.kind === "ours") return { id: "witness", status: "already-done", detail: `${witnessPath} holds this pair's witness (${content.detail})` };
  if (content.kind !== "blank") return refuse(content);
  // One node formats: the one that accepts the link. The other waits to see its format.
  if (peer.connect === "accept") {
    try {
      const formatted = await context.environment.witnessFormatter.format(config, (text) => context.ui.progress("witness", text));
      return { id: "witness", status: "done", detail: `formatted ${witnessPath} for this pair (cluster ${cluster}): ${formatted.detail}` };
    } catch (error) {
      if (error instanceof WitnessHoldsData) return failed("witness", error.message, overwrite);
      throw error;
    }
  }
  const deadline = context.environment.now() + installWitnessWaitMs;
  context.ui.progress("witness", `waiting for ${peer.name} to format ${witnessPath}`);
  for (;;) {
    await pause(context.environment.signal, installWitnessPollMs);
    const seen = await inspectWitness(context, witnessPath);
    if ("id" in seen) return seen;
    if (seen.kind === "ours") return { id: "witness", status: "done", detail: `${peer.name} formatted ${witnessPath} for this pair (${seen.detail})` };
    if (seen.kind !== "blank") return refuse(seen);
    if (context.environment.now() > deadline) return failed("witness", `${peer.name} has not formatted ${witnessPath} within ${installWitnessWaitMs / 1000} s`, `see tandem install on ${peer.name} (it formats the witness; both nodes must name the same shared disk); then run tandem install here again`);
  }
}

// ---- service

async function waitForDaemon(socket: string, environment: InstallEnvironment, timeoutMs: number): Promise<StatusReport | string> {
  const client = new ControlClient(socket, { timeoutMs: 2_000 });
  const deadline = environment.now() + timeoutMs;
  let last = "";
  for (;;) {
    try {
      return await client.status();
    } catch (error) {
      last = (error as Error).message;
    }
    if (environment.now() > deadline) return last;
    await pause(environment.signal, 200);
  }
}

async function serviceStep(context: InstallContext): Promise<StepResult> {
  const { settings, environment } = context;
  context.ui.progress("service", "asking systemd about tandem.service");
  const facts = environment.serviceFacts(environment.env);
  const plan = planService(facts, settings.configPath, context.configChanged);
  if (plan.kind === "skip") return { id: "service", status: "skipped", detail: plan.reason, fix: plan.fix };
  if (plan.kind === "fail") return failed("service", plan.reason, plan.fix);
  if (plan.kind === "already") return { id: "service", status: "already-done", detail: plan.detail };
  context.ui.progress("service", `systemctl ${plan.commands.map((command) => command.join(" ")).join(", then ")}`);
  const ran = runServiceCommands(facts.systemctl!, plan.commands);
  if (!ran.ok) return failed("service", ran.reason, "see journalctl -u tandem.service");
  const socket = controlSocket(context);
  context.ui.progress("service", `waiting for the daemon on ${socket}`);
  const status = await waitForDaemon(socket, environment, installDaemonStartTimeoutMs);
  if (typeof status === "string") return failed("service", `systemd started tandem.service, but the daemon does not answer on ${socket} within ${installDaemonStartTimeoutMs / 1000} s (${status})`, "see journalctl -u tandem.service");
  return { id: "service", status: "done", detail: `systemctl ${plan.commands.map((command) => command.join(" ")).join(", ")}: the daemon (node ${status.node.name}) answers on ${socket}` };
}

// ---- link

async function linkStep(context: InstallContext): Promise<StepResult> {
  const socket = controlSocket(context);
  const peer = context.config!.peer!;
  const first = await waitForDaemon(socket, context.environment, 0);
  if (typeof first === "string") return failed("link", `the daemon does not answer on ${socket}`, `start it (systemctl start tandem, or tandem node run --config ${context.settings.configPath}), then run tandem install again`);
  const rtt = (status: StatusReport) => (status.node.link?.rttMs === null || status.node.link?.rttMs === undefined ? "" : `, round trip ${status.node.link.rttMs.toFixed(2)} ms`);
  if (first.node.link?.connected) return { id: "link", status: "already-done", detail: `the link to ${peer.name} is up${rtt(first)}` };
  context.ui.progress("link", `waiting for the link to ${peer.name} (${describeEnd(peer.connect, peer.name)})`);
  const client = new ControlClient(socket, { timeoutMs: 2_000 });
  const deadline = context.environment.now() + installLinkUpTimeoutMs;
  let last = first;
  for (;;) {
    await pause(context.environment.signal, 200);
    try {
      last = await client.status();
      if (last.node.link?.connected) return { id: "link", status: "done", detail: `the link to ${peer.name} is up with the new secret${rtt(last)}` };
    } catch {
      // The daemon restarting: keep waiting until the deadline.
    }
    if (context.environment.now() > deadline) {
      const why = last.node.link?.lastError ? `: ${last.node.link.lastError}` : "";
      return failed("link", `the link to ${peer.name} did not come up within ${installLinkUpTimeoutMs / 1000} s${why}`, `is tandem install done on ${peer.name} and its daemon running? See tandem events on both nodes`);
    }
  }
}

// ---- the first volume

async function volumeStep(context: InstallContext): Promise<StepResult> {
  let request = context.settings.volume;
  if (!request && context.ui.askVolume) request = (await context.ui.askVolume()) ?? undefined;
  if (!request) return { id: "volume", status: "skipped", detail: "no first volume was asked for", fix: "create volumes with tandem volume create NAME --size SIZE" };
  const client = new ControlClient(controlSocket(context));
  const existing = async (): Promise<VolumeView | undefined> => {
    try {
      return await client.request<VolumeView>("GET", `/volumes/${encodeURIComponent(request.name)}`);
    } catch (error) {
      if (error instanceof TandemError && error.code === "not_found") return undefined;
      throw error;
    }
  };
  const replicas = (view: VolumeView) => view.nodes.map((replica) => `${replica.node} ${replica.state}`).join(", ");
  const already = (view: VolumeView): StepResult =>
    view.size === request.sizeBytes
      ? { id: "volume", status: "already-done", detail: `${view.name} exists (${formatSize(view.size)}; ${replicas(view)})` }
      : failed("volume", `${view.name} exists with ${formatSize(view.size)}, not ${formatSize(request.sizeBytes)}`, `choose another name, or resize it: tandem volume resize ${view.name} --size ...`);
  const found = await existing();
  if (found) return already(found);
  context.ui.progress("volume", `creating ${request.name} (${formatSize(request.sizeBytes)})`);
  try {
    const created = await client.request<VolumeView>("POST", "/volumes", { name: request.name, size: request.sizeBytes });
    return { id: "volume", status: "done", detail: `created ${created.name} (${formatSize(created.size)}), primary on ${context.config!.name}; ${replicas(created)}` };
  } catch (error) {
    // The other node created it a moment ago (both were asked for it).
    if (error instanceof TandemError && error.code === "already_exists") {
      const raced = await existing();
      if (raced) return already(raced);
    }
    throw error;
  }
}

const steps: Record<StepId, (context: InstallContext) => Promise<StepResult>> = {
  preflight: preflightStep,
  pairing: pairingStep,
  witness: witnessStep,
  service: serviceStep,
  link: linkStep,
  volume: volumeStep,
};

/** Run the steps in order (only those in `only`); the first failure stops the rest. */
export async function runInstall(settings: InstallSettings, ui: InstallUi, environment: InstallEnvironment, only: readonly StepId[] = stepOrder): Promise<InstallReport> {
  const existing = readExistingConfig(settings.configPath);
  const context: InstallContext = { settings, ui, environment, existing, config: existing.config?.peer ? existing.config : undefined, configChanged: false, facts: undefined };
  const results: StepResult[] = [];
  let stoppedBy: StepId | undefined;
  for (const id of stepOrder) {
    if (!only.includes(id)) continue;
    let result: StepResult;
    if (stoppedBy) result = { id, status: "skipped", detail: `not run: the ${stepTitles[stoppedBy].toLowerCase()} step failed` };
    else {
      ui.stepStarted(id);
      try {
        result = id !== "preflight" && id !== "pairing" && !context.config ? failed(id, "this node is not paired", "run the pairing step first (tandem install)") : await steps[id](context);
      } catch (error) {
        result = failed(id, error instanceof TandemError ? error.message : `unexpected error: ${(error as Error)?.stack ?? String(error)}`);
      }
      if (result.status === "failed") stoppedBy = id;
    }
    results.push(result);
    ui.stepFinished(result);
  }
  return { ok: stoppedBy === undefined, node: context.config?.name ?? (context.existing.raw ? nodeName(context) : (settings.name ?? null)), config: settings.configPath, steps: results };
}
