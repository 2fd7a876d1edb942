/**
 * An etcd lease kept alive by the client (keepalive every TTL/3). `onLost` fires when etcd
 * reports the lease gone or it could not be renewed for 2×TTL.
 */

import type { Lease as Etcd3Lease } from 'etcd3';

import type { Logger } from '../log';
import type { EtcdStore } from './etcd';
import type { Lease } from './store';
import { LostSignal, errorMessage } from './util';

export class EtcdLease implements Lease {
  readonly lost: LostSignal;

  constructor(
    readonly store: EtcdStore,
    readonly inner: Etcd3Lease,
    readonly id: string,
    readonly ttlSeconds: number,
    logger: Logger,
  ) {
    this.lost = new LostSignal(logger, `${store.description} lease ${id}`);
    inner.on('lost', (err) => {
      store.forgetLease(this);
      this.lost.fire(errorMessage(err));
    });
  }

  onLost(listener: () => void): void {
    this.lost.add(listener);
  }

  async revoke(): Promise<void> {
    this.lost.disarm();
    this.store.forgetLease(this);
    // Stops the keepalive first; if etcd cannot be reached the keys still expire after the TTL.
    await this.store.call(`revoke lease ${this.id}`, () => this.inner.revoke());
  }
}
