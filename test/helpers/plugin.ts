import fs from 'node:fs';
import http from 'node:http';
import path from 'node:path';
import { NODE_FLAGS } from '../../src/node-flags';
import type { DockerHost } from './docker';
import type { ManagedProcess } from './proc';
import { waitFor } from './proc';

export const PLUGIN_MAIN = path.resolve(__dirname, '../../src/cli/main.js');
export const PLUGIN_SOCKET = '/run/docker/plugins/tsoverlay.sock';
export const NETNS_DIR = '/run/tsoverlay/netns';

/** Where a test host's plugin keeps its instance id: per host, surviving a crash of the host, as /var/lib does. */
export function pluginStateDir(host: DockerHost): string {
  return path.join(host.dir, 'tsoverlay-id');
}

export interface PluginOptions {
  /** Default: an embedded store in the host's scratch directory. */
  store?: string;
  vtep?: string;
  extraArgs?: readonly string[];
  env?: NodeJS.ProcessEnv;
}

export interface PluginProcess {
  readonly process: ManagedProcess;
  /** The socket as seen from the root mount namespace (through /proc/<dockerd>/root). */
  readonly socketPath: string;
  /** A raw request on the plugin socket, the way dockerd sends it (no Content-Type). */
  call(method: string, body: string): Promise<{ status: number; contentType: string; body: unknown }>;
  /** The daemon's /metrics text, from its socket. */
  metrics(): Promise<string>;
  stop(): Promise<void>;
}

/**
 * Runs `tsoverlay serve` inside a test Docker host's network and mount namespaces, so its
 * socket lands in that host's private /run/docker/plugins and its overlay namespaces under
 * that host's private /run/tsoverlay.
 */
export async function startPlugin(host: DockerHost, opts: PluginOptions = {}): Promise<PluginProcess> {
  const argv = [
    process.execPath,
    ...NODE_FLAGS, // as deployed
    PLUGIN_MAIN,
    'serve',
    '--store',
    opts.store ?? `local://${host.dir}/tsoverlay-state`,
    '--socket',
    PLUGIN_SOCKET,
    '--netns-dir',
    NETNS_DIR,
    '--host-name',
    host.name,
    '--state-dir',
    pluginStateDir(host),
    '--log-level',
    'debug',
    ...(opts.vtep ? ['--vtep', opts.vtep] : []),
    // Names are read from this host's own engine (not whatever /var/run/docker.sock is).
    ...(opts.extraArgs?.includes('--docker-socket') ? [] : ['--docker-socket', host.socketPath]),
    ...(opts.extraArgs ?? []),
  ];
  const proc = host.exec(argv, { background: true, name: 'tsoverlay', env: { ...process.env, ...(opts.env ?? {}) } });
  // Through a process in the host's mount namespace (dockerd, or a placeholder while it is down).
  const socketPath = `/proc/${host.nsPid()}/root${PLUGIN_SOCKET}`;
  await waitFor(() => fs.existsSync(socketPath) || !proc.running(), { timeoutMs: 15_000, what: 'plugin socket' });
  if (!proc.running()) throw new Error(`tsoverlay exited at start:\n${proc.output()}`);
  await proc.waitForOutput('tsoverlay serving', 15_000);
  const call = (method: string, body: string) =>
    new Promise<{ status: number; contentType: string; body: unknown }>((resolve, reject) => {
      const req = http.request({ socketPath: `/proc/${host.nsPid()}/root${PLUGIN_SOCKET}`, path: method, method: 'POST' }, (res) => {
        let data = '';
        res.on('data', (c: Buffer) => (data += c.toString()));
        res.on('end', () => {
          let parsed: unknown = data;
          try {
            parsed = JSON.parse(data);
          } catch {
            // keep raw text: the assertion will show it
          }
          resolve({ status: res.statusCode ?? 0, contentType: String(res.headers['content-type']), body: parsed });
        });
      });
      req.on('error', reject);
      req.end(body);
    });
  const metrics = () =>
    new Promise<string>((resolve, reject) => {
      const req = http.get({ socketPath, path: '/metrics', timeout: 5000 }, (res) => {
        let text = '';
        res.on('data', (c: Buffer) => (text += c.toString()));
        res.on('end', () => resolve(text));
      });
      req.on('timeout', () => req.destroy(new Error('no answer from /metrics within 5 s')));
      req.on('error', reject);
    });
  return {
    process: proc,
    socketPath,
    call,
    metrics,
    async stop() {
      await proc.stop();
    },
  };
}
