// An ExportResolver for NBD tests: volumes are BlockLayers registered by name, handles count who
// holds them, and a test can make a volume read-only or revoke it (as a forced delete or a node
// shutdown would) to watch the sessions react. The real resolver is the node's volume manager.
import type { BlockLayer } from "../../src/node/block/layer.ts";
import type { ExportHandle, ExportInfo, ExportResolver } from "../../src/node/export/types.ts";

interface Volume {
  layer: BlockLayer;
  description: string;
  readOnly: boolean;
  handles: Set<TestHandle>;
}

class TestHandle implements ExportHandle {
  released = false;
  private revokeCallbacks: ((reason: string) => void)[] = [];
  constructor(
    readonly volume: string,
    private readonly entry: Volume,
    readonly client: string,
  ) {}
  get layer(): BlockLayer {
    return this.entry.layer;
  }
  readOnly(): boolean {
    return this.entry.readOnly;
  }
  release(): void {
    this.released = true;
    this.entry.handles.delete(this);
  }
  onRevoke(callback: (reason: string) => void): void {
    this.revokeCallbacks.push(callback);
  }
  revoke(reason: string): void {
    for (const callback of this.revokeCallbacks) callback(reason);
  }
}

export class TestExports implements ExportResolver {
  private readonly volumes = new Map<string, Volume>();
  /** Every open() call, in order, with the client description the export gave. */
  readonly opens: { name: string; client: string }[] = [];

  add(name: string, layer: BlockLayer, options: { description?: string; readOnly?: boolean } = {}): void {
    this.volumes.set(name, { layer, description: options.description ?? "", readOnly: options.readOnly ?? false, handles: new Set() });
  }

  setReadOnly(name: string, readOnly: boolean): void {
    this.volumes.get(name)!.readOnly = readOnly;
  }

  /** Handles currently held (opened and not released) on `name`. */
  held(name: string): number {
    return this.volumes.get(name)?.handles.size ?? 0;
  }

  revoke(name: string, reason = "volume deleted"): void {
    for (const handle of [...(this.volumes.get(name)?.handles ?? [])]) handle.revoke(reason);
  }

  open(name: string, client: string): ExportHandle | undefined {
    this.opens.push({ name, client });
    const entry = this.volumes.get(name);
    if (!entry) return undefined;
    const handle = new TestHandle(name, entry, client);
    entry.handles.add(handle);
    return handle;
  }

  list(): ExportInfo[] {
    return [...this.volumes].map(([name, entry]) => ({ name, description: entry.description, sizeBytes: entry.layer.size() }));
  }
}
