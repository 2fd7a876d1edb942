import { describe, test } from 'node:test';
import assert from 'node:assert/strict';

import { silentLogger } from '../../src/log';
import { openStore, parseStoreUrl, redactUrl, StoreUrlError } from '../../src/store/open';

const logger = silentLogger();

describe('store URL parsing', () => {
  test('local', () => {
    assert.deepEqual(parseStoreUrl('local:///var/lib/tsoverlay'), { kind: 'local', dir: '/var/lib/tsoverlay' });
    assert.deepEqual(parseStoreUrl('local:///var/lib/tsoverlay/'), { kind: 'local', dir: '/var/lib/tsoverlay' });
    assert.deepEqual(parseStoreUrl('local:///tmp/with%20space'), { kind: 'local', dir: '/tmp/with space' });
    assert.throws(() => parseStoreUrl('local://var/lib'), StoreUrlError);
    assert.throws(() => parseStoreUrl('local://'), /absolute directory/);
  });

  test('etcd: one or several endpoints, default port, IPv6, TLS scheme, credentials', () => {
    assert.deepEqual(parseStoreUrl('etcd://10.0.0.1:2379'), {
      kind: 'etcd',
      secure: false,
      endpoints: [{ host: '10.0.0.1', port: 2379 }],
      username: undefined,
      password: undefined,
    });
    const multi = parseStoreUrl('etcds://a:1,b,[fd00::1]:3');
    assert.equal(multi.kind, 'etcd');
    if (multi.kind === 'etcd') {
      assert.equal(multi.secure, true);
      assert.deepEqual(multi.endpoints, [
        { host: 'a', port: 1 },
        { host: 'b', port: 2379 },
        { host: 'fd00::1', port: 3 },
      ]);
    }
    const withAuth = parseStoreUrl('etcd://root:p%40ss@h:2379');
    assert.ok(withAuth.kind === 'etcd' && withAuth.username === 'root' && withAuth.password === 'p@ss');
    assert.throws(() => parseStoreUrl('etcd://'), /no etcd endpoint/);
    assert.throws(() => parseStoreUrl('etcd://h:99999'), /bad port/);
    assert.throws(() => parseStoreUrl('etcd://h:2379/path'), /unexpected path/);
  });

  test('consul: explicit host, CONSUL_HTTP_ADDR, default', () => {
    assert.deepEqual(parseStoreUrl('consul://c1:8501', {}), { kind: 'consul', secure: false, host: 'c1', port: 8501 });
    assert.deepEqual(parseStoreUrl('consul://', { CONSUL_HTTP_ADDR: '10.1.1.1:8500' }), {
      kind: 'consul',
      secure: false,
      host: '10.1.1.1',
      port: 8500,
    });
    assert.deepEqual(parseStoreUrl('consul://', { CONSUL_HTTP_ADDR: 'https://consul.example:8501' }), {
      kind: 'consul',
      secure: true,
      host: 'consul.example',
      port: 8501,
    });
    assert.deepEqual(parseStoreUrl('consul:', { CONSUL_HTTP_ADDR: 'c:1', CONSUL_HTTP_SSL: 'true' }), {
      kind: 'consul',
      secure: true,
      host: 'c',
      port: 1,
    });
    assert.deepEqual(parseStoreUrl('consul://', {}), { kind: 'consul', secure: false, host: '127.0.0.1', port: 8500 });
    assert.deepEqual(parseStoreUrl('consuls://c', {}), { kind: 'consul', secure: true, host: 'c', port: 8500 });
  });

  test('consul: several servers (or agents), tried in order', () => {
    assert.deepEqual(parseStoreUrl('consul://s1:8500,s2,[fd00::3]:8501', {}), {
      kind: 'consul',
      secure: false,
      host: 's1',
      port: 8500,
      fallbacks: [
        { host: 's2', port: 8500 },
        { host: 'fd00::3', port: 8501 },
      ],
    });
    assert.throws(() => parseStoreUrl('consul://s1,,s2', {}), /bad host/);
  });

  test('unknown scheme and credential redaction', () => {
    assert.throws(() => parseStoreUrl('redis://h'), /unknown scheme/);
    assert.throws(() => parseStoreUrl('etcd://u:secret@h:99999'), (err: unknown) => {
      assert.ok(err instanceof StoreUrlError);
      assert.doesNotMatch(err.message, /secret/);
      return true;
    });
    assert.equal(redactUrl('etcd://u:secret@h:1,h2:2'), 'etcd://h:1,h2:2');
  });
});

describe('openStore descriptions never carry secrets', () => {
  test('etcd with credentials in the URL and TLS scheme', async () => {
    const store = await openStore('etcds://admin:hunter2@127.0.0.1:1,[::1]:2', { logger, timeoutMs: 200 });
    try {
      assert.equal(store.description, 'etcds://127.0.0.1:1,[::1]:2');
      assert.equal(store.distributed, true);
    } finally {
      await store.close();
    }
  });

  test('consul with a token', async () => {
    const store = await openStore('consul://', {
      logger,
      consulToken: 'tok-secret',
      env: { CONSUL_HTTP_ADDR: '127.0.0.1:1' },
    });
    try {
      assert.equal(store.description, 'consul://127.0.0.1:1');
      assert.doesNotMatch(store.description, /tok-secret/);
    } finally {
      await store.close();
    }
  });

  test('consul unreachable: StoreUnavailableError, not a hang', async () => {
    const { StoreUnavailableError } = await import('../../src/store/store');
    const store = await openStore('consul://127.0.0.1:1', { logger, timeoutMs: 500, consulToken: 'x' });
    try {
      const t0 = Date.now();
      await assert.rejects(store.get('k'), StoreUnavailableError);
      await assert.rejects(store.put('k', 'v'), StoreUnavailableError);
      await assert.rejects(store.grantLease(10), StoreUnavailableError);
      assert.ok(Date.now() - t0 < 3000);
    } finally {
      await store.close();
    }
  });

  for (const url of ['consul://127.0.0.1:1', 'etcd://127.0.0.1:1']) {
    test(`${url} unreachable: a watch reports onError, retries, and closes promptly`, async () => {
      const store = await openStore(url, { logger, timeoutMs: 500 });
      const errors: Error[] = [];
      let resets = 0;
      const watch = store.watch('x/', {
        onReset: () => resets++,
        onEvents: () => undefined,
        onError: (e) => errors.push(e),
      });
      try {
        const t0 = Date.now();
        while (errors.length < 2 && Date.now() - t0 < 5000) await new Promise((r) => setTimeout(r, 20));
        assert.ok(errors.length >= 2, `errors: ${errors.length}`);
        assert.ok(errors.every((e) => e.name === 'StoreUnavailableError'), errors.map(String).join('; '));
        assert.equal(resets, 0);
      } finally {
        const t1 = Date.now();
        await watch.close();
        await store.close();
        assert.ok(Date.now() - t1 < 1500, `close took ${Date.now() - t1} ms`);
      }
    });
  }
});
