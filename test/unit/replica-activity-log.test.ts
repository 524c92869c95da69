// Proves the activity log's bookkeeping: writes need their extents hot, a full log evicts the least
// recently used idle extent and never one in use or protected, and a plan that cannot fit says so.
import { expect, test } from "bun:test";
import { ActivityLog } from "../../src/replica/activity-log.ts";
import { blockBytes } from "../sim/oracle.ts";
import { Scenario } from "../sim/scenario.ts";

test("cold extents are missing until a transaction commits them", () => {
  const log = new ActivityLog(1024, 3);
  expect(log.missing(1000, 100)).toEqual([0, 1]);
  const plan = log.plan([0, 1])!;
  expect(plan).toEqual({ add: [0, 1], evict: [] });
  log.commit(plan, 1);
  expect(log.missing(1000, 100)).toEqual([]);
  expect(log.sequence).toBe(1);
});

test("a full log evicts the least recently used idle extent, never a busy or protected one", () => {
  const log = new ActivityLog(1024, 3, [0, 1, 2]);
  log.acquire(0, 10); // extent 0 busy
  log.acquire(2048, 10);
  log.release(2048, 10); // extent 2 used most recently
  expect(log.plan([5])).toEqual({ add: [5], evict: [1] });
  expect(log.plan([5], new Set([1]))).toEqual({ add: [5], evict: [2] });
  expect(log.plan([5, 6, 7])).toBeUndefined(); // 0 is busy: only two idle
  log.release(0, 10);
  const plan = log.plan([5, 6, 7])!;
  expect(plan.evict.sort()).toEqual([0, 1, 2]);
  expect(log.after(plan)).toEqual([5, 6, 7]);
  log.commit(plan, 2);
  expect(log.extents).toEqual([5, 6, 7]);
});

test("acquiring a cold extent is a bug", () => {
  const log = new ActivityLog(1024, 2);
  expect(() => log.acquire(0, 1)).toThrow(/hot before a write/);
});

test("a failed transaction leaves only what both the old and the planned log cover hot", () => {
  const log = new ActivityLog(1024, 2, [0, 1], 4);
  const plan = log.plan([2])!; // evicts 0 (least recently used)
  expect(plan).toEqual({ add: [2], evict: [0] });
  log.failed(plan, 5);
  expect(log.extents).toEqual([1]); // 0 may be gone from the log on disk, 2 never reached it
  expect(log.missing(0, 1)).toEqual([0]);
  expect(log.sequence).toBe(5); // the next transaction never reuses the failed one's slot
});

test("writes queued behind a busy activity-log transaction all complete when together they need more extents than the log holds", () => {
  // A full log (capacity 3) of idle extents 18, 20, 21 while a write to 21 is in flight, and two
  // writes queued behind its transaction: one to cold extent 17, one across 18-20 (19 cold). Both
  // cannot be hot at once (17, 18, 19, 20 is four). The write path must take them one transaction
  // at a time; counting the second write's extents only partly, it asked for 17 and 19 together
  // with 18 and 20 protected: a plan that can never fit, and nothing was left to wake the queue.
  const scenario = new Scenario({ blocks: 32, config: { activityLogExtentBytes: blockBytes, activityLogExtentsMax: 3 } });
  scenario.waitSynced();
  scenario.complete(scenario.write("a", 18));
  scenario.complete(scenario.write("a", 20));
  const ops = [scenario.write("a", 21), scenario.write("a", 17), scenario.write("a", 18, { count: 3 })];
  for (const op of ops) scenario.complete(op);
  expect(ops.map((op) => op.error)).toEqual([null, null, null]);
  expect(scenario.blockValue("b", 19)).toBe(ops[2]!.tag!);
  expect(scenario.blockValue("b", 17)).toBe(ops[1]!.tag!);
});
