import type { ProbeTarget } from '../dataplane/underlay-probe';
import type { Logger } from '../log';
import { errorMessage } from '../util/errors';
import type { HostRecord } from './records';

export interface LivenessOptions {
  /** How often a host the store has dropped is probed again while it keeps answering. */
  intervalMs: number;
  /** Tries per check, each waiting `timeoutMs` for the answer; all must fail for the host to be dead. */
  attempts: number;
  timeoutMs: number;
}

export const DEFAULT_LIVENESS: LivenessOptions = { intervalMs: 2_000, attempts: 3, timeoutMs: 1_000 };

interface Suspect {
  record: HostRecord;
  timer?: NodeJS.Timeout;
  stopped: boolean;
}

/**
 * Decides when a host whose store registration vanished is really gone. The registration hangs
 * on a lease, and a lease also expires when the host merely lost the store (a partition, a store
 * outage longer than the TTL); withdrawing its containers then would cut traffic between
 * containers that can still reach each other. So a vanished host is probed over the underlay
 * first, and stays a peer for as long as its daemon answers there.
 */
export class HostLiveness {
  private readonly suspects = new Map<string, Suspect>();
  private closed = false;

  constructor(
    private readonly probe: (target: ProbeTarget) => Promise<boolean>,
    private readonly onDead: (name: string) => void,
    private readonly logger: Logger,
    private readonly options: LivenessOptions = DEFAULT_LIVENESS,
  ) {}

  /** The store no longer lists `record`'s host: keep it while it answers, `onDead` once it does not. */
  suspect(record: HostRecord): void {
    if (this.closed || this.suspects.has(record.name)) return;
    const s: Suspect = { record, stopped: false };
    this.suspects.set(record.name, s);
    void this.check(s, true);
  }

  /** The host is registered again: the store decides again. */
  cleared(name: string): void {
    const s = this.suspects.get(name);
    if (!s) return;
    this.stop(s);
    this.logger.info('host registered in the store again', { host: name });
  }

  isSuspect(name: string): boolean {
    return this.suspects.has(name);
  }

  /** Hosts the store has dropped but that still answer on the underlay (for /healthz and inspect). */
  suspected(): string[] {
    return [...this.suspects.keys()];
  }

  close(): void {
    this.closed = true;
    for (const s of this.suspects.values()) this.stop(s);
  }

  private stop(s: Suspect): void {
    s.stopped = true;
    if (s.timer) clearTimeout(s.timer);
    this.suspects.delete(s.record.name);
  }

  private async check(s: Suspect, first: boolean): Promise<void> {
    const { name, vtep } = s.record;
    let alive: boolean;
    try {
      alive = await this.probe({ name, vtep, ...(s.record.instance ? { instance: s.record.instance } : {}) });
    } catch (err) {
      this.logger.warn('underlay probe failed', { host: name, vtep, error: errorMessage(err) });
      alive = false;
    }
    if (s.stopped || this.closed) return;
    if (!alive) {
      this.stop(s);
      this.logger.info(first ? 'host gone: its registration expired and it does not answer on the underlay' : 'host stopped answering on the underlay', { host: name, vtep });
      this.onDead(name);
      return;
    }
    if (first) {
      this.logger.warn('host lost its store registration but answers on the underlay: keeping its containers as peers', { host: name, vtep });
    }
    s.timer = setTimeout(() => void this.check(s, false), this.options.intervalMs);
    s.timer.unref();
  }
}
