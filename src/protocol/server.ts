import express, { type NextFunction, type Request, type Response } from 'express';
import fs from 'node:fs';
import http from 'node:http';
import net from 'node:net';
import path from 'node:path';
import type { z } from 'zod';
import type { Logger } from '../log';
import { StoreUnavailableError } from '../store/store';
import { PluginError, errorMessage } from '../util/errors';

export const PLUGIN_CONTENT_TYPE = 'application/vnd.docker.plugins.v1+json';
export const MAX_BODY_BYTES = 1024 * 1024;

/**
 * Limits that keep a hostile or broken client from holding the daemon's memory or sockets.
 * Docker sends each request whole at once (a few KB, with a Content-Length), so none of them
 * is near what it does.
 */
export const SERVER_LIMITS = {
  /** Open connections at once; more are closed as they arrive (Docker retries for 30 s). */
  maxConnections: 512,
  /** A request's headers must have arrived this long after its first byte… */
  headersTimeoutMs: 10_000,
  /** …and the whole request, body included; else 408 and the connection is closed. */
  requestTimeoutMs: 10_000,
  /** How often those two deadlines are checked (node's default is 30 s). */
  checkIntervalMs: 1_000,
  /** An idle kept-alive connection is closed after this. */
  keepAliveTimeoutMs: 5_000,
  /** Bodies up to this size are always read (the connection cap bounds their total)… */
  smallBodyBytes: 64 * 1024,
  /** …larger ones (or of unknown size) share this many bytes; beyond it: 503 and close. */
  largeBodyBudgetBytes: 8 * 1024 * 1024,
} as const;

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
  app.use(largeBodyBudget());
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

/**
 * Large bodies (over `smallBodyBytes`, or chunked) share one budget of bytes that may be
 * buffered at once: a request that would pass it is answered 503 at once and its connection
 * closed, before a byte of its body is read. Small bodies, which is what Docker sends, never
 * wait on it, so slow large uploads cannot starve them.
 */
function largeBodyBudget(): (req: Request, res: Response, next: NextFunction) => void {
  let reserved = 0;
  return (req, res, next) => {
    const length = req.headers['content-length'];
    const parsed = length === undefined ? NaN : Number(length);
    const declared = Number.isFinite(parsed) && parsed >= 0 ? parsed : undefined;
    // A compressed body may inflate up to the limit whatever its length on the wire.
    const encoded = (req.headers['content-encoding'] ?? 'identity').toLowerCase() !== 'identity';
    if (!encoded && declared !== undefined && declared <= SERVER_LIMITS.smallBodyBytes) return next();
    // Over the limit: the body parser answers 413 from the header alone, reading nothing.
    if (!encoded && declared !== undefined && declared > MAX_BODY_BYTES) return next();
    // Unknown (chunked), larger or compressed: reserve what the body parser may end up holding.
    const size = encoded ? MAX_BODY_BYTES : Math.min(declared ?? MAX_BODY_BYTES, MAX_BODY_BYTES);
    if (reserved + size > SERVER_LIMITS.largeBodyBudgetBytes) {
      res.set('Connection', 'close');
      reply(res, 503, { Err: 'too many large request bodies in flight; try again' });
      return;
    }
    reserved += size;
    res.once('close', () => (reserved -= size));
    next();
  };
}

/** Applies SERVER_LIMITS to an HTTP server (the plugin socket's, or the metrics listener's). */
export function limitServer<S extends http.Server>(server: S): S {
  server.maxConnections = SERVER_LIMITS.maxConnections;
  server.headersTimeout = SERVER_LIMITS.headersTimeoutMs;
  server.requestTimeout = SERVER_LIMITS.requestTimeoutMs;
  server.keepAliveTimeout = SERVER_LIMITS.keepAliveTimeoutMs;
  // node's header deadline starts with a request's first byte: a connection that never sends
  // one would hold its slot for ever. (A socket inactivity timeout would also cut requests
  // that legitimately wait on the store.)
  const silent = new WeakMap<object, NodeJS.Timeout>();
  server.on('connection', (socket: net.Socket) => {
    const timer = setTimeout(() => socket.destroy(), SERVER_LIMITS.headersTimeoutMs);
    timer.unref();
    silent.set(socket, timer);
    socket.once('close', () => clearTimeout(timer));
  });
  server.on('request', (req: http.IncomingMessage) => {
    const timer = silent.get(req.socket);
    if (timer !== undefined) {
      clearTimeout(timer);
      silent.delete(req.socket);
    }
  });
  return server;
}

/** An HTTP server for `app` with SERVER_LIMITS (the deadline check interval is set at creation only). */
export function createLimitedServer(app: http.RequestListener): http.Server {
  return limitServer(http.createServer({ connectionsCheckingInterval: SERVER_LIMITS.checkIntervalMs }, app));
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
      const s = createLimitedServer(app);
      s.once('error', reject);
      s.listen(socketPath, () => {
        s.off('error', reject);
        resolve(s);
      });
    });
    if (group !== undefined) fs.chownSync(socketPath, process.getuid?.() ?? 0, group);
    fs.chmodSync(socketPath, group !== undefined ? (mode | 0o060) & 0o660 : mode);
    return httpServer;
  } finally {
    process.umask(previousUmask);
  }
}
