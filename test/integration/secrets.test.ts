/**
 * No part of a store password leaves the daemon: a real daemon given `etcds://root:<password>@…`
 * (a password with "@", "/", ":", "#", ",", "?", "=") against a real etcd with TLS and
 * authentication, then with a wrong password, then with the store unreachable. In each case
 * its whole log, its output, its replies, `/metrics` and `/healthz` are searched for every
 * 3-character piece of the password.
 *
 * The store URL is given through TSOVERLAY_STORE here; given as `--store` it shows in `ps`
 * (docs/install.md says so and offers --etcd-password-file instead).
 */
import assert from 'node:assert/strict';
import fs from 'node:fs';
import http from 'node:http';
import path from 'node:path';
import { after, before, test } from 'node:test';
import { startEtcd, type EtcdServer } from '../helpers/etcd';
import { createUnderlay, type Underlay } from '../helpers/hosts';
import { PLUGIN_MAIN } from '../helpers/plugin';
import { cleanupAfter, runDir, spawnTracked, type ManagedProcess } from '../helpers/proc';

const skip =
  process.getuid?.() !== 0 ? 'needs root' : !fs.existsSync('/usr/bin/etcd') ? '/usr/bin/etcd missing (apt-get install etcd-server)' : false;
cleanupAfter();

const PASSWORD = 'Xq@zV/wo:K#7@jY,?=';
const WRONG = 'Gm@tB/hu:R#4@nW,?=';
let underlay: Underlay;
let etcd: EtcdServer;
let dir = '';
let runs = 0;

interface Daemon {
  proc: ManagedProcess;
  socket: string;
  logFile: string;
  /** Everything it said back: replies, /metrics, /healthz. */
  seen: string[];
}

function start(store: string): Daemon {
  const n = ++runs;
  const socket = path.join(dir, `s${n}.sock`);
  const logFile = path.join(dir, `s${n}.log`);
  const pki = etcd.pki!;
  const proc = spawnTracked(
    [
      'nsenter', `--net=${underlay.hosts[0]!.netnsPath}`, '--', 'unshare', '-m', '--propagation', 'private', '--',
      process.execPath, PLUGIN_MAIN, 'serve', '--socket', socket, '--netns-dir', path.join(dir, `netns${n}`),
      '--host-name', `secrets${n}`, '--state-dir', path.join(dir, `id${n}`), '--log-level', 'debug', '--store-timeout', '3',
      '--etcd-ca', pki.caFile, '--etcd-cert', pki.certFile, '--etcd-key', pki.keyFile,
    ],
    { name: `tsoverlay-secrets-${n}`, logFile, env: { ...process.env, TSOVERLAY_STORE: store } },
  );
  return { proc, socket, logFile, seen: [] };
}

function request(d: Daemon, method: 'GET' | 'POST', target: string, body?: unknown): Promise<{ status: number; text: string }> {
  return new Promise((resolve, reject) => {
    const req = http.request({ socketPath: d.socket, path: target, method, agent: false }, (res) => {
      let text = '';
      res.on('data', (c: Buffer) => (text += c.toString()));
      res.on('end', () => {
        d.seen.push(text);
        resolve({ status: res.statusCode ?? 0, text });
      });
    });
    req.on('error', reject);
    req.end(body === undefined ? undefined : JSON.stringify(body));
  });
}

function pieces(secret: string): string[] {
  const out = new Set<string>();
  for (let i = 0; i + 3 <= secret.length; i++) for (let j = i + 3; j <= secret.length; j++) out.add(secret.slice(i, j));
  return [...out];
}

function assertClean(d: Daemon, secrets: readonly string[]): void {
  const texts: Array<[string, string]> = [
    ['log file', fs.existsSync(d.logFile) ? fs.readFileSync(d.logFile, 'utf8') : ''],
    ['output', d.proc.output()],
    ...d.seen.map((t, i): [string, string] => [`reply ${i}`, t]),
  ];
  for (const secret of secrets) {
    for (const [where, text] of texts) {
      for (const p of pieces(secret)) assert.ok(!text.includes(p), `"${p}" of a password in the ${where}`);
    }
  }
}

before(async () => {
  if (skip) return;
  dir = path.join(runDir(), 'secrets');
  fs.mkdirSync(dir, { recursive: true });
  underlay = await createUnderlay({ hosts: 1 });
  etcd = await startEtcd({ tls: true, rootPassword: PASSWORD, alsoListenOn: underlay.gateway });
});

after(async () => {
  if (skip) return;
  await etcd?.stop();
  await underlay?.teardown();
});

test('password in the etcd URL: works, and no piece of it in the log, replies, /metrics or /healthz', { skip, timeout: 120_000 }, async () => {
  const endpoint = etcd.endpoints.find((e) => e.startsWith(underlay.gateway))!;
  const d = start(`etcds://root:${PASSWORD}@${endpoint}`);
  await d.proc.waitForOutput('tsoverlay serving', 30_000);
  const pool = await request(d, 'POST', '/IpamDriver.RequestPool', { AddressSpace: 'tsoverlay-global', Pool: '10.67.0.0/24', Options: {}, V6: false });
  assert.equal(pool.status, 200, pool.text);
  const addr = await request(d, 'POST', '/IpamDriver.RequestAddress', { PoolID: '10.67.0.0/24', Address: '', Options: {} });
  assert.equal(addr.status, 200, addr.text);
  const bad = await request(d, 'POST', '/IpamDriver.RequestAddress', { PoolID: '10.99.0.0/24', Address: '', Options: {} });
  assert.notEqual(bad.status, 200, 'an error reply is searched too');
  const metrics = await request(d, 'GET', '/metrics');
  assert.match(metrics.text, /tsoverlay_/);
  const health = await request(d, 'GET', '/healthz');
  assert.match(health.text, /"status":"ok"/);
  assert.match(health.text, new RegExp(`etcds://${endpoint.replace(/\./g, '\\.')}`), 'the store is named without its credentials');
  await d.proc.stop();
  assertClean(d, [PASSWORD]);
});

test('a wrong password in the URL: a clear error at start, quoting no piece of either password', { skip, timeout: 90_000 }, async () => {
  const endpoint = etcd.endpoints.find((e) => e.startsWith(underlay.gateway))!;
  const d = start(`etcds://root:${WRONG}@${endpoint}`);
  const exit = await Promise.race([d.proc.exited, new Promise<undefined>((r) => setTimeout(() => r(undefined), 40_000).unref())]);
  assert.ok(exit && exit.code === 1, `exits on bad credentials: ${d.proc.output().slice(-800)}`);
  assert.match(d.proc.output(), /authentication failed|invalid user ID or password/i);
  assertClean(d, [WRONG, PASSWORD]);
});

test('store unreachable, password in the URL: degraded /healthz, 503 replies, no piece of it anywhere', { skip, timeout: 90_000 }, async () => {
  const d = start(`etcds://root:${PASSWORD}@${underlay.gateway}:1`);
  await d.proc.waitForOutput('store unreachable at start', 30_000);
  const refused = await request(d, 'POST', '/IpamDriver.ReleasePool', { PoolID: '10.67.0.0/24' });
  assert.equal(refused.status, 503, refused.text);
  assert.match(refused.text, /not reachable/);
  const health = await request(d, 'GET', '/healthz');
  assert.doesNotMatch(health.text, /"status":"ok"/);
  await request(d, 'GET', '/metrics');
  await d.proc.stop();
  assertClean(d, [PASSWORD]);
});
