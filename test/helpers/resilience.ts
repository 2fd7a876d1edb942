/**
 * Shared pieces of the resilience tests (test/e2e/resilience-*.test.ts): a seeded PRNG,
 * `docker exec`, ping monitors that count lost replies, a readable dump of the etcd store,
 * and what one test host holds of ours in the kernel (veths, overlay namespaces, mounts).
 */
import type Dockerode from 'dockerode';
import { NODE_FLAGS } from '../../src/node-flags';
import { demuxDockerStream, type DockerHost } from './docker';
import type { EtcdServer } from './etcd';
import { NETNS_DIR, PLUGIN_MAIN, PLUGIN_SOCKET, pluginStateDir, startPlugin, type PluginOptions, type PluginProcess } from './plugin';
import { sleep, waitFor, type ManagedProcess } from './proc';

/** TSO_FULL=1 selects the full-size variants (100 crash iterations, 3 × 50 containers, …). */
export const FULL = process.env.TSO_FULL === '1';

/** Store prefix the plugin uses by default. */
export const STORE_PREFIX = 'tsoverlay/v1/';

/** mulberry32: a small seeded PRNG, so that a failing random schedule can be replayed (TSO_SEED). */
export function prng(seed: number): () => number {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

export function seedFromEnv(): number {
  const s = Number(process.env.TSO_SEED);
  return Number.isInteger(s) && s > 0 ? s : (Date.now() % 2 ** 31) + 1;
}

export interface ExecResult {
  exitCode: number;
  stdout: string;
  stderr: string;
}

/** `docker exec` through the API; waits for the command unless `detach`. */
export async function dockerExec(docker: Dockerode, container: string, cmd: readonly string[], detach = false): Promise<ExecResult> {
  const exec = await docker.getContainer(container).exec({ Cmd: [...cmd], AttachStdout: !detach, AttachStderr: !detach });
  if (detach) {
    await exec.start({ Detach: true });
    return { exitCode: 0, stdout: '', stderr: '' };
  }
  const stream = await exec.start({ hijack: true, stdin: false });
  const chunks: Buffer[] = [];
  await new Promise<void>((resolve, reject) => {
    stream.on('data', (c: Buffer) => chunks.push(c));
    stream.on('end', () => resolve());
    stream.on('close', () => resolve());
    stream.on('error', reject);
  });
  const info = (await exec.inspect()) as { ExitCode: number | null };
  return { exitCode: info.ExitCode ?? -1, ...demuxDockerStream(Buffer.concat(chunks)) };
}

interface NetworkSettings {
  NetworkSettings: { Networks: Record<string, { IPAddress: string; MacAddress: string; EndpointID: string }> };
}

/** A container's address, MAC and endpoint id on a network (undefined if not attached). */
export async function attachment(
  docker: Dockerode,
  container: string,
  network: string,
): Promise<{ ip: string; mac: string; endpointId: string } | undefined> {
  const info = (await docker.getContainer(container).inspect()) as NetworkSettings;
  const n = info.NetworkSettings.Networks[network];
  return n && n.IPAddress ? { ip: n.IPAddress, mac: n.MacAddress, endpointId: n.EndpointID } : undefined;
}

/** Docker's endpoints of a network on one engine: endpoint id → container name and IPv4. */
export async function dockerEndpoints(docker: Dockerode, network: string): Promise<Map<string, { name: string; ip: string }>> {
  const info = (await docker.getNetwork(network).inspect()) as {
    Containers?: Record<string, { Name: string; EndpointID: string; IPv4Address: string }> | null;
  };
  const out = new Map<string, { name: string; ip: string }>();
  for (const c of Object.values(info.Containers ?? {})) out.set(c.EndpointID, { name: c.Name, ip: c.IPv4Address.split('/')[0]! });
  return out;
}

/** `ping -c count` from inside a container: how many replies came back. */
export async function pingFrom(docker: Dockerode, container: string, ip: string, count = 2, waitSeconds = 2): Promise<number> {
  const r = await dockerExec(docker, container, ['ping', '-c', String(count), '-W', String(waitSeconds), ip]);
  const m = /(\d+) packets received/.exec(r.stdout);
  return m ? Number(m[1]) : 0;
}

export interface PingMonitor {
  /** When the first request went out (ms since the epoch): request `seq` left about `startedAt + seq × interval`. */
  readonly startedAt: number;
  /** Stops the ping and returns what it counted. */
  stop(): Promise<PingCount>;
}

export interface PingCount {
  sent: number;
  received: number;
  lost: number;
  /** The sequence numbers of the lost requests (the first few), to place a loss in time. */
  missing: number[];
}

/**
 * A continuous ping (every `intervalMs`) from a running container, for "no packet lost while…"
 * measurements. Several monitors in one container need distinct tags.
 */
export async function startPingMonitor(docker: Dockerode, container: string, ip: string, tag: string, intervalMs = 200): Promise<PingMonitor> {
  const log = `/tmp/ping-${tag}.log`;
  const pidFile = `/tmp/ping-${tag}.pid`;
  await dockerExec(docker, container, ['sh', '-c', `ping -i ${intervalMs / 1000} -W 1 ${ip} > ${log} 2>&1 & echo $! > ${pidFile}; wait`], true);
  const startedAt = Date.now();
  await waitFor(async () => (await dockerExec(docker, container, ['cat', pidFile])).stdout.trim() !== '', { what: `ping monitor ${tag}` });
  return {
    startedAt,
    async stop() {
      const r = await dockerExec(docker, container, ['sh', '-c', `kill -INT $(cat ${pidFile}); sleep 0.5; cat ${log}`]);
      return pingCount(r.stdout, tag);
    },
  };
}

/**
 * What a stopped ping saw. The interrupt prints the summary at once, so the one request sent just
 * before it may still be on its way: that one is not counted as lost (or as sent). Every other
 * missing sequence number is, including a run of unanswered requests at the end.
 */
export function pingCount(output: string, tag = 'ping'): PingCount {
  const m = /(\d+) packets transmitted, (\d+) packets received/.exec(output);
  if (!m) throw new Error(`ping monitor ${tag}: no summary in ${output.slice(-500)}`);
  let sent = Number(m[1]);
  const seqs = new Set([...output.matchAll(/\bseq=(\d+)\b/g)].map((x) => Number(x[1])));
  const received = seqs.size > 0 ? seqs.size : Number(m[2]);
  if (sent > 0 && !seqs.has(sent - 1)) sent -= 1;
  const missing: number[] = [];
  for (let seq = 0; seq < sent && missing.length < 20; seq++) if (!seqs.has(seq)) missing.push(seq);
  return { sent, received, lost: Math.max(0, sent - received), missing };
}

/** Every key under the plugin's prefix (relative), with its JSON value. */
export async function etcdDump(etcd: Pick<EtcdServer, 'etcdctl'>, prefix = STORE_PREFIX): Promise<Map<string, Record<string, unknown>>> {
  const text = await etcd.etcdctl('get', '--prefix', prefix, '-w', 'json');
  const parsed = JSON.parse(text) as { kvs?: { key: string; value: string }[] };
  const out = new Map<string, Record<string, unknown>>();
  for (const kv of parsed.kvs ?? []) {
    const key = Buffer.from(kv.key, 'base64').toString('utf8').slice(prefix.length);
    out.set(key, JSON.parse(Buffer.from(kv.value, 'base64').toString('utf8')) as Record<string, unknown>);
  }
  return out;
}

/** What one host holds of ours in the kernel and its mount table. */
export interface KernelState {
  /** Our veth ends (`vc…`) in the host's network namespace. */
  hostVeths: string[];
  /** Files in the netns directory. */
  overlayFiles: string[];
  /** Mount points below the netns directory (namespace files kept alive by bind mounts). */
  netnsMounts: string[];
}

export async function kernelState(host: DockerHost): Promise<KernelState> {
  const r = await host.exec(
    ['sh', '-c', `ip -o link show type veth; echo ---; ls ${NETNS_DIR} 2>/dev/null; echo ---; cat /proc/self/mountinfo`],
    { allowFailure: true },
  );
  const [links = '', files = '', mounts = ''] = r.stdout.split('---\n');
  return {
    hostVeths: links
      .split('\n')
      .map((l) => /^\d+: (vc[^@:]+)/.exec(l)?.[1])
      .filter((n): n is string => n !== undefined),
    overlayFiles: files.split('\n').filter(Boolean),
    netnsMounts: mounts
      .split('\n')
      .map((l) => l.split(' ')[4])
      .filter((m): m is string => m !== undefined && m.startsWith(`${NETNS_DIR}/`)),
  };
}

/** Runs a command in the overlay namespace of a network (by Docker network id) on a host. */
export async function inOverlay(host: DockerHost, networkId: string, cmd: string): Promise<string> {
  const r = await host.exec(
    ['sh', '-c', `f=$(ls ${NETNS_DIR} 2>/dev/null | grep -- '-${networkId.slice(0, 10)}$' | head -n1); [ -n "$f" ] && nsenter --net=${NETNS_DIR}/$f ${cmd}`],
    { allowFailure: true },
  );
  return r.stdout;
}

/** Kills the plugin without a goodbye (SIGKILL) and waits until it is gone. */
export async function killPlugin(plugin: PluginProcess): Promise<void> {
  if (!plugin.process.running()) return;
  process.kill(plugin.process.pid, 'SIGKILL');
  await plugin.process.exited;
}

/** Starts the plugin and returns it with how long it took until it logged "tsoverlay serving". */
export async function startPluginTimed(host: DockerHost, opts: PluginOptions): Promise<{ plugin: PluginProcess; ms: number }> {
  const t0 = Date.now();
  const plugin = await startPlugin(host, opts);
  return { plugin, ms: Date.now() - t0 };
}

/** The plugin as startPlugin() runs it, without waiting for anything (to kill it mid-start). */
export function spawnPlugin(host: DockerHost, store: string, extraArgs: readonly string[] = []): ManagedProcess {
  const argv = [
    process.execPath, ...NODE_FLAGS, PLUGIN_MAIN, 'serve', '--store', store, '--socket', PLUGIN_SOCKET, '--netns-dir', NETNS_DIR,
    '--host-name', host.name, '--state-dir', pluginStateDir(host), '--log-level', 'debug', ...extraArgs,
  ];
  return host.exec(argv, { background: true, name: 'tsoverlay' });
}

/** Retries a Docker operation the way a user would (the first failure may be the crash). */
export async function retrying<T>(what: string, fn: () => Promise<T>, attempts = 5, pauseMs = 1000): Promise<T> {
  let last: unknown;
  for (let i = 0; i < attempts; i++) {
    try {
      return await fn();
    } catch (err) {
      last = err;
      await sleep(pauseMs);
    }
  }
  throw new Error(`${what} failed ${attempts} times: ${last instanceof Error ? last.message : String(last)}`);
}

export function percentile(values: readonly number[], p: number): number {
  if (values.length === 0) return NaN;
  const sorted = [...values].sort((a, b) => a - b);
  return sorted[Math.min(sorted.length - 1, Math.floor((p / 100) * sorted.length))]!;
}

/** The remote peers programmed in a host's overlay namespace: `ip mac` neighbours and `mac dst` FDB entries. */
export async function peerTables(host: DockerHost, networkId: string): Promise<{ neigh: Set<string>; fdb: Set<string> }> {
  const neigh = new Set<string>();
  const fdb = new Set<string>();
  for (const l of (await inOverlay(host, networkId, 'ip neigh show dev vxlan0')).split('\n')) {
    const m = /^(\S+) lladdr (\S+) PERMANENT/.exec(l);
    if (m) neigh.add(`${m[1]} ${m[2]}`);
  }
  for (const l of (await inOverlay(host, networkId, 'bridge fdb show dev vxlan0')).split('\n')) {
    const m = /^(\S+) dst (\S+) .*self permanent/.exec(l);
    if (m) fdb.add(`${m[1]} ${m[2]}`);
  }
  return { neigh, fdb };
}

/**
 * What every host other than `self` should have programmed according to the store: joined
 * endpoints of the network whose host is registered, as `ip mac` (IPv4 and IPv6) and `mac vtep`.
 */
export function desiredPeers(store: Map<string, Record<string, unknown>>, networkKey: string, self: string): { neigh: Set<string>; fdb: Set<string> } {
  const neigh = new Set<string>();
  const fdb = new Set<string>();
  for (const [k, v] of store) {
    if (!k.startsWith(`endpoints/${networkKey}/`) || v.joined !== true || v.host === self) continue;
    const host = store.get(`hosts/${String(v.host)}`);
    if (!host) continue;
    // An IPv6-only endpoint has an empty `ip`; a dual-stack one has both neighbours.
    if (v.ip) neigh.add(`${String(v.ip)} ${String(v.mac)}`);
    if (typeof v.ip6 === 'string' && v.ip6 !== '') neigh.add(`${v.ip6} ${String(v.mac)}`);
    fdb.add(`${String(v.mac)} ${String(host.vtep)}`);
  }
  return { neigh, fdb };
}

export function sameSet(a: Set<string>, b: Set<string>): boolean {
  return a.size === b.size && [...a].every((x) => b.has(x));
}
