/**
 * The per-call store deadline: an answer that reached the process before the deadline timer
 * could run is not thrown away as "no answer" (the plugin starved of CPU case), and the
 * deadline is a daemon setting.
 */
import assert from 'node:assert/strict';
import net from 'node:net';
import { test } from 'node:test';
import { parseConfig } from '../../src/config';
import { StoreUnavailableError } from '../../src/store/store';
import { DEFAULT_TIMEOUT_MS, withDeadline } from '../../src/store/util';

function blockThread(ms: number): void {
  const end = Date.now() + ms;
  while (Date.now() < end) {
    /* the event loop cannot run: what arrives meanwhile waits in the socket */
  }
}

test('an answer already in the socket when the expired deadline runs wins', async () => {
  const server = net.createServer((s) => s.end('answer'));
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  try {
    const { port } = server.address() as net.AddressInfo;
    const socket = net.connect(port, '127.0.0.1');
    await new Promise<void>((resolve) => socket.once('connect', resolve));
    const answer = new Promise<string>((resolve) => socket.once('data', (b: Buffer) => resolve(b.toString())));
    const call = withDeadline(answer, 30, () => 'get k');
    // The server answers at once; the thread is busy well past the deadline meanwhile.
    blockThread(150);
    assert.equal(await call, 'answer');
    socket.destroy();
  } finally {
    server.close();
  }
});

test('no answer at all: StoreUnavailableError naming the call, outcome unknown', async () => {
  const started = Date.now();
  await assert.rejects(withDeadline(new Promise<never>(() => undefined), 40, () => 'put k'), (err: unknown) => {
    assert.ok(err instanceof StoreUnavailableError);
    assert.match(err.message, /^put k: no answer within 40 ms \(outcome unknown\)$/);
    return true;
  });
  assert.ok(Date.now() - started >= 39);
});

test('a failure before the deadline is passed through unchanged', async () => {
  const boom = new Error('refused');
  await assert.rejects(withDeadline(Promise.reject(boom), 1000, () => 'get k'), (err: unknown) => err === boom);
});

test('--store-timeout / TSOVERLAY_STORE_TIMEOUT: default above etcd’s own 7 s request timeout, range checked', () => {
  assert.equal(parseConfig([], {}).storeTimeoutSeconds * 1000, DEFAULT_TIMEOUT_MS);
  assert.ok(DEFAULT_TIMEOUT_MS > 7000);
  assert.equal(parseConfig(['--store-timeout', '2.5'], {}).storeTimeoutSeconds, 2.5);
  assert.equal(parseConfig([], { TSOVERLAY_STORE_TIMEOUT: '30' }).storeTimeoutSeconds, 30);
  assert.equal(parseConfig([], { TSOVERLAY_MANAGED: '1', STORE_TIMEOUT: '20' }).storeTimeoutSeconds, 20);
  for (const bad of ['0', '-1', '121', 'soon', '']) {
    assert.throws(() => parseConfig([`--store-timeout=${bad}`], {}), /invalid --store-timeout/);
  }
});
