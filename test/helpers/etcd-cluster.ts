/**
 * A real, throw-away etcd cluster for tests: N members (default 3), each its own etcd process
 * on this machine with distinct free client and peer ports on 127.0.0.1 (clients optionally on
 * one more address too, e.g. the underlay gateway so that plugins inside test-host namespaces
 * reach it), data under the per-run directory (/tmp/<run prefix>/etcd-cluster-…/<member>/).
 *
 * `kill(i)` SIGKILLs one member by PID and keeps its data; `restart(i)` starts it again on the
 * same ports and data, so it rejoins as the same member. `leader()` asks the live members which
 * of them leads. `stop()` stops every member by PID and removes the data; the harness's cleanup
 * registry does the same at exit if a test forgets or fails, and each member gets SIGKILL if
 * this process dies (setpriv --pdeathsig), so no etcd outlives the test run.
 */
import * as fs from 'node:fs';
import * as net from 'node:net';
import * as path from 'node:path';
import { registerCleanup, removeTree, run, runDir, sleep, spawnTracked, type ManagedProcess } from './proc';

const ETCD_BIN = process.env.ETCD_BIN ?? '/usr/bin/etcd';
const ETCDCTL_BIN = process.env.ETCDCTL_BIN ?? '/usr/bin/etcdctl';
const SETPRIV = '/usr/bin/setpriv';

export interface EtcdClusterOptions {
  /** Number of members, default 3. */
  members?: number;
  /** Also serve clients on this address (same port as the member's loopback client port). */
  alsoListenOn?: string;
  /** Until every member is healthy (a leader elected), default 30 s. */
  startTimeoutMs?: number;
  /** etcd's --heartbeat-interval / --election-timeout in ms (etcd's defaults 100 / 1000 when unset). */
  heartbeatMs?: number;
  electionTimeoutMs?: number;
  /** More etcd flags for every member (e.g. `--quota-backend-bytes` for a benchmark). */
  extraArgs?: readonly string[];
}

export interface EtcdMember {
  readonly index: number;
  readonly name: string;
  readonly clientPort: number;
  readonly peerPort: number;
  readonly dataDir: string;
  /** `127.0.0.1:<client port>`. */
  readonly endpoint: string;
  /** `<alsoListenOn>:<client port>` when asked for, else the loopback endpoint. */
  readonly reachableEndpoint: string;
  pid(): number | undefined;
  running(): boolean;
}

export interface EtcdCluster {
  readonly members: readonly EtcdMember[];
  /** Loopback client endpoints of every member (`127.0.0.1:port`). */
  readonly endpoints: string[];
  /** Client endpoints on `alsoListenOn` (the loopback ones when not given): for etcd://a,b,c in test hosts. */
  readonly reachableEndpoints: string[];
  /** Index of the member that leads now, waiting up to `waitMs` (default 15 s) for one. */
  leader(waitMs?: number): Promise<number>;
  /** SIGKILL one member (by PID), data kept. Resolves once the process is gone. */
  kill(member: number): Promise<void>;
  /** Start a killed member again with the same data and ports; resolves once it serves and sees a leader. */
  restart(member: number): Promise<void>;
  /** etcdctl (API v3) against the live members. */
  etcdctl(...args: string[]): Promise<string>;
  /** Recent output of one member, for failure messages. */
  log(member: number): string;
  /** Stops every member and removes the data. Idempotent. */
  stop(): Promise<void>;
}

async function freePort(host: string): Promise<number> {
  return new Promise((resolve, reject) => {
    const srv = net.createServer();
    srv.unref();
    srv.once('error', reject);
    srv.listen(0, host, () => {
      const port = (srv.address() as net.AddressInfo).port;
      srv.close(() => resolve(port));
    });
  });
}

async function freePorts(n: number): Promise<number[]> {
  const ports = new Set<number>();
  while (ports.size < n) ports.add(await freePort('127.0.0.1'));
  return [...ports];
}

/** etcd's /health: true once the member is up and sees a leader. */
async function healthy(endpoint: string): Promise<boolean> {
  try {
    const res = await fetch(`http://${endpoint}/health`, { signal: AbortSignal.timeout(1000) });
    const body = (await res.json()) as { health?: unknown };
    return body.health === true || body.health === 'true';
  } catch {
    return false;
  }
}

interface MemberState {
  member: EtcdMember;
  args: string[];
  logFile: string;
  proc?: ManagedProcess;
  output: string;
}

export async function startEtcdCluster(opts: EtcdClusterOptions = {}): Promise<EtcdCluster> {
  const n = opts.members ?? 3;
  if (n < 1) throw new Error('etcd cluster: at least one member');
  const startTimeoutMs = opts.startTimeoutMs ?? 30_000;
  const dir = fs.mkdtempSync(path.join(runDir(), 'etcd-cluster-'));
  const token = path.basename(dir);
  const ports = await freePorts(2 * n);
  const peerUrl = (i: number): string => `http://127.0.0.1:${ports[2 * i + 1]!}`;
  const nameOf = (i: number): string => `${token}-m${i}`;
  const initialCluster = Array.from({ length: n }, (_, i) => `${nameOf(i)}=${peerUrl(i)}`).join(',');
  const states: MemberState[] = [];
  for (let i = 0; i < n; i++) {
    const clientPort = ports[2 * i]!;
    const peerPort = ports[2 * i + 1]!;
    const memberDir = path.join(dir, `m${i}`);
    fs.mkdirSync(memberDir);
    const endpoint = `127.0.0.1:${clientPort}`;
    const reachableEndpoint = opts.alsoListenOn ? `${opts.alsoListenOn}:${clientPort}` : endpoint;
    const clientUrls = [`http://${endpoint}`, ...(opts.alsoListenOn ? [`http://${reachableEndpoint}`] : [])].join(',');
    const args = [
      '--name', nameOf(i),
      '--data-dir', path.join(memberDir, 'data'),
      '--listen-client-urls', clientUrls,
      '--advertise-client-urls', clientUrls,
      '--listen-peer-urls', peerUrl(i),
      '--initial-advertise-peer-urls', peerUrl(i),
      // Only read on the first start: a restart with data rejoins as the same member.
      '--initial-cluster', initialCluster,
      '--initial-cluster-state', 'new',
      '--initial-cluster-token', token,
      ...(opts.heartbeatMs ? ['--heartbeat-interval', String(opts.heartbeatMs)] : []),
      ...(opts.electionTimeoutMs ? ['--election-timeout', String(opts.electionTimeoutMs)] : []),
      '--logger', 'zap',
      '--log-outputs', 'stderr',
      '--log-level', 'warn',
      ...(opts.extraArgs ?? []),
    ];
    const state: MemberState = {
      args,
      logFile: path.join(memberDir, 'etcd.log'),
      output: '',
      member: {
        index: i,
        name: nameOf(i),
        clientPort,
        peerPort,
        dataDir: memberDir,
        endpoint,
        reachableEndpoint,
        pid: () => (state.proc?.running() ? state.proc.pid : undefined),
        running: () => state.proc?.running() ?? false,
      },
    };
    states.push(state);
  }

  const spawnMember = (s: MemberState): void => {
    const argv = fs.existsSync(SETPRIV) ? [SETPRIV, '--pdeathsig', 'KILL', '--', ETCD_BIN, ...s.args] : [ETCD_BIN, ...s.args];
    s.proc = spawnTracked(argv, { name: s.member.name, logFile: s.logFile, registerCleanup: false, stopTimeoutMs: 5000 });
  };

  const waitHealthy = async (s: MemberState): Promise<void> => {
    const deadline = Date.now() + startTimeoutMs;
    for (;;) {
      const p = s.proc;
      if (!p?.running()) throw new Error(`etcd member ${s.member.name} exited at start:\n${p?.output().slice(-4000) ?? ''}`);
      if (await healthy(s.member.endpoint)) return;
      if (Date.now() > deadline) throw new Error(`etcd member ${s.member.name} not healthy within ${startTimeoutMs} ms:\n${p.output().slice(-4000)}`);
      await sleep(100);
    }
  };

  const killMember = async (s: MemberState, sig: NodeJS.Signals): Promise<void> => {
    const p = s.proc;
    if (!p) return;
    s.output = (s.output + p.output()).slice(-16_000);
    if (p.running()) await p.stop({ signal: sig, timeoutMs: 5000 });
    s.proc = undefined;
  };

  let stopped = false;
  const stop = async (): Promise<void> => {
    if (stopped) return;
    stopped = true;
    await Promise.all(states.map((s) => killMember(s, 'SIGTERM')));
    removeTree(dir);
    unregister();
  };
  const unregister = registerCleanup(`etcd cluster ${token}`, stop, {
    sync: () => {
      for (const s of states) {
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

  const live = (): MemberState[] => states.filter((s) => s.proc?.running());

  const etcdctl = async (...args: string[]): Promise<string> => {
    const endpoints = live().map((s) => s.member.endpoint);
    if (endpoints.length === 0) throw new Error('etcd cluster: no live member');
    const r = await run([ETCDCTL_BIN, '--endpoints', endpoints.join(','), '--command-timeout', '5s', ...args], {
      env: { ...process.env, ETCDCTL_API: '3' },
      timeoutMs: 15_000,
      allowFailure: true,
    });
    if (r.code !== 0) throw new Error(`etcdctl ${args.join(' ')} failed: ${r.stderr || r.stdout}`);
    return r.stdout;
  };

  /** Member ids are uint64: read them as text, never as JSON numbers (they exceed 2^53). */
  const statusOf = async (s: MemberState): Promise<{ id: string; leader: string } | undefined> => {
    const r = await run([ETCDCTL_BIN, '--endpoints', s.member.endpoint, '--command-timeout', '2s', 'endpoint', 'status', '-w', 'json'], {
      env: { ...process.env, ETCDCTL_API: '3' },
      timeoutMs: 5000,
      allowFailure: true,
    });
    if (r.code !== 0) return undefined;
    const id = /"member_id":(\d+)/.exec(r.stdout)?.[1];
    const leader = /"leader":(\d+)/.exec(r.stdout)?.[1];
    return id && leader ? { id, leader } : undefined;
  };

  const leader = async (waitMs = 15_000): Promise<number> => {
    const deadline = Date.now() + waitMs;
    for (;;) {
      const seen = await Promise.all(live().map(async (s) => ({ s, st: await statusOf(s) })));
      const ids = new Map(seen.filter((x) => x.st).map((x) => [x.st!.id, x.s.member.index]));
      for (const { st } of seen) {
        const idx = st && st.leader !== '0' ? ids.get(st.leader) : undefined;
        if (idx !== undefined) return idx;
      }
      if (Date.now() > deadline) throw new Error(`etcd cluster: no leader among the live members within ${waitMs} ms`);
      await sleep(100);
    }
  };

  try {
    for (const s of states) spawnMember(s);
    await Promise.all(states.map(waitHealthy));
  } catch (err) {
    await stop();
    throw err;
  }

  const member = (i: number): MemberState => {
    const s = states[i];
    if (!s) throw new Error(`etcd cluster: no member ${i}`);
    return s;
  };

  return {
    members: states.map((s) => s.member),
    endpoints: states.map((s) => s.member.endpoint),
    reachableEndpoints: states.map((s) => s.member.reachableEndpoint),
    leader,
    kill: (i) => killMember(member(i), 'SIGKILL'),
    async restart(i) {
      if (stopped) throw new Error('etcd cluster stopped');
      const s = member(i);
      if (s.proc?.running()) return;
      spawnMember(s);
      await waitHealthy(s);
    },
    etcdctl,
    log: (i) => (member(i).output + (member(i).proc?.output() ?? '')).slice(-8000),
    stop,
  };
}
