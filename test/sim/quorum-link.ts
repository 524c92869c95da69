// The replication link as the quorum cores see it, for the quorum simulator: one connection at a
// time between the two nodes, carrying the cores' quorum messages (encoded and decoded, as the real
// link will carry them) with latency. Partitions drop traffic in one direction or both while the
// connection stays "up" — nobody is told; the cores notice the silence and drop the link, and the
// side that drops it tells the other only if its direction still works (a FIN that gets through).
// A crashed node's connection dies silently. A new connection opens when both nodes are up and
// traffic flows both ways.
import { decodeQuorumMessage, encodeQuorumMessage, type QuorumMessage } from "../../src/quorum/message.ts";
import type { SimRandom } from "./random.ts";
import type { Scheduler } from "./scheduler.ts";

export interface LinkHandlers {
  linkUp(): void;
  linkDown(reason: string): void;
  message(message: QuorumMessage): void;
}

interface Endpoint {
  incarnation: number;
  handlers: LinkHandlers;
}

export class SimQuorumLink {
  /** blocked[from]: traffic from `from` to the other node is dropped. */
  private readonly blocked = [false, false];
  private readonly endpoints: (Endpoint | undefined)[] = [undefined, undefined];
  private connection = 0;
  private open = false;
  openSinceUs = 0;
  messages = 0;
  connections = 0;

  constructor(
    private readonly scheduler: Scheduler,
    private readonly random: SimRandom,
    private readonly latencyUs: [number, number],
    /** Runs a delivery on the node (deferred while it is paused, dropped for a dead incarnation). */
    private readonly deliver: (node: number, incarnation: number, run: () => void) => void,
    private readonly onChange: () => void,
  ) {}

  get isOpen(): boolean {
    return this.open;
  }

  /** The link is open and passes traffic both ways. */
  get healthy(): boolean {
    return this.open && !this.blocked[0] && !this.blocked[1];
  }

  private latency(): number {
    const [min, max] = this.latencyUs;
    return min + this.random.float() * (max - min);
  }

  attach(node: number, incarnation: number, handlers: LinkHandlers): void {
    this.endpoints[node] = { incarnation, handlers };
    this.maintain();
  }

  /** The node crashed: its end is gone; the peer is not told (it notices the silence). */
  detach(node: number): void {
    this.endpoints[node] = undefined;
    if (this.open) this.close();
  }

  partition(directions: number[]): void {
    for (const from of directions) this.blocked[from] = true;
  }

  heal(): void {
    this.blocked[0] = this.blocked[1] = false;
    this.maintain();
  }

  isBlocked(from: number): boolean {
    return this.blocked[from]!;
  }

  send(from: number, message: QuorumMessage): void {
    if (!this.open || this.blocked[from]) return;
    const to = 1 - from;
    const endpoint = this.endpoints[to];
    if (!endpoint) return;
    const bytes = encodeQuorumMessage(message);
    const connection = this.connection;
    this.messages++;
    this.scheduler.after(this.latency(), () => {
      if (connection !== this.connection || !this.open) return;
      this.deliver(to, endpoint.incarnation, () => endpoint.handlers.message(decodeQuorumMessage(bytes)));
    });
  }

  /** `from` drops the connection (its core fell silent on the peer). */
  drop(from: number, reason: string): void {
    const local = this.endpoints[from];
    if (!this.open) {
      // Its end of a connection that is gone already (the peer crashed, or closed it unheard).
      if (local) this.scheduler.after(0, () => this.deliver(from, local.incarnation, () => local.handlers.linkDown(`closed here: ${reason}`)));
      return;
    }
    const to = 1 - from;
    const remote = this.endpoints[to];
    const remoteTold = !this.blocked[from];
    this.close();
    // Closing is asynchronous, as for a socket: the node hears about it after the current event.
    if (local) this.scheduler.after(0, () => this.deliver(from, local.incarnation, () => local.handlers.linkDown(`closed here: ${reason}`)));
    if (remote && remoteTold) this.scheduler.after(this.latency(), () => this.deliver(to, remote.incarnation, () => remote.handlers.linkDown("closed by the peer")));
    this.scheduleMaintain();
  }

  private close(): void {
    this.open = false;
    this.connection++;
    this.onChange();
  }

  private maintainScheduled = false;

  private scheduleMaintain(): void {
    if (this.maintainScheduled) return;
    this.maintainScheduled = true;
    this.scheduler.after(50_000 + this.random.float() * 100_000, () => {
      this.maintainScheduled = false;
      this.maintain();
    });
  }

  /** Open a connection when both ends are up and traffic flows both ways (a redial that succeeds). */
  maintain(): void {
    if (this.open) return;
    const [a, b] = this.endpoints;
    if (!a || !b || this.blocked[0] || this.blocked[1]) return this.scheduleMaintain();
    this.open = true;
    this.connection++;
    this.connections++;
    this.openSinceUs = this.scheduler.now;
    this.onChange();
    const connection = this.connection;
    for (const [node, endpoint] of [[0, a], [1, b]] as const) {
      this.scheduler.after(this.latency(), () => {
        if (connection !== this.connection) return;
        this.deliver(node, endpoint.incarnation, () => endpoint.handlers.linkUp());
      });
    }
  }
}
