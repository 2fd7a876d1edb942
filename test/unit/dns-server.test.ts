/**
 * The DNS server on loopback sockets: UDP and TCP answers, truncation then TCP fallback,
 * forwarding to an upstream (a second server of ours with other names), SERVFAIL when no
 * upstream answers, resolv.conf parsing, queries queued together (answered in batches, each
 * reply to its own query), and hostile traffic on both transports.
 */
import assert from 'node:assert/strict';
import dgram from 'node:dgram';
import fs from 'node:fs';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { after, before, test } from 'node:test';
import * as packet from 'dns-packet';
import { silentLogger } from '../../src/log';
import { DnsServer } from '../../src/dns/server';
import { Forwarder, hostResolvers, parseResolvConf, parseUpstreams } from '../../src/dns/upstream';
import { MapView, query, rcodeOf, tcpAsk, udpAsk } from '../helpers/dns';
import { prng, seedFromEnv } from '../helpers/resilience';

const logger = silentLogger();
const view = new MapView('demo', '10.20.0.');
const upstreamView = new MapView('outside.test', '192.0.2.');
let server: DnsServer;
let upstream: DnsServer;
let forwarder: Forwarder;
let port = 0;
const counts = { query: 0, answer: 0, forward: 0, forwardFailed: 0, failure: 0 };
const failures: string[] = [];

before(async () => {
  view.set('web', ['10.20.0.2']);
  view.set('crowd', Array.from({ length: 120 }, (_, i) => `10.20.0.${i + 10}`));
  upstreamView.set('www', ['192.0.2.80']);
  // The upstream answers only `*.outside.test`; everything else would be forwarded by it to nobody.
  upstream = await DnsServer.start({ address: '127.0.0.1', port: 0 }, { view: dotted(upstreamView), logger });
  forwarder = new Forwarder({ upstreams: () => [{ address: '127.0.0.1', port: upstream.address().port }], timeoutMs: 500 });
  server = await DnsServer.start(
    { address: '127.0.0.1', port: 0 },
    {
      view,
      forwarder,
      logger,
      observer: {
        query: (_transport, n = 1) => (counts.query += n),
        answer: () => counts.answer++,
        forward: (ok) => (ok ? counts.forward++ : counts.forwardFailed++),
        failure: (reason) => {
          counts.failure++;
          failures.push(reason);
        },
      },
    },
  );
  port = server.address().port;
});

after(async () => {
  await server?.close();
  await upstream?.close();
  forwarder?.close();
});

/** The upstream's view: `<name>.outside.test` only (single labels are not its zone). */
function dotted(v: MapView): MapView {
  return Object.assign(Object.create(v) as MapView, {
    lookupName: (name: string) => (name.endsWith('.outside.test') ? v.lookupName(name.slice(0, -'.outside.test'.length)) : undefined),
  });
}

test('answers over UDP and TCP on the same port', async () => {
  const u = await udpAsk(port, query('web'));
  assert.ok(u);
  assert.deepEqual(packet.decode(u).answers?.map((a) => (a as { data: string }).data), ['10.20.0.2']);
  const [t] = await tcpAsk(port, [query('web')]);
  assert.ok(t);
  assert.deepEqual(packet.decode(t).answers?.map((a) => (a as { data: string }).data), ['10.20.0.2']);
  const nx = await udpAsk(port, query('nobody'));
  assert.equal(nx && rcodeOf(nx), 3);
});

test('a truncated UDP answer is complete over TCP; several queries pipelined on one connection', async () => {
  const u = await udpAsk(port, query('crowd'));
  assert.ok(u);
  assert.equal(packet.decode(u).flag_tc, true);
  const replies = await tcpAsk(port, [query('crowd'), query('web'), query('nobody')]);
  assert.equal(replies.length, 3);
  assert.equal(packet.decode(replies[0]!).answers?.length, 120);
  assert.equal(rcodeOf(replies[2]!), 3);
});

test('names outside the zone go to the upstream (UDP and TCP); ids are the client\'s', async () => {
  const q = query('www.outside.test');
  const u = await udpAsk(port, q);
  assert.ok(u);
  assert.equal(u.readUInt16BE(0), q.readUInt16BE(0));
  assert.deepEqual(packet.decode(u).answers?.map((a) => (a as { data: string }).data), ['192.0.2.80']);
  const [t] = await tcpAsk(port, [query('www.outside.test')]);
  assert.ok(t);
  assert.deepEqual(packet.decode(t).answers?.map((a) => (a as { data: string }).data), ['192.0.2.80']);
  const nx = await udpAsk(port, query('gone.outside.test'));
  assert.equal(nx && rcodeOf(nx), 3, 'the upstream\'s NXDOMAIN is relayed');
  assert.ok(counts.forward >= 3);
});

test('queries queued together are answered together, each reply to its own query', async () => {
  // Sent in one turn of the event loop, they wait on the server's socket: node delivers the
  // first, the server takes the rest in batches (udp-batch.ts). A mix of every kind of answer.
  for (let i = 0; i < 40; i++) view.set(`b${i}`, [`10.20.0.${100 + i}`]);
  const asked = new Map<number, { name: string; want: string[] | 'NXDOMAIN' }>();
  for (let i = 0; i < 120; i++) {
    const kind = i % 4;
    const name = kind === 0 ? 'web' : kind === 1 ? `b${i % 40}` : kind === 2 ? `nobody${i}` : 'www.outside.test';
    const want = kind === 0 ? ['10.20.0.2'] : kind === 1 ? [`10.20.0.${100 + (i % 40)}`] : kind === 2 ? 'NXDOMAIN' : ['192.0.2.80'];
    asked.set(i, { name, want });
  }
  const queriesBefore = counts.query;
  const sock = dgram.createSocket('udp4');
  const replies = new Map<number, Buffer>();
  const done = new Promise<void>((resolve) => {
    sock.on('message', (m) => {
      replies.set(m.readUInt16BE(0), m);
      if (replies.size === asked.size) resolve();
    });
  });
  await new Promise<void>((resolve) => sock.bind(0, '127.0.0.1', () => resolve()));
  sock.send(Buffer.alloc(5000, 1), port, '127.0.0.1'); // bigger than any query: dropped, the rest answered
  for (const [id, { name }] of asked) sock.send(query(name, 'A', { id }), port, '127.0.0.1');
  await Promise.race([done, new Promise((resolve) => setTimeout(resolve, 3000))]);
  sock.close();
  assert.equal(replies.size, asked.size, 'every query has its reply');
  for (const [id, { name, want }] of asked) {
    const r = packet.decode(replies.get(id)!);
    assert.equal(r.questions?.[0]?.name, name, `reply ${id} answers its own question`);
    if (want === 'NXDOMAIN') assert.equal(rcodeOf(replies.get(id)!), 3, `${name}: NXDOMAIN`);
    else assert.deepEqual(r.answers?.map((a) => (a as { data: string }).data), want, `${name}: its address`);
  }
  assert.equal(counts.query - queriesBefore, asked.size + 1, 'every datagram counted once');
  assert.ok(failures.includes('dropped_oversized'), 'the oversized datagram is dropped and counted');
});

test('no upstream answering: SERVFAIL, in bounded time', async () => {
  const dead = dgram.createSocket('udp4');
  await new Promise<void>((r) => dead.bind(0, '127.0.0.1', () => r()));
  const silent = new Forwarder({ upstreams: () => [{ address: '127.0.0.1', port: dead.address().port }], timeoutMs: 300 });
  const s = await DnsServer.start({ address: '127.0.0.1', port: 0 }, { view, forwarder: silent, logger });
  try {
    const t0 = Date.now();
    const r = await udpAsk(s.address().port, query('example.org'));
    assert.equal(r && rcodeOf(r), 2);
    assert.ok(Date.now() - t0 < 1500);
  } finally {
    await s.close();
    silent.close();
    dead.close();
  }
});

test('an answer cached for one view generation is not served after the view changes', async () => {
  const q = query('later');
  assert.equal(rcodeOf((await udpAsk(port, q))!), 3);
  view.set('later', ['10.20.0.77']);
  const r = await udpAsk(port, q);
  assert.deepEqual(packet.decode(r!).answers?.map((a) => (a as { data: string }).data), ['10.20.0.77']);
  view.delete('later');
  assert.equal(rcodeOf((await udpAsk(port, q))!), 3);
});

test('resolv.conf: nameservers in order, Docker\'s 127.0.0.11 skipped, systemd-resolved stub replaced by its upstreams', () => {
  assert.deepEqual(
    parseResolvConf('# comment\nsearch example.com\nnameserver 127.0.0.11\nnameserver 10.0.0.2 # x\nnameserver bogus\nnameserver 2001:db8::1\nnameserver 10.0.0.2\nnameserver 10.0.0.3\nnameserver 10.0.0.4\n'),
    [
      { address: '10.0.0.2', port: 53 },
      { address: '2001:db8::1', port: 53 },
      { address: '10.0.0.3', port: 53 },
    ],
  );
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'tso-resolv-'));
  try {
    fs.writeFileSync(path.join(dir, 'stub'), 'nameserver 127.0.0.53\noptions edns0\n');
    fs.writeFileSync(path.join(dir, 'real'), 'nameserver 192.0.2.53\n');
    assert.deepEqual(hostResolvers(path.join(dir, 'stub'), path.join(dir, 'real')), [{ address: '192.0.2.53', port: 53 }]);
    assert.deepEqual(hostResolvers(path.join(dir, 'stub'), path.join(dir, 'absent')), [{ address: '127.0.0.53', port: 53 }]);
    assert.deepEqual(hostResolvers(path.join(dir, 'absent')), []);
  } finally {
    fs.rmSync(dir, { recursive: true, force: true });
  }
  assert.deepEqual(parseUpstreams('10.0.0.1, 10.0.0.2:5353,[2001:db8::1]:53'), [
    { address: '10.0.0.1', port: 53 },
    { address: '10.0.0.2', port: 5353 },
    { address: '2001:db8::1', port: 53 },
  ]);
  assert.throws(() => parseUpstreams('dns.example.com'), /not an IP address/);
  assert.throws(() => parseUpstreams('10.0.0.1:99999'), /invalid port/);
});

test('hostile traffic on both transports: the server keeps answering', async () => {
  const rnd = prng(seedFromEnv());
  const sock = dgram.createSocket('udp4');
  for (let i = 0; i < 2000; i++) {
    const len = Math.floor(rnd() * 600);
    const msg = Buffer.from(Array.from({ length: len }, () => Math.floor(rnd() * 256)));
    if (len >= 3 && rnd() < 0.7) msg[2] = msg[2]! & 0x7f; // mostly "queries"
    sock.send(msg, port, '127.0.0.1');
  }
  // TCP: a length prefix promising more than is sent, garbage frames, a half-open connection.
  const bad = [
    Buffer.from([0xff, 0xff, 1, 2, 3]),
    Buffer.from([0x00, 0x03, 1, 2, 3, 0x00, 0x00]),
    Buffer.from(Array.from({ length: 3000 }, () => Math.floor(rnd() * 256))),
  ];
  await Promise.all(
    bad.map(
      (b) =>
        new Promise<void>((resolve) => {
          const c = net.connect({ host: '127.0.0.1', port }, () => c.end(b));
          c.on('error', () => resolve());
          c.on('close', () => resolve());
          c.resume();
        }),
    ),
  );
  sock.close();
  const r = await udpAsk(port, query('web'));
  assert.ok(r, 'still answering UDP');
  const [t] = await tcpAsk(port, [query('web')]);
  assert.ok(t, 'still answering TCP');
  assert.ok(counts.failure > 0, 'drops are counted');
});
