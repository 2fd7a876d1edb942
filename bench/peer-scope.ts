/**
 * Peer distribution's store side at scale, without kernel (the dataplane is a recorder): one
 * daemon's PeerSync on etcd beside phantom hosts and endpoints written in the daemon's own
 * record format (RecordStore, keys).
 *
 * - `restart`: the store holds `--peers` remote endpoints on the `--used` networks this host has
 *   containers on, and `--others` on networks it does not use; a fresh PeerSync (a restarted
 *   daemon) starts and activates its networks. Reports the time until every peer is programmed,
 *   and RSS.
 * - `churn`: the daemon runs with its networks active; `--churn` endpoints are then written on
 *   networks it does not use. Reports the events it received, its CPU seconds and RSS growth.
 *
 *   node dist/bench/peer-scope.js [--peers 10000] [--others 10000] [--used 1] [--churn 10000]
 *                                 [--root <tree with dist/ to measure>]
 */
import { fork } from 'node:child_process';
import * as path from 'node:path';
import { parseArgs } from 'node:util';
import { startEtcd } from '../test/helpers/etcd';
import { RecordStore } from '../src/driver/record-store';
import { keys, type EndpointRecord, type NetworkRecord } from '../src/driver/records';
import { silentLogger } from '../src/log';
import { EtcdStore } from '../src/store/etcd';
import { NODE_FLAGS } from '../src/node-flags';

const { values } = parseArgs({
  options: {
    peers: { type: 'string', default: '10000' },
    others: { type: 'string', default: '10000' },
    used: { type: 'string', default: '1' },
    churn: { type: 'string', default: '10000' },
    hosts: { type: 'string', default: '1000' },
    root: { type: 'string', default: path.resolve(__dirname, '..', '..') },
    etcd: { type: 'string' },
    worker: { type: 'boolean', default: false },
  },
});

const network = (i: number): NetworkRecord => ({
  key: `10.${100 + Math.floor(i / 256)}.${i % 256}.0-24`,
  ids: [`${i}`.padStart(64, 'n')],
  vni: 4096 + i,
  subnet: `10.${100 + Math.floor(i / 256)}.${i % 256}.0/24`,
  gateway: `10.${100 + Math.floor(i / 256)}.${i % 256}.1`,
  mtu: 1450,
  mode: 'static',
  options: {},
  created: new Date(0).toISOString(),
});

function endpoint(n: number, net: NetworkRecord, host: string): EndpointRecord {
  const id = n.toString(16).padStart(64, '0');
  return {
    id,
    networkId: net.ids[0]!,
    ip: `10.200.${(n >> 8) & 255}.${n & 255}`,
    mac: `02:42:${[(n >> 24) & 255, (n >> 16) & 255, (n >> 8) & 255, n & 255].map((b) => b.toString(16).padStart(2, '0')).join(':')}`,
    locator: '192.0.2.1',
    host,
    joined: true,
    created: new Date(0).toISOString(),
  };
}

async function writeAll(records: RecordStore, items: Array<[string, unknown]>): Promise<void> {
  let next = 0;
  await Promise.all(
    Array.from({ length: 200 }, async () => {
      while (next < items.length) {
        const [k, v] = items[next++]!;
        await records.put(k, v);
      }
    }),
  );
}

/** Endpoints spread over `count` networks starting at network `from`, on the phantom hosts. */
function endpointsOn(from: number, count: number, total: number, offset: number, hosts: number): Array<[string, unknown]> {
  const out: Array<[string, unknown]> = [];
  for (let n = 0; n < total; n++) {
    const net = network(from + (n % count));
    const ep = endpoint(offset + n, net, `phantom-${n % hosts}`);
    out.push([keys.endpoint(net.key, ep.id), ep]);
  }
  return out;
}

async function worker(): Promise<void> {
  const root = path.resolve(values.root!);
  const { PeerSync } = require(path.join(root, 'dist/src/driver/peer-sync.js')) as typeof import('../src/driver/peer-sync');
  const { RecordStore: Records } = require(path.join(root, 'dist/src/driver/record-store.js')) as typeof import('../src/driver/record-store');
  const { EtcdStore: Etcd } = require(path.join(root, 'dist/src/store/etcd.js')) as typeof import('../src/store/etcd');
  const { silentLogger: quiet } = require(path.join(root, 'dist/src/log.js')) as typeof import('../src/log');
  const used = Number(values.used);
  let programmed = 0;
  let events = 0;
  const dataplane = {
    applyPeers: async (_id: string, add: unknown[], remove: unknown[]) => {
      programmed += add.length - remove.length;
      return {};
    },
    listPeers: async () => [],
  };
  const t0 = performance.now();
  const store = new Etcd({ endpoints: [values.etcd!], logger: quiet(), timeoutMs: 30_000 });
  const watch = store.watch.bind(store);
  store.watch = (prefix, listener) =>
    watch(prefix, { ...listener, onEvents: (evs) => ((events += evs.length), listener.onEvents(evs)) });
  const sync = new PeerSync(new Records(store), dataplane, { hostName: 'me', vtep: '192.0.2.250', leaseTtlSeconds: 10, reconcileIntervalMs: 3_600_000 }, quiet());
  await sync.start();
  await Promise.all(Array.from({ length: used }, (_, i) => sync.networkActive(network(i).ids[0]!, network(i))));
  const want = Number(values.peers);
  while (programmed < want) {
    await new Promise((r) => setTimeout(r, 5));
    if (process.env.TSO_DEBUG) process.stderr.write(`programmed ${programmed}\n`);
  }
  const restartMs = performance.now() - t0;
  global.gc?.();
  const rssAfterStart = process.memoryUsage().rss;
  process.send!({ restartMs, rssAfterStart, programmed });
  await new Promise<void>((resolve) => process.once('message', () => resolve()));
  const cpu0 = process.cpuUsage();
  const events0 = events;
  process.send!({ churnReady: true });
  await new Promise<void>((resolve) => process.once('message', () => resolve()));
  // Deliveries trail the writes: wait until the watch has been quiet for a while.
  let last = -1;
  while (events !== last) {
    last = events;
    await new Promise((r) => setTimeout(r, 1000));
  }
  const cpu = process.cpuUsage(cpu0);
  global.gc?.();
  process.send!({ churnEvents: events - events0, churnCpuS: (cpu.user + cpu.system) / 1e6, rssAfterChurn: process.memoryUsage().rss });
  await sync.close();
  await store.close();
}

function next<T>(child: ReturnType<typeof fork>): Promise<T> {
  return new Promise((resolve, reject) => {
    child.once('message', (m) => resolve(m as T));
    child.once('exit', (code) => reject(new Error(`worker exited with ${code}`)));
  });
}

async function main(): Promise<void> {
  const etcd = values.etcd ? undefined : await startEtcd();
  const endpointAddr = values.etcd ?? etcd!.endpoints[0]!;
  const store = new EtcdStore({ endpoints: [endpointAddr], logger: silentLogger(), timeoutMs: 30_000 });
  const records = new RecordStore(store);
  try {
    const used = Number(values.used);
    const hosts = Number(values.hosts);
    const hostRecords: Array<[string, unknown]> = Array.from({ length: hosts }, (_, i) => [
      keys.host(`phantom-${i}`),
      { name: `phantom-${i}`, vtep: `198.18.${i >> 8}.${i & 255}`, started: new Date(0).toISOString() },
    ]);
    await writeAll(records, hostRecords);
    await writeAll(records, endpointsOn(0, used, Number(values.peers), 0, hosts));
    await writeAll(records, endpointsOn(used, 100, Number(values.others), 1_000_000, hosts));
    const child = fork(__filename, ['--worker', '--etcd', endpointAddr, '--root', values.root!, '--peers', values.peers!, '--used', values.used!], {
      stdio: ['ignore', 'inherit', 'inherit', 'ipc'],
      // As deployed (src/node-flags.ts), plus gc for a settled RSS figure.
      execArgv: ['--expose-gc', ...NODE_FLAGS],
    });
    const started = await next<{ restartMs: number; rssAfterStart: number; programmed: number }>(child);
    child.send('churn');
    await next(child);
    const churn = endpointsOn(used, 100, Number(values.churn), 2_000_000, hosts);
    const c0 = performance.now();
    const finished = next<{ churnEvents: number; churnCpuS: number; rssAfterChurn: number }>(child);
    await writeAll(records, churn);
    const writeS = (performance.now() - c0) / 1000;
    child.send('done');
    const after = await finished;
    process.stdout.write(
      `${JSON.stringify({
        root: values.root,
        peers: started.programmed,
        otherEndpoints: Number(values.others),
        restartToProgrammedMs: Math.round(started.restartMs),
        rssAfterStartMiB: Math.round(started.rssAfterStart / 2 ** 20),
        churnWritten: churn.length,
        churnWriteSeconds: Number(writeS.toFixed(1)),
        churnEventsReceived: after.churnEvents,
        churnCpuSeconds: Number(Math.max(0, after.churnCpuS).toFixed(2)),
        rssAfterChurnMiB: Math.round(after.rssAfterChurn / 2 ** 20),
      })}\n`,
    );
    await new Promise((r) => child.once('exit', r));
  } finally {
    await store.close();
    await etcd?.stop();
  }
}

if (values.worker) {
  worker().catch((err: unknown) => {
    process.stderr.write(`${err instanceof Error ? err.stack : String(err)}\n`);
    process.exit(1);
  });
} else {
  main().catch((err: unknown) => {
    process.stderr.write(`${err instanceof Error ? err.stack : String(err)}\n`);
    process.exitCode = 1;
  });
}
