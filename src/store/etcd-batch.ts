/**
 * Creates (create-if-absent, no lease) issued at the same time are sent to etcd as one
 * transaction: every key compared absent, every key put. etcd orders a transaction as one raft
 * entry and one WAL write, so a burst of allocations from one host costs a few writes instead of
 * one each. The transaction is all or nothing: when any key already exists it changes nothing,
 * and each create of the batch is then made on its own, so every caller gets exactly the answer a
 * create of its own would have given (its revision, or undefined when the key existed).
 */

import type { Etcd3 } from 'etcd3';

/** etcd's default limit of operations per transaction (--max-txn-ops) is 128: each create is one compare and one put. */
const MAX_BATCH = 64;
/** Batches in flight at once: the next burst need not wait for the previous answer. */
const MAX_IN_FLIGHT = 4;

interface Pending {
  key: string;
  value: string;
  resolve: (revision: number | undefined) => void;
  reject: (err: unknown) => void;
}

export class CreateBatcher {
  private queue: Pending[] = [];
  private inFlight = 0;
  private scheduled = false;

  constructor(
    private readonly client: Etcd3,
    /** Runs one etcd call under the store's deadline and error mapping. */
    private readonly call: <T>(what: string, fn: () => Promise<T>) => Promise<T>,
    /** One create on its own (the store's conditional put). */
    private readonly single: (key: string, value: string) => Promise<number | undefined>,
  ) {}

  /** `full` is the prefixed key. */
  create(full: string, value: string): Promise<number | undefined> {
    return new Promise((resolve, reject) => {
      this.queue.push({ key: full, value, resolve, reject });
      this.schedule();
    });
  }

  private schedule(): void {
    if (this.scheduled || this.inFlight >= MAX_IN_FLIGHT || this.queue.length === 0) return;
    this.scheduled = true;
    // One turn of the event loop gathers the creates issued together.
    setImmediate(() => {
      this.scheduled = false;
      while (this.inFlight < MAX_IN_FLIGHT && this.queue.length > 0) void this.flush(this.take());
    });
  }

  /** The next batch: at most MAX_BATCH creates, each key once (a key's second create waits for the next). */
  private take(): Pending[] {
    const batch: Pending[] = [];
    const keys = new Set<string>();
    const rest: Pending[] = [];
    for (const p of this.queue) {
      if (batch.length < MAX_BATCH && !keys.has(p.key)) {
        keys.add(p.key);
        batch.push(p);
      } else {
        rest.push(p);
      }
    }
    this.queue = rest;
    return batch;
  }

  private async flush(batch: Pending[]): Promise<void> {
    this.inFlight++;
    try {
      if (batch.length === 1) {
        const [p] = batch as [Pending];
        await this.single(p.key, p.value).then(p.resolve, p.reject);
        return;
      }
      let succeeded: boolean;
      let revision = 0;
      try {
        const [first, ...others] = batch as [Pending, ...Pending[]];
        const txn = this.client.if(first.key, 'Create', '==', 0);
        for (const p of others) txn.and(p.key, 'Create', '==', 0);
        txn.then(...batch.map((p) => this.client.put(p.key).value(p.value)));
        const res = await this.call(`create ${batch.length} keys`, () => txn.commit());
        succeeded = res.succeeded;
        revision = Number(res.header.revision);
      } catch (err) {
        // Unknown outcome, as for a single create that failed: every caller learns it.
        for (const p of batch) p.reject(err);
        return;
      }
      if (succeeded) {
        for (const p of batch) p.resolve(revision);
        return;
      }
      // Some key existed: nothing was written; each create on its own decides.
      await Promise.all(batch.map((p) => this.single(p.key, p.value).then(p.resolve, p.reject)));
    } finally {
      this.inFlight--;
      this.schedule();
    }
  }
}
