// Proves the two node-wide NBD bookkeepers without sockets: the memory budget (never more than its
// total granted; each connection held to its share while others want memory; waiters served in
// arrival order so a large request is not starved by small ones, while one over its own share
// does not hold up the others; a connection that holds nothing may take one request above its
// share; a withdrawn waiter lets the next through; waiters for room told from waiters over share) and the storage scheduler (in-flight cap, a
// per-turn allowance, connections taking turns, and a closed connection's queued work taken out).
import { describe, expect, test } from "bun:test";
import { MemoryBudget } from "../../src/node/export/nbd/budget.ts";
import { StorageScheduler } from "../../src/node/export/nbd/scheduler.ts";

const MiB = 1024 * 1024;

describe("memory budget", () => {
  const budget = (totalMiB = 64, shareMinMiB = 2, shareMaxMiB = 32) =>
    new MemoryBudget({ totalBytes: totalMiB * MiB, shareBytesMin: shareMinMiB * MiB, shareBytesMax: shareMaxMiB * MiB });

  test("grants up to the total, then queues; releases let waiters through in arrival order", () => {
    const memory = budget(64);
    expect(memory.request(1, 30 * MiB)).toBe(true);
    expect(memory.request(2, 30 * MiB)).toBe(true);
    expect(memory.request(3, 8 * MiB)).toBe(false); // 68 > 64
    expect(memory.request(4, 2 * MiB)).toBe(false); // would fit, but 3 came first and waits for room
    expect(memory.usedBytes).toBe(60 * MiB);
    expect(memory.release(1, 30 * MiB)).toEqual([
      { owner: 3, bytes: 8 * MiB },
      { owner: 4, bytes: 2 * MiB },
    ]);
    expect(memory.usedBytes).toBe(40 * MiB);
    expect(memory.waitingCount).toBe(0);
  });

  test("a greedy connection is held to its share while others want memory; the others are served", () => {
    const memory = budget(64, 2, 64);
    // Alone, the greedy one may take the whole budget in 4 MiB steps...
    for (let step = 0; step < 8; step++) expect(memory.request(1, 4 * MiB)).toBe(true);
    // ...but once two others want memory its share is a third, and it gets nothing more until it is under it.
    expect(memory.request(2, 4 * MiB)).toBe(true);
    expect(memory.request(3, 4 * MiB)).toBe(true);
    expect(memory.share()).toBe(Math.floor((64 * MiB) / 3));
    expect(memory.request(1, 4 * MiB)).toBe(false);
    expect(memory.request(2, 4 * MiB)).toBe(true); // not held up by the greedy one's wait
    expect(memory.release(1, 8 * MiB)).toEqual([]); // 24 MiB held is still over its share with a request of 4
    expect(memory.release(1, 12 * MiB)).toEqual([{ owner: 1, bytes: 4 * MiB }]); // 12 + 4 fits its share of 21.3
  });

  test("a connection holding nothing may take one request above its share; a withdrawn waiter lets the next through", () => {
    const memory = budget(64, 2, 16);
    expect(memory.request(1, 32 * MiB)).toBe(true); // a maximal write, above the 16 MiB share
    expect(memory.request(1, 1 * MiB)).toBe(false); // but nothing more beside it
    expect(memory.request(2, 40 * MiB)).toBe(false); // waits for room
    expect(memory.request(3, 1 * MiB)).toBe(false); // behind 2
    expect(memory.withdraw(2)).toEqual([{ owner: 3, bytes: 1 * MiB }]);
    expect(memory.release(1, 32 * MiB)).toEqual([{ owner: 1, bytes: 1 * MiB }]);
    expect(memory.usedBytes).toBe(2 * MiB);
  });

  test("tells waiters for room from waiters over their own share", () => {
    const memory = budget(64, 2, 32);
    expect(memory.request(1, 32 * MiB)).toBe(true);
    expect(memory.request(2, 30 * MiB)).toBe(true);
    expect(memory.request(1, 4 * MiB)).toBe(false); // over its share of 32
    expect(memory.ownersWaitingForRoom()).toEqual([]);
    expect(memory.request(3, 4 * MiB)).toBe(false); // no room: 62 + 4 > 64
    expect(memory.ownersWaitingForRoom()).toEqual([3]);
  });

  test("many connections each holding a share never exceed the total", () => {
    const memory = budget(64, 2, 32);
    let granted = 0;
    for (let owner = 1; owner <= 100; owner++) if (memory.request(owner, 2 * MiB)) granted++;
    expect(granted).toBe(32);
    expect(memory.usedBytes).toBe(64 * MiB);
    expect(memory.waitingCount).toBe(68);
    expect(() => memory.release(1, 4 * MiB)).toThrow(/releases/);
  });
});

describe("storage scheduler", () => {
  test("at most inFlightMax run; connections take turns; the per-turn allowance holds work for the next turn", () => {
    const scheduler = new StorageScheduler<string>({ inFlightMax: 3, operationsPerTurnMax: 100, bytesPerTurnMax: 10 * MiB });
    for (const name of ["a1", "a2", "a3", "a4"]) scheduler.submit(1, name, MiB);
    scheduler.submit(2, "b1", MiB);
    const started = [scheduler.next(), scheduler.next(), scheduler.next()].map((entry) => entry?.item);
    expect(started).toEqual(["a1", "b1", "a2"]);
    expect(scheduler.next()).toBeUndefined(); // three running
    scheduler.finished();
    expect(scheduler.next()?.item).toBe("a3");
    const turn = new StorageScheduler<number>({ inFlightMax: 100, operationsPerTurnMax: 100, bytesPerTurnMax: 3 * MiB });
    for (let index = 0; index < 5; index++) turn.submit(1, index, 2 * MiB);
    expect([turn.next()?.item, turn.next()?.item, turn.next()]).toEqual([0, 1, undefined]);
    expect(turn.waitsForTurn()).toBe(true);
    turn.nextTurn();
    expect(turn.next()?.item).toBe(2);
  });

  test("a closed connection's queued operations are taken out and never start", () => {
    const scheduler = new StorageScheduler<string>({ inFlightMax: 1, operationsPerTurnMax: 100, bytesPerTurnMax: 100 * MiB });
    scheduler.submit(1, "a1", 1);
    scheduler.submit(1, "a2", 1);
    scheduler.submit(2, "b1", 1);
    expect(scheduler.next()?.item).toBe("a1");
    expect(scheduler.cancel(1)).toEqual(["a2"]);
    scheduler.finished();
    expect(scheduler.next()?.item).toBe("b1");
    scheduler.finished();
    expect(scheduler.next()).toBeUndefined();
    expect(scheduler.queued).toBe(0);
  });
});
