/**
 * The request gate between the plugin server and the routes: what every stateful request goes
 * through before any driver code runs. It waits (bounded) for the daemon's start-up, notes the
 * request in the in-flight journal while it runs, replays the body Docker's retry lost after a
 * crash (inflight.ts), and gives the request its context: an id of its own, journaled with the
 * body, so that a replay carries the id of the run that was cut off.
 */
import { randomUUID } from 'node:crypto';
import type { Logger } from '../log';
import { PluginError } from '../util/errors';
import { sleepUnref } from '../util/retry';
import type { InflightJournal, LostRequest } from './inflight';
import type { RequestContext, Route } from './server';

/** Start-up state: requests that need the store and the kernel state wait for `done()`. */
export class Startup {
  ready = false;
  closed = false;
  private resolve: () => void = () => undefined;
  readonly whenReady = new Promise<void>((resolve) => (this.resolve = resolve));
  done(): void {
    this.ready = true;
    this.resolve();
  }
  close(): void {
    this.closed = true;
  }
}

/** Answered at once even while starting: they need neither the store nor the kernel. */
const STATELESS_METHODS = new Set([
  'Plugin.Activate',
  'NetworkDriver.GetCapabilities',
  'IpamDriver.GetCapabilities',
  'IpamDriver.GetDefaultAddressSpaces',
]);
/** How long a request waits for a start-up that cannot reach the store before it is refused. */
export const STARTUP_WAIT_MS = 10_000;

export interface GateDeps {
  startup: Startup;
  journal: InflightJournal;
  logger: Logger;
  /** The store's description, for the error a request gets while the store is unreachable. */
  store: () => string;
}

function isEmptyBody(body: unknown): boolean {
  return typeof body === 'object' && body !== null && !Array.isArray(body) && Object.keys(body).length === 0;
}

/** The routes behind the gate: stateless methods as they are, every other one gated. */
export function gateRoutes(routes: Record<string, Route>, deps: GateDeps): Record<string, Route> {
  const gated: Record<string, Route> = {};
  for (const [method, route] of Object.entries(routes)) {
    gated[method] = STATELESS_METHODS.has(method) ? route : gatedRoute(method, route, deps);
  }
  return gated;
}

function gatedRoute(method: string, route: Route, { startup, journal, logger, store }: GateDeps): Route {
  return {
    async run(body: unknown): Promise<unknown> {
      if (!startup.ready) {
        await Promise.race([startup.whenReady, sleepUnref(STARTUP_WAIT_MS)]);
        if (!startup.ready) throw new PluginError(`tsoverlay is still starting: the store (${store()}) is not reachable yet; try again`, 503);
      }
      let effective = body;
      let context: RequestContext | undefined;
      let lost: LostRequest | undefined;
      if (isEmptyBody(body)) {
        lost = journal.lostRequest(method);
        if (lost !== undefined) {
          logger.warn('empty request body after a crash: running the request the previous run was cut off in', { method });
          effective = lost.body;
          context = lost.context;
        } else {
          // Most likely Docker's retry of a request the previous run died before reading.
          logger.warn('empty request body and nothing to replay: the request is lost', { method });
        }
      }
      context ??= { requestId: randomUUID() };
      const done = journal.begin(method, effective, context);
      if (lost !== undefined) journal.replayed(lost);
      try {
        return await route.run(effective, context);
      } finally {
        done();
      }
    },
  };
}
