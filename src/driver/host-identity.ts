import { randomUUID } from 'node:crypto';
import fs from 'node:fs';
import path from 'node:path';
import type { HostRecord } from './records';

/** File under the state directory holding this machine's instance id (like Docker's engine-id). */
export const INSTANCE_ID_FILE = 'instance-id';
const INSTANCE_ID = /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/;

/**
 * This host's stable identity, made once and kept under `stateDir`. A host name is only a label:
 * cloned machines and identical images share one, and a second daemon under a live host's name
 * would otherwise take over its records.
 */
export function loadOrCreateInstanceId(stateDir: string): string {
  const file = path.join(stateDir, INSTANCE_ID_FILE);
  try {
    const text = fs.readFileSync(file, 'utf8').trim();
    if (INSTANCE_ID.test(text)) return text;
    throw new Error(`${file} does not hold an instance id ("${text.slice(0, 40)}"); remove it to have a new one made`);
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code !== 'ENOENT') throw err;
  }
  fs.mkdirSync(stateDir, { recursive: true, mode: 0o700 });
  const id = randomUUID();
  // Written aside and renamed: a crash never leaves a half-written id that would refuse the next start.
  const tmp = `${file}.${process.pid}.tmp`;
  fs.writeFileSync(tmp, `${id}\n`, { mode: 0o600 });
  fs.renameSync(tmp, file);
  return id;
}

export type NameClaim = { kind: 'free' } | { kind: 'ours' } | { kind: 'taken'; message: string };

/**
 * Whether this host may register under `name`, given the live registration found there (a
 * registration exists only while its owner's lease does). Our own earlier registration (a plugin
 * restart) is ours to replace; so is one written by a version without instance ids from our VTEP.
 * Anything else is another live host: its records must not be touched.
 */
export function claimName(existing: HostRecord | undefined, me: { name: string; instance: string; vtep: string }): NameClaim {
  if (!existing) return { kind: 'free' };
  const sameVtep = existing.vtep === me.vtep;
  if (existing.instance === me.instance && sameVtep) return { kind: 'ours' };
  if (existing.instance === undefined && sameVtep) return { kind: 'ours' };
  const who = existing.instance === me.instance ? 'a host with this host\'s instance id (a cloned state directory?)' : `host instance ${existing.instance ?? '(unknown)'}`;
  return {
    kind: 'taken',
    message:
      `host name "${me.name}" is registered by another live host at VTEP ${existing.vtep} (${who}); ` +
      `this host (VTEP ${me.vtep}) would take over its containers' records. Give this host another name ` +
      `(--host-name / TSOVERLAY_HOST_NAME, HOST_NAME in the managed plugin)` +
      (existing.instance === me.instance ? `, and remove the copied instance id file (${INSTANCE_ID_FILE} in the state directory) so that a new one is made` : '') +
      `, or stop the other host's tsoverlay and wait for its registration to expire`,
  };
}
