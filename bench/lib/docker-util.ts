/** Docker helpers shared by the benchmarks. */
import type { DockerHost } from '../../test/helpers/docker';
import { demuxDockerStream } from '../../test/helpers/docker';

/** Milliseconds since the epoch of an RFC 3339 timestamp with up to nanoseconds (Docker's log timestamps). */
export function parseDockerTime(ts: string): number {
  const m = /^(\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2})(?:\.(\d+))?(Z|[+-]\d{2}:\d{2})$/.exec(ts.trim());
  if (!m) return NaN;
  const whole = Date.parse(`${m[1]}${m[3]}`);
  const frac = m[2] ? Number(`0.${m[2]}`) * 1000 : 0;
  return whole + frac;
}

export interface LogLine {
  /** Docker's receive time of the line, ms since the epoch. */
  time: number;
  text: string;
}

/** A container's stdout+stderr lines with Docker's timestamps. */
export async function timestampedLogs(host: DockerHost, id: string): Promise<LogLine[]> {
  const raw = (await host.docker.getContainer(id).logs({ stdout: true, stderr: true, timestamps: true, follow: false })) as unknown;
  const buf = Buffer.isBuffer(raw) ? raw : Buffer.from(String(raw));
  const { stdout, stderr } = demuxDockerStream(buf);
  const out: LogLine[] = [];
  for (const line of `${stdout}\n${stderr}`.split('\n')) {
    const sp = line.indexOf(' ');
    if (sp <= 0) continue;
    const time = parseDockerTime(line.slice(0, sp));
    if (Number.isFinite(time)) out.push({ time, text: line.slice(sp + 1) });
  }
  return out.sort((a, b) => a.time - b.time);
}

/** `docker rm -f` through the API, ignoring a container that is already gone. */
export async function removeContainer(host: DockerHost, id: string): Promise<void> {
  await host.docker
    .getContainer(id)
    .remove({ force: true })
    .catch((err: unknown) => {
      const status = (err as { statusCode?: number }).statusCode;
      if (status !== 404) throw err;
    });
}

/** A container's IPv4 address on a network. */
export async function containerIp(host: DockerHost, id: string, network: string): Promise<string> {
  const info = (await host.docker.getContainer(id).inspect()) as { NetworkSettings: { Networks: Record<string, { IPAddress?: string }> } };
  const ip = info.NetworkSettings.Networks[network]?.IPAddress;
  if (!ip) throw new Error(`container ${id.slice(0, 12)} has no address on ${network}`);
  return ip;
}
