// The lease's timing parameters (DESIGN.md §5), the relations between them that make the lease
// safe, and their conversion to the ticks the quorum core counts. Pure: no IO, no clock.
//
// Why the relations (ρ is the clock-rate bound: each node's monotonic clock runs at a rate within
// 1 ± ρ of real time, and no clock is shared):
//  - heartbeatInterval < selfFenceTimeout: a node that heartbeats on time never fences itself.
//  - ioTimeout ≤ heartbeatInterval: a heartbeat write that the writer counts as successful became
//    visible on the witness within a heartbeat interval of its start.
//  - watchdogTimeout ≤ selfFenceTimeout: a hung daemon is reset no later than a live one would
//    have fenced itself.
//  - (selfFenceTimeout + heartbeatInterval + tick)·(1+ρ) < deadTimeout·(1−ρ): a lease owner whose
//    heartbeats stall stops all IO (counting from the start of its last successful heartbeat write,
//    on its own clock, checked every tick) before the peer — which waits deadTimeout on ITS clock
//    after the last change it saw — may treat it as fenced. This is the lease's safety margin.
//  - linkTimeout·(1+ρ) < deadTimeout·(1−ρ): a node that still believed the link was up when its
//    peer lost it has frozen (rule 2) before the peer may promote its volumes.
import { TandemError } from "../common/errors.ts";
import {
  quorumBallotBackoffMsMax,
  quorumClockRateBoundDefault,
  quorumClockRateBoundMax,
  quorumDeadTimeoutMsDefault,
  quorumHeadStartMsDefault,
  quorumHeartbeatIntervalMsDefault,
  quorumIoTimeoutMsDefault,
  quorumLinkTimeoutMsDefault,
  quorumSelfFenceTimeoutMsDefault,
  quorumTickMs,
  quorumTimeoutMsMax,
  quorumWatchdogTimeoutMsDefault,
} from "../constants.ts";
import type { WitnessTiming } from "./format.ts";

export interface QuorumTiming {
  heartbeatIntervalMs: number;
  linkTimeoutMs: number;
  headStartMs: number;
  selfFenceTimeoutMs: number;
  deadTimeoutMs: number;
  watchdogTimeoutMs: number;
  ioTimeoutMs: number;
  /** ρ, a fraction (0.01 = each clock may run 1% fast or slow). */
  clockRateBound: number;
}

export const defaultQuorumTiming: QuorumTiming = {
  heartbeatIntervalMs: quorumHeartbeatIntervalMsDefault,
  linkTimeoutMs: quorumLinkTimeoutMsDefault,
  headStartMs: quorumHeadStartMsDefault,
  selfFenceTimeoutMs: quorumSelfFenceTimeoutMsDefault,
  deadTimeoutMs: quorumDeadTimeoutMsDefault,
  watchdogTimeoutMs: quorumWatchdogTimeoutMsDefault,
  ioTimeoutMs: quorumIoTimeoutMsDefault,
  clockRateBound: quorumClockRateBoundDefault,
};

export interface TimingRelation {
  name: string;
  holds: boolean;
  /** The relation with the numbers filled in. */
  detail: string;
}

function ms(value: number): string {
  return `${Number(value.toFixed(1))} ms`;
}

/** Every relation, evaluated (for `status`, the docs' worked example and the error message). */
export function timingRelations(timing: QuorumTiming, tickMs = quorumTickMs): TimingRelation[] {
  const t = timing;
  const fast = 1 + t.clockRateBound;
  const slow = 1 - t.clockRateBound;
  const ownerStops = (t.selfFenceTimeoutMs + t.heartbeatIntervalMs + tickMs) * fast;
  const peerActs = t.deadTimeoutMs * slow;
  return [
    { name: "heartbeatInterval < selfFenceTimeout", holds: t.heartbeatIntervalMs < t.selfFenceTimeoutMs, detail: `${ms(t.heartbeatIntervalMs)} < ${ms(t.selfFenceTimeoutMs)}` },
    { name: "ioTimeout ≤ heartbeatInterval", holds: t.ioTimeoutMs <= t.heartbeatIntervalMs, detail: `${ms(t.ioTimeoutMs)} ≤ ${ms(t.heartbeatIntervalMs)}` },
    { name: "watchdogTimeout ≤ selfFenceTimeout", holds: t.watchdogTimeoutMs <= t.selfFenceTimeoutMs, detail: `${ms(t.watchdogTimeoutMs)} ≤ ${ms(t.selfFenceTimeoutMs)}` },
    {
      name: "(selfFenceTimeout + heartbeatInterval + tick)·(1+ρ) < deadTimeout·(1−ρ)",
      holds: ownerStops < peerActs,
      detail: `(${t.selfFenceTimeoutMs} + ${t.heartbeatIntervalMs} + ${tickMs})·${fast} = ${ms(ownerStops)} < ${t.deadTimeoutMs}·${slow} = ${ms(peerActs)}`,
    },
    {
      name: "linkTimeout·(1+ρ) < deadTimeout·(1−ρ)",
      holds: t.linkTimeoutMs * fast < peerActs,
      detail: `${t.linkTimeoutMs}·${fast} = ${ms(t.linkTimeoutMs * fast)} < ${ms(peerActs)}`,
    },
  ];
}

/** How long before the peer may count this node as fenced does a stalled owner stop: the lease margin (ms of real time, worst case). */
export function leaseMarginMs(timing: QuorumTiming, tickMs = quorumTickMs): number {
  return timing.deadTimeoutMs * (1 - timing.clockRateBound) - (timing.selfFenceTimeoutMs + timing.heartbeatIntervalMs + tickMs) * (1 + timing.clockRateBound);
}

/**
 * Check every field and every relation; throws TandemError invalid_argument naming the field or the
 * violated relation (with its numbers) so the operator knows what to change.
 */
export function checkTiming(timing: QuorumTiming, source = "witness timing", tickMs = quorumTickMs): void {
  const integer: (keyof QuorumTiming)[] = ["heartbeatIntervalMs", "linkTimeoutMs", "headStartMs", "selfFenceTimeoutMs", "deadTimeoutMs", "watchdogTimeoutMs", "ioTimeoutMs"];
  for (const field of integer) {
    const value = timing[field];
    if (!Number.isInteger(value) || value < 0 || value > quorumTimeoutMsMax) throw new TandemError("invalid_argument", `${source}: ${field} must be a whole number of milliseconds from 0 to ${quorumTimeoutMsMax}, not ${value}`);
    if (value % tickMs !== 0) throw new TandemError("invalid_argument", `${source}: ${field} must be a multiple of the ${tickMs} ms tick, not ${value}`);
    if (field !== "headStartMs" && value === 0) throw new TandemError("invalid_argument", `${source}: ${field} must be positive`);
  }
  const rho = timing.clockRateBound;
  if (!Number.isFinite(rho) || rho < 0 || rho > quorumClockRateBoundMax) throw new TandemError("invalid_argument", `${source}: clockRateBound must be from 0 to ${quorumClockRateBoundMax}, not ${rho}`);
  if (Math.abs(rho * 1e6 - Math.round(rho * 1e6)) > 1e-6) throw new TandemError("invalid_argument", `${source}: clockRateBound is kept in parts per million; ${rho} has more digits`);
  for (const relation of timingRelations(timing, tickMs)) {
    if (!relation.holds) throw new TandemError("invalid_argument", `${source}: the lease is unsafe with these timings: ${relation.name} does not hold (${relation.detail})`);
  }
}

/** The same timings in the core's ticks, rounded so that every rounding is on the safe side. */
export interface QuorumTicks {
  tickMs: number;
  heartbeat: number;
  linkTimeout: number;
  headStart: number;
  /** Floor: the owner fences itself no later than configured. */
  selfFence: number;
  /** Ceil: the peer waits at least as long as configured. */
  dead: number;
  io: number;
  ballotBackoffMax: number;
}

export function timingTicks(timing: QuorumTiming, tickMs = quorumTickMs): QuorumTicks {
  return {
    tickMs,
    heartbeat: Math.max(1, Math.round(timing.heartbeatIntervalMs / tickMs)),
    linkTimeout: Math.max(1, Math.ceil(timing.linkTimeoutMs / tickMs)),
    headStart: Math.round(timing.headStartMs / tickMs),
    selfFence: Math.floor(timing.selfFenceTimeoutMs / tickMs),
    dead: Math.ceil(timing.deadTimeoutMs / tickMs),
    io: Math.max(1, Math.floor(timing.ioTimeoutMs / tickMs)),
    ballotBackoffMax: Math.max(1, Math.round(Math.min(quorumBallotBackoffMsMax, timing.headStartMs || quorumBallotBackoffMsMax) / tickMs)),
  };
}

export function timingToWitness(timing: QuorumTiming): WitnessTiming {
  const { clockRateBound, ...rest } = timing;
  return { ...rest, clockRateBoundPpm: Math.round(clockRateBound * 1e6) };
}

export function timingFromWitness(timing: WitnessTiming): QuorumTiming {
  const { clockRateBoundPpm, ...rest } = timing;
  return { ...rest, clockRateBound: clockRateBoundPpm / 1e6 };
}

/** The first field where two timings differ (a node must run with the timings its witness was formatted with). */
export function timingDifference(configured: QuorumTiming, formatted: QuorumTiming): string | undefined {
  for (const field of Object.keys(configured) as (keyof QuorumTiming)[]) {
    if (configured[field] !== formatted[field]) return `${field}: configured ${configured[field]}, witness formatted with ${formatted[field]}`;
  }
  return undefined;
}

// ---- The config file's [witness] and [watchdog] tables (parsed here, called by src/node/config.ts) ----

export type WatchdogMode = "auto" | "required" | "off";

export interface WatchdogConfig {
  mode: WatchdogMode;
  /** The watchdog device (a fake file in tests). */
  device: string;
}

export const defaultWatchdogConfig: WatchdogConfig = { mode: "auto", device: "/dev/watchdog" };

export interface WitnessConfig {
  path: string;
  timing: QuorumTiming;
}

type Raw = Record<string, unknown>;

const timingFields: (keyof QuorumTiming)[] = ["heartbeatIntervalMs", "headStartMs", "selfFenceTimeoutMs", "deadTimeoutMs", "watchdogTimeoutMs", "ioTimeoutMs", "clockRateBound"];

/** `[witness]`: `path` and optional timing overrides; `resolve` makes the path absolute. */
export function parseWitnessConfig(raw: Raw, source: string, resolve: (value: string) => string): WitnessConfig {
  const known = new Set<string>(["path", ...timingFields]);
  for (const key of Object.keys(raw)) if (!known.has(key)) throw new TandemError("invalid_argument", `${source}: witness.${key}: unknown field (linkTimeout is the replication link's, fixed at ${quorumLinkTimeoutMsDefault} ms)`);
  const pathValue = raw.path;
  if (typeof pathValue !== "string" || pathValue === "") throw new TandemError("invalid_argument", `${source}: witness.path: is required (a block device, partition or file)`);
  const timing: QuorumTiming = { ...defaultQuorumTiming };
  for (const field of timingFields) {
    const value = raw[field];
    if (value === undefined) continue;
    if (typeof value !== "number") throw new TandemError("invalid_argument", `${source}: witness.${field}: must be a number`);
    timing[field] = value;
  }
  checkTiming(timing, `${source}: witness`);
  if (timing.watchdogTimeoutMs % 1000 !== 0) throw new TandemError("invalid_argument", `${source}: witness.watchdogTimeoutMs must be whole seconds (the kernel watchdog counts seconds), not ${timing.watchdogTimeoutMs}`);
  return { path: resolve(pathValue), timing };
}

/** `watchdog = "auto" | "required" | "off"`, or a table `{ mode, device }`. */
export function parseWatchdogConfig(raw: unknown, source: string): WatchdogConfig {
  if (raw === undefined) return { ...defaultWatchdogConfig };
  let table: Raw;
  if (typeof raw === "string") table = { mode: raw };
  else if (typeof raw === "object" && raw !== null && !Array.isArray(raw)) table = raw as Raw;
  else throw new TandemError("invalid_argument", `${source}: watchdog: must be "auto", "required", "off" or a table { mode, device }`);
  for (const key of Object.keys(table)) if (key !== "mode" && key !== "device") throw new TandemError("invalid_argument", `${source}: watchdog.${key}: unknown field`);
  const mode = table.mode ?? defaultWatchdogConfig.mode;
  if (mode !== "auto" && mode !== "required" && mode !== "off") throw new TandemError("invalid_argument", `${source}: watchdog.mode: must be auto, required or off, not ${JSON.stringify(mode)}`);
  const device = table.device ?? defaultWatchdogConfig.device;
  if (typeof device !== "string" || device === "") throw new TandemError("invalid_argument", `${source}: watchdog.device: must be a non-empty path`);
  return { mode, device };
}
