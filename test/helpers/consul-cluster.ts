/**
 * A real, throw-away cluster of Consul servers for tests (default 3), each its own consul
 * 1.8.7 agent in server mode on this machine: `bootstrap_expect` = N, `retry_join` to the
 * others, HTTP API on a free port of 127.0.0.1 (and of `clientAddress` when given, e.g. the
 * underlay gateway so that plugins inside test hosts reach it), serf and server RPC on free
 * loopback ports, DNS and gRPC off, data under the per-run directory.
 *
 * With `clients`, that many client agents join them too (the layout where each host talks to
 * its own agent): their HTTP addresses are `agents`.
 *
 * `kill(i)` SIGKILLs one server by PID and keeps its data; `restart(i)` starts it again with
 * the same node name, ports and data, so it rejoins. `leader()` maps /v1/status/leader to a
 * member. `stop()` stops every server by PID and removes the data (also from the harness's
 * cleanup registry at exit).
 */
import * as fs from 'node:fs';
import * as net from 'node:net';
import * as path from 'node:path';
import { CONSUL_BIN, consulSkipReason } from './consul';
import { registerCleanup, removeTree, runDir, sleep, spawnTracked, type ManagedProcess } from './proc';

const SETPRIV = '/usr/bin/setpriv';

export interface ConsulClusterOptions {
  /** Number of servers, default 3. */
  servers?: number;
  /** Also serve the HTTP API on this address (same port as the loopback one). */
  clientAddress?: string;
  /** Until the cluster has a leader, default 60 s. */
  startTimeoutMs?: number;
  /** Client agents to start besides the servers, default 0. */
  clients?: number;
}

export interface ConsulMember {
  readonly index: number;
  readonly nodeName: string;
  /** `127.0.0.1:<http port>`. */
  readonly address: string;
  /** `<clientAddress>:<http port>`, or the loopback address when not given. */
  readonly reachableAddress: string;
  /** `127.0.0.1:<server RPC port>`: how /v1/status/leader names it. */
  readonly raftAddress: string;
  pid(): number | undefined;
  running(): boolean;
}

export interface ConsulCluster {
  readonly members: readonly ConsulMember[];
  /** HTTP addresses on `clientAddress` (for consul://a,b,c in test hosts). */
  readonly reachableAddresses: string[];
  /** The client agents' HTTP addresses on `clientAddress` (loopback when not given). */
  readonly agents: string[];
  /** Index of the server that leads now, waiting up to `waitMs` (default 30 s). */
  leader(waitMs?: number): Promise<number>;
  /** SIGKILL one server (by PID), data kept. */
  kill(member: number): Promise<void>;
  /** Start a killed server again; resolves once it answers and the cluster has a leader. */
  restart(member: number): Promise<void>;
  /** The HTTP API of the first live server. */
  api(method: string, urlPath: string, body?: unknown): Promise<{ status: number; body: unknown; text: string }>;
  log(member: number): string;
  /** Stops every server and removes the data. Idempotent. */
  stop(): Promise<void>;
}

async function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const srv = net.createServer();
    srv.unref();
    srv.once('error', reject);
    srv.listen(0, '127.0.0.1', () => {
      const port = (srv.address() as net.AddressInfo).port;
      srv.close(() => resolve(port));
    });
  });
}

async function freePorts(n: number): Promise<number[]> {
  const ports = new Set<number>();
  while (ports.size < n) ports.add(await freePort());
  return [...ports];
}

interface ServerState {
  member: ConsulMember;
  argv: string[];
  logFile: string;
  proc?: ManagedProcess;
  output: string;
}

async function call(address: string, method: string, urlPath: string, body?: unknown): Promise<{ status: number; body: unknown; text: string }> {
  const res = await fetch(`http://${address}${urlPath}`, {
    method,
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
}

export async function startConsulCluster(opts: ConsulClusterOptions = {}): Promise<ConsulCluster> {
  const why = consulSkipReason();
  if (why) throw new Error(why);
  const n = opts.servers ?? 3;
  const startTimeoutMs = opts.startTimeoutMs ?? 60_000;
  const dir = fs.mkdtempSync(path.join(runDir(), 'consul-cluster-'));
  const clients = opts.clients ?? 0;
  const ports = await freePorts(4 * (n + clients));
  const serfOf = (i: number): number => ports[4 * i + 1]!;
  const states: ServerState[] = [];
  for (let i = 0; i < n + clients; i++) {
    const isServer = i < n;
    const [httpPort, serfLan, serfWan, serverPort] = ports.slice(4 * i, 4 * i + 4) as [number, number, number, number];
    const serverDir = path.join(dir, `s${i}`);
    fs.mkdirSync(path.join(serverDir, 'data'), { recursive: true });
    const nodeName = `${path.basename(dir)}-${isServer ? `s${i}` : `c${i - n}`}`;
    const config = {
      node_name: nodeName,
      server: isServer,
      ...(isServer ? { bootstrap_expect: n } : {}),
      data_dir: path.join(serverDir, 'data'),
      bind_addr: '127.0.0.1',
      client_addr: opts.clientAddress ? `127.0.0.1 ${opts.clientAddress}` : '127.0.0.1',
      advertise_addr: '127.0.0.1',
      ports: { http: httpPort, dns: -1, grpc: -1, serf_lan: serfLan, serf_wan: serfWan, server: serverPort },
      retry_join: Array.from({ length: n }, (_, j) => j)
        .filter((j) => j !== i)
        .map((j) => `127.0.0.1:${serfOf(j)}`),
      // Production timing (raft_multiplier 1 is what HashiCorp recommends for production servers).
      performance: { raft_multiplier: 1 },
      disable_update_check: true,
      log_level: 'INFO',
    };
    const configFile = path.join(serverDir, 'consul.json');
    fs.writeFileSync(configFile, JSON.stringify(config, null, 2));
    const consulArgv = [CONSUL_BIN, 'agent', `-config-file=${configFile}`];
    const address = `127.0.0.1:${httpPort}`;
    const state: ServerState = {
      argv: fs.existsSync(SETPRIV) ? [SETPRIV, '--pdeathsig', 'KILL', '--', ...consulArgv] : consulArgv,
      logFile: path.join(serverDir, 'consul.log'),
      output: '',
      member: {
        index: i,
        nodeName,
        address,
        reachableAddress: opts.clientAddress ? `${opts.clientAddress}:${httpPort}` : address,
        raftAddress: `127.0.0.1:${serverPort}`,
        pid: () => (state.proc?.running() ? state.proc.pid : undefined),
        running: () => state.proc?.running() ?? false,
      },
    };
    states.push(state);
  }

  const agentStates = states.slice(n);
  states.length = n;
  const live = (): ServerState[] => states.filter((s) => s.proc?.running());

  const api = async (method: string, urlPath: string, body?: unknown): Promise<{ status: number; body: unknown; text: string }> => {
    let last: unknown;
    for (const s of live()) {
      try {
        return await call(s.member.address, method, urlPath, body);
      } catch (err) {
        last = err;
      }
    }
    throw new Error(`consul cluster: no live server answered ${method} ${urlPath}: ${String(last)}`);
  };

  const leader = async (waitMs = 30_000): Promise<number> => {
    const deadline = Date.now() + waitMs;
    for (;;) {
      for (const s of live()) {
        try {
          const r = await call(s.member.address, 'GET', '/v1/status/leader');
          const idx = states.findIndex((x) => x.member.raftAddress === r.body);
          if (idx >= 0 && states[idx]!.proc?.running()) return idx;
        } catch {
          /* not answering yet */
        }
      }
      if (Date.now() > deadline) throw new Error(`consul cluster: no leader within ${waitMs} ms`);
      await sleep(100);
    }
  };

  const spawnServer = (s: ServerState): void => {
    s.proc = spawnTracked(s.argv, { name: s.member.nodeName, logFile: s.logFile, registerCleanup: false, stopTimeoutMs: 5000 });
  };

  /** Answers on HTTP and knows a leader. */
  const waitServing = async (s: ServerState): Promise<void> => {
    const deadline = Date.now() + startTimeoutMs;
    for (;;) {
      const p = s.proc;
      if (!p?.running()) throw new Error(`consul server ${s.member.nodeName} exited at start:\n${p?.output().slice(-4000) ?? ''}`);
      try {
        const r = await call(s.member.address, 'GET', '/v1/status/leader');
        if (r.status === 200 && typeof r.body === 'string' && r.body !== '') return;
      } catch {
        /* not listening yet */
      }
      if (Date.now() > deadline) throw new Error(`consul server ${s.member.nodeName}: no leader within ${startTimeoutMs} ms:\n${p.output().slice(-4000)}`);
      await sleep(100);
    }
  };

  const killServer = async (s: ServerState, sig: NodeJS.Signals): Promise<void> => {
    const p = s.proc;
    if (!p) return;
    s.output = (s.output + p.output()).slice(-16_000);
    if (p.running()) {
      try {
        process.kill(p.pid, 'SIGCONT');
      } catch {
        /* gone */
      }
      await p.stop({ signal: sig, timeoutMs: 5000 });
    }
    s.proc = undefined;
  };

  let stopped = false;
  const stop = async (): Promise<void> => {
    if (stopped) return;
    stopped = true;
    await Promise.all([...agentStates, ...states].map((s) => killServer(s, 'SIGTERM')));
    removeTree(dir);
    unregister();
  };
  const unregister = registerCleanup(`consul cluster ${path.basename(dir)}`, stop, {
    sync: () => {
      for (const s of [...agentStates, ...states]) {
        if (s.proc?.running()) {
          try {
            process.kill(s.proc.pid, 'SIGKILL');
          } catch {
            /* gone */
          }
        }
      }
      fs.rmSync(dir, { recursive: true, force: true });
    },
  });

  try {
    for (const s of [...states, ...agentStates]) spawnServer(s);
    await Promise.all([...states, ...agentStates].map(waitServing));
    // The KV store answers once the leader has established itself (its first barrier).
    const deadline = Date.now() + startTimeoutMs;
    while ((await api('PUT', '/v1/kv/tso-cluster-ready', 'x').catch(() => ({ status: 0 }))).status !== 200) {
      if (Date.now() > deadline) throw new Error('consul cluster: KV not writable');
      await sleep(200);
    }
    await api('DELETE', '/v1/kv/tso-cluster-ready');
  } catch (err) {
    await stop();
    throw err;
  }

  const server = (i: number): ServerState => {
    const s = states[i];
    if (!s) throw new Error(`consul cluster: no server ${i}`);
    return s;
  };

  return {
    members: states.map((s) => s.member),
    reachableAddresses: states.map((s) => s.member.reachableAddress),
    agents: agentStates.map((s) => s.member.reachableAddress),
    leader,
    kill: (i) => killServer(server(i), 'SIGKILL'),
    async restart(i) {
      if (stopped) throw new Error('consul cluster stopped');
      const s = server(i);
      if (s.proc?.running()) return;
      spawnServer(s);
      await waitServing(s);
    },
    api,
    log: (i) => (server(i).output + (server(i).proc?.output() ?? '')).slice(-8000),
    stop,
  };
}
