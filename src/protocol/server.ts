import express, { type NextFunction, type Request, type Response } from 'express';
import fs from 'node:fs';
import net from 'node:net';
import path from 'node:path';
import type { z } from 'zod';
import type { Logger } from '../log';
import { StoreUnavailableError } from '../store/store';
import { PluginError, errorMessage } from '../util/errors';

export const PLUGIN_CONTENT_TYPE = 'application/vnd.docker.plugins.v1+json';
export const MAX_BODY_BYTES = 1024 * 1024;

/**
 * What the request gate (gate.ts) gives a stateful request beside its body: an id of its own,
 * journaled with the body, so that a request replayed after a crash carries the same id.
 */
export interface RequestContext {
  requestId: string;
}

/** A plugin endpoint: its request schema and what to do with a valid request. */
export interface Route {
  run(body: unknown, context?: RequestContext): Promise<unknown>;
}

export function route<S extends z.ZodTypeAny>(
  schema: S,
  handle: (request: z.output<S>, context?: RequestContext) => Promise<unknown>,
): Route {
  return {
    async run(body, context) {
      const parsed = schema.safeParse(body);
      if (!parsed.success) {
        const issue = parsed.error.issues[0];
        const where = issue && issue.path.length > 0 ? `${issue.path.join('.')}: ` : '';
        throw new PluginError(`invalid request: ${where}${issue?.message ?? 'malformed'}`);
      }
      return handle(parsed.data as z.output<S>, context);
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

/** A plain GET endpoint served beside the plugin methods (`/metrics`, `/healthz`). */
export type GetHandler = () => Promise<{ status?: number; contentType: string; body: string }>;

/** Optional extras of the plugin server; the plugin protocol itself does not depend on them. */
export interface AppOptions {
  /** Called once for every plugin method answered (status 200 or the error's), e.g. for metrics. */
  onRequest?(method: string, status: number, seconds: number): void;
  /** GET endpoints by path. */
  get?: Record<string, GetHandler>;
}

/** Error texts may quote the request: bounded, so that a hostile request cannot flood logs or replies. */
export const MAX_ERROR_CHARS = 1024;

function clip(message: string): string {
  return message.length <= MAX_ERROR_CHARS ? message : `${message.slice(0, MAX_ERROR_CHARS)}… (${message.length} characters)`;
}

function reply(res: Response, status: number, body: unknown): void {
  res.status(status).type(PLUGIN_CONTENT_TYPE).send(JSON.stringify(body));
}

export function createApp(routes: Record<string, Route>, logger: Logger, options: AppOptions = {}): express.Express {
  const app = express();
  app.disable('x-powered-by');
  // Plugin answers are never cached: no SHA-1 of every body for an ETag.
  app.set('etag', false);
  for (const [getPath, handler] of Object.entries(options.get ?? {})) {
    app.get(getPath, (_req: Request, res: Response) => {
      handler().then(
        (r) => res.status(r.status ?? 200).type(r.contentType).send(r.body),
        (err: unknown) => res.status(500).type('text/plain').send(`${errorMessage(err)}\n`),
      );
    });
  }
  app.use(express.text({ type: () => true, limit: MAX_BODY_BYTES }));
  app.post('/:method', (req: Request, res: Response, next: NextFunction) => {
    const method = String(req.params.method);
    const target = Object.hasOwn(routes, method) ? routes[method] : undefined;
    if (!target) return next();
    const started = process.hrtime.bigint();
    let answered = 200;
    Promise.resolve()
      .then(() => target.run(parseBody(req.body)))
      .then((result) => reply(res, 200, result ?? {}))
      .catch((err: unknown) => {
        // The store being down is worth its own status: the request itself was fine, try again later.
        const status = err instanceof PluginError ? err.status : err instanceof StoreUnavailableError ? 503 : 500;
        answered = status;
        const level = status >= 500 ? 'error' : 'warn';
        const message = clip(errorMessage(err));
        logger.log(level, 'request failed', { method, status, error: message });
        reply(res, status, { Err: message });
      })
      .finally(() => {
        const ms = Number(process.hrtime.bigint() - started) / 1e6;
        logger.debug('request', { method, ms });
        options.onRequest?.(method, answered, ms / 1000);
      });
  });
  app.use((req: Request, res: Response) => reply(res, 404, { Err: clip(`unknown plugin method ${req.method} ${req.path}`) }));
  // Body-parser failures (too large, bad encoding) arrive here with their own status.
  app.use((err: unknown, _req: Request, res: Response, _next: NextFunction) => {
    const status = typeof err === 'object' && err !== null && 'status' in err && typeof err.status === 'number' ? err.status : 400;
    const message = status === 413 ? `request body larger than ${MAX_BODY_BYTES} bytes` : clip(`bad request: ${errorMessage(err)}`);
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
 * With `group` (a gid) it is given to that group with mode 0660 (`--socket-group`).
 */
export async function listenUnix(app: express.Express, socketPath: string, mode = 0o600, group?: number): Promise<net.Server> {
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
    if (group !== undefined) fs.chownSync(socketPath, process.getuid?.() ?? 0, group);
    fs.chmodSync(socketPath, group !== undefined ? (mode | 0o060) & 0o660 : mode);
    return httpServer;
  } finally {
    process.umask(previousUmask);
  }
}
