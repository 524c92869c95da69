// Proves the vhost-user-blk export with a real QEMU guest (TCG) on a Tandem back-end running as its
// own process (test/helpers/vhost-backend.ts: a FileLayer over a backing file, O_DIRECT):
//  1. fio inside the guest, two queues, random writes of mixed sizes verified with crc32c;
//  2. the guest makes an ext4 filesystem (the host's mke2fs added to the initramfs: busybox can only
//     make ext2), writes files and syncs; a fresh boot mounts it and gets the same checksums, and
//     the host's e2fsck finds the filesystem clean;
//  3. with `reconnect=1` on the chardev, the back-end process is killed (SIGKILL) twice in the middle
//     of a verified fio run and started again on the same socket and file: QEMU reconnects, requests
//     left in flight — writes held back so they never reached the file — are resubmitted, and fio's
//     verification passes.
// Needs what packaging/setup.sh installs: qemu-system-x86_64, fio, busybox-static, a guest kernel.
// Each test bounds its own time and kills the processes it started by PID.
import { afterEach, beforeEach, describe, expect, test } from "bun:test";
import fs from "node:fs";
import os from "node:os";
import path from "node:path";
import { runCli, TestDaemon } from "../helpers/daemon.ts";
import { startBackendProcess, type BackendProcess } from "../helpers/vhost-backend-process.ts";
import { until } from "../helpers/until.ts";
import { fioScript, loadExt4, runGuest, vhostLabDirectory } from "../helpers/vhost-guest.ts";

const GiB = 1024 * 1024 * 1024;

let dir: string;
let image: string;
let socket: string;
let backends: BackendProcess[];

beforeEach(() => {
  dir = fs.mkdtempSync(path.join(os.tmpdir(), "tandem-vhost-e2e-"));
  image = path.join(dir, "disk.img");
  socket = path.join(dir, "vu.sock");
  fs.writeFileSync(image, "");
  fs.truncateSync(image, GiB);
  backends = [];
});

afterEach(async () => {
  for (const backend of backends) await backend.stop("SIGKILL");
  fs.rmSync(dir, { recursive: true, force: true });
});

async function backend(queues = 1, writeDelayMs = 0): Promise<BackendProcess> {
  const started = await startBackendProcess({ file: image, socket, queues, writeDelayMs, logFile: path.join(dir, `backend-${backends.length}.log`) });
  backends.push(started);
  return started;
}

function logRecords(backendProcess: BackendProcess): { level: string; msg: string; reason?: string; requests?: number }[] {
  return backendProcess
    .log()
    .split("\n")
    .filter((line) => line.startsWith("{") && line.includes('"msg"'))
    .map((line) => JSON.parse(line));
}

describe("vhost-user-blk with a QEMU guest", () => {
  test(
    "fio with crc32c verification on two queues",
    async () => {
      const server = await backend(2);
      const fio = "--rw=randwrite --bsrange=4k-128k --iodepth=16 --size=48M --verify=crc32c --do_verify=1 --verify_fatal=1";
      const guest = await runGuest({ socket, labDir: vhostLabDirectory(), queues: 2, smp: 2, timeoutSeconds: 240, script: fioScript(fio) });
      expect(guest.ok, `guest workload failed: ${guest.stderr}`).toBe(true);
      const job = (guest.json as { jobs: any[] }).jobs[0];
      expect(job.error).toBe(0);
      expect(job.write.io_bytes).toBe(48 * 1024 * 1024);
      expect(job.read.io_bytes).toBe(48 * 1024 * 1024); // the verify pass read everything back
      const records = logRecords(server);
      expect(records.some((r) => r.msg === "front-end connected")).toBe(true);
      expect(records.filter((r) => r.level === "warn" || r.level === "error")).toEqual([]);
    },
    420_000,
  );

  test(
    "ext4 made and written by one guest is read back with the same checksums by a fresh boot",
    async () => {
      await backend();
      const write = await runGuest({
        socket,
        labDir: vhostLabDirectory(),
        ext4: true,
        timeoutSeconds: 240,
        script: [
          "set -e",
          loadExt4,
          "$MKE2FS -q -F -t ext4 $DEV",
          "mkdir -p /mnt && mount -t ext4 $DEV /mnt",
          "mkdir /mnt/data",
          "for i in 1 2 3 4 5 6 7 8; do dd if=/dev/urandom of=/mnt/data/file$i bs=4k count=$((i * 37)) 2>/dev/null; done",
          "dd if=/dev/urandom of=/mnt/data/large bs=1M count=40 2>/dev/null",
          "sync",
          "cd /mnt/data && sha256sum file1 file2 file3 file4 file5 file6 file7 file8 large && cd /",
          "umount /mnt",
        ].join("\n"),
      });
      expect(write.ok, `first boot failed: ${write.stderr}`).toBe(true);
      const written = write.output.trim().split("\n");
      expect(written.length).toBe(9);
      expect(written.every((line) => /^[0-9a-f]{64}  \S+$/.test(line))).toBe(true);

      const read = await runGuest({
        socket,
        labDir: vhostLabDirectory(),
        ext4: true,
        timeoutSeconds: 240,
        script: [
          "set -e",
          loadExt4,
          "mkdir -p /mnt && mount -t ext4 -o ro $DEV /mnt",
          "cd /mnt/data && sha256sum file1 file2 file3 file4 file5 file6 file7 file8 large && cd /",
          "umount /mnt",
        ].join("\n"),
      });
      expect(read.ok, `second boot failed: ${read.stderr}`).toBe(true);
      expect(read.output.trim().split("\n")).toEqual(written);

      for (const server of backends) await server.stop("SIGTERM");
      const check = Bun.spawnSync(["e2fsck", "-fn", image], { stdout: "pipe", stderr: "pipe" });
      expect(check.exitCode, check.stdout.toString() + check.stderr.toString()).toBe(0);
    },
    600_000,
  );

  test(
    "QEMU reconnects after the back-end is killed and restarted mid-IO; the guest's verified fio run passes",
    async () => {
      // Writes are held 5 ms before they reach the file, so each kill finds requests in flight that
      // were never written: fio's verification can only pass if the restarted back-end resubmits them.
      const writeDelayMs = 5;
      await backend(1, writeDelayMs);
      const restarts: Promise<void>[] = [];
      const killAndRestart = async (runMs: number) => {
        const victim = backends[backends.length - 1]!;
        // QEMU is serving the guest through this back-end (after a restart, once it has reconnected:
        // it retries every second, slower under TCG and load).
        await until("QEMU connected to the back-end", () => logRecords(victim).some((record) => record.msg === "front-end connected"), 60_000);
        await Bun.sleep(runMs); // fio writes through it a while before the kill (time that must pass)
        await victim.stop("SIGKILL");
        await Bun.sleep(1000); // the back-end stays down while QEMU sees it gone and retries (time that must pass)
        await backend(1, writeDelayMs);
      };
      const guest = await runGuest({
        socket,
        labDir: vhostLabDirectory(),
        reconnect: true,
        timeoutSeconds: 300,
        script: [
          "echo TANDEM_MARK fio-start > /dev/ttyS0",
          "fio --name=reconnect --filename=$DEV --direct=1 --ioengine=libaio --rw=randwrite --bs=4k --iodepth=16 --size=32M --verify=crc32c --do_verify=1 --verify_fatal=1 --output-format=json --output=/tmp/result.json",
        ].join("\n"),
        onMark: (mark) => {
          if (mark === "fio-start") restarts.push((async () => {
            await killAndRestart(1500);
            await killAndRestart(1500);
          })());
        },
      });
      await Promise.all(restarts);
      expect(guest.ok, `guest failed: ${guest.stderr}\n${guest.console.slice(-2000)}`).toBe(true);
      const job = (guest.json as { jobs: { error: number; write: { io_bytes: number }; read: { io_bytes: number } }[] }).jobs[0]!;
      expect(job.error).toBe(0);
      expect(job.write.io_bytes).toBe(32 * 1024 * 1024);
      expect(job.read.io_bytes).toBe(32 * 1024 * 1024);
      expect(backends.length).toBe(3);
      // Each restarted back-end served the guest again.
      for (const restarted of backends.slice(1)) expect(logRecords(restarted).some((r) => r.msg === "front-end connected")).toBe(true);
      const resubmitted = backends.slice(1).flatMap((b) => logRecords(b)).filter((r) => r.msg === "resubmitting requests left in flight");
      console.log(`reconnect: restarts resubmitted ${JSON.stringify(resubmitted.map((r) => r.requests))} requests left in flight`);
      expect(resubmitted.length).toBeGreaterThanOrEqual(1);
    },
    600_000,
  );

  test(
    "through the daemon: `tandem export vhost`, the daemon SIGKILLed mid-IO and restarted, the export comes back and the guest's verified fio passes",
    async () => {
      const daemon = await TestDaemon.start({ dir: fs.mkdtempSync(path.join(dir, "node-")), config: { log: { level: "info" } } });
      try {
        expect((await daemon.cli(["volume", "create", "vm", "--size", "256M"])).code).toBe(0);
        const vhostSocket = path.join(daemon.dir, "vhost", "vm.vhost.sock"); // inside the configured vhost.socketDir
        const exported = await daemon.cli(["export", "vhost", "vm", "--path", vhostSocket, "--json"]);
        expect(exported.code, exported.stderr).toBe(0);
        let restarted: Promise<void> | undefined;
        const guest = await runGuest({
          socket: vhostSocket,
          labDir: vhostLabDirectory(),
          reconnect: true,
          timeoutSeconds: 300,
          script: [
            "echo TANDEM_MARK fio-start > /dev/ttyS0",
            "fio --name=daemon --filename=$DEV --direct=1 --ioengine=libaio --rw=randwrite --bs=4k --iodepth=16 --size=32M --verify=crc32c --do_verify=1 --verify_fatal=1 --output-format=json --output=/tmp/result.json",
          ].join("\n"),
          onMark: (mark) => {
            if (mark !== "fio-start") return;
            restarted = (async () => {
              await Bun.sleep(1500); // fio writes through the daemon a while before the kill (time that must pass)
              await daemon.kill();
              await Bun.sleep(1000); // the daemon stays down while QEMU sees it gone and retries (time that must pass)
              await daemon.start(); // the export is in the node's state: it comes back by itself
            })();
          },
        });
        await restarted;
        expect(guest.ok, `guest failed: ${guest.stderr}\n${guest.console.slice(-2000)}`).toBe(true);
        const job = (guest.json as { jobs: { error: number; write: { io_bytes: number }; read: { io_bytes: number } }[] }).jobs[0]!;
        expect(job.error).toBe(0);
        expect(job.write.io_bytes).toBe(32 * 1024 * 1024);
        expect(job.read.io_bytes).toBe(32 * 1024 * 1024);
        // The restarted daemon restored the export and QEMU reconnected to it.
        const listed = JSON.parse((await daemon.cli(["export", "list", "--json"])).stdout) as { exports: { kind: string; volume?: string; running?: boolean }[] };
        expect(listed.exports.some((entry) => entry.kind === "vhost" && entry.volume === "vm" && entry.running === true)).toBe(true);
        const connects = daemon.logRecords().filter((record) => record.msg === "front-end connected");
        expect(connects.length).toBeGreaterThanOrEqual(2);
      } finally {
        await daemon.stop().catch(() => daemon.kill());
      }
    },
    600_000,
  );

  test(
    "on a mirrored volume in the two-node lab: the guest's verified fio passes on the primary and verify finds the replicas identical",
    async () => {
      const labDir = fs.mkdtempSync(path.join(dir, "lab-"));
      const lab = (args: string[]) => runCli(["lab", ...args, "--dir", labDir], { timeoutMs: 90_000 });
      const onA = (args: string[]) => runCli([...args, "--socket", path.join(labDir, "a", "control.sock")]);
      try {
        expect((await lab(["up"])).code).toBe(0);
        expect((await onA(["volume", "create", "vm", "--size", "128M"])).code).toBe(0);
        const vhostSocket = path.join(labDir, "a", "vhost", "vm.vhost.sock"); // inside node a's vhost.socketDir
        const exported = await onA(["export", "vhost", "vm", "--path", vhostSocket]);
        expect(exported.code, exported.stderr).toBe(0);
        const guest = await runGuest({
          socket: vhostSocket,
          labDir: vhostLabDirectory(),
          timeoutSeconds: 240,
          script: fioScript("--rw=randwrite --bsrange=4k-64k --iodepth=16 --size=24M --verify=crc32c --do_verify=1 --verify_fatal=1"),
        });
        expect(guest.ok, `guest failed: ${guest.stderr}`).toBe(true);
        const job = (guest.json as { jobs: { error: number; write: { io_bytes: number } }[] }).jobs[0]!;
        expect(job.error).toBe(0);
        expect(job.write.io_bytes).toBe(24 * 1024 * 1024);
        const verify = await onA(["verify", "vm", "--json"]);
        expect(verify.code, verify.stderr).toBe(0);
        const report = JSON.parse(verify.stdout) as { mismatchCount: number; extentsCompared: number };
        expect(report.extentsCompared).toBeGreaterThan(0);
        expect(report.mismatchCount).toBe(0);
      } finally {
        await lab(["down"]);
      }
    },
    600_000,
  );
});
