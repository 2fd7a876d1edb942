import { canonicalIPv6 } from '../dataplane/encode';
import type { Miss } from '../dataplane/peers';
import type { Peer } from '../dataplane/types';
import type { Logger } from '../log';
import { errorMessage } from '../util/errors';

/** What the miss responder needs from the kernel side (src/dataplane: Dataplane.watchMisses). */
export interface MissDataplane {
  watchMisses(networkId: string, onMiss: (m: Miss) => void): Promise<() => void>;
}

export type MissOutcome = 'answered' | 'unknown' | 'failed';

/** Answers one miss (peer-sync: look the peer up in the store's view, program it). */
export type MissAnswer = (networkId: string, miss: Miss) => Promise<MissOutcome>;

/**
 * The desired peers of a network indexed the two ways the kernel asks: by IP (L3: an ARP request's
 * IPv4 address or a Neighbor Solicitation's IPv6 target, in the canonical form the miss carries)
 * and by MAC (L2).
 */
export interface PeerIndex {
  byIp: Map<string, Peer>;
  byMac: Map<string, Peer>;
}

export function indexPeers(peers: readonly Peer[]): PeerIndex {
  const byIp = new Map<string, Peer>();
  const byMac = new Map<string, Peer>();
  for (const p of peers) {
    if (p.ip) byIp.set(p.ip, p);
    if (p.ip6) byIp.set(canonicalIPv6(p.ip6), p);
    byMac.set(p.mac.toLowerCase(), p);
  }
  return { byIp, byMac };
}

/** The peer a miss asks for, if the store knows it. */
export function lookupMiss(index: PeerIndex, miss: Miss): Peer | undefined {
  return miss.kind === 'l3' ? index.byIp.get(miss.ip) : index.byMac.get(miss.mac.toLowerCase());
}

/** Stable text of what a miss asks for (dedupe key, logs). */
export function missSubject(miss: Miss): string {
  return miss.kind === 'l3' ? `l3 ${miss.ip}` : `l2 ${miss.mac}`;
}

/**
 * `-o mode=miss`: nothing is pre-programmed. vxlan0 is created with l2miss/l3miss, so the
 * kernel reports every ARP request it cannot proxy (L3MISS: no neighbour for the IP) and
 * every frame it has no FDB entry for (L2MISS: no VTEP for the MAC) as RTM_GETNEIGH on the
 * neighbour multicast group inside the overlay namespace. This module keeps one such
 * listener per active miss-mode network and hands each request to `answer` (peer-sync looks
 * the peer up in its in-memory view of the store and programs that one neighbour + FDB pair).
 *
 * The kernel repeats a miss on the next packet, so a request that is already being answered
 * is dropped rather than queued, and one that failed is simply answered again next time.
 */
export class MissResponder {
  private readonly stops = new Map<string, () => void>();
  private readonly starting = new Map<string, Promise<void>>();
  /** Identity of the start in progress per network: unwatch() during a start cancels it. */
  private readonly startTokens = new Map<string, object>();
  private readonly inflight = new Set<string>();
  private closed = false;

  constructor(
    private readonly dataplane: MissDataplane,
    private readonly answer: MissAnswer,
    private readonly logger: Logger,
  ) {}

  watching(networkId: string): boolean {
    return this.stops.has(networkId);
  }

  /** Starts listening for the network's misses (no-op when already listening). */
  async watch(networkId: string): Promise<void> {
    if (this.closed || this.stops.has(networkId)) return;
    const pending = this.starting.get(networkId);
    if (pending) return pending;
    const token = {};
    this.startTokens.set(networkId, token);
    const start = (async () => {
      const stop = await this.dataplane.watchMisses(networkId, (m) => this.onMiss(networkId, m));
      if (this.closed || this.startTokens.get(networkId) !== token) {
        stop();
        return;
      }
      this.stops.set(networkId, stop);
      this.logger.info('listening for vxlan misses', { networkId });
    })();
    this.starting.set(networkId, start);
    try {
      await start;
    } finally {
      if (this.starting.get(networkId) === start) this.starting.delete(networkId);
      if (this.startTokens.get(networkId) === token) this.startTokens.delete(networkId);
    }
  }

  unwatch(networkId: string): void {
    this.starting.delete(networkId);
    this.startTokens.delete(networkId);
    const stop = this.stops.get(networkId);
    if (!stop) return;
    this.stops.delete(networkId);
    stop();
  }

  close(): void {
    this.closed = true;
    for (const id of [...this.stops.keys()]) this.unwatch(id);
  }

  private onMiss(networkId: string, miss: Miss): void {
    const key = `${networkId}|${missSubject(miss)}`;
    if (this.closed || this.inflight.has(key)) return;
    this.inflight.add(key);
    this.answer(networkId, miss)
      .catch((err: unknown) => {
        this.logger.warn('answering a vxlan miss failed', { networkId, miss: missSubject(miss), error: errorMessage(err) });
        return 'failed' as const;
      })
      .finally(() => this.inflight.delete(key));
  }
}
