// Link loss under the witness quorum (DESIGN.md §5 rule 2), in the replica core: with
// `freezeOnLinkLoss` a primary that loses its peer freezes at once — a write the peer never
// acknowledged is not answered, new IO waits — until its WriteAuthority grants again. A write grant
// in a new epoch (the node won the lease) completes the held write as written here alone, on a
// generation of its own; losing the grant fails it, so the loser acknowledged nothing the winner
// lacks. Scripted scenarios over two real replica drivers (test/sim/scenario.ts); the authority is
// driven by hand here, by the quorum in test/unit/quorum-authority.test.ts.
import { describe, expect, test } from "bun:test";
import { MessageType } from "../../src/replica/wire.ts";
import { blockBytes } from "../sim/oracle.ts";
import { Scenario } from "../sim/scenario.ts";

function frozenPair(): { scenario: Scenario; inFlight: ReturnType<Scenario["write"]> } {
  const scenario = new Scenario({ config: { freezeOnLinkLoss: true } });
  scenario.waitSynced();
  const synced = scenario.complete(scenario.write("a", 1));
  expect(synced.error).toBeNull();
  // b dies with a's next write on its way: b never acknowledges it.
  const seen = scenario.messages.length;
  const inFlight = scenario.write("a", 2);
  expect(scenario.messages.slice(seen).some((entry) => entry.from === "a" && entry.message.type === MessageType.Write && entry.message.offset === 2 * blockBytes)).toBe(true);
  scenario.crash("b");
  scenario.runUntil(() => !scenario.linkUp("a"), "a sees its link go down");
  // Long enough for a's local write to finish: the write is held, not merely still running.
  scenario.runFor(50);
  expect(scenario.status("a")?.writesInFlight).toBe(0);
  expect(inFlight.done).toBe(false);
  return { scenario, inFlight };
}

describe("freeze on link loss", () => {
  test("a write in flight when the link is lost is not answered while the grant is frozen, and new IO waits", () => {
    const { scenario, inFlight } = frozenPair();
    const later = scenario.write("a", 3);
    const read = scenario.read("a", 1);
    scenario.runFor(2000);
    expect(inFlight.done).toBe(false);
    expect(later.done).toBe(false);
    expect(read.done).toBe(false);
    expect(scenario.status("a")?.role).toBe("frozen");
    expect(scenario.reportsOf("a", "degraded" as never)).toEqual([]);
  });

  test("a write grant in a new epoch completes the held write alone, on a generation of its own", () => {
    const { scenario, inFlight } = frozenPair();
    const before = scenario.status("a")!.current;
    const later = scenario.write("a", 3);
    scenario.setRole("a", 1, true, 2);
    scenario.complete(inFlight);
    scenario.complete(later);
    expect(inFlight.error).toBeNull();
    expect(inFlight.info?.mirrored).toBe(false);
    expect(later.error).toBeNull();
    expect(scenario.status("a")!.current).not.toBe(before);
    expect(scenario.blockValue("a", 2)).toBe(inFlight.tag);
    expect(scenario.status("a")!.dirtyBytes).toBeGreaterThanOrEqual(2 * blockBytes);
    expect(scenario.status("a")!.epoch).toBe(2);
  });

  test("losing the grant fails the held write: nothing the winner lacks was acknowledged", () => {
    const { scenario, inFlight } = frozenPair();
    scenario.setRole("a", 1, false);
    scenario.complete(inFlight);
    expect(inFlight.error?.code).toBe("EIO");
    expect(inFlight.error?.message).toContain("may no longer write");
  });

  test("without freezeOnLinkLoss the primary goes on alone, DEGRADED (the static authority)", () => {
    const scenario = new Scenario();
    scenario.waitSynced();
    const inFlight = scenario.write("a", 2);
    scenario.crash("b");
    scenario.complete(inFlight);
    expect(inFlight.error).toBeNull();
    expect(inFlight.info?.mirrored).toBe(false);
  });
});
