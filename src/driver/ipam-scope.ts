/**
 * The scope of one IPAM request: one deadline bounds its waits for the subnet lock and every
 * store call it makes, so that it answers in time whatever queues in front of it. If it fails
 * after a create whose outcome it never learnt, that allocation is chased and undone: Docker was
 * told the request failed and will never use or release it.
 */

import type { Logger } from '../log';
import { Backoff, Deadline, storeWithDeadline, type UncertainCreate } from '../store/util';
import { PluginError, errorMessage } from '../util/errors';
import { KeyedMutex } from '../util/keyed-mutex';
import { sleepUnref } from '../util/retry';
import { RecordStore } from './record-store';
import { addressRecordSchema, decodeRecord, keys } from './records';

/** How long a failed request's uncertain allocation is chased before it is left to the logs. */
const RECLAIM_GIVE_UP_MS = 10 * 60_000;

/** What one request works with: the store and the subnet locks, both bounded by its deadline. */
export interface RequestScope {
  records: RecordStore;
  lock<T>(subnet: string, work: () => Promise<T>): Promise<T>;
}

export class RequestScopes {
  private readonly subnetLocks = new KeyedMutex();

  constructor(
    private readonly records: RecordStore,
    private readonly requestTimeoutMs: number,
    private readonly logger: Logger,
  ) {}

  /** Runs one request under one deadline of `requestTimeoutMs`. */
  async run<T>(method: string, work: (scope: RequestScope) => Promise<T>): Promise<T> {
    const deadline = new Deadline(this.requestTimeoutMs);
    const uncertain: UncertainCreate[] = [];
    const store = this.records.store;
    const records = new RecordStore(storeWithDeadline(store, deadline, (c) => uncertain.push(c)));
    const lock = <R>(subnet: string, fn: () => Promise<R>): Promise<R> =>
      this.subnetLocks.run(subnet, fn, {
        remaining: () => deadline.remaining(),
        onTimeout: () =>
          new PluginError(
            `${method} timed out waiting for its turn on ${subnet} after ${deadline.ms} ms: earlier requests are still waiting for the store (${store.description}); try again`,
            503,
          ),
      });
    try {
      return await work({ records, lock });
    } catch (err) {
      if (uncertain.length > 0) this.reclaim(uncertain, method);
      throw err;
    }
  }

  /**
   * Undoes allocations a failed request may still have made: the store can apply a create it did
   * not answer in time (etcd stopped, then resumed). A record is removed only while it is exactly
   * what that request wrote (nobody took it over since). It is looked for once the store answers
   * again and once more a request timeout later, for a write applied after the first look.
   * Only endpoint addresses: a shared gateway record may already serve another host, and a
   * pool record written late is what a retried RequestPool on this host finds and relies on
   * (it holds no address, and the retry makes it Docker's again).
   */
  private reclaim(creates: UncertainCreate[], method: string): void {
    const pending = creates.filter(isEndpointAddress);
    if (pending.length === 0) return;
    const started = performance.now();
    void (async () => {
      const backoff = new Backoff(200, 5000);
      let looks = 0;
      while (looks < 2 && performance.now() - started < RECLAIM_GIVE_UP_MS) {
        await sleepUnref(looks === 0 ? backoff.next() : this.requestTimeoutMs);
        try {
          for (const c of pending) {
            const entry = await this.records.store.get(c.key);
            if (entry?.value === c.value && (await this.records.store.compareAndDelete(c.key, entry.revision))) {
              this.logger.warn('removed what a failed request allocated after it had given up', { method, key: c.key });
            }
          }
          looks++;
        } catch (err) {
          this.logger.debug('store still unavailable to undo a failed request', { method, error: errorMessage(err) });
        }
      }
      if (looks < 2) this.logger.warn('gave up undoing what a failed request may have allocated', { method, keys: pending.map((c) => c.key) });
    })();
  }
}

function isEndpointAddress(c: UncertainCreate): boolean {
  if (!c.key.startsWith(keys.addresses('').slice(0, -1))) return false; // under ipam/addresses/
  try {
    return decodeRecord(addressRecordSchema, c.value, c.key).kind === 'endpoint';
  } catch {
    return false;
  }
}
