import type { z } from 'zod';
import type { Lease, Store } from '../store/store';
import { decodeRecord, encodeRecord } from './records';

export interface Versioned<T> {
  key: string;
  value: T;
  revision: number;
}

/** Typed, schema-checked access to the store's JSON records. */
export class RecordStore {
  constructor(readonly store: Store) {}

  async get<T>(schema: z.ZodType<T>, key: string): Promise<Versioned<T> | undefined> {
    const entry = await this.store.get(key);
    if (!entry) return undefined;
    return { key, value: decodeRecord(schema, entry.value, key), revision: entry.revision };
  }

  /** Records under `prefix`; malformed ones are skipped (reported through `onMalformed`). */
  async list<T>(schema: z.ZodType<T>, prefix: string, onMalformed?: (key: string, err: Error) => void): Promise<Versioned<T>[]> {
    const out: Versioned<T>[] = [];
    for (const entry of await this.store.list(prefix)) {
      try {
        out.push({ key: entry.key, value: decodeRecord(schema, entry.value, entry.key), revision: entry.revision });
      } catch (err) {
        onMalformed?.(entry.key, err as Error);
      }
    }
    return out;
  }

  /**
   * Records under `prefix` whose stored text passes `mayMatch`; only those are decoded (malformed
   * ones skipped). For picking a few records out of many: the rest cost a string test, not a
   * parse, and none of them is kept.
   */
  async listMatching<T>(schema: z.ZodType<T>, prefix: string, mayMatch: (raw: string) => boolean): Promise<Versioned<T>[]> {
    const out: Versioned<T>[] = [];
    for (const entry of await this.store.list(prefix)) {
      if (!mayMatch(entry.value)) continue;
      try {
        out.push({ key: entry.key, value: decodeRecord(schema, entry.value, entry.key), revision: entry.revision });
      } catch {
        // Malformed: as in list(), skipped.
      }
    }
    return out;
  }

  async create<T>(key: string, value: T, lease?: Lease): Promise<boolean> {
    return (await this.store.create(key, encodeRecord(value), lease ? { lease } : undefined)) !== undefined;
  }

  async put<T>(key: string, value: T, lease?: Lease): Promise<void> {
    await this.store.put(key, encodeRecord(value), lease ? { lease } : undefined);
  }

  /**
   * Read-modify-write with compare-and-set, retried on conflict. `change` returns the new
   * value, `null` to delete the record, or `undefined` to leave it as it is.
   */
  async update<T>(
    schema: z.ZodType<T>,
    key: string,
    change: (current: T | undefined) => T | null | undefined,
    attempts = 50,
  ): Promise<T | undefined> {
    for (let i = 0; i < attempts; i++) {
      const current = await this.get(schema, key);
      const next = change(current?.value);
      if (next === undefined) return current?.value;
      if (next === null) {
        if (!current) return undefined;
        if (await this.store.compareAndDelete(key, current.revision)) return undefined;
        continue;
      }
      const ok = current
        ? (await this.store.compareAndSet(key, encodeRecord(next), current.revision)) !== undefined
        : await this.create(key, next);
      if (ok) return next;
    }
    throw new Error(`store record ${key} kept changing under concurrent updates; try again`);
  }

  /** Replaces `current` with `value` unless the record changed since it was read; false if it did. */
  /** Returns the record's new revision, or undefined when it changed since it was read. */
  async compareAndSet<T>(current: Versioned<T>, value: T, lease?: Lease): Promise<number | undefined> {
    return this.store.compareAndSet(current.key, encodeRecord(value), current.revision, lease ? { lease } : undefined);
  }

  /** Deletes `current` unless the record changed since it was read; false if it did. */
  async compareAndDelete(current: Pick<Versioned<unknown>, 'key' | 'revision'>): Promise<boolean> {
    return this.store.compareAndDelete(current.key, current.revision);
  }

  /** Keys under `prefix`, whatever their values (a malformed record still takes its key). */
  async keysUnder(prefix: string): Promise<string[]> {
    return (await this.store.list(prefix)).map((e) => e.key);
  }

  async delete(key: string): Promise<void> {
    await this.store.delete(key);
  }

  async deletePrefix(prefix: string): Promise<void> {
    await this.store.deletePrefix(prefix);
  }
}

export function nowIso(): string {
  return new Date().toISOString();
}
