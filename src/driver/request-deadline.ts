/**
 * One deadline per Docker request of the network driver: its wait for the network's lock and
 * every store call it makes count against the same time (--request-timeout), so that Docker gets
 * an answer before it gives up on the plugin.
 */
import { AsyncLocalStorage } from 'node:async_hooks';
import type { Store } from '../store/store';
import { Deadline, storeWithDeadline } from '../store/util';
import { PluginError } from '../util/errors';
import { KeyedMutex, type TurnDeadline } from '../util/keyed-mutex';
import type { KeyedRwLock } from '../util/keyed-rwlock';

/**
 * Docker's plugin client gives up on a request after 30 s: the plugin answers before that. The
 * time is not the store call's (--store-timeout bounds each call): under load a request also
 * waits behind others on its network, and a netlink call that waits for the kernel's rtnl lock
 * holds up this whole process. Failing at one store timeout turned such waits into failed
 * `docker run`s that Docker would still have waited for.
 */
export const DEFAULT_REQUEST_TIMEOUT_MS = 25_000;

/** The request a store call is made for, while Docker still waits for its answer. */
interface RequestTurn {
  deadline: Deadline;
  open: boolean;
}

/**
 * The driver's requests reach the store through NetworkRecords, LocalOverlays and Recovery as
 * well as directly; the request's deadline travels with its async context rather than through
 * every signature. Work a request leaves behind (timers, peer programming) inherits that
 * context, so the deadline binds only while the request is open.
 */
const currentRequest = new AsyncLocalStorage<RequestTurn>();

/** `store` with every call made for an open request raced against that request's deadline. */
export function requestBoundStore(store: Store): Store {
  const now = (): Store => {
    const turn = currentRequest.getStore();
    return turn?.open ? storeWithDeadline(store, turn.deadline) : store;
  };
  return {
    get description() {
      return store.description;
    },
    get distributed() {
      return store.distributed;
    },
    get: (key) => now().get(key),
    list: (prefix) => now().list(prefix),
    put: (key, value, options) => now().put(key, value, options),
    create: (key, value, options) => now().create(key, value, options),
    compareAndSet: (key, value, revision, options) => now().compareAndSet(key, value, revision, options),
    delete: (key) => now().delete(key),
    compareAndDelete: (key, revision) => now().compareAndDelete(key, revision),
    deletePrefix: (prefix) => now().deletePrefix(prefix),
    watch: (prefix, listener) => store.watch(prefix, listener),
    grantLease: (ttl) => now().grantLease(ttl),
    close: () => store.close(),
  };
}

export class RequestDeadlines {
  /** One request at a time per endpoint (Docker's retry of a request still running waits for it). */
  private readonly endpointLocks = new KeyedMutex();

  constructor(
    /** The per-network locks every driver request takes: shared for endpoints, exclusive for networks. */
    private readonly locks: KeyedRwLock,
    /** One request's time in all. */
    readonly timeoutMs: number,
    /** Named in the timeout's message: what the requests were waiting for. */
    private readonly store: Store,
  ) {}

  /** Runs one of Docker's requests under one deadline (see requestBoundStore); nested calls share it. */
  async run<T>(work: () => Promise<T>): Promise<T> {
    if (currentRequest.getStore()?.open) return work();
    const turn: RequestTurn = { deadline: new Deadline(this.timeoutMs), open: true };
    try {
      return await currentRequest.run(turn, work);
    } finally {
      turn.open = false;
    }
  }

  /** A request on the network itself: it runs alone on the network, and its wait counts against its deadline. */
  locked<T>(method: string, networkId: string, work: () => Promise<T>): Promise<T> {
    return this.run(() => this.locks.exclusive(networkId, work, this.turnDeadline(method, `network ${networkId.slice(0, 12)}`)));
  }

  /**
   * A request on one endpoint: requests on other endpoints of the network run beside it (their
   * store round trips overlap; the kernel steps are serialised per overlay by LocalOverlays),
   * a network request does not.
   */
  endpointLocked<T>(method: string, networkId: string, endpointId: string, work: () => Promise<T>): Promise<T> {
    return this.run(() =>
      this.locks.shared(
        networkId,
        () => this.endpointLocks.run(endpointId, work, this.turnDeadline(method, `endpoint ${endpointId.slice(0, 12)}`)),
        this.turnDeadline(method, `network ${networkId.slice(0, 12)}`),
      ),
    );
  }

  private turnDeadline(method: string, what: string): TurnDeadline | undefined {
    const turn = currentRequest.getStore();
    return (
      turn && {
        remaining: () => turn.deadline.remaining(),
        onTimeout: () =>
          new PluginError(
            `${method} timed out waiting for its turn on ${what} after ${turn.deadline.ms} ms: ` +
              `earlier requests are still waiting for the store (${this.store.description}); try again`,
            503,
          ),
      }
    );
  }
}
