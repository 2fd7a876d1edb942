/**
 * The key ring: which key epochs a host receives and sends with, and the order in which a
 * rotation changes the kernel so that no packet is lost.
 *
 * The cluster shares one number, the primary epoch P (a store record; it carries no secret).
 * Towards every peer a host keeps receive SAs for the epochs P-1, P and P+1 and sends with P.
 * Rotating moves P to P+1. Hosts see the new P at slightly different moments, and whichever of
 * the two a peer is at, the other can read it: a host still at P receives P+1, a host already at
 * P+1 still receives P. The new key was a receive key everywhere one rotation before anyone sends
 * with it. This is Docker's overlay ring ("-rSA0, +rSA3, +fSA2, +fSP2/-fSP1, -fSA1"), with the
 * stale receive SA removed last instead of first: nobody sends with it any more either way.
 *
 * A rotation is safe only once every host applied the previous one; `canRotate` checks the
 * epochs hosts report having applied.
 */
import { z } from 'zod';

export const DEFAULT_ROTATION_INTERVAL_SECONDS = 12 * 60 * 60;

/** The cluster-wide ring record (store key `encryption/ring`). */
export const ringRecordSchema = z.object({
  /** The primary epoch: what every host sends with. */
  epoch: z.number().int().nonnegative(),
  /** When the primary epoch last changed (ISO 8601). */
  rotated: z.string(),
  /** Who moved it last (host name, or `cli` for `tsoverlay rotate-keys`). */
  by: z.string().optional(),
});
export type RingRecord = z.infer<typeof ringRecordSchema>;

/** Epochs a host keeps towards each peer when the primary epoch is `primary`. */
export function ringEpochs(primary: number): { rx: number[]; tx: number } {
  if (!Number.isSafeInteger(primary) || primary < 0) throw new Error(`invalid primary epoch ${primary}`);
  const rx = [primary - 1, primary, primary + 1].filter((e) => e >= 0);
  return { rx, tx: primary };
}

/** What the kernel holds towards one peer, in epochs. */
export interface PeerSaState {
  /** Epochs with a receive SA (peer → this host). */
  rx: ReadonlySet<number>;
  /** Epochs with a send SA (this host → peer). */
  tx: ReadonlySet<number>;
  /** Epoch of the send SA the output policy points at; undefined when there is no policy. */
  policy?: number;
}

export type RingOp =
  | { kind: 'add-rx'; epoch: number }
  | { kind: 'add-tx'; epoch: number }
  | { kind: 'set-policy'; epoch: number }
  | { kind: 'del-tx'; epoch: number }
  | { kind: 'del-rx'; epoch: number };

export const EMPTY_PEER_STATE: PeerSaState = { rx: new Set(), tx: new Set() };

/**
 * The steps that take one peer's SAs from `current` to the ring of `primary`, make before
 * break: receive SAs first, then the send SA, then the policy switch (one atomic update), then
 * the removals. Empty when nothing differs. The same function brings a new peer up (from
 * EMPTY_PEER_STATE) and repairs drift found by a reconcile.
 */
export function planPeer(current: PeerSaState, primary: number): RingOp[] {
  const want = ringEpochs(primary);
  const ops: RingOp[] = [];
  for (const e of want.rx) if (!current.rx.has(e)) ops.push({ kind: 'add-rx', epoch: e });
  if (!current.tx.has(want.tx)) ops.push({ kind: 'add-tx', epoch: want.tx });
  if (current.policy !== want.tx) ops.push({ kind: 'set-policy', epoch: want.tx });
  for (const e of [...current.tx].sort((a, b) => a - b)) if (e !== want.tx) ops.push({ kind: 'del-tx', epoch: e });
  const keepRx = new Set(want.rx);
  for (const e of [...current.rx].sort((a, b) => a - b)) if (!keepRx.has(e)) ops.push({ kind: 'del-rx', epoch: e });
  return ops;
}

/** When the scheduled rotation after `record` falls due. */
export function nextRotationAt(record: RingRecord, intervalSeconds: number): Date {
  const rotated = Date.parse(record.rotated);
  if (!Number.isFinite(rotated)) return new Date(0);
  return new Date(rotated + intervalSeconds * 1000);
}

/** Whether the scheduled rotation is due at `now`. */
export function rotationDue(record: RingRecord, now: Date, intervalSeconds: number): boolean {
  return now.getTime() >= nextRotationAt(record, intervalSeconds).getTime();
}

/**
 * Whether the primary epoch may move on from `record.epoch`: every live host must report having
 * applied it. A host still on an older epoch would, after one more step, receive on none of the
 * epochs its peers send with. Returns the hosts that hold the rotation up.
 */
export function rotationBlockers(record: RingRecord, applied: ReadonlyMap<string, number | undefined>): string[] {
  const behind: string[] = [];
  for (const [host, epoch] of applied) if (epoch !== record.epoch) behind.push(host);
  return behind.sort();
}

/** The record after one rotation step. */
export function rotated(record: RingRecord, now: Date, by: string): RingRecord {
  return { epoch: record.epoch + 1, rotated: now.toISOString(), by };
}

/** The first ring record of a cluster. */
export function initialRing(now: Date, by: string): RingRecord {
  return { epoch: 0, rotated: now.toISOString(), by };
}
