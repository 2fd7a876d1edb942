/**
 * Store contract against a real Consul agent, when CONSUL_HTTP_ADDR names one
 * (CONSUL_HTTP_TOKEN if ACLs are enabled). Consul cannot be installed on the CI host,
 * so without it the suite is skipped with the reason printed.
 */
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { randomBytes } from 'node:crypto';
import { Writable } from 'node:stream';
import winston from 'winston';

import { silentLogger } from '../../src/log';
import { CONSUL_MIN_TTL_SECONDS } from '../../src/store/consul';
import { openStore } from '../../src/store/open';
import type { Store } from '../../src/store/store';
import { RUN_PREFIX } from '../helpers/etcd';
import { StoreFixture, runStoreContract } from '../helpers/store-contract';

const logger = silentLogger();
const addr = process.env.CONSUL_HTTP_ADDR;

if (!addr) {
  test('Store contract: consul', (t) => {
    t.skip('CONSUL_HTTP_ADDR not set: no Consul agent to test against (set CONSUL_HTTP_ADDR=host:8500, and CONSUL_HTTP_TOKEN if ACLs are on)');
  });
} else {
  const fixture = async (): Promise<StoreFixture> => {
    const prefix = `${RUN_PREFIX}/${randomBytes(4).toString('hex')}/`;
    const opened: Store[] = [];
    const open = async (sub = ''): Promise<Store> => {
      const s = await openStore('consul://', { logger, prefix: prefix + sub });
      opened.push(s);
      return s;
    };
    const store = await open();
    return {
      store,
      open,
      cleanup: async () => {
        for (const s of opened) await s.close();
        const admin = await openStore('consul://', { logger, prefix });
        await admin.deletePrefix('');
        await admin.close();
      },
    };
  };
  // Consul sessions: TTL ≥ 10 s, and Consul may take up to 2 × TTL to invalidate one.
  runStoreContract('consul', fixture, {
    leaseTtlSeconds: CONSUL_MIN_TTL_SECONDS,
    leaseExpiryBoundMs: 2 * CONSUL_MIN_TTL_SECONDS * 1000 + 10_000,
  });

  // Issue "Resilience", item 7: the ACL token is used, a wrong one is refused clearly, and
  // neither ever reaches the log. Needs an agent with ACLs on (default policy deny).
  const token = process.env.CONSUL_HTTP_TOKEN;
  test('Consul ACL token: used, a wrong one refused with a clear error, never logged', { skip: token ? false : 'CONSUL_HTTP_TOKEN not set: ACLs are off on this agent' }, async () => {
    let logged = '';
    const sink = new Writable({
      write(chunk: Buffer, _enc, done) {
        logged += chunk.toString();
        done();
      },
    });
    const capture = winston.createLogger({ level: 'debug', transports: [new winston.transports.Stream({ stream: sink })] });
    const prefix = `${RUN_PREFIX}/${randomBytes(4).toString('hex')}/`;
    const good = await openStore('consul://', { logger: capture, prefix, consulToken: token! });
    const wrongToken = `wrong-${randomBytes(8).toString('hex')}`;
    try {
      await good.put('acl-check', 'ok');
      assert.equal((await good.get('acl-check'))?.value, 'ok');
      const wrong = await openStore('consul://', { logger: capture, prefix, consulToken: wrongToken }).catch((err: unknown) => err as Error);
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
    assert.ok(!logged.includes(token!), 'the ACL token appears in the log');
    assert.ok(!logged.includes(wrongToken), 'the wrong token appears in the log');
  });
}
