// The dashboard's reducer and derived views (src/tui/state.ts) without rendering: snapshots feed
// IO rates and resync progress, failed polls and time make the data stale with its age, keys move
// the selection and walk the failover screen's confirmation (a planned switchover takes `y`, a
// forced promotion the volume's name typed out), and the failover plan says what happens, what
// freezes and what a forced promotion discards.
import { describe, expect, test } from "bun:test";
import { type Action, type DashboardState, freshness, initialState, type KeyName, planFailover, reduce, resyncProgress } from "../../src/tui/state.ts";
import { tuiStaleAfterMs } from "../../src/constants.ts";
import { eventsFixture, fixtureTimeMs as t0, statusFixture } from "../helpers/status-fixtures.ts";

const steps = (state: DashboardState, actions: Action[]) => actions.reduce(reduce, state);
/** Keys by name ("down", "yes"), or single characters typed. */
const charOf: Partial<Record<KeyName, string>> = { yes: "y", failover: "f", help: "?", quit: "q", refresh: "r" };
const keys = (state: DashboardState, ...names: (KeyName | string)[]) =>
  steps(
    state,
    names.map((name): Action => (name.length === 1 ? { kind: "key", key: "char", char: name } : { kind: "key", key: name as KeyName, char: charOf[name as KeyName] ?? "" })),
  );
const healthy = statusFixture({ volumes: [{ name: "vm1", local: "synced" }, { name: "vm2", local: "synced" }] });
const start = () => reduce(initialState("/run/tandem/control.sock", t0), { kind: "snapshot", status: healthy, events: eventsFixture(3), atMs: t0 });

describe("snapshots and freshness", () => {
  test("before any answer the dashboard is connecting; a failed poll is kept as the reason", () => {
    const state = reduce(initialState("/s", t0), { kind: "pollFailed", error: "cannot reach the Tandem daemon at /s", atMs: t0 + 800 });
    expect(freshness(state)).toEqual({ kind: "connecting", sinceMs: t0, error: "cannot reach the Tandem daemon at /s" });
  });

  test("live while recent; stale with its age after a failed poll or once older than the stale bound; live again on the next answer", () => {
    let state = start();
    expect(freshness(state)).toEqual({ kind: "live", ageMs: 0 });
    state = reduce(state, { kind: "tick", nowMs: t0 + 1000 });
    expect(freshness(state)).toEqual({ kind: "live", ageMs: 1000 });
    state = reduce(state, { kind: "pollFailed", error: "no answer within 800 ms", atMs: t0 + 2000 });
    expect(freshness(state)).toEqual({ kind: "stale", ageMs: 2000, error: "no answer within 800 ms" });
    state = reduce(start(), { kind: "tick", nowMs: t0 + tuiStaleAfterMs + 1 });
    expect(freshness(state).kind).toBe("stale");
    state = reduce(state, { kind: "snapshot", status: healthy, events: [], atMs: t0 + tuiStaleAfterMs + 2 });
    expect(freshness(state)).toEqual({ kind: "live", ageMs: 0 });
  });

  test("IO rates come from the counters of two snapshots; a counter that went back (restart) gives no rate", () => {
    const before = statusFixture({ volumes: [{ name: "vm1", local: "synced", readBytes: 0, writeBytes: 1 << 20 }] });
    const after = statusFixture({ volumes: [{ name: "vm1", local: "synced", readBytes: 4 << 20, writeBytes: 3 << 20 }] });
    let state = steps(initialState("/s", t0), [
      { kind: "snapshot", status: before, events: [], atMs: t0 },
      { kind: "snapshot", status: after, events: [], atMs: t0 + 2000 },
    ]);
    expect(state.rates.vm1).toEqual({ readBytesPerSecond: 2 << 20, writeBytesPerSecond: 1 << 20, readOpsPerSecond: 512, writeOpsPerSecond: 256 });
    state = reduce(state, { kind: "snapshot", status: before, events: [], atMs: t0 + 3000 });
    expect(state.rates.vm1).toBeUndefined();
  });

  test("resync progress: fraction, rate and ETA from the replication detail", () => {
    const status = statusFixture({ volumes: [{ name: "vm1", local: "resyncing", resync: { direction: "source", bytesCopied: 300, bytesRemaining: 700, rateBytesPerSecond: 100, etaSeconds: 7 } }] });
    expect(resyncProgress(status.volumes[0]!)).toEqual({ direction: "source", fraction: 0.3, bytesCopied: 300, bytesTotal: 1000, rateBytesPerSecond: 100, etaSeconds: 7 });
    expect(resyncProgress(healthy.volumes[0]!)).toBeUndefined();
  });
});

describe("keys", () => {
  test("up and down move the selection within the volumes; ? opens help and Esc closes it; q quits", () => {
    let state = keys(start(), "down", "down", "down");
    expect(state.selected).toBe(1);
    state = keys(state, "up", "up");
    expect(state.selected).toBe(0);
    expect(keys(start(), "help").screen).toEqual({ kind: "help" });
    expect(keys(start(), "help", "escape").screen).toEqual({ kind: "dashboard" });
    expect(keys(start(), "quit").screen).toEqual({ kind: "quit" });
  });

  test("a snapshot with fewer volumes pulls the selection back in range", () => {
    const state = reduce(keys(start(), "down"), { kind: "snapshot", status: statusFixture({ volumes: [{ name: "vm1", local: "synced" }] }), events: [], atMs: t0 + 1000 });
    expect(state.selected).toBe(0);
  });

  test("planned switchover: f reviews, Enter asks, y confirms; Esc steps back", () => {
    let state = keys(start(), "down", "failover");
    expect(state.screen).toEqual({ kind: "failover", volume: "vm2", step: "review", typed: "" });
    state = keys(state, "enter");
    expect(state.screen).toMatchObject({ step: "confirm" });
    expect(keys(state, "escape").screen).toMatchObject({ step: "review" });
    expect(keys(state, "n").screen).toMatchObject({ step: "confirm" });
    // y asks the daemon (the screen runs it): Enter waits for the answer, then goes back.
    const requested = keys(state, "yes");
    expect(requested.screen).toMatchObject({ step: "requested", outcome: { kind: "running", to: "b", force: false } });
    expect(keys(requested, "enter").screen).toMatchObject({ step: "requested" });
    const answered = reduce(requested, { kind: "failoverResult", volume: "vm2", ok: true, message: "vm2: primary moved from a to b" });
    expect(answered.screen).toMatchObject({ outcome: { kind: "done", message: "vm2: primary moved from a to b" } });
    expect(answered.refreshRequested).toBe(true);
    expect(keys(answered, "enter").screen).toEqual({ kind: "dashboard" });
    const refused = reduce(requested, { kind: "failoverResult", volume: "vm2", ok: false, message: "vm2 is open for writing on a by nbd unix #1" });
    expect(refused.screen).toMatchObject({ outcome: { kind: "failed", error: "vm2 is open for writing on a by nbd unix #1" } });
  });

  test("forced promotion: only the volume's name typed out confirms it; y does not", () => {
    const cut = statusFixture({ node: "b", peer: "a", linkUp: false, volumes: [{ name: "vm1", primary: "a", local: "synced" }] });
    let state = keys(reduce(initialState("/s", t0), { kind: "snapshot", status: cut, events: [], atMs: t0 }), "failover", "enter");
    expect(state.screen).toMatchObject({ step: "confirm", typed: "" });
    state = keys(state, "yes", "enter");
    expect(state.screen).toMatchObject({ step: "confirm", typed: "y" });
    state = keys(state, "backspace", "v", "m", "1", "enter");
    expect(state.screen).toEqual({ kind: "failover", volume: "vm1", step: "requested", typed: "vm1", outcome: { kind: "running", to: "b", force: true } });
  });

  test("a forced confirmation types every printable key, even those that are commands elsewhere", () => {
    const cut = statusFixture({ node: "b", peer: "a", linkUp: false, volumes: [{ name: "jfq-kr", primary: "a", local: "synced" }] });
    let state = keys(reduce(initialState("/s", t0), { kind: "snapshot", status: cut, events: [], atMs: t0 }), "failover", "enter");
    state = steps(state, [
      { kind: "key", key: "down", char: "j" },
      { kind: "key", key: "failover", char: "f" },
      { kind: "key", key: "quit", char: "q" },
      { kind: "key", key: "char", char: "-" },
      { kind: "key", key: "up", char: "k" },
      { kind: "key", key: "refresh", char: "r" },
      { kind: "key", key: "up", char: "" },
      { kind: "key", key: "enter", char: "\r" },
    ]);
    expect(state.screen).toEqual({ kind: "failover", volume: "jfq-kr", step: "requested", typed: "jfq-kr", outcome: { kind: "running", to: "b", force: true } });
  });

  test("when failover is impossible, Enter goes back to the dashboard instead of asking", () => {
    const standalone = statusFixture({ peer: null, volumes: [{ name: "vm1", local: "standalone" }] });
    const state = keys(reduce(initialState("/s", t0), { kind: "snapshot", status: standalone, events: [], atMs: t0 }), "failover", "enter");
    expect(state.screen).toEqual({ kind: "dashboard" });
  });
});

describe("failover plan", () => {
  test("synced pair: a planned switchover that loses nothing and pauses IO on the old primary", () => {
    const plan = planFailover(healthy, "vm1");
    expect(plan).toMatchObject({ kind: "switchover", from: "a", to: "b", command: "tandem failover --to b vm1" });
    if (plan.kind === "switchover") expect(plan.freezes).toContain("IO on vm1 pauses on a");
  });

  test("link down, seen from the secondary: forced, says the old primary must be fenced and which writes are discarded", () => {
    const cut = statusFixture({ node: "b", peer: "a", linkUp: false, linkSinceMs: t0 - 30_000, volumes: [{ name: "vm1", primary: "a", local: "synced" }] });
    const plan = planFailover(cut, "vm1");
    expect(plan.kind).toBe("forced");
    if (plan.kind !== "forced") return;
    expect(plan.freezes).toStartWith("a must be stopped or fenced first");
    expect(plan.discards).toBe("Every write a acknowledged after 2026-01-15 11:59:30 UTC and b never received is discarded when a rejoins (it resyncs from b).");
    expect(plan.command).toBe("tandem failover --to b vm1 --force");
  });

  test("not possible: standalone, split brain, a resyncing target, or a forced promotion asked of the side that cannot see the target", () => {
    expect(planFailover(statusFixture({ peer: null, volumes: [{ name: "v", local: "standalone" }] }), "v").kind).toBe("impossible");
    expect(planFailover(statusFixture({ volumes: [{ name: "v", local: "split-brain" }] }), "v")).toMatchObject({ kind: "impossible", reason: expect.stringContaining("tandem volume resolve v --keep NODE") });
    const resyncing = statusFixture({ volumes: [{ name: "v", local: "resyncing", remote: "resyncing", resync: { direction: "source", bytesCopied: 1, bytesRemaining: 1, rateBytesPerSecond: 1 } }] });
    expect(planFailover(resyncing, "v")).toMatchObject({ kind: "impossible", reason: "b is resyncing (50%): a planned switchover waits until both replicas are synced" });
    expect(planFailover(statusFixture({ linkUp: false, volumes: [{ name: "v", local: "degraded" }] }), "v").kind).toBe("impossible");
  });
});
