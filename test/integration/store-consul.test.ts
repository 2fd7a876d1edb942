/**
 * Store contract against a real Consul server: the consul binary .ci/provision-extras.sh
 * unpacks (1.8.7), started by this file on free loopback ports (test/helpers/consul.ts), or
 * the agent CONSUL_HTTP_ADDR names (CONSUL_HTTP_TOKEN if ACLs are enabled there). The ACL
 * test starts a second server with ACLs on (default policy deny) and gives tsoverlay a token
 * holding exactly the policy docs/install.md documents; the whole contract runs again
 * through that token. Without a Consul binary the file skips with the reason, except under
 * CI, where that is a failure.
 */
import assert from 'node:assert/strict';
import { after, before, test } from 'node:test';
import { randomBytes } from 'node:crypto';
import { Writable } from 'node:stream';
import winston from 'winston';

import { silentLogger } from '../../src/log';
import { CONSUL_MIN_TTL_SECONDS } from '../../src/store/consul';
import { openStore } from '../../src/store/open';
import type { Store } from '../../src/store/store';
import { TSOVERLAY_ACL_RULES, consulSkipReason, startConsul, type ConsulServer } from '../helpers/consul';
import { RUN_PREFIX } from '../helpers/etcd';
import { cleanupAfter } from '../helpers/proc';
import { StoreFixture, runStoreContract } from '../helpers/store-contract';

const logger = silentLogger();
const external = process.env.CONSUL_HTTP_ADDR;
const skip = external ? false : consulSkipReason();

cleanupAfter();

let server: ConsulServer | undefined;
let aclServer: ConsulServer | undefined;
let aclToken: string | undefined;

before(async () => {
  if (skip) return;
  if (!external) server = await startConsul();
  if (!external || !process.env.CONSUL_HTTP_TOKEN) {
    if (consulSkipReason()) return;
    aclServer = await startConsul({ acl: true });
    aclToken = await aclServer.createToken(TSOVERLAY_ACL_RULES, 'tsoverlay');
  }
});

after(async () => {
  await server?.stop();
  await aclServer?.stop();
});

/** consul://host:port of the server under test. */
function storeUrl(): string {
  return server ? `consul://${server.address}` : 'consul://';
}

/**
 * Stores opened under a fresh prefix, removed afterwards. `token` and `base` select the ACL
 * server: its token may write only below tsoverlay/v1/.
 */
function fixtureFor(url: () => string, base: () => string, token?: () => string | undefined) {
  return async (): Promise<StoreFixture> => {
    const prefix = `${base()}${randomBytes(4).toString('hex')}/`;
    const opened: Store[] = [];
    const consulToken = token?.();
    const open = async (sub = ''): Promise<Store> => {
      const s = await openStore(url(), { logger, prefix: prefix + sub, ...(consulToken ? { consulToken } : {}) });
      opened.push(s);
      return s;
    };
    const store = await open();
    return {
      store,
      open,
      cleanup: async () => {
        for (const s of opened) await s.close();
        const admin = await openStore(url(), { logger, prefix, ...(consulToken ? { consulToken } : {}) });
        await admin.deletePrefix('');
        await admin.close();
      },
    };
  };
}

if (skip) {
  test('Store contract: consul', (t) => {
    t.skip(skip);
  });
} else {
  // Consul sessions: TTL ≥ 10 s, and Consul may take up to 2 × TTL to invalidate one.
  runStoreContract('consul', fixtureFor(storeUrl, () => `${RUN_PREFIX}/`), {
    leaseTtlSeconds: CONSUL_MIN_TTL_SECONDS,
    leaseExpiryBoundMs: 2 * CONSUL_MIN_TTL_SECONDS * 1000 + 10_000,
  });

  // Every operation tsoverlay makes (KV, transactions, sessions, blocking queries) works with a
  // token that holds exactly the documented policy, under the prefix the plugin uses.
  runStoreContract(
    'consul, ACL token with the documented policy',
    fixtureFor(
      () => (aclServer ? `consul://${aclServer.address}` : 'consul://'),
      () => `tsoverlay/v1/${RUN_PREFIX}/`,
      () => aclToken ?? process.env.CONSUL_HTTP_TOKEN,
    ),
    { leaseTtlSeconds: CONSUL_MIN_TTL_SECONDS, leaseExpiryBoundMs: 2 * CONSUL_MIN_TTL_SECONDS * 1000 + 10_000 },
  );

  test('the documented policy is also the least: outside tsoverlay/v1/ the token is refused', async () => {
    const url = aclServer ? `consul://${aclServer.address}` : 'consul://';
    const outside = await openStore(url, { logger, prefix: `elsewhere/${RUN_PREFIX}/`, consulToken: aclToken ?? process.env.CONSUL_HTTP_TOKEN! });
    try {
      // Refused writes are access errors, never a failed condition: a create must not read as
      // "the key exists" (IPAM would then walk the whole subnet calling every address taken).
      const denied = /permission denied \(check the Consul ACL token\)/;
      await assert.rejects(outside.put('k', 'v'), denied);
      await assert.rejects(outside.create('k', 'v'), denied);
      await assert.rejects(outside.compareAndSet('k', 'v', 0), denied);
    } finally {
      await outside.close();
    }
  });

  test('consul://a,b: an address that refuses connections is passed over at once, for calls, sessions and watches', async (t) => {
    if (!server) {
      t.skip('CONSUL_HTTP_ADDR names an outside agent');
      return;
    }
    // Port 1 on loopback refuses: the first address is a server that is down.
    const store = await openStore(`consul://127.0.0.1:1,${server.address}`, { logger, prefix: `${RUN_PREFIX}/list-${randomBytes(3).toString('hex')}/`, timeoutMs: 5000 });
    try {
      assert.equal(store.description, `consul://127.0.0.1:1,${server.address}`);
      const seen: string[] = [];
      const watch = store.watch('w/', { onReset: () => undefined, onEvents: (evs) => seen.push(...evs.map((e) => e.key)), onError: () => undefined });
      const t0 = Date.now();
      await store.put('w/a', '1');
      assert.equal((await store.get('w/a'))?.value, '1');
      const lease = await store.grantLease(CONSUL_MIN_TTL_SECONDS);
      await store.put('w/b', '2', { lease });
      assert.ok(Date.now() - t0 < 4000, `calls answered without waiting on the dead address (${Date.now() - t0} ms)`);
      const until = Date.now() + 10_000;
      while (!seen.includes('w/b') && Date.now() < until) await new Promise((r) => setTimeout(r, 50));
      assert.ok(seen.includes('w/b'), `the watch delivered through the second address: ${seen.join(' ')}`);
      await watch.close();
      await lease.revoke();
      await store.deletePrefix('');
    } finally {
      await store.close();
    }
  });

  test('a session outlives an outage of Consul longer than its TTL: no loss, its keys stay', { timeout: 120_000 }, async (t) => {
    if (!server) {
      t.skip('CONSUL_HTTP_ADDR names an outside agent: this test stops and starts the server it starts itself');
      return;
    }
    const srv = server;
    const prefix = `${RUN_PREFIX}/${randomBytes(4).toString('hex')}/`;
    const store = await openStore(storeUrl(), { logger, prefix, timeoutMs: 2000 });
    try {
      const lease = await store.grantLease(CONSUL_MIN_TTL_SECONDS);
      let lost = 0;
      lease.onLost(() => lost++);
      await store.put('held', 'v', { lease });
      await srv.down();
      await new Promise((r) => setTimeout(r, (CONSUL_MIN_TTL_SECONDS + 5) * 1000));
      await srv.up();
      // Past the point where the session would have expired, had Consul not kept it.
      await new Promise((r) => setTimeout(r, (2 * CONSUL_MIN_TTL_SECONDS + 5) * 1000));
      assert.equal(lost, 0, 'the session was declared lost although Consul kept it');
      assert.equal((await store.get('held'))?.value, 'v', 'the key held by the session is still there');
      await lease.revoke();
      assert.equal(await store.get('held'), undefined);
    } finally {
      await store.deletePrefix('').catch(() => undefined);
      await store.close();
    }
  });

  test('right after a restart, no read is stale: every listing and every watch listing holds every key', { timeout: 180_000 }, async () => {
    // A server of its own: this one is killed and restarted many times.
    const srv = await startConsul();
    const KEYS = 200;
    const ROUNDS = 12;
    const url = `consul://${srv.address}`;
    const writer = await openStore(url, { logger, prefix: 'stale/' });
    // A short deadline: each try fails at once while the server is down, so the loop below
    // reads again within milliseconds of the server answering, when a newly elected server
    // can still be replaying its log (hashicorp/consul#2644).
    const reader = await openStore(url, { logger, prefix: 'stale/', timeoutMs: 150 });
    const resets: number[] = [];
    let deletes = 0;
    let watch: { close(): Promise<void> } | undefined;
    const short: string[] = [];
    let answered = 0;
    try {
      for (let i = 0; i < KEYS; i++) await writer.put(`k${i}`, 'v0');
      watch = reader.watch('', {
        onReset: (entries) => resets.push(entries.length),
        onEvents: (events) => (deletes += events.filter((e) => e.type === 'delete').length),
      });
      for (let round = 1; round <= ROUNDS; round++) {
        // Log entries past the server's last snapshot, which only a replay restores.
        for (let i = 0; i < 20; i++) await writer.put(`k${i}`, `v${round}`);
        await srv.down();
        let reading = true;
        const poll = (async () => {
          while (reading) {
            try {
              const n = (await reader.list('')).length;
              answered++;
              if (n < KEYS) short.push(`round ${round}: a listing of ${n} keys`);
            } catch {
              // down, or no leader yet
            }
            await new Promise((r) => setTimeout(r, 2));
          }
        })();
        await srv.up();
        await new Promise((r) => setTimeout(r, 300));
        reading = false;
        await poll;
      }
      assert.ok(answered > ROUNDS, `the reads were answered (${answered})`);
      assert.deepEqual(short, [], 'a read right after the restart missed keys');
      assert.ok(resets.length > 0 && resets.every((n) => n === KEYS), `every watch listing holds every key: ${resets.join(' ')}`);
      assert.equal(deletes, 0, 'the watch reported deletes that never happened');
    } finally {
      await watch?.close();
      await reader.close();
      await writer.close();
      await srv.stop();
    }
  });

  test('a restarted holder takes its key over from its previous session, which then ends without deleting it', { timeout: 60_000 }, async (t) => {
    if (!server) {
      t.skip('CONSUL_HTTP_ADDR names an outside agent: this test destroys a session through the API of the server it starts');
      return;
    }
    const prefix = `${RUN_PREFIX}/${randomBytes(4).toString('hex')}/`;
    const before = await openStore(storeUrl(), { logger, prefix });
    const oldLease = await before.grantLease(CONSUL_MIN_TTL_SECONDS);
    await before.put('hosts/h2', 'first run', { lease: oldLease });
    await before.close(); // a plugin stopping: its session is left to its TTL
    const after = await openStore(storeUrl(), { logger, prefix });
    try {
      const lease = await after.grantLease(CONSUL_MIN_TTL_SECONDS);
      const rev = await after.put('hosts/h2', 'second run', { lease });
      assert.equal((await after.get('hosts/h2'))?.value, 'second run');
      // The previous session ends (its TTL, here at once): the key is no longer its to delete.
      const destroyed = await server.api('PUT', `/v1/session/destroy/${oldLease.id}`);
      assert.equal(destroyed.status, 200, destroyed.text);
      assert.equal((await after.get('hosts/h2'))?.revision, rev, 'the key survives the old session');
      // And compare-and-set with a lease at the current revision works the same way.
      const other = await openStore(storeUrl(), { logger, prefix });
      const third = await other.grantLease(CONSUL_MIN_TTL_SECONDS);
      assert.ok((await other.compareAndSet('hosts/h2', 'third run', rev, { lease: third })) !== undefined);
      assert.equal(await other.compareAndSet('hosts/h2', 'stale', rev, { lease: third }), undefined, 'a stale revision still fails');
      await third.revoke();
      assert.equal(await after.get('hosts/h2'), undefined, 'the key now goes with the session holding it');
      await other.close();
    } finally {
      await after.deletePrefix('').catch(() => undefined);
      await after.close();
    }
  });

  // The ACL token is used, a wrong one is refused clearly, and neither ever reaches the log.
  test('Consul ACL token: used, a wrong one refused with a clear error, never logged', async () => {
    const token = aclToken ?? process.env.CONSUL_HTTP_TOKEN;
    assert.ok(token, 'an ACL token to test with');
    const url = aclServer ? `consul://${aclServer.address}` : 'consul://';
    let logged = '';
    const sink = new Writable({
      write(chunk: Buffer, _enc, done) {
        logged += chunk.toString();
        done();
      },
    });
    const capture = winston.createLogger({ level: 'debug', transports: [new winston.transports.Stream({ stream: sink })] });
    const prefix = `tsoverlay/v1/${RUN_PREFIX}/${randomBytes(4).toString('hex')}/`;
    const good = await openStore(url, { logger: capture, prefix, consulToken: token });
    const wrongToken = `wrong-${randomBytes(8).toString('hex')}`;
    try {
      await good.put('acl-check', 'ok');
      assert.equal((await good.get('acl-check'))?.value, 'ok');
      const wrong = await openStore(url, { logger: capture, prefix, consulToken: wrongToken }).catch((err: unknown) => err as Error);
      if (wrong instanceof Error) {
        assert.match(wrong.message, /permission denied|ACL/i);
      } else {
        await assert.rejects(wrong.get('acl-check'), /permission denied \(check the Consul ACL token\)/);
        await wrong.close();
      }
    } finally {
      await good.deletePrefix('');
      await good.close();
    }
    assert.ok(!logged.includes(token), 'the ACL token appears in the log');
    assert.ok(!logged.includes(wrongToken), 'the wrong token appears in the log');
  });
}
