/**
 * A real, throw-away Consul server for tests: the consul 1.8.7 binary that
 * .ci/provision-extras.sh unpacks (TSO_CONSUL_BIN), one server agent that bootstraps itself,
 * its HTTP API on a free port of the address asked for (loopback, or the underlay gateway so
 * that test hosts reach it), DNS and gRPC off, serf and server RPC on free loopback ports,
 * data under /tmp/<run prefix>/. With `acl` the agent starts with ACLs enabled and default
 * policy deny, and `createToken(rules)` makes a token holding exactly those rules.
 *
 * Stopped by PID only (the harness's cleanup registry, also on process exit); `down()` /
 * `up()` kill and restart it on the same ports and data (a store outage), `freeze()` /
 * `thaw()` stop it answering while connections stay open.
 */
import { randomUUID } from 'node:crypto';
import * as fs from 'node:fs';
import * as net from 'node:net';
import * as path from 'node:path';
import { isCi } from './docker';
import { registerCleanup, removeTree, runDir, sleep, spawnTracked, type ManagedProcess } from './proc';

const EXTRAS_CACHE = process.env.TSO_EXTRAS_CACHE ?? '/var/cache/tsoverlay-ci';
export const CONSUL_BIN = process.env.TSO_CONSUL_BIN ?? path.join(EXTRAS_CACHE, 'consul-1.8.7', 'bin', 'consul');

/** The ACL policy docs/install.md tells users to give tsoverlay's token (prefix tsoverlay/v1/). */
export const TSOVERLAY_ACL_RULES = `key_prefix "tsoverlay/v1/" {
  policy = "write"
}
session_prefix "" {
  policy = "write"
}
`;

/**
 * Why Consul tests cannot run here, or false (node:test's `skip` value). Under CI a missing
 * binary throws: the Consul suites must not shrink to nothing unnoticed.
 */
export function consulSkipReason(): string | false {
  if (fs.existsSync(CONSUL_BIN)) return false;
  const why = `${CONSUL_BIN} missing (run .ci/provision-extras.sh, or set TSO_CONSUL_BIN)`;
  if (isCi()) throw new Error(`Consul is required in CI: ${why}`);
  return why;
}

export interface ConsulOptions {
  /** Address the HTTP API listens on (default 127.0.0.1). */
  clientAddress?: string;
  /** ACLs on, default policy deny; `managementToken` then holds every right. */
  acl?: boolean;
  /** Default 60 s: until a leader is elected (and, with ACLs, the management token works). */
  startTimeoutMs?: number;
  /** More agent configuration, merged over the defaults (e.g. `limits`). */
  extraConfig?: Record<string, unknown>;
}

export interface ConsulServer {
  /** `host:port` of the HTTP API (for consul://… or CONSUL_HTTP_ADDR). */
  readonly address: string;
  /** The management token when started with `acl`. */
  readonly managementToken: string | undefined;
  readonly dataDir: string;
  pid(): number | undefined;
  /** The HTTP API, with the management token when there is one. */
  api(method: string, urlPath: string, body?: unknown, token?: string): Promise<{ status: number; body: unknown; text: string }>;
  /** A policy with these rules and a token holding only it; returns the token's SecretID. */
  createToken(rules: string, name?: string): Promise<string>;
  /** SIGKILL, data kept: the API refuses connections until up(). */
  down(): Promise<void>;
  /** Starts again on the same ports and data; resolves once a leader is back. */
  up(): Promise<void>;
  /** SIGSTOP / SIGCONT: connections open, nothing answers. */
  freeze(): void;
  thaw(): void;
  /** Recent output, for failure messages. */
  log(): string;
  /** Stops it (SIGTERM, then SIGKILL) and removes its data. Idempotent. */
  stop(): Promise<void>;
}

async function freePort(host: string): Promise<number> {
  return new Promise((resolve, reject) => {
    const srv = net.createServer();
    srv.once('error', reject);
    srv.listen(0, host, () => {
      const port = (srv.address() as net.AddressInfo).port;
      srv.close(() => resolve(port));
    });
  });
}

/** Distinct free ports (the kernel may hand the same one out twice once each is closed). */
async function freePorts(host: string, n: number): Promise<number[]> {
  const ports = new Set<number>();
  while (ports.size < n) ports.add(await freePort(host));
  return [...ports];
}

export async function startConsul(opts: ConsulOptions = {}): Promise<ConsulServer> {
  const why = consulSkipReason();
  if (why) throw new Error(why);
  const clientAddress = opts.clientAddress ?? '127.0.0.1';
  const [httpPort, serfLan, serfWan, serverPort] = await freePorts('127.0.0.1', 4);
  const dir = fs.mkdtempSync(path.join(runDir(), 'consul-'));
  const dataDir = path.join(dir, 'data');
  fs.mkdirSync(dataDir);
  const managementToken = opts.acl ? randomUUID() : undefined;
  const config = {
    node_name: `${path.basename(dir)}`,
    server: true,
    bootstrap_expect: 1,
    data_dir: dataDir,
    bind_addr: '127.0.0.1',
    client_addr: clientAddress,
    advertise_addr: '127.0.0.1',
    ports: { http: httpPort, dns: -1, grpc: -1, serf_lan: serfLan, serf_wan: serfWan, server: serverPort },
    // One server on one machine: elect quickly, and never try to reach HashiCorp.
    performance: { raft_multiplier: 1 },
    disable_update_check: true,
    log_level: 'INFO',
    ...(opts.acl
      ? { acl: { enabled: true, default_policy: 'deny', down_policy: 'extend-cache', tokens: { master: managementToken, agent: managementToken } } }
      : {}),
    ...(opts.extraConfig ?? {}),
  };
  const configFile = path.join(dir, 'consul.json');
  fs.writeFileSync(configFile, JSON.stringify(config, null, 2));
  const argv = [CONSUL_BIN, 'agent', `-config-file=${configFile}`];
  const address = `${clientAddress}:${httpPort}`;
  let proc: ManagedProcess | undefined;
  let stopped = false;
  let output = '';

  const api = async (
    method: string,
    urlPath: string,
    body?: unknown,
    token: string | undefined = managementToken,
  ): Promise<{ status: number; body: unknown; text: string }> => {
    const res = await fetch(`http://${address}${urlPath}`, {
      method,
      headers: token ? { 'X-Consul-Token': token } : {},
      body: body === undefined ? undefined : JSON.stringify(body),
      signal: AbortSignal.timeout(10_000),
    });
    const text = await res.text();
    let parsed: unknown = text;
    try {
      parsed = JSON.parse(text);
    } catch {
      // keep the text
    }
    return { status: res.status, body: parsed, text };
  };

  const launch = async (): Promise<void> => {
    const p = spawnTracked(argv, { name: 'consul', logFile: path.join(dir, 'consul.log'), registerCleanup: false, stopTimeoutMs: 5000 });
    proc = p;
    const deadline = Date.now() + (opts.startTimeoutMs ?? 60_000);
    for (;;) {
      if (!p.running()) throw new Error(`consul exited at start:\n${p.output().slice(-4000)}`);
      if (Date.now() > deadline) throw new Error(`consul: no leader within ${opts.startTimeoutMs ?? 60_000} ms:\n${p.output().slice(-4000)}`);
      try {
        const leader = await api('GET', '/v1/status/leader', undefined, undefined);
        if (leader.status === 200 && typeof leader.body === 'string' && leader.body !== '') {
          // With ACLs the management token is usable only once the leader has set up ACLs.
          if (!managementToken || (await api('GET', '/v1/acl/token/self')).status === 200) return;
        }
      } catch {
        /* not listening yet */
      }
      await sleep(100);
    }
  };

  const kill = async (signal: NodeJS.Signals): Promise<void> => {
    const p = proc;
    if (!p) return;
    output += p.output();
    if (p.running()) await p.stop({ signal, timeoutMs: 5000 });
    proc = undefined;
  };

  const stop = async (): Promise<void> => {
    if (stopped) return;
    stopped = true;
    if (proc?.running()) {
      try {
        process.kill(proc.pid, 'SIGCONT');
      } catch {
        /* gone */
      }
    }
    await kill('SIGTERM');
    removeTree(dir);
    unregister();
  };
  const unregister = registerCleanup(`consul ${address}`, stop, {
    sync: () => {
      if (proc?.running()) {
        try {
          process.kill(proc.pid, 'SIGKILL');
        } catch {
          /* gone */
        }
      }
      fs.rmSync(dir, { recursive: true, force: true });
    },
  });

  try {
    await launch();
  } catch (err) {
    await stop();
    throw err;
  }

  return {
    address,
    managementToken,
    dataDir,
    pid: () => (proc?.running() ? proc.pid : undefined),
    api,
    async createToken(rules, name = `tsoverlay-${randomUUID().slice(0, 8)}`) {
      const policy = await api('PUT', '/v1/acl/policy', { Name: name, Rules: rules });
      if (policy.status !== 200) throw new Error(`consul: creating policy ${name}: ${policy.status} ${policy.text}`);
      const token = await api('PUT', '/v1/acl/token', { Description: name, Policies: [{ Name: name }] });
      const secret = (token.body as { SecretID?: unknown }).SecretID;
      if (token.status !== 200 || typeof secret !== 'string') throw new Error(`consul: creating token: ${token.status} ${token.text}`);
      return secret;
    },
    down: () => kill('SIGKILL'),
    up: async () => {
      if (stopped) throw new Error('consul stopped');
      if (proc?.running()) return;
      await launch();
    },
    freeze: () => {
      if (proc?.running()) process.kill(proc.pid, 'SIGSTOP');
    },
    thaw: () => {
      if (proc?.running()) process.kill(proc.pid, 'SIGCONT');
    },
    log: () => (output + (proc?.output() ?? '')).slice(-8000),
    stop,
  };
}

/** Every key below `prefix` with its JSON value, keys relative to `prefix` (as etcdDump reads etcd). */
export async function consulDump(server: Pick<ConsulServer, 'api'>, prefix = 'tsoverlay/v1/'): Promise<Map<string, Record<string, unknown>>> {
  const r = await server.api('GET', `/v1/kv/${prefix}?recurse=true`);
  const out = new Map<string, Record<string, unknown>>();
  if (r.status === 404) return out;
  if (r.status !== 200 || !Array.isArray(r.body)) throw new Error(`consul: reading ${prefix}: ${r.status} ${r.text.slice(0, 300)}`);
  for (const item of r.body as { Key: string; Value: string | null }[]) {
    out.set(item.Key.slice(prefix.length), JSON.parse(Buffer.from(item.Value ?? '', 'base64').toString('utf8') || '{}') as Record<string, unknown>);
  }
  return out;
}
