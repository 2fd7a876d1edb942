/**
 * Issue "Resilience", item 6: hostile input on the plugin socket.
 *
 * A seeded, reproducible fuzzer (TSO_SEED replays a run; TSO_FUZZ_REQUESTS sets the count,
 * default 10,000; TSO_FULL=1: 50,000) sends requests to every plugin method, valid flows mixed
 * with mutated ones: invalid JSON, wrong types, huge bodies, deep nesting, bogus ids, CIDRs,
 * VNIs, MACs, options, names with path and shell characters, odd HTTP methods, paths, content
 * types and encodings. The plugin runs in a throw-away network and mount namespace (what valid
 * Joins build stays there) with an embedded store.
 *
 * Checked: it never dies and logs no unhandled error; every reply is JSON — a success object
 * without Err, or a non-2xx status with a non-empty string Err and the plugin content type;
 * the body limit is enforced (also after gzip inflation); memory stays bounded; no request
 * creates files or processes (canary paths named in requests never appear, no child process).
 */
import assert from 'node:assert/strict';
import fs from 'node:fs';
import http from 'node:http';
import path from 'node:path';
import zlib from 'node:zlib';
import { after, before, test } from 'node:test';
import { PLUGIN_MAIN } from '../helpers/plugin';
import {
  cleanupAfter,
  descendants,
  recordResource,
  forgetResource,
  registerCleanup,
  runDir,
  runPrefix,
  runSync,
  spawnTracked,
  waitFor,
  type ManagedProcess,
} from '../helpers/proc';
import { FULL, prng, seedFromEnv } from '../helpers/resilience';

const skip = process.getuid?.() !== 0 ? 'needs root (network namespace, mounts)' : false;
cleanupAfter();

const REQUESTS = Number(process.env.TSO_FUZZ_REQUESTS ?? (FULL ? 50_000 : 10_000));
const SEED = seedFromEnv();
const MAX_BODY = 1024 * 1024;
const CONCURRENCY = 16;
const PLUGIN_CT = 'application/vnd.docker.plugins.v1+json';

const METHODS = [
  'Plugin.Activate',
  'NetworkDriver.GetCapabilities',
  'NetworkDriver.CreateNetwork',
  'NetworkDriver.DeleteNetwork',
  'NetworkDriver.AllocateNetwork',
  'NetworkDriver.FreeNetwork',
  'NetworkDriver.CreateEndpoint',
  'NetworkDriver.EndpointOperInfo',
  'NetworkDriver.DeleteEndpoint',
  'NetworkDriver.Join',
  'NetworkDriver.Leave',
  'NetworkDriver.DiscoverNew',
  'NetworkDriver.DiscoverDelete',
  'NetworkDriver.ProgramExternalConnectivity',
  'NetworkDriver.RevokeExternalConnectivity',
  'NetworkDriver.GwAllocCheck',
  'IpamDriver.GetCapabilities',
  'IpamDriver.GetDefaultAddressSpaces',
  'IpamDriver.RequestPool',
  'IpamDriver.ReleasePool',
  'IpamDriver.RequestAddress',
  'IpamDriver.ReleaseAddress',
] as const;

let dir = '';
let socket = '';
let netns = '';
let plugin: ManagedProcess;
const canaries: string[] = [];

type Rng = () => number;
type Json = null | boolean | number | string | Json[] | { [k: string]: Json };

const pick = <T>(r: Rng, xs: readonly T[]): T => xs[Math.floor(r() * xs.length)]!;
const hex = (r: Rng, n: number): string => Array.from({ length: n }, () => '0123456789abcdef'[Math.floor(r() * 16)]).join('');

function hostileStrings(): string[] {
  const canary = (tag: string): string => {
    const p = `/tmp/${runPrefix()}-canary-${tag}`;
    canaries.push(p);
    return p;
  };
  return [
    '', ' ', '..', '/', '../../../../etc/passwd', `../../../..${canary('dots')}`, canary('abs'),
    `$(touch ${canary('subst')})`, `\`touch ${canary('tick')}\``, `; touch ${canary('semi')} ;`, `| touch ${canary('pipe')}`,
    `&& touch ${canary('and')}`, `x\ntouch ${canary('nl')}`, '\u0000', 'a\u0000b', '%00', '%2e%2e%2f%2e%2e%2f', '\\\\server\\share',
    'vcdeadbeef123', 'vedeadbeef123', 'eth0', 'lo', 'br0', 'vxlan0', 'docker0', 'a'.repeat(16), 'x'.repeat(300), 'Z'.repeat(70_000),
    'ff:ff:ff:ff:ff:ff', '01:00:5e:00:00:01', '00:00:00:00:00:00', '02:42:0a:00:00:01', 'zz:zz:zz:zz:zz:zz', '02:42:0a:00:00:01:ff',
    '0.0.0.0/0', '255.255.255.255/32', '10.1.2.0/33', '10.1.2.300/24', '10.1.2.3/-1', '::1/128', 'fe80::/64', '10.0.0.0/8', '1.2.3.4',
    '10.200.0.0/24', '10.200.0.5/24', '10.200.0.0/24@10.200.0.0/25', '10.200.0.0/24@10.300.0.0/25', '@', '@@', '10.200.0.1',
    '-1', '0', '255', '256', '16777215', '16777216', '4294967296', '1e400', 'NaN', 'Infinity', '0x100', '1_000', ' 300 ',
    'null', 'true', '__proto__', 'constructor', 'prototype', 'toString', 'hasOwnProperty', '{"a":1}', '<script>', '%s%s%n',
    'static', 'miss', 'p2p', 'multicast', '239.1.2.3', '224.0.0.1', 'tsoverlay-local', 'tsoverlay-global', 'default',
    'com.docker.network.gateway', '\u202e\u0301', '😀'.repeat(50), '\ud800',
  ];
}

let HOSTILE: string[] = [];

function hostileValue(r: Rng, depth = 0): Json {
  const k = r();
  if (k < 0.55) return pick(r, HOSTILE);
  if (k < 0.65) return pick(r, [-1, 0, 1, 255, 256, 4789, 16777216, 2 ** 53 + 1, -1e308, 1.5, 1e21]);
  if (k < 0.7) return pick(r, [true, false, null]);
  if (k < 0.85 && depth < 3) return Array.from({ length: Math.floor(r() * 4) }, () => hostileValue(r, depth + 1));
  if (depth < 3) {
    const o: Record<string, Json> = {};
    for (let i = Math.floor(r() * 4); i > 0; i--) o[pick(r, HOSTILE).slice(0, 40)] = hostileValue(r, depth + 1);
    return o;
  }
  return pick(r, HOSTILE);
}

/** Small pools, so that valid flows meet each other (create, then join the same network, …). */
interface Pools {
  networks: string[];
  endpoints: string[];
  subnets: string[];
}

function skeleton(method: string, r: Rng, p: Pools): Record<string, Json> {
  const n = Math.floor(r() * p.networks.length);
  const net = p.networks[n]!;
  const subnet = p.subnets[n]!;
  const base = subnet.split('/')[0]!.split('.').slice(0, 3).join('.');
  const ep = pick(r, p.endpoints);
  const addr = `${base}.${2 + Math.floor(r() * 20)}`;
  const generic: Record<string, Json> = pick<Record<string, Json>>(r, [
    {},
    { mode: 'static' },
    { vni: String(300 + n) },
    { mode: 'p2p', remote: '192.0.2.99' },
    { mode: 'multicast', group: '239.1.1.1' },
    { 'com.docker.network.driver.mtu': '1400' },
  ]);
  const ipv4 = [{ AddressSpace: 'tsoverlay-local', Pool: subnet, Gateway: `${base}.1/24` }];
  switch (method) {
    case 'NetworkDriver.CreateNetwork':
      return { NetworkID: net, Options: { 'com.docker.network.generic': generic, 'com.docker.network.enable_ipv6': false }, IPv4Data: ipv4, IPv6Data: [] };
    case 'NetworkDriver.AllocateNetwork':
      return { NetworkID: net, Options: generic, IPv4Data: ipv4, IPv6Data: [] };
    case 'NetworkDriver.DeleteNetwork':
    case 'NetworkDriver.FreeNetwork':
      return { NetworkID: net };
    case 'NetworkDriver.CreateEndpoint':
      return { NetworkID: net, EndpointID: ep, Interface: { Address: `${addr}/24`, AddressIPv6: '', MacAddress: r() < 0.5 ? '' : '02:42:0a:c8:00:63' }, Options: {} };
    case 'NetworkDriver.Join':
      return { NetworkID: net, EndpointID: ep, SandboxKey: `/var/run/docker/netns/${hex(r, 12)}`, Options: {} };
    case 'NetworkDriver.EndpointOperInfo':
    case 'NetworkDriver.DeleteEndpoint':
    case 'NetworkDriver.Leave':
    case 'NetworkDriver.RevokeExternalConnectivity':
      return { NetworkID: net, EndpointID: ep };
    case 'NetworkDriver.ProgramExternalConnectivity':
      return { NetworkID: net, EndpointID: ep, Options: { 'com.docker.network.portmap': [] } };
    case 'NetworkDriver.DiscoverNew':
    case 'NetworkDriver.DiscoverDelete':
      return { DiscoveryType: 1, DiscoveryData: { Address: '192.0.2.7', BindAddress: '0.0.0.0', Self: r() < 0.5 } };
    case 'NetworkDriver.GwAllocCheck':
      return { Options: {} };
    case 'IpamDriver.RequestPool':
      return { AddressSpace: 'tsoverlay-local', Pool: subnet, SubPool: r() < 0.2 ? `${base}.0/25` : '', Options: {}, V6: false };
    case 'IpamDriver.ReleasePool':
      return { PoolID: subnet };
    case 'IpamDriver.RequestAddress':
      return r() < 0.3
        ? { PoolID: subnet, Address: '', Options: { RequestAddressType: 'com.docker.network.gateway' } }
        : { PoolID: subnet, Address: r() < 0.5 ? '' : addr, Options: { 'com.docker.network.endpoint.name': `c${Math.floor(r() * 9)}` } };
    case 'IpamDriver.ReleaseAddress':
      return { PoolID: subnet, Address: addr };
    default:
      return {};
  }
}

/** Replaces, removes or adds fields anywhere in the object. */
function mutate(o: Record<string, Json>, r: Rng): Record<string, Json> {
  const copy = JSON.parse(JSON.stringify(o)) as Record<string, Json>;
  const containers: Record<string, Json>[] = [copy];
  const walk = (v: Json): void => {
    if (v && typeof v === 'object' && !Array.isArray(v)) {
      containers.push(v);
      Object.values(v).forEach(walk);
    } else if (Array.isArray(v)) v.forEach(walk);
  };
  Object.values(copy).forEach(walk);
  for (let m = 1 + Math.floor(r() * 3); m > 0; m--) {
    const target = pick(r, containers);
    const keys = Object.keys(target);
    const what = r();
    if (keys.length > 0 && what < 0.6) target[pick(r, keys)] = hostileValue(r);
    else if (keys.length > 0 && what < 0.75) delete target[pick(r, keys)];
    else target[pick(r, [...HOSTILE.slice(0, 20), 'NetworkID', 'EndpointID', 'Options', '__proto__', 'constructor'])] = hostileValue(r);
  }
  return copy;
}

function deep(r: Rng): string {
  const depth = 1000 + Math.floor(r() * 200_000);
  if (r() < 0.5) return '['.repeat(depth) + ']'.repeat(depth);
  const inner = '{"a":'.repeat(depth) + '1' + '}'.repeat(depth);
  return `{"NetworkID":"${hex(r, 64)}","EndpointID":"${hex(r, 64)}","Options":${inner},"DiscoveryType":1,"DiscoveryData":${inner}}`;
}

function brokenJson(r: Rng, valid: string): string {
  return pick(r, [
    valid.slice(0, Math.floor(r() * valid.length)),
    `${valid}}`,
    `${valid} trailing`,
    valid.replace(/"/g, "'"),
    '{"NetworkID": NaN}',
    '{"a":1,}',
    '\ufeff' + valid,
    '{"a":"\\ud800"}',
    '{"a":"\\x41"}',
    '\u0000',
    '[',
    '"unterminated',
    '{"NetworkID":' + '9'.repeat(400) + '}',
    Buffer.from([0xff, 0xfe, 0xfd]).toString('latin1'),
  ]);
}

interface FuzzRequest {
  kind: string;
  method: string;
  path: string;
  headers: Record<string, string>;
  body: Buffer;
}

const WEIRD_PATHS = [
  '/', '/NetworkDriver.', '/Plugin.Activate/', '/plugin.activate', '/%', '/%zz', '/..%2f..%2fetc%2fpasswd', '/Plugin.Activate?x=1&y=%00',
  `/${'A'.repeat(8000)}`, '/__proto__', '/constructor', '/hasOwnProperty', '/toString', '/NetworkDriver.Join%00', '//NetworkDriver.Join',
  '/IpamDriver.RequestPool;rm%20-rf%20/', '/Plugin.Activate%0d%0aX-Injected:%201',
];

function makeRequest(r: Rng, p: Pools): FuzzRequest {
  const method = pick(r, METHODS);
  const path0 = `/${method}`;
  const json = (o: unknown): Buffer => Buffer.from(JSON.stringify(o));
  const k = r();
  if (k < 0.2) return { kind: 'valid', method, path: path0, headers: {}, body: json(skeleton(method, r, p)) };
  if (k < 0.62) return { kind: 'mutated', method, path: path0, headers: {}, body: json(mutate(skeleton(method, r, p), r)) };
  if (k < 0.72) return { kind: 'random-json', method, path: path0, headers: {}, body: json(hostileValue(r)) };
  if (k < 0.82) return { kind: 'invalid-json', method, path: path0, headers: {}, body: Buffer.from(brokenJson(r, JSON.stringify(skeleton(method, r, p))), 'latin1') };
  if (k < 0.85) return { kind: 'deep', method, path: path0, headers: {}, body: Buffer.from(deep(r)) };
  if (k < 0.865) {
    const size = pick(r, [MAX_BODY + 1, MAX_BODY + 1000, 3 * MAX_BODY]);
    return { kind: 'huge', method, path: path0, headers: {}, body: Buffer.alloc(size, 0x20) };
  }
  if (k < 0.9) {
    const encoding = pick(r, ['gzip', 'deflate', 'br', 'identity', 'compress', 'x-bogus']);
    const plain = json(skeleton(method, r, p));
    const body = encoding === 'gzip' ? zlib.gzipSync(plain) : encoding === 'deflate' ? zlib.deflateSync(plain) : encoding === 'br' ? zlib.brotliCompressSync(plain) : plain;
    return { kind: 'encoding', method, path: path0, headers: { 'Content-Encoding': encoding }, body };
  }
  if (k < 0.93) {
    const ct = pick(r, ['application/json', 'text/plain; charset=utf-16', 'application/json; charset=latin1', 'application/json; charset=bogus', 'multipart/form-data; boundary=x', 'application/x-www-form-urlencoded', '']);
    return { kind: 'content-type', method, path: path0, headers: ct ? { 'Content-Type': ct } : {}, body: json(skeleton(method, r, p)) };
  }
  if (k < 0.96) return { kind: 'http-method', method: pick(r, ['GET', 'PUT', 'DELETE', 'PATCH', 'OPTIONS']), path: path0, headers: {}, body: json(skeleton(method, r, p)) };
  return { kind: 'path', method: 'POST', path: pick(r, WEIRD_PATHS), headers: {}, body: json(hostileValue(r)) };
}

interface Reply {
  status: number;
  contentType: string;
  text: string;
}

const agent = new http.Agent({ keepAlive: true, maxSockets: CONCURRENCY });

function send(req: FuzzRequest): Promise<Reply> {
  const httpMethod = ['GET', 'PUT', 'DELETE', 'PATCH', 'OPTIONS'].includes(req.method) ? req.method : 'POST';
  return new Promise((resolve, reject) => {
    const r = http.request(
      { socketPath: socket, path: req.path, method: httpMethod, agent, headers: { ...req.headers, 'Content-Length': String(req.body.length) } },
      (res) => {
        const chunks: Buffer[] = [];
        res.on('data', (c: Buffer) => chunks.push(c));
        res.on('end', () => resolve({ status: res.statusCode ?? 0, contentType: String(res.headers['content-type'] ?? ''), text: Buffer.concat(chunks).toString('utf8') }));
        res.on('error', reject);
      },
    );
    r.setTimeout(60_000, () => r.destroy(new Error(`no answer within 60 s to ${req.kind} ${req.path.slice(0, 60)}`)));
    // The server may answer (413) and close before it read everything: that is not a failure.
    r.on('error', (err: NodeJS.ErrnoException) => (err.code === 'EPIPE' || err.code === 'ECONNRESET' ? undefined : reject(err)));
    r.end(req.body);
  });
}

/** Why a reply is not a well-formed plugin answer, or undefined. */
function problem(reply: Reply): string | undefined {
  let body: unknown;
  try {
    body = JSON.parse(reply.text);
  } catch {
    return `not JSON: ${reply.text.slice(0, 200)}`;
  }
  if (typeof body !== 'object' || body === null || Array.isArray(body)) return `not a JSON object: ${reply.text.slice(0, 200)}`;
  const err = (body as { Err?: unknown }).Err;
  if (reply.status >= 200 && reply.status < 300) return err === undefined ? undefined : `success with Err: ${reply.text.slice(0, 200)}`;
  if (!reply.contentType.startsWith(PLUGIN_CT)) return `error without the plugin content type (${reply.contentType})`;
  if (typeof err !== 'string' || err.length === 0) return `status ${reply.status} without a string Err: ${reply.text.slice(0, 200)}`;
  if (err.length > 2100) return `Err of ${err.length} characters`;
  return undefined;
}

function rssKb(pid: number): { rss: number; hwm: number } {
  const status = fs.readFileSync(`/proc/${pid}/status`, 'utf8');
  const get = (k: string): number => Number(new RegExp(`${k}:\\s+(\\d+) kB`).exec(status)?.[1] ?? NaN);
  return { rss: get('VmRSS'), hwm: get('VmHWM') };
}

before(async () => {
  if (skip) return;
  HOSTILE = hostileStrings();
  dir = path.join(runDir(), 'fuzz');
  fs.mkdirSync(dir, { recursive: true });
  socket = path.join(dir, 'plugin.sock');
  netns = `${runPrefix()}fz`;
  recordResource({ kind: 'netns', name: netns });
  runSync(['ip', 'netns', 'add', netns]);
  const removeNetns = (): void => {
    runSync(['ip', 'netns', 'del', netns], { allowFailure: true });
    forgetResource({ kind: 'netns', name: netns });
  };
  registerCleanup(`netns ${netns}`, removeNetns, { sync: removeNetns });
  // An underlay address for the plugin's VTEP inside the throw-away namespace.
  runSync(['nsenter', `--net=/run/netns/${netns}`, 'sh', '-c', 'ip link set lo up && ip link add ul0 type veth peer name ul1 && ip link set ul1 up && ip addr add 192.0.2.1/24 dev ul0 && ip link set ul0 up']);
  plugin = spawnTracked(
    [
      'nsenter', `--net=/run/netns/${netns}`, '--', 'unshare', '-m', '--propagation', 'private', '--',
      process.execPath, PLUGIN_MAIN, 'serve', '--store', `local://${dir}/state`, '--socket', socket, '--netns-dir', `${dir}/run/netns`,
      '--host-name', 'fuzz', '--state-dir', `${dir}/id`, '--vtep', '192.0.2.1', '--log-level', 'info',
    ],
    { name: 'tsoverlay-fuzz', logFile: path.join(dir, 'plugin.log'), keepChars: 64 * 1024 },
  );
  await plugin.waitForOutput('tsoverlay serving', 20_000);
});

after(() => agent.destroy());

test(`fuzz: ${REQUESTS} hostile requests over every plugin method`, { skip, timeout: 900_000 }, async (t) => {
  const r = prng(SEED);
  t.diagnostic(`seed ${SEED} (replay with TSO_SEED=${SEED})`);
  const pools: Pools = {
    networks: Array.from({ length: 6 }, () => hex(r, 64)),
    endpoints: Array.from({ length: 12 }, () => hex(r, 64)),
    subnets: Array.from({ length: 6 }, (_, i) => `10.200.${i}.0/24`),
  };
  const perMethod = new Map<string, number>();
  const perKind = new Map<string, number>();
  const statuses = new Map<number, number>();
  const problems: string[] = [];
  let sent = 0;
  let childSeen = '';
  let rssAtWarmup = { rss: 0, hwm: 0 };
  let rssAtHalf = { rss: 0, hwm: 0 };
  const rssTrend: number[] = [];
  const t0 = Date.now();
  const worker = async (): Promise<void> => {
    while (sent < REQUESTS) {
      const n = ++sent;
      const req = makeRequest(r, pools);
      perKind.set(req.kind, (perKind.get(req.kind) ?? 0) + 1);
      perMethod.set(req.path.slice(1), (perMethod.get(req.path.slice(1)) ?? 0) + 1);
      let reply: Reply;
      try {
        reply = await send(req);
      } catch (err) {
        problems.push(`#${n} ${req.kind} ${req.path.slice(0, 60)}: ${(err as Error).message}`);
        if (!plugin.running()) return;
        continue;
      }
      statuses.set(reply.status, (statuses.get(reply.status) ?? 0) + 1);
      const p = problem(reply);
      if (p) problems.push(`#${n} ${req.kind} ${req.method} ${req.path.slice(0, 60)}: ${p}`);
      if (req.kind === 'huge' && reply.status !== 413) problems.push(`#${n} huge body answered ${reply.status}`);
      if (n === 500) rssAtWarmup = rssKb(plugin.pid);
      if (n === Math.floor(REQUESTS / 2)) rssAtHalf = rssKb(plugin.pid);
      if (n % 1000 === 0) rssTrend.push(Math.round(rssKb(plugin.pid).rss / 1024));
      if (n % 250 === 0) {
        const kids = descendants(plugin.pid);
        if (kids.length > 0) childSeen = kids.map((k) => k.cmdline.join(' ')).join('; ');
      }
    }
  };
  await Promise.all(Array.from({ length: CONCURRENCY }, () => worker()));
  const elapsed = Date.now() - t0;
  const rssEnd = rssKb(plugin.pid);
  t.diagnostic(`${sent} requests in ${elapsed} ms (${Math.round((sent / elapsed) * 1000)}/s), ${CONCURRENCY} in flight`);
  t.diagnostic(`by kind: ${JSON.stringify(Object.fromEntries([...perKind].sort()))}`);
  t.diagnostic(`by status: ${JSON.stringify(Object.fromEntries([...statuses].sort((x, y) => x[0] - y[0])))}`);
  t.diagnostic(
    `plugin RSS: ${Math.round(rssAtWarmup.rss / 1024)} MiB after 500 requests, ${Math.round(rssAtHalf.rss / 1024)} MiB at half, ` +
      `${Math.round(rssEnd.rss / 1024)} MiB at the end (peak ${Math.round(rssEnd.hwm / 1024)} MiB); every 1000 requests: ${rssTrend.join(' ')} MiB`,
  );

  assert.ok(plugin.running(), `the plugin died:\n${plugin.output().slice(-3000)}`);
  assert.deepEqual(problems.slice(0, 20), [], `${problems.length} malformed replies`);
  for (const m of METHODS) assert.ok((perMethod.get(m) ?? 0) > 100, `${m} fuzzed (${perMethod.get(m) ?? 0} requests)`);
  assert.ok(sent >= REQUESTS);
  assert.ok(rssEnd.hwm < 400 * 1024, `peak RSS ${rssEnd.hwm} kB`);
  assert.ok(rssEnd.rss - rssAtHalf.rss < 64 * 1024, `RSS grew by ${rssEnd.rss - rssAtHalf.rss} kB over the second half`);
  assert.equal(childSeen, '', 'the plugin never runs a program');
  for (const c of canaries) assert.ok(!fs.existsSync(c), `${c} was created`);
  const log = fs.readFileSync(path.join(dir, 'plugin.log'), 'utf8');
  assert.doesNotMatch(log, /unhandled rejection|uncaught|FATAL|Maximum call stack/i, 'no unhandled error in the log');
  // Still fully functional: a valid request is served.
  const ok = await send({ kind: 'check', method: 'POST', path: '/Plugin.Activate', headers: {}, body: Buffer.from('{}') });
  assert.deepEqual(JSON.parse(ok.text), { Implements: ['NetworkDriver', 'IpamDriver'] });
});

test('body size limit: 1 MiB accepted, one byte more refused with 413, also after gzip inflation', { skip, timeout: 60_000 }, async () => {
  const pad = (n: number): Buffer => {
    const head = '{"PoolID":"10.200.0.0/24","Address":"10.200.0.9","x":"';
    return Buffer.from(head + 'y'.repeat(n - head.length - 2) + '"}');
  };
  const at = await send({ kind: 'limit', method: 'POST', path: '/IpamDriver.ReleaseAddress', headers: {}, body: pad(MAX_BODY) });
  assert.notEqual(at.status, 413, at.text.slice(0, 200));
  assert.equal(problem(at), undefined);
  const over = await send({ kind: 'limit', method: 'POST', path: '/IpamDriver.ReleaseAddress', headers: {}, body: pad(MAX_BODY + 1) });
  assert.equal(over.status, 413);
  assert.match(JSON.parse(over.text).Err, /larger than 1048576 bytes/);
  const bomb = zlib.gzipSync(Buffer.alloc(20 * MAX_BODY, 0x20));
  const inflated = await send({ kind: 'limit', method: 'POST', path: '/Plugin.Activate', headers: { 'Content-Encoding': 'gzip' }, body: bomb });
  assert.equal(inflated.status, 413, `a ${bomb.length}-byte gzip bomb: ${inflated.status} ${inflated.text.slice(0, 200)}`);
  await waitFor(() => plugin.running(), { timeoutMs: 1000 });
});
