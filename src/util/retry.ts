/** Waiting and retrying, shared by the store backends, the driver and the daemon. */

export interface SleepOptions {
  /** Resolve early when this aborts (never rejects). */
  signal?: AbortSignal;
  /** Do not keep the process alive for this timer alone (background retries, bounded waits). */
  unref?: boolean;
}

/** Resolves after `ms`, or early when `signal` aborts (never rejects). */
export function sleep(ms: number, signalOrOptions?: AbortSignal | SleepOptions): Promise<void> {
  const options: SleepOptions = signalOrOptions instanceof AbortSignal ? { signal: signalOrOptions } : (signalOrOptions ?? {});
  const { signal } = options;
  return new Promise<void>((resolve) => {
    if (signal?.aborted) {
      resolve();
      return;
    }
    const onAbort = (): void => {
      clearTimeout(timer);
      resolve();
    };
    const timer = setTimeout(() => {
      signal?.removeEventListener('abort', onAbort);
      resolve();
    }, ms);
    if (options.unref) timer.unref();
    signal?.addEventListener('abort', onAbort, { once: true });
  });
}

/** `sleep` that does not keep the process alive. */
export function sleepUnref(ms: number): Promise<void> {
  return sleep(ms, { unref: true });
}

/** Exponential backoff with jitter: 100 ms, 200 ms, … capped at `maxMs`. */
export class Backoff {
  private attempt = 0;
  constructor(
    private readonly baseMs = 100,
    private readonly maxMs = 5000,
  ) {}
  next(): number {
    const ms = Math.min(this.maxMs, this.baseMs * 2 ** this.attempt);
    this.attempt = Math.min(this.attempt + 1, 30);
    return Math.round(ms / 2 + Math.random() * (ms / 2));
  }
  reset(): void {
    this.attempt = 0;
  }
}
