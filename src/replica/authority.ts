// The write authority until the witness quorum exists (DESIGN.md §5 comes in a later issue): each
// volume's role is configured, and it does not change when the peer goes away — a primary that loses
// its peer keeps writing (the volume core marks its bitmap and reports DEGRADED), a secondary never
// promotes itself. Roles change only by an explicit operator action (switchover: demote one node,
// then promote the other; or a forced promotion when the primary is gone for good), and each
// promotion starts a new epoch. The quorum will implement the same WriteAuthority interface and
// take over these decisions (freezing on link loss until it holds the lease).
import type { WriteAuthority } from "./io.ts";
import type { Grant } from "./types.ts";

export interface StaticRole {
  primary: boolean;
  /** Epoch of the current role assignment (persisted by the caller with the volume's config). */
  epoch: number;
}

export class StaticWriteAuthority implements WriteAuthority {
  private readonly roles = new Map<number, StaticRole>();
  private readonly listeners = new Set<(volumeId: number) => void>();

  constructor(initial: Iterable<[number, StaticRole]> = []) {
    for (const [volumeId, role] of initial) this.roles.set(volumeId, { ...role });
  }

  grant(volumeId: number): Grant {
    const role = this.roles.get(volumeId);
    if (!role) return { kind: "read", reason: "no role configured for this volume" };
    return role.primary ? { kind: "write", epoch: role.epoch } : { kind: "read", reason: "this node is the volume's secondary" };
  }

  role(volumeId: number): StaticRole | undefined {
    const role = this.roles.get(volumeId);
    return role && { ...role };
  }

  /** Set a volume's role (operator action or configuration load) and tell the driver. */
  setRole(volumeId: number, role: StaticRole): void {
    this.roles.set(volumeId, { ...role });
    for (const listener of this.listeners) listener(volumeId);
  }

  subscribe(listener: (volumeId: number) => void): () => void {
    this.listeners.add(listener);
    return () => this.listeners.delete(listener);
  }

  linkChanged(_up: boolean): void {
    // Deliberately nothing: without a witness, losing the peer does not change who may write.
  }
}
