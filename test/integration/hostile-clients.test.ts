/**
 * Bounded resources under hostile clients on the plugin socket (a real daemon, its real socket):
 *
 * - 300 connections that each send ~1 MB of a declared 1 MB body and then stall are all cut
 *   within the request deadline (most at once with 503: they would pass the budget for large
 *   bodies; the rest with 408 when the deadline passes), while ordinary requests keep being
 *   answered meanwhile;
 * - once they are gone, the daemon's resident memory is within 64 MB of its baseline (bounded by
 *   its limits, not by the 300 MB sent);
 * - connections beyond the cap are closed as they arrive, idle ones when the header deadline
 *   passes, and the socket serves normally afterwards.
 *
 * The daemon runs as deployed (src/node-flags.ts), with an embedded store, in a one-host
 * underlay namespace; RSS is read from /proc/<pid>/status.
 */
import assert from 'node:assert/strict';
import fs from 'node:fs';
import http from 'node:http';
import net from 'node:net';
import path from 'node:path';
import { after, before, test } from 'node:test';
import { NODE_FLAGS } from '../../src/node-flags';
import { MAX_BODY_BYTES, SERVER_LIMITS } from '../../src/protocol/server';
import { createUnderlay, type Underlay } from '../helpers/hosts';
import { PLUGIN_MAIN } from '../helpers/plugin';
import { cleanupAfter, runDir, sleep, spawnTracked, type ManagedProcess } from '../helpers/proc';

const skip = process.getuid?.() !== 0 ? 'needs root' : false;
cleanupAfter();

let underlay: Underlay;
let dir = '';
let daemon: ManagedProcess;
let socket = '';

function rssKb(pid: number): number {
  const m = /VmRSS:\s+(\d+) kB/.exec(fs.readFileSync(`/proc/${pid}/status`, 'utf8'));
  if (!m) throw new Error(`no VmRSS for ${pid}`);
  return Number(m[1]);
}

function call(method: string, body: unknown, timeoutMs = 5_000): Promise<{ status: number; ms: number }> {
  const started = Date.now();
  return new Promise((resolve, reject) => {
    const req = http.request({ socketPath: socket, path: `/${method}`, method: 'POST', agent: false, timeout: timeoutMs }, (res) => {
      res.resume();
      res.on('end', () => resolve({ status: res.statusCode ?? 0, ms: Date.now() - started }));
    });
    req.on('timeout', () => req.destroy(new Error(`${method}: no answer within ${timeoutMs} ms`)));
    req.on('error', reject);
    req.end(JSON.stringify(body));
  });
}

interface Hostile {
  closedAt?: number;
  status?: number;
}

/** Opens a connection, sends headers for a `declared`-byte body and `send` bytes of it, then stalls. */
function hostile(body: Buffer, declared: number, results: Hostile[]): net.Socket {
  const h: Hostile = {};
  results.push(h);
  const s = net.connect(socket);
  s.on('error', () => undefined); // reset by the server: what is being tested
  let head = '';
  s.on('data', (c: Buffer) => {
    head += c.toString('latin1');
    const m = /^HTTP\/1\.1 (\d{3})/.exec(head);
    if (m && h.status === undefined) h.status = Number(m[1]);
  });
  s.on('close', () => (h.closedAt = Date.now()));
  s.write(`POST /IpamDriver.RequestPool HTTP/1.1\r\nHost: plugin\r\nContent-Length: ${declared}\r\n\r\n`);
  s.write(body);
  return s;
}

before(async () => {
  if (skip) return;
  dir = path.join(runDir(), 'hostile');
  fs.mkdirSync(dir, { recursive: true });
  underlay = await createUnderlay({ hosts: 1 });
  socket = path.join(dir, 'p.sock');
  daemon = spawnTracked(
    [
      'nsenter', `--net=${underlay.hosts[0]!.netnsPath}`, '--', 'unshare', '-m', '--propagation', 'private', '--',
      process.execPath, ...NODE_FLAGS, PLUGIN_MAIN, 'serve', '--socket', socket, '--netns-dir', path.join(dir, 'netns'),
      '--store', `local://${dir}/state`, '--host-name', 'hostile1', '--state-dir', path.join(dir, 'id'), '--log-level', 'info',
    ],
    { name: 'tsoverlay-hostile', logFile: path.join(dir, 'daemon.log') },
  );
  await daemon.waitForOutput('tsoverlay serving', 30_000);
  assert.match(fs.readFileSync(`/proc/${daemon.pid}/cmdline`, 'utf8'), /main\.js/, 'the tracked pid is the daemon itself');
});

after(async () => {
  if (skip) return;
  await daemon?.stop();
  await underlay?.teardown();
});

/** What the daemon may keep after the attack: well below the 300 MB sent, above the allocator's reuse. */
const RETAINED_BOUND_KB = 64 * 1024;

test('300 stalled ~1 MB bodies: cut within the deadline, normal requests answered, RSS back near baseline', { skip, timeout: 180_000 }, async () => {
  // Baseline: warmed up by ordinary requests, then settled.
  for (let i = 0; i < 200; i++) assert.equal((await call('IpamDriver.GetDefaultAddressSpaces', {})).status, 200);
  await sleep(3_000);
  const baseline = rssKb(daemon.pid);

  const body = Buffer.alloc(1_000_000, 0x61);
  const results: Hostile[] = [];
  const sockets: net.Socket[] = [];
  const started = Date.now();
  for (let i = 0; i < 300; i++) sockets.push(hostile(body, MAX_BODY_BYTES, results));

  // Ordinary requests while they stall.
  const latencies: number[] = [];
  let peak = baseline;
  while (results.some((r) => r.closedAt === undefined) && Date.now() - started < SERVER_LIMITS.requestTimeoutMs + 10_000) {
    const r = await call('Plugin.Activate', {});
    assert.equal(r.status, 200, 'ordinary requests are answered meanwhile');
    latencies.push(r.ms);
    peak = Math.max(peak, rssKb(daemon.pid));
    await sleep(200);
  }
  const open = results.filter((r) => r.closedAt === undefined).length;
  for (const s of sockets) s.destroy();
  assert.equal(open, 0, `${open} hostile connections still open after ${Date.now() - started} ms`);
  const lastClose = Math.max(...results.map((r) => r.closedAt! - started));
  const rejected = results.filter((r) => r.status === 503).length;
  const timedOut = results.filter((r) => r.status === 408).length;
  assert.ok(lastClose <= SERVER_LIMITS.requestTimeoutMs + SERVER_LIMITS.checkIntervalMs + 2_000, `last hostile connection cut after ${lastClose} ms`);
  assert.ok(rejected >= 300 - SERVER_LIMITS.largeBodyBudgetBytes / MAX_BODY_BYTES, `${rejected} answered 503 at once`);
  assert.ok(latencies.length >= 5 && Math.max(...latencies) < 2_000, `normal request latencies ${JSON.stringify(latencies)}`);

  // After they went away, what the daemon holds is bounded by its limits, not by what the clients
  // sent (300 MB): the connection cap's socket reads plus the large-body budget, part of which the
  // allocator keeps for reuse (no GC is forced: the daemon runs as deployed).
  const bound = baseline + RETAINED_BOUND_KB;
  let after = rssKb(daemon.pid);
  const waitStarted = Date.now();
  while (after > bound && Date.now() - waitStarted < 60_000) {
    await call('IpamDriver.GetDefaultAddressSpaces', {});
    await sleep(1_000);
    after = rssKb(daemon.pid);
  }
  const figures = {
    baselineMb: +(baseline / 1024).toFixed(1),
    peakMb: +(peak / 1024).toFixed(1),
    afterMb: +(after / 1024).toFixed(1),
    settleMs: Date.now() - waitStarted,
    rejected503: rejected,
    timedOut408: timedOut,
    lastCutMs: lastClose,
    normalMaxMs: Math.max(...latencies),
  };
  console.log(`hostile-clients figures: ${JSON.stringify(figures)}`);
  assert.ok(after <= bound, `RSS ${figures.afterMb} MB vs baseline ${figures.baselineMb} MB (bound: baseline + ${RETAINED_BOUND_KB / 1024} MB)`);
});

test('connections beyond the cap are closed at once, idle ones at the header deadline; the socket then serves', { skip, timeout: 120_000 }, async () => {
  const extra = 40;
  const closedAt: Array<number | undefined> = [];
  const sockets: net.Socket[] = [];
  const started = Date.now();
  for (let i = 0; i < SERVER_LIMITS.maxConnections + extra; i++) {
    const s = net.connect(socket);
    const k = closedAt.push(undefined) - 1;
    s.on('error', () => undefined);
    s.on('close', () => (closedAt[k] = Date.now() - started));
    sockets.push(s);
  }
  await sleep(2_000);
  const early = closedAt.filter((t) => t !== undefined).length;
  assert.ok(early >= extra, `${early} connections closed at once (cap ${SERVER_LIMITS.maxConnections})`);
  const deadline = SERVER_LIMITS.headersTimeoutMs + SERVER_LIMITS.checkIntervalMs + 3_000;
  while (closedAt.some((t) => t === undefined) && Date.now() - started < deadline + 5_000) await sleep(250);
  for (const s of sockets) s.destroy();
  const open = closedAt.filter((t) => t === undefined).length;
  assert.equal(open, 0, `${open} idle connections still open`);
  const last = Math.max(...closedAt.map((t) => t ?? Infinity));
  assert.ok(last <= deadline, `last idle connection closed after ${last} ms`);
  console.log(`connection-cap figures: ${JSON.stringify({ closedAtOnce: early, lastIdleCutMs: last })}`);
  assert.equal((await call('Plugin.Activate', {})).status, 200);
});
