// What `tandem install` is made of and what it reports: the steps in their order, each step's
// result, the settings it runs with and the questions it may ask. Plain types and names, apart from
// the steps themselves (steps.ts), so the CLI can parse flags and print results without loading them.
import type { HostPort } from "../config.ts";
import type { PreflightCheck } from "./preflight.ts";

export const stepOrder = ["preflight", "pairing", "witness", "service", "link", "volume"] as const;
export type StepId = (typeof stepOrder)[number];

export const stepTitles: Record<StepId, string> = {
  preflight: "Preflight checks",
  pairing: "Pairing",
  witness: "Witness",
  service: "Service",
  link: "Replication link",
  volume: "First volume",
};

export type StepStatus = "done" | "already-done" | "skipped" | "failed";

export interface StepResult {
  id: StepId;
  status: StepStatus;
  /** What the step did or found, in one or two sentences. */
  detail: string;
  /** For failed and skipped steps: what to do. */
  fix?: string;
  /** Preflight verdicts (the preflight step, and the ones pairing judges). */
  checks?: PreflightCheck[];
}

export interface InstallSettings {
  /** The node config to write (absolute). */
  configPath: string;
  name?: string;
  dataDir?: string;
  /** This node's replication address. */
  listen?: HostPort;
  /** The other node's installer (this node types the code and dials it); absent: this node shows the code. */
  peer?: HostPort;
  code?: string;
  connect?: "dial" | "accept";
  witness?: string;
  volume?: { name: string; sizeBytes: number };
  /** The daemon's control socket, when not the config's. */
  socket?: string;
}

/** How the install talks to the operator. Optional questions are asked only by the wizard. */
export interface InstallUi {
  stepStarted(id: StepId): void;
  stepFinished(result: StepResult): void;
  progress(id: StepId, text: string): void;
  /** The code this node shows, until it is used or expires. */
  showCode(info: { code: string; expiresAtMs: number; listen: string }): void;
  attemptFailed(info: { remote: string; reason: string; attemptsLeft: number }): void;
  /** The code the other node shows; null gives up. `error` says why the last one failed. */
  askCode?(error: string | undefined): Promise<string | null>;
  /** Go on despite these warnings? */
  confirmWarnings?(checks: PreflightCheck[]): Promise<boolean>;
  /** The first volume, or null for none. */
  askVolume?(): Promise<{ name: string; sizeBytes: number } | null>;
}

export interface InstallReport {
  ok: boolean;
  node: string | null;
  config: string;
  steps: StepResult[];
}
