import fs from 'node:fs';
import ipaddr from 'ipaddr.js';
import os from 'node:os';
import { parseArgs } from 'node:util';
import type { LogLevel } from './log';
import { isIPv4 } from './driver/subnet';
import { DEFAULT_PROBE_PORT } from './dataplane/underlay-probe';
import { DEFAULT_ENCRYPTED_VXLAN_PORT } from './dataplane/overlay-check';
import { DEFAULT_ROTATION_INTERVAL_SECONDS } from './crypto/ring';
import { DEFAULT_TIMEOUT_MS } from './store/util';
import { DEFAULT_REQUEST_TIMEOUT_MS } from './driver/request-deadline';
import { parseUpstreams, type Upstream } from './dns/upstream';

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
  storeTimeoutSeconds: number;
  /** One Docker request's time in all: its waits for locks and every store call it makes. */
  requestTimeoutSeconds: number;
  reconcileIntervalSeconds: number;
  /** etcd TLS: CA, client certificate and key, each a PEM file path or the PEM text itself. */
  etcdTls?: { ca?: string; cert?: string; key?: string };
  /** etcd authentication (user name and password; never logged). */
  etcdAuth?: { username: string; password: string };
  /** Group (gid) the plugin socket is given to, mode 0660; undefined = root only, mode 0600. */
  socketGroup?: number;
  /** Also serve /metrics and /healthz over TCP here; undefined = only on the plugin socket. */
  metricsAddress?: ListenAddress;
  /** Names across hosts: a DNS server on each network's gateway, names learned from this Docker API socket. */
  dns: { enabled: boolean; dockerSocket: string; upstreams?: Upstream[] };
  /** Where this host keeps what must survive reboots and is not in the store (its instance id). */
  stateDir: string;
  /** UDP port of the underlay liveness probe (see dataplane/underlay-probe.ts). */
  probePort: number;
  /** VXLAN UDP port of encrypted networks (docs/encryption.md). */
  encryptedVxlanPort: number;
  /** Seconds between scheduled key rotations of encrypted networks. */
  keyRotationIntervalSeconds: number;
}

export interface ListenAddress {
  host: string;
  port: number;
}

/** `host:port` or `[v6]:port`; the host is required (no listener on every interface by accident). */
export function parseListenAddress(text: string): ListenAddress {
  const m = /^(?:\[([0-9A-Fa-f:.]+)\]|([A-Za-z0-9.-]+)):(\d{1,5})$/.exec(text.trim());
  const port = m ? Number(m[3]) : NaN;
  if (!m || !(port >= 1 && port <= 65535)) throw new Error(`invalid address "${text}": expected host:port, e.g. 127.0.0.1:9323`);
  return { host: (m[1] ?? m[2])!, port };
}

interface OptionSpec {
  env: string;
  help: string;
  default?: string;
}

/** Every option: a `--flag`, and a `TSOVERLAY_*` variable because managed plugins are configured through env. */
export const OPTIONS = {
  socket: { env: 'TSOVERLAY_SOCKET', default: '/run/docker/plugins/tsoverlay.sock', help: 'Unix socket Docker talks to' },
  store: { env: 'TSOVERLAY_STORE', default: 'local:///var/lib/tsoverlay', help: 'local:///dir, etcd://host:2379[,host2:2379] or consul://host:8500[,host2:8500] (no user:password@ here: it shows in ps; use --etcd-user and --etcd-password-file)' },
  'store-prefix': { env: 'TSOVERLAY_STORE_PREFIX', default: 'tsoverlay/v1/', help: 'key prefix in the store' },
  'netns-dir': { env: 'TSOVERLAY_NETNS_DIR', default: '/run/tsoverlay/netns', help: 'where overlay namespace files are mounted' },
  vtep: {
    env: 'TSOVERLAY_VTEP',
    help: 'underlay address of this host, IPv4 or IPv6 (every host of a cluster on the same family; default: IPv4 address of the default-route interface)',
  },
  'underlay-mtu': { env: 'TSOVERLAY_UNDERLAY_MTU', help: 'underlay MTU (default: MTU of the VTEP interface); overlay MTU is 50 less' },
  'host-name': { env: 'TSOVERLAY_HOST_NAME', help: 'name of this host in the store (default: the hostname)' },
  scope: { env: 'TSOVERLAY_SCOPE', default: 'local', help: 'scope reported to Docker: local, or global (swarm, managed plugin)' },
  'log-level': { env: 'TSOVERLAY_LOG_LEVEL', default: 'info', help: 'error, warn, info or debug' },
  'reconcile-interval': { env: 'TSOVERLAY_RECONCILE_INTERVAL', default: '10', help: 'seconds between full kernel-vs-store comparisons' },
  'store-timeout': { env: 'TSOVERLAY_STORE_TIMEOUT', default: String(DEFAULT_TIMEOUT_MS / 1000), help: 'seconds a store call may take before the request fails (above etcd’s own 7 s request timeout)' },
  'request-timeout': {
    env: 'TSOVERLAY_REQUEST_TIMEOUT',
    help: `seconds one of Docker's requests may take in all, its store calls and its waits behind other requests together (at least --store-timeout; default ${DEFAULT_REQUEST_TIMEOUT_MS / 1000}, or --store-timeout if that is longer; Docker gives up on a plugin after 30 s)`,
  },
  'lease-ttl': { env: 'TSOVERLAY_LEASE_TTL', default: '10', help: 'seconds after which a dead host’s entries are removed (once it also stops answering on the probe port)' },
  'state-dir': { env: 'TSOVERLAY_STATE_DIR', default: '/var/lib/tsoverlay', help: 'directory for this host’s instance id and encryption key (must survive reboots; never copy it to another machine)' },
  'encrypted-vxlan-port': { env: 'TSOVERLAY_ENCRYPTED_VXLAN_PORT', default: String(DEFAULT_ENCRYPTED_VXLAN_PORT), help: 'VXLAN UDP port of -o encrypted networks (the same on every host; between hosts allow IP protocol 50, ESP)' },
  'key-rotation-interval': { env: 'TSOVERLAY_KEY_ROTATION_INTERVAL', default: String(DEFAULT_ROTATION_INTERVAL_SECONDS), help: 'seconds between key rotations of encrypted networks (tsoverlay rotate-keys rotates at once)' },
  'probe-port': { env: 'TSOVERLAY_PROBE_PORT', default: String(DEFAULT_PROBE_PORT), help: 'UDP port on the VTEP address where peers check that this host is alive (open it between hosts like 4789)' },
  'etcd-ca': { env: 'TSOVERLAY_ETCD_CA', help: 'etcd TLS: CA certificate (PEM file, or the PEM text itself)' },
  'etcd-cert': { env: 'TSOVERLAY_ETCD_CERT', help: 'etcd TLS: client certificate (PEM file, or the PEM text itself)' },
  'etcd-key': { env: 'TSOVERLAY_ETCD_KEY', help: 'etcd TLS: client key (PEM file, or the PEM text itself)' },
  'etcd-user': { env: 'TSOVERLAY_ETCD_USER', help: 'etcd authentication: user name (with a password)' },
  'etcd-password': { env: 'TSOVERLAY_ETCD_PASSWORD', help: 'etcd authentication: password (prefer the variable or --etcd-password-file: flags show in ps)' },
  'etcd-password-file': { env: 'TSOVERLAY_ETCD_PASSWORD_FILE', help: 'etcd authentication: file holding the password (shows in neither ps nor docker plugin inspect)' },
  'socket-group': { env: 'TSOVERLAY_SOCKET_GROUP', help: 'group name or gid that may use the plugin socket (mode 0660; default: root only, 0600)' },
  'metrics-address': { env: 'TSOVERLAY_METRICS_ADDRESS', help: 'host:port to serve /metrics and /healthz over TCP as well (default: off; the plugin socket always serves them)' },
  dns: { env: 'TSOVERLAY_DNS', default: 'on', help: "on: serve container names across hosts on each network's gateway address (port 53); off: no names service" },
  'docker-socket': { env: 'TSOVERLAY_DOCKER_SOCKET', default: '/var/run/docker.sock', help: "Docker API socket the container names are read from (with --dns on)" },
  'dns-upstream': { env: 'TSOVERLAY_DNS_UPSTREAM', help: "resolvers for names outside the networks, ip[:port],… (default: the host's /etc/resolv.conf)" },
} satisfies Record<string, OptionSpec>;

type OptionName = keyof typeof OPTIONS;

/**
 * Set (to "1") by the managed plugin's config.json. Then every option can also be given by its
 * short name, the variable without `TSOVERLAY_` (`docker plugin set tsoverlay STORE=etcd://…`);
 * an empty short value means "not set". Outside the plugin only `TSOVERLAY_*` is read, so
 * that a stray `STORE` or `MTU` in someone's shell changes nothing.
 */
export const MANAGED_PLUGIN_ENV = 'TSOVERLAY_MANAGED';

/** The managed plugin's setting name for an option: its variable without `TSOVERLAY_`. */
export function pluginSettingName(envName: string): string {
  return envName.replace(/^TSOVERLAY_/, '');
}

export function usage(): string {
  const rows = Object.entries(OPTIONS).map(([name, spec]) => {
    const def = 'default' in spec ? ` (default ${spec.default})` : '';
    return `  --${name.padEnd(14)} $${spec.env.padEnd(24)} ${spec.help}${def}`;
  });
  return ['usage: tsoverlay serve [options]', '', ...rows].join('\n');
}

/**
 * node's own messages quote a stray argument, which may be a secret meant for the option before
 * it (`--etcd-password= s3cret`): name its position instead.
 */
function parseFlags(argv: string[]): ReturnType<typeof parseArgs> {
  try {
    return parseArgs({
      args: argv,
      options: Object.fromEntries(Object.keys(OPTIONS).map((k) => [k, { type: 'string' as const }])),
      strict: true,
      allowPositionals: false,
    });
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'ERR_PARSE_ARGS_UNEXPECTED_POSITIONAL') {
      const at = argv.findIndex((a, i) => !a.startsWith('-') && (i === 0 || !argv[i - 1]!.startsWith('--') || argv[i - 1]!.includes('=')));
      throw new Error(
        `unexpected argument${at >= 0 ? ` (argument ${at + 1})` : ''}, not shown in case it is a secret: every option is --name value or --name=value`,
      );
    }
    throw err;
  }
}

export function parseConfig(argv: string[], env: NodeJS.ProcessEnv): DaemonConfig {
  const { values } = parseFlags(argv);
  const get = (name: OptionName): string | undefined => {
    const spec: OptionSpec = OPTIONS[name];
    const flag = values[name];
    const short = env[MANAGED_PLUGIN_ENV] === '1' ? env[pluginSettingName(spec.env)] || undefined : undefined;
    return (typeof flag === 'string' ? flag : undefined) ?? env[spec.env] ?? short ?? spec.default;
  };
  const logLevel = get('log-level');
  if (!['error', 'warn', 'info', 'debug'].includes(logLevel ?? '')) throw new Error(`invalid --log-level "${logLevel}"`);
  const scope = get('scope');
  if (scope !== 'local' && scope !== 'global') throw new Error(`invalid --scope "${scope}" (local or global)`);
  const vtep = get('vtep') || undefined;
  if (vtep && !isIPv4(vtep) && !isUnderlayIPv6(vtep)) throw new Error(`invalid --vtep "${vtep}": an IPv4 or a routable unicast IPv6 address`);
  const mtuText = get('underlay-mtu');
  const underlayMtu = mtuText ? Number(mtuText) : undefined;
  if (underlayMtu !== undefined && !(Number.isInteger(underlayMtu) && underlayMtu >= 1330 && underlayMtu <= 65535)) {
    throw new Error(`invalid --underlay-mtu "${mtuText}"`);
  }
  const ttl = Number(get('lease-ttl'));
  if (!Number.isInteger(ttl) || ttl < 2 || ttl > 3600) throw new Error(`invalid --lease-ttl "${get('lease-ttl')}" (2..3600 seconds)`);
  const storeTimeout = Number(get('store-timeout'));
  if (!Number.isFinite(storeTimeout) || storeTimeout < 1 || storeTimeout > 120) {
    throw new Error(`invalid --store-timeout "${get('store-timeout')}" (1..120 seconds)`);
  }
  const requestTimeoutText = get('request-timeout') || undefined;
  const requestTimeout = requestTimeoutText === undefined ? Math.max(DEFAULT_REQUEST_TIMEOUT_MS / 1000, storeTimeout) : Number(requestTimeoutText);
  if (!Number.isFinite(requestTimeout) || requestTimeout < storeTimeout || requestTimeout > 120) {
    throw new Error(`invalid --request-timeout "${requestTimeoutText}" (${storeTimeout}..120 seconds: a request is given at least one whole store call)`);
  }
  const interval = Number(get('reconcile-interval'));
  if (!Number.isFinite(interval) || interval < 1 || interval > 3600) {
    throw new Error(`invalid --reconcile-interval "${get('reconcile-interval')}" (1..3600 seconds)`);
  }
  const probePort = Number(get('probe-port'));
  if (!Number.isInteger(probePort) || probePort < 0 || probePort > 65535) throw new Error(`invalid --probe-port "${get('probe-port')}" (1..65535, or 0 for no probes)`);
  const encryptedVxlanPort = Number(get('encrypted-vxlan-port'));
  if (!Number.isInteger(encryptedVxlanPort) || encryptedVxlanPort < 1 || encryptedVxlanPort > 65535 || encryptedVxlanPort === 4789) {
    throw new Error(`invalid --encrypted-vxlan-port "${get('encrypted-vxlan-port')}" (1..65535, not 4789: plain networks use it)`);
  }
  const keyRotationIntervalSeconds = Number(get('key-rotation-interval'));
  if (!Number.isInteger(keyRotationIntervalSeconds) || keyRotationIntervalSeconds < 60) {
    throw new Error(`invalid --key-rotation-interval "${get('key-rotation-interval')}" (whole seconds, at least 60)`);
  }
  const stateDir = get('state-dir')!;
  if (!stateDir.startsWith('/')) throw new Error(`invalid --state-dir "${stateDir}": an absolute path`);
  const metricsText = get('metrics-address') || undefined;
  const metricsAddress = metricsText ? parseListenAddress(metricsText) : undefined;
  const dnsText = get('dns');
  if (dnsText !== 'on' && dnsText !== 'off') throw new Error(`invalid --dns "${dnsText}" (on or off)`);
  const upstreamText = get('dns-upstream') || undefined;
  let upstreams: Upstream[] | undefined;
  try {
    upstreams = upstreamText ? parseUpstreams(upstreamText) : undefined;
  } catch (err) {
    throw new Error(`invalid --dns-upstream: ${(err as Error).message}`);
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
    storeTimeoutSeconds: storeTimeout,
    requestTimeoutSeconds: requestTimeout,
    reconcileIntervalSeconds: interval,
    ...etcdTls(get('etcd-ca'), get('etcd-cert'), get('etcd-key')),
    ...etcdAuth(get('etcd-user'), get('etcd-password'), get('etcd-password-file')),
    ...socketGroup(get('socket-group')),
    ...(metricsAddress ? { metricsAddress } : {}),
    dns: { enabled: dnsText === 'on', dockerSocket: get('docker-socket')!, ...(upstreams ? { upstreams } : {}) },
    stateDir,
    probePort,
    encryptedVxlanPort,
    keyRotationIntervalSeconds,
  };
}

function etcdTls(ca?: string, cert?: string, key?: string): { etcdTls?: DaemonConfig['etcdTls'] } {
  if (!ca && !cert && !key) return {};
  if (!cert !== !key) throw new Error('--etcd-cert and --etcd-key go together');
  return { etcdTls: { ...(ca ? { ca } : {}), ...(cert ? { cert } : {}), ...(key ? { key } : {}) } };
}

function etcdAuth(user?: string, password?: string, passwordFile?: string): { etcdAuth?: DaemonConfig['etcdAuth'] } {
  if (password && passwordFile) throw new Error('give --etcd-password or --etcd-password-file, not both');
  let secret = password;
  if (passwordFile) {
    try {
      secret = fs.readFileSync(passwordFile, 'utf8').replace(/\r?\n$/, '');
    } catch (err) {
      throw new Error(`--etcd-password-file ${passwordFile} cannot be read: ${(err as NodeJS.ErrnoException).code ?? 'error'}`);
    }
  }
  if (!user && !secret) return {};
  // The message names what is missing, never the value given.
  if (!user || !secret) throw new Error('etcd authentication needs both --etcd-user and a password (--etcd-password or --etcd-password-file)');
  return { etcdAuth: { username: user, password: secret } };
}

/** `--socket-group`: a gid, or a group name looked up in /etc/group (no shell, no NSS). */
export function socketGroup(text?: string, groupFile = '/etc/group'): { socketGroup?: number } {
  if (!text) return {};
  if (/^[0-9]{1,10}$/.test(text)) return { socketGroup: Number(text) };
  if (!/^[A-Za-z_][A-Za-z0-9_.-]{0,31}\$?$/.test(text)) throw new Error(`invalid --socket-group "${text}"`);
  let lines: string[] = [];
  try {
    lines = fs.readFileSync(groupFile, 'utf8').split('\n');
  } catch {
    // no group file: only numeric groups work
  }
  for (const line of lines) {
    const [name, , gid] = line.split(':');
    if (name === text && gid !== undefined && /^[0-9]+$/.test(gid)) return { socketGroup: Number(gid) };
  }
  throw new Error(`--socket-group "${text}": no such group in ${groupFile} (give a gid instead)`);
}

/** An IPv6 address a VTEP can have: unicast and routable (no link-local, whose zone other hosts cannot name). */
function isUnderlayIPv6(value: string): boolean {
  if (value.includes('%') || !ipaddr.IPv6.isValid(value)) return false;
  return !['multicast', 'linkLocal', 'unspecified', 'loopback', 'ipv4Mapped'].includes(ipaddr.IPv6.parse(value).range());
}
