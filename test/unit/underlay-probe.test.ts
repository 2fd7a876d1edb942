/**
 * Underlay liveness: the probe protocol on real UDP sockets on loopback, and the policy that
 * keeps a host the store dropped while it answers.
 */
import assert from 'node:assert/strict';
import dgram from 'node:dgram';
import { after, test } from 'node:test';
import { UnderlayProbe, type ProbeTarget } from '../../src/dataplane/underlay-probe';
import { HostLiveness } from '../../src/driver/host-liveness';
import type { HostRecord } from '../../src/driver/records';
import { silentLogger } from '../../src/log';

const closers: (() => void)[] = [];
after(() => {
  for (const c of closers.reverse()) c();
});

const fast = { attempts: 2, timeoutMs: 150 };

/** Two daemons' probe sockets: each answers and asks on its one port. */
async function pair(name = 'h1', instance = 'i-1'): Promise<{ responder: UnderlayProbe; prober: UnderlayProbe }> {
  const responder = await UnderlayProbe.listen('127.0.0.1', 0, () => ({ name, instance }), silentLogger());
  const prober = await UnderlayProbe.listen('127.0.0.1', 0, () => ({ name: 'asker', instance: 'i-asker' }), silentLogger());
  closers.push(() => responder.close(), () => prober.close());
  return { responder, prober };
}

test('a live daemon answers as itself', async () => {
  const { responder, prober } = await pair();
  assert.equal(await prober.probe({ name: 'h1', vtep: '127.0.0.1', instance: 'i-1' }, responder.port, fast), true);
  // Records of older versions carry no instance: the name alone must match.
  assert.equal(await prober.probe({ name: 'h1', vtep: '127.0.0.1' }, responder.port, fast), true);
});

test('another name or another instance at that address is not the host', async () => {
  const { responder, prober } = await pair('h1', 'i-1');
  assert.equal(await prober.probe({ name: 'h2', vtep: '127.0.0.1' }, responder.port, fast), false);
  assert.equal(await prober.probe({ name: 'h1', vtep: '127.0.0.1', instance: 'i-clone' }, responder.port, fast), false);
});

test('no daemon, no answer: false after the attempts, not a hang', async () => {
  const { responder, prober } = await pair();
  const port = responder.port;
  responder.close();
  const t0 = Date.now();
  assert.equal(await prober.probe({ name: 'h1', vtep: '127.0.0.1' }, port, fast), false);
  assert.ok(Date.now() - t0 < 2_000);
});

test('both ways on one socket each: the asker answers too', async () => {
  const { responder, prober } = await pair('h1', 'i-1');
  assert.equal(await responder.probe({ name: 'asker', vtep: '127.0.0.1', instance: 'i-asker' }, prober.port, fast), true);
  assert.equal(await prober.probe({ name: 'h1', vtep: '127.0.0.1', instance: 'i-1' }, responder.port, fast), true);
});

test('junk and oversized datagrams are ignored and the responder keeps answering', async () => {
  const { responder, prober } = await pair();
  const junk = dgram.createSocket('udp4');
  closers.push(() => junk.close());
  const send = (b: Buffer) => new Promise<void>((resolve) => junk.send(b, responder.port, '127.0.0.1', () => resolve()));
  await send(Buffer.from('not json'));
  await send(Buffer.from('{"p":"tsoverlay-probe/1","n":"x","to":"h1"}')); // nonce too short
  await send(Buffer.from(JSON.stringify({ p: 'tsoverlay-probe/1', n: 'a'.repeat(16), to: 'h1', extra: 'x'.repeat(600) })));
  await send(Buffer.alloc(0));
  assert.equal(await prober.probe({ name: 'h1', vtep: '127.0.0.1' }, responder.port, fast), true);
});

function host(name: string): HostRecord {
  return { name, vtep: '192.0.2.1', instance: `i-${name}`, started: new Date().toISOString() };
}

test('liveness: a host that does not answer is dead at once; one that answers stays until it stops', async () => {
  const answering = new Set<string>(['alive']);
  const probed: ProbeTarget[] = [];
  const dead: string[] = [];
  const liveness = new HostLiveness(
    async (t) => {
      probed.push(t);
      return answering.has(t.name);
    },
    (name) => dead.push(name),
    silentLogger(),
    { intervalMs: 30, attempts: 1, timeoutMs: 10 },
  );
  closers.push(() => liveness.close());
  liveness.suspect(host('gone'));
  liveness.suspect(host('alive'));
  await new Promise((r) => setTimeout(r, 100));
  assert.deepEqual(dead, ['gone']);
  assert.deepEqual(liveness.suspected(), ['alive']);
  assert.ok(probed.filter((t) => t.name === 'alive').length >= 2, 'a live suspect is probed again');
  assert.equal(probed[0]!.instance, 'i-gone');
  answering.delete('alive');
  await new Promise((r) => setTimeout(r, 100));
  assert.deepEqual(dead, ['gone', 'alive']);
  assert.deepEqual(liveness.suspected(), []);
});

test('liveness: a host registered again is no longer probed and never declared dead', async () => {
  let answers = true;
  const dead: string[] = [];
  let probes = 0;
  const liveness = new HostLiveness(
    async () => {
      probes++;
      return answers;
    },
    (name) => dead.push(name),
    silentLogger(),
    { intervalMs: 20, attempts: 1, timeoutMs: 10 },
  );
  closers.push(() => liveness.close());
  liveness.suspect(host('h'));
  await new Promise((r) => setTimeout(r, 50));
  liveness.cleared('h');
  const seen = probes;
  answers = false;
  await new Promise((r) => setTimeout(r, 80));
  assert.equal(probes, seen);
  assert.deepEqual(dead, []);
  assert.equal(liveness.isSuspect('h'), false);
});
