/**
 * Issue 15, item 4, for the network driver: CreateNetwork, CreateEndpoint, Join, Leave,
 * DeleteEndpoint and DeleteNetwork answer within --request-timeout (plus a small margin) whatever
 * queues in front of them on the network's lock, fail with a clear {"Err"} when the store does
 * not answer in time, and leave no kernel state or store record behind for what they refused.
 *
 * A real daemon (`tsoverlay serve` in a host namespace of a test underlay) on a real etcd. One
 * endpoint is joined first, so the overlay namespace exists and CreateEndpoint prepares veth
 * pairs. Then etcd is stopped (SIGSTOP) and a burst of driver requests for that network is sent
 * at once: without a per-request deadline they queue behind each other on the network's lock
 * and the last ones answer several store timeouts late. The daemon runs with `--store-timeout 3
 * --request-timeout 3` to keep the test short; TSO_DEADLINE_MARGIN_MS (default 1000) is allowed for the answer to
 * cross the socket on a loaded machine.
 */
import assert from 'node:assert/strict';
import fs from 'node:fs';
import http from 'node:http';
import path from 'node:path';
import { after, before, test } from 'node:test';
import { startEtcd, type EtcdServer } from '../helpers/etcd';
import { createUnderlay, type Underlay } from '../helpers/hosts';
import { PLUGIN_MAIN } from '../helpers/plugin';
import { cleanupAfter, runDir, runPrefix, runSync, sleep, spawnTracked, waitFor, type ManagedProcess } from '../helpers/proc';
import { openStore } from '../../src/store/open';
import { silentLogger } from '../../src/log';

const skip =
  process.getuid?.() !== 0 ? 'needs root' : !fs.existsSync('/usr/bin/etcd') ? '/usr/bin/etcd missing (apt-get install etcd-server)' : false;
cleanupAfter();

const TIMEOUT_S = 3;
const MARGIN_MS = Number(process.env.TSO_DEADLINE_MARGIN_MS ?? 1000);
const NET = 'dd0000000000000000000000000000000000000000000000000000000000aa01';
const NET2 = 'dd0000000000000000000000000000000000000000000000000000000000aa02';
const SUBNET = '10.181.0.0/24';
const FIRST = `f0${'0'.repeat(62)}`;
/** Distinct in their first 11 characters, which name the veth pair. */
const endpointId = (i: number): string => `e${String(i).padStart(10, '0')}${'0'.repeat(53)}`;

let underlay: Underlay;
let etcd: EtcdServer;
let dir = '';
let prefix = '';
let daemon: ManagedProcess;
let socket = '';

interface Answer {
  status: number;
  body: Record<string, unknown>;
  ms: number;
}

function call(method: string, body: unknown): Promise<Answer> {
  const started = performance.now();
  return new Promise((resolve, reject) => {
    const req = http.request({ socketPath: socket, path: `/${method}`, method: 'POST', timeout: 120_000 }, (res) => {
      let text = '';
      res.on('data', (c: Buffer) => (text += c.toString()));
      res.on('end', () => {
        const ms = performance.now() - started;
        try {
          resolve({ status: res.statusCode ?? 0, body: JSON.parse(text) as Record<string, unknown>, ms });
        } catch {
          resolve({ status: res.statusCode ?? 0, body: { Err: `not JSON: ${text.slice(0, 200)}` }, ms });
        }
      });
    });
    req.on('timeout', () => req.destroy(new Error(`${method}: no answer within 120 s`)));
    req.on('error', reject);
    req.end(JSON.stringify(body));
  });
}

const createEndpoint = (id: string, host: number): Promise<Answer> =>
  call('NetworkDriver.CreateEndpoint', { NetworkID: NET, EndpointID: id, Interface: { Address: `10.181.0.${host}/24`, AddressIPv6: '', MacAddress: '' }, Options: {} });
const join = (id: string): Promise<Answer> =>
  call('NetworkDriver.Join', { NetworkID: NET, EndpointID: id, SandboxKey: '/var/run/docker/netns/0123456789ab', Options: {} });

/** Link names in the daemon's host namespace and in every overlay namespace it made. */
function links(): { host: string[]; overlay: string[] } {
  const names = (out: string): string[] => [...out.matchAll(/^\d+: ([^:@]+)/gm)].map((m) => m[1]!);
  const host = names(runSync(['nsenter', `--net=${underlay.hosts[0]!.netnsPath}`, '--', 'ip', '-o', 'link']).stdout);
  // The overlay namespaces are mounted in the daemon's private mount namespace.
  const nsDir = path.join(dir, 'netns');
  const listed = runSync(['nsenter', '-t', String(daemon.pid), '-m', '--', 'sh', '-c', `for f in ${nsDir}/*; do [ -e "$f" ] && nsenter --net="$f" -- ip -o link; done; true`]);
  return { host, overlay: names(listed.stdout) };
}

before(async () => {
  if (skip) return;
  dir = path.join(runDir(), 'driver-deadline');
  fs.mkdirSync(dir, { recursive: true });
  prefix = `${runPrefix()}-dd/`;
  underlay = await createUnderlay({ hosts: 1 });
  etcd = await startEtcd({ alsoListenOn: underlay.gateway });
  const store = `etcd://${etcd.endpoints.find((e) => e.startsWith(underlay.gateway))!}`;
  socket = path.join(dir, 'dd.sock');
  daemon = spawnTracked(
    [
      'nsenter', `--net=${underlay.hosts[0]!.netnsPath}`, '--', 'unshare', '-m', '--propagation', 'private', '--',
      process.execPath, PLUGIN_MAIN, 'serve', '--socket', socket, '--netns-dir', path.join(dir, 'netns'),
      '--host-name', 'dd1', '--store', store, '--store-prefix', prefix, '--store-timeout', String(TIMEOUT_S), '--request-timeout', String(TIMEOUT_S),
      '--lease-ttl', '120', '--dns', 'off', '--log-level', 'info',
    ],
    { name: 'tsoverlay-dd1', logFile: path.join(dir, 'dd1.log') },
  );
  await daemon.waitForOutput('tsoverlay serving', 30_000);
});

after(async () => {
  if (skip) return;
  etcd?.thaw();
  await daemon?.stop();
  await etcd?.stop();
  await underlay?.teardown();
});

test('NetworkDriver requests queued behind a stalled etcd answer within --request-timeout, roll back, and leave nothing behind', { skip, timeout: 180_000 }, async (t) => {
  const ipv4 = [{ AddressSpace: 'tsoverlay-local', Pool: SUBNET, Gateway: '10.181.0.1/24' }];
  const created = await call('NetworkDriver.CreateNetwork', { NetworkID: NET, Options: { 'com.docker.network.generic': {} }, IPv4Data: ipv4, IPv6Data: [] });
  assert.equal(created.status, 200, JSON.stringify(created.body));
  assert.equal((await createEndpoint(FIRST, 2)).status, 200);
  assert.equal((await join(FIRST)).status, 200);
  const before = links();
  assert.ok(before.overlay.some((l) => l.startsWith('ve')), `the joined endpoint's port is in the overlay namespace: ${before.overlay.join(' ')}`);

  etcd.freeze();
  let answers: { what: string; a: Answer }[];
  try {
    const burst: [string, Promise<Answer>][] = [
      ...Array.from({ length: 6 }, (_, i) => [`CreateEndpoint ${i + 1}`, createEndpoint(endpointId(i + 1), 10 + i)] as [string, Promise<Answer>]),
      ['Join', join(FIRST)],
      ['Leave', call('NetworkDriver.Leave', { NetworkID: NET, EndpointID: FIRST })],
      ['DeleteEndpoint', call('NetworkDriver.DeleteEndpoint', { NetworkID: NET, EndpointID: endpointId(99) })],
      ['CreateNetwork', call('NetworkDriver.CreateNetwork', { NetworkID: NET2, Options: { 'com.docker.network.generic': {} }, IPv4Data: [{ ...ipv4[0]!, Pool: '10.182.0.0/24', Gateway: '10.182.0.1/24' }], IPv6Data: [] })],
      ['DeleteNetwork', call('NetworkDriver.DeleteNetwork', { NetworkID: NET })],
    ];
    answers = await Promise.all(burst.map(async ([what, p]) => ({ what, a: await p })));
  } finally {
    etcd.thaw();
  }
  const slowest = Math.max(...answers.map((x) => x.a.ms));
  t.diagnostic(`${answers.length} requests with etcd stopped; slowest answer ${Math.round(slowest)} ms (--request-timeout ${TIMEOUT_S} s)`);
  for (const { what, a } of answers) t.diagnostic(`${what}: ${a.status} after ${Math.round(a.ms)} ms: ${String(a.body.Err ?? 'ok').slice(0, 200)}`);
  assert.deepEqual(
    answers.filter((x) => x.a.ms > TIMEOUT_S * 1000 + MARGIN_MS).map((x) => `${x.what} took ${Math.round(x.a.ms)} ms`),
    [],
    'answers later than the timeout + margin',
  );
  for (const { what, a } of answers) {
    assert.equal(a.status, 503, `${what}: ${a.status} ${JSON.stringify(a.body)}`);
    assert.match(String(a.body.Err ?? ''), /timed out waiting for its turn|deadline passed|no answer within/, what);
  }

  // Nothing of the refused CreateEndpoints in the kernel; their records, should etcd apply a
  // write it never answered, are removed once it answers again.
  const refused = Array.from({ length: 6 }, (_, i) => endpointId(i + 1));
  const leftLinks = (): string[] => {
    const now = links();
    return [...now.host, ...now.overlay].filter((l) => refused.some((id) => l === `vc${id.slice(0, 11)}` || l === `ve${id.slice(0, 11)}`));
  };
  assert.deepEqual(leftLinks(), [], 'veth pairs of refused CreateEndpoints');
  const store = await openStore(`etcd://${etcd.endpoints[0]!}`, { prefix, logger: silentLogger(), timeoutMs: 5000 });
  try {
    const records = async (): Promise<string[]> => (await store.list('endpoints/')).map((e) => e.key.split('/').pop()!).filter((id) => refused.includes(id));
    await waitFor(async () => (await records()).length === 0, { timeoutMs: 4 * TIMEOUT_S * 1000 + 10_000, intervalMs: 500, what: 'no record of a refused endpoint' }).catch(
      async () => assert.deepEqual(await records(), [], 'endpoint records of refused CreateEndpoints'),
    );
  } finally {
    await store.close();
  }

  // The store is back: the same requests succeed, and the first endpoint still works.
  const again = await createEndpoint(endpointId(1), 10);
  assert.equal(again.status, 200, JSON.stringify(again.body));
  assert.equal((await join(endpointId(1))).status, 200);
  assert.equal((await join(FIRST)).status, 200);
  assert.ok(daemon.running(), 'daemon still running');
  await sleep(10);
});
