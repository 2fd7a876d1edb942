/**
 * Starts a real, throw-away etcd for tests: 127.0.0.1 only, free random client/peer
 * ports, data under /tmp/<run prefix>/, member name `<run prefix>-etcd-<client port>`.
 * `stop()` kills only that PID and removes its data dir; a process-exit hook does the same
 * if a test forgets or crashes, and the child gets SIGKILL if this process dies (setpriv
 * --pdeathsig), so no etcd outlives the test run.
 */

import { ChildProcess, execFile, spawn } from 'node:child_process';
import { existsSync, mkdirSync, readFileSync, rmSync, rmdirSync, writeFileSync } from 'node:fs';
import * as http from 'node:http';
import * as https from 'node:https';
import { mkdtemp } from 'node:fs/promises';
import * as net from 'node:net';
import * as path from 'node:path';
import { runPrefix } from './proc';

/** The run prefix shared by every helper (see proc.ts: TSO_TEST_PREFIX overrides it). */
export const RUN_PREFIX: string = runPrefix();

const ETCD_BIN = process.env.ETCD_BIN ?? '/usr/bin/etcd';
const SETPRIV = '/usr/bin/setpriv';

export interface EtcdServer {
  /** `127.0.0.1:<port>` client endpoints (one member). */
  readonly endpoints: string[];
  readonly name: string;
  /** The instance's directory under /tmp/<run prefix>/ (etcd data in data/, certificates in pki/). */
  readonly dataDir: string;
  /** PID of the running etcd, undefined while down. */
  pid(): number | undefined;
  /** Kill etcd (SIGKILL) but keep its data: the endpoint refuses connections until `up()`. */
  down(): Promise<void>;
  /** Restart after `down()` on the same ports and data. */
  up(): Promise<void>;
  /** SIGSTOP / SIGCONT: connections stay open but nothing answers (deadline tests). */
  freeze(): void;
  thaw(): void;
  /** Stops etcd and removes its data dir. Idempotent. */
  stop(): Promise<void>;
  /** Recent etcd output, for failure messages. */
  log(): string;
  /** Client certificate material when started with `tls`. */
  readonly pki?: EtcdPki;
  /** Runs etcdctl against this server (with its certificates and root credentials). */
  etcdctl(...args: string[]): Promise<string>;
}

function runFile(file: string, args: string[]): Promise<string> {
  return new Promise((resolve, reject) => {
    execFile(file, args, { env: { ...process.env, ETCDCTL_API: '3' } }, (err, stdout, stderr) => {
      if (err) reject(new Error(`${file} ${args.join(' ')} failed: ${stderr || err.message}`));
      else resolve(stdout);
    });
  });
}

const live = new Set<{ child?: ChildProcess; dataDir: string; frozen: boolean }>();
let hooksInstalled = false;

function installExitHooks(): void {
  if (hooksInstalled) return;
  hooksInstalled = true;
  const cleanup = (): void => {
    for (const inst of live) {
      const pid = inst.child?.pid;
      if (pid !== undefined && inst.child?.exitCode === null) {
        try {
          process.kill(pid, 'SIGKILL');
        } catch {
          /* already gone */
        }
      }
      rmSync(inst.dataDir, { recursive: true, force: true });
      removeRunDirIfEmpty(inst.dataDir);
    }
    live.clear();
  };
  process.on('exit', cleanup);
  for (const sig of ['SIGINT', 'SIGTERM', 'SIGHUP'] as const) {
    process.once(sig, () => {
      cleanup();
      process.kill(process.pid, sig);
    });
  }
}

function removeRunDirIfEmpty(dataDir: string): void {
  try {
    rmdirSync(path.dirname(dataDir)); // only succeeds when empty
  } catch {
    /* other users of the run dir, or already gone */
  }
}

async function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const srv = net.createServer();
    srv.unref();
    srv.on('error', reject);
    srv.listen(0, '127.0.0.1', () => {
      const addr = srv.address();
      const port = typeof addr === 'object' && addr ? addr.port : 0;
      srv.close(() => resolve(port));
    });
  });
}

async function healthy(clientUrl: string, pki: EtcdPki | undefined): Promise<boolean> {
  const url = new URL('/health', clientUrl);
  const text = await new Promise<string | undefined>((resolve) => {
    const onResponse = (res: http.IncomingMessage): void => {
      let body = '';
      res.setEncoding('utf8');
      res.on('data', (c: string) => (body += c));
      res.on('end', () => resolve(body));
      res.on('error', () => resolve(undefined));
    };
    const req = pki
      ? https.get(url, { ca: readFileSync(pki.caFile), cert: readFileSync(pki.certFile), key: readFileSync(pki.keyFile), timeout: 1000 }, onResponse)
      : http.get(url, { timeout: 1000 }, onResponse);
    req.on('timeout', () => req.destroy());
    req.on('error', () => resolve(undefined));
  });
  if (text === undefined) return false;
  try {
    const body = JSON.parse(text) as { health?: unknown };
    return body.health === 'true' || body.health === true;
  } catch {
    return false;
  }
}

async function openssl(...args: string[]): Promise<void> {
  await runFile('openssl', args);
}

/** A throw-away CA, a server certificate for 127.0.0.1 (and `extraIp`) and a client certificate. */
async function makePki(dir: string, extraIp?: string): Promise<EtcdPki> {
  mkdirSync(dir, { recursive: true });
  const f = (n: string): string => path.join(dir, n);
  const san = `IP:127.0.0.1,DNS:localhost${extraIp ? `,IP:${extraIp}` : ''}`;
  writeFileSync(f('server.ext'), `subjectAltName=${san}\nextendedKeyUsage=serverAuth,clientAuth\n`);
  writeFileSync(f('client.ext'), 'extendedKeyUsage=clientAuth\n');
  await openssl('req', '-x509', '-newkey', 'rsa:2048', '-nodes', '-days', '1', '-subj', '/CN=tso-test-ca',
    '-keyout', f('ca.key'), '-out', f('ca.crt'));
  for (const who of ['server', 'client']) {
    await openssl('req', '-newkey', 'rsa:2048', '-nodes', '-subj', `/CN=tso-test-${who}`, '-keyout', f(`${who}.key`), '-out', f(`${who}.csr`));
    await openssl('x509', '-req', '-in', f(`${who}.csr`), '-CA', f('ca.crt'), '-CAkey', f('ca.key'), '-CAcreateserial',
      '-days', '1', '-extfile', f(`${who}.ext`), '-out', f(`${who}.crt`));
  }
  return { caFile: f('ca.crt'), certFile: f('client.crt'), keyFile: f('client.key') };
}

export interface StartEtcdOptions {
  /** Overrides the run prefix used for the name and /tmp directory. */
  prefix?: string;
  /** Milliseconds to wait for health, default 20 s. */
  startTimeoutMs?: number;
  /** Serve clients over TLS only, requiring a client certificate signed by a throw-away CA. */
  tls?: boolean;
  /** Enable etcd authentication with user `root` and this password (needs `tls` here). */
  rootPassword?: string;
  /**
   * Also serve clients on this address (same port), e.g. the underlay bridge address so
   * that plugins inside test-host namespaces reach it. Endpoints then list it too.
   */
  alsoListenOn?: string;
}

/** PEM files of a TLS-enabled test etcd. */
export interface EtcdPki {
  caFile: string;
  certFile: string;
  keyFile: string;
}

export async function startEtcd(options: StartEtcdOptions = {}): Promise<EtcdServer> {
  installExitHooks();
  const prefix = options.prefix ?? RUN_PREFIX;
  const runDir = path.join('/tmp', prefix);
  mkdirSync(runDir, { recursive: true });
  let lastError: Error | undefined;
  for (let attempt = 0; attempt < 3; attempt++) {
    const [clientPort, peerPort] = [await freePort(), await freePort()];
    if (clientPort === peerPort) continue;
    const dataDir = await mkdtemp(path.join(runDir, `etcd-${clientPort}-`));
    try {
      const pki = options.tls ? await makePki(path.join(dataDir, 'pki'), options.alsoListenOn) : undefined;
      return await launch(prefix, dataDir, clientPort, peerPort, options.startTimeoutMs ?? 20_000, pki, options.rootPassword, options.alsoListenOn);
    } catch (err) {
      lastError = err as Error;
      rmSync(dataDir, { recursive: true, force: true });
    }
  }
  removeRunDirIfEmpty(path.join(runDir, 'x'));
  throw lastError ?? new Error('could not start etcd');
}

async function launch(
  prefix: string,
  dataDir: string,
  clientPort: number,
  peerPort: number,
  startTimeoutMs: number,
  pki: EtcdPki | undefined,
  rootPassword: string | undefined,
  alsoListenOn: string | undefined,
): Promise<EtcdServer> {
  const name = `${prefix}-etcd-${clientPort}`;
  const scheme = pki ? 'https' : 'http';
  const clientUrl = `${scheme}://127.0.0.1:${clientPort}`;
  const listenUrls = [clientUrl, ...(alsoListenOn ? [`${scheme}://${alsoListenOn}:${clientPort}`] : [])].join(',');
  const peerUrl = `http://127.0.0.1:${peerPort}`;
  const args = [
    '--name', name,
    '--data-dir', path.join(dataDir, 'data'),
    '--listen-client-urls', listenUrls,
    '--advertise-client-urls', listenUrls,
    '--listen-peer-urls', peerUrl,
    '--initial-advertise-peer-urls', peerUrl,
    '--initial-cluster', `${name}=${peerUrl}`,
    '--initial-cluster-state', 'new',
    '--initial-cluster-token', name,
    '--logger', 'zap',
    '--log-outputs', 'stderr',
    '--log-level', 'warn',
  ];
  if (pki) {
    const dir = path.dirname(pki.caFile);
    args.push(
      '--cert-file', path.join(dir, 'server.crt'),
      '--key-file', path.join(dir, 'server.key'),
      '--trusted-ca-file', pki.caFile,
      '--client-cert-auth',
    );
  }
  const etcdctl = async (...cmd: string[]): Promise<string> => {
    const conn = ['--endpoints', `127.0.0.1:${clientPort}`];
    if (pki) conn.push('--cacert', pki.caFile, '--cert', pki.certFile, '--key', pki.keyFile);
    if (rootPassword !== undefined && authEnabled) conn.push('--user', `root:${rootPassword}`);
    return runFile('etcdctl', [...conn, ...cmd]);
  };
  let authEnabled = false;
  const inst: { child?: ChildProcess; dataDir: string; frozen: boolean } = { dataDir, frozen: false };
  live.add(inst);
  let output = '';
  const keep = (chunk: Buffer): void => {
    output = (output + chunk.toString('utf8')).slice(-8000);
  };

  const start = async (): Promise<void> => {
    const useSetpriv = existsSync(SETPRIV);
    const child = useSetpriv
      ? spawn(SETPRIV, ['--pdeathsig', 'KILL', '--', ETCD_BIN, ...args], { stdio: ['ignore', 'pipe', 'pipe'] })
      : spawn(ETCD_BIN, args, { stdio: ['ignore', 'pipe', 'pipe'] });
    inst.child = child;
    inst.frozen = false;
    child.stdout?.on('data', keep);
    child.stderr?.on('data', keep);
    const exited = new Promise<void>((resolve) => child.once('exit', () => resolve()));
    const deadline = Date.now() + startTimeoutMs;
    for (;;) {
      if (child.exitCode !== null || child.signalCode !== null) {
        throw new Error(`etcd exited during start-up (code ${child.exitCode}, signal ${child.signalCode}):\n${output}`);
      }
      if (await healthy(clientUrl, pki)) return;
      if (Date.now() > deadline) {
        await kill();
        throw new Error(`etcd did not become healthy within ${startTimeoutMs} ms:\n${output}`);
      }
      await Promise.race([new Promise((r) => setTimeout(r, 100)), exited]);
    }
  };

  const kill = async (): Promise<void> => {
    const child = inst.child;
    if (!child || child.exitCode !== null || child.signalCode !== null) return;
    const exited = new Promise<void>((resolve) => child.once('exit', () => resolve()));
    if (child.pid !== undefined) {
      try {
        process.kill(child.pid, 'SIGKILL');
      } catch {
        /* gone */
      }
    }
    await exited;
  };

  try {
    await start();
    if (rootPassword !== undefined) {
      await etcdctl('user', 'add', `root:${rootPassword}`);
      await etcdctl('user', 'grant-role', 'root', 'root').catch(() => undefined); // built in on some versions
      await etcdctl('auth', 'enable');
      authEnabled = true;
    }
  } catch (err) {
    await kill();
    live.delete(inst);
    throw err;
  }
  let stopped = false;
  return {
    endpoints: [`127.0.0.1:${clientPort}`, ...(alsoListenOn ? [`${alsoListenOn}:${clientPort}`] : [])],
    name,
    dataDir,
    pid: () => (inst.child && inst.child.exitCode === null && inst.child.signalCode === null ? inst.child.pid : undefined),
    down: kill,
    up: start,
    freeze: () => {
      if (inst.child?.pid !== undefined) process.kill(inst.child.pid, 'SIGSTOP');
      inst.frozen = true;
    },
    thaw: () => {
      if (inst.child?.pid !== undefined) process.kill(inst.child.pid, 'SIGCONT');
      inst.frozen = false;
    },
    stop: async () => {
      if (stopped) return;
      stopped = true;
      const child = inst.child;
      if (child && child.exitCode === null && child.signalCode === null && child.pid !== undefined) {
        const exited = new Promise<void>((resolve) => child.once('exit', () => resolve()));
        if (inst.frozen) process.kill(child.pid, 'SIGCONT');
        process.kill(child.pid, 'SIGTERM');
        const timer = setTimeout(() => {
          try {
            if (child.pid !== undefined) process.kill(child.pid, 'SIGKILL');
          } catch {
            /* gone */
          }
        }, 5000);
        await exited;
        clearTimeout(timer);
      }
      rmSync(dataDir, { recursive: true, force: true });
      removeRunDirIfEmpty(dataDir);
      live.delete(inst);
    },
    log: () => output,
    pki,
    etcdctl,
  };
}
