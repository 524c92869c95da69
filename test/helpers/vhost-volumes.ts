// An ExportResolver for vhost tests: named volumes over a MemoryLayer behind a GateLayer (so a
// test can freeze IO to hold requests in flight), with a record of every open and release and a
// way to revoke a session's handle as the node would on a forced delete.
import { GateLayer } from "../../src/node/block/gate.ts";
import { MemoryLayer } from "../../src/node/block/memory.ts";
import type { BlockLayer } from "../../src/node/block/layer.ts";
import type { ExportHandle, ExportInfo, ExportResolver } from "../../src/node/export/types.ts";

export interface TestVolume {
  name: string;
  memory: MemoryLayer;
  gate: GateLayer;
  readOnly: boolean;
  opens: string[];
  releases: number;
  revokers: ((reason: string) => void)[];
}

export class TestVolumes implements ExportResolver {
  readonly volumes = new Map<string, TestVolume>();

  add(name: string, sizeBytes: number, options: { readOnly?: boolean; layer?: (memory: MemoryLayer) => BlockLayer } = {}): TestVolume {
    const memory = new MemoryLayer(sizeBytes);
    const volume: TestVolume = { name, memory, gate: new GateLayer(memory), readOnly: options.readOnly ?? false, opens: [], releases: 0, revokers: [] };
    this.volumes.set(name, volume);
    return volume;
  }

  open(name: string, client: string): ExportHandle | undefined {
    const volume = this.volumes.get(name);
    if (!volume) return undefined;
    volume.opens.push(client);
    let released = false;
    return {
      volume: name,
      layer: volume.gate,
      readOnly: () => volume.readOnly,
      release: () => {
        if (released) return;
        released = true;
        volume.releases++;
      },
      onRevoke: (callback) => volume.revokers.push(callback),
    };
  }

  list(): ExportInfo[] {
    return [...this.volumes.values()].map((v) => ({ name: v.name, description: "test volume", sizeBytes: v.memory.size() }));
  }

  /** Bytes of a volume, read below the gate. */
  async bytes(name: string, offset: number, length: number): Promise<Uint8Array> {
    const target = new Uint8Array(length);
    await this.volumes.get(name)!.memory.read(offset, target);
    return target;
  }
}
