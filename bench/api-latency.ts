/**
 * Benchmark 3 — plugin API latency: CreateEndpoint, Join, Leave and DeleteEndpoint over the
 * plugin's Unix socket, against a real `tsoverlay serve` with its embedded store (every write
 * fsynced) doing its kernel work (veth pair, bridge port), requests sent as dockerd sends them.
 * Concurrency 1 and 32 (32 clients, each running the four calls for its own endpoint). The
 * baseline is the same HTTP round trip to a trivial method (`/Plugin.Activate`) on the same
 * socket at the same concurrency.
 *
 * The network is warm (one resident endpoint keeps its overlay namespace up, as any running
 * container does); the cold case — the first container on a network, whose Join creates the
 * namespace and whose Leave removes it — is measured separately at concurrency 1. The command
 * runs in network and mount namespaces of its own (see lib/isolate.ts). The plugin runs with the
 * node flags it is deployed with, or TSO_BENCH_PLUGIN_NODE_FLAGS (see lib/plugin.ts).
 *
 *   node dist/bench/api-latency.js [--iterations 300] [--per-client 10] [--cold 50] [--profile 0|1] [--json FILE]
 */
import { removeTree } from '../test/helpers/proc';
import { cpuProfileTables, newestProfile } from './lib/cpuprofile';
import { runIsolated } from './lib/isolate';
import { runBench } from './lib/main';
import { dockerId, fakeUnderlay, PluginClient, startBenchPlugin } from './lib/plugin';
import { target, type BenchTable } from './lib/report';
import { fmt, fmtRatio, ratio, summarize, type Summary } from './lib/stats';

const OPS = ['CreateEndpoint', 'Join', 'Leave', 'DeleteEndpoint'] as const;
type Op = (typeof OPS)[number];
type Timings = Record<Op | 'CreateEndpoint+Join' | 'all four', number>;

const SUBNET = '10.90.0.0/16';

function addressOf(i: number): string {
  // 10.90.1.0 upwards (10.90.0.1 is the gateway, .2 the resident endpoint).
  return `10.90.${1 + ((i >> 8) & 0xff)}.${i & 0xff}/16`;
}

function ms(t0: bigint): number {
  return Number(process.hrtime.bigint() - t0) / 1e6;
}

if (runIsolated()) {
  runBench(
    {
      name: 'api-latency',
      title: '3. Plugin API latency: CreateEndpoint + Join + Leave + DeleteEndpoint',
      description: 'Latency of the endpoint calls on the plugin socket (real tsoverlay serve, embedded store) at concurrency 1 and 32, against /Plugin.Activate.',
      options: {
        iterations: { full: 300, smoke: 10, help: 'endpoint life cycles at concurrency 1' },
        'per-client': { full: 10, smoke: 1, help: 'endpoint life cycles per client at concurrency 32' },
        cold: { full: 50, smoke: 3, help: 'life cycles of the first endpoint on a network (namespace made and removed)' },
        warmup: { full: 20, smoke: 2, help: 'untimed life cycles first' },
        profile: { full: 0, smoke: 0, help: '1: run the plugin under --cpu-prof and summarise the profile' },
      },
    },
    async (p, ctx) => {
      const vtep = await fakeUnderlay('10.250.0.1/24');
      const plugin = await startBenchPlugin({ name: 'api', vtep, profile: p.profile === 1 });
      const client = new PluginClient(plugin.socketPath, 64);
      const networkId = dockerId();
      await client.call('Plugin.Activate');
      await client.call('NetworkDriver.CreateNetwork', {
        NetworkID: networkId,
        Options: { 'com.docker.network.enable_ipv6': false, 'com.docker.network.generic': {} },
        IPv4Data: [{ AddressSpace: 'LocalDefault', Pool: SUBNET, Gateway: '10.90.0.1/16' }],
        IPv6Data: [],
      });

      let next = 0;
      const lifecycle = async (): Promise<Timings> => {
        const endpointId = dockerId();
        const address = addressOf(next++);
        const t: Partial<Timings> = {};
        let t0 = process.hrtime.bigint();
        await client.call('NetworkDriver.CreateEndpoint', {
          NetworkID: networkId,
          EndpointID: endpointId,
          Interface: { Address: address, AddressIPv6: '', MacAddress: '' },
          Options: { 'com.docker.network.endpoint.exposedports': [], 'com.docker.network.portmap': [] },
        });
        t.CreateEndpoint = ms(t0);
        t0 = process.hrtime.bigint();
        await client.call('NetworkDriver.Join', {
          NetworkID: networkId,
          EndpointID: endpointId,
          SandboxKey: `/var/run/docker/netns/${endpointId.slice(0, 12)}`,
          Options: {},
        });
        t.Join = ms(t0);
        t0 = process.hrtime.bigint();
        await client.call('NetworkDriver.Leave', { NetworkID: networkId, EndpointID: endpointId });
        t.Leave = ms(t0);
        t0 = process.hrtime.bigint();
        await client.call('NetworkDriver.DeleteEndpoint', { NetworkID: networkId, EndpointID: endpointId });
        t.DeleteEndpoint = ms(t0);
        t['CreateEndpoint+Join'] = t.CreateEndpoint + t.Join;
        t['all four'] = t['CreateEndpoint+Join'] + t.Leave + t.DeleteEndpoint;
        return t as Timings;
      };
      const activate = async (): Promise<number> => {
        const t0 = process.hrtime.bigint();
        await client.call('Plugin.Activate');
        return ms(t0);
      };
      /** `clients` concurrent loops of `each` calls of fn. */
      const concurrently = async <T>(clients: number, each: number, fn: () => Promise<T>): Promise<T[]> => {
        const out: T[] = [];
        await Promise.all(
          Array.from({ length: clients }, async () => {
            for (let i = 0; i < each; i++) out.push(await fn());
          }),
        );
        return out;
      };

      // Cold: the first (and only) endpoint of the network, so Join makes the namespace and Leave removes it.
      ctx.log(`cold: ${p.cold} life cycles`);
      const cold = await concurrently(1, Math.round(p.cold), lifecycle);

      // A resident endpoint keeps the namespace up for the rest, as a running container would.
      const resident = dockerId();
      await client.call('NetworkDriver.CreateEndpoint', { NetworkID: networkId, EndpointID: resident, Interface: { Address: '10.90.0.2/16' }, Options: {} });
      await client.call('NetworkDriver.Join', { NetworkID: networkId, EndpointID: resident, SandboxKey: '/var/run/docker/netns/resident', Options: {} });
      await concurrently(1, Math.round(p.warmup), lifecycle);
      await concurrently(1, Math.round(p.warmup), activate);

      const iterations = Math.round(p.iterations);
      const perClient = Math.round(p['per-client']);
      ctx.log(`concurrency 1: ${iterations} life cycles + ${iterations} Plugin.Activate`);
      const c1Base = await concurrently(1, iterations, activate);
      const c1 = await concurrently(1, iterations, lifecycle);
      ctx.log(`concurrency 32: ${32 * perClient} life cycles + as many Plugin.Activate`);
      const c32Base = await concurrently(32, perClient, activate);
      const c32 = await concurrently(32, perClient, lifecycle);
      client.close();

      const rowsFor = (label: string, runs: Timings[], base: number[]): string[][] => {
        const b = summarize(base);
        const row = (name: string, s: Summary): string[] => [label, name, String(s.n), fmt(s.median, 2), fmt(s.p90, 2), fmt(s.p99, 2), fmt(s.max, 2), fmtRatio(ratio(s.median, b.median), 1), fmtRatio(ratio(s.p99, b.p99), 1)];
        return [
          row('/Plugin.Activate (baseline)', b),
          ...([...OPS, 'CreateEndpoint+Join', 'all four'] as const).map((k) => row(k, summarize(runs.map((r) => r[k])))),
        ];
      };
      const c1Join = summarize(c1.map((r) => r['CreateEndpoint+Join']));
      const columns = ['concurrency', 'call', 'n', 'p50 ms', 'p90 ms', 'p99 ms', 'max ms', 'p50 vs baseline', 'p99 vs baseline'];
      const tables: BenchTable[] = [
        {
          title: 'Warm network (a resident endpoint keeps the overlay namespace up)',
          columns,
          rows: [...rowsFor('1', c1, c1Base), ...rowsFor('32', c32, c32Base)],
        },
        {
          title: 'Cold network: the first endpoint (Join creates the namespace, Leave removes it)',
          columns,
          rows: rowsFor('1', cold, c1Base),
        },
      ];
      const notes = [
        `A real \`tsoverlay serve\` (node ${plugin.nodeFlags.length ? plugin.nodeFlags.join(' ') : "with node's default flags"}; embedded store: every write is fsynced before the call returns) in a network namespace of its own with a veth as its underlay; calls are made over its Unix socket with dockerd's headers (\`Accept: application/vnd.docker.plugins.v1.2+json\`, no Content-Type) on kept-alive connections. Latency is measured by the client, from sending the request to the end of the response.`,
        'Join does its kernel work (a veth pair, one end a bridge port in the overlay namespace); Docker would then move the other end into the container — here DeleteEndpoint deletes it where Join left it. At concurrency 32 all clients use the same network, whose calls the plugin serialises (one lock per network), so latency there includes queueing behind the other 31.',
      ];

      await plugin.stop();
      if (plugin.profileDir) {
        const file = newestProfile(plugin.profileDir);
        if (file) {
          tables.push(...cpuProfileTables(file));
          removeTree(plugin.profileDir);
        }
      }
      return {
        tables,
        targets: [target('CreateEndpoint+Join p99 at concurrency 1 (warm)', c1Join.p99, '<', 10, 'ms')],
        notes,
        complete: c1.length === iterations && c32.length === 32 * perClient,
      };
    },
  );
}
