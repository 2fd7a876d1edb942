/**
 * `tsoverlay inspect [NETWORK] [--json] [--check]`: what one host holds for each tsoverlay
 * network, read directly (this is a separate process from the daemon): the overlay
 * namespace's devices and vxlan0's neighbour/FDB tables through netlink inside the namespace
 * file, the store's records through the store itself (a local store's file is read without
 * taking the daemon's lock), and Docker's names through the Docker API when it answers.
 * `--check` compares the kernel against the store and exits 1 listing every difference.
 */
import fs from 'node:fs';
import { parseArgs } from 'node:util';
import { OPTIONS, parseConfig, type DaemonConfig } from '../config';
import { Dataplane, networkPrefix } from '../dataplane/dataplane';
import { desiredPeersOf } from '../driver/desired-peers';
import {
  decodeRecord,
  endpointRecordSchema,
  hostRecordSchema,
  keys,
  networkIdRecordSchema,
  networkRecordSchema,
  type EndpointRecord,
  type HostRecord,
  type NetworkIdRecord,
  type NetworkRecord,
} from '../driver/records';
import { silentLogger } from '../log';
import { namesKeys, namesRecordSchema, parseNamesKey, type NamesRecord } from '../names/records';
import { servedNames } from '../names/served';
import { readLocalStoreSnapshot } from '../store/local';
import { openStore, parseStoreUrl, redactUrl } from '../store/open';
import type { KVEntry } from '../store/store';
import { EspManager, describeStep, planRemoveAll } from '../crypto/esp';
import { loadHostKey } from '../crypto/host-key';
import { ringRecordSchema } from '../crypto/ring';
import { type EncryptionHostRecord, decode, encryptionHostSchema, encryptionKeys } from '../crypto/ring-store';
import { DEFAULT_ENCRYPTED_VXLAN_PORT } from '../dataplane/overlay-check';
import { XfrmClient } from '../dataplane/xfrm';
import { errorMessage } from '../util/errors';
import {
  allDifferences,
  checkNetwork,
  formatReport,
  kernelPart,
  type EndpointReport,
  type InspectReport,
  type NetworkReport,
} from './inspect-model';

export const DEFAULT_DOCKER_HOST = '/var/run/docker.sock';

export interface InspectOptions {
  /** Docker network name or id (prefix), store key or stored name; undefined = every network. */
  network?: string;
  json: boolean;
  check: boolean;
  /** Path of the Docker API socket. */
  dockerSocket: string;
  config: Pick<DaemonConfig, 'store' | 'storePrefix' | 'netnsDir' | 'hostName'> & Partial<Pick<DaemonConfig, 'stateDir' | 'encryptedVxlanPort'>>;
}

export function inspectUsage(): string {
  return [
    'usage: tsoverlay inspect [NETWORK] [--json] [--check] [--docker-host PATH] [--store URL] [--store-prefix P] [--netns-dir DIR] [--host-name NAME]',
    '',
    '  NETWORK         Docker network name or id (prefix), or the store key (e.g. 10.20.0.0-24); default: all',
    '  --json          machine-readable report',
    '  --check         compare kernel against store; exit 1 listing every difference',
    `  --docker-host   Docker API socket for network/container names (default ${DEFAULT_DOCKER_HOST}, or $DOCKER_HOST)`,
    '  the other options (and their TSOVERLAY_* variables) are the same as for `tsoverlay serve`',
  ].join('\n');
}

/** The serve options inspect shares (and their variables), plus its own flags. */
export function parseInspectArgs(argv: string[], env: NodeJS.ProcessEnv): InspectOptions {
  const serveOptions = Object.fromEntries(Object.keys(OPTIONS).map((k) => [k, { type: 'string' as const }]));
  const { values, positionals } = parseArgs({
    args: argv,
    options: {
      ...serveOptions,
      json: { type: 'boolean' },
      check: { type: 'boolean' },
      'docker-host': { type: 'string' },
    },
    strict: true,
    allowPositionals: true,
  });
  if (positionals.length > 1) throw new Error(`inspect takes at most one network, got ${positionals.join(' ')}`);
  const serveArgv: string[] = [];
  for (const name of Object.keys(OPTIONS)) {
    const v = (values as Record<string, unknown>)[name];
    if (typeof v === 'string') serveArgv.push(`--${name}`, v);
  }
  const config = parseConfig(serveArgv, env);
  const dockerHost = (typeof values['docker-host'] === 'string' ? values['docker-host'] : undefined) ?? env.DOCKER_HOST ?? DEFAULT_DOCKER_HOST;
  const dockerSocket = dockerHost.replace(/^unix:\/\//, '');
  if (!dockerSocket.startsWith('/')) throw new Error(`--docker-host "${dockerHost}": only a unix socket path (or unix:///path) is supported`);
  return {
    ...(positionals[0] ? { network: positionals[0] } : {}),
    json: values.json === true,
    check: values.check === true,
    dockerSocket,
    config: {
      store: config.store,
      storePrefix: config.storePrefix,
      netnsDir: config.netnsDir,
      hostName: config.hostName,
      stateDir: config.stateDir,
      encryptedVxlanPort: config.encryptedVxlanPort,
    },
  };
}

interface StoreView {
  description: string;
  netids: Map<string, NetworkIdRecord>;
  networks: Map<string, NetworkRecord>;
  /** Endpoints per network key. */
  endpoints: Map<string, EndpointRecord[]>;
  hosts: Map<string, HostRecord>;
  /** Encrypted networks' records (`encryption/`): checked by ipsecDifferences. */
  encryption: KVEntry[];
  /** DNS names records per network key. */
  names: Map<string, NamesRecord[]>;
  problems: string[];
}

async function readStore(url: string, prefix: string): Promise<StoreView> {
  const logger = silentLogger();
  let list: (p: string) => Promise<KVEntry[]>;
  let close = async () => undefined as void;
  let description: string;
  const loc = parseStoreUrl(url);
  if (loc.kind === 'local') {
    // The daemon holds the local store's lock: read its committed snapshot and log instead.
    const all = await readLocalStoreSnapshot(loc.dir, prefix);
    list = async (p) => all.filter((e) => e.key.startsWith(p));
    description = `local://${loc.dir}`;
  } else {
    const store = await openStore(url, { prefix, logger, timeoutMs: 5000 });
    list = (p) => store.list(p);
    close = () => store.close();
    description = store.description;
  }
  const problems: string[] = [];
  const decodeAll = <T>(entries: KVEntry[], decode: (e: KVEntry) => T): [KVEntry, T][] => {
    const out: [KVEntry, T][] = [];
    for (const e of entries) {
      try {
        out.push([e, decode(e)]);
      } catch (err) {
        problems.push(`malformed store record ${e.key}: ${errorMessage(err)}`);
      }
    }
    return out;
  };
  try {
    const [ids, nets, eps, hs, encryption, ns] = await Promise.all([
      list(keys.networkIds()),
      list(keys.networks()),
      list(keys.allEndpoints()),
      list(keys.hosts()),
      list(encryptionKeys.prefix()),
      list(namesKeys.all()),
    ]);
    const netids = new Map(decodeAll(ids, (e) => decodeRecord(networkIdRecordSchema, e.value, e.key)).map(([e, v]) => [keys.networkIdOf(e.key) ?? '', v]));
    const networks = new Map(decodeAll(nets, (e) => decodeRecord(networkRecordSchema, e.value, e.key)).map(([e, v]) => [keys.networkKeyOf(e.key) ?? '', v]));
    const endpoints = new Map<string, EndpointRecord[]>();
    for (const [e, ep] of decodeAll(eps, (x) => decodeRecord(endpointRecordSchema, x.value, x.key))) {
      const networkKey = keys.parseEndpoint(e.key)?.networkKey ?? '';
      endpoints.set(networkKey, [...(endpoints.get(networkKey) ?? []), ep]);
    }
    const hosts = new Map(decodeAll(hs, (e) => decodeRecord(hostRecordSchema, e.value, e.key)).map(([, v]) => [v.name, v]));
    const names = new Map<string, NamesRecord[]>();
    for (const [e, rec] of decodeAll(ns, (x) => decodeRecord(namesRecordSchema, x.value, x.key))) {
      const networkKey = parseNamesKey(e.key)?.networkKey ?? '';
      names.set(networkKey, [...(names.get(networkKey) ?? []), rec]);
    }
    return { description, netids, networks, endpoints, hosts, encryption, names, problems };
  } finally {
    await close();
  }
}

interface DockerView {
  status: string;
  networks: Map<string, string>;
  /** Endpoint id → container name. */
  containers: Map<string, string>;
}

function withTimeout<T>(p: Promise<T>, ms: number): Promise<T> {
  let timer: NodeJS.Timeout | undefined;
  return Promise.race([
    p.finally(() => clearTimeout(timer)),
    new Promise<T>((_, reject) => {
      timer = setTimeout(() => reject(new Error(`no answer within ${ms} ms`)), ms);
    }),
  ]);
}

/** Docker's names for networks and endpoints; never fatal (inspect is for when things are broken). */
async function readDocker(socketPath: string): Promise<DockerView> {
  try {
    // Loaded here, not at start: `tsoverlay serve` shares this entry point and never needs it.
    const { default: Dockerode } = await import('dockerode');
    const docker = new Dockerode({ socketPath, timeout: 5000 });
    const [networks, containers] = await withTimeout(Promise.all([docker.listNetworks(), docker.listContainers({ all: true })]), 5000);
    const byEndpoint = new Map<string, string>();
    for (const c of containers) {
      const name = (c.Names?.[0] ?? c.Id.slice(0, 12)).replace(/^\//, '');
      for (const n of Object.values(c.NetworkSettings?.Networks ?? {})) if (n.EndpointID) byEndpoint.set(n.EndpointID, name);
    }
    return { status: `reachable at ${socketPath}`, networks: new Map(networks.map((n) => [n.Id, n.Name])), containers: byEndpoint };
  } catch (err) {
    return { status: `not reachable at ${socketPath} (${errorMessage(err)}): names from the store only`, networks: new Map(), containers: new Map() };
  }
}

/** Interface name of an index in this (the host's) namespace, from sysfs; undefined if unknown. */
function interfaceName(index: number): string | undefined {
  try {
    for (const name of fs.readdirSync('/sys/class/net')) {
      if (Number(fs.readFileSync(`/sys/class/net/${name}/ifindex`, 'utf8').trim()) === index) return name;
    }
  } catch {
    // no sysfs: the index is shown instead
  }
  return undefined;
}

function matches(r: NetworkReport, wanted: string): boolean {
  return (
    r.dockerName === wanted ||
    r.networkId === wanted ||
    (wanted.length >= 3 && r.networkId.startsWith(wanted)) ||
    r.storeKey === wanted ||
    r.name === wanted
  );
}

/** Gathers the report; with `check`, fills in the differences. */
export async function inspect(opts: InspectOptions): Promise<InspectReport> {
  const { config } = opts;
  let storeError: string | undefined;
  const [store, docker] = await Promise.all([
    // Without the store the kernel side is still worth showing (a store outage is when one looks).
    readStore(config.store, config.storePrefix).catch((err: unknown): StoreView => {
      storeError = errorMessage(err);
      return { description: redactUrl(config.store), netids: new Map(), networks: new Map(), endpoints: new Map(), hosts: new Map(), encryption: [], names: new Map(), problems: [] };
    }),
    readDocker(opts.dockerSocket),
  ]);
  const dataplane = new Dataplane({ netnsDir: config.netnsDir, logger: silentLogger() });
  try {
    const files = dataplane.listOverlays();
    const localPrefixes = new Set(files.map((f) => f.networkIdPrefix));
    const self = store.hosts.get(config.hostName);
    const networks: NetworkReport[] = [];
    const seenPrefixes = new Set<string>();
    for (const [networkId, mapping] of store.netids) {
      const prefix = networkPrefix(networkId);
      if (mapping.host !== config.hostName && !localPrefixes.has(prefix)) continue;
      const network = store.networks.get(mapping.networkKey);
      if (!network) continue;
      seenPrefixes.add(prefix);
      const records = store.endpoints.get(network.key) ?? [];
      const endpoints: EndpointReport[] = records
        .map((e) => {
          const container = e.host === config.hostName ? docker.containers.get(e.id) : undefined;
          return {
            id: e.id,
            ...(e.name ? { name: e.name } : {}),
            ...(container ? { container } : {}),
            ip: e.ip,
            ...(e.ip6 ? { ip6: e.ip6 } : {}),
            mac: e.mac,
            host: e.host,
            locator: e.locator,
            joined: e.joined,
            local: e.host === config.hostName && e.networkId === networkId,
          };
        })
        .sort((a, b) => a.host.localeCompare(b.host) || (a.ip || a.ip6 || '').localeCompare(b.ip || b.ip6 || '', undefined, { numeric: true }));
      const view = await dataplane.inspectOverlay(networkId);
      const dockerName = docker.networks.get(networkId);
      const report: NetworkReport = {
        networkId,
        ...(dockerName ? { dockerName } : {}),
        storeKey: network.key,
        ...(network.name ? { name: network.name } : {}),
        vni: network.vni,
        subnet: network.subnet,
        gateway: network.gateway,
        ...(network.subnet6 ? { subnet6: network.subnet6 } : {}),
        ...(network.gateway6 ? { gateway6: network.gateway6 } : {}),
        mtu: network.mtu,
        mode: network.mode,
        options: network.options,
        ...(mapping.remote ? { remote: mapping.remote } : {}),
        ...kernelPart(view),
        endpoints,
        desiredPeers: desiredPeersOf(records, store.hosts, config.hostName),
        names: servedNames(store.names.get(network.key) ?? [], records, new Set(store.hosts.keys())),
      };
      if (report.vxlan?.underlayIndex) {
        const name = interfaceName(report.vxlan.underlayIndex);
        if (name) report.vxlan.underlay = name;
      }
      if (opts.check) report.differences = checkNetwork(report, self?.vtep, config.encryptedVxlanPort);
      networks.push(report);
    }
    networks.sort((x, y) => (x.dockerName ?? x.storeKey).localeCompare(y.dockerName ?? y.storeKey));
    const selected = opts.network ? networks.filter((n) => matches(n, opts.network!)) : networks;
    if (opts.network && selected.length === 0 && !storeError) {
      throw new Error(`no tsoverlay network "${opts.network}" on host ${config.hostName} (known: ${networks.map((n) => n.dockerName ?? n.storeKey).join(', ') || 'none'})`);
    }
    const orphanNamespaces = opts.network && !storeError ? [] : files.filter((f) => !seenPrefixes.has(f.networkIdPrefix)).map((f) => f.netnsPath);
    const report: InspectReport = {
      host: config.hostName,
      ...(self ? { vtep: self.vtep } : {}),
      store: store.description,
      ...(storeError ? { storeError } : {}),
      netnsDir: config.netnsDir,
      docker: docker.status,
      networks: selected,
      orphanNamespaces,
    };
    if (opts.check) {
      report.differences = storeError
        ? [`the store cannot be read, nothing can be compared: ${storeError}`]
        : [
            ...(self ? [] : [`host ${config.hostName} is not registered in the store (plugin not running, or its lease expired)`]),
            ...store.problems,
            ...orphanNamespaces.map((p) => `namespace ${p} belongs to no tsoverlay network of this host`),
            ...(await ipsecDifferences(store.encryption, networks, config)),
          ];
    }
    return report;
  } finally {
    dataplane.close();
  }
}

/** Runs the command: the text to print and the exit code (1 when --check found differences). */
export async function runInspect(argv: string[], env: NodeJS.ProcessEnv): Promise<{ output: string; exitCode: number }> {
  if (argv.includes('--help') || argv.includes('-h')) return { output: `${inspectUsage()}\n`, exitCode: 0 };
  const opts = parseInspectArgs(argv, env);
  const report = await inspect(opts);
  const differences = opts.check ? allDifferences(report) : [];
  let output = opts.json ? `${JSON.stringify(report, null, 2)}\n` : formatReport(report);
  if (opts.check && !opts.json) {
    output += differences.length === 0 ? '\ncheck: ok\n' : `\ncheck: ${differences.length} difference(s) between kernel and store\n`;
  }
  return { output, exitCode: differences.length > 0 ? 1 : 0 };
}

/**
 * Encrypted networks: the host namespace's SAs and policies against what this host's key, the
 * peers' encryption records and the ring's epoch ask for (the daemon's own planner, so `--check`
 * and the daemon agree); with no local encrypted overlay, none of ours may be left.
 */
async function ipsecDifferences(entries: KVEntry[], networks: NetworkReport[], config: InspectOptions['config']): Promise<string[]> {
  const port = config.encryptedVxlanPort ?? DEFAULT_ENCRYPTED_VXLAN_PORT;
  const active = networks.some((n) => n.options.encrypted === 'true' && n.namespace);
  let xfrm: XfrmClient;
  try {
    xfrm = XfrmClient.open();
  } catch (err) {
    return active ? [`ipsec: cannot read the kernel's IPsec tables (${errorMessage(err)})`] : [];
  }
  try {
    const manager = new EspManager(xfrm, port);
    if (!active) return planRemoveAll(await manager.readKernel(), port).map((s) => `ipsec: left over: ${describeStep(s)}`);
    const ring = entries.find((e) => e.key === encryptionKeys.ring());
    if (!ring) return ['ipsec: an encrypted network is up but the store has no key ring record'];
    const epoch = decode(ringRecordSchema, ring.value, ring.key).epoch;
    const hosts: EncryptionHostRecord[] = [];
    for (const e of entries) {
      if (encryptionKeys.hostOf(e.key) === undefined) continue;
      try {
        hosts.push(decode(encryptionHostSchema, e.value, e.key));
      } catch (err) {
        return [`ipsec: ${errorMessage(err)}`];
      }
    }
    const own = hosts.find((h) => h.name === config.hostName);
    if (!own) return [`ipsec: host ${config.hostName} has no encryption record in the store (plugin not running, or its lease expired)`];
    const key = config.stateDir ? loadHostKey(config.stateDir) : undefined;
    if (!key) return [`ipsec: no host key under ${config.stateDir ?? '--state-dir'}`];
    if (key.publicText !== own.publicKey) return [`ipsec: the host key under ${config.stateDir} is not the one this host published`];
    const self = { identity: { name: own.name, instance: own.instance, publicKey: own.publicKey }, key, vtep: own.vtep };
    const peers = hosts.filter((h) => h.name !== own.name).map((h) => ({ identity: { name: h.name, instance: h.instance, publicKey: h.publicKey }, vtep: h.vtep }));
    return (await manager.check(self, peers, epoch)).map((d) => `ipsec: ${d}`);
  } catch (err) {
    return [`ipsec: ${errorMessage(err)}`];
  } finally {
    xfrm.close();
  }
}
