/**
 * The etcd backend over mutual TLS with password authentication enabled: the full Store
 * contract through openStore('etcds://…', {etcd: {caFile, certFile, keyFile, username, password}}),
 * plus the failure modes a misconfigured host would hit.
 */
import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';

import { silentLogger } from '../../src/log';
import { EtcdConnectOptions, openStore } from '../../src/store/open';
import { Store, StoreUnavailableError } from '../../src/store/store';
import { EtcdServer, RUN_PREFIX, startEtcd } from '../helpers/etcd';
import { StoreFixture, runStoreContract } from '../helpers/store-contract';

const logger = silentLogger();
const PASSWORD = `pw-${randomBytes(6).toString('hex')}`;
let etcd: EtcdServer | undefined;

before(async () => {
  etcd = await startEtcd({ tls: true, rootPassword: PASSWORD });
});

after(async () => {
  await etcd?.stop();
});

function server(): EtcdServer {
  if (!etcd) throw new Error('etcd not started');
  return etcd;
}

function url(): string {
  return `etcds://${server().endpoints.join(',')}`;
}

function credentials(overrides: Partial<EtcdConnectOptions> = {}): EtcdConnectOptions {
  const pki = server().pki;
  if (!pki) throw new Error('no pki');
  return { ...pki, username: 'root', password: PASSWORD, ...overrides };
}

async function fixture(): Promise<StoreFixture> {
  const prefix = `${RUN_PREFIX}/${randomBytes(4).toString('hex')}/`;
  const opened: Store[] = [];
  const open = async (sub = ''): Promise<Store> => {
    const s = await openStore(url(), { logger, prefix: prefix + sub, etcd: credentials() });
    opened.push(s);
    return s;
  };
  const store = await open();
  return {
    store,
    open,
    cleanup: async () => {
      for (const s of opened) await s.close();
      const admin = await openStore(url(), { logger, prefix, etcd: credentials() });
      await admin.deletePrefix('');
      await admin.close();
    },
  };
}

runStoreContract('etcd over mutual TLS with auth', fixture);

describe('etcd TLS/auth failure modes', () => {
  test('description shows etcds:// and no credentials', async () => {
    const store = await openStore(url(), { logger, etcd: credentials() });
    try {
      assert.equal(store.description, `etcds://${server().endpoints[0]}`);
      assert.doesNotMatch(store.description, new RegExp(PASSWORD));
    } finally {
      await store.close();
    }
  });

  test('wrong password: a clear, non-retryable error', async () => {
    const store = await openStore(url(), { logger, etcd: credentials({ password: 'wrong' }), timeoutMs: 3000 });
    try {
      await assert.rejects(store.get('x'), (err: unknown) => {
        assert.ok(!(err instanceof StoreUnavailableError), `got ${String(err)}`);
        assert.match(String(err), /authentication failed/);
        assert.doesNotMatch(String(err), /wrong/);
        return true;
      });
    } finally {
      await store.close();
    }
  });

  test('no password while auth is enabled: refused', async () => {
    const store = await openStore(url(), { logger, etcd: credentials({ username: undefined, password: undefined }), timeoutMs: 3000 });
    try {
      await assert.rejects(store.put('x', '1'), /permission denied|user name is empty|authentication|invalid auth token/i);
    } finally {
      await store.close();
    }
  });

  test('plain etcd:// (no TLS) against a TLS-only server fails within the deadline', async () => {
    const store = await openStore(`etcd://${server().endpoints.join(',')}`, { logger, timeoutMs: 1000 });
    try {
      const t0 = Date.now();
      await assert.rejects(store.get('x'), StoreUnavailableError);
      assert.ok(Date.now() - t0 < 2500);
    } finally {
      await store.close();
    }
  });

  test('a missing certificate file is reported by name', async () => {
    await assert.rejects(
      openStore(url(), { logger, etcd: credentials({ caFile: '/nonexistent/ca.pem' }) }),
      /etcd CA file \/nonexistent\/ca\.pem cannot be read/,
    );
  });
});
