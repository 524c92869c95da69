// fio arguments the lab tests share.

/**
 * Random 4 KiB writes over `sizeBytes` for `seconds` (long enough to span a fault), each block read
 * back and checked while the run goes on (verify_backlog) and all of them again at the end; a
 * mismatch stops fio with an error (verify_fatal).
 */
export function verifiedWorkload(options: { sizeBytes: number; seconds: number; iodepth: number }): string[] {
  return [
    "--rw=randwrite",
    "--bs=4k",
    `--iodepth=${options.iodepth}`,
    `--size=${options.sizeBytes}`,
    "--time_based=1",
    `--runtime=${options.seconds}`,
    "--verify=crc32c",
    "--verify_backlog=256",
    "--verify_fatal=1",
  ];
}
