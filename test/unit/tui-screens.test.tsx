// The dashboard's screens rendered with ink-testing-library at 80x24 from states the reducer makes
// out of status fixtures: healthy, degraded (link cut), resyncing (the bar moves between two
// snapshots), split brain, daemon unreachable, data stale with its age, help, and the failover
// screen's confirmation flow driven by keys through the App with a scripted source. Every frame
// must fit 80 columns and 24 lines; with colour off (NO_COLOR) no escape sequence is written.
import { afterEach, describe, expect, test } from "bun:test";
import chalk from "chalk";
import { cleanup, render } from "ink-testing-library";
import { App, type DashboardSource } from "../../src/tui/run.tsx";
import { Screen } from "../../src/tui/screens.tsx";
import { type Action, type DashboardState, initialState, reduce } from "../../src/tui/state.ts";
import { until } from "../helpers/until.ts";
import { eventsFixture, fixtureTimeMs as t0, statusFixture } from "../helpers/status-fixtures.ts";

afterEach(() => cleanup());

const socket = "/run/tandem/control.sock";
const escape = "\u001b";

function frameOf(state: DashboardState, color = false): string {
  const { lastFrame, unmount } = render(<Screen state={state} width={80} height={24} color={color} />);
  const frame = lastFrame() ?? "";
  unmount();
  return frame;
}

function fits(frame: string): void {
  const lines = frame.split("\n");
  expect(lines.length).toBeLessThanOrEqual(24);
  for (const line of lines) expect(Bun.stringWidth(line)).toBeLessThanOrEqual(80);
}

const snapshot = (status: ReturnType<typeof statusFixture>, atMs = t0, events = eventsFixture(4)): Action => ({ kind: "snapshot", status, events, atMs });
const stateWith = (...actions: Action[]) => actions.reduce(reduce, initialState(socket, t0));

describe("dashboard screens at 80x24", () => {
  test("healthy: node, link up with its round trip, quorum not configured, volumes, events, keys", () => {
    const frame = frameOf(stateWith(snapshot(statusFixture({ volumes: [{ name: "vm1", local: "synced" }, { name: "db", local: "synced" }] }))));
    fits(frame);
    const lines = frame.split("\n");
    expect(lines[0]).toBe("TANDEM node a  HEALTHY  live, 0.0s old");
    expect(lines[1]).toBe("nodes  a (this node, primary of 2)  <->  b  link UP  rtt 0.4 ms  since 11:59:00");
    expect(lines[2]).toBe("quorum not configured   witness not configured");
    expect(frame).toContain("> vm1            primary   synced      yes");
    expect(frame).toContain("  db             primary   synced      yes");
    expect(frame).toContain("event number 4");
    expect(lines.at(-1)).toBe("? keys  up/down select  f failover  r refresh  q quit");
    expect(lines.length).toBe(24);
  });

  test("degraded: link DOWN, the reasons, and the selected volume's limit and next step", () => {
    const frame = frameOf(stateWith(snapshot(statusFixture({ linkUp: false, volumes: [{ name: "vm1", local: "degraded", remote: "unknown" }] }))));
    fits(frame);
    expect(frame).toContain("TANDEM node a  DEGRADED");
    expect(frame).toContain("link DOWN  since 11:59:00");
    expect(frame).toContain("! replication link to b is down");
    expect(frame).toContain("> vm1            primary   degraded    yes*");
    expect(frame).toContain("vm1: writes, but peer b unreachable: writes are not mirrored");
  });

  test("resyncing: a progress bar with rate and ETA that moves between snapshots", () => {
    const at = (copied: number, eta: number) => statusFixture({ volumes: [{ name: "vm1", local: "resyncing", resync: { direction: "source", bytesCopied: copied, bytesRemaining: 1000 - copied, rateBytesPerSecond: 180 * 1048576, etaSeconds: eta } }] });
    const first = stateWith(snapshot(at(200, 12)));
    const second = reduce(first, snapshot(at(600, 4), t0 + 1000));
    const before = frameOf(first);
    const after = frameOf(second);
    fits(after);
    expect(before).toContain("resync to b [####................]  20%  180MiB/s  ETA 12s");
    expect(after).toContain("resync to b [############........]  60%  180MiB/s  ETA 4s");
  });

  test("split brain: the state and the command that ends it", () => {
    const frame = frameOf(stateWith(snapshot(statusFixture({ volumes: [{ name: "vm1", local: "split-brain" }] }))));
    fits(frame);
    expect(frame).toContain("split-brain");
    expect(frame.replace(/\n\s+/g, " ")).toContain("next: tandem volume resolve vm1 --keep a");
  });

  test("daemon unreachable: says so, with the socket and the error, and keeps drawing", () => {
    const frame = frameOf(stateWith({ kind: "pollFailed", error: `cannot reach the Tandem daemon at ${socket} (ENOENT)`, atMs: t0 + 900 }));
    fits(frame);
    expect(frame).toContain(`connecting to ${socket} (0.9s)`);
    expect(frame).toContain(`No answer from the daemon at ${socket} yet.`);
    expect(frame).toContain("(ENOENT)");
  });

  test("stale: the last data stays, marked STALE with its age and why", () => {
    const state = stateWith(snapshot(statusFixture({ volumes: [{ name: "vm1", local: "synced" }] })), { kind: "pollFailed", error: "no answer within 800 ms", atMs: t0 + 12_000 });
    const frame = frameOf(state);
    fits(frame);
    expect(frame.split("\n")[0]).toBe("TANDEM node a  HEALTHY  STALE: data 12s old");
    expect(frame).toContain("! cannot reach the daemon: no answer within 800 ms; showing the last data");
    expect(frame).toContain("> vm1");
  });

  test("many volumes and events still fit 80x24", () => {
    const volumes = Array.from({ length: 30 }, (_, index) => ({ name: `volume-with-a-long-name-${index}`, local: "synced" }));
    fits(frameOf(stateWith(snapshot(statusFixture({ volumes }), t0, eventsFixture(50)))));
  });

  test("NO_COLOR: no escape sequences at all; with colour the same text is styled", () => {
    const state = stateWith(snapshot(statusFixture({ linkUp: false, volumes: [{ name: "vm1", local: "degraded" }] })));
    const level = chalk.level;
    chalk.level = 1;
    try {
      const colored = frameOf(state, true);
      const plain = frameOf(state, false);
      expect(colored).toContain(escape);
      expect(plain).not.toContain(escape);
      expect(Bun.stripANSI(colored)).toBe(plain);
    } finally {
      chalk.level = level;
    }
  });
});

describe("keys through the App", () => {
  /** A source the test feeds; its failover requests are recorded and answered by the test. */
  function scripted(): { source: DashboardSource; send: (action: Action) => void; failovers: { volume: string; to: string; force: boolean; answer: (outcome: Error | string) => void }[] } {
    let dispatch: ((action: Action) => void) | undefined;
    const failovers: { volume: string; to: string; force: boolean; answer: (outcome: Error | string) => void }[] = [];
    return {
      source: {
        start: (next) => ((dispatch = next), { refresh() {}, stop() {} }),
        failover: (volume, to, force) => new Promise((resolve, reject) => failovers.push({ volume, to, force, answer: (outcome) => (typeof outcome === "string" ? resolve(outcome) : reject(outcome)) })),
      },
      send: (action) => dispatch!(action),
      failovers,
    };
  }

  test("? shows the keys; f on a synced pair walks review, confirm (y), runs the failover and shows its answer", async () => {
    const { source, send, failovers } = scripted();
    const app = render(<App socket={socket} source={source} color={false} width={80} height={24} now={() => t0} />);
    await until("the source started", () => app.lastFrame()?.includes("connecting"));
    send(snapshot(statusFixture({ volumes: [{ name: "vm1", local: "synced" }] })));
    await until("the snapshot drawn", () => app.lastFrame()?.includes("> vm1"));
    app.stdin.write("?");
    await until("help", () => app.lastFrame()?.includes("KEYS"));
    app.stdin.write("?");
    await until("back", () => app.lastFrame()?.includes("> vm1"));
    app.stdin.write("f");
    const review = await until("the failover review", () => (app.lastFrame()?.includes("Planned switchover of vm1: a -> b") ? app.lastFrame() : undefined));
    fits(review!);
    expect(review).toContain("What will happen");
    expect(review).toContain("What freezes");
    expect(review).toContain("nothing: both replicas hold every acknowledged write");
    app.stdin.write("\r");
    await until("the confirmation", () => app.lastFrame()?.includes("Press y to confirm"));
    app.stdin.write("y");
    await until("the request", () => (failovers.length === 1 ? failovers : undefined));
    expect(failovers.map(({ volume, to, force }) => ({ volume, to, force }))).toEqual([{ volume: "vm1", to: "b", force: false }]);
    await until("running", () => app.lastFrame()?.includes("Moving vm1 to b..."));
    failovers[0]!.answer("vm1: primary moved from a to b (role epoch 2); IO paused 14 ms");
    await until("the answer", () => app.lastFrame()?.includes("Done: vm1: primary moved from a to b (role epoch 2); IO paused 14 ms"));
  });

  test("a forced promotion states what is discarded and takes the volume's name typed out", async () => {
    const { source, send, failovers } = scripted();
    const app = render(<App socket={socket} source={source} color={false} width={80} height={24} now={() => t0} />);
    await until("the source started", () => app.lastFrame()?.includes("connecting"));
    send(snapshot(statusFixture({ node: "b", peer: "a", linkUp: false, volumes: [{ name: "vm1", primary: "a", local: "synced" }] })));
    await until("the snapshot drawn", () => app.lastFrame()?.includes("> vm1"));
    app.stdin.write("f");
    await until("the forced review", () => app.lastFrame()?.includes("FORCED promotion of vm1 on b"));
    expect(app.lastFrame()).toContain("What is DISCARDED");
    app.stdin.write("\r");
    await until("the confirmation", () => app.lastFrame()?.includes("Type the volume's name (vm1)"));
    app.stdin.write("y");
    app.stdin.write("\r");
    await until("y typed, not accepted", () => app.lastFrame()?.includes("  > y_"));
    app.stdin.write("\u007f");
    for (const char of "vm1") app.stdin.write(char);
    await until("the name typed", () => app.lastFrame()?.includes("  > vm1_"));
    app.stdin.write("\r");
    await until("the request", () => (failovers.length === 1 ? failovers : undefined));
    expect(failovers.map(({ volume, to, force }) => ({ volume, to, force }))).toEqual([{ volume: "vm1", to: "b", force: true }]);
    failovers[0]!.answer(new Error("a is connected: use a planned switchover (without --force)"));
    await until("the refusal", () => app.lastFrame()?.includes("Failed: a is connected"));
  });
});
