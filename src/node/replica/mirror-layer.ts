// The mirror in a volume's layer stack (file → mirror → gate → export): every client request goes
// to the replication driver, which performs protocol C (local and peer writes at once, completion
// when both are done, FLUSH/FUA durable on both). The layer only turns the driver's callbacks into
// promises and says what the stack can honour: flush and FUA always (the driver makes them mean
// "on both nodes"), trim and zero as mirrored operations, no fast zero (a mirrored zero is never
// guaranteed fast), extents from the local replica.
import type { Payload } from "../../common/bytes.ts";
import { BlockError } from "../../common/errors.ts";
import type { BlockCapabilities, BlockLayer, Extent, WriteFlags, ZeroFlags } from "../block/layer.ts";
import type { Completion, ReplicaDriver } from "../../replica/driver.ts";
import { ioErrorOf } from "./io-adapters.ts";

function completion(resolve: () => void, reject: (error: Error) => void): Completion {
  return (error) => (error ? reject(error) : resolve());
}

export class MirrorLayer implements BlockLayer {
  readonly kind = "mirror";

  constructor(
    private readonly driver: ReplicaDriver,
    readonly volumeId: number,
    private readonly local: BlockLayer,
  ) {}

  size(): number {
    return this.local.size();
  }

  capabilities(): BlockCapabilities {
    const below = this.local.capabilities();
    return {
      readOnly: false,
      flush: true,
      fua: true,
      trim: true,
      zero: true,
      fastZero: false,
      extents: below.extents,
      multiConn: true,
      cache: false,
      alignmentBytes: below.alignmentBytes,
    };
  }

  /**
   * A read the replica would serve from this node's copy goes to the layer below at once, as on an
   * unmirrored volume (ReplicaDriver.readsLocally); if that fails, the driver reports it and asks
   * the peer. Other reads (a region this node is still receiving in a resync, a frozen grant, a
   * stale secondary) take the driver's way.
   */
  read(offset: number, target: Uint8Array): Promise<void> {
    if (this.driver.readsLocally(this.volumeId, offset, target.length)) {
      const drops = this.driver.localDrops(this.volumeId);
      return this.local.read(offset, target).then(
        // A failed flush that may have dropped the region finished meanwhile: read it again by the rules in force now.
        () => (this.driver.localDrops(this.volumeId) === drops ? undefined : new Promise<void>((resolve, reject) => this.driver.read(this.volumeId, offset, target, completion(resolve, reject)))),
        (error) => new Promise<void>((resolve, reject) => this.driver.readAfterLocalError(this.volumeId, offset, target, ioErrorOf(error), completion(resolve, reject))),
      );
    }
    return new Promise((resolve, reject) => this.driver.read(this.volumeId, offset, target, completion(resolve, reject)));
  }

  write(offset: number, source: Payload, flags?: WriteFlags): Promise<void> {
    return new Promise((resolve, reject) => this.driver.write(this.volumeId, offset, source, flags?.fua === true, completion(resolve, reject), flags?.stable === true));
  }

  flush(): Promise<void> {
    return new Promise((resolve, reject) => this.driver.flush(this.volumeId, completion(resolve, reject)));
  }

  trim(offset: number, length: number, flags?: WriteFlags): Promise<void> {
    return new Promise((resolve, reject) => this.driver.trim(this.volumeId, offset, length, flags?.fua === true, completion(resolve, reject)));
  }

  zero(offset: number, length: number, flags?: ZeroFlags): Promise<void> {
    if (flags?.fastZero) return Promise.reject(new BlockError("ENOTSUP", "a mirrored zero is not guaranteed fast"));
    return new Promise((resolve, reject) =>
      this.driver.zero(this.volumeId, offset, length, { fua: flags?.fua === true, noHole: flags?.noHole === true }, completion(resolve, reject)),
    );
  }

  async cache(): Promise<void> {}

  extents(offset: number, length: number): Promise<Extent[]> {
    return this.local.extents(offset, length);
  }

  async resize(): Promise<void> {
    throw new BlockError("ENOTSUP", "growing a mirrored volume is not supported yet");
  }

  close(): Promise<void> {
    return this.local.close();
  }
}
