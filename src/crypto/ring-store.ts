/**
 * Encryption's records in the store. Nothing here is secret: the primary epoch, when it last
 * moved, and per host its public key and which epoch it has applied.
 *
 *   encryption/ring          {epoch, rotated, by}                        created once, then moved by compare-and-set
 *   encryption/hosts/<host>  {name, instance, publicKey, vtep, applied}  written by each host under its own lease,
 *                                                                        so it vanishes when the host dies
 */
import { z } from 'zod';
import type { Lease, Store } from '../store/store';
import { type RingRecord, initialRing, ringRecordSchema, rotated, rotationBlockers, rotationDue } from './ring';

export const encryptionKeys = {
  prefix: () => 'encryption/',
  ring: () => 'encryption/ring',
  host: (host: string) => `encryption/hosts/${host}`,
  hosts: () => 'encryption/hosts/',
  /** The host name of an `encryption/hosts/<host>` key, or undefined for any other key. */
  hostOf: (key: string): string | undefined => (key.startsWith('encryption/hosts/') ? key.slice('encryption/hosts/'.length) || undefined : undefined),
};

/** A host taking part in encrypted networks: its public identity, and the epoch it applied. */
export const encryptionHostSchema = z.object({
  name: z.string(),
  instance: z.string(),
  publicKey: z.string(),
  vtep: z.string(),
  /** The ring epoch this host runs (null before its first apply). */
  applied: z.number().int().nonnegative().nullable(),
  at: z.string(),
});
export type EncryptionHostRecord = z.infer<typeof encryptionHostSchema>;

export function decode<T>(schema: z.ZodType<T>, value: string, key: string): T {
  let parsed: unknown;
  try {
    parsed = JSON.parse(value);
  } catch {
    throw new Error(`store record ${key} is not JSON`);
  }
  const r = schema.safeParse(parsed);
  if (!r.success) throw new Error(`store record ${key} is malformed: ${r.error.issues[0]?.message ?? 'invalid'}`);
  return r.data;
}

export async function readRing(store: Store): Promise<{ record: RingRecord; revision: number } | undefined> {
  const e = await store.get(encryptionKeys.ring());
  if (!e) return undefined;
  return { record: decode(ringRecordSchema, e.value, e.key), revision: e.revision };
}

/** The ring record, created (epoch 0) by the first host that needs it. */
export async function ensureRing(store: Store, by: string, now: Date = new Date()): Promise<RingRecord> {
  for (let attempt = 0; attempt < 3; attempt++) {
    const cur = await readRing(store);
    if (cur) return cur.record;
    const first = initialRing(now, by);
    if ((await store.create(encryptionKeys.ring(), JSON.stringify(first))) !== undefined) return first;
  }
  throw new Error('the key ring record keeps vanishing while it is being created');
}

/** Publishes this host's record (public identity and applied epoch) under its lease. */
export async function publishHost(store: Store, rec: EncryptionHostRecord, lease?: Lease): Promise<void> {
  await store.put(encryptionKeys.host(rec.name), JSON.stringify(rec), lease ? { lease } : {});
}

/** Every host's record; malformed ones are skipped (they cannot take part). */
export async function readHosts(store: Store): Promise<EncryptionHostRecord[]> {
  const out: EncryptionHostRecord[] = [];
  for (const e of await store.list(encryptionKeys.hosts())) {
    try {
      out.push(decode(encryptionHostSchema, e.value, e.key));
    } catch {
      // a record another version or a human wrote: not a participant
    }
  }
  return out;
}

export type RotateOutcome =
  | { rotated: true; record: RingRecord }
  | { rotated: false; record?: RingRecord; reason: string; blockers?: string[] };

export interface RotateOptions {
  /** Who asks (host name, or `cli`). */
  by: string;
  now?: Date;
  /** Rotate only if the schedule says so (seconds between rotations). */
  ifDueAfterSeconds?: number;
}

/**
 * One rotation step, if it is safe: the primary epoch moves on only when every live host (every
 * `encryption/hosts/` record: they go with their host's lease) has applied the current one, else
 * a host two steps behind would receive on none of the epochs its peers send with.
 * Compare-and-set, so two hosts racing for the scheduled step make one.
 */
export async function rotateOnce(store: Store, opts: RotateOptions): Promise<RotateOutcome> {
  const now = opts.now ?? new Date();
  const cur = await readRing(store);
  if (!cur) return { rotated: false, reason: 'no encrypted network has been created yet (no key ring)' };
  if (opts.ifDueAfterSeconds !== undefined && !rotationDue(cur.record, now, opts.ifDueAfterSeconds)) {
    return { rotated: false, record: cur.record, reason: 'not due yet' };
  }
  const live = new Map<string, number | undefined>();
  for (const h of await readHosts(store)) live.set(h.name, h.applied ?? undefined);
  const blockers = rotationBlockers(cur.record, live);
  if (blockers.length > 0) {
    return {
      rotated: false,
      record: cur.record,
      blockers,
      reason: `hosts still applying epoch ${cur.record.epoch}: ${blockers.join(', ')}`,
    };
  }
  const next = rotated(cur.record, now, opts.by);
  const rev = await store.compareAndSet(encryptionKeys.ring(), JSON.stringify(next), cur.revision);
  if (rev === undefined) return { rotated: false, record: cur.record, reason: 'another host moved the key ring at the same moment' };
  return { rotated: true, record: next };
}
