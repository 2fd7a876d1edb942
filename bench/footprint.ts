/**
 * Benchmark 5 — footprint: resident memory and CPU of a real `tsoverlay serve` (etcd store)
 * holding 10,000 remote peers across 10 networks, idle and while remote endpoints join and
 * leave at 100 per second; the baseline is the same process idle before it has any network.
 *
 * The plugin host gets one local endpoint per network through the plugin API (CreateNetwork,
 * CreateEndpoint, Join: the namespaces exist, as with one local container each); the remote
 * endpoints are records of fake hosts written straight into etcd, as other hosts' plugins
 * would write them, so the plugin learns them through its watch and programs them into the
 * kernel. Churn flips `joined` of random remote endpoints (a leave, then later a join again).
 * RSS (VmRSS) and CPU time (utime + stime) are read from /proc every 500 ms. The command runs
 * in network and mount namespaces of its own (etcd and the plugin too; see lib/isolate.ts).
 *
 * The plugin runs with the node flags it is deployed with (src/node-flags.ts) unless told otherwise,
 * and with its default names service (a view of every network's names and endpoints, and a DNS
 * listener per local overlay) unless `--dns 0` runs it with `--dns off`.
 *
 *   node dist/bench/footprint.js [--peers 10000] [--networks 10] [--churn-rate 100] [--churn-seconds 30] [--idle-seconds 20] [--semi-space N] [--node-defaults 1] [--dns 0] [--profile 0|1|2] [--json FILE]
 */
import { Etcd3 } from 'etcd3';
import { parseSubnet, subnetKey } from '../src/driver/subnet';
import { NODE_FLAGS } from '../src/node-flags';
import { startEtcd } from '../test/helpers/etcd';
import { registerCleanup, run, runDir, sleep } from '../test/helpers/proc';
import { cpuProfileTables, newestFile, newestProfile, summarizeHeapProfile } from './lib/cpuprofile';
import { runIsolated } from './lib/isolate';
import { runBench } from './lib/main';
import { cpuSecondsOf, dockerId, fakeUnderlay, memoryOf, PluginClient, startBenchPlugin } from './lib/plugin';
import { target, type BenchTable } from './lib/report';
import { fmt, fmtInt, fmtRatio, median, ratio } from './lib/stats';

const PREFIX = 'tsoverlay/v1/';
const MB = 1024 * 1024 / 1e6; // MiB → MB

interface Phase {
  name: string;
  seconds: number;
  rssMedianMB: number;
  rssMaxMB: number;
  /** Median of RssAnon: private memory (RSS less the mapped files: the node binary, libraries). */
  anonMedianMB: number;
  cpuPct: number;
  /** V8 heap used / total and external memory at the end of the phase (from /metrics), MB. */
  heapUsedMB: number;
  heapTotalMB: number;
  externalMB: number;
}

const HEAP_METRICS = ['nodejs_heap_size_used_bytes', 'nodejs_heap_size_total_bytes', 'nodejs_external_memory_bytes'] as const;

/** Samples RSS every 500 ms and CPU over the whole window, then the V8 heap figures. */
async function sample(client: PluginClient, pid: number, name: string, seconds: number, during?: () => Promise<void>): Promise<Phase> {
  const rss: number[] = [];
  const anon: number[] = [];
  const cpu0 = cpuSecondsOf(pid);
  const t0 = Date.now();
  let stop = false;
  const sampler = (async () => {
    while (!stop) {
      const mem = memoryOf(pid);
      rss.push(mem.rssMiB * MB);
      anon.push(mem.anonMiB * MB);
      await sleep(500);
    }
  })();
  if (during) await during();
  else await sleep(seconds * 1000);
  stop = true;
  await sampler;
  const wall = (Date.now() - t0) / 1000;
  const cpuPct = (100 * (cpuSecondsOf(pid) - cpu0)) / wall;
  const m = await client.metrics(HEAP_METRICS).catch(() => ({}) as Record<string, number>);
  const mb = (k: string) => (m[k] ?? NaN) / 1e6;
  return {
    name,
    seconds: wall,
    rssMedianMB: median(rss),
    rssMaxMB: Math.max(...rss),
    anonMedianMB: median(anon),
    cpuPct,
    heapUsedMB: mb('nodejs_heap_size_used_bytes'),
    heapTotalMB: mb('nodejs_heap_size_total_bytes'),
    externalMB: mb('nodejs_external_memory_bytes'),
  };
}

/** The plugin's node flags: as deployed, with another young-generation size, or node's defaults. */
function pluginNodeArgs(semiSpaceMB: number, nodeDefaults: boolean): readonly string[] {
  if (nodeDefaults) return [];
  if (semiSpaceMB <= 0) return NODE_FLAGS;
  return [...NODE_FLAGS.filter((f) => !f.startsWith('--max-semi-space-size=')), `--max-semi-space-size=${semiSpaceMB}`];
}

interface RemoteEndpoint {
  key: string;
  record: { id: string; networkId: string; ip: string; mac: string; locator: string; host: string; joined: boolean; created: string };
  ns: number;
}

if (runIsolated()) {
  runBench(
    {
      name: 'footprint',
      title: '5. Footprint: plugin memory and CPU with 10,000 remote peers',
      description: 'RSS and CPU of tsoverlay serve with N remote peers over M networks, idle and under churn, against the same process idle with no network.',
      options: {
        peers: { full: 10_000, smoke: 200, help: 'remote peers in total' },
        networks: { full: 10, smoke: 2, help: 'networks the peers are spread over' },
        hosts: { full: 50, smoke: 5, help: 'fake remote hosts' },
        'idle-seconds': { full: 20, smoke: 3, help: 'length of each idle measurement' },
        'churn-rate': { full: 100, smoke: 50, help: 'remote joins/leaves per second' },
        'churn-seconds': { full: 30, smoke: 3, help: 'length of the churn measurement' },
        'semi-space': { full: 0, smoke: 0, help: 'MB: run the plugin with --max-semi-space-size=N instead of the deployed value (0: as deployed, src/node-flags.ts)' },
        'node-defaults': { full: 0, smoke: 0, help: "1: run the plugin with node's default flags instead of the deployed ones (what they buy)" },
        dns: { full: 1, smoke: 1, help: '0: run the plugin with --dns off (no names service), to compare with the default' },
        profile: { full: 0, smoke: 0, help: '1: run the plugin under --cpu-prof, 2: under --heap-prof (sampled allocations), and summarise the profile' },
      },
    },
    async (p, ctx) => {
      const nPeers = Math.round(p.peers);
      const nNets = Math.max(1, Math.round(p.networks));
      const nHosts = Math.max(1, Math.round(p.hosts));
      const vtep = await fakeUnderlay('10.250.0.1/24');
      runDir(); // first, so that the run directory (etcd's data is put there too) is removed at the end
      const etcd = await startEtcd();
      registerCleanup('etcd', () => etcd.stop());
      const endpoint = etcd.endpoints[0]!;
      const nodeArgs = pluginNodeArgs(Math.round(p['semi-space']), p['node-defaults'] === 1);
      const deployed = nodeArgs.join(' ') === NODE_FLAGS.join(' ');
      const plugin = await startBenchPlugin({
        name: 'fp',
        vtep,
        store: `etcd://${endpoint}`,
        profile: p.profile === 1 ? true : p.profile === 2 ? 'heap' : false,
        nodeArgs,
        ...(p.dns === 0 ? { extraArgs: ['--dns', 'off'] } : {}),
      });
      const pid = plugin.process.pid;
      const client = new PluginClient(plugin.socketPath);
      const kv = new Etcd3({ hosts: `http://${endpoint}` });
      registerCleanup('etcd client', () => kv.close());
      const phases: Phase[] = [];

      await sleep(3000);
      ctx.log('baseline: idle, no networks');
      phases.push(await sample(client, pid, 'idle, no networks (baseline)', p['idle-seconds']));

      // Networks, each with one local joined endpoint.
      const nets: { id: string; subnet: string; key: string; netns?: string }[] = [];
      for (let n = 0; n < nNets; n++) {
        const id = dockerId();
        const subnet = `10.${100 + n}.0.0/16`;
        await client.call('NetworkDriver.CreateNetwork', {
          NetworkID: id,
          Options: { 'com.docker.network.generic': {} },
          IPv4Data: [{ AddressSpace: 'tsoverlay-global', Pool: subnet, Gateway: `10.${100 + n}.0.1/16` }],
          IPv6Data: [],
        });
        const ep = dockerId();
        await client.call('NetworkDriver.CreateEndpoint', { NetworkID: id, EndpointID: ep, Interface: { Address: `10.${100 + n}.0.2/16` }, Options: {} });
        await client.call('NetworkDriver.Join', { NetworkID: id, EndpointID: ep, SandboxKey: `/var/run/docker/netns/${ep.slice(0, 12)}`, Options: {} });
        const info = await client.call<{ Value: Record<string, string> }>('NetworkDriver.EndpointOperInfo', { NetworkID: id, EndpointID: ep });
        nets.push({ id, subnet, key: subnetKey(parseSubnet(subnet)), ...(info.Value.netns ? { netns: info.Value.netns } : {}) });
      }
      const countPeers = async (): Promise<number> => {
        let total = 0;
        for (const n of nets) {
          if (!n.netns) continue;
          const out = (await run(['nsenter', `--net=${n.netns}`, '--', 'ip', 'neigh', 'show', 'dev', 'vxlan0', 'nud', 'permanent'])).stdout;
          total += out.split('\n').filter((l) => l.includes('lladdr')).length;
        }
        return total;
      };
      phases.push(await sample(client, pid, `idle, ${nNets} networks, no remote peer`, p['idle-seconds']));

      // Fake remote hosts and their endpoints.
      const hostNames = Array.from({ length: nHosts }, (_, i) => `fake-${String(i + 1).padStart(3, '0')}`);
      const hostVtep = (i: number) => `198.18.${Math.floor(i / 250)}.${1 + (i % 250)}`;
      const remotes: RemoteEndpoint[] = [];
      for (let i = 0; i < nPeers; i++) {
        const ns = i % nNets;
        const k = Math.floor(i / nNets) + 10; // .0.10 upwards: clear of gateway and local endpoint
        const ip = `10.${100 + ns}.${k >> 8}.${k & 0xff}`;
        const mac = `02:42:${ip.split('.').map((x) => Number(x).toString(16).padStart(2, '0')).join(':')}`;
        const h = i % nHosts;
        const id = dockerId();
        remotes.push({
          key: `${PREFIX}endpoints/${nets[ns]!.key}/${id}`,
          record: { id, networkId: dockerId(), ip, mac, locator: hostVtep(h), host: hostNames[h]!, joined: true, created: new Date().toISOString() },
          ns,
        });
      }
      const published = Date.now();
      for (let i = 0; i < nHosts; i++) {
        await kv.put(`${PREFIX}hosts/${hostNames[i]}`).value(JSON.stringify({ name: hostNames[i], vtep: hostVtep(i), started: new Date().toISOString() }));
      }
      for (let i = 0; i < remotes.length; i += 100) {
        const txn = kv.if(`${PREFIX}hosts/${hostNames[0]}`, 'Version', '>', 0);
        const ops = remotes.slice(i, i + 100).map((r) => kv.put(r.key).value(JSON.stringify(r.record)));
        await txn.then(...ops).commit();
      }
      ctx.log(`published ${nPeers} remote endpoints of ${nHosts} hosts in ${Date.now() - published} ms; waiting for the kernel`);
      let programmed = 0;
      const deadline = Date.now() + 300_000;
      while ((programmed = await countPeers()) < nPeers && Date.now() < deadline) await sleep(250);
      const programMs = Date.now() - published;
      if (programmed !== nPeers) throw new Error(`only ${programmed} of ${nPeers} peers programmed after ${programMs} ms`);
      ctx.log(`all ${nPeers} peers in the kernel ${programMs} ms after publishing began`);
      phases.push(await sample(client, pid, `idle, ${fmtInt(nPeers)} remote peers in ${nNets} networks`, p['idle-seconds']));

      // Churn: every tick one remote endpoint leaves, or one that left at least a second ago (and
      // whose leave the store has confirmed) joins again — half and half. A key is never written
      // again while an earlier write of it is in flight, so the store sees them in order.
      const rate = Math.max(1, p['churn-rate']);
      const left = new Map<number, number>(); // remote index → when its leave was confirmed (0: in flight)
      const busy = new Set<number>();
      let changes = 0;
      let lateTicks = 0;
      const churn = async (): Promise<void> => {
        const t0 = Date.now();
        const end = t0 + p['churn-seconds'] * 1000;
        const inflight = new Set<Promise<void>>();
        for (let tick = 0; ; tick++) {
          const due = t0 + (tick * 1000) / rate;
          if (due >= end) break;
          const wait = due - Date.now();
          if (wait > 0) await sleep(wait);
          else if (wait < -100) lateTicks++;
          let i: number | undefined;
          if (tick % 2 === 1) {
            for (const [j, at] of left) {
              if (at > 0 && Date.now() - at >= 1000 && !busy.has(j)) {
                i = j;
                break;
              }
            }
          }
          const joining = i !== undefined;
          if (i === undefined) {
            do i = Math.floor(Math.random() * remotes.length);
            while (left.has(i) || busy.has(i));
          }
          const idx = i;
          const r = remotes[idx]!;
          if (joining) left.delete(idx);
          else left.set(idx, 0);
          busy.add(idx);
          const put: Promise<void> = kv
            .put(r.key)
            .value(JSON.stringify({ ...r.record, joined: joining }))
            .then(() => {
              busy.delete(idx);
              if (!joining && left.has(idx)) left.set(idx, Date.now());
            });
          inflight.add(put);
          void put.finally(() => inflight.delete(put));
          changes++;
        }
        await Promise.all(inflight);
      };
      ctx.log(`churn: ${rate} remote joins/leaves per second for ${p['churn-seconds']} s`);
      phases.push(await sample(client, pid, `churn, ${rate} remote joins/leaves per second`, p['churn-seconds'], churn));
      // What the store says now (the plugin's view must converge to exactly this).
      const stored = await kv.getAll().prefix(`${PREFIX}endpoints/`).strings();
      const want = Object.values(stored).filter((v) => (JSON.parse(v) as { joined?: boolean; host?: string }).joined && (JSON.parse(v) as { host?: string }).host?.startsWith('fake-')).length;
      if (want !== nPeers - left.size) ctx.log(`note: store holds ${want} joined remote endpoints, bookkeeping says ${nPeers - left.size}`);
      const settleStart = Date.now();
      let have = 0;
      while ((have = await countPeers()) !== want && Date.now() - settleStart < 60_000) await sleep(250);
      const settled = have === want;
      const settleMs = Date.now() - settleStart;
      ctx.log(`after churn: ${have} peers in the kernel, ${want} expected (${settleMs} ms after the last change)`);
      phases.push(await sample(client, pid, 'idle again after churn', p['idle-seconds']));
      const peakMB = memoryOf(pid).hwmMiB * MB;

      client.close();
      await plugin.stop();
      const base = phases[0]!;
      const tables: BenchTable[] = [
        {
          title: `tsoverlay serve (etcd store, ${nodeArgs.length ? `node ${nodeArgs.join(' ')}` : "node's default flags"}): resident memory and CPU, ${fmtInt(nPeers)} remote peers over ${nNets} networks from ${nHosts} fake hosts`,
          columns: ['phase', 'seconds', 'RSS median MB', 'RSS max MB', 'RSS vs baseline', 'private (RssAnon) median MB', 'CPU % of one core', 'V8 heap used / total MB (end)', 'external MB (end)'],
          rows: phases.map((ph) => [
            ph.name,
            fmt(ph.seconds, 0),
            fmt(ph.rssMedianMB, 1),
            fmt(ph.rssMaxMB, 1),
            fmtRatio(ratio(ph.rssMedianMB, base.rssMedianMB)),
            fmt(ph.anonMedianMB, 1),
            fmt(ph.cpuPct, 1),
            `${fmt(ph.heapUsedMB, 1)} / ${fmt(ph.heapTotalMB, 1)}`,
            fmt(ph.externalMB, 1),
          ]),
        },
      ];
      const notes = [
        `Peak RSS (VmHWM) over the whole run: ${fmt(peakMB, 1)} MB. MB = 10⁶ bytes.`,
        `Programming: ${fmtInt(nPeers)} remote endpoint records written to etcd in transactions of 100; all ${fmtInt(nPeers)} neighbour entries were in the kernel ${fmtInt(programMs)} ms after the first write.`,
        `Churn: ${fmtInt(changes)} changes of \`joined\` (puts to etcd, each one watch event) at ${rate}/s${lateTicks ? `, ${lateTicks} issued > 100 ms late` : ''}; ${settled ? `the kernel matched the store (${fmtInt(want)} peers) ${fmtInt(settleMs)} ms after the last change` : `**the kernel did not match the store within 60 s (${have} vs ${want})**`}.`,
        'The idle phases include the periodic full kernel-vs-store comparison (every 10 s by default), which dumps and compares every network\'s tables.',
      ];
      const heapFile = plugin.profileDir ? newestFile(plugin.profileDir, '.heapprofile') : undefined;
      if (heapFile) {
        const h = summarizeHeapProfile(heapFile, 20);
        tables.push({
          title: `Heap profile of the plugin (sampled allocations over the whole run, garbage included: ${fmt(h.totalMB, 0)} MB): top allocation sites`,
          columns: ['frame', 'allocated MB (self)', 'allocated MB (total)'],
          rows: h.top.map((f) => [f.frame, fmt(f.selfMB, 1), fmt(f.totalMB, 1)]),
        });
      }
      if (plugin.profileDir) {
        const file = newestProfile(plugin.profileDir);
        if (file) {
          tables.push(...cpuProfileTables(file));
        }
      }
      const maxRss = Math.max(...phases.map((ph) => ph.rssMaxMB));
      return {
        ...(deployed ? {} : { title: `5b. Footprint as 5, the plugin run with ${nodeArgs.length ? `node ${nodeArgs.join(' ')}` : "node's default flags"} instead of the deployed ${NODE_FLAGS.join(' ')}` }),
        ...(deployed && p.dns === 0 ? { title: '5c. Footprint as 5, the plugin run with --dns off (no names service)' } : {}),
        tables,
        targets: [target(`RSS with ${fmtInt(nPeers)} peers, idle and under churn (max sample)`, maxRss, '<', 100, 'MB')],
        notes,
        complete: settled,
      };
    },
  );
}
