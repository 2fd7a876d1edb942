/** Prometheus counters of the DNS listeners, registered in the daemon's registry. */
import { Counter, type Registry } from 'prom-client';
import type { DnsObserver, Transport } from './types';

export class DnsMetrics implements DnsObserver {
  private readonly queries: Counter<'transport'>;
  private readonly answers: Counter<'rcode'>;
  private readonly forwards: Counter<'outcome'>;
  private readonly failures: Counter<'reason'>;

  /** Label children bound once: a query costs a map lookup, not hashing a labels object. */
  private readonly children = new Map<Counter<string>, Map<string, { inc(n?: number): void }>>();

  private child(counter: Counter<string>, value: string): { inc(n?: number): void } {
    let byValue = this.children.get(counter);
    if (!byValue) this.children.set(counter, (byValue = new Map()));
    let c = byValue.get(value);
    if (!c) byValue.set(value, (c = counter.labels(value)));
    return c;
  }

  constructor(registry: Registry) {
    const registers = [registry];
    this.queries = new Counter({ name: 'tsoverlay_dns_queries_total', help: 'DNS queries received by the network DNS listeners, by transport.', labelNames: ['transport'], registers });
    this.answers = new Counter({ name: 'tsoverlay_dns_answers_total', help: "DNS replies sent from the networks' own names, by response code.", labelNames: ['rcode'], registers });
    this.forwards = new Counter({ name: 'tsoverlay_dns_forwards_total', help: "DNS queries forwarded to the host's resolvers, by outcome (answered, failed: SERVFAIL sent).", labelNames: ['outcome'], registers });
    this.failures = new Counter({ name: 'tsoverlay_dns_failures_total', help: 'DNS messages dropped, replies not sent and listeners that could not start, by reason.', labelNames: ['reason'], registers });
  }

  query(transport: Transport, count = 1): void {
    this.child(this.queries, transport).inc(count);
  }
  answer(rcode: string): void {
    this.child(this.answers, rcode).inc();
  }
  forward(ok: boolean): void {
    this.forwards.inc({ outcome: ok ? 'answered' : 'failed' });
  }
  failure(reason: string): void {
    this.failures.inc({ reason });
  }
}
