// A scripted network for stepping NodeCores' link layer directly (no driver, no sockets, no clock):
// nodes, attackers (raw byte endpoints a test drives by hand) and connections between them, with
// bytes delivered in order, one connection at a time, only when the test calls `run`. A test can put
// itself in the middle of a connection (`intercept`) to relay, record, drop, alter, reorder or
// inject frames, which is how the handshake and frame-authentication tests play an attacker.
import { defaultReplicaConfig, type ReplicaConfig } from "../../src/replica/config.ts";
import { NodeCore, type NodeIdentity } from "../../src/replica/node.ts";
import type { CoreAction, CoreEvent, ReplicaReport } from "../../src/replica/types.ts";
import { decodeFrame, joinParts, NEED_MORE } from "../../src/replica/wire.ts";

export const clusterId = new Uint8Array(16).fill(0x42);
export const secret = new TextEncoder().encode("the pairing secret of this pair");

/** A deterministic Random: a counter through a simple mixer (distinct nonces, reproducible). */
export function counterRandom(seed: number): { fill(bytes: Uint8Array): void } {
  let state = seed >>> 0 || 1;
  return {
    fill(bytes) {
      for (let index = 0; index < bytes.length; index++) {
        state ^= state << 13;
        state ^= state >>> 17;
        state ^= state << 5;
        bytes[index] = state & 0xff;
      }
    },
  };
}

export interface HarnessNode {
  name: string;
  core: NodeCore;
  reports: ReplicaReport[];
  actions: CoreAction[];
  host: string;
}

export interface Attacker {
  name: string;
  host: string;
  /** Bytes the node sent to this attacker, per connection. */
  received: Map<number, Uint8Array[]>;
}

type End = { kind: "node"; node: HarnessNode } | { kind: "attacker"; attacker: Attacker };

interface Link {
  id: number;
  ends: [End, End];
  open: boolean;
}

/** Called with every chunk a node sends on an intercepted connection; returns the chunks to deliver instead. */
export type Interceptor = (from: string, bytes: Uint8Array) => Uint8Array[];

export class LinkHarness {
  readonly nodes = new Map<string, HarnessNode>();
  private readonly links = new Map<number, Link>();
  private readonly queue: (() => void)[] = [];
  private nextId = 1;
  private readonly interceptors = new Map<number, Interceptor>();
  /** Where each node's next dial goes: its peer by default, or an attacker (a man in the middle). */
  readonly dialTarget = new Map<string, string>();

  node(identity: Partial<NodeIdentity> & { nodeId: string; peerNodeId: string; connect: "dial" | "accept" }, options: { config?: Partial<ReplicaConfig>; host?: string; seed?: number } = {}): HarnessNode {
    const config = defaultReplicaConfig(options.config);
    const core = new NodeCore({ clusterId, secret, ...identity }, config, counterRandom(options.seed ?? this.nodes.size + 1));
    const node: HarnessNode = { name: identity.nodeId, core, reports: [], actions: [], host: options.host ?? `host-${identity.nodeId}` };
    this.nodes.set(node.name, node);
    return node;
  }

  attacker(name: string, host = `host-${name}`): Attacker {
    return { name, host, received: new Map() };
  }

  /** Step a node with one event and perform what it asks (sends are queued for `run`). */
  step(node: HarnessNode, event: CoreEvent): void {
    const actions = node.core.step(event);
    node.actions.push(...actions);
    for (const action of actions) this.perform(node, action);
  }

  tick(count = 1): void {
    for (let index = 0; index < count; index++) {
      for (const node of this.nodes.values()) this.step(node, { kind: "tick" });
      this.run();
    }
  }

  private perform(node: HarnessNode, action: CoreAction): void {
    switch (action.kind) {
      case "report":
        node.reports.push(action.report);
        return;
      case "dial": {
        const target = this.dialTarget.get(node.name) ?? [...this.nodes.keys()].find((name) => name !== node.name)!;
        const peer = this.nodes.get(target);
        if (peer) this.connectNodes(node, peer);
        return;
      }
      case "send": {
        const link = this.links.get(action.connection);
        if (!link || !link.open) return;
        const bytes = joinParts(action.parts);
        const to = this.other(link, node.name);
        const interceptor = this.interceptors.get(link.id);
        const chunks = interceptor ? interceptor(node.name, bytes) : [bytes];
        for (const chunk of chunks) this.queue.push(() => this.deliver(link, to, chunk));
        return;
      }
      case "close": {
        const link = this.links.get(action.connection);
        if (!link || !link.open) return;
        link.open = false;
        const to = this.other(link, node.name);
        this.queue.push(() => {
          if (to.kind === "node") this.step(to.node, { kind: "closed", connection: link.id, reason: "closed by the peer" });
        });
        return;
      }
      default:
        return;
    }
  }

  private other(link: Link, name: string): End {
    const [first, second] = link.ends;
    return endName(first) === name ? second : first;
  }

  private deliver(link: Link, to: End, bytes: Uint8Array): void {
    if (!link.open) return;
    if (to.kind === "node") this.step(to.node, { kind: "data", connection: link.id, bytes });
    else {
      const list = to.attacker.received.get(link.id) ?? [];
      list.push(bytes);
      to.attacker.received.set(link.id, list);
    }
  }

  /** Deliver everything queued, including what the deliveries cause. */
  run(): void {
    for (let next = this.queue.shift(); next; next = this.queue.shift()) next();
  }

  /** A node dials another node; both are told, the dialer first (as TCP completes on the dialer's side first). */
  connectNodes(dialer: HarnessNode, acceptor: HarnessNode, interceptor?: Interceptor): number {
    const id = this.nextId++;
    this.links.set(id, { id, ends: [{ kind: "node", node: dialer }, { kind: "node", node: acceptor }], open: true });
    if (interceptor) this.interceptors.set(id, interceptor);
    this.step(dialer, { kind: "connected", connection: id, dialled: true, remote: { host: acceptor.host, port: 7788 } });
    this.step(acceptor, { kind: "connected", connection: id, dialled: false, remote: { host: dialer.host, port: 40000 + id } });
    return id;
  }

  /** An attacker connects to a node. */
  attack(attacker: Attacker, target: HarnessNode): number {
    const id = this.nextId++;
    this.links.set(id, { id, ends: [{ kind: "attacker", attacker }, { kind: "node", node: target }], open: true });
    this.step(target, { kind: "connected", connection: id, dialled: false, remote: { host: attacker.host, port: 50000 + id } });
    return id;
  }

  /** A node's dial lands on an attacker (the attacker holds the address the node dials). */
  interceptDial(dialer: HarnessNode, attacker: Attacker): number {
    const id = this.nextId++;
    this.links.set(id, { id, ends: [{ kind: "node", node: dialer }, { kind: "attacker", attacker }], open: true });
    this.step(dialer, { kind: "connected", connection: id, dialled: true, remote: { host: attacker.host, port: 7788 } });
    return id;
  }

  /** The attacker sends bytes on its connection. */
  send(id: number, bytes: Uint8Array): void {
    const link = this.links.get(id)!;
    const to = link.ends.find((end) => end.kind === "node")!;
    this.queue.push(() => this.deliver(link, to, bytes));
    this.run();
  }

  intercept(id: number, interceptor: Interceptor): void {
    this.interceptors.set(id, interceptor);
  }

  isOpen(id: number): boolean {
    return this.links.get(id)?.open === true;
  }

  /** The last connection opened (to find what a dial made). */
  get lastConnection(): number {
    return this.nextId - 1;
  }
}

function endName(end: End): string {
  return end.kind === "node" ? end.node.name : end.attacker.name;
}

/** Split a byte stream into whole frames (for attackers that reorder, drop or alter them). */
export function splitFrames(bytes: Uint8Array): Uint8Array[] {
  const frames: Uint8Array[] = [];
  let offset = 0;
  while (offset < bytes.length) {
    const result = decodeFrame(bytes, offset, 1 << 26);
    if (result === NEED_MORE) throw new Error("a partial frame in the stream");
    frames.push(bytes.slice(offset, offset + result.size));
    offset += result.size;
  }
  return frames;
}
