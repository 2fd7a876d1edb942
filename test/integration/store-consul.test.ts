/**
 * Store contract against a real Consul agent, when CONSUL_HTTP_ADDR names one
 * (CONSUL_HTTP_TOKEN if ACLs are enabled). Consul cannot be installed on the CI host,
 * so without it the suite is skipped with the reason printed.
 */
import { test } from 'node:test';
import { randomBytes } from 'node:crypto';

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
}
