// The rules that finish a mirrored create or delete across the pair (src/node/intents.ts), stepped
// with scripted holdings of both nodes, and the volume id allocation they rely on (src/node/state.ts):
// ids are never reused, the two nodes of a pair draw from disjoint halves, and a database from the
// previous schema is upgraded in place without reusing any id it holds.
import { Database } from "bun:sqlite";
import { describe, expect, test } from "bun:test";
import fs from "node:fs";
import os from "node:os";
import path from "node:path";
import { type PairSnapshot, pendingVolumes, planReconcile } from "../../src/node/intents.ts";
import { type IntentRecord, NodeState } from "../../src/node/state.ts";

const intent = (volume: string, id: number, operation: IntentRecord["operation"], force = false): IntentRecord => ({ volume, id, operation, ownedBacking: null, force, sinceMs: 1000 });
const holding = (volumes: [string, number][], intents: IntentRecord[] = []): PairSnapshot => ({ volumes: volumes.map(([name, id]) => ({ name, id })), intents });
const none = new Set<string>();

describe("planReconcile", () => {
  test("a delete intent asks the peer to drop that id, after finishing the local delete if the replica is still here", () => {
    expect(planReconcile(holding([], [intent("v", 3, "delete", true)]), holding([["v", 3]]), none)).toEqual([{ kind: "askPeerDelete", volume: "v", id: 3, force: true }]);
    expect(planReconcile(holding([["v", 3]], [intent("v", 3, "delete")]), holding([]), none)).toEqual([
      { kind: "finishLocalDelete", volume: "v", id: 3 },
      { kind: "askPeerDelete", volume: "v", id: 3, force: false },
    ]);
    // A local volume of the same name but another id is another volume: not touched.
    expect(planReconcile(holding([["v", 5]], [intent("v", 3, "delete")]), holding([["v", 3]]), none)).toEqual([{ kind: "askPeerDelete", volume: "v", id: 3, force: false }]);
  });

  test("a replica intent waits while the creator holds an intent on that id, commits when it holds the volume alone, aborts when it holds nothing", () => {
    const replica = holding([["v", 3]], [intent("v", 3, "replica")]);
    expect(planReconcile(replica, holding([["v", 3]], [intent("v", 3, "create")]), none)).toEqual([]);
    expect(planReconcile(replica, holding([], [intent("v", 3, "delete")]), none)).toEqual([]);
    expect(planReconcile(replica, holding([["v", 3]]), none)).toEqual([{ kind: "commitReplica", volume: "v", id: 3 }]);
    expect(planReconcile(replica, holding([]), none)).toEqual([{ kind: "abortReplica", volume: "v", id: 3 }]);
    // The creator holds a volume of that name under another id: ours was rolled back.
    expect(planReconcile(replica, holding([["v", 7]]), none)).toEqual([{ kind: "abortReplica", volume: "v", id: 3 }]);
  });

  test("a create intent is rolled back unless its create is running; running volumes are left alone", () => {
    const creating = holding([["v", 3]], [intent("v", 3, "create"), intent("w", 5, "delete")]);
    expect(planReconcile(creating, holding([]), none)).toEqual([
      { kind: "rollBackCreate", volume: "v", id: 3 },
      { kind: "askPeerDelete", volume: "w", id: 5, force: false },
    ]);
    expect(planReconcile(creating, holding([]), new Set(["v", "w"]))).toEqual([]);
  });
});

describe("pendingVolumes", () => {
  const names = { local: "a", peer: "b" };

  test("intents are reported with the node that must act and the next safe action", () => {
    const local = holding([["r", 4]], [intent("d", 3, "delete"), intent("r", 4, "replica")]);
    const pending = pendingVolumes(local, undefined, names, false);
    expect(pending.map(({ volume, id, state, node }) => ({ volume, id, state, node }))).toEqual([
      { volume: "d", id: 3, state: "delete-pending", node: "b" },
      { volume: "r", id: 4, state: "create-pending", node: "b" },
    ]);
    expect(pending[0]!.next).toBe("deleted here; b's replica is removed when b is reachable again. Nothing else to do");
    expect(pending[1]!.next).toMatch(/tandem volume delete r --force/);
  });

  test("one-sided volumes without intents are reported from a fresh answer only, each with the command that removes it", () => {
    const local = holding([["both", 1], ["mine", 3], ["v", 5]]);
    const peer = holding([["both", 1], ["theirs", 2], ["v", 6]]);
    expect(pendingVolumes(local, peer, names, false)).toEqual([]);
    const pending = pendingVolumes(local, peer, names, true);
    expect(pending.map(({ volume, id, state, node }) => ({ volume, id, state, node }))).toEqual([
      { volume: "mine", id: 3, state: "only-here", node: "a" },
      { volume: "v", id: 5, state: "only-here", node: "a" },
      { volume: "theirs", id: 2, state: "only-on-peer", node: "b" },
      { volume: "v", id: 6, state: "only-on-peer", node: "b" },
    ]);
    expect(pending[2]!.next).toBe("only b holds it: `tandem volume delete theirs --force` (on either node) removes it there");
    // A volume the peer is still creating is not a leftover.
    expect(pendingVolumes(holding([]), holding([["new", 7]], [intent("new", 7, "create")]), names, true)).toEqual([]);
  });
});

describe("volume ids", () => {
  const withState = (run: (state: NodeState, file: string) => void) => {
    const dir = fs.mkdtempSync(path.join(os.tmpdir(), "tandem-state-"));
    try {
      const file = path.join(dir, "state.db");
      run(new NodeState(file), file);
    } finally {
      fs.rmSync(dir, { recursive: true, force: true });
    }
  };
  const record = (name: string, id: number) => ({ name, id, sizeBytes: 1 << 20, backing: `/x/${name}`, owned: true, direct: false, primary: "a", epoch: 1, createdMs: 0 });

  test("a deleted volume's id is never handed out again", () => {
    withState((state) => {
      const first = state.allocateVolumeId({ stride: 1, residue: 0 });
      state.insertVolume(record("v", first));
      state.deleteVolume("v");
      expect(state.allocateVolumeId({ stride: 1, residue: 0 })).toBe(first + 1);
      // An id held only by an intent (a delete waiting for the peer) counts too.
      state.putIntent(intent("w", 40, "delete"));
      expect(state.allocateVolumeId({ stride: 1, residue: 0 })).toBe(41);
    });
  });

  test("the two nodes of a pair allocate from disjoint halves, above every id either has seen", () => {
    withState((a) =>
      withState((b) => {
        const odd = { stride: 2, residue: 1 };
        const even = { stride: 2, residue: 0 };
        const fromA = [a.allocateVolumeId(odd), a.allocateVolumeId(odd), a.allocateVolumeId(odd)];
        const fromB = [b.allocateVolumeId(even), b.allocateVolumeId(even)];
        expect(fromA).toEqual([1, 3, 5]);
        expect(fromB).toEqual([2, 4]);
        b.noteVolumeId(5); // b made a's volume 5
        expect(b.allocateVolumeId(even)).toBe(6);
        expect(a.allocateVolumeId(odd)).toBe(7);
      }),
    );
  });

  test("a version 1 database is upgraded: intents table added, ids continue above the largest in use", () => {
    withState((fresh, file) => {
      fresh.close();
      const db = new Database(file);
      db.run("DROP TABLE intents");
      db.run("UPDATE meta SET value = '1' WHERE key = 'schema'");
      db.run("INSERT INTO volumes (name, id, size_bytes, backing, owned, direct, primary_node, epoch, created_ms) VALUES ('old', 9, 1048576, '/x/old', 1, 0, 'a', 1, 0)");
      db.close();
      const state = new NodeState(file);
      expect(state.meta("schema")).toBe("2");
      expect(state.intents()).toEqual([]);
      expect(state.allocateVolumeId({ stride: 2, residue: 0 })).toBe(10);
      state.close();
    });
  });
});
