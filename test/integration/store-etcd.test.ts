import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import * as net from 'node:net';
import { promisify } from 'node:util';

import { silentLogger } from '../../src/log';
import { EtcdStore } from '../../src/store/etcd';
import { openStore } from '../../src/store/open';
import { Store, StoreUnavailableError } from '../../src/store/store';
import { EtcdServer, RUN_PREFIX, startEtcd } from '../helpers/etcd';
import { StoreFixture, WatchRecorder, runStoreContract, waitFor } from '../helpers/store-contract';

const logger = silentLogger();
const run = promisify(execFile);
let etcd: EtcdServer | undefined;

before(async () => {
  etcd = await startEtcd();
});

after(async () => {
  await etcd?.stop();
});

function server(): EtcdServer {
  if (!etcd) throw new Error('etcd not started');
  return etcd;
}

function uniquePrefix(): string {
  return `${RUN_PREFIX}/${randomBytes(4).toString('hex')}/`;
}

async function etcdFixture(): Promise<StoreFixture> {
  const prefix = uniquePrefix();
  const opened: Store[] = [];
  const open = async (sub = ''): Promise<Store> => {
    const s = new EtcdStore({ endpoints: server().endpoints, prefix: prefix + sub, logger });
    opened.push(s);
    return s;
  };
  const store = await open();
  return {
    store,
    open,
    cleanup: async () => {
      for (const s of opened) await s.close();
      const admin = new EtcdStore({ endpoints: server().endpoints, prefix, logger });
      await admin.deletePrefix('');
      await admin.close();
    },
  };
}

runStoreContract('etcd', etcdFixture);

async function etcdctl(...args: string[]): Promise<string> {
  const { stdout } = await run('etcdctl', ['--endpoints', server().endpoints.join(','), ...args], {
    env: { ...process.env, ETCDCTL_API: '3' },
  });
  return stdout;
}

async function closedPort(): Promise<number> {
  return new Promise((resolve) => {
    const srv = net.createServer().listen(0, '127.0.0.1', () => {
      const addr = srv.address();
      srv.close(() => resolve(typeof addr === 'object' && addr ? addr.port : 1));
    });
  });
}

describe('etcd backend specifics', () => {
  test('keys are stored under the prefix as readable JSON', async () => {
    const prefix = uniquePrefix();
    const store = new EtcdStore({ endpoints: server().endpoints, prefix, logger });
    try {
      await store.put('networks/n1', JSON.stringify({ vni: 256 }));
      assert.equal((await etcdctl('get', '--print-value-only', `${prefix}networks/n1`)).trim(), '{"vni":256}');
    } finally {
      await store.deletePrefix('');
      await store.close();
    }
  });

  test('openStore(etcd://…) and description without credentials', async () => {
    const store = await openStore(`etcd://${server().endpoints.join(',')}`, { logger, prefix: uniquePrefix() });
    try {
      assert.equal(store.description, `etcd://${server().endpoints[0]}`);
      assert.equal(store.distributed, true);
      const r = await store.put('x', '1');
      assert.equal((await store.get('x'))?.revision, r);
      await store.deletePrefix('');
    } finally {
      await store.close();
    }
  });

  test('onLost fires when etcd drops the lease behind the holder\'s back', { timeout: 20_000 }, async (t) => {
    const store = new EtcdStore({ endpoints: server().endpoints, prefix: uniquePrefix(), logger });
    try {
      const lease = await store.grantLease(3);
      await store.put('hosts/me', 'v', { lease });
      let lostAt = 0;
      lease.onLost(() => (lostAt = Date.now()));
      const revokedAt = Date.now();
      await etcdctl('lease', 'revoke', BigInt(lease.id).toString(16));
      await waitFor(() => lostAt > 0, 10_000, 'onLost');
      t.diagnostic(`onLost fired ${lostAt - revokedAt} ms after an external revoke (TTL 3 s, keepalive every 1 s)`);
      assert.equal(await store.get('hosts/me'), undefined);
      await assert.rejects(store.put('hosts/me', 'again', { lease }));
      let late = 0;
      lease.onLost(() => late++);
      await new Promise((r) => setTimeout(r, 10));
      assert.equal(late, 1, 'a listener added after the loss is still told');
    } finally {
      await store.deletePrefix('');
      await store.close();
    }
  });

  test('unreachable endpoint: StoreUnavailableError within the deadline', async () => {
    const port = await closedPort();
    const store = new EtcdStore({ endpoints: [`127.0.0.1:${port}`], logger, timeoutMs: 1000 });
    try {
      const t0 = Date.now();
      await assert.rejects(store.get('x'), (err: unknown) => {
        assert.ok(err instanceof StoreUnavailableError, String(err));
        assert.match(err.message, new RegExp(`etcd://127\\.0\\.0\\.1:${port}`));
        return true;
      });
      assert.ok(Date.now() - t0 < 2500, `failed after ${Date.now() - t0} ms`);
      await assert.rejects(store.put('x', '1'), StoreUnavailableError);
      await assert.rejects(store.grantLease(2), StoreUnavailableError);
    } finally {
      await store.close();
    }
  });

  test('hung server (SIGSTOP): every call fails within the deadline, then recovers', { timeout: 30_000 }, async (t) => {
    const store = new EtcdStore({ endpoints: server().endpoints, prefix: uniquePrefix(), logger, timeoutMs: 1000 });
    try {
      await store.put('k', 'before');
      server().freeze();
      try {
        for (const [what, call] of [
          ['get', () => store.get('k')],
          ['put', () => store.put('k', 'during')],
          ['create', () => store.create('k2', 'during')],
          ['list', () => store.list('')],
        ] as const) {
          const t0 = Date.now();
          await assert.rejects(call(), StoreUnavailableError, what);
          const took = Date.now() - t0;
          assert.ok(took < 2000, `${what} took ${took} ms`);
          t.diagnostic(`${what} against a frozen etcd failed after ${took} ms (deadline 1000 ms)`);
        }
      } finally {
        server().thaw();
      }
      await waitFor(
        async () => {
          try {
            return (await store.get('k')) !== undefined;
          } catch {
            return false;
          }
        },
        15_000,
        'calls to succeed again',
      );
      await store.deletePrefix('');
    } finally {
      await store.close();
    }
  });

  test('watch re-lists (onReset) after etcd restarts and keeps delivering events', { timeout: 60_000 }, async (t) => {
    const store = new EtcdStore({ endpoints: server().endpoints, prefix: uniquePrefix(), logger, timeoutMs: 2000 });
    const rec = new WatchRecorder();
    const watch = store.watch('r/', rec);
    try {
      await store.put('r/1', 'a');
      await waitFor(() => rec.state.has('r/1'), 10_000, 'first event');
      await server().down();
      await waitFor(() => rec.errors.length > 0, 10_000, 'onError while etcd is down');
      const upAt = Date.now();
      await server().up();
      await waitFor(() => rec.resets.length >= 2, 30_000, 'a second onReset after restart');
      t.diagnostic(`watch re-listed ${Date.now() - upAt} ms after etcd came back; errors seen: ${rec.errors.length}`);
      assert.deepEqual(rec.resets.at(-1)?.map((e) => [e.key, e.value]), [['r/1', 'a']]);
      await waitFor(
        async () => {
          try {
            await store.put('r/2', 'b');
            return true;
          } catch {
            return false;
          }
        },
        15_000,
        'writes to work again',
      );
      await waitFor(() => rec.state.get('r/2')?.value === 'b', 10_000, 'event after restart');
      await store.deletePrefix('');
    } finally {
      await watch.close();
      await store.close();
    }
  });

  test('watch keeps delivering across a history compaction', { timeout: 30_000 }, async () => {
    const store = new EtcdStore({ endpoints: server().endpoints, prefix: uniquePrefix(), logger });
    const rec = new WatchRecorder();
    const watch = store.watch('h/', rec);
    try {
      await waitFor(() => rec.resets.length === 1, 10_000, 'first reset');
      let rev = 0;
      for (let i = 0; i < 20; i++) rev = await store.put('h/k', String(i));
      await etcdctl('compaction', String(rev));
      await store.put('h/k', 'after-compaction');
      await waitFor(() => rec.state.get('h/k')?.value === 'after-compaction', 10_000, 'event after compaction');
      await store.deletePrefix('');
    } finally {
      await watch.close();
      await store.close();
    }
  });

  test('a prefixed client never sees keys outside its prefix', async () => {
    const prefix = uniquePrefix();
    await etcdctl('put', `${prefix.slice(0, -1)}`, 'sibling-without-slash');
    await etcdctl('put', `${prefix.slice(0, -1)}x/k`, 'sibling');
    const store = new EtcdStore({ endpoints: server().endpoints, prefix, logger });
    try {
      await store.put('k', 'mine');
      assert.deepEqual((await store.list('')).map((e) => e.key), ['k']);
      await store.deletePrefix('');
      assert.equal((await etcdctl('get', '--print-value-only', `${prefix.slice(0, -1)}x/k`)).trim(), 'sibling');
    } finally {
      await etcdctl('del', `${prefix.slice(0, -1)}`);
      await etcdctl('del', `${prefix.slice(0, -1)}x/k`);
      await store.close();
    }
  });

  test('list pages through large ranges at one revision', { timeout: 60_000 }, async () => {
    const store = new EtcdStore({ endpoints: server().endpoints, prefix: uniquePrefix(), logger });
    try {
      const n = 2500;
      for (let i = 0; i < n; i += 100) {
        await Promise.all(
          Array.from({ length: Math.min(100, n - i) }, (_, j) => store.put(`big/${String(i + j).padStart(5, '0')}`, 'x')),
        );
      }
      const listed = await store.list('big/');
      assert.equal(listed.length, n);
      assert.equal(listed[0]?.key, 'big/00000');
      assert.equal(listed.at(-1)?.key, `big/${String(n - 1).padStart(5, '0')}`);
      await store.deletePrefix('');
    } finally {
      await store.close();
    }
  });
});
