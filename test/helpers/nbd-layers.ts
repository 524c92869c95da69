// Block layers for NBD server tests: a pass-through layer that can hold requests until the test
// lets them go (to have IO in flight at a chosen moment), fail requests with a chosen BlockError,
// present different capabilities (no native FUA, no flush), and count what reached it.
import { BlockError, type BlockErrorCode } from "../../src/common/errors.ts";
import { PassThroughLayer, type BlockCapabilities, type BlockLayer, type Extent, type WriteFlags, type ZeroFlags } from "../../src/node/block/layer.ts";
import type { Payload } from "../../src/common/bytes.ts";

export class ControlledLayer extends PassThroughLayer {
  readonly kind = "controlled";
  private held: (() => void)[] = [];
  private holding = false;
  private failure: BlockErrorCode | undefined;
  private heldChanged: (() => void) | undefined;
  readonly calls: { op: string; offset?: number; length?: number; fua?: boolean }[] = [];

  constructor(
    below: BlockLayer,
    private readonly capabilityOverrides: Partial<BlockCapabilities> = {},
  ) {
    super(below);
  }

  override capabilities(): BlockCapabilities {
    return { ...this.below.capabilities(), ...this.capabilityOverrides };
  }

  /** Requests from now on wait until `releaseHeld`. */
  hold(): void {
    this.holding = true;
  }

  /** New requests run at once again; those already held stay held until `releaseHeld`. */
  stopHolding(): void {
    this.holding = false;
  }

  /** Let every held request run, and stop holding. */
  releaseHeld(): void {
    this.holding = false;
    for (const run of this.held.splice(0)) run();
  }

  get heldCount(): number {
    return this.held.length;
  }

  /** Resolves once at least `count` requests are held. */
  async waitHeld(count: number): Promise<void> {
    while (this.held.length < count) await new Promise<void>((resolve) => (this.heldChanged = resolve));
  }

  /** Every request from now on fails with `code` (undefined: stop failing). */
  failWith(code: BlockErrorCode | undefined): void {
    this.failure = code;
  }

  private async gate<T>(op: string, details: { offset?: number; length?: number; fua?: boolean }, run: () => Promise<T>): Promise<T> {
    this.calls.push({ op, ...details });
    if (this.holding) {
      await new Promise<void>((resolve) => {
        this.held.push(resolve);
        this.heldChanged?.();
      });
    }
    if (this.failure) throw new BlockError(this.failure, `injected ${this.failure} on ${op}`);
    return run();
  }

  count(op: string): number {
    return this.calls.filter((call) => call.op === op).length;
  }

  override read(offset: number, target: Uint8Array): Promise<void> {
    return this.gate("read", { offset, length: target.length }, () => this.below.read(offset, target));
  }
  override write(offset: number, source: Payload, flags?: WriteFlags): Promise<void> {
    return this.gate("write", { offset, length: source.length, fua: flags?.fua }, () => this.below.write(offset, source, flags));
  }
  override flush(): Promise<void> {
    return this.gate("flush", {}, () => this.below.flush());
  }
  override trim(offset: number, length: number, flags?: WriteFlags): Promise<void> {
    return this.gate("trim", { offset, length, fua: flags?.fua }, () => this.below.trim(offset, length, flags));
  }
  override zero(offset: number, length: number, flags?: ZeroFlags): Promise<void> {
    return this.gate("zero", { offset, length, fua: flags?.fua }, () => this.below.zero(offset, length, flags));
  }
  override cache(offset: number, length: number): Promise<void> {
    return this.gate("cache", { offset, length }, () => this.below.cache(offset, length));
  }
  override extents(offset: number, length: number): Promise<Extent[]> {
    return this.gate("extents", { offset, length }, () => this.below.extents(offset, length));
  }
}
