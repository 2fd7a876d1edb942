/**
 * A Consul lease: a session (`behavior: delete`, TTL at least CONSUL_MIN_TTL_SECONDS, lock-delay 0,
 * no health checks) renewed every TTL/2; lost only when Consul says the session is gone.
 */

import type { Logger } from '../log';
import type { Lease } from './store';
import { ConsulNotFoundError } from './consul-api';
import type { ConsulStore } from './consul';
import { LostSignal, errorMessage } from './util';

/** How long after a first "session not found" Consul is asked again before the session counts as lost. */
const NOT_FOUND_CONFIRM_MS = 2_000;

export class ConsulLease implements Lease {
  readonly lost: LostSignal;
  private timer: NodeJS.Timeout | undefined;
  private lastRenew = Date.now();
  private stopped = false;

  constructor(
    readonly store: ConsulStore,
    readonly id: string,
    readonly ttlSeconds: number,
    private readonly logger: Logger,
  ) {
    this.lost = new LostSignal(logger, `${store.description} session ${id}`);
    this.schedule((ttlSeconds * 1000) / 2);
  }

  get active(): boolean {
    return !this.stopped;
  }

  onLost(listener: () => void): void {
    this.lost.add(listener);
  }

  /** Stop renewing (close or loss); the session then ends after its TTL. */
  stop(): void {
    this.stopped = true;
    if (this.timer) clearTimeout(this.timer);
    this.timer = undefined;
  }

  markLost(reason: string): void {
    this.stop();
    this.store.forgetLease(this);
    this.lost.fire(reason);
  }

  async revoke(): Promise<void> {
    this.lost.disarm();
    this.stop();
    this.store.forgetLease(this);
    await this.store.calls.request(`destroy session ${this.id}`, (api, o) => api.session.destroy({ id: this.id, ...o }));
  }

  /** When Consul first said it does not know the session (cleared by any other answer). */
  private notFoundSince: number | undefined;

  private schedule(ms: number): void {
    if (this.stopped) return;
    this.timer = setTimeout(() => void this.renew(), ms);
  }

  private async renew(): Promise<void> {
    if (this.stopped) return;
    try {
      await this.store.calls.request(`renew session ${this.id}`, (api, o) => api.session.renew({ id: this.id, ...o }));
      this.lastRenew = Date.now();
      this.notFoundSince = undefined;
      this.schedule((this.ttlSeconds * 1000) / 2);
    } catch (err) {
      if (this.stopped) return;
      if (err instanceof ConsulNotFoundError) {
        // A server that has just been elected may answer before it has replayed its log, and
        // then does not know sessions it will restore a moment later: one 404 right after an
        // outage is asked again before the session is declared lost.
        if (this.notFoundSince === undefined) {
          this.notFoundSince = Date.now();
          this.logger.warn('Consul does not know the session; asking again before declaring it lost', { session: this.id });
          this.schedule(NOT_FOUND_CONFIRM_MS);
          return;
        }
        this.markLost('Consul no longer knows the session (expired or destroyed)');
        return;
      }
      this.notFoundSince = undefined;
      // Unreachable: keep trying, and let Consul say whether the session survived once it
      // answers (a 404 above). Consul restarts every session's TTL when a leader is elected,
      // so an outage of the store itself ends none; a host cut off alone finds its session
      // gone. Declaring it lost here instead would make the host register under a new session
      // while the old one still holds its key, and the old one's expiry would then delete that
      // key: every other host would drop this host's containers for a moment.
      const silentFor = Date.now() - this.lastRenew;
      this.logger.warn('consul session renewal failed; retrying', {
        session: this.id,
        silentSeconds: Math.round(silentFor / 1000),
        error: errorMessage(err),
      });
      this.schedule(1000);
    }
  }
}
