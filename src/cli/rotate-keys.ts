/**
 * `tsoverlay rotate-keys`: one key-rotation step for every encrypted network of the cluster,
 * now. It moves the key ring's primary epoch in the store (compare-and-set); every host's daemon
 * sees the change through its watch and switches make-before-break. Refused, with the hosts
 * named, while a host has not applied the previous step yet.
 */
import { parseArgs } from 'node:util';
import { OPTIONS, parseConfig } from '../config';
import { readHosts, rotateOnce } from '../crypto/ring-store';
import { silentLogger } from '../log';
import { openStore, parseStoreUrl } from '../store/open';
import { errorMessage } from '../util/errors';

export function rotateKeysUsage(): string {
  return [
    'usage: tsoverlay rotate-keys [--store URL] [--store-prefix P]',
    '  moves every encrypted network of the cluster to new keys now (the schedule does it every',
    '  --key-rotation-interval); the other options are those of `tsoverlay serve`',
  ].join('\n');
}

export async function runRotateKeys(argv: string[], env: NodeJS.ProcessEnv): Promise<{ output: string; exitCode: number }> {
  const serveOptions = Object.fromEntries(Object.keys(OPTIONS).map((k) => [k, { type: 'string' as const }]));
  const { values } = parseArgs({ args: argv, options: serveOptions, strict: true, allowPositionals: false });
  const serveArgv: string[] = [];
  for (const name of Object.keys(OPTIONS)) {
    const v = (values as Record<string, unknown>)[name];
    if (typeof v === 'string') serveArgv.push(`--${name}`, v);
  }
  // Only the store options matter here, and this may run on a machine that is no host of the
  // cluster: its hostname (`(none)` in a bare VM or container) must not make the command fail.
  if (typeof values['host-name'] !== 'string' && !env.TSOVERLAY_HOST_NAME) serveArgv.push('--host-name', 'rotate-keys');
  const config = parseConfig(serveArgv, env);
  if (parseStoreUrl(config.store).kind === 'local') {
    return {
      output: 'rotate-keys: the embedded store serves one host, which has no peer to encrypt to; rotation is for etcd or Consul clusters\n',
      exitCode: 1,
    };
  }
  const store = await openStore(config.store, { prefix: config.storePrefix, logger: silentLogger(), timeoutMs: config.storeTimeoutSeconds * 1000 });
  try {
    const r = await rotateOnce(store, { by: 'cli' });
    if (r.rotated) {
      const hosts = (await readHosts(store)).map((h) => h.name);
      return { output: `key epoch ${r.record.epoch} is now primary; ${hosts.length} host(s) switch over as they see it: ${hosts.join(', ')}\n`, exitCode: 0 };
    }
    return { output: `rotate-keys: not rotated: ${r.reason}\n`, exitCode: 1 };
  } catch (err) {
    return { output: `rotate-keys: ${errorMessage(err)}\n`, exitCode: 1 };
  } finally {
    await store.close();
  }
}
