import os from 'node:os';
import { parseArgs } from 'node:util';
import type { LogLevel } from './log';
import { isIPv4 } from './driver/subnet';

export interface DaemonConfig {
  socket: string;
  store: string;
  storePrefix: string;
  netnsDir: string;
  /** Underlay address; undefined = the address of the interface holding the default route. */
  vtep?: string;
  /** Underlay MTU; undefined = the MTU of the VTEP's interface. */
  underlayMtu?: number;
  hostName: string;
  scope: 'local' | 'global';
  logLevel: LogLevel;
  leaseTtlSeconds: number;
  reconcileIntervalSeconds: number;
}

interface OptionSpec {
  env: string;
  help: string;
  default?: string;
}

/** Every option: a `--flag`, and a `TSOVERLAY_*` variable because managed plugins are configured through env. */
export const OPTIONS = {
  socket: { env: 'TSOVERLAY_SOCKET', default: '/run/docker/plugins/tsoverlay.sock', help: 'Unix socket Docker talks to' },
  store: { env: 'TSOVERLAY_STORE', default: 'local:///var/lib/tsoverlay', help: 'local:///dir, etcd://host:2379[,host2:2379] or consul://host:8500' },
  'store-prefix': { env: 'TSOVERLAY_STORE_PREFIX', default: 'tsoverlay/v1/', help: 'key prefix in the store' },
  'netns-dir': { env: 'TSOVERLAY_NETNS_DIR', default: '/run/tsoverlay/netns', help: 'where overlay namespace files are mounted' },
  vtep: { env: 'TSOVERLAY_VTEP', help: 'underlay IPv4 address of this host (default: address of the default-route interface)' },
  'underlay-mtu': { env: 'TSOVERLAY_UNDERLAY_MTU', help: 'underlay MTU (default: MTU of the VTEP interface); overlay MTU is 50 less' },
  'host-name': { env: 'TSOVERLAY_HOST_NAME', help: 'name of this host in the store (default: the hostname)' },
  scope: { env: 'TSOVERLAY_SCOPE', default: 'local', help: 'scope reported to Docker: local, or global (swarm, managed plugin)' },
  'log-level': { env: 'TSOVERLAY_LOG_LEVEL', default: 'info', help: 'error, warn, info or debug' },
  'reconcile-interval': { env: 'TSOVERLAY_RECONCILE_INTERVAL', default: '10', help: 'seconds between full kernel-vs-store comparisons' },
  'lease-ttl': { env: 'TSOVERLAY_LEASE_TTL', default: '10', help: 'seconds after which a dead host’s entries are removed' },
} satisfies Record<string, OptionSpec>;

type OptionName = keyof typeof OPTIONS;

export function usage(): string {
  const rows = Object.entries(OPTIONS).map(([name, spec]) => {
    const def = 'default' in spec ? ` (default ${spec.default})` : '';
    return `  --${name.padEnd(14)} $${spec.env.padEnd(24)} ${spec.help}${def}`;
  });
  return ['usage: tsoverlay serve [options]', '', ...rows].join('\n');
}

export function parseConfig(argv: string[], env: NodeJS.ProcessEnv): DaemonConfig {
  const { values } = parseArgs({
    args: argv,
    options: Object.fromEntries(Object.keys(OPTIONS).map((k) => [k, { type: 'string' as const }])),
    strict: true,
    allowPositionals: false,
  });
  const get = (name: OptionName): string | undefined => {
    const spec: OptionSpec = OPTIONS[name];
    const flag = values[name];
    return (typeof flag === 'string' ? flag : undefined) ?? env[spec.env] ?? spec.default;
  };
  const logLevel = get('log-level');
  if (!['error', 'warn', 'info', 'debug'].includes(logLevel ?? '')) throw new Error(`invalid --log-level "${logLevel}"`);
  const scope = get('scope');
  if (scope !== 'local' && scope !== 'global') throw new Error(`invalid --scope "${scope}" (local or global)`);
  const vtep = get('vtep') || undefined;
  if (vtep && !isIPv4(vtep)) throw new Error(`invalid --vtep "${vtep}": an IPv4 address`);
  const mtuText = get('underlay-mtu');
  const underlayMtu = mtuText ? Number(mtuText) : undefined;
  if (underlayMtu !== undefined && !(Number.isInteger(underlayMtu) && underlayMtu >= 1330 && underlayMtu <= 65535)) {
    throw new Error(`invalid --underlay-mtu "${mtuText}"`);
  }
  const ttl = Number(get('lease-ttl'));
  if (!Number.isInteger(ttl) || ttl < 2 || ttl > 3600) throw new Error(`invalid --lease-ttl "${get('lease-ttl')}" (2..3600 seconds)`);
  const interval = Number(get('reconcile-interval'));
  if (!Number.isFinite(interval) || interval < 1 || interval > 3600) {
    throw new Error(`invalid --reconcile-interval "${get('reconcile-interval')}" (1..3600 seconds)`);
  }
  const hostName = get('host-name') || os.hostname();
  if (!/^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}$/.test(hostName)) throw new Error(`invalid --host-name "${hostName}"`);
  return {
    socket: get('socket')!,
    store: get('store')!,
    storePrefix: get('store-prefix')!,
    netnsDir: get('netns-dir')!,
    ...(vtep ? { vtep } : {}),
    ...(underlayMtu !== undefined ? { underlayMtu } : {}),
    hostName,
    scope,
    logLevel: logLevel as LogLevel,
    leaseTtlSeconds: ttl,
    reconcileIntervalSeconds: interval,
  };
}
