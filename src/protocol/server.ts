import express, { type NextFunction, type Request, type Response } from 'express';
import fs from 'node:fs';
import net from 'node:net';
import path from 'node:path';
import type { z } from 'zod';
import type { Logger } from '../log';
import { PluginError, errorMessage } from '../util/errors';

export const PLUGIN_CONTENT_TYPE = 'application/vnd.docker.plugins.v1+json';
export const MAX_BODY_BYTES = 1024 * 1024;

/** A plugin endpoint: its request schema and what to do with a valid request. */
export interface Route {
  run(body: unknown): Promise<unknown>;
}

export function route<S extends z.ZodTypeAny>(schema: S, handle: (request: z.output<S>) => Promise<unknown>): Route {
  return {
    async run(body) {
      const parsed = schema.safeParse(body);
      if (!parsed.success) {
        const issue = parsed.error.issues[0];
        const where = issue && issue.path.length > 0 ? `${issue.path.join('.')}: ` : '';
        throw new PluginError(`invalid request: ${where}${issue?.message ?? 'malformed'}`);
      }
      return handle(parsed.data as z.output<S>);
    },
  };
}

/** Docker sends no Content-Type and may send an empty body or `null`: parse whatever arrives as JSON. */
function parseBody(raw: unknown): unknown {
  const text = typeof raw === 'string' ? raw.trim() : '';
  if (text === '' || text === 'null') return {};
  try {
    return JSON.parse(text);
  } catch (err) {
    throw new PluginError(`request body is not valid JSON: ${errorMessage(err)}`);
  }
}

function reply(res: Response, status: number, body: unknown): void {
  res.status(status).type(PLUGIN_CONTENT_TYPE).send(JSON.stringify(body));
}

export function createApp(routes: Record<string, Route>, logger: Logger): express.Express {
  const app = express();
  app.disable('x-powered-by');
  app.use(express.text({ type: () => true, limit: MAX_BODY_BYTES }));
  app.post('/:method', (req: Request, res: Response, next: NextFunction) => {
    const method = String(req.params.method);
    const target = Object.hasOwn(routes, method) ? routes[method] : undefined;
    if (!target) return next();
    const started = process.hrtime.bigint();
    Promise.resolve()
      .then(() => target.run(parseBody(req.body)))
      .then((result) => reply(res, 200, result ?? {}))
      .catch((err: unknown) => {
        const status = err instanceof PluginError ? err.status : 500;
        const level = status >= 500 ? 'error' : 'warn';
        logger.log(level, 'request failed', { method, status, error: errorMessage(err) });
        reply(res, status, { Err: errorMessage(err) });
      })
      .finally(() => {
        logger.debug('request', { method, ms: Number(process.hrtime.bigint() - started) / 1e6 });
      });
  });
  app.use((req: Request, res: Response) => reply(res, 404, { Err: `unknown plugin method ${req.method} ${req.path}` }));
  // Body-parser failures (too large, bad encoding) arrive here with their own status.
  app.use((err: unknown, _req: Request, res: Response, _next: NextFunction) => {
    const status = typeof err === 'object' && err !== null && 'status' in err && typeof err.status === 'number' ? err.status : 400;
    const message = status === 413 ? `request body larger than ${MAX_BODY_BYTES} bytes` : `bad request: ${errorMessage(err)}`;
    reply(res, status, { Err: message });
  });
  return app;
}

/** True when something already answers on the socket path (another running plugin). */
function socketInUse(socketPath: string): Promise<boolean> {
  return new Promise((resolve) => {
    const probe = net.connect(socketPath);
    probe.once('connect', () => {
      probe.destroy();
      resolve(true);
    });
    probe.once('error', () => resolve(false));
  });
}

/**
 * Listens on the Unix socket Docker discovers plugins by. A stale socket file from a crashed
 * run is replaced; a live one is an error (two plugins would fight over every network).
 * The socket is root-only: whoever can write to it can rewire every container's network.
 */
export async function listenUnix(app: express.Express, socketPath: string, mode = 0o600): Promise<net.Server> {
  fs.mkdirSync(path.dirname(socketPath), { recursive: true });
  if (fs.existsSync(socketPath)) {
    if (await socketInUse(socketPath)) throw new Error(`another process is already serving ${socketPath}`);
    fs.unlinkSync(socketPath);
  }
  // Create the socket already restricted, rather than chmod-ing a world-writable one afterwards.
  const previousUmask = process.umask(0o177);
  try {
    const httpServer = await new Promise<net.Server>((resolve, reject) => {
      const s = app.listen(socketPath, () => resolve(s as unknown as net.Server));
      s.once('error', reject);
    });
    fs.chmodSync(socketPath, mode);
    return httpServer;
  } finally {
    process.umask(previousUmask);
  }
}
