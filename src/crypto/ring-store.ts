/**
 * The key ring's records in the store. Nothing here is secret: the primary epoch, when it last
 * moved, and which epoch each live host has applied.
 *
 *   encryption/ring            {epoch, rotated, by}   created once, then moved by compare-and-set
 *   encryption/applied/<host>  {epoch, at}            written by each host under its lease
 */
import { z } from 'zod';
import type { Lease, Store } from '../store/store';
import { type RingRecord, initialRing, ringRecordSchema, rotated, rotationBlockers, rotationDue } from './ring';

export const encryptionKeys = {
  ring: () => 'encryption/ring',
  applied: (host: string) => `encryption/applied/${host}`,
  allApplied: () => 'encryption/applied/',
};

export const appliedRecordSchema = z.object({
  epoch: z.number().int().nonnegative(),
  at: z.string(),
});
export type AppliedRecord = z.infer<typeof appliedRecordSchema>;

function decode<T>(schema: z.ZodType<T>, value: string, key: string): T {
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

/** Records that this host runs the ring of `epoch` in its kernel. */
export async function reportApplied(store: Store, host: string, epoch: number, lease?: Lease, now: Date = new Date()): Promise<void> {
  const rec: AppliedRecord = { epoch, at: now.toISOString() };
  await store.put(encryptionKeys.applied(host), JSON.stringify(rec), lease ? { lease } : {});
}

/** host → applied epoch, for every host that reported one (a malformed record counts as none). */
export async function readApplied(store: Store): Promise<Map<string, number | undefined>> {
  const out = new Map<string, number | undefined>();
  for (const e of await store.list(encryptionKeys.allApplied())) {
    const host = e.key.slice(encryptionKeys.allApplied().length);
    try {
      out.set(host, decode(appliedRecordSchema, e.value, e.key).epoch);
    } catch {
      out.set(host, undefined);
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
  /** Names of the live hosts (those with a `hosts/` record): each must have applied the current epoch. */
  liveHosts: readonly string[];
  now?: Date;
  /** Rotate only if the schedule says so (seconds between rotations). */
  ifDueAfterSeconds?: number;
}

/**
 * One rotation step, if it is safe: the primary epoch moves on only when every live host has
 * applied the current one (else a host two steps behind would receive on none of the epochs its
 * peers send with). Compare-and-set, so two hosts racing for the scheduled step make one.
 */
export async function rotateOnce(store: Store, opts: RotateOptions): Promise<RotateOutcome> {
  const now = opts.now ?? new Date();
  const cur = await readRing(store);
  if (!cur) return { rotated: false, reason: 'no encrypted network has been created yet (no key ring)' };
  if (opts.ifDueAfterSeconds !== undefined && !rotationDue(cur.record, now, opts.ifDueAfterSeconds)) {
    return { rotated: false, record: cur.record, reason: 'not due yet' };
  }
  const applied = await readApplied(store);
  const live = new Map<string, number | undefined>();
  for (const h of opts.liveHosts) live.set(h, applied.get(h));
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
