// Every limit Tandem enforces, in one place (CONVENTIONS.md §5). A bound that protects the daemon
// from a client, the network or the operator lives here with a name and a unit, and relations
// between bounds are asserted below when the module loads, so a bad edit fails at start-up rather
// than in the field. Sections are owned by the subsystem named in their heading.
import { assert } from "./common/assert.ts";

const KiB = 1024;
const MiB = 1024 * KiB;
const GiB = 1024 * MiB;
const TiB = 1024 * GiB;

// ---- Volumes and local storage (src/node) ----
/** Smallest volume we create: one maximum-size request, so every export limit makes sense. */
export const volumeSizeBytesMin = 1 * MiB;
/** Largest volume: offsets stay exact in a JS number (2^53) with a wide margin. */
export const volumeSizeBytesMax = 256 * TiB;
/** Volume sizes are whole multiples of this, so every export can use 4 KiB blocks. */
export const volumeSizeAlignmentBytes = 4 * KiB;
/** Volume names: DNS-label-like, so they are safe in paths, URLs and NBD export names. */
export const volumeNamePattern = /^[a-z0-9][a-z0-9_.-]{0,62}$/;
export const volumeCountMax = 1024;
/** O_DIRECT needs buffers and offsets aligned to the logical block size; 4 KiB covers every disk. */
export const directIoAlignmentBytes = 4 * KiB;
/** Bounce buffers for O_DIRECT requests whose guest buffer is not aligned are pooled up to this size. */
export const directIoBounceBytesMax = 32 * MiB;

// ---- Requests on any export (src/node/export) ----
/** Largest single READ/WRITE payload we accept (NBD and virtio); larger requests get EINVAL/EOVERFLOW. */
export const requestBytesMax = 32 * MiB;
/** Preferred request size we advertise: large enough for sequential throughput. */
export const requestBytesPreferred = 4 * KiB;
/** Smallest addressable unit we advertise (NBD minimum block size, virtio logical block). */
export const requestBytesMinimum = 512;
/** Largest TRIM / WRITE_ZEROES length in one request. */
export const discardBytesMax = 1 * GiB;
/** Requests in flight on one connection before we stop reading from its socket (back-pressure). */
export const requestsInFlightPerConnectionMax = 128;
/** Bytes of write payload buffered in flight on one connection before back-pressure. */
export const requestBytesInFlightPerConnectionMax = 128 * MiB;

// ---- NBD (src/node/export/nbd) ----
/** Client connections to one node's NBD listeners together. */
export const nbdConnectionsMax = 256;
/** Length of an option request during negotiation (export names, meta context queries). */
export const nbdOptionBytesMax = 64 * KiB;
/** NBD export names and meta context names, per the spec's 4096-byte limit on strings. */
export const nbdStringBytesMax = 4096;
/** Options a client may send before we close the negotiation (stops option floods). */
export const nbdOptionsPerNegotiationMax = 1024;
/** A client that has not finished the handshake in this time is disconnected. */
export const nbdHandshakeTimeoutMs = 30_000;
/** Extents returned in one BLOCK_STATUS reply. */
export const nbdBlockStatusExtentsMax = 4096;
/** After a graceful close (DISC, ABORT, drain) the last replies get this long to leave before the socket is cut. */
export const nbdCloseLingerMs = 5_000;

// ---- Control API (src/node/control) ----
/** Largest request body the control API reads. */
export const controlRequestBytesMax = 1 * MiB;
/** Events kept in the node's event log; older ones are pruned. */
export const eventLogEntriesMax = 100_000;

// ---- Daemon lifecycle (src/node) ----
/** On SIGTERM, in-flight IO gets this long to drain before the daemon exits anyway. */
export const shutdownDrainTimeoutMs = 20_000;

// ---- vhost-user-blk (src/node/export/vhost) ----
/** Virtqueues one vhost-user-blk export may offer (VHOST_USER_GET_QUEUE_NUM, virtio-blk num_queues). */
export const vhostQueuesMax = 16;
/** Largest split virtqueue we accept (QEMU's VIRTQUEUE_MAX_SIZE); sizes are powers of two. */
export const vhostQueueSizeMax = 1024;
/** Largest vhost-user message payload we read (SET_MEM_TABLE with 8 regions is 264 bytes). */
export const vhostMessagePayloadBytesMax = 4096;
/** File descriptors accepted with one vhost-user message (SET_MEM_TABLE carries one per region). */
export const vhostMessageFdsMax = 8;
/** Guest memory regions in one SET_MEM_TABLE (VHOST_MEMORY_BASELINE_NREGIONS). */
export const vhostMemoryRegionsMax = 8;
/** Device config space bytes in one GET_CONFIG / SET_CONFIG (VHOST_USER_MAX_CONFIG_SIZE). */
export const vhostConfigBytesMax = 256;
/** Data segments in one virtio-blk request, advertised as seg_max. */
export const vhostSegmentsPerRequestMax = 254;
/** Entries in one indirect descriptor table. */
export const vhostIndirectDescriptorsMax = 1024;
/** Ranges in one DISCARD / WRITE_ZEROES request (max_discard_seg, max_write_zeroes_seg). */
export const vhostDiscardSegmentsMax = 32;
/** GET_VRING_BASE (the front-end stopping a queue) waits this long for the queue's requests in flight;
 * requests still running after it are left in the in-flight region to be resubmitted on restart. */
export const vhostStopDrainTimeoutMs = 10_000;

// ---- Relations asserted at load ----
assert(volumeSizeBytesMin >= requestBytesMax / 32, "smallest volume must hold a useful request");
assert(volumeSizeBytesMax <= Number.MAX_SAFE_INTEGER / 16, "volume offsets (and offset + length sums) must stay exact in a double");
assert(volumeSizeAlignmentBytes % directIoAlignmentBytes === 0, "volume sizes must be O_DIRECT aligned");
assert(requestBytesMax % directIoAlignmentBytes === 0, "largest request must be O_DIRECT aligned");
assert(requestBytesMinimum <= requestBytesPreferred && requestBytesPreferred <= requestBytesMax, "block size constraints ordered");
assert(requestBytesInFlightPerConnectionMax >= requestBytesMax, "one maximal write must fit in flight");
assert(directIoBounceBytesMax >= requestBytesMax, "one maximal request must fit a bounce buffer");
assert(vhostSegmentsPerRequestMax + 2 <= vhostIndirectDescriptorsMax, "a request with seg_max segments, its header and status fits one indirect table");
assert((vhostQueueSizeMax & (vhostQueueSizeMax - 1)) === 0 && vhostQueueSizeMax <= 32768, "virtqueue sizes are powers of two up to 32768");
assert(vhostMessagePayloadBytesMax >= 8 + 32 * vhostMemoryRegionsMax && vhostMessagePayloadBytesMax >= 12 + vhostConfigBytesMax, "every vhost-user message fits the payload bound");
assert(vhostMessageFdsMax >= vhostMemoryRegionsMax, "SET_MEM_TABLE passes one descriptor per region");
assert(vhostDiscardSegmentsMax * 16 <= requestBytesMax, "a DISCARD request's ranges fit one request");
assert(vhostQueuesMax >= 1 && vhostQueuesMax <= 256, "vring indexes in vhost-user messages are 8 bits");

export const units = { KiB, MiB, GiB, TiB } as const;
