/**
 * Requests in flight, kept on disk so that Docker's retry after a plugin crash can succeed.
 *
 * Docker's plugin client (moby pkg/plugins, callWithRetry) retries a call whose connection
 * failed for up to 30 s, but builds every attempt from the same request-body reader: when the
 * first attempt reached the plugin and the plugin died before answering, the body was already
 * read, and the retry arrives with an empty body ("NetworkID: Required"), so the operation
 * fails although the restarted plugin is ready to do it.
 *
 * Every stateful request is therefore written to a small file before it runs and removed once
 * it is answered, with the id the request gate gave it (gate.ts): a replay keeps that id. A restarted plugin reads what the previous process left (requests that were
 * cut off) and, when an empty-bodied request for a method arrives within Docker's retry window
 * and exactly one cut-off request of that method exists, runs that one instead: it is the call
 * Docker is retrying. With several candidates the request fails as before (no guessing).
 * Every handler is idempotent, so running a request that had in fact completed is harmless.
 */
import fs from 'node:fs';
import path from 'node:path';
import { z } from 'zod';
import type { Logger } from '../log';
import { errorMessage } from '../util/errors';
import type { RequestContext } from './server';

/** Docker gives up retrying after 30 s; a little slack for the restart itself. */
export const REPLAY_WINDOW_MS = 40_000;

/** What one journal file holds. */
const entrySchema = z.object({ body: z.unknown(), requestId: z.string().optional() });

/** A request the previous run was cut off in. */
export interface LostRequest {
  body: unknown;
  /** Absent for a request that was journaled without one (the gate gives every request its id). */
  context?: RequestContext;
  /** The previous run's journal file of it: removed by `replayed` once journaled again. */
  journalFile?: string;
}

interface CutOff extends LostRequest {
  method: string;
  at: number;
  /** Its journal file, kept until the request is replayed (see recover). */
  file: string;
}

export class InflightJournal {
  private seq = 0;
  private enabled = true;
  private cutOff: CutOff[] = [];

  constructor(
    private readonly dir: string,
    private readonly logger: Logger,
    private readonly now: () => number = Date.now,
  ) {}

  /** Takes over what a previous process left behind (call once, before serving). */
  recover(): number {
    try {
      fs.mkdirSync(this.dir, { recursive: true, mode: 0o700 });
    } catch (err) {
      this.enabled = false;
      this.logger.warn('in-flight request journal disabled', { dir: this.dir, error: errorMessage(err) });
      return 0;
    }
    // A cut-off request's file stays until the request is replayed: a process killed again while
    // it recovers (before Docker's retry came) must leave it to the next one, or the address
    // the first run allocated would never reach Docker. The same request replayed and cut off
    // again can have two files (its replay's and, for a moment, its own): one candidate.
    const seen = new Set<string>();
    for (const name of fs.readdirSync(this.dir).sort()) {
      const file = path.join(this.dir, name);
      const m = /^([A-Za-z]+\.[A-Za-z]+)\.\d+\.\d+\.json$/.exec(name);
      try {
        if (m) {
          const at = fs.statSync(file).mtimeMs;
          const entry = entrySchema.safeParse(JSON.parse(fs.readFileSync(file, 'utf8')));
          if (entry.success && 'body' in entry.data && this.now() - at < REPLAY_WINDOW_MS) {
            const { body, requestId } = entry.data;
            const id = requestId === undefined ? file : `${m[1]}/${requestId}`;
            if (!seen.has(id)) {
              seen.add(id);
              this.cutOff.push({ method: m[1]!, body, ...(requestId !== undefined ? { context: { requestId } } : {}), at, file });
              continue;
            }
          }
        }
      } catch {
        // unreadable or half-written: nothing to replay
      }
      fs.rmSync(file, { force: true });
    }
    if (this.cutOff.length > 0) {
      this.logger.warn('requests cut off by the previous run', { requests: this.cutOff.map((c) => c.method) });
    }
    return this.cutOff.length;
  }

  /** Notes a request before it runs; the returned function forgets it once answered. */
  begin(method: string, body: unknown, context?: RequestContext): () => void {
    if (!this.enabled) return () => undefined;
    const file = path.join(this.dir, `${method}.${process.pid}.${++this.seq}.json`);
    try {
      fs.writeFileSync(file, JSON.stringify({ body, ...(context ? { requestId: context.requestId } : {}) }), { mode: 0o600 });
    } catch (err) {
      this.logger.debug('cannot journal request', { method, error: errorMessage(err) });
      return () => undefined;
    }
    // Synchronously, before the reply is written: a request still journaled at a crash is one
    // whose answer Docker has not received (and will retry).
    return () => fs.rmSync(file, { force: true });
  }

  /**
   * The body Docker lost for an empty-bodied `method` request: the one cut-off request of that
   * method from the last crash, if there is exactly one and it is recent; it is used up.
   */
  lostBody(method: string): unknown {
    const lost = this.lostRequest(method);
    if (lost) this.replayed(lost);
    return lost?.body;
  }

  /**
   * The request from lostRequest is journaled again under this run (begin): its old file can go.
   * A replay cut off in between leaves both, which recover counts as one.
   */
  replayed(lost: LostRequest): void {
    if (lost.journalFile !== undefined) fs.rmSync(lost.journalFile, { force: true });
  }

  /** `lostBody` with the context the request ran with. */
  lostRequest(method: string): LostRequest | undefined {
    const now = this.now();
    for (const c of this.cutOff) if (now - c.at >= REPLAY_WINDOW_MS) fs.rmSync(c.file, { force: true });
    this.cutOff = this.cutOff.filter((c) => now - c.at < REPLAY_WINDOW_MS);
    const candidates = this.cutOff.filter((c) => c.method === method);
    if (candidates.length !== 1) return undefined;
    const lost = candidates[0]!;
    this.cutOff = this.cutOff.filter((c) => c !== lost);
    return { body: lost.body, ...(lost.context ? { context: lost.context } : {}), journalFile: lost.file };
  }
}
