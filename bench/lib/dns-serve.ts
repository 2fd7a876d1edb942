/**
 * The names DNS server as the daemon runs it (NamesView over a store, DnsServer), in a process
 * of its own so that the load generator does not share its thread: `names` containers on one
 * network are written to an embedded store in `dir`, then it serves 127.0.0.1:`port` (counting
 * into the daemon's DNS metrics, as the daemon does) and prints `ready` on stdout.
 *
 *   node dist/bench/lib/dns-serve.js DIR PORT NAMES
 */
import { Registry } from 'prom-client';
import { DnsMetrics } from '../../src/dns/metrics';
import { DnsServer } from '../../src/dns/server';
import { Forwarder } from '../../src/dns/upstream';
import { EndpointFeed } from '../../src/driver/endpoint-feed';
import { PeerView } from '../../src/driver/peer-view';
import { keys } from '../../src/driver/records';
import { silentLogger } from '../../src/log';
import { namesKeys } from '../../src/names/records';
import { NamesView } from '../../src/names/view';
import { openLocalStore } from '../../src/store/local';

export const BENCH_NETWORK_KEY = '10.128.0.0-10';

export function benchName(i: number): string {
  return `c${i}`;
}

export function benchIp(i: number): string {
  const n = i + 2;
  return `10.${128 + ((n >> 16) & 0x3f)}.${(n >> 8) & 0xff}.${n & 0xff}`;
}

export async function main(): Promise<void> {
  const [dir, portText, namesText] = process.argv.slice(2);
  if (!dir || !portText || !namesText) throw new Error('usage: dns-serve DIR PORT NAMES');
  const logger = silentLogger();
  const store = await openLocalStore({ dir, logger });
  const created = new Date().toISOString();
  await store.put(keys.host('bench'), JSON.stringify({ name: 'bench', vtep: '192.0.2.1', started: created }));
  await store.put(
    keys.network(BENCH_NETWORK_KEY),
    JSON.stringify({ key: BENCH_NETWORK_KEY, ids: ['bench'], vni: 256, subnet: '10.128.0.0/10', gateway: '10.128.0.1', mtu: 1450, mode: 'static', options: {}, created }),
  );
  const n = Number(namesText);
  // Written in parallel batches: the embedded store commits concurrent writes together.
  for (let start = 0; start < n; start += 500) {
    const batch: Promise<unknown>[] = [];
    for (let i = start; i < Math.min(n, start + 500); i++) {
      const id = `ep${i}`;
      batch.push(
        store.put(keys.endpoint(BENCH_NETWORK_KEY, id), JSON.stringify({ id, networkId: 'bench', ip: benchIp(i), mac: '02:42:00:00:00:00', locator: '192.0.2.1', host: 'bench', joined: true, created })),
        store.put(
          namesKeys.endpoint(BENCH_NETWORK_KEY, id),
          JSON.stringify({ endpointId: id, networkId: 'bench', networkName: 'bench', host: 'bench', containerId: `c${i}`, container: benchName(i), names: [benchName(i)], updated: created }),
        ),
      );
    }
    await Promise.all(batch);
  }
  // Every name is on host `bench`, this view's own host: live whatever the store says.
  const peers = new PeerView('bench', logger);
  const view = new NamesView(store, logger, peers, new EndpointFeed(store, peers, 10_000));
  await view.start();
  // A host serves the names of the networks it has a local overlay on: this one.
  await view.follow(BENCH_NETWORK_KEY);
  const forwarder = new Forwarder({ upstreams: () => [] });
  await DnsServer.start({ address: '127.0.0.1', port: Number(portText) }, { view: view.zone(BENCH_NETWORK_KEY), forwarder, logger, observer: new DnsMetrics(new Registry()) });
  process.stdout.write(`ready ${view.served(BENCH_NETWORK_KEY).length}\n`);
}

if (require.main === module) {
  // A clean exit (not death by signal) so that `--cpu-prof` writes its profile.
  for (const sig of ['SIGINT', 'SIGTERM'] as const) process.on(sig, () => process.exit(0));
  main().catch((err: unknown) => {
    process.stderr.write(`dns-serve: ${err instanceof Error ? err.message : String(err)}\n`);
    process.exit(1);
  });
}
