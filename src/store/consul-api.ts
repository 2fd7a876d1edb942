/**
 * The part of the `consul` client tsoverlay uses, typed precisely (its .d.ts is incomplete),
 * the wire shapes it answers with, and how its errors map onto the store's.
 */

import { EventEmitter } from 'node:events';
import { z } from 'zod';

import { errorMessage } from './util';

export interface ResponseContext extends EventEmitter {
  includeResponse: true;
}

export interface CallOptions {
  timeout?: number;
  ctx?: ResponseContext;
  index?: string;
  wait?: string;
  /** `?consistent`: answered only by a leader that has applied its whole log (see consul.ts). */
  consistent?: boolean;
}

export type TxnVerb =
  | 'set'
  | 'cas'
  | 'lock'
  | 'unlock'
  | 'delete'
  | 'delete-cas'
  | 'delete-tree'
  | 'check-index'
  | 'check-not-exists';

export interface TxnOp {
  KV: { Verb: TxnVerb; Key: string; Value?: string; Index?: number; Session?: string };
}

export interface ConsulApi {
  kv: {
    get(options: { key: string; recurse?: boolean } & CallOptions): Promise<unknown>;
  };
  transaction: {
    create(operations: TxnOp[], options: CallOptions): Promise<unknown>;
  };
  session: {
    create(
      options: { name: string; ttl: string; behavior: 'delete'; lockdelay: string; checks: string[] } & CallOptions,
    ): Promise<unknown>;
    destroy(options: { id: string } & CallOptions): Promise<unknown>;
    renew(options: { id: string } & CallOptions): Promise<unknown>;
  };
  destroy(): void;
}

export const kvItemSchema = z.object({
  Key: z.string(),
  Value: z.string().nullable().optional(),
  ModifyIndex: z.number(),
});
export const kvListSchema = z.array(kvItemSchema);
export const kvHolderSchema = z.array(z.object({ ModifyIndex: z.number(), Session: z.string().optional() }));
export const txnResultSchema = z.object({
  Results: z
    .array(z.object({ KV: z.object({ Key: z.string(), ModifyIndex: z.number() }).optional() }).passthrough())
    .nullable()
    .optional(),
});
export const txnErrorBodySchema = z.object({
  Errors: z.array(z.object({ OpIndex: z.number(), What: z.string() })).nullable().optional(),
});
export const sessionCreateSchema = z.object({ ID: z.string().min(1) });
const errorShapeSchema = z
  .object({
    code: z.string().optional(),
    isTimeout: z.boolean().optional(),
    isAbort: z.boolean().optional(),
    response: z.object({ statusCode: z.number().optional(), body: z.unknown().optional() }).passthrough().optional(),
  })
  .passthrough();

export type Failure =
  | { kind: 'unavailable'; message: string }
  | { kind: 'conflict'; message: string; errors: Array<{ OpIndex: number; What: string }> }
  | { kind: 'notfound'; message: string }
  | { kind: 'forbidden'; message: string }
  | { kind: 'other'; message: string };

const UNAVAILABLE_CODES = new Set([
  'ECONNREFUSED',
  'ECONNRESET',
  'EHOSTUNREACH',
  'ENETUNREACH',
  'ETIMEDOUT',
  'EAI_AGAIN',
  'ENOTFOUND',
  'EPIPE',
  'ECONNABORTED',
]);

export function classify(err: unknown): Failure {
  const message = errorMessage(err);
  const shape = errorShapeSchema.safeParse(err);
  if (!shape.success) return { kind: 'other', message };
  const { code, isTimeout, response } = shape.data;
  const status = response?.statusCode;
  if (isTimeout || (code && UNAVAILABLE_CODES.has(code))) return { kind: 'unavailable', message };
  if (status !== undefined) {
    if (status >= 500 || status === 429) return { kind: 'unavailable', message };
    if (status === 409) {
      const body = txnErrorBodySchema.safeParse(parseMaybeJson(response?.body));
      const errors = (body.success && body.data.Errors) || [];
      // A transaction refused by ACLs is a 409 too, its ops failing with "Permission denied":
      // not a failed condition (a create would read as "key exists"), an access error.
      const denied = errors.find((e) => /permission denied|acl not found/i.test(e.What));
      if (denied) return { kind: 'forbidden', message: denied.What };
      return { kind: 'conflict', message, errors };
    }
    if (status === 404) return { kind: 'notfound', message };
    if (status === 401 || status === 403) return { kind: 'forbidden', message };
  }
  return { kind: 'other', message };
}

/** The connection was refused or had no route: the request never reached Consul. */
export function isRefused(err: unknown): boolean {
  const code = errorShapeSchema.safeParse(err).data?.code;
  return code === 'ECONNREFUSED' || code === 'EHOSTUNREACH' || code === 'ENETUNREACH';
}

/** Consul answered (any HTTP status): the server is alive, whatever it said. */
export function answered(err: unknown): boolean {
  return errorShapeSchema.safeParse(err).data?.response?.statusCode !== undefined;
}

/**
 * The server answered 500 because it has no leader to forward the call to ("No cluster
 * leader", or it cannot connect to the leader that just died): the call was applied nowhere.
 */
export function isNotForwarded(err: unknown): boolean {
  const response = errorShapeSchema.safeParse(err).data?.response;
  if (response?.statusCode !== 500) return false;
  const body = response.body;
  const text = Buffer.isBuffer(body) ? body.toString('utf8') : typeof body === 'string' ? body : '';
  return /no cluster leader|rpc error getting client/i.test(text);
}

/** A response body papi did not decode (wrong content type) is still JSON text. */
function parseMaybeJson(body: unknown): unknown {
  const text = Buffer.isBuffer(body) ? body.toString('utf8') : typeof body === 'string' ? body : undefined;
  if (text === undefined) return body;
  try {
    return JSON.parse(text) as unknown;
  } catch {
    return body;
  }
}

export function b64(value: string): string {
  return Buffer.from(value, 'utf8').toString('base64');
}

export function makeContext(): ResponseContext {
  return Object.assign(new EventEmitter(), { includeResponse: true as const });
}

/** `[res, body?]` from a call made with an includeResponse context. */
export function splitResponse(result: unknown): { index: number | undefined; body: unknown } {
  if (!Array.isArray(result) || result.length === 0) return { index: undefined, body: undefined };
  const head = z
    .object({ headers: z.record(z.union([z.string(), z.array(z.string())]).optional()) })
    .passthrough()
    .safeParse(result[0]);
  const raw = head.success ? head.data.headers['x-consul-index'] : undefined;
  const text = Array.isArray(raw) ? raw[0] : raw;
  const index = text !== undefined && /^\d+$/.test(text) ? Number(text) : undefined;
  return { index, body: result[1] };
}

export class ConsulNotFoundError extends Error {
  override name = 'ConsulNotFoundError';
}

export class ConsulConflictError extends Error {
  override name = 'ConsulConflictError';
  constructor(
    message: string,
    readonly errors: Array<{ OpIndex: number; What: string }>,
  ) {
    super(message);
  }
}
