/**
 * DNS message handling: what the network's name server answers, how it refuses what it
 * cannot answer, and that no message — malformed, hostile or random — makes it throw.
 */
import assert from 'node:assert/strict';
import { test } from 'node:test';
import * as packet from 'dns-packet';
import { handleQuery, reverseAddress, UDP_DEFAULT_SIZE, UDP_MAX_SIZE } from '../../src/dns/message';
import { MapView, query, rcodeOf } from '../helpers/dns';
import type { ZoneView } from '../../src/dns/types';
import { prng, seedFromEnv } from '../helpers/resilience';

function dataOf(a: packet.Answer): unknown {
  return (a as { data?: unknown }).data;
}

function view(): MapView {
  const v = new MapView('demo', '10.20.0.');
  v.set('web', ['10.20.0.2']);
  v.set('api', ['10.20.0.3', '10.20.0.4']);
  return v;
}

function replyOf(msg: Buffer, transport: 'udp' | 'tcp' = 'udp', v: ZoneView = view()): packet.DecodedPacket & { rcode?: string } {
  const d = handleQuery(msg, v, transport);
  assert.equal(d.kind, 'reply', `expected a reply, got ${d.kind}`);
  if (d.kind !== 'reply') throw new Error('unreachable');
  const decoded = packet.decode(d.message) as packet.DecodedPacket & { rcode?: string };
  assert.equal(decoded.id, msg.readUInt16BE(0), 'the reply carries the query id');
  assert.equal(decoded.type, 'response');
  return decoded;
}

test('A record of a container name, several for a shared alias, case of the question kept', () => {
  const r = replyOf(query('Web'));
  assert.equal(r.rcode, 'NOERROR');
  assert.equal(r.flag_aa, true);
  assert.equal(r.questions?.[0]?.name, 'Web');
  assert.deepEqual(r.answers?.map((a) => [a.type, a.name, dataOf(a)]), [['A', 'Web', '10.20.0.2']]);
  const api = replyOf(query('api.demo.'));
  assert.deepEqual(api.answers?.map((a) => dataOf(a)).sort(), ['10.20.0.3', '10.20.0.4']);
  assert.ok(api.answers?.every((a) => a.type === 'A' && a.ttl === 0));
});

test('unknown names of the zone are NXDOMAIN without SOA; other names are forwarded', () => {
  const r = replyOf(query('nope'));
  assert.equal(r.rcode, 'NXDOMAIN');
  assert.equal(r.answers?.length, 0);
  assert.equal(r.authorities?.length, 0);
  assert.equal(replyOf(query('nope.demo')).rcode, 'NXDOMAIN');
  assert.deepEqual(handleQuery(query('example.com'), view(), 'udp'), { kind: 'forward' });
  assert.deepEqual(handleQuery(query('1.1.1.1.in-addr.arpa', 'PTR'), view(), 'udp'), { kind: 'forward' });
  assert.deepEqual(handleQuery(query('.', 'NS'), view(), 'udp'), { kind: 'forward' });
});

test('reverse lookups: PTR from the zone, NXDOMAIN for unknown addresses of the subnet', () => {
  const r = replyOf(query('2.0.20.10.in-addr.arpa', 'PTR'));
  assert.deepEqual(r.answers?.map((a) => [a.type, dataOf(a)]), [['PTR', 'web']]);
  assert.equal(replyOf(query('99.0.20.10.in-addr.arpa', 'PTR')).rcode, 'NXDOMAIN');
  assert.equal(reverseAddress('4.3.2.1.in-addr.arpa'), '1.2.3.4');
  assert.equal(reverseAddress('04.3.2.1.in-addr.arpa'), undefined);
  assert.equal(reverseAddress('256.3.2.1.in-addr.arpa'), undefined);
  assert.equal(reverseAddress('3.2.1.in-addr.arpa'), undefined);
  assert.equal(
    reverseAddress('1.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.8.b.d.0.1.0.0.2.ip6.arpa'),
    '2001:db8::1',
  );
});

test('other types of a known name: NOERROR without records (AAAA, MX, an unassigned type)', () => {
  for (const type of ['AAAA', 'MX', 'TXT', 'UNKNOWN_65280'] as packet.RecordType[]) {
    const r = replyOf(query('web', type));
    assert.equal(r.rcode, 'NOERROR', type);
    assert.equal(r.answers?.length, 0, type);
    assert.equal(r.questions?.[0]?.type, type, 'the question comes back as asked');
  }
  const any = replyOf(query('web', 'ANY' as packet.RecordType));
  assert.deepEqual(any.answers?.map((a) => a.type), ['A']);
});

test('malformed and unsupported messages: FORMERR, NOTIMP, REFUSED, or dropped', () => {
  const v = view();
  assert.deepEqual(handleQuery(Buffer.alloc(5), v, 'udp'), { kind: 'drop', reason: 'short' });
  const response = query('web');
  response.writeUInt16BE(response.readUInt16BE(2) | 0x8000, 2);
  assert.deepEqual(handleQuery(response, v, 'udp'), { kind: 'drop', reason: 'response' });

  const garbage = Buffer.concat([query('web').subarray(0, 12), Buffer.from([0xff, 0xff, 0xff])]);
  const g = handleQuery(garbage, v, 'udp');
  assert.equal(g.kind, 'reply');
  if (g.kind === 'reply') assert.equal(rcodeOf(g.message), 1);

  const two = packet.encode({ type: 'query', id: 7, questions: [{ type: 'A', name: 'web' }, { type: 'A', name: 'api' }] });
  const t = handleQuery(two, v, 'udp');
  assert.ok(t.kind === 'reply' && rcodeOf(t.message) === 1, 'two questions: FORMERR');
  const none = packet.encode({ type: 'query', id: 7, questions: [] });
  const n = handleQuery(none, v, 'udp');
  assert.ok(n.kind === 'reply' && rcodeOf(n.message) === 1, 'no question: FORMERR');

  const notify = query('web');
  notify.writeUInt16BE(notify.readUInt16BE(2) | (4 << 11), 2);
  const nt = handleQuery(notify, v, 'udp');
  assert.ok(nt.kind === 'reply' && rcodeOf(nt.message) === 4, 'opcode NOTIFY: NOTIMP');

  const chaos = packet.encode({ type: 'query', id: 9, questions: [{ type: 'TXT', name: 'web', class: 'CH' }] });
  const c = handleQuery(chaos, v, 'udp');
  assert.ok(c.kind === 'reply' && rcodeOf(c.message) === 5, 'class CH: REFUSED');
});

test('a reply too large for UDP is truncated with TC; over TCP it comes whole', () => {
  const v = view();
  const many = Array.from({ length: 200 }, (_, i) => `10.20.${Math.floor(i / 250)}.${(i % 250) + 1}`);
  v.set('crowd', many);
  const d = handleQuery(query('crowd'), v, 'udp');
  assert.ok(d.kind === 'reply');
  if (d.kind !== 'reply') return;
  assert.ok(d.message.length <= UDP_DEFAULT_SIZE, `${d.message.length} bytes fit in 512`);
  const r = packet.decode(d.message);
  assert.equal(r.flag_tc, true);
  assert.ok((r.answers?.length ?? 0) > 0 && (r.answers?.length ?? 0) < 200, 'whole records, as many as fit');

  const edns = handleQuery(query('crowd', 'A', { additionals: [{ type: 'OPT', name: '.', udpPayloadSize: 4096 } as packet.Answer] }), v, 'udp');
  assert.ok(edns.kind === 'reply' && edns.message.length <= UDP_MAX_SIZE && edns.message.length > UDP_DEFAULT_SIZE);
  if (edns.kind === 'reply') {
    const e = packet.decode(edns.message);
    assert.equal(e.flag_tc, true);
    assert.ok(e.additionals?.some((a) => a.type === 'OPT'), 'EDNS answered with EDNS');
  }

  const tcp = replyOf(query('crowd'), 'tcp', v);
  assert.equal(tcp.flag_tc, false);
  assert.equal(tcp.answers?.length, 200);
});

test('fuzz: random and mutated messages never throw; every reply is a decodable response with the query id', () => {
  const seed = seedFromEnv();
  const rnd = prng(seed);
  const v = view();
  const seeds = [
    query('web'),
    query('api.demo', 'ANY' as packet.RecordType),
    query('2.0.20.10.in-addr.arpa', 'PTR'),
    query('example.com', 'MX'),
    query('web', 'A', { additionals: [{ type: 'OPT', name: '.', udpPayloadSize: 1232 } as packet.Answer] }),
  ];
  const counts = { reply: 0, forward: 0, drop: 0 };
  const iterations = Number(process.env.TSO_FUZZ_DNS ?? 20_000);
  for (let i = 0; i < iterations; i++) {
    let msg: Buffer;
    const pick = rnd();
    if (pick < 0.2) {
      msg = Buffer.from(Array.from({ length: Math.floor(rnd() * 80) }, () => Math.floor(rnd() * 256)));
    } else {
      msg = Buffer.from(seeds[Math.floor(rnd() * seeds.length)]!);
      const flips = 1 + Math.floor(rnd() * 6);
      for (let f = 0; f < flips; f++) {
        const op = rnd();
        const at = Math.floor(rnd() * msg.length);
        if (op < 0.6) msg[at] = Math.floor(rnd() * 256);
        else if (op < 0.8) msg = msg.subarray(0, at);
        else msg = Buffer.concat([msg, Buffer.from([Math.floor(rnd() * 256), 0xc0, Math.floor(rnd() * 256)])]);
      }
      if (rnd() < 0.5 && msg.length >= 4) msg.writeUInt16BE(msg.readUInt16BE(2) & 0x7fff, 2);
    }
    let d;
    try {
      d = handleQuery(msg, v, rnd() < 0.5 ? 'udp' : 'tcp');
    } catch (err) {
      assert.fail(`seed ${seed}, iteration ${i}: threw ${(err as Error).message} on ${msg.toString('hex')}`);
    }
    counts[d.kind]++;
    if (d.kind === 'reply') {
      assert.equal(d.message.readUInt16BE(0), msg.readUInt16BE(0), `seed ${seed} #${i}: id`);
      assert.ok(d.message.readUInt16BE(2) & 0x8000, `seed ${seed} #${i}: QR set`);
      assert.doesNotThrow(() => packet.decode(d.message), `seed ${seed} #${i}: decodable reply to ${msg.toString('hex')}`);
    }
  }
  assert.ok(counts.reply > 0 && counts.drop > 0 && counts.forward > 0, JSON.stringify(counts));
});

test('IPv6: AAAA answers (A beside them for ANY), PTR under ip6.arpa in any nibble case', () => {
  const dual: ZoneView = {
    generation: 1,
    lookupName: (name) => (name === 'db' ? { v4: ['10.20.0.5'], v6: ['fd00:20::5'] } : name === 'v6only' ? { v4: [], v6: ['fd00:20::6'] } : null),
    lookupAddress: (ip) => (ip === 'fd00:20::5' ? ['db.demo'] : ip.startsWith('fd00:20:') ? null : undefined),
  };
  const aaaa = replyOf(query('db', 'AAAA'), 'udp', dual);
  assert.deepEqual(aaaa.answers?.map((a) => [a.type, dataOf(a)]), [['AAAA', 'fd00:20::5']]);
  const a = replyOf(query('v6only', 'A'), 'udp', dual);
  assert.equal(a.rcode, 'NOERROR', 'the name exists, without an IPv4 address');
  assert.equal(a.answers?.length, 0);
  const any = replyOf(query('db', 'ANY' as packet.RecordType), 'udp', dual);
  assert.deepEqual(any.answers?.map((x) => x.type).sort(), ['A', 'AAAA']);
  const nibbles = '5.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.2.0.0.0.0.d.f.ip6.arpa';
  assert.equal(reverseAddress(nibbles), 'fd00:20::5');
  const ptr = replyOf(query(nibbles, 'PTR'), 'udp', dual);
  assert.deepEqual(ptr.answers?.map((x) => [x.type, dataOf(x)]), [['PTR', 'db.demo']]);
  assert.equal(replyOf(query(nibbles.replace(/^5/, '9'), 'PTR'), 'udp', dual).rcode, 'NXDOMAIN');
});
