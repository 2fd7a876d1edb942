/** `-o encrypted`: the option, the network record, the MTU and the overlay's VXLAN port. */
import assert from 'node:assert/strict';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { after, test } from 'node:test';
import { parseConfig } from '../../src/config';
import { DEFAULT_ENCRYPTED_VXLAN_PORT, expectedVxlan, overlayTarget, vxlanDifferences } from '../../src/dataplane/overlay-check';
import { NetworkRecords } from '../../src/driver/network-records';
import { overlayMtu, parseNetworkOptions } from '../../src/driver/options';
import { RecordStore } from '../../src/driver/record-store';
import { silentLogger } from '../../src/log';
import { openLocalStore } from '../../src/store/local';
import type { Store } from '../../src/store/store';

const stores: Store[] = [];
const dirs: string[] = [];
after(async () => {
  for (const s of stores) await s.close();
  for (const d of dirs) fs.rmSync(d, { recursive: true, force: true });
});

test('-o encrypted: bare (as Docker passes it) or a boolean; not with multicast', () => {
  assert.equal(parseNetworkOptions({ encrypted: '' }).encrypted, true);
  assert.equal(parseNetworkOptions({ encrypted: 'true' }).encrypted, true);
  assert.equal(parseNetworkOptions({ encrypted: 'false' }).encrypted, undefined);
  assert.equal(parseNetworkOptions({}).encrypted, undefined);
  assert.throws(() => parseNetworkOptions({ encrypted: 'maybe' }), /not a boolean/);
  assert.throws(() => parseNetworkOptions({ encrypted: '', mode: 'multicast', group: '239.1.1.1' }), /unicast/);
  assert.equal(parseNetworkOptions({ encrypted: '', mode: 'p2p', remote: '10.0.0.2' }).encrypted, true);
});

test('the MTU leaves room for ESP: 1416 on a 1500-byte underlay', () => {
  assert.equal(overlayMtu(1500), 1450);
  assert.equal(overlayMtu(1500, undefined, true), 1416);
  assert.equal(overlayMtu(1500, 9000, true), 8916);
});

test("an encrypted network's vxlan0 uses the encrypted port; a plain one 4789", () => {
  const n = { vni: 300, mtu: 1416, gateway: '10.30.0.1', subnet: '10.30.0.0/24', mode: 'static' as const };
  const enc = overlayTarget({ ...n, options: { mode: 'static', encrypted: 'true' } }, { vtep: '10.0.0.1', encryptedPort: 4800 });
  assert.equal(expectedVxlan(enc).port, 4800);
  assert.equal(expectedVxlan(overlayTarget({ ...n, options: { mode: 'static', encrypted: 'true' } }, { vtep: '10.0.0.1' })).port, DEFAULT_ENCRYPTED_VXLAN_PORT);
  const plain = overlayTarget({ ...n, options: { mode: 'static' } }, { vtep: '10.0.0.1' });
  assert.equal(expectedVxlan(plain).port, undefined);
  // A vxlan0 on 4789 for an encrypted network is wrong, and only a new device fixes it.
  const onPlainPort = { name: 'vxlan0', index: 3, addresses: [], kind: 'vxlan', id: 300, port: 4789, mtu: 1416, up: true, master: 'br0', flags: ['proxy', 'learning', 'l2miss', 'l3miss'], local: '10.0.0.1', linkNetnsid: 0 };
  const d = vxlanDifferences(onPlainPort, expectedVxlan(enc));
  assert.deepEqual(d.map((x) => [x.field, x.rebuild]), [['dstport', true]]);
});

test('every host must create the network with the same encryption setting', async () => {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'tso-enc-'));
  dirs.push(dir);
  const store = await openLocalStore({ dir, logger: silentLogger() });
  stores.push(store);
  const records = new RecordStore(store);
  const h1 = new NetworkRecords(records, { name: 'h1', vtep: '10.0.0.1', underlayMtu: 1500 }, silentLogger());
  const h2 = new NetworkRecords(records, { name: 'h2', vtep: '10.0.0.2', underlayMtu: 1500 }, silentLogger());
  const input = (networkId: string, raw: Record<string, string>) => ({
    networkId,
    networkKey: '10.40.0.0-24',
    subnet: '10.40.0.0/24',
    gateway: '10.40.0.1',
    options: parseNetworkOptions(raw),
  });
  const rec = await h1.create(input('a'.repeat(64), { encrypted: '' }));
  assert.equal(rec.options.encrypted, 'true');
  assert.equal(rec.mtu, 1416);
  await assert.rejects(h2.create(input('b'.repeat(64), {})), /already exists in the cluster encrypted: create it with -o encrypted/);
  const same = await h2.create(input('c'.repeat(64), { encrypted: 'true' }));
  assert.equal(same.vni, rec.vni);

  const plainKey = { ...input('d'.repeat(64), {}), networkKey: '10.41.0.0-24', subnet: '10.41.0.0/24', gateway: '10.41.0.1' };
  await h1.create(plainKey);
  await assert.rejects(h2.create({ ...plainKey, networkId: 'e'.repeat(64), options: parseNetworkOptions({ encrypted: '' }) }), /without encryption/);
});

test('--encrypted-vxlan-port and --key-rotation-interval', () => {
  const c = parseConfig([], {});
  assert.equal(c.encryptedVxlanPort, 4793);
  assert.equal(c.keyRotationIntervalSeconds, 43200);
  assert.equal(parseConfig(['--encrypted-vxlan-port', '4800', '--key-rotation-interval', '3600'], {}).encryptedVxlanPort, 4800);
  assert.throws(() => parseConfig(['--encrypted-vxlan-port', '4789'], {}), /not 4789/);
  assert.throws(() => parseConfig(['--key-rotation-interval', '5'], {}), /at least 60/);
});
