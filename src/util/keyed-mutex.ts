/** What `KeyedMutex.run` needs to give up waiting: how long is left, and the error to fail with. */
export interface TurnDeadline {
  remaining(): number;
  /** The error the waiter fails with when its turn has not come in time. */
  onTimeout(): Error;
}

/** Whether `turn` came before the deadline passed. */
export async function inTime(turn: Promise<unknown>, deadline: TurnDeadline): Promise<boolean> {
  let timer: NodeJS.Timeout | undefined;
  const came = await Promise.race([
    turn.then(() => true),
    new Promise<false>((resolve) => (timer = setTimeout(() => resolve(false), Math.max(0, deadline.remaining())))),
  ]);
  clearTimeout(timer);
  return came;
}

/**
 * Serialises async work per key (a network, a subnet) inside this process, so that
 * Docker's concurrent calls for one network never interleave their store and kernel steps.
 * Work for different keys runs in parallel.
 */
export class KeyedMutex {
  private readonly tails = new Map<string, Promise<void>>();

  /**
   * Runs `work` once every earlier caller for `key` is done. With a deadline, a caller whose turn
   * has not come in time fails with `deadline.onTimeout()` instead of queueing without bound
   * behind work that is itself stuck (a store that stopped answering); it leaves the queue at
   * once, and the callers behind it keep their places.
   */
  async run<T>(key: string, work: () => Promise<T>, deadline?: TurnDeadline): Promise<T> {
    const previous = this.tails.get(key) ?? Promise.resolve();
    let release!: () => void;
    const current = new Promise<void>((resolve) => (release = resolve));
    const tail = previous.then(() => current);
    this.tails.set(key, tail);
    // Forget the key once the queue has drained (not before: a waiter that gave up must not
    // let a newcomer skip the work still running ahead of it).
    void tail.then(() => {
      if (this.tails.get(key) === tail) this.tails.delete(key);
    });
    if (deadline) {
      if (!(await inTime(previous, deadline))) {
        release();
        throw deadline.onTimeout();
      }
    } else {
      await previous;
    }
    try {
      return await work();
    } finally {
      release();
    }
  }
}
