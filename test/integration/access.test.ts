/**
 * Issue "Resilience", item 7: who can talk to the plugin, and how it talks to its store.
 *
 * - The plugin socket is root's with mode 0600; with --socket-group, mode 0660 to that group.
 * - The process listens on no TCP or UDP port unless told to (--metrics-address, the one TCP
 *   listener there is, serves as the positive control of the check).
 * - etcd with TLS client certificates and user/password authentication, configured through
 *   flags and variables (--etcd-ca/--etcd-cert/--etcd-key, --etcd-user, TSOVERLAY_ETCD_PASSWORD
 *   or --etcd-password-file), against a real etcd with TLS and auth on; a wrong password stops
 *   the plugin at start with a clear message.
 * - No secret ever appears in the plugin's log, its errors or its command line.
 *
 * The plugin runs in a test host namespace of a one-host underlay, where etcd is reachable on
 * the underlay gateway (its certificate names that address).
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

const PASSWORD = 'S3cr3t-etcd-pa55word';
let underlay: Underlay;
let etcd: EtcdServer;
let dir = '';
let runs = 0;

interface Started {
  proc: ManagedProcess;
  socket: string;
  logFile: string;
}

function startPlugin(args: readonly string[], env: NodeJS.ProcessEnv = {}): Started {
  const n = ++runs;
  const socket = path.join(dir, `p${n}.sock`);
  const logFile = path.join(dir, `p${n}.log`);
  const h = underlay.hosts[0]!;
  const proc = spawnTracked(
    [
      'nsenter', `--net=${h.netnsPath}`, '--', 'unshare', '-m', '--propagation', 'private', '--',
      process.execPath, PLUGIN_MAIN, 'serve', '--socket', socket, '--netns-dir', path.join(dir, `netns${n}`), '--host-name', `access${n}`, '--state-dir', path.join(dir, `id${n}`),
      '--log-level', 'debug', ...args,
    ],
    { name: `tsoverlay-${n}`, logFile, env: { ...process.env, ...env } },
  );
  return { proc, socket, logFile };
}

function call(socket: string, method: string, body: unknown): Promise<{ status: number; body: Record<string, unknown> }> {
  return new Promise((resolve, reject) => {
    const req = http.request({ socketPath: socket, path: `/${method}`, method: 'POST' }, (res) => {
      let text = '';
      res.on('data', (c: Buffer) => (text += c.toString()));
      res.on('end', () => resolve({ status: res.statusCode ?? 0, body: JSON.parse(text) as Record<string, unknown> }));
    });
    req.on('error', reject);
    req.end(JSON.stringify(body));
  });
}

/** TCP/UDP sockets of the process that listen (TCP LISTEN, or any bound UDP socket). */
function listeners(pid: number): string[] {
  const inodes = new Set<string>();
  for (const fd of fs.readdirSync(`/proc/${pid}/fd`)) {
    try {
      const link = fs.readlinkSync(`/proc/${pid}/fd/${fd}`);
      if (link.startsWith('socket:[')) inodes.add(link.slice(8, -1));
    } catch {
      /* closed meanwhile */
    }
  }
  const out: string[] = [];
  for (const proto of ['tcp', 'tcp6', 'udp', 'udp6']) {
    const lines = fs.readFileSync(`/proc/${pid}/net/${proto}`, 'utf8').trim().split('\n').slice(1);
    for (const line of lines) {
      const f = line.trim().split(/\s+/);
      const listening = proto.startsWith('udp') || f[3] === '0A';
      if (listening && inodes.has(f[9]!)) out.push(`${proto} ${f[1]}`);
    }
  }
  return out;
}

/** Every secret must stay out of the log, the process output and the command line. */
function assertNoSecrets(s: Started, secrets: readonly string[]): void {
  const log = fs.existsSync(s.logFile) ? fs.readFileSync(s.logFile, 'utf8') : '';
  for (const secret of secrets) {
    assert.ok(!log.includes(secret), `secret found in ${s.logFile}`);
    assert.ok(!s.proc.output().includes(secret), 'secret found in the process output');
    assert.ok(!s.proc.argv.join(' ').includes(secret), 'secret on the command line');
  }
}

before(async () => {
  if (skip) return;
  dir = path.join(runDir(), 'access');
  fs.mkdirSync(dir, { recursive: true });
  underlay = await createUnderlay({ hosts: 1 });
  etcd = await startEtcd({ tls: true, rootPassword: PASSWORD, alsoListenOn: underlay.gateway });
});

after(async () => {
  if (skip) return;
  await etcd?.stop();
  await underlay?.teardown();
});

test('socket: root-only 0600 by default, 0660 to --socket-group; no TCP/UDP listener unless configured (the embedded store has no peers to probe)', { skip, timeout: 60_000 }, async () => {
  const plain = startPlugin(['--store', `local://${dir}/state1`]);
  await plain.proc.waitForOutput('tsoverlay serving', 20_000);
  const st = fs.statSync(plain.socket);
  assert.ok(st.isSocket());
  assert.equal(st.mode & 0o777, 0o600, `mode ${(st.mode & 0o777).toString(8)}`);
  assert.equal(st.uid, 0);
  assert.equal(st.gid, 0);
  assert.deepEqual(listeners(plain.proc.pid), [], 'no network listener');
  assert.equal((await call(plain.socket, 'Plugin.Activate', {})).status, 200);
  await plain.proc.stop();

  // A group by name (looked up in /etc/group), and the metrics listener as the control.
  const group = fs
    .readFileSync('/etc/group', 'utf8')
    .split('\n')
    .map((l) => l.split(':'))
    .find((f) => f.length >= 3 && Number(f[2]) > 0 && /^[a-z_][a-z0-9_-]*$/.test(f[0]!));
  assert.ok(group, 'a non-root group in /etc/group');
  const grouped = startPlugin(['--store', `local://${dir}/state2`, '--socket-group', group[0]!, '--metrics-address', '127.0.0.1:19323']);
  await grouped.proc.waitForOutput('tsoverlay serving', 20_000);
  const gs = fs.statSync(grouped.socket);
  assert.equal(gs.mode & 0o777, 0o660, `mode ${(gs.mode & 0o777).toString(8)}`);
  assert.equal(gs.gid, Number(group[2]));
  assert.deepEqual(listeners(grouped.proc.pid), [`tcp 0100007F:${(19323).toString(16).toUpperCase()}`], 'exactly the configured 127.0.0.1:19323');
  await grouped.proc.stop();

  const badGroup = startPlugin(['--store', `local://${dir}/state3`, '--socket-group', 'no-such-group-xyz']);
  const exit = await badGroup.proc.exited;
  assert.equal(exit.code, 1);
  assert.match(badGroup.proc.output(), /--socket-group "no-such-group-xyz": no such group/);
});

test('etcd with TLS client certificates and user/password, from flags, a variable or a file; secrets never logged', { skip, timeout: 90_000 }, async () => {
  const endpoint = etcd.endpoints.find((e) => e.startsWith(underlay.gateway))!;
  const pki = etcd.pki!;
  const tlsArgs = ['--store', `etcds://${endpoint}`, '--etcd-ca', pki.caFile, '--etcd-cert', pki.certFile, '--etcd-key', pki.keyFile, '--etcd-user', 'root'];

  // Password from the environment (as a managed plugin's settings are).
  const viaEnv = startPlugin(tlsArgs, { TSOVERLAY_ETCD_PASSWORD: PASSWORD });
  await viaEnv.proc.waitForOutput('tsoverlay serving', 30_000);
  // With a cluster store there are peers, and exactly one socket answers (and sends) their
  // liveness probes: on the VTEP address, nowhere else.
  const vtepHex = underlay.hosts[0]!.address.split('.').map((o) => Number(o).toString(16).padStart(2, '0')).reverse().join('').toUpperCase();
  assert.deepEqual(listeners(viaEnv.proc.pid), [`udp ${vtepHex}:1F0B`], 'only the probe socket, on the VTEP address, UDP 7947');
  const pool = await call(viaEnv.socket, 'IpamDriver.RequestPool', { AddressSpace: 'tsoverlay-global', Pool: '10.66.0.0/24', Options: {}, V6: false });
  assert.equal(pool.status, 200, JSON.stringify(pool.body));
  const addr = await call(viaEnv.socket, 'IpamDriver.RequestAddress', { PoolID: '10.66.0.0/24', Address: '', Options: {} });
  assert.deepEqual(addr.body, { Address: '10.66.0.1/24', Data: {} });
  const keys = await etcd.etcdctl('get', '--prefix', '--keys-only', 'tsoverlay/v1/');
  assert.match(keys, /tsoverlay\/v1\/ipam\/addresses\/10\.66\.0\.0-24\/10\.66\.0\.1/);
  assert.match(keys, /tsoverlay\/v1\/hosts\/access\d+/, 'registered under its lease');
  assertNoSecrets(viaEnv, [PASSWORD]);
  await viaEnv.proc.stop();

  // Password from a file.
  const file = path.join(dir, 'etcd-password');
  fs.writeFileSync(file, `${PASSWORD}\n`, { mode: 0o600 });
  const viaFile = startPlugin([...tlsArgs, '--etcd-password-file', file]);
  await viaFile.proc.waitForOutput('tsoverlay serving', 30_000);
  assert.equal((await call(viaFile.socket, 'IpamDriver.RequestAddress', { PoolID: '10.66.0.0/24', Address: '', Options: {} })).status, 200);
  assertNoSecrets(viaFile, [PASSWORD]);
  await viaFile.proc.stop();

  // A wrong password: a clear error at start, without the password in it.
  const wrong = `${PASSWORD}-wrong`;
  const bad = startPlugin(tlsArgs, { TSOVERLAY_ETCD_PASSWORD: wrong });
  const exit = await Promise.race([bad.proc.exited, new Promise<undefined>((r) => setTimeout(() => r(undefined), 30_000).unref())]);
  assert.ok(exit && exit.code === 1, `exits on bad credentials: ${bad.proc.output().slice(-800)}`);
  assert.match(bad.proc.output(), /authentication failed|invalid user ID or password/i);
  assertNoSecrets(bad, [wrong, PASSWORD]);

  // Without a client certificate etcd refuses the TLS handshake: the plugin keeps its socket up
  // and answers with an error naming the store (it retries in the background).
  const noCert = startPlugin(['--store', `etcds://${endpoint}`, '--etcd-ca', pki.caFile, '--etcd-user', 'root'], { TSOVERLAY_ETCD_PASSWORD: PASSWORD });
  await noCert.proc.waitForOutput('store unreachable at start', 30_000);
  const refused = await call(noCert.socket, 'IpamDriver.ReleasePool', { PoolID: '10.66.0.0/24' });
  assert.equal(refused.status, 503);
  assert.match(String(refused.body.Err), /still starting: the store \(etcds:\/\/.*\) is not reachable/);
  assertNoSecrets(noCert, [PASSWORD]);
  await noCert.proc.stop();
});
