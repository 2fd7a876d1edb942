/**
 * The per-call store deadline: an answer that reached the process before the deadline timer
 * could run is not thrown away as "no answer" (the plugin starved of CPU case), and the
 * deadline is a daemon setting.
 */
import assert from 'node:assert/strict';
import net from 'node:net';
import { test } from 'node:test';
import { Worker } from 'node:worker_threads';
import { parseConfig } from '../../src/config';
import { StoreUnavailableError } from '../../src/store/store';
import { DEFAULT_TIMEOUT_MS, withDeadline } from '../../src/store/util';
import { DEFAULT_REQUEST_TIMEOUT_MS } from '../../src/driver/request-deadline';

function blockThread(ms: number): void {
  const end = Date.now() + ms;
  while (Date.now() < end) {
    /* the event loop cannot run: what arrives meanwhile waits in the socket */
  }
}

test('an answer already in the socket when the expired deadline runs wins', async () => {
  // The answering side runs in a thread of its own, so that its answer arrives while this
  // thread is blocked: as when the plugin is starved of CPU and etcd's reply waits in the socket.
  const worker = new Worker(
    `const net = require('node:net');
     const { parentPort } = require('node:worker_threads');
     const server = net.createServer((s) => setTimeout(() => s.end('answer'), 20));
     server.listen(0, '127.0.0.1', () => parentPort.postMessage(server.address().port));`,
    { eval: true },
  );
  try {
    const port = await new Promise<number>((resolve) => worker.once('message', resolve));
    const socket = net.connect(port, '127.0.0.1');
    await new Promise<void>((resolve) => socket.once('connect', resolve));
    const answer = new Promise<string>((resolve) => socket.once('data', (b: Buffer) => resolve(b.toString())));
    const call = withDeadline(answer, 50, () => 'get k');
    blockThread(300);
    assert.equal(await call, 'answer');
    socket.destroy();
  } finally {
    await worker.terminate();
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

test('--request-timeout / TSOVERLAY_REQUEST_TIMEOUT: under Docker’s 30 s, never shorter than one store call', () => {
  assert.equal(parseConfig([], {}).requestTimeoutSeconds * 1000, DEFAULT_REQUEST_TIMEOUT_MS);
  assert.ok(DEFAULT_REQUEST_TIMEOUT_MS < 30_000 && DEFAULT_REQUEST_TIMEOUT_MS > DEFAULT_TIMEOUT_MS);
  // A longer store timeout carries the default with it: a request always has one whole store call.
  assert.equal(parseConfig(['--store-timeout', '60'], {}).requestTimeoutSeconds, 60);
  assert.equal(parseConfig(['--store-timeout', '3', '--request-timeout', '3'], {}).requestTimeoutSeconds, 3);
  assert.equal(parseConfig([], { TSOVERLAY_REQUEST_TIMEOUT: '15' }).requestTimeoutSeconds, 15);
  assert.equal(parseConfig([], { TSOVERLAY_MANAGED: '1', REQUEST_TIMEOUT: '20' }).requestTimeoutSeconds, 20);
  // The plugin's config.json leaves it empty: the default.
  assert.equal(parseConfig([], { TSOVERLAY_MANAGED: '1', REQUEST_TIMEOUT: '' }).requestTimeoutSeconds * 1000, DEFAULT_REQUEST_TIMEOUT_MS);
  for (const bad of ['0', '9', '121', 'soon']) {
    assert.throws(() => parseConfig([`--request-timeout=${bad}`], {}), /invalid --request-timeout "[^"]*" \(10\.\.120 seconds/);
  }
  assert.throws(() => parseConfig(['--store-timeout', '20', '--request-timeout', '15'], {}), /invalid --request-timeout "15" \(20\.\.120/);
});
