/**
 * Cluster IPAM under load: N hosts (one process each, its own etcd client and IpamService, as
 * N daemons would be) allocate on one subnet of one etcd at once, each with a fixed number of
 * requests in flight. Reports allocations/s over the whole run, per-request latency
 * percentiles, and duplicates (addresses handed out twice, checked against the store too).
 *
 *   node dist/bench/ipam-load.js [--hosts 3] [--in-flight 300] [--per-host 3000] [--pool 10.128.0.0/16]
 *                                [--root <tree with dist/ to measure>] [--etcd host:port]
 *
 * `--root` runs another build of tsoverlay (a before/after comparison from one command).
 */
import { fork } from 'node:child_process';
import * as path from 'node:path';
import { parseArgs } from 'node:util';
import { startEtcd } from '../test/helpers/etcd';

interface WorkerResult {
  host: string;
  latencies: number[];
  addresses: string[];
  errors: string[];
}

const { values } = parseArgs({
  options: {
    hosts: { type: 'string', default: '3' },
    'in-flight': { type: 'string', default: '300' },
    'per-host': { type: 'string', default: '3000' },
    pool: { type: 'string', default: '10.128.0.0/16' },
    root: { type: 'string', default: path.resolve(__dirname, '..', '..') },
    etcd: { type: 'string' },
    worker: { type: 'string' },
  },
});

function percentile(sorted: number[], p: number): number {
  if (sorted.length === 0) return NaN;
  return sorted[Math.min(sorted.length - 1, Math.floor((p / 100) * sorted.length))]!;
}

async function worker(host: string): Promise<void> {
  const root = path.resolve(values.root!);
  const { IpamService, LOCAL_ADDRESS_SPACE } = require(path.join(root, 'dist/src/driver/ipam.js')) as typeof import('../src/driver/ipam');
  const { RecordStore } = require(path.join(root, 'dist/src/driver/record-store.js')) as typeof import('../src/driver/record-store');
  const { EtcdStore } = require(path.join(root, 'dist/src/store/etcd.js')) as typeof import('../src/store/etcd');
  const { silentLogger } = require(path.join(root, 'dist/src/log.js')) as typeof import('../src/log');
  const store = new EtcdStore({ endpoints: [values.etcd!], logger: silentLogger(), timeoutMs: 30_000 });
  const ipam = new IpamService(new RecordStore(store), host, silentLogger(), { requestTimeoutMs: 60_000 });
  const { poolId } = await ipam.requestPool({ addressSpace: LOCAL_ADDRESS_SPACE, pool: values.pool!, v6: false });
  if (host === 'h1') await ipam.requestAddress({ poolId, options: { RequestAddressType: 'com.docker.network.gateway' } });
  process.send!({ ready: true });
  await new Promise<void>((resolve) => process.once('message', () => resolve()));
  const total = Number(values['per-host']);
  const inFlight = Number(values['in-flight']);
  const result: WorkerResult = { host, latencies: [], addresses: [], errors: [] };
  let next = 0;
  const lane = async () => {
    while (next < total) {
      const i = next++;
      const t0 = performance.now();
      try {
        const r = await ipam.requestAddress({ poolId, options: {}, requestId: `${host}-${i}` });
        result.latencies.push(performance.now() - t0);
        result.addresses.push(r.address);
      } catch (err) {
        result.errors.push(err instanceof Error ? err.message : String(err));
      }
    }
  };
  await Promise.all(Array.from({ length: inFlight }, lane));
  process.send!(result);
  await store.close();
}

async function main(): Promise<void> {
  const etcd = values.etcd ? undefined : await startEtcd();
  const endpoint = values.etcd ?? etcd!.endpoints[0]!;
  try {
    const hosts = Array.from({ length: Number(values.hosts) }, (_, i) => `h${i + 1}`);
    const children = hosts.map((h) =>
      fork(__filename, ['--worker', h, '--etcd', endpoint, '--root', values.root!, '--per-host', values['per-host']!, '--in-flight', values['in-flight']!, '--pool', values.pool!], {
        stdio: ['ignore', 'inherit', 'inherit', 'ipc'],
      }),
    );
    // h1 takes the gateway first, so that every host's pool request finds the pool.
    const ready = children.map((c) => new Promise<void>((resolve, reject) => {
      c.once('message', () => resolve());
      c.once('exit', (code) => reject(new Error(`worker exited with ${code}`)));
    }));
    await Promise.all(ready);
    const results = children.map((c) => new Promise<WorkerResult>((resolve) => c.once('message', (m) => resolve(m as WorkerResult))));
    const t0 = performance.now();
    for (const c of children) c.send('go');
    const all = await Promise.all(results);
    const seconds = (performance.now() - t0) / 1000;
    const latencies = all.flatMap((r) => r.latencies).sort((a, b) => a - b);
    const addresses = all.flatMap((r) => r.addresses);
    const duplicates = addresses.length - new Set(addresses).size;
    const errors = all.flatMap((r) => r.errors);
    const report = {
      root: values.root,
      hosts: hosts.length,
      inFlightPerHost: Number(values['in-flight']),
      allocations: addresses.length,
      seconds: Number(seconds.toFixed(2)),
      perSecond: Math.round(addresses.length / seconds),
      p50Ms: Number(percentile(latencies, 50).toFixed(1)),
      p99Ms: Number(percentile(latencies, 99).toFixed(1)),
      maxMs: Number((latencies[latencies.length - 1] ?? NaN).toFixed(1)),
      duplicates,
      errors: errors.length,
      firstError: errors[0],
    };
    process.stdout.write(`${JSON.stringify(report)}\n`);
  } finally {
    await etcd?.stop();
  }
}

if (values.worker) {
  worker(values.worker).catch((err: unknown) => {
    process.stderr.write(`${err instanceof Error ? err.stack : String(err)}\n`);
    process.exit(1);
  });
} else {
  main().catch((err: unknown) => {
    process.stderr.write(`${err instanceof Error ? err.stack : String(err)}\n`);
    process.exitCode = 1;
  });
}
