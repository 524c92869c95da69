// Proves the session's input buffer hands out exactly the bytes that arrived, in order, however
// the socket chunked them: a seeded model test runs long random sequences of push, peek, take,
// peekAt, copyOut and skip against a plain array and compares every byte returned; and peeking twice
// without consuming (what the session does while an option's data is still arriving) must not
// duplicate or drop bytes. A fuzz run found exactly that bug once; this keeps it found.
import { expect, test } from "bun:test";
import { InputQueue } from "../../src/node/export/nbd/session.ts";

function random(seed: number): () => number {
  let state = seed >>> 0;
  return () => {
    state = (state + 0x6d2b79f5) >>> 0;
    let t = state;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

test("peek across chunks, then peek again before consuming, returns the same bytes", () => {
  const queue = new InputQueue();
  queue.push(Uint8Array.from([1, 2, 3]));
  queue.push(Uint8Array.from([4, 5, 6, 7, 8]));
  expect([...queue.peek(5)!.subarray(0, 5)]).toEqual([1, 2, 3, 4, 5]);
  expect([...queue.peek(5)!.subarray(0, 5)]).toEqual([1, 2, 3, 4, 5]);
  expect([...queue.peek(7)!.subarray(0, 7)]).toEqual([1, 2, 3, 4, 5, 6, 7]);
  expect(queue.peek(9)).toBeUndefined();
  expect([...queue.take(8)]).toEqual([1, 2, 3, 4, 5, 6, 7, 8]);
  expect(queue.length).toBe(0);
});

test("a model of the queue agrees with it over random operation sequences", () => {
  for (let seed = 1; seed <= 200; seed++) {
    const next = random(seed);
    const queue = new InputQueue();
    const model: number[] = [];
    let counter = 0;
    for (let step = 0; step < 300; step++) {
      const choice = next();
      if (choice < 0.35) {
        const length = Math.floor(next() * 40);
        const chunk = Uint8Array.from({ length }, () => counter++ & 0xff);
        queue.push(chunk);
        model.push(...chunk);
      } else if (choice < 0.45) {
        const want = 1 + Math.floor(next() * 50);
        const view = queue.peek(want);
        if (want > model.length) expect(view).toBeUndefined();
        else expect([...view!.subarray(0, want)]).toEqual(model.slice(0, want));
      } else if (choice < 0.55) {
        const want = 1 + Math.floor(next() * 50);
        const at = queue.peekAt(want);
        if (want > model.length) expect(at).toBeUndefined();
        else expect([...at!.chunk.subarray(at!.offset, at!.offset + want)]).toEqual(model.slice(0, want));
      } else if (choice < 0.7) {
        const want = Math.floor(next() * Math.min(60, model.length + 1));
        expect([...queue.take(want)]).toEqual(model.splice(0, want));
      } else if (choice < 0.85) {
        const target = new Uint8Array(64);
        const at = Math.floor(next() * 10);
        const copied = queue.copyOut(target, at, Math.floor(next() * 50));
        expect([...target.subarray(at, at + copied)]).toEqual(model.splice(0, copied));
      } else {
        const want = Math.floor(next() * 70);
        const skipped = queue.skip(want);
        expect(skipped).toBe(Math.min(want, model.length));
        model.splice(0, skipped);
      }
      expect(queue.length).toBe(model.length);
    }
  }
});
