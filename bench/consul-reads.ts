/**
 * What a `?consistent` Consul read costs against a default-mode one (the store's non-blocking
 * reads are consistent, see src/store/consul.ts): a listing of 100 keys, read alternately in
 * blocks of 200 per mode, on one server and on a 3-server cluster through the leader and
 * through a follower. Reports p50/p99 per mode; both modes run in the same run.
 *
 *   node dist/bench/consul-reads.js [--keys 100] [--blocks 10] [--per-block 200]
 */
import { parseArgs } from 'node:util';
import { startConsul } from '../test/helpers/consul';
import { startConsulCluster } from '../test/helpers/consul-cluster';
import { quantile } from './lib/stats';

const { values } = parseArgs({
  options: {
    keys: { type: 'string', default: '100' },
    blocks: { type: 'string', default: '10' },
    'per-block': { type: 'string', default: '200' },
  },
});
const KEYS = Number(values.keys);
const BLOCKS = Number(values.blocks);
const PER_BLOCK = Number(values['per-block']);
const MODES = { default: '', consistent: '&consistent' } as const;

async function measure(address: string, label: string): Promise<void> {
  const samples: Record<keyof typeof MODES, number[]> = { default: [], consistent: [] };
  for (let block = 0; block < BLOCKS; block++) {
    for (const mode of Object.keys(MODES) as (keyof typeof MODES)[]) {
      for (let i = 0; i < PER_BLOCK; i++) {
        const t0 = performance.now();
        const res = await fetch(`http://${address}/v1/kv/bench/?recurse${MODES[mode]}`);
        await res.arrayBuffer();
        if (res.status !== 200) throw new Error(`${label} ${mode}: HTTP ${res.status}`);
        samples[mode].push(performance.now() - t0);
      }
    }
  }
  for (const [mode, xs] of Object.entries(samples)) {
    process.stdout.write(`${label}, ${mode}: p50 ${quantile(xs, 0.5).toFixed(3)} ms, p99 ${quantile(xs, 0.99).toFixed(3)} ms (${xs.length} reads)\n`);
  }
}

async function main(): Promise<void> {
  const one = await startConsul();
  try {
    for (let i = 0; i < KEYS; i++) await one.api('PUT', `/v1/kv/bench/k${i}`, { ip: `10.0.${i >> 8}.${i & 255}` });
    await measure(one.address, '1 server');
  } finally {
    await one.stop();
  }
  const cluster = await startConsulCluster({ servers: 3 });
  try {
    const leader = await cluster.leader();
    for (let i = 0; i < KEYS; i++) await cluster.api('PUT', `/v1/kv/bench/k${i}`, { ip: `10.0.${i >> 8}.${i & 255}` });
    await measure(cluster.members[leader]!.address, '3 servers, through the leader');
    await measure(cluster.members[(leader + 1) % 3]!.address, '3 servers, through a follower');
  } finally {
    await cluster.stop();
  }
}

main().then(
  () => process.exit(0),
  (err: unknown) => {
    process.stderr.write(`${err instanceof Error ? err.stack : String(err)}\n`);
    process.exit(1);
  },
);
