/**
 * Benchmark — scale: real daemons plus phantom hosts on one store cluster (issue 19).
 *
 * Real part: `--real` real `tsoverlay serve` processes, each in a network namespace of its own
 * on one underlay bridge (test/helpers/hosts.ts), driven over its Unix socket with the calls and
 * headers dockerd sends (IpamDriver.RequestPool/RequestAddress, NetworkDriver.CreateNetwork/
 * CreateEndpoint/Join): every Join makes real kernel objects (overlay namespace, bridge, vxlan0,
 * a veth pair). Every real host joins one endpoint on each of the `--shared` networks, so it holds
 * an overlay namespace for each and programs their peers.
 *
 * Phantom part: a load generator in this process that registers hosts (`hosts/<name>` under a
 * lease of its own each), writes joined endpoint records in the daemons' own format and keys
 * (src/driver/records.ts through RecordStore, so a format change follows here), holds the
 * watches a daemon holds (`--watchers` of the phantom hosts: the `endpoints/` and `hosts/`
 * prefixes, as the current daemon watches them), and churns.
 *
 * For every size (10, 100, 1,000 hosts up to `--hosts`, `--per-host` endpoints per host spread
 * over `--networks` networks) it measures: Join on one real host until the neighbour entry is in
 * the overlay namespace of every other real host (`ip monitor neigh` in each, read as it happens);
 * the watch events each daemon received, split by whether they concerned a network it uses (the
 * daemon's `tsoverlay_store_watch_events_total`), its CPU seconds and RSS (/proc); the CPU cost
 * of events on networks a daemon does not use (a churn of `--churn` endpoint writes and deletes
 * on networks no real host uses); the store processes' CPU, RSS and bytes sent. At the largest
 * size: a burst of `--burst` new endpoints on the shared networks until every real host's kernel
 * tables and every phantom watcher have them; a daemon SIGKILLed and started again until its
 * kernel tables match the store; and IPAM on one subnet from 3 real hosts with `--inflight`
 * requests in flight each (duplicates counted).
 *
 * The whole run happens once on a 3-member etcd cluster (three etcd processes on this machine)
 * and, with `--consul 1`, once more on a single Consul server. The command runs in a network and
 * mount namespace of its own (lib/isolate.ts): every namespace, link and mount it makes vanishes
 * with it.
 *
 *   node dist/bench/scale.js [--real 10] [--hosts 1000] [--per-host 10] [--networks 100] [--burst 10000] [--consul 1] [--json FILE]
 */
import * as fs from 'node:fs';
import * as path from 'node:path';
import * as os from 'node:os';
import { spawn, type ChildProcess } from 'node:child_process';
import * as http from 'node:http';
import { macFromIp } from '../src/driver/mac';
import { nowIso, RecordStore } from '../src/driver/record-store';
import { keys, type EndpointRecord, type HostRecord } from '../src/driver/records';
import { parseSubnet, subnetKey } from '../src/driver/subnet';
import { silentLogger } from '../src/log';
import { NODE_FLAGS } from '../src/node-flags';
import { openStore } from '../src/store/open';
import type { Lease, Store, Watch } from '../src/store/store';
import { startConsul, consulSkipReason } from '../test/helpers/consul';
import { startEtcdCluster } from '../test/helpers/etcd-cluster';
import { createUnderlay, type Underlay, type UnderlayHost } from '../test/helpers/hosts';
import { PLUGIN_MAIN } from '../test/helpers/plugin';
import { registerCleanup, run, runDir, sleep, spawnTracked, type ManagedProcess } from '../test/helpers/proc';
import { runIsolated } from './lib/isolate';
import { runBench, type BenchContext } from './lib/main';
import { cpuSecondsOf, dockerId, memoryOf, PluginClient } from './lib/plugin';
import { target, type BenchTable, type TargetResult } from './lib/report';
import { fmt, fmtInt, summarize } from './lib/stats';

const GLOBAL_SPACE = 'tsoverlay-global';
const GATEWAY_OPTION = { RequestAddressType: 'com.docker.network.gateway' };
const IPAM_SUBNET = '10.99.0.0/16';
const LEASE_TTL_S = 30;

/** Network n: 10.(100+n).0.0/16; phantom endpoints take addresses from 10.(100+n).128.0 up, clear of what IPAM hands out from the bottom. */
const subnetOf = (n: number) => `10.${100 + n}.0.0/16`;
const phantomIp = (n: number, i: number) => `10.${100 + n}.${128 + (i >> 8)}.${i & 0xff}`;
const phantomVtep = (i: number) => `10.252.${(i >> 8) & 0xff}.${i & 0xff}`;

interface Params {
  real: number;
  hosts: number;
  perHost: number;
  networks: number;
  shared: number;
  joins: number;
  churn: number;
  burst: number;
  watchers: number;
  scoped: boolean;
  inflight: number;
  ipam: number;
  rssSettleS: number;
}

// ---------------------------------------------------------------------------
// small helpers

async function pool<T>(items: readonly T[], concurrency: number, fn: (item: T, index: number) => Promise<void>): Promise<void> {
  let next = 0;
  await Promise.all(
    Array.from({ length: Math.min(concurrency, items.length) }, async () => {
      for (;;) {
        const i = next++;
        if (i >= items.length) return;
        await fn(items[i]!, i);
      }
    }),
  );
}

async function until(what: string, timeoutMs: number, check: () => Promise<boolean> | boolean, everyMs = 100): Promise<number> {
  const t0 = performance.now();
  for (;;) {
    if (await check()) return performance.now() - t0;
    if (performance.now() - t0 > timeoutMs) throw new Error(`${what}: not reached within ${timeoutMs / 1000} s`);
    await sleep(everyMs);
  }
}

/** Samples of one Prometheus family by label set, from the exposition text. */
function samples(text: string, name: string): { labels: Record<string, string>; value: number }[] {
  const out: { labels: Record<string, string>; value: number }[] = [];
  const re = new RegExp(`^${name}(?:\\{([^}]*)\\})? ([0-9.eE+-]+|NaN)$`, 'gm');
  for (const m of text.matchAll(re)) {
    const labels: Record<string, string> = {};
    for (const l of (m[1] ?? '').matchAll(/(\w+)="([^"]*)"/g)) labels[l[1]!] = l[2]!;
    out.push({ labels, value: Number(m[2]) });
  }
  return out;
}

function httpGet(url: string): Promise<string> {
  return new Promise((resolve, reject) => {
    const req = http.get(url, { timeout: 5000 }, (res) => {
      let body = '';
      res.setEncoding('utf8');
      res.on('data', (c: string) => (body += c));
      res.on('end', () => resolve(body));
      res.on('error', reject);
    });
    req.on('timeout', () => req.destroy(new Error(`GET ${url}: timeout`)));
    req.on('error', reject);
  });
}

/** Bytes a process passed to write()/send() so far (sockets and files alike). */
function wcharOf(pid: number): number {
  const io = fs.readFileSync(`/proc/${pid}/io`, 'utf8');
  return Number(/^wchar:\s+(\d+)/m.exec(io)?.[1] ?? NaN);
}

const mib = (bytes: number) => bytes / 1024 / 1024;

// ---------------------------------------------------------------------------
// the store under test

interface StoreUnderTest {
  label: string;
  /** URL the daemons (in the host namespaces) and the load generator use. */
  url: string;
  pids(): number[];
  /** Bytes sent to clients, when the store says (etcd's gRPC counter); NaN otherwise. */
  clientBytesSent(): Promise<number>;
  stop(): Promise<void>;
}

async function etcdStore(gateway: string): Promise<StoreUnderTest> {
  const cluster = await startEtcdCluster({ members: 3, alsoListenOn: gateway });
  registerCleanup('scale bench etcd cluster', () => cluster.stop());
  return {
    label: 'etcd, 3-member cluster',
    url: `etcd://${cluster.reachableEndpoints.join(',')}`,
    pids: () => cluster.members.map((m) => m.pid()).filter((p): p is number => p !== undefined),
    async clientBytesSent() {
      let total = 0;
      for (const m of cluster.members) {
        const text = await httpGet(`http://${m.endpoint}/metrics`);
        for (const s of samples(text, 'etcd_network_client_grpc_sent_bytes_total')) total += s.value;
      }
      return total;
    },
    stop: () => cluster.stop(),
  };
}

async function consulStore(gateway: string): Promise<StoreUnderTest> {
  // The phantom hosts stand for many machines but connect from one address: Consul's
  // per-client connection limit (200 by default) would count them as one client.
  const server = await startConsul({ clientAddress: gateway, extraConfig: { limits: { http_max_conns_per_client: 10_000 } } });
  registerCleanup('scale bench consul', () => server.stop());
  return {
    label: 'Consul, 1 server',
    url: `consul://${server.address}`,
    pids: () => [server.pid()].filter((p): p is number => p !== undefined),
    clientBytesSent: async () => NaN,
    stop: () => server.stop(),
  };
}

// ---------------------------------------------------------------------------
// real daemons

interface Daemon {
  name: string;
  host: UnderlayHost;
  dir: string;
  netnsDir: string;
  argv: string[];
  proc: ManagedProcess;
  client: PluginClient;
  /** Docker network id of each network this host created, by network index. */
  networkIds: Map<number, string>;
  /** Pool id per network index (RequestPool). */
  poolIds: Map<number, string>;
}

function startDaemonProcess(d: Pick<Daemon, 'name' | 'argv' | 'dir'>): ManagedProcess {
  return spawnTracked(d.argv, { name: `tsoverlay-${d.name}`, logFile: path.join(d.dir, 'plugin.log'), keepChars: 32 * 1024, stopTimeoutMs: 15_000 });
}

/**
 * The restarted daemon's command: with TSO_BENCH_RESTART_FLAGS (e.g. `--cpu-prof
 * --cpu-prof-dir=/tmp/prof`) those node flags are added, to profile the restart; the profile is
 * written when the daemon is stopped at the end of the run.
 */
function restartedArgv(d: Daemon): Pick<Daemon, 'name' | 'argv' | 'dir'> {
  const extra = (process.env.TSO_BENCH_RESTART_FLAGS ?? '').split(' ').filter((f) => f !== '');
  const at = d.argv.indexOf(process.execPath) + 1;
  return { ...d, argv: [...d.argv.slice(0, at), ...extra, ...d.argv.slice(at)] };
}

async function waitServing(d: Daemon): Promise<void> {
  const socket = path.join(d.dir, 'tsoverlay.sock');
  await until(`${d.name} socket`, 60_000, () => fs.existsSync(socket) || !d.proc.running());
  if (!d.proc.running()) throw new Error(`${d.name} exited at start:\n${d.proc.output()}`);
  // Logging at warn (info per request would weigh on the measurement): the first answer says it serves.
  await until(`${d.name} answering`, 60_000, async () => {
    if (!d.proc.running()) throw new Error(`${d.name} exited at start:\n${d.proc.output()}`);
    return d.client.call('Plugin.Activate').then(() => true, () => false);
  });
}

/** CPU seconds spent during the burst, by who spent them (the machine's budget is wall time × CPUs). */
interface BurstCpu {
  daemons: number;
  store: number;
  generator: number;
  wallS: number;
}

function burstCpu(daemons: Daemon[], sut: { pids(): number[] }): Omit<BurstCpu, 'wallS'> {
  const u = process.cpuUsage();
  return {
    daemons: daemons.reduce((a, d) => a + cpuSecondsOf(d.proc.pid), 0),
    store: sut.pids().reduce((a, pid) => a + cpuSecondsOf(pid), 0),
    generator: (u.user + u.system) / 1e6,
  };
}

/**
 * TSO_BENCH_FIRST_FLAGS (e.g. `--cpu-prof --cpu-prof-dir=/tmp/prof`): node flags for the first
 * real daemon only, to profile a daemon that lives through the whole run (the burst included).
 */
function firstDaemonFlags(name: string): string[] {
  return name === 'real1' ? (process.env.TSO_BENCH_FIRST_FLAGS ?? '').split(' ').filter((f) => f !== '') : [];
}

async function startDaemon(host: UnderlayHost, name: string, store: string): Promise<Daemon> {
  const dir = path.join(runDir(), 'scale', name);
  const runTmp = path.join(dir, 'run');
  fs.mkdirSync(runTmp, { recursive: true });
  // As in production (/run/tsoverlay): namespace files and the request journal on a tmpfs.
  await run(['mount', '-t', 'tmpfs', '-o', 'mode=0755', 'none', runTmp]);
  const netnsDir = path.join(runTmp, 'netns');
  const argv = [
    'nsenter', `--net=${host.netnsPath}`, '--',
    process.execPath, ...NODE_FLAGS, ...firstDaemonFlags(name), PLUGIN_MAIN, 'serve',
    '--socket', path.join(dir, 'tsoverlay.sock'),
    '--store', store,
    '--netns-dir', netnsDir,
    '--host-name', name,
    '--state-dir', path.join(dir, 'id'),
    '--vtep', host.address,
    '--log-level', 'warn',
  ];
  const d: Daemon = { name, host, dir, netnsDir, argv, proc: startDaemonProcess({ name, argv, dir }), client: new PluginClient(path.join(dir, 'tsoverlay.sock'), 512), networkIds: new Map(), poolIds: new Map() };
  await waitServing(d);
  await d.client.call('Plugin.Activate');
  return d;
}

/** Network creation as dockerd does it for `docker network create -d tsoverlay --ipam-driver tsoverlay --subnet …`. */
async function createNetwork(d: Daemon, n: number, subnet: string): Promise<void> {
  const { PoolID } = await d.client.call<{ PoolID: string }>('IpamDriver.RequestPool', { AddressSpace: GLOBAL_SPACE, Pool: subnet, SubPool: '', Options: {}, V6: false });
  const { Address: gateway } = await d.client.call<{ Address: string }>('IpamDriver.RequestAddress', { PoolID, Address: '', Options: GATEWAY_OPTION });
  const networkId = dockerId();
  await d.client.call('NetworkDriver.CreateNetwork', {
    NetworkID: networkId,
    Options: { 'com.docker.network.enable_ipv6': false, 'com.docker.network.generic': {} },
    IPv4Data: [{ AddressSpace: GLOBAL_SPACE, Pool: subnet, Gateway: gateway }],
    IPv6Data: [],
  });
  d.networkIds.set(n, networkId);
  d.poolIds.set(n, PoolID);
}

/** `docker run --network <n>` on a daemon: an address from IPAM, CreateEndpoint, Join. Returns the IP and the Join call's start and end. */
async function runEndpoint(d: Daemon, n: number): Promise<{ ip: string; joinStart: number; joinEnd: number }> {
  const PoolID = d.poolIds.get(n)!;
  const NetworkID = d.networkIds.get(n)!;
  const { Address } = await d.client.call<{ Address: string }>('IpamDriver.RequestAddress', { PoolID, Address: '', Options: {} });
  const EndpointID = dockerId();
  await d.client.call('NetworkDriver.CreateEndpoint', { NetworkID, EndpointID, Interface: { Address, AddressIPv6: '', MacAddress: '' }, Options: {} });
  const joinStart = performance.now();
  await d.client.call('NetworkDriver.Join', { NetworkID, EndpointID, SandboxKey: `/var/run/docker/netns/${EndpointID.slice(0, 12)}`, Options: {} });
  return { ip: Address.split('/')[0]!, joinStart, joinEnd: performance.now() };
}

/** The daemon's overlay namespace file of a network (`<epoch>-<first 10 characters of the id>`). */
function overlayNetns(d: Daemon, networkId: string): string {
  const prefix = networkId.slice(0, 10);
  const file = fs.readdirSync(d.netnsDir).find((f) => f.endsWith(`-${prefix}`));
  if (!file) throw new Error(`${d.name}: no overlay namespace for ${prefix}`);
  return path.join(d.netnsDir, file);
}

async function kernelNeighbours(d: Daemon, networkId: string): Promise<number> {
  const r = await run(['nsenter', `--net=${overlayNetns(d, networkId)}`, '--', 'ip', '-4', 'neigh', 'show', 'dev', 'vxlan0', 'nud', 'permanent'], { timeoutMs: 60_000 });
  return r.stdout.split('\n').filter((l) => l.trim()).length;
}

interface DaemonSample {
  cpu: number;
  rssMiB: number;
  used: number;
  unused: number;
  hostEvents: number;
  peers: Map<string, number>;
}

async function sampleDaemon(d: Daemon): Promise<DaemonSample> {
  const text = await d.client.get('/metrics');
  const ev = samples(text, 'tsoverlay_store_watch_events_total');
  const pick = (watch: string, network: string) => ev.find((s) => s.labels.watch === watch && s.labels.network === network)?.value ?? NaN;
  const peers = new Map<string, number>();
  for (const s of samples(text, 'tsoverlay_peers_programmed')) peers.set(s.labels.network ?? '', s.value);
  return { cpu: cpuSecondsOf(d.proc.pid), rssMiB: memoryOf(d.proc.pid).rssMiB, used: pick('endpoints', 'used'), unused: pick('endpoints', 'unused'), hostEvents: pick('hosts', 'used'), peers };
}

/** `ip monitor neigh` in an overlay namespace: when each address first showed up. */
class NeighbourMonitor {
  readonly seen = new Map<string, number>();
  private readonly child: ChildProcess;
  private buf = '';

  constructor(netns: string) {
    this.child = spawn('nsenter', [`--net=${netns}`, '--', 'ip', '-o', '-4', 'monitor', 'neigh'], { stdio: ['ignore', 'pipe', 'ignore'] });
    this.child.stdout!.setEncoding('utf8');
    this.child.stdout!.on('data', (chunk: string) => {
      const now = performance.now();
      this.buf += chunk;
      const lines = this.buf.split('\n');
      this.buf = lines.pop() ?? '';
      for (const line of lines) {
        if (line.startsWith('Deleted') || !line.includes('vxlan0')) continue;
        const ip = line.split(' ')[0]!;
        if (!this.seen.has(ip)) this.seen.set(ip, now);
      }
    });
    const pid = this.child.pid;
    registerCleanup('neighbour monitor', () => this.stop());
    if (pid === undefined) throw new Error('cannot start ip monitor');
  }

  stop(): void {
    if (this.child.exitCode === null && this.child.pid !== undefined) this.child.kill('SIGTERM');
  }
}

// ---------------------------------------------------------------------------
// phantom hosts

interface PhantomHost {
  name: string;
  vtep: string;
  lease: Lease;
  /** A Docker network id per network it has endpoints on (what its engine would have). */
  networkIds: Map<number, string>;
}

class Phantoms {
  readonly hosts: PhantomHost[] = [];
  /** Joined endpoints in the store by network index, by host name. */
  readonly counts = new Map<number, Map<string, number>>();
  private readonly nextIp = new Map<number, number>();
  private readonly watchStores: Store[] = [];
  private readonly watches: Watch[] = [];
  /** Per watcher: endpoint puts seen for the current burst tag. */
  readonly burstSeen: number[] = [];
  burstTag = '\u0000';
  endpointEvents = 0;

  /** Per watching phantom host: the networks whose endpoints it follows (scoped watches). */
  private readonly watchedNets: Set<number>[] = [];

  constructor(
    readonly records: RecordStore,
    private readonly url: string,
    /** Watch like the daemon since issue 19: `endpoints/<network>/` per network with local endpoints; else the whole `endpoints/` prefix as before. */
    readonly scoped: boolean,
  ) {}

  count(n: number, host: string, delta: number): void {
    const m = this.counts.get(n) ?? new Map<string, number>();
    m.set(host, (m.get(host) ?? 0) + delta);
    this.counts.set(n, m);
  }

  totalEndpoints(): number {
    let total = 0;
    for (const m of this.counts.values()) for (const c of m.values()) total += c;
    return total;
  }

  /** Joined endpoints of network n not on `self`. */
  expectedPeers(n: number, self: string): number {
    let total = 0;
    for (const [h, c] of this.counts.get(n) ?? []) if (h !== self) total += c;
    return total;
  }

  async addHosts(total: number): Promise<void> {
    const start = this.hosts.length;
    const fresh = Array.from({ length: Math.max(0, total - start) }, (_, k) => start + k);
    await pool(fresh, 32, async (i) => {
      const name = `phantom${i}`;
      const lease = await this.records.store.grantLease(LEASE_TTL_S);
      const record: HostRecord = { name, vtep: phantomVtep(i), instance: `phantom-${i}`, started: nowIso() };
      await this.records.put(keys.host(name), record, lease);
      this.hosts[i] = { name, vtep: record.vtep, lease, networkIds: new Map() };
    });
  }

  /** A joined endpoint of phantom host `h` on network n, as a daemon writes it after Join. */
  async addEndpoint(h: PhantomHost, n: number, idPrefix = 'e'): Promise<string> {
    const i = this.nextIp.get(n) ?? 0;
    this.nextIp.set(n, i + 1);
    const ip = phantomIp(n, i);
    let networkId = h.networkIds.get(n);
    if (!networkId) {
      networkId = dockerId();
      h.networkIds.set(n, networkId);
    }
    const w = this.hosts.indexOf(h);
    if (this.scoped && w >= 0 && w < this.burstSeen.length) this.follow(w, n);
    const id = `${idPrefix}${dockerId().slice(idPrefix.length)}`;
    const record: EndpointRecord = { id, networkId, ip, mac: macFromIp(ip), locator: h.vtep, host: h.name, joined: true, created: nowIso() };
    await this.records.put(keys.endpoint(subnetKey(parseSubnet(subnetOf(n))), id), record);
    this.count(n, h.name, 1);
    return id;
  }

  async deleteEndpoint(h: PhantomHost, n: number, id: string): Promise<void> {
    await this.records.delete(keys.endpoint(subnetKey(parseSubnet(subnetOf(n))), id));
    this.count(n, h.name, -1);
  }

  private endpointWatch(w: number, prefix: string): Watch {
    return this.watchStores[Math.floor(w / 10)]!.watch(prefix, {
      onReset: () => undefined,
      onEvents: (events) => {
        this.endpointEvents += events.length;
        for (const ev of events) if (ev.type === 'put' && ev.key.includes(`/${this.burstTag}`)) this.burstSeen[w]!++;
      },
    });
  }

  private follow(w: number, n: number): void {
    const nets = this.watchedNets[w]!;
    if (nets.has(n)) return;
    nets.add(n);
    this.watches.push(this.endpointWatch(w, keys.endpoints(subnetKey(parseSubnet(subnetOf(n))))));
  }

  /** Phantom hosts holding a daemon's watches; one store connection per 10 of them. */
  async addWatchers(total: number): Promise<void> {
    while (this.burstSeen.length < total) {
      const w = this.burstSeen.length;
      if (w % 10 === 0) this.watchStores.push(await openStore(this.url, { logger: silentLogger() }));
      const store = this.watchStores[this.watchStores.length - 1]!;
      this.burstSeen.push(0);
      this.watchedNets.push(new Set());
      this.watches.push(store.watch(keys.hosts(), { onReset: () => undefined, onEvents: () => undefined }));
      if (!this.scoped) this.watches.push(this.endpointWatch(w, keys.allEndpoints()));
      else for (const n of this.hosts[w]?.networkIds.keys() ?? []) this.follow(w, n);
    }
  }

  async close(): Promise<void> {
    await Promise.all(this.watches.map((w) => w.close().catch(() => undefined)));
    for (const s of this.watchStores) await s.close().catch(() => undefined);
    await pool(this.hosts, 32, async (h) => {
      await h.lease.revoke().catch(() => undefined);
    });
  }
}

// ---------------------------------------------------------------------------
// one run on one store

interface SizeRow {
  hosts: number;
  endpoints: number;
  joinAll: number[];
  joinAfterReturn: number[];
  daemonEventsUsed: number;
  daemonEventsUnused: number;
  daemonHostEvents: number;
  daemonCpu: number;
  daemonRss: number[];
  unusedChurnEvents: number;
  unusedChurnCpuUs: number;
  unusedChurnCpuMs: number;
  storeCpu: number;
  storeRss: number;
  storeBytes: number;
  storeWchar: number;
}

interface StoreResult {
  label: string;
  rows: SizeRow[];
  burst?: { n: number; seconds: number; writeSeconds: number; kernelSeconds: number; watchersSeconds: number; cpu: BurstCpu };
  restart?: { peers: number; healthySeconds: number; inStepSeconds: number; rssMiB: number; rssSettledMiB?: number; othersRssMiB?: number };
  ipam?: { n: number; perSecond: number; p50: number; p99: number; max: number; duplicates: number; failures: number };
  problems: string[];
  /** Observations that are results, not failures of the benchmark. */
  notes: string[];
}

async function runOnStore(which: 'etcd' | 'consul', p: Params, ctx: BenchContext): Promise<StoreResult> {
  const underlay: Underlay = await createUnderlay({ hosts: p.real });
  const sut = which === 'etcd' ? await etcdStore(underlay.gateway) : await consulStore(underlay.gateway);
  const result: StoreResult = { label: sut.label, rows: [], problems: [], notes: [] };
  ctx.log(`${sut.label} at ${sut.url}; starting ${p.real} daemons`);
  const gen = await openStore(sut.url, { logger: silentLogger() });
  const phantoms = new Phantoms(new RecordStore(gen), sut.url, p.scoped);
  const daemons: Daemon[] = [];
  const monitors: NeighbourMonitor[] = [];
  try {
    for (const h of underlay.hosts) daemons.push(await startDaemon(h, `real${h.index}`, sut.url));
    const first = daemons[0]!;
    ctx.log(`creating ${p.networks} networks (every real host on the first ${p.shared})`);
    for (let n = 0; n < p.networks; n++) {
      for (const d of n < p.shared ? daemons : [first]) await createNetwork(d, n, subnetOf(n));
    }
    // One running container per real host on each shared network: the overlays exist, peers flow.
    for (const d of daemons) {
      for (let n = 0; n < p.shared; n++) {
        await runEndpoint(d, n);
        phantoms.count(n, d.name, 1);
      }
    }
    for (const d of daemons) monitors.push(new NeighbourMonitor(overlayNetns(d, d.networkIds.get(0)!)));

    const converged = async (): Promise<boolean> => {
      for (const d of daemons) {
        const s = await sampleDaemon(d);
        for (let n = 0; n < p.shared; n++) {
          if (s.peers.get(d.networkIds.get(n)!.slice(0, 12)) !== phantoms.expectedPeers(n, d.name)) return false;
        }
      }
      return true;
    };

    const sizes = [10, 100, 1000].filter((s) => s >= p.real && s < p.hosts);
    sizes.push(p.hosts);
    let phantomEndpoints = 0;
    for (const size of sizes) {
      const phantomHosts = Math.max(0, size - p.real);
      const wantEndpoints = size * p.perHost - p.real * p.shared;
      ctx.log(`size ${size}: ${phantomHosts} phantom hosts, ${wantEndpoints} phantom endpoints over ${p.networks} networks, ${Math.min(p.watchers, phantomHosts)} watching`);
      await phantoms.addHosts(phantomHosts);
      await phantoms.addWatchers(Math.min(p.watchers, phantomHosts));
      if (phantoms.hosts.length > 0) {
        const todo = Array.from({ length: Math.max(0, wantEndpoints - phantomEndpoints) }, (_, k) => phantomEndpoints + k);
        await pool(todo, 64, async (k) => {
          await phantoms.addEndpoint(phantoms.hosts[k % phantoms.hosts.length]!, k % p.networks);
        });
        phantomEndpoints += todo.length;
      }
      await until(`size ${size}: real hosts' peers match the store`, 300_000, converged, 250);

      const storeBefore = { cpu: sut.pids().reduce((a, pid) => a + cpuSecondsOf(pid), 0), bytes: await sut.clientBytesSent(), wchar: sut.pids().reduce((a, pid) => a + wcharOf(pid), 0) };

      // Join latency on shared network 0, round robin over the real hosts.
      const joinAll: number[] = [];
      const joinAfterReturn: number[] = [];
      for (let j = 0; j < p.joins; j++) {
        const i = j % daemons.length;
        const d = daemons[i]!;
        const { ip, joinStart, joinEnd } = await runEndpoint(d, 0);
        phantoms.count(0, d.name, 1);
        const others = monitors.filter((_, k) => k !== i);
        await until(`join ${ip} on every other real host`, 60_000, () => others.every((m) => m.seen.has(ip)), 5);
        const last = Math.max(...others.map((m) => m.seen.get(ip)!));
        joinAll.push(last - joinStart);
        joinAfterReturn.push(last - joinEnd);
        await sleep(50);
      }

      // Churn on networks no real host uses: what those events cost a daemon.
      const unusedNets = Array.from({ length: p.networks - p.shared }, (_, k) => p.shared + k);
      // Baseline: what the daemons spend meanwhile anyway (lease keepalives, the periodic
      // reconcile, these /metrics polls), over a quiet window polled the same way.
      const idle0 = await Promise.all(daemons.map(sampleDaemon));
      const idleT0 = performance.now();
      for (let k = 0; k < 8; k++) {
        await sleep(250);
        await Promise.all(daemons.map(sampleDaemon));
      }
      const idle1 = await Promise.all(daemons.map(sampleDaemon));
      const idleCpuPerS = idle1.reduce((a, s, k) => a + s.cpu - idle0[k]!.cpu, 0) / ((performance.now() - idleT0) / 1000);
      const churnBefore = idle1;
      const churnT0 = performance.now();
      const watched = phantoms.endpointEvents;
      if (unusedNets.length > 0 && phantoms.hosts.length > 0) {
        const half = Math.floor(p.churn / 2);
        const made: { h: PhantomHost; n: number; id: string }[] = [];
        await pool(Array.from({ length: half }, (_, k) => k), 32, async (k) => {
          const h = phantoms.hosts[k % phantoms.hosts.length]!;
          const n = unusedNets[k % unusedNets.length]!;
          made.push({ h, n, id: await phantoms.addEndpoint(h, n, 'c') });
        });
        await pool(made, 32, (m) => phantoms.deleteEndpoint(m.h, m.n, m.id));
        // Delivered everywhere once every daemon has counted them, or (when daemons no longer
        // receive events of networks they do not use) once a phantom watcher, which watches
        // everything, has seen the last delete and a second more has passed.
        const written = performance.now();
        await until('churn delivered', 120_000, async () => {
          const now = await Promise.all(daemons.map(sampleDaemon));
          if (now.every((s, k) => s.unused - churnBefore[k]!.unused >= 2 * half)) return true;
          const seen = phantoms.endpointEvents - watched;
          if (seen >= 2 * half * phantoms.burstSeen.length && performance.now() - written > 1000) return true;
          // Watchers behind, daemons silent: 5 s after the last write is long enough to see any effect.
          if (performance.now() - written > 5000) {
            ctx.log(`churn: phantom watchers saw ${seen} of ${2 * half * phantoms.burstSeen.length} events 5 s after the last write`);
            return true;
          }
          return false;
        }, 250);
      }
      const after = await Promise.all(daemons.map(sampleDaemon));
      const churnSeconds = (performance.now() - churnT0) / 1000;
      const storeAfter = { cpu: sut.pids().reduce((a, pid) => a + cpuSecondsOf(pid), 0), bytes: await sut.clientBytesSent(), wchar: sut.pids().reduce((a, pid) => a + wcharOf(pid), 0) };
      const churnEvents = after.reduce((a, s, k) => a + s.unused - churnBefore[k]!.unused, 0);
      const churnCpu = Math.max(0, after.reduce((a, s, k) => a + s.cpu - churnBefore[k]!.cpu, 0) - idleCpuPerS * churnSeconds);
      const mean = (f: (s: DaemonSample, k: number) => number) => after.reduce((a, s, k) => a + f(s, k), 0) / after.length;
      result.rows.push({
        hosts: size,
        endpoints: phantoms.totalEndpoints(),
        joinAll,
        joinAfterReturn,
        daemonEventsUsed: mean((s) => s.used),
        daemonEventsUnused: mean((s) => s.unused),
        daemonHostEvents: mean((s) => s.hostEvents),
        daemonCpu: mean((s) => s.cpu),
        daemonRss: after.map((s) => s.rssMiB),
        unusedChurnEvents: churnEvents / daemons.length,
        unusedChurnCpuUs: churnEvents > 0 ? (churnCpu / churnEvents) * 1e6 : NaN,
        unusedChurnCpuMs: (churnCpu / daemons.length) * 1000,
        storeCpu: storeAfter.cpu - storeBefore.cpu,
        storeRss: sut.pids().reduce((a, pid) => a + memoryOf(pid).rssMiB, 0),
        storeBytes: storeAfter.bytes - storeBefore.bytes,
        storeWchar: storeAfter.wchar - storeBefore.wchar,
      });
      const js = summarize(joinAll);
      ctx.log(`size ${size}: join→all p50 ${fmt(js.median)} ms p99 ${fmt(js.p99)} ms; daemon RSS max ${fmt(Math.max(...after.map((s) => s.rssMiB)))} MiB; unused-event CPU ${fmt(result.rows.at(-1)!.unusedChurnCpuUs)} µs`);
    }

    // Burst of new endpoints on the shared networks, until every real host and every phantom watcher has them.
    if (p.burst > 0 && phantoms.hosts.length > 0) {
      ctx.log(`burst: ${p.burst} endpoints on ${p.shared} shared networks`);
      phantoms.burstTag = 'b';
      const seen0 = phantoms.burstSeen.map(() => 0);
      phantoms.burstSeen.fill(0);
      const cpu0 = burstCpu(daemons, sut);
      const t0 = performance.now();
      await pool(Array.from({ length: p.burst }, (_, k) => k), 128, async (k) => {
        await phantoms.addEndpoint(phantoms.hosts[k % phantoms.hosts.length]!, k % p.shared, 'b');
      });
      const written = performance.now() - t0;
      let watchersMs = NaN;
      let metricsMs = NaN;
      // Scoped watchers see only their networks' share (and a network they start following during
      // the burst arrives as a reset, not as events): only whole-prefix watchers are waited for.
      const watchersDone = p.scoped
        ? Promise.resolve()
        : until('burst seen by every phantom watcher', 180_000, () => phantoms.burstSeen.every((c, w) => c - seen0[w]! >= p.burst), 50).then(() => (watchersMs = performance.now() - t0));
      await until('burst programmed on every real host', 600_000, converged, 100);
      metricsMs = performance.now() - t0;
      // The kernel itself: every real host's neighbour table of every shared network.
      for (const d of daemons) {
        for (let n = 0; n < p.shared; n++) {
          const want = phantoms.expectedPeers(n, d.name);
          await until(`${d.name} kernel table of network ${n}`, 120_000, async () => (await kernelNeighbours(d, d.networkIds.get(n)!)) === want, 200);
        }
      }
      const kernelMs = performance.now() - t0;
      await watchersDone;
      const cpu1 = burstCpu(daemons, sut);
      const cpu: BurstCpu = { daemons: cpu1.daemons - cpu0.daemons, store: cpu1.store - cpu0.store, generator: cpu1.generator - cpu0.generator, wallS: kernelMs / 1000 };
      ctx.log(`burst CPU: daemons ${fmt(cpu.daemons, 1)} s (${fmt((cpu.daemons * 1e6) / (p.burst * daemons.length), 0)} µs per endpoint per daemon), store ${fmt(cpu.store, 1)} s, load generator ${fmt(cpu.generator, 1)} s, over ${fmt(cpu.wallS, 1)} s × ${os.cpus().length} CPUs`);
      ctx.log(`burst: written in ${fmt(written / 1000, 2)} s, real hosts ${fmt(metricsMs / 1000, 2)} s, kernel verified ${fmt(kernelMs / 1000, 2)} s, watchers ${fmt(watchersMs / 1000, 2)} s`);
      result.burst = { n: p.burst, seconds: (p.scoped ? metricsMs : Math.max(metricsMs, watchersMs)) / 1000, writeSeconds: written / 1000, kernelSeconds: kernelMs / 1000, watchersSeconds: watchersMs / 1000, cpu };
    }

    // SIGKILL one daemon and start it again: until its kernel tables match the store.
    {
      const d = daemons[daemons.length - 1]!;
      const peers = Array.from({ length: p.shared }, (_, n) => phantoms.expectedPeers(n, d.name)).reduce((a, b) => a + b, 0);
      ctx.log(`restart: SIGKILL ${d.name} (${peers} peers) and start it again`);
      monitors[daemons.length - 1]!.stop();
      process.kill(d.proc.pid, 'SIGKILL');
      await d.proc.exited;
      const t0 = performance.now();
      d.proc = startDaemonProcess(restartedArgv(d));
      await waitServing(d);
      let healthyMs = NaN;
      await until(`${d.name} healthy again`, 120_000, async () => {
        const r = await d.client.get('/healthz').catch(() => '');
        return r.includes('"status":"ok"');
      }, 50);
      healthyMs = performance.now() - t0;
      await until(`${d.name} tables match the store again`, 300_000, async () => {
        const s = await sampleDaemon(d).catch(() => undefined);
        if (!s) return false;
        for (let n = 0; n < p.shared; n++) if (s.peers.get(d.networkIds.get(n)!.slice(0, 12)) !== phantoms.expectedPeers(n, d.name)) return false;
        return true;
      }, 50);
      const inStepMs = performance.now() - t0;
      for (let n = 0; n < p.shared; n++) {
        const have = await kernelNeighbours(d, d.networkIds.get(n)!);
        const want = phantoms.expectedPeers(n, d.name);
        if (have !== want) result.problems.push(`${d.name} after restart: ${have} neighbours in network ${n}, the store wants ${want}`);
      }
      result.restart = { peers, healthySeconds: healthyMs / 1000, inStepSeconds: inStepMs / 1000, rssMiB: memoryOf(d.proc.pid).rssMiB };
      // Where the resident memory is: V8's heap (used of allocated) and what node holds outside it.
      const text = await d.client.get('/metrics');
      const one = (name: string) => mib(samples(text, name)[0]?.value ?? NaN);
      ctx.log(`restart: healthy after ${fmt(healthyMs / 1000, 2)} s, in step after ${fmt(inStepMs / 1000, 2)} s; RSS ${fmt(result.restart.rssMiB)} MiB, heap ${fmt(one('nodejs_heap_size_used_bytes'))} of ${fmt(one('nodejs_heap_size_total_bytes'))} MiB, external ${fmt(one('nodejs_external_memory_bytes'))} MiB`);
      // What it keeps once the start-up's garbage is collected (V8 returns heap pages when idle).
      if (p.rssSettleS > 0) {
        await sleep(p.rssSettleS * 1000);
        result.restart.rssSettledMiB = memoryOf(d.proc.pid).rssMiB;
        // The daemons that were not restarted learned the same peers event by event.
        const others = daemons.filter((o) => o !== d).map((o) => memoryOf(o.proc.pid).rssMiB);
        result.restart.othersRssMiB = others.reduce((a, b) => a + b, 0) / others.length;
        ctx.log(`restart: RSS ${fmt(result.restart.rssSettledMiB)} MiB ${p.rssSettleS} s later; the other daemons ${others.map((r) => fmt(r)).join(', ')} MiB`);
      }
    }

    // IPAM: one subnet, 3 real hosts, `inflight` requests in flight each.
    {
      const ipamHosts = daemons.slice(0, Math.min(3, daemons.length));
      const n = p.networks; // a network index past the others
      for (const d of ipamHosts) {
        const { PoolID } = await d.client.call<{ PoolID: string }>('IpamDriver.RequestPool', { AddressSpace: GLOBAL_SPACE, Pool: IPAM_SUBNET, SubPool: '', Options: {}, V6: false });
        d.poolIds.set(n, PoolID);
      }
      ctx.log(`ipam: ${ipamHosts.length} hosts × ${p.ipam} requests, ${p.inflight} in flight each`);
      const latencies: number[] = [];
      const got: { d: Daemon; ip: string }[] = [];
      let failures = 0;
      const reasons = new Map<string, number>();
      const t0 = performance.now();
      await Promise.all(
        ipamHosts.map((d) =>
          pool(Array.from({ length: p.ipam }, (_, k) => k), p.inflight, async () => {
            const s = performance.now();
            try {
              const r = await d.client.call<{ Address: string }>('IpamDriver.RequestAddress', { PoolID: d.poolIds.get(n)!, Address: '', Options: {} });
              latencies.push(performance.now() - s);
              got.push({ d, ip: r.Address });
            } catch (err) {
              failures++;
              // Grouped by kind: addresses, ports and key names vary from one failure to the next.
              const why = (err instanceof Error ? err.message : String(err)).replace(/\d+\.\d+\.\d+\.\d+(?::\d+|-\d+)?/g, '…').slice(0, 200);
              reasons.set(why, (reasons.get(why) ?? 0) + 1);
            }
          }),
        ),
      );
      const seconds = (performance.now() - t0) / 1000;
      const duplicates = got.length - new Set(got.map((g) => g.ip)).size;
      const ls = summarize(latencies);
      for (const [why, count] of reasons) result.notes.push(`IPAM: ${count} request(s) failed: ${why}`);
      result.ipam = { n: got.length, perSecond: got.length / seconds, p50: ls.median, p99: ls.p99, max: ls.max, duplicates, failures };
      ctx.log(`ipam: ${got.length} addresses in ${fmt(seconds, 1)} s, p99 ${fmt(ls.p99)} ms, ${duplicates} duplicates, ${failures} failures`);
    }
  } catch (err) {
    result.problems.push(err instanceof Error ? err.message : String(err));
    ctx.log(`${sut.label}: ${err instanceof Error ? err.message : String(err)}`);
  } finally {
    for (const m of monitors) m.stop();
    for (const d of daemons) d.client.close();
    await Promise.all(daemons.map((d) => d.proc.stop().catch(() => undefined)));
    await phantoms.close();
    await gen.close().catch(() => undefined);
    await sut.stop();
    await underlay.teardown();
  }
  return result;
}

// ---------------------------------------------------------------------------

if (runIsolated()) {
  runBench(
    {
      name: 'scale',
      title: '8. Scale: real daemons plus phantom hosts on a 3-member etcd cluster (and a Consul server)',
      description: 'Join propagation, per-daemon events/CPU/RSS, store cost, a 10,000-endpoint burst, a daemon restart and IPAM throughput at 10/100/1,000 hosts.',
      options: {
        real: { full: 10, smoke: 3, help: 'real daemons (each in its own network namespace)' },
        hosts: { full: 1000, smoke: 50, help: 'hosts at the largest size (real + phantom); sizes 10, 100, 1000 below it are run too' },
        'per-host': { full: 10, smoke: 10, help: 'endpoints per host (spread over the networks)' },
        networks: { full: 100, smoke: 10, help: 'networks' },
        shared: { full: 10, smoke: 2, help: 'networks every real host has a container on' },
        joins: { full: 40, smoke: 6, help: 'timed Joins per size' },
        churn: { full: 2000, smoke: 100, help: 'endpoint writes + deletes on networks no real host uses, per size' },
        burst: { full: 10_000, smoke: 300, help: 'new endpoints written at once at the largest size' },
        watchers: { full: 100, smoke: 10, help: 'phantom hosts that hold the watches a daemon holds' },
        'scoped-watch': { full: 1, smoke: 1, help: "1: watching phantom hosts follow endpoints/<network>/ per network they have endpoints on, as the daemon does since issue 19; 0: the whole endpoints/ prefix, as it did before" },
        inflight: { full: 300, smoke: 20, help: 'IPAM requests in flight per host' },
        ipam: { full: 900, smoke: 60, help: 'IPAM requests per host' },
        'rss-settle': { full: 10, smoke: 0, help: 'seconds after the restarted daemon is in step until its RSS is sampled again (0: not)' },
        etcd: { full: 1, smoke: 1, help: '1: the run on a 3-member etcd cluster' },
        consul: { full: 1, smoke: 0, help: '1: the same run on a Consul server (not in the CI smoke run: the Consul backend has its own contract, e2e and member-loss tests there)' },
      },
    },
    async (o, ctx) => {
      const p: Params = {
        real: Math.max(2, Math.round(o.real)),
        hosts: Math.round(o.hosts),
        perHost: Math.round(o['per-host']),
        networks: Math.round(o.networks),
        shared: Math.max(1, Math.min(Math.round(o.shared), Math.round(o.networks))),
        joins: Math.round(o.joins),
        churn: Math.round(o.churn),
        burst: Math.round(o.burst),
        watchers: Math.round(o.watchers),
        scoped: o['scoped-watch'] === 1,
        inflight: Math.round(o.inflight),
        ipam: Math.round(o.ipam),
        rssSettleS: o['rss-settle'],
      };
      if (p.hosts < p.real) throw new Error('--hosts must be at least --real');
      await run(['ip', 'link', 'set', 'lo', 'up']);
      const results: StoreResult[] = [];
      if (o.etcd === 1) results.push(await runOnStore('etcd', p, ctx));
      const consulWhy = consulSkipReason();
      if (o.consul === 1 && !consulWhy) results.push(await runOnStore('consul', p, ctx));
      if (results.length === 0) throw new Error('neither --etcd 1 nor --consul 1 (with Consul installed)');

      const tables: BenchTable[] = [];
      for (const r of results) {
        tables.push({
          title: `${r.label}: per size (${p.real} real daemons; the rest phantom hosts; ${p.perHost} endpoints per host over ${p.networks} networks)`,
          columns: ['hosts', 'endpoints', 'Join → entry on every other real host p50 / p99 / max ms', 'same, from Join’s return p50 / p99 ms', 'events per daemon: used networks / unused / hosts', 'daemon CPU s (mean, cumulative)', 'churn on unused networks: events / CPU ms per daemon / µs per event', 'daemon RSS MiB mean / max', 'store CPU s (this size)', 'store RSS MiB', 'store client bytes sent MiB (etcd gRPC)', 'store write() MiB'],
          rows: r.rows.map((x) => {
            const j = summarize(x.joinAll);
            const a = summarize(x.joinAfterReturn);
            const rss = summarize(x.daemonRss);
            return [fmtInt(x.hosts), fmtInt(x.endpoints), `${fmt(j.median)} / ${fmt(j.p99)} / ${fmt(j.max)}`, `${fmt(a.median)} / ${fmt(a.p99)}`, `${fmtInt(x.daemonEventsUsed)} / ${fmtInt(x.daemonEventsUnused)} / ${fmtInt(x.daemonHostEvents)}`, fmt(x.daemonCpu, 2), `${fmtInt(x.unusedChurnEvents)} / ${fmt(x.unusedChurnCpuMs, 0)} / ${fmt(x.unusedChurnCpuUs, 0)}`, `${fmt(rss.mean)} / ${fmt(rss.max)}`, fmt(x.storeCpu, 2), fmt(x.storeRss), fmt(mib(x.storeBytes), 1), fmt(mib(x.storeWchar), 1)];
          }),
        });
      }
      tables.push({
        title: 'At the largest size: burst, restart, IPAM',
        columns: ['store', 'burst: endpoints', 'burst: s to write them (load generator)', 'burst: s until every real host and watcher has them', 'burst: s until kernel tables verified', 'burst: CPU s of the real daemons / store / load generator (machine: wall s × CPUs)', 'restart: peers', 'restart: s until /healthz ok', 'restart: s until tables match the store', 'restart: RSS MiB', `restart: RSS MiB ${p.rssSettleS} s later`, `restart: RSS MiB of the daemons not restarted (mean, ${p.rssSettleS} s later)`, 'IPAM: addresses', 'IPAM: per s', 'IPAM p50 / p99 / max ms', 'IPAM duplicates', 'IPAM failures'],
        rows: results.map((r) => [
          r.label,
          fmtInt(r.burst?.n ?? NaN), fmt(r.burst?.writeSeconds ?? NaN, 2), fmt(r.burst?.seconds ?? NaN, 2), fmt(r.burst?.kernelSeconds ?? NaN, 2),
          r.burst ? `${fmt(r.burst.cpu.daemons, 1)} / ${fmt(r.burst.cpu.store, 1)} / ${fmt(r.burst.cpu.generator, 1)} (${fmt(r.burst.cpu.wallS * os.cpus().length, 1)})` : 'n/a',
          fmtInt(r.restart?.peers ?? NaN), fmt(r.restart?.healthySeconds ?? NaN, 2), fmt(r.restart?.inStepSeconds ?? NaN, 2), fmt(r.restart?.rssMiB ?? NaN), fmt(r.restart?.rssSettledMiB ?? NaN), fmt(r.restart?.othersRssMiB ?? NaN),
          fmtInt(r.ipam?.n ?? NaN), fmt(r.ipam?.perSecond ?? NaN, 0), `${fmt(r.ipam?.p50 ?? NaN)} / ${fmt(r.ipam?.p99 ?? NaN)} / ${fmt(r.ipam?.max ?? NaN)}`, fmtInt(r.ipam?.duplicates ?? NaN), fmtInt(r.ipam?.failures ?? NaN),
        ]),
      });
      // Targets on the etcd cluster (the issue's), or on Consul when only that ran.
      const etcd = results[0]!;
      const on = o.etcd === 1 ? 'etcd' : 'Consul';
      const big = etcd.rows.at(-1);
      const targets: TargetResult[] = [
        target(`${on}, ${fmtInt(big?.hosts ?? NaN)} hosts: Join → entry on every other real host, p99`, summarize(big?.joinAll ?? []).p99, '<=', 250, 'ms'),
        target(`${on}: events a daemon receives of a ${fmtInt(p.churn)}-write churn on networks it does not use`, big?.unusedChurnEvents ?? NaN, '<=', 0, ''),
        target(`${on}: daemon RSS with ${fmtInt(etcd.restart?.peers ?? NaN)} peers after a restart`, etcd.restart?.rssMiB ?? NaN, '<', 100, 'MiB'),
        target(`${on}: burst of ${fmtInt(p.burst)} endpoints converged everywhere`, etcd.burst?.seconds ?? NaN, '<=', 10, 's'),
        target(`${on}: restarted daemon back in step`, etcd.restart?.inStepSeconds ?? NaN, '<=', 2, 's'),
        target(`${on}: IPAM allocations per second, one subnet, 3 hosts`, etcd.ipam?.perSecond ?? NaN, '>=', 2000, '/s'),
        target(`${on}: IPAM p99`, etcd.ipam?.p99 ?? NaN, '<', 50, 'ms'),
        target(`${on}: IPAM duplicate addresses`, etcd.ipam?.duplicates ?? NaN, '<=', 0, ''),
      ];
      const notes = [
        `Everything runs on this one machine: ${p.real} real daemons, the store (etcd: three member processes; Consul: one server — a single server is enough for the comparison of how the backend's watch works, not for its fault tolerance), the load generator and its phantom hosts share its CPUs, so latencies include queueing behind all of them; figures are from one run.`,
        `Real daemons: \`tsoverlay serve\` with the deployed node flags, each in its own network namespace (veth on one bridge), driven over its socket as dockerd drives it; each has one container (CreateEndpoint + Join, a real veth and overlay namespace) on each of the ${p.shared} shared networks and created every network it is on with RequestPool + the gateway's RequestAddress + CreateNetwork (the first real host also created the ${p.networks - p.shared} others).`,
        `Phantom hosts: \`hosts/<name>\` under a ${LEASE_TTL_S} s lease each, joined endpoint records written with the driver's RecordStore and key layout (no \`netids/\` or IPAM records for them); ${p.watchers} of them (one store connection per 10) hold the watches a daemon holds (${p.scoped ? '\`hosts/\` and one \`endpoints/<network>/\` per network they have endpoints on, as the daemon since issue 19' : '\`hosts/\` and the whole \`endpoints/\` prefix, as the daemon before issue 19'}), the others only their lease. They connect from one address, so Consul runs with \`limits.http_max_conns_per_client\` raised to 10,000 (its default of 200 counts them as one client).`,
        'Join latency: from the start of the Join call (after IPAM and CreateEndpoint, as dockerd orders them) on one real host until the address is in the overlay namespace of every other real host, as `ip -o monitor neigh` there reports it; the second column counts from Join’s return instead.',
        `Events per daemon are its own counter \`tsoverlay_store_watch_events_total\` (cumulative over the run). Churn: ${fmtInt(p.churn)} endpoint writes and deletes, only on networks no real host uses; a daemon's CPU for it is its CPU meanwhile less what it spent per second over a quiet window just before (polled the same way), and µs per event divides that by the unused-network events it received (n/a when it received none).`,
        'Store bytes: etcd’s `etcd_network_client_grpc_sent_bytes_total` summed over the members; write() bytes from /proc/<pid>/io `wchar` (sockets and disk together, the only figure Consul has here), both over the size’s measurement phase (joins and churn).',
        'Burst: written by the load generator 128 at a time on the shared networks; converged = every real host’s `tsoverlay_peers_programmed` matches the store for every shared network and every phantom watcher has seen every new key; then each real host’s kernel neighbour tables are counted. Restart: SIGKILL of the last real host, then the same command again; in step = its peers gauge matches the store on every shared network (its kernel tables are then counted too).',
        ...results.flatMap((r) => r.notes.map((x) => `${r.label}: ${x}`)),
        ...results.flatMap((r) => r.problems.map((x) => `**${r.label}: ${x}**`)),
        ...(consulWhy ? [`Consul not run: ${consulWhy}`] : []),
      ];
      return { tables, targets, notes, complete: results.every((r) => r.problems.length === 0 && r.ipam !== undefined) };
    },
  );
}
