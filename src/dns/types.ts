/**
 * What the DNS server needs to know about one network's names. The names module
 * (src/names) implements it from the store; tests implement it with a plain map.
 */

export interface Addresses {
  v4: readonly string[];
  /** Answered as AAAA: dual-stack and IPv6-only containers' IPv6 addresses (RFC 5952 form). */
  v6: readonly string[];
}

export interface ZoneView {
  /**
   * `name` is lower case without the trailing dot. `undefined`: the name is not in the
   * network's zone (the server forwards it); `null`: in the zone but unknown (NXDOMAIN).
   */
  lookupName(name: string): Addresses | null | undefined;
  /** Reverse lookup of an address, same convention: names (without trailing dot), null, undefined. */
  lookupAddress(ip: string): readonly string[] | null | undefined;
  /** Changes whenever any answer could change: the server's answer cache is keyed by it. */
  readonly generation: number;
}

export type Transport = 'udp' | 'tcp';

/** Counters the server reports into (src/metrics.ts). */
export interface DnsObserver {
  /** `count` queries received (a batch of datagrams: udp-batch.ts). */
  query(transport: Transport, count?: number): void;
  /** A reply sent from the network's own names, by response code (NOERROR, NXDOMAIN, FORMERR…). */
  answer(rcode: string): void;
  /** A query passed to an upstream resolver; `ok` false when no upstream answered. */
  forward(ok: boolean): void;
  /** A query dropped or a reply that could not be sent, by reason. */
  failure(reason: string): void;
}

export const noopDnsObserver: DnsObserver = {
  query: () => undefined,
  answer: () => undefined,
  forward: () => undefined,
  failure: () => undefined,
};
