// How the simulators' CI tests split their seeds: at most ten batches of about 200, so progress
// shows and a failing batch names the seeds to replay.

/** The runs of consecutive seeds covering `seeds` seeds from `from`, none empty. */
export function seedBatches(seeds: number, from: number): { first: number; count: number }[] {
  const batches = Math.max(1, Math.min(10, Math.ceil(seeds / 200)));
  const batchSize = Math.ceil(seeds / batches);
  const runs: { first: number; count: number }[] = [];
  for (let batch = 0; batch < batches; batch++) {
    const first = from + batch * batchSize;
    const count = Math.min(batchSize, from + seeds - first);
    if (count > 0) runs.push({ first, count });
  }
  return runs;
}
