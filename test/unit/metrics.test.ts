/**
 * Metrics: the registry's families (parsed with a Prometheus text-format parser), the server
 * hook that counts plugin requests, /metrics and /healthz on the plugin socket and on the
 * optional TCP listener, and the --metrics-address option.
 */
import assert from 'node:assert/strict';
import fs from 'node:fs';
import http from 'node:http';
import type { AddressInfo } from 'node:net';
import type net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { after, test } from 'node:test';
import parsePrometheusTextFormat from 'parse-prometheus-text-format';
import { z } from 'zod';
import { parseConfig, parseListenAddress } from '../../src/config';
import { silentLogger } from '../../src/log';
import { Metrics, healthHandler, listenStatus, networkLabel, triggerLabel } from '../../src/metrics';
import { createApp, listenUnix, route } from '../../src/protocol/server';
import { PluginError } from '../../src/util/errors';

const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'tso-metrics-'));
const closers: (() => Promise<void>)[] = [];
after(async () => {
  for (const c of closers.reverse()) await c();
  fs.rmSync(dir, { recursive: true, force: true });
});

function request(options: http.RequestOptions, body?: string): Promise<{ status: number; type: string; body: string }> {
  return new Promise((resolve, reject) => {
    const req = http.request(options, (res) => {
      let data = '';
      res.on('data', (c: Buffer) => (data += c.toString()));
      res.on('end', () => resolve({ status: res.statusCode ?? 0, type: String(res.headers['content-type']), body: data }));
    });
    req.on('error', reject);
    req.end(body);
  });
}

function sample(text: string, name: string, labels: Record<string, string> = {}): number | undefined {
  const family = parsePrometheusTextFormat(text).find((f) => f.name === name);
  const m = family?.metrics.find((x) => 'value' in x && Object.entries(labels).every(([k, v]) => x.labels?.[k] === v));
  return m && 'value' in m ? Number(m.value) : undefined;
}

test('every family is exposed from the start and moves with what is observed', async () => {
  const m = new Metrics({ processMetrics: false });
  const empty = await m.registry.metrics();
  const names = parsePrometheusTextFormat(empty).map((f) => f.name);
  for (const n of [
    'tsoverlay_plugin_requests_total',
    'tsoverlay_plugin_request_errors_total',
    'tsoverlay_plugin_request_duration_seconds',
    'tsoverlay_peers_programmed',
    'tsoverlay_peer_changes_total',
    'tsoverlay_reconcile_runs_total',
    'tsoverlay_reconcile_repairs_total',
    'tsoverlay_store_watch_resets_total',
    'tsoverlay_store_watch_reconnects_total',
    'tsoverlay_store_watch_errors_total',
    'tsoverlay_vxlan_misses_total',
    'tsoverlay_store_watch_events_total',
  ]) {
    assert.ok(names.includes(n), `${n} missing`);
  }
  assert.equal(sample(empty, 'tsoverlay_store_watch_reconnects_total', { watch: 'endpoints' }), 0);

  m.observeRequest('NetworkDriver.Join', 200, 0.004);
  m.observeRequest('NetworkDriver.Join', 404, 0.002);
  m.peersProgrammed('0123456789abcdef', 7);
  m.peersChanged(7, 2);
  m.reconciled('periodic', 3);
  m.reconciled('endpoint watch reset', 0);
  m.watchReset('endpoints', false);
  m.watchReset('endpoints', true);
  m.watchError('hosts');
  m.miss('l3', 'answered');
  m.miss('l2', 'unknown');
  m.watchEvents('endpoints', 2, 5);
  m.watchEvents('endpoints', 0, 1);
  const text = await m.registry.metrics();
  assert.equal(sample(text, 'tsoverlay_plugin_requests_total', { method: 'NetworkDriver.Join', code: '200' }), 1);
  assert.equal(sample(text, 'tsoverlay_plugin_requests_total', { method: 'NetworkDriver.Join', code: '404' }), 1);
  assert.equal(sample(text, 'tsoverlay_plugin_request_errors_total', { method: 'NetworkDriver.Join' }), 1);
  assert.match(text, /^tsoverlay_plugin_request_duration_seconds_count\{method="NetworkDriver\.Join"\} 2$/m);
  assert.match(text, /^tsoverlay_plugin_request_duration_seconds_bucket\{le="0\.0025",method="NetworkDriver\.Join"\} 1$/m);
  assert.equal(sample(text, 'tsoverlay_peers_programmed', { network: '0123456789ab' }), 7);
  assert.equal(sample(text, 'tsoverlay_peer_changes_total', { op: 'add' }), 7);
  assert.equal(sample(text, 'tsoverlay_peer_changes_total', { op: 'remove' }), 2);
  assert.equal(sample(text, 'tsoverlay_reconcile_runs_total', { trigger: 'periodic' }), 1);
  assert.equal(sample(text, 'tsoverlay_reconcile_runs_total', { trigger: 'watch_reset' }), 1);
  assert.equal(sample(text, 'tsoverlay_reconcile_repairs_total', { trigger: 'periodic' }), 3);
  assert.equal(sample(text, 'tsoverlay_store_watch_resets_total', { watch: 'endpoints' }), 2);
  assert.equal(sample(text, 'tsoverlay_store_watch_reconnects_total', { watch: 'endpoints' }), 1);
  assert.equal(sample(text, 'tsoverlay_store_watch_errors_total', { watch: 'hosts' }), 1);
  assert.equal(sample(text, 'tsoverlay_vxlan_misses_total', { kind: 'l3', outcome: 'answered' }), 1);
  assert.equal(sample(text, 'tsoverlay_store_watch_events_total', { watch: 'endpoints', network: 'used' }), 2);
  assert.equal(sample(text, 'tsoverlay_store_watch_events_total', { watch: 'endpoints', network: 'unused' }), 6);
  assert.equal(networkLabel('0123456789abcdef'), '0123456789ab');
  assert.equal(triggerLabel('host watch reset'), 'watch_reset');
  assert.equal(triggerLabel('network active'), 'network_active');
  assert.equal(triggerLabel('something new'), 'other');
});

test('the plugin socket serves /metrics and /healthz; every plugin request is counted with its status', async () => {
  const m = new Metrics();
  let healthy = true;
  const health = healthHandler(() => ({ status: healthy ? 'ok' : 'degraded', host: 'h', store: 'local:///x', uptimeSeconds: 1, problems: healthy ? [] : ['store watch endpoints: down'] }));
  const app = createApp(
    {
      'Test.Ok': route(z.unknown(), async () => ({})),
      'Test.Missing': route(z.unknown(), async () => {
        throw new PluginError('no such thing', 404);
      }),
      'Test.Strict': route(z.object({ Name: z.string() }), async () => ({})),
    },
    silentLogger(),
    { onRequest: (method, status, seconds) => m.observeRequest(method, status, seconds), get: { '/metrics': m.metricsHandler, '/healthz': health } },
  );
  const socketPath = path.join(dir, 'plugin.sock');
  const server: net.Server = await listenUnix(app, socketPath);
  closers.push(() => new Promise((r) => server.close(() => r())));

  assert.equal((await request({ socketPath, path: '/Test.Ok', method: 'POST' }, '{}')).status, 200);
  assert.equal((await request({ socketPath, path: '/Test.Ok', method: 'POST' }, '')).status, 200);
  assert.equal((await request({ socketPath, path: '/Test.Missing', method: 'POST' }, '{}')).status, 404);
  assert.equal((await request({ socketPath, path: '/Test.Strict', method: 'POST' }, '{}')).status, 400);
  assert.equal((await request({ socketPath, path: '/Test.Unknown', method: 'POST' }, '{}')).status, 404);

  const r = await request({ socketPath, path: '/metrics', method: 'GET' });
  assert.equal(r.status, 200);
  assert.match(r.type, /^text\/plain; version=0\.0\.4/);
  assert.equal(sample(r.body, 'tsoverlay_plugin_requests_total', { method: 'Test.Ok', code: '200' }), 2);
  assert.equal(sample(r.body, 'tsoverlay_plugin_requests_total', { method: 'Test.Missing', code: '404' }), 1);
  assert.equal(sample(r.body, 'tsoverlay_plugin_request_errors_total', { method: 'Test.Strict' }), 1);
  assert.equal(sample(r.body, 'tsoverlay_plugin_requests_total', { method: 'Test.Unknown' }), undefined, 'unknown methods are not labels');
  assert.ok(parsePrometheusTextFormat(r.body).some((f) => f.name === 'process_resident_memory_bytes'), 'process metrics');

  const h = await request({ socketPath, path: '/healthz', method: 'GET' });
  assert.equal(h.status, 200);
  assert.equal((JSON.parse(h.body) as { status: string }).status, 'ok');
  healthy = false;
  const sick = await request({ socketPath, path: '/healthz', method: 'GET' });
  assert.equal(sick.status, 503);
  assert.deepEqual((JSON.parse(sick.body) as { problems: string[] }).problems, ['store watch endpoints: down']);
});

test('the TCP listener serves only the status paths', async () => {
  const m = new Metrics({ processMetrics: false });
  const server = await listenStatus({ host: '127.0.0.1', port: 0 }, { '/metrics': m.metricsHandler }, silentLogger());
  closers.push(() => new Promise((r) => server.close(() => r())));
  const port = (server.address() as AddressInfo).port;
  const r = await request({ host: '127.0.0.1', port, path: '/metrics', method: 'GET' });
  assert.equal(r.status, 200);
  assert.ok(parsePrometheusTextFormat(r.body).length > 5);
  assert.equal((await request({ host: '127.0.0.1', port, path: '/NetworkDriver.Join', method: 'POST' }, '{}')).status, 404);
  assert.equal((await request({ host: '127.0.0.1', port, path: '/metrics', method: 'POST' }, '')).status, 405);
});

test('--metrics-address: off by default, host:port when given', () => {
  assert.equal(parseConfig([], {}).metricsAddress, undefined);
  assert.deepEqual(parseConfig(['--metrics-address', '127.0.0.1:9323'], {}).metricsAddress, { host: '127.0.0.1', port: 9323 });
  assert.deepEqual(parseConfig([], { TSOVERLAY_METRICS_ADDRESS: '[::1]:9000' }).metricsAddress, { host: '::1', port: 9000 });
  assert.deepEqual(parseListenAddress('localhost:1'), { host: 'localhost', port: 1 });
  for (const bad of [':9323', '9323', '127.0.0.1', '127.0.0.1:0', '127.0.0.1:70000', 'a b:1']) {
    assert.throws(() => parseListenAddress(bad), /invalid address/, bad);
  }
});
