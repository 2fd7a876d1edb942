/**
 * A real `tsoverlay serve` for the benchmarks that need no Docker (API latency, footprint): a
 * child process in the benchmark's own (isolated) namespaces, its socket, store and netns
 * directory under the run directory, and a client that talks to the socket the way dockerd does.
 */
import * as fs from 'node:fs';
import * as http from 'node:http';
import * as path from 'node:path';
import { NODE_FLAGS } from '../../src/node-flags';
import { PLUGIN_MAIN } from '../../test/helpers/plugin';
import { readProc, run, runDir, spawnTracked, waitFor, type ManagedProcess } from '../../test/helpers/proc';
import { isolated } from './isolate';

export interface BenchPlugin {
  readonly process: ManagedProcess;
  readonly socketPath: string;
  readonly dir: string;
  /** The node flags it runs with. */
  readonly nodeFlags: readonly string[];
  /** Directory of the CPU profile when started with `profile`. */
  readonly profileDir?: string;
  stop(): Promise<void>;
}

export interface BenchPluginOptions {
  name: string;
  store?: string;
  vtep: string;
  extraArgs?: readonly string[];
  /** Node flags for the plugin process; default NODE_FLAGS, as the plugin is deployed (see pluginNodeFlags). */
  nodeArgs?: readonly string[];
  /** Run node with --cpu-prof, or --heap-prof (sampled allocations), written when the plugin exits. */
  profile?: boolean | 'heap';
}

/**
 * An underlay for an isolated network namespace: a veth pair (the kernel here has no dummy
 * devices) with `cidr` on the first end and a default route through it.
 */
export async function fakeUnderlay(cidr: string): Promise<string> {
  const batch = ['link set lo up', 'link add ul0 type veth peer name ul1', `addr add ${cidr} dev ul0`, 'link set ul0 up', 'link set ul1 up', 'route add default dev ul0', ''].join('\n');
  await run(['ip', '-batch', '-'], { input: batch });
  return cidr.split('/')[0]!;
}

/**
 * The plugin's node flags: as deployed (NODE_FLAGS), or TSO_BENCH_PLUGIN_NODE_FLAGS (space-separated,
 * possibly empty) to measure the plugin under other V8 settings, e.g. the before of a flag change.
 */
function pluginNodeFlags(): readonly string[] {
  const fromEnv = process.env.TSO_BENCH_PLUGIN_NODE_FLAGS;
  return fromEnv === undefined ? NODE_FLAGS : fromEnv.split(/\s+/).filter((f) => f !== '');
}

export async function startBenchPlugin(opts: BenchPluginOptions): Promise<BenchPlugin> {
  const dir = path.join(runDir(), opts.name);
  fs.mkdirSync(dir, { recursive: true });
  const socketPath = path.join(dir, 'tsoverlay.sock');
  const profileDir = opts.profile ? path.join(dir, 'cpuprofile') : undefined;
  // As in production (/run/tsoverlay/…): the netns directory and, beside it, the in-flight
  // request journal on a tmpfs — possible in the benchmark's private mount namespace.
  const nodeFlags = opts.nodeArgs ?? pluginNodeFlags();
  const runTmp = path.join(dir, 'run');
  fs.mkdirSync(runTmp, { recursive: true });
  if (isolated()) await run(['mount', '-t', 'tmpfs', '-o', 'mode=0755', 'none', runTmp]);
  const argv = [
    process.execPath,
    ...nodeFlags,
    ...(profileDir ? (opts.profile === 'heap' ? ['--heap-prof', '--heap-prof-dir', profileDir] : ['--cpu-prof', '--cpu-prof-dir', profileDir]) : []),
    PLUGIN_MAIN,
    'serve',
    '--socket', socketPath,
    '--store', opts.store ?? `local://${path.join(dir, 'state')}`,
    '--netns-dir', path.join(runTmp, 'netns'),
    '--host-name', opts.name,
    '--state-dir', path.join(dir, 'id'),
    '--vtep', opts.vtep,
    ...(opts.extraArgs ?? []),
  ];
  const proc = spawnTracked(argv, { name: `tsoverlay-${opts.name}`, logFile: path.join(dir, 'plugin.log'), keepChars: 64 * 1024, stopTimeoutMs: 15_000 });
  await waitFor(() => fs.existsSync(socketPath) || !proc.running(), { timeoutMs: 30_000, what: 'plugin socket' });
  if (!proc.running()) throw new Error(`tsoverlay exited at start:\n${proc.output()}`);
  await proc.waitForOutput('tsoverlay serving', 30_000);
  return {
    process: proc,
    socketPath,
    dir,
    nodeFlags,
    ...(profileDir ? { profileDir } : {}),
    async stop() {
      await proc.stop();
    },
  };
}

/** An error answer of the plugin ({"Err": …} with a non-2xx status). */
export class PluginCallError extends Error {
  constructor(
    readonly method: string,
    readonly status: number,
    readonly body: string,
  ) {
    super(`${method}: HTTP ${status}: ${body.slice(0, 300)}`);
  }
}

/**
 * Calls plugin methods over the Unix socket as dockerd does: POST, `Accept:
 * application/vnd.docker.plugins.v1.2+json`, a JSON body with Content-Length and no
 * Content-Type, over kept-alive connections.
 */
export class PluginClient {
  private readonly agent: http.Agent;

  constructor(
    readonly socketPath: string,
    maxSockets = 64,
  ) {
    this.agent = new http.Agent({ keepAlive: true, maxSockets });
  }

  call<T = unknown>(method: string, body: unknown = {}): Promise<T> {
    const payload = Buffer.from(JSON.stringify(body));
    return new Promise<T>((resolve, reject) => {
      const req = http.request(
        {
          socketPath: this.socketPath,
          agent: this.agent,
          path: `/${method}`,
          method: 'POST',
          headers: { Accept: 'application/vnd.docker.plugins.v1.2+json', 'Content-Length': payload.length },
        },
        (res) => {
          const chunks: Buffer[] = [];
          res.on('data', (c: Buffer) => chunks.push(c));
          res.on('end', () => {
            const text = Buffer.concat(chunks).toString('utf8');
            const status = res.statusCode ?? 0;
            if (status < 200 || status >= 300) {
              reject(new PluginCallError(method, status, text));
              return;
            }
            try {
              resolve(JSON.parse(text) as T);
            } catch {
              reject(new PluginCallError(method, status, text));
            }
          });
          res.on('error', reject);
        },
      );
      req.on('error', reject);
      req.end(payload);
    });
  }

  /** GET on the plugin socket (e.g. /metrics). */
  get(pathName: string): Promise<string> {
    return new Promise<string>((resolve, reject) => {
      const req = http.request({ socketPath: this.socketPath, agent: this.agent, path: pathName, method: 'GET' }, (res) => {
        const chunks: Buffer[] = [];
        res.on('data', (c: Buffer) => chunks.push(c));
        res.on('end', () => resolve(Buffer.concat(chunks).toString('utf8')));
        res.on('error', reject);
      });
      req.on('error', reject);
      req.end();
    });
  }

  /** Unlabelled gauges from the plugin's /metrics, by name (NaN when absent). */
  async metrics(names: readonly string[]): Promise<Record<string, number>> {
    const text = await this.get('/metrics');
    const out: Record<string, number> = {};
    for (const n of names) {
      const m = new RegExp(`^${n}(?:\\{[^}]*\\})? ([0-9.eE+-]+)$`, 'm').exec(text);
      out[n] = m ? Number(m[1]) : NaN;
    }
    return out;
  }

  close(): void {
    this.agent.destroy();
  }
}

/** Resident set size (VmRSS), its peak (VmHWM) and its private anonymous part (RssAnon) of a process, in MiB. */
export function memoryOf(pid: number): { rssMiB: number; hwmMiB: number; anonMiB: number } {
  const status = fs.readFileSync(`/proc/${pid}/status`, 'utf8');
  const kb = (k: string) => Number(new RegExp(`^${k}:\\s+(\\d+) kB`, 'm').exec(status)?.[1] ?? NaN);
  return { rssMiB: kb('VmRSS') / 1024, hwmMiB: kb('VmHWM') / 1024, anonMiB: kb('RssAnon') / 1024 };
}

const CLK_TCK = 100;

/** CPU seconds (user + system) a process has used so far. */
export function cpuSecondsOf(pid: number): number {
  const stat = fs.readFileSync(`/proc/${pid}/stat`, 'utf8');
  const fields = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
  // fields[11] = utime (field 14), fields[12] = stime (field 15), in clock ticks.
  return (Number(fields[11]) + Number(fields[12])) / CLK_TCK;
}

export function isRunning(pid: number): boolean {
  return readProc(pid) !== undefined;
}

/** A random hex id like Docker's (64 characters). */
export function dockerId(): string {
  let s = '';
  while (s.length < 64) s += Math.floor(Math.random() * 0xffffffff).toString(16).padStart(8, '0');
  return s.slice(0, 64);
}
