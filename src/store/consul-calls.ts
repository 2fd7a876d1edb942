/**
 * The calls of the Consul backend, over the addresses it was given: each under one deadline (the
 * HTTP client's timeout, raced as well), a refused connection retried at once at the next
 * address, a leader election waited out, and Consul's failures mapped to the store's errors
 * (timeouts, connection errors and 5xx answers: StoreUnavailableError). What the calls are, and
 * what their answers mean, is consul.ts's.
 */
import Consul from 'consul';

import type { Logger } from '../log';
import { ConsulConflictError, ConsulNotFoundError, answered, classify, isNotForwarded, isRefused, type ConsulApi } from './consul-api';
import { errorMessage } from '../util/errors';
import { sleep } from '../util/retry';
import { StoreUnavailableError } from './store';
import { logIfSlow, withDeadline } from './util';

/** Pause between tries while the servers elect a leader. */
const NO_LEADER_PAUSE_MS = 200;

export class ConsulCalls {
  /** `consul://host:port,…` (`consuls://` with HTTPS), naming the store in errors and logs. */
  readonly description: string;
  /** One client per address given; calls go to `apis[current]`. */
  private readonly apis: ConsulApi[];
  private readonly addresses: string[];
  private current = 0;

  constructor(
    targets: Array<{ host: string; port: number }>,
    options: { secure?: boolean | undefined; token?: string | undefined },
    private readonly timeoutMs: number,
    private readonly logger: Logger,
    private readonly closed: () => boolean,
  ) {
    this.addresses = targets.map((t) => `${t.host.includes(':') ? `[${t.host}]` : t.host}:${t.port}`);
    this.description = `${options.secure ? 'consuls' : 'consul'}://${this.addresses.join(',')}`;
    // The package's typings omit call options (timeout, ctx, index, wait) and the txn wire
    // format; ConsulApi describes exactly the calls made here.
    this.apis = targets.map(
      (t) =>
        new Consul({
          host: t.host,
          port: t.port,
          secure: options.secure ?? false,
          defaults: options.token ? { token: options.token } : undefined,
        }) as unknown as ConsulApi,
    );
  }

  /**
   * After a failure on `apis[failed]`, later calls go to the next address (unless another call
   * has moved on already). Any server forwards to the leader, and sessions carry no node health
   * check, so which one answers does not matter.
   */
  private failover(failed: number, error: string): void {
    if (this.apis.length < 2 || this.current !== failed) return;
    this.current = (failed + 1) % this.apis.length;
    this.logger.warn('consul address not answering; using the next one', {
      failed: this.addresses[failed],
      next: this.addresses[this.current],
      error,
    });
  }

  /** One Consul call under a deadline, with errors mapped. */
  async request<T>(what: string, fn: (api: ConsulApi, options: { timeout: number }) => Promise<T>, timeoutMs?: number): Promise<T> {
    if (this.closed()) throw new Error(`${this.description}: store is closed`);
    const ms = timeoutMs ?? this.timeoutMs;
    const started = performance.now();
    const deadline = Date.now() + ms;
    let at = this.current;
    try {
      for (let refused = 0; ; ) {
        try {
          return await withDeadline(fn(this.apis[at]!, { timeout: Math.max(1, deadline - Date.now()) }), deadline - Date.now() + 250, () => `${this.description}: ${what}`);
        } catch (err) {
          if (Date.now() + NO_LEADER_PAUSE_MS >= deadline) throw err;
          if (isRefused(err) && ++refused < this.apis.length) {
            // A refused connection delivered nothing: the next address may take the call at once.
            this.failover(at, errorMessage(err));
            at = this.current;
          } else if (isNotForwarded(err)) {
            // The servers are electing a leader (the leader died): nothing was applied, and an
            // election ends within seconds. Wait for it, within the deadline, as etcd does.
            await sleep(NO_LEADER_PAUSE_MS);
          } else {
            throw err;
          }
        }
      }
    } catch (err) {
      if (err instanceof StoreUnavailableError) {
        this.failover(at, err.message);
        throw err;
      }
      const f = classify(err);
      switch (f.kind) {
        case 'unavailable':
          // A server that answered (a 5xx) is alive: only silence moves calls elsewhere.
          if (!answered(err)) this.failover(at, f.message);
          throw new StoreUnavailableError(`${this.description}: ${what} failed, Consul unreachable: ${f.message}`);
        case 'conflict':
          throw new ConsulConflictError(`${this.description}: ${what}: ${f.errors.map((e) => e.What).join('; ') || f.message}`, f.errors);
        case 'notfound':
          throw new ConsulNotFoundError(`${this.description}: ${what}: not found`);
        case 'forbidden':
          throw new Error(`${this.description}: ${what}: permission denied (check the Consul ACL token): ${f.message}`);
        default:
          throw new Error(`${this.description}: ${what} failed: ${f.message}`, { cause: err });
      }
    } finally {
      // A blocking query (its own timeoutMs) waits on purpose.
      if (timeoutMs === undefined) logIfSlow(this.logger, this.description, what, started);
    }
  }

  destroy(): void {
    for (const api of this.apis) api.destroy();
  }
}
