import assert from 'node:assert/strict';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { after, test } from 'node:test';
import { INSTANCE_ID_FILE, claimName, loadOrCreateInstanceId } from '../../src/driver/host-identity';

const dirs: string[] = [];
after(() => {
  for (const d of dirs) fs.rmSync(d, { recursive: true, force: true });
});
function tmp(): string {
  const d = fs.mkdtempSync(path.join(os.tmpdir(), 'tso-identity-'));
  dirs.push(d);
  return d;
}

test('the instance id is made once, kept 0600, and read back unchanged', () => {
  const dir = path.join(tmp(), 'state');
  const id = loadOrCreateInstanceId(dir);
  assert.match(id, /^[0-9a-f-]{36}$/);
  assert.equal(loadOrCreateInstanceId(dir), id);
  assert.equal(fs.statSync(path.join(dir, INSTANCE_ID_FILE)).mode & 0o777, 0o600);
  assert.notEqual(loadOrCreateInstanceId(tmp()), id, 'another machine gets another id');
});

test('a damaged instance id file stops the start with a clear error instead of changing identity', () => {
  const dir = tmp();
  fs.writeFileSync(path.join(dir, INSTANCE_ID_FILE), 'garbage\n');
  assert.throws(() => loadOrCreateInstanceId(dir), /does not hold an instance id.*remove it/);
});

test('claiming a host name', () => {
  const me = { name: 'node1', instance: 'a', vtep: '10.0.0.1' };
  const started = 'now';
  assert.deepEqual(claimName(undefined, me), { kind: 'free' });
  assert.deepEqual(claimName({ name: 'node1', vtep: '10.0.0.1', instance: 'a', started }, me), { kind: 'ours' });
  assert.deepEqual(claimName({ name: 'node1', vtep: '10.0.0.1', started }, me), { kind: 'ours' }, 'an older version on this VTEP');
  const other = claimName({ name: 'node1', vtep: '10.0.0.2', instance: 'b', started }, me);
  assert.equal(other.kind, 'taken');
  assert.match(other.kind === 'taken' ? other.message : '', /registered by another live host at VTEP 10\.0\.0\.2.*--host-name/);
  const clone = claimName({ name: 'node1', vtep: '10.0.0.2', instance: 'a', started }, me);
  assert.match(clone.kind === 'taken' ? clone.message : '', /cloned state directory.*instance-id/);
  assert.equal(claimName({ name: 'node1', vtep: '10.0.0.1', instance: 'b', started }, me).kind, 'taken', 'same VTEP, other machine');
  assert.equal(claimName({ name: 'node1', vtep: '10.0.0.2', started }, me).kind, 'taken', 'older version elsewhere');
});
