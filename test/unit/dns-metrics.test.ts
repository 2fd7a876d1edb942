/**
 * The DNS counters as /metrics shows them: the label children the metrics bind once per value
 * must count into the same series a labels object would, for every counter and value.
 */
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { Registry } from 'prom-client';
import { DnsMetrics } from '../../src/dns/metrics';

async function series(registry: Registry): Promise<Map<string, number>> {
  const out = new Map<string, number>();
  for (const m of await registry.getMetricsAsJSON()) {
    for (const v of m.values) out.set(`${m.name}${JSON.stringify(v.labels)}`, v.value);
  }
  return out;
}

test('queries, answers, forwards and failures count per label value', async () => {
  const registry = new Registry();
  const m = new DnsMetrics(registry);
  for (let i = 0; i < 3; i++) m.query('udp');
  m.query('tcp');
  m.answer('NOERROR');
  m.answer('NOERROR');
  m.answer('NXDOMAIN');
  m.forward(true);
  m.forward(false);
  m.failure('dropped_short');
  const s = await series(registry);
  assert.equal(s.get('tsoverlay_dns_queries_total{"transport":"udp"}'), 3);
  assert.equal(s.get('tsoverlay_dns_queries_total{"transport":"tcp"}'), 1);
  assert.equal(s.get('tsoverlay_dns_answers_total{"rcode":"NOERROR"}'), 2);
  assert.equal(s.get('tsoverlay_dns_answers_total{"rcode":"NXDOMAIN"}'), 1);
  assert.equal(s.get('tsoverlay_dns_forwards_total{"outcome":"answered"}'), 1);
  assert.equal(s.get('tsoverlay_dns_forwards_total{"outcome":"failed"}'), 1);
  assert.equal(s.get('tsoverlay_dns_failures_total{"reason":"dropped_short"}'), 1);
});

test('two registries (two daemons in one process, as tests run them) keep separate counts', async () => {
  const a = new Registry();
  const b = new Registry();
  const ma = new DnsMetrics(a);
  const mb = new DnsMetrics(b);
  ma.query('udp');
  ma.query('udp');
  mb.query('udp');
  assert.equal((await series(a)).get('tsoverlay_dns_queries_total{"transport":"udp"}'), 2);
  assert.equal((await series(b)).get('tsoverlay_dns_queries_total{"transport":"udp"}'), 1);
});
