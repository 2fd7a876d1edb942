/**
 * On a kernel without ESP or AES-GCM (this machine's): `-o encrypted` is refused at once, saying
 * what is missing, and nothing is written — never a silent cleartext network. Real components
 * throughout: the probe in a scratch network namespace, the EncryptionController over the
 * host's xfrm socket, the embedded store. Where the kernel can encrypt, the refusal part is
 * skipped (the qemu test covers that kernel).
 */
import assert from 'node:assert/strict';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { after, before, describe, test } from 'node:test';
import { EncryptionController } from '../../src/crypto/controller';
import { EspManager } from '../../src/crypto/esp';
import { loadOrCreateHostKey } from '../../src/crypto/host-key';
import { Dataplane } from '../../src/dataplane/dataplane';
import { type EspSupport, XfrmClient, probeEspSupport } from '../../src/dataplane/xfrm';
import { LOCAL_ADDRESS_SPACE } from '../../src/driver/ipam';
import { NetworkDriver } from '../../src/driver/network-driver';
import { RecordStore } from '../../src/driver/record-store';
import { silentLogger } from '../../src/log';
import { openLocalStore } from '../../src/store/local';
import type { Store } from '../../src/store/store';

const root = process.getuid?.() === 0;

describe('encrypted networks on a kernel that cannot encrypt', { skip: root ? false : 'needs root (network namespaces)' }, () => {
  let support: EspSupport;
  let dir: string;
  let store: Store;
  let xfrm: XfrmClient;
  let controller: EncryptionController;
  let driver: NetworkDriver;
  let dataplane: Dataplane;

  before(async () => {
    support = await probeEspSupport();
    dir = fs.mkdtempSync(path.join(os.tmpdir(), 'tso-enc-refused-'));
    store = await openLocalStore({ dir: path.join(dir, 'store'), logger: silentLogger() });
    xfrm = XfrmClient.open();
    controller = new EncryptionController({
      store,
      kernel: new EspManager(xfrm),
      key: loadOrCreateHostKey(path.join(dir, 'state')),
      host: { name: 'h1', instance: 'i1', vtep: '127.0.0.1' },
      probe: () => probeEspSupport(),
      rotationIntervalSeconds: 3600,
      reconcileIntervalMs: 60_000,
      leaseTtlSeconds: 10,
      logger: silentLogger(),
    });
    dataplane = new Dataplane({ netnsDir: path.join(dir, 'netns'), logger: silentLogger() });
    const hooks = {
      port: 4793,
      capability: () => controller.capability(),
      activate: () => controller.activate(),
      deactivate: () => controller.deactivate(),
    };
    driver = new NetworkDriver(new RecordStore(store), dataplane, { name: 'h1', vtep: '127.0.0.1', underlayMtu: 1500 }, silentLogger(), undefined, undefined, hooks);
  });

  after(async () => {
    await controller?.close(true);
    xfrm?.close();
    dataplane?.close();
    await store?.close();
    if (dir) fs.rmSync(dir, { recursive: true, force: true });
  });

  const create = (networkId: string, genericOptions: Record<string, string>, pool: string) =>
    driver.createNetwork({ networkId, genericOptions, ipv4: [{ addressSpace: LOCAL_ADDRESS_SPACE, pool }], ipv6: [] });

  test('the probe names what is missing and leaves nothing in the host tables', async (t) => {
    if (support.ok) return t.skip('this kernel can do ESP with AES-GCM');
    assert.ok(support.missing.length > 0);
    assert.match(support.missing.join(' '), /rfc4106\(gcm\(aes\)\)|esp4|xfrm_user/);
    assert.deepEqual(await xfrm.listSas(), [], 'the probe SA lived in its own namespace');
  });

  test('network create -o encrypted fails at once, saying what is missing; nothing is stored', async (t) => {
    if (support.ok) return t.skip('this kernel can do ESP with AES-GCM');
    const t0 = Date.now();
    await assert.rejects(create('a'.repeat(64), { encrypted: '' }, '10.60.0.0/24'), (err: Error) => {
      assert.match(err.message, /^-o encrypted: this host's kernel cannot encrypt VXLAN \(missing: /);
      assert.ok(err.message.includes(support.missing[0]!));
      return true;
    });
    assert.ok(Date.now() - t0 < 5000, 'refused at once');
    assert.deepEqual(await store.list('networks/'), []);
    assert.deepEqual(await store.list('vni/'), []);
    await assert.rejects(controller.activate(), /encrypted networks need kernel support this host lacks/);
  });

  test('plain networks are unaffected', async () => {
    await create('b'.repeat(64), {}, '10.61.0.0/24');
    const nets = await store.list('networks/');
    assert.equal(nets.length, 1);
    assert.equal(JSON.parse(nets[0]!.value).mtu, 1450);
  });
});
