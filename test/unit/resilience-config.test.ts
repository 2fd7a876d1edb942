/**
 * The pure parts of the resilience work: the in-flight request journal that gives Docker's
 * empty-bodied retries their body back, and the access options (--socket-group, etcd
 * user/password) — whose errors must never quote a secret.
 */
import assert from 'node:assert/strict';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { after, test } from 'node:test';
import { parseConfig, socketGroup } from '../../src/config';
import { IpamService, LOCAL_ADDRESS_SPACE } from '../../src/driver/ipam';
import { RecordStore } from '../../src/driver/record-store';
import { openLocalStore } from '../../src/store/local';
import { silentLogger } from '../../src/log';
import { InflightJournal, REPLAY_WINDOW_MS } from '../../src/protocol/inflight';

const tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'tso-res-'));
after(() => fs.rmSync(tmp, { recursive: true, force: true }));

test('journal: a request cut off by a crash is handed to the empty-bodied retry, once', () => {
  const dir = path.join(tmp, 'j1');
  const before = new InflightJournal(dir, silentLogger());
  before.recover();
  const join = { NetworkID: 'n'.repeat(64), EndpointID: 'e'.repeat(64) };
  before.begin('NetworkDriver.Join', join); // never finished: the process "dies"
  const done = before.begin('NetworkDriver.Leave', { NetworkID: 'x'.repeat(64), EndpointID: 'y'.repeat(64) });
  done(); // answered: forgotten
  const after = new InflightJournal(dir, silentLogger());
  return new Promise<void>((resolve) =>
    setTimeout(() => {
      assert.equal(after.recover(), 1);
      assert.equal(after.lostBody('NetworkDriver.Leave'), undefined, 'an answered request is not replayed');
      assert.deepEqual(after.lostBody('NetworkDriver.Join'), join);
      assert.equal(after.lostBody('NetworkDriver.Join'), undefined, 'used up');
      assert.deepEqual(fs.readdirSync(dir), [], 'the files were taken over');
      resolve();
    }, 50),
  );
});

test('journal: a process killed while it recovers leaves the cut-off request to the next one; a replay cut off again is one candidate', () => {
  const dir = path.join(tmp, 'j3');
  const first = new InflightJournal(dir, silentLogger());
  first.recover();
  const body = { PoolID: '10.1.0.0/24', Options: {} };
  first.begin('IpamDriver.RequestAddress', body, { requestId: 'r-1' }); // the run killed mid-request
  const second = new InflightJournal(dir, silentLogger());
  assert.equal(second.recover(), 1); // ...and this one killed before Docker's retry came
  const third = new InflightJournal(dir, silentLogger());
  assert.equal(third.recover(), 1, 'still there for the run after');
  const lost = third.lostRequest('IpamDriver.RequestAddress');
  assert.deepEqual(lost?.context, { requestId: 'r-1' });
  third.begin('IpamDriver.RequestAddress', lost!.body, lost!.context); // replayed, then killed before replayed()
  // One process here: the first run's file (another pid in real life) is put back beside the replay's.
  fs.writeFileSync(path.join(dir, 'IpamDriver.RequestAddress.99999.1.json'), JSON.stringify({ body, requestId: 'r-1' }));
  assert.equal(fs.readdirSync(dir).length, 2);
  const fourth = new InflightJournal(dir, silentLogger());
  assert.equal(fourth.recover(), 1, 'the old file and the replay of the same request are one candidate');
  const again = fourth.lostRequest('IpamDriver.RequestAddress');
  assert.deepEqual(again && { body: again.body, context: again.context }, { body, context: { requestId: 'r-1' } });
  const done = fourth.begin('IpamDriver.RequestAddress', again!.body, again!.context);
  fourth.replayed(again!);
  done();
  assert.deepEqual(fs.readdirSync(dir), [], 'answered: nothing left to replay');
});

test('journal: no guessing between two cut-off requests of one method; old ones expire', () => {
  const dir = path.join(tmp, 'j2');
  const first = new InflightJournal(dir, silentLogger());
  first.recover();
  first.begin('IpamDriver.RequestAddress', { PoolID: '10.1.0.0/24' });
  first.begin('IpamDriver.RequestAddress', { PoolID: '10.2.0.0/24' });
  first.begin('NetworkDriver.CreateEndpoint', { NetworkID: 'n'.repeat(64) });
  let now = Date.now();
  const second = new InflightJournal(dir, silentLogger(), () => now);
  assert.equal(second.recover(), 3);
  assert.equal(second.lostBody('IpamDriver.RequestAddress'), undefined, 'two candidates: none chosen');
  now += REPLAY_WINDOW_MS + 1;
  assert.equal(second.lostBody('NetworkDriver.CreateEndpoint'), undefined, 'outside Docker’s retry window');
});

test('--socket-group: a gid, or a name from the group file; anything else is refused', () => {
  const groups = path.join(tmp, 'group');
  fs.writeFileSync(groups, 'root:x:0:\ndocker:x:998:alice\nplugin-users:x:1234:\n');
  assert.deepEqual(socketGroup(undefined, groups), {});
  assert.deepEqual(socketGroup('4321', groups), { socketGroup: 4321 });
  assert.deepEqual(socketGroup('docker', groups), { socketGroup: 998 });
  assert.deepEqual(socketGroup('plugin-users', groups), { socketGroup: 1234 });
  assert.throws(() => socketGroup('nobody-here', groups), /no such group/);
  assert.throws(() => socketGroup('../etc', groups), /invalid --socket-group/);
});

test('etcd credentials: flags, variable or file; errors never quote the password', () => {
  const secret = 'pa55-w0rd-that-must-not-leak';
  const viaEnv = parseConfig(['--etcd-user', 'tso'], { TSOVERLAY_ETCD_PASSWORD: secret });
  assert.deepEqual(viaEnv.etcdAuth, { username: 'tso', password: secret });
  const file = path.join(tmp, 'pw');
  fs.writeFileSync(file, `${secret}\n`);
  assert.deepEqual(parseConfig(['--etcd-user', 'tso', '--etcd-password-file', file], {}).etcdAuth, { username: 'tso', password: secret });
  assert.equal(parseConfig([], {}).etcdAuth, undefined);
  for (const [argv, env] of [
    [[], { TSOVERLAY_ETCD_PASSWORD: secret }],
    [['--etcd-user', 'tso', '--etcd-password', secret, '--etcd-password-file', file], {}],
    [['--etcd-user', 'tso', '--etcd-password-file', path.join(tmp, 'missing')], {}],
  ] as const) {
    assert.throws(
      () => parseConfig([...argv], { ...env }),
      (err: Error) => {
        assert.ok(!err.message.includes(secret), err.message);
        return true;
      },
    );
  }
});

test('IPAM: a RequestAddress run again after a crash (same request id) gets the address it already allocated', async () => {
  const dir = fs.mkdtempSync(path.join(tmp, 'ipam-'));
  const store = await openLocalStore({ dir, logger: silentLogger() });
  try {
    const records = new RecordStore(store);
    const a = new IpamService(records, 'host-a', silentLogger());
    const b = new IpamService(records, 'host-b', silentLogger());
    const { poolId } = await a.requestPool({ addressSpace: LOCAL_ADDRESS_SPACE, pool: '10.30.0.0/24', v6: false });
    await b.requestPool({ addressSpace: LOCAL_ADDRESS_SPACE, pool: '10.30.0.0/24', v6: false });
    const first = await a.requestAddress({ poolId, options: {}, requestId: 'r-1' });
    assert.deepEqual(await a.requestAddress({ poolId, options: {}, requestId: 'r-1' }), first, 'the replay');
    assert.notDeepEqual(await a.requestAddress({ poolId, options: {}, requestId: 'r-2' }), first, 'another request');
    assert.notDeepEqual(await b.requestAddress({ poolId, options: {}, requestId: 'r-1' }), first, 'never another host’s address');
    await a.releaseAddress(poolId, first.address);
    assert.deepEqual(await a.requestAddress({ poolId, options: {} }), first, 'released, it is free again');
  } finally {
    await store.close();
  }
});
