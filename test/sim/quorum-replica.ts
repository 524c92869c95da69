// The quorum core and the replica core together, seeded: two replica drivers whose write authority
// is the witness quorum (test/sim/scenario.ts with `quorum`), two volumes with one primary on each
// node, FUA writes from clients to whichever node holds the write grant, and a fault mix drawn from
// the seed — link partitions, node crashes (power loss: unflushed writes vanish; or the daemon
// alone killed, the page cache surviving) and restarts,
// pauses (a stopped process: Scenario.pause), half of them longer than the peer's deadTimeout so
// the peer wins the lease and promotes while the paused node still believes it holds it, stalls of
// one direction of the link (one node hears the other, which hears nothing), witness IO errors,
// torn witness writes, a failing or hung witness path for one node or both, clock rates that differ
// within the configured bound ρ, and on some seeds a kernel watchdog per node that resets a node
// left unfed for watchdogTimeout (a paused daemon, one past its lease). Afterwards every fault ends
// and the pair must converge. Checked by name:
//   - `singleWriter`: never two running nodes holding the write grant for one volume (sampled every
//     10 ms; a paused node acts on nothing until it resumes and catches its lease up), and never a
//     write acknowledged by one node while the other holds the grant without holding that write
//     durably (a node paused after mirroring a write acknowledges it late, which is no second writer);
//   - `ackedWriteKept`: after convergence each block holds its last acknowledged write, or a write
//     issued after it (never an older value, never another node's stale copy);
//   - `onlyHoldersWin`: a node wins an epoch without force only if the record before named it a
//     data holder (rule 3);
//   - `replicasIdentical`: the converged replicas are byte-identical;
//   - `ioResumes`: with the link and the witness healthy, the pair is SHARED and synced, and a write
//     completes, within a bound derived from the timings (liveness).
// A seed replays exactly: `bun test/sim/quorum-replica.ts --seed N [--long] [--bug NAME] [--trace]`
// (--trace prints the run's timeline: the faults injected and both cores' reports).
import { defaultQuorumTiming } from "../../src/quorum/config.ts";
import type { DecidedRecord } from "../../src/quorum/format.ts";
import type { QuorumBugs } from "../../src/quorum/lease.ts";
import { SimRandom } from "./random.ts";
import { type NodeName, nodeNames, type Op, peerOf, Scenario } from "./scenario.ts";

export type CombinedBug = keyof QuorumBugs | "noFreezeOnLinkLoss";
export const combinedBugs: CombinedBug[] = ["noFreezeOnLinkLoss", "promoteWithoutFence", "nonHolderWins"];

export interface CombinedOptions {
  seed: number;
  /** Longer chaos (2 minutes of simulated time instead of the CI setting's 8 s). */
  long?: boolean;
  /** Simulated ms of chaos (overrides the setting). */
  chaosMs?: number;
  bug?: CombinedBug;
  /** Print the run's timeline (faults injected, replica and quorum reports) when it ends. */
  trace?: boolean;
}

export interface CombinedResult {
  seed: number;
  failures: string[];
  stats: { writesAcked: number; writesFailed: number; partitions: number; oneWayStalls: number; crashes: number; watchdogResets: number; pauses: number; longPauses: number; promotedOverPaused: number; witnessFaults: number; wins: number; promotions: number; simulatedMs: number };
}

const volumes = [1, 2];
const blocks = 8;

interface Issued {
  tag: number;
  acked: boolean;
  node: NodeName;
}

export function runCombined(options: CombinedOptions): CombinedResult {
  const random = new SimRandom(options.seed);
  const timing = defaultQuorumTiming;
  const rho = timing.clockRateBound;
  const clockRates = { a: 1 + (random.float() * 2 - 1) * rho * 0.9, b: 1 + (random.float() * 2 - 1) * rho * 0.9 };
  const witnessErrors = random.chance(0.3);
  // An armed kernel watchdog per node, or none (a machine without one; DESIGN.md rule 7). Drawn from
  // a stream of their own, so a seed without a reset runs as it did before watchdogs were modelled.
  const watchdogRandom = random.fork("watchdogs");
  const killRandom = random.fork("kills");
  const watchdogs = { a: watchdogRandom.chance(0.5), b: watchdogRandom.chance(0.5) };
  const quorumBugs: QuorumBugs = options.bug && options.bug !== "noFreezeOnLinkLoss" ? { [options.bug]: true } : {};
  const scenario = new Scenario({
    volumes,
    blocks,
    primaries: { 1: "a", 2: "b" },
    quorum: { timing, bugs: quorumBugs, witnessFaults: { errorProbability: witnessErrors ? 0.02 : 0, tearProbability: 0.5, latencyUs: [200, random.chance(0.2) ? 400_000 : 3_000] } },
    config: options.bug === "noFreezeOnLinkLoss" ? { freezeOnLinkLoss: false } : {},
    clockRates,
  });
  const failures: string[] = [];
  const fail = (checker: string, why: string) => {
    if (failures.length < 10) failures.push(`${checker}: ${why} (at ${(scenario.nowUs / 1000).toFixed(0)} ms)`);
  };
  const stats: CombinedResult["stats"] = { writesAcked: 0, writesFailed: 0, partitions: 0, oneWayStalls: 0, crashes: 0, watchdogResets: 0, pauses: 0, longPauses: 0, promotedOverPaused: 0, witnessFaults: 0, wins: 0, promotions: 0, simulatedMs: 0 };
  const history = new Map<string, Issued[]>();
  // The faults as injected, for the timeline a traced run prints.
  const injected: { atUs: number; what: string }[] = [];
  const inject = (what: string) => {
    if (options.trace) injected.push({ atUs: scenario.nowUs, what });
  };
  const inFlight = new Set<string>();
  const key = (volumeId: number, block: number) => `${volumeId}:${block}`;
  // A paused node's grant is the one it held when it stopped; it can neither write nor acknowledge
  // under it until it resumes, and it catches its lease up before anything else when it does.
  const grantOf = (name: NodeName, volumeId: number) => (scenario.alive(name) && !scenario.paused(name) ? scenario.quorumOf(name).grant(volumeId) : undefined);

  // Records by version, from every node's reports, for onlyHoldersWin.
  const records = new Map<bigint, DecidedRecord>();
  let reportsSeen = 0;
  const scanReports = () => {
    for (; reportsSeen < scenario.quorumReports.length; reportsSeen++) {
      const { node, report } = scenario.quorumReports[reportsSeen]!;
      if (report.kind === "decided") records.set(report.record.version, report.record);
      if (report.kind === "promoted") {
        stats.promotions++;
        if (scenario.paused(peerOf(node))) stats.promotedOverPaused++;
      }
      if (report.kind === "won") {
        stats.wins++;
        if (report.forced) continue;
        const won = [...records.values()].find((record) => record.value.epoch === report.epoch);
        const before = won && records.get(won.version - 1n);
        const index = nodeNames.indexOf(node);
        if (before && !before.value.holders.includes(index as 0 | 1)) fail("onlyHoldersWin", `${node} won epoch ${report.epoch} but the record before (version ${before.version}) names holders ${before.value.holders.join(",") || "none"}`);
      }
    }
  };

  const issueWrites = () => {
    for (const volumeId of volumes) {
      const writer = nodeNames.find((name) => grantOf(name, volumeId)?.kind === "write");
      if (!writer || !random.chance(0.5)) continue;
      const block = random.int(blocks);
      if (inFlight.has(key(volumeId, block))) continue;
      inFlight.add(key(volumeId, block));
      const op = scenario.write(writer, block, { volumeId, fua: true });
      const entry: Issued = { tag: op.tag, acked: false, node: writer };
      const list = history.get(key(volumeId, block)) ?? [];
      list.push(entry);
      history.set(key(volumeId, block), list);
      watch(op, entry, volumeId, block);
    }
  };
  const pending: { op: Op; entry: Issued; volumeId: number; block: number }[] = [];
  const watch = (op: Op, entry: Issued, volumeId: number, block: number) => pending.push({ op, entry, volumeId, block });
  const settle = () => {
    for (let index = pending.length - 1; index >= 0; index--) {
      const { op, entry, volumeId, block } = pending[index]!;
      const crashed = !scenario.alive(entry.node);
      if (!op.done && !crashed) continue;
      pending.splice(index, 1);
      inFlight.delete(key(volumeId, block));
      if (op.done && op.error === null) {
        entry.acked = true;
        stats.writesAcked++;
        // A node paused after mirroring a write acknowledges it when it resumes, perhaps after the
        // peer took the grant; that is no second writer as long as the new writer holds the write
        // durably (or a later one). An acknowledgement of anything else beside the grant holder is.
        const other = grantOf(peerOf(entry.node), volumeId);
        const held = scenario.blockValue(peerOf(entry.node), block, { volumeId, image: "durable" });
        if (other?.kind === "write" && !(typeof held === "number" && held >= entry.tag)) fail("singleWriter", `${entry.node} acknowledged write #${entry.tag} to volume ${volumeId} block ${block} while ${peerOf(entry.node)} held the write grant (epoch ${other.epoch}) without it (it holds ${held})`);
      } else stats.writesFailed++;
    }
  };
  const sampleGrants = () => {
    for (const volumeId of volumes) {
      const a = grantOf("a", volumeId);
      const b = grantOf("b", volumeId);
      if (a?.kind === "write" && b?.kind === "write") fail("singleWriter", `both nodes hold the write grant for volume ${volumeId} (epochs ${a.epoch} and ${b.epoch})`);
    }
  };
  const step = (ms: number) => {
    for (let elapsed = 0; elapsed < ms; elapsed += 10) {
      scenario.runFor(10);
      settle();
      sampleGrants();
      scanReports();
    }
  };

  // Start: connected, synced and SHARED with both holders.
  const shared = (name: NodeName) => scenario.alive(name) && scenario.quorumOf(name).status().quorum === "shared" && scenario.quorumOf(name).status().dataHolders.length === 2;
  const converged = () => shared("a") && shared("b") && volumes.every((volumeId) => scenario.isSynced(volumeId));
  try {
    scenario.runUntil(converged, "the pair starts SHARED", 20_000);
  } catch (error) {
    fail("ioResumes", (error as Error).message);
    return { seed: options.seed, failures, stats };
  }

  // Chaos.
  const chaosMs = options.chaosMs ?? (options.long ? 120_000 : 8_000);
  const restartAt = new Map<NodeName, number>();
  const resumeAt = new Map<NodeName, number>();
  const resumeDue = () => {
    for (const [name, at] of resumeAt) {
      if (scenario.nowUs >= at) {
        resumeAt.delete(name);
        inject(`resume ${name}`);
        scenario.resume(name);
      }
    }
  };
  // The kernel resets a machine whose watchdog went unfed for its timeout: a paused daemon, or one
  // that stopped honouring its lease. It comes back later, like a crashed node.
  const watchdogResets = () => {
    for (const name of nodeNames) {
      if (!watchdogs[name] || !scenario.alive(name) || scenario.watchdogUnfedMs(name) <= timing.watchdogTimeoutMs) continue;
      stats.watchdogResets++;
      inject(`watchdog resets ${name}`);
      scenario.crash(name);
      resumeAt.delete(name);
      restartAt.set(name, scenario.nowUs + watchdogRandom.range(1000, 4000) * 1000);
    }
  };
  const endAt = scenario.nowUs + chaosMs * 1000;
  const witnessFaultUntil: { untilUs: number; undo: () => void }[] = [];
  while (scenario.nowUs < endAt) {
    issueWrites();
    const roll = random.float();
    if (roll < 0.04) {
      stats.partitions++;
      const partitionMs = random.range(300, 7000);
      inject(`partition ${partitionMs} ms`);
      scenario.network.partition(partitionMs * 1000);
    } else if (roll < 0.06 && nodeNames.every((name) => scenario.alive(name))) {
      const victim = random.pick(nodeNames);
      stats.crashes++;
      // Some crashes kill the daemon only (the page cache survives): a stream of their own, so the
      // other decisions of a seed stay as they were.
      const kill = killRandom.chance(0.3);
      inject(kill ? `kill ${victim}'s daemon` : `crash ${victim}`);
      if (kill) scenario.kill(victim);
      else scenario.crash(victim);
      restartAt.set(victim, scenario.nowUs + random.range(500, 9000) * 1000);
    } else if (roll < 0.075 && nodeNames.some((name) => scenario.alive(name) && !scenario.paused(name))) {
      // A stopped process (SIGSTOP, a long GC): half the time for longer than the peer's deadTimeout,
      // so the peer wins the lease and promotes while this node still believes it holds it.
      const victim = random.pick(nodeNames.filter((name) => scenario.alive(name) && !scenario.paused(name)));
      const long = random.chance(0.5);
      const ms = long ? random.range(timing.deadTimeoutMs + 500, 3 * timing.deadTimeoutMs) : random.range(50, 2000);
      stats.pauses++;
      if (long) stats.longPauses++;
      inject(`pause ${victim} ${ms} ms`);
      scenario.pause(victim);
      resumeAt.set(victim, scenario.nowUs + ms * 1000);
    } else if (roll < 0.105) {
      stats.witnessFaults++;
      const nodes = random.pick([[0], [1], [0, 1]]);
      const hang = random.chance(0.4);
      inject(`witness ${hang ? "hung" : "failing"} for ${nodes.join(",")}`);
      if (hang) scenario.witness!.setHung(nodes, true);
      else scenario.witness!.setFailing(nodes, true);
      witnessFaultUntil.push({ untilUs: scenario.nowUs + random.range(300, 6000) * 1000, undo: () => (hang ? scenario.witness!.setHung(nodes, false) : scenario.witness!.setFailing(nodes, false)) });
    } else if (roll < 0.125) {
      // One direction of the link stalls (a one-way fault: one node still hears the other, which
      // hears nothing), for less or more than the link timeout.
      stats.oneWayStalls++;
      const from = random.pick(nodeNames);
      const stallMs = random.range(200, 7000);
      inject(`one-way stall from ${from} ${stallMs} ms`);
      scenario.network.clog(from, stallMs * 1000);
    }
    step(random.range(20, 200));
    resumeDue();
    watchdogResets();
    for (const [name, at] of restartAt) {
      if (scenario.nowUs >= at) {
        restartAt.delete(name);
        inject(`start ${name}`);
        scenario.start(name);
      }
    }
    for (let index = witnessFaultUntil.length - 1; index >= 0; index--) {
      if (scenario.nowUs >= witnessFaultUntil[index]!.untilUs) {
        witnessFaultUntil[index]!.undo();
        witnessFaultUntil.splice(index, 1);
      }
    }
  }

  // Heal everything and converge.
  for (const fault of witnessFaultUntil) fault.undo();
  scenario.witness!.healAll();
  // A pause runs its course (a stopped process is not healed, it is continued): one that began late in
  // the chaos still outlasts the lease, and the peer still promotes while it lasts.
  while (resumeAt.size > 0) {
    step(100);
    resumeDue();
    watchdogResets();
  }
  for (const name of nodeNames) {
    if (scenario.alive(name)) continue;
    inject(`start ${name}`);
    scenario.start(name);
  }
  // A partition or a stall of one direction in force may outlast the chaos: let it end, and count
  // the bound from its end. (Before it ends the pair may still look SHARED and synced for up to a
  // link timeout, until the nodes notice they hear nothing, and a probe written then waits for it.)
  while (scenario.nowUs < scenario.network.faultsEndUs()) step(100);
  const healedUs = scenario.nowUs;
  const boundMs = 30 * timing.deadTimeoutMs;
  while (!converged() && scenario.nowUs - healedUs < boundMs * 1000) step(100);
  if (!converged()) {
    fail("ioResumes", `not SHARED and synced within ${boundMs} ms of healing: ${scenario.describe()}; a: ${scenario.quorumOf("a").status().reason}; b: ${scenario.quorumOf("b").status().reason}`);
    return finish();
  }
  while (pending.length > 0 && scenario.nowUs - healedUs < 2 * boundMs * 1000) step(50);
  for (const volumeId of volumes) {
    const writer = nodeNames.find((name) => grantOf(name, volumeId)?.kind === "write");
    if (!writer) {
      fail("ioResumes", `no node holds the write grant for volume ${volumeId} after convergence`);
      continue;
    }
    const probe = scenario.write(writer, blocks - 1, { volumeId, fua: true });
    try {
      scenario.complete(probe, 2 * timing.linkTimeoutMs);
    } catch {
      fail("ioResumes", `a write to volume ${volumeId} on ${writer} did not complete within ${2 * timing.linkTimeoutMs} ms of convergence`);
      continue;
    }
    if (probe.error) fail("ioResumes", `a write to volume ${volumeId} on ${writer} failed after convergence: ${probe.error.message}`);
    const list = history.get(key(volumeId, blocks - 1)) ?? [];
    list.push({ tag: probe.tag, acked: probe.error === null, node: writer });
    history.set(key(volumeId, blocks - 1), list);
  }
  scenario.runUntil(() => volumes.every((volumeId) => scenario.isSynced(volumeId)), "synced after the probes", 10_000);
  for (const volumeId of volumes) {
    const differing = scenario.differingBlocks(volumeId);
    if (differing.length > 0) fail("replicasIdentical", `volume ${volumeId} differs in blocks ${differing.join(", ")}`);
    for (let block = 0; block < blocks; block++) {
      const list = history.get(key(volumeId, block)) ?? [];
      const lastAcked = list.map((entry) => entry.acked).lastIndexOf(true);
      const allowed = new Set(list.slice(Math.max(0, lastAcked)).map((entry) => entry.tag));
      if (lastAcked < 0) allowed.add(0);
      const primary = nodeNames.find((name) => grantOf(name, volumeId)?.kind === "write") ?? "a";
      const value = scenario.blockValue(primary, block, { volumeId });
      if (!allowed.has(value as number)) {
        const acked = lastAcked >= 0 ? list[lastAcked]! : undefined;
        fail("ackedWriteKept", `volume ${volumeId} block ${block} holds ${value} on ${primary}; ${acked ? `write #${acked.tag} (acknowledged by ${acked.node})` : "nothing acknowledged"} or a later write was expected`);
      }
    }
  }
  return finish();

  function finish(): CombinedResult {
    if (options.trace) {
      // One line per event in time order: injected faults, replica reports (R) and quorum reports (Q).
      const json = (value: unknown) => JSON.stringify(value, (_key, field) => (typeof field === "bigint" ? String(field) : field));
      const lines = [
        ...injected.map((entry) => ({ atUs: entry.atUs, text: `fault ${entry.what}` })),
        ...scenario.reports.filter((entry) => entry.report.kind !== "ignored").map((entry) => ({ atUs: entry.atUs, text: `R ${entry.node} ${json(entry.report)}` })),
        ...scenario.quorumReports.map((entry) => ({ atUs: entry.atUs, text: `Q ${entry.node} ${json(entry.report)}` })),
      ].sort((x, y) => x.atUs - y.atUs);
      for (const line of lines) console.log(`${(line.atUs / 1000).toFixed(1).padStart(9)} ms  ${line.text}`);
    }
    stats.simulatedMs = Math.round(scenario.nowUs / 1000);
    return { seed: options.seed, failures, stats };
  }
}

if (import.meta.main) {
  const args = process.argv.slice(2);
  const value = (flag: string) => {
    const index = args.indexOf(flag);
    return index >= 0 ? args[index + 1] : undefined;
  };
  const bug = value("--bug") as CombinedBug | undefined;
  const long = args.includes("--long");
  const single = value("--seed");
  const seeds = single !== undefined ? [Number(single)] : Array.from({ length: Number(value("--seeds") ?? 100) }, (_, index) => Number(value("--from") ?? 1) + index);
  let failed = 0;
  const started = performance.now();
  for (const seed of seeds) {
    const result = runCombined({ seed, long, bug, trace: single !== undefined && args.includes("--trace") });
    if (result.failures.length > 0) {
      failed++;
      console.log(`seed ${seed} FAILED:\n  ${result.failures.join("\n  ")}\n  ${JSON.stringify(result.stats)}`);
    } else if (single !== undefined) console.log(`seed ${seed} ok ${JSON.stringify(result.stats)}`);
  }
  console.log(`${seeds.length} seeds, ${failed} failed, ${((performance.now() - started) / 1000).toFixed(1)} s`);
  process.exit(failed > 0 ? 1 : 0);
}
