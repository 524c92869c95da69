// The standing invariants of replication, checked against the oracle (CONVENTIONS.md §3). Each
// failure says which checker fired and why, with the state that shows it ("write #812 (block 0x3f,
// acked at 1400.2 ms, durable at 1402.0 ms) missing on b after the run: it holds write #790").
// Failures are classified: crash (an assertion or exception in a core or the driver), liveness (no
// convergence before the deadline), correctness (a checker below).
import { blockBytes, describeValue, identifyBlock, type Oracle, type WriteRecord } from "./oracle.ts";

export type FailureClass = "crash" | "liveness" | "correctness";

export interface Failure {
  class: FailureClass;
  checker: string;
  message: string;
}

function ms(us: number | undefined): string {
  return us === undefined ? "never" : `${(us / 1000).toFixed(1)} ms`;
}

export function describeWrite(record: WriteRecord): string {
  const what = record.zero ? "zero/trim" : "write";
  const block = `block 0x${record.firstBlock.toString(16)}${record.blockCount > 1 ? `+${record.blockCount}` : ""}`;
  const ack = record.ok === undefined ? "never acknowledged" : record.ok ? `acked ${record.mirrored ? "mirrored" : "alone"} on ${record.node} at ${ms(record.ackedUs)} in epoch ${record.epoch}` : `failed on ${record.node}`;
  const durable = record.durable ? `, durable at ${ms(record.durableUs)}${record.fua ? " (FUA)" : ""}` : "";
  return `${what} #${record.id} (${block}, ${ack}${durable}${record.discarded ? ", discarded by the operator" : ""})`;
}

export class Checkers {
  readonly failures: Failure[] = [];

  constructor(private readonly oracle: Oracle) {}

  fail(failureClass: FailureClass, checker: string, message: string): void {
    if (this.failures.length < 20) this.failures.push({ class: failureClass, checker, message });
  }

  get failed(): boolean {
    return this.failures.length > 0;
  }

  /**
   * "No acknowledged write lost", on a read: each block read must hold a value the oracle allows,
   * counting only durable writes that were mirrored or made on the reading node (in a split brain
   * the other side's writes are not visible here, and need not be; nor, on a node that went its own
   * way, mirrored writes only the other side's flush made durable).
   */
  checkRead(volumeId: number, node: string, firstBlock: number, data: Uint8Array, submittedUs: number, nowUs: number, rotted: (block: number) => boolean): void {
    for (let index = 0; index < data.length / blockBytes; index++) {
      const block = firstBlock + index;
      if (rotted(block)) continue;
      const value = identifyBlock(data.subarray(index * blockBytes, (index + 1) * blockBytes), volumeId, block);
      const { newestDurable, values } = this.oracle.allowed(volumeId, block, (record) => record.node === node || (record.mirrored === true && !(record.durableAlone && this.oracle.diverged(volumeId, node))));
      if (value.kind === "corrupt") {
        this.fail("correctness", "no acknowledged write lost", `read of volume ${volumeId} block 0x${block.toString(16)} on ${node} at ${ms(nowUs)} returned ${describeValue(value)}`);
        continue;
      }
      const id = value.kind === "zero" ? 0 : value.id;
      if (!values.has(id)) {
        this.fail(
          "correctness",
          "no acknowledged write lost",
          `read of volume ${volumeId} block 0x${block.toString(16)} on ${node} at ${ms(nowUs)} returned ${describeValue(value)}, but ${newestDurable ? describeWrite(newestDurable) : "the initial zeroes"} is newer and durable`,
        );
        continue;
      }
      const bound = this.oracle.readAfterWrite(volumeId, node, block, submittedUs);
      if (bound && !bound.values.has(id)) {
        this.fail("correctness", "read after write", `read of volume ${volumeId} block 0x${block.toString(16)} on ${node} submitted at ${ms(submittedUs)} returned ${describeValue(value)}, but ${describeWrite(bound.newestAcked)} was acknowledged before it`);
      }
    }
  }

  /**
   * "An interrupted resync resumes" (DESIGN.md §4): a node that was the target of a full resync
   * that did not finish must not be given a full copy again (unless an operator chose one, or its
   * disk was replaced): the decision continues from what is left.
   */
  private readonly fullResyncTargets = new Set<string>();
  checkResyncDecision(volumeId: number, node: string, targetHere: boolean, full: boolean, byOperator: boolean, targetBegun: boolean, nowUs: number): void {
    const key = `${node}:${volumeId}`;
    if (!targetHere || !full) return;
    // A target that never got as far as recording its work list (still "new") has nothing to resume.
    if (this.fullResyncTargets.has(key) && !byOperator && targetBegun) {
      this.fail("correctness", "resync resumes", `volume ${volumeId}: ${node}'s full resync was interrupted and at ${ms(nowUs)} started over from zero instead of continuing`);
    }
    this.fullResyncTargets.add(key);
  }

  /** The node finished a resync as its target, or got a new disk: nothing to resume. */
  resyncOver(volumeId: number, node: string): void {
    this.fullResyncTargets.delete(`${node}:${volumeId}`);
  }

  /** "At most one writer per volume per epoch." */
  checkEpochs(): void {
    for (const [key, writers] of this.oracle.epochWriters) {
      if (writers.size > 1) {
        const [volumeId, epoch] = key.split(":");
        this.fail("correctness", "one writer per epoch", `volume ${volumeId}: nodes ${[...writers].join(" and ")} both acknowledged writes in epoch ${epoch}`);
      }
    }
  }

  /**
   * "Split brain detected whenever both sides wrote": when the verdict takes effect (the following node applies it),
   * if both nodes acknowledged writes alone since they were last in sync, it must be split brain;
   * and split brain is only declared when both really started generations of their own.
   */
  checkDecision(volumeId: number, decision: string, byOperator: boolean, node: string, nowUs: number): void {
    if (byOperator) return; // the operator chose; the oracle discards the victim's writes
    const alone = this.oracle.aloneSinceSync.get(volumeId)!;
    const writers = [...alone.entries()].filter(([, list]) => list.length > 0);
    // A verdict that copies one side over the other (resync), or calls them equal (inSync), would
    // resolve the split brain silently; a refusal (split brain, dual primary, a serving primary
    // that would be a target, unrelated data) overwrites nothing and leaves it to the operator.
    if (writers.length === 2 && (decision === "resync" || decision === "inSync")) {
      const [first, second] = writers;
      this.fail(
        "correctness",
        "split brain detected",
        `volume ${volumeId}: at ${ms(nowUs)} ${node} decided "${decision}" although both nodes wrote alone: ${first![0]} made ${describeWrite(first![1][0]!)} and ${second![0]} made ${describeWrite(second![1][0]!)}`,
      );
    }
    if (decision === "splitBrain") {
      const started = this.oracle.generationSinceSync.get(volumeId)!;
      if (started.size < 2) this.fail("correctness", "split brain detected", `volume ${volumeId}: ${node} declared split brain at ${ms(nowUs)} but only ${[...started.keys()].join(", ") || "no node"} started (or was asked to write without the peer and could have started) a generation of its own since the last sync`);
    }
  }

  /** "No acknowledged write lost" on a whole replica image at the end of a run. */
  checkImage(volumeId: number, node: string, image: Uint8Array, when: string, rotted: (block: number) => boolean): void {
    const blocks = this.oracle.blockCount(volumeId);
    for (let block = 0; block < blocks; block++) {
      if (rotted(block)) continue;
      const value = identifyBlock(image.subarray(block * blockBytes, (block + 1) * blockBytes), volumeId, block);
      const { newestDurable, values } = this.oracle.allowed(volumeId, block);
      if (value.kind === "corrupt") {
        this.fail("correctness", "no acknowledged write lost", `volume ${volumeId} block 0x${block.toString(16)} on ${node} ${when} holds ${describeValue(value)}`);
        continue;
      }
      const id = value.kind === "zero" ? 0 : value.id;
      if (!values.has(id)) {
        const holder = id === 0 ? "zeroes" : describeWrite(this.oracle.writes.get(id)!);
        this.fail("correctness", "no acknowledged write lost", `${newestDurable ? describeWrite(newestDurable) : "initial zeroes"} missing on ${node} ${when}: volume ${volumeId} block 0x${block.toString(16)} holds ${holder}`);
      }
    }
  }

  /** "Replicas byte-identical once converged." */
  checkIdentical(volumeId: number, first: [string, Uint8Array], second: [string, Uint8Array], when: string, excused: (block: number) => boolean = () => false): void {
    const [nameA, imageA] = first;
    const [nameB, imageB] = second;
    for (let block = 0; block < imageA.length / blockBytes; block++) {
      if (excused(block)) continue;
      const start = block * blockBytes;
      let same = true;
      for (let index = start; index < start + blockBytes; index++) {
        if (imageA[index] !== imageB[index]) {
          same = false;
          break;
        }
      }
      if (same) continue;
      const valueA = identifyBlock(imageA.subarray(start, start + blockBytes), volumeId, block);
      const valueB = identifyBlock(imageB.subarray(start, start + blockBytes), volumeId, block);
      const history = this.oracle.history(volumeId, block);
      const recent = history.slice(-3).map(describeWrite).join("; ");
      this.fail("correctness", "replicas identical", `volume ${volumeId} block 0x${block.toString(16)} differs ${when}: ${nameA} holds ${describeValue(valueA)}, ${nameB} holds ${describeValue(valueB)} (last writes: ${recent || "none"})`);
      return;
    }
  }
}
