// Proves the in-flight region (src/node/export/vhost/inflight.ts) that makes reconnect after a
// back-end restart lose no request and answer none twice: heads marked when taken and cleared when
// published are the ones recovered, oldest first; a back-end killed between publishing a used
// entry and clearing its mark does not resubmit that head; a fresh region adopts the ring's index;
// and inconsistent regions are errors. Pure: the region is a plain array, the "restart" is a new
// InflightQueue over the same bytes.
import { describe, expect, test } from "bun:test";
import { InflightError, InflightQueue, inflightQueueBytes } from "../../src/node/export/vhost/inflight.ts";

function region(queueSize = 8): Uint8Array {
  const bytes = new Uint8Array(inflightQueueBytes(queueSize));
  InflightQueue.initialize(bytes, queueSize);
  return bytes;
}

describe("in-flight region", () => {
  test("size: 16-byte header plus 16 bytes per entry, rounded to 64", () => {
    expect(inflightQueueBytes(8)).toBe(192);
    expect(inflightQueueBytes(128)).toBe(2112);
  });

  test("taken and not published heads come back in the order they were taken", () => {
    const bytes = region();
    const first = new InflightQueue(bytes, 8);
    expect(first.recover(0)).toEqual([]);
    for (const head of [5, 2, 7, 0]) first.taken(head);
    // 2 completes (used index 0 -> 1).
    first.beforeUsed(2);
    first.afterUsed(2, 1);
    const restarted = new InflightQueue(bytes, 8);
    expect(restarted.recover(1)).toEqual([5, 7, 0]);
    // New heads are counted after the recovered ones.
    restarted.taken(2);
    expect(new InflightQueue(bytes, 8).recover(1)).toEqual([5, 7, 0, 2]);
  });

  test("killed after publishing the used entry but before clearing the mark: not resubmitted", () => {
    const bytes = region();
    const first = new InflightQueue(bytes, 8);
    first.recover(0);
    first.taken(3);
    first.taken(4);
    first.beforeUsed(4);
    // ... the used ring now says 1, but afterUsed never ran.
    expect(new InflightQueue(bytes, 8).recover(1)).toEqual([3]);
  });

  test("killed before the used index moved: resubmitted", () => {
    const bytes = region();
    const first = new InflightQueue(bytes, 8);
    first.recover(0);
    first.taken(3);
    first.beforeUsed(3);
    expect(new InflightQueue(bytes, 8).recover(0)).toEqual([3]);
  });

  test("a fresh region adopts whatever index the used ring has", () => {
    const bytes = region();
    expect(new InflightQueue(bytes, 8).recover(40000)).toEqual([]);
    expect(new InflightQueue(bytes, 8).recover(40000)).toEqual([]);
  });

  test("an all-zero region (never initialised) is initialised on recovery", () => {
    const bytes = new Uint8Array(inflightQueueBytes(8));
    expect(new InflightQueue(bytes, 8).recover(0)).toEqual([]);
    expect(new DataView(bytes.buffer).getUint16(8, true)).toBe(1);
  });

  test("inconsistent regions are errors", () => {
    const wrongSize = region(16);
    expect(() => new InflightQueue(wrongSize, 8).recover(0)).toThrow(InflightError);
    const wrongVersion = region();
    wrongVersion[8] = 9;
    expect(() => new InflightQueue(wrongVersion, 8).recover(0)).toThrow(/version/);
    const badMark = region();
    badMark[16 + 16 * 2] = 7;
    expect(() => new InflightQueue(badMark, 8).recover(0)).toThrow(/mark/);
    const behind = region();
    const queue = new InflightQueue(behind, 8);
    queue.taken(1);
    expect(() => new InflightQueue(behind, 8).recover(5)).toThrow(/past the in-flight record/);
    expect(() => new InflightQueue(new Uint8Array(64), 8)).toThrow(/too small/);
  });
});
