import { inTime, type TurnDeadline } from './keyed-mutex';

type Mode = 'shared' | 'exclusive';

interface Waiter {
  mode: Mode;
  granted: boolean;
  grant(): void;
}

interface KeyState {
  readers: number;
  writer: boolean;
  queue: Waiter[];
}

/**
 * A readers-writer lock per key (a network): requests on different endpoints of one network run
 * side by side (shared), while a request on the network itself (create, delete, the recovery of
 * a lost deletion) runs alone (exclusive). Turns are first come, first served: a waiting
 * exclusive caller holds back shared callers that arrive after it, so a stream of endpoint
 * requests never starves a network request.
 */
export class KeyedRwLock {
  private readonly keys = new Map<string, KeyState>();

  shared<T>(key: string, work: () => Promise<T>, deadline?: TurnDeadline): Promise<T> {
    return this.run(key, 'shared', work, deadline);
  }

  exclusive<T>(key: string, work: () => Promise<T>, deadline?: TurnDeadline): Promise<T> {
    return this.run(key, 'exclusive', work, deadline);
  }

  /** Whether anyone holds or waits for `key` (tests, and forgetting idle keys). */
  busy(key: string): boolean {
    return this.keys.has(key);
  }

  private async run<T>(key: string, mode: Mode, work: () => Promise<T>, deadline?: TurnDeadline): Promise<T> {
    let state = this.keys.get(key);
    if (!state) {
      state = { readers: 0, writer: false, queue: [] };
      this.keys.set(key, state);
    }
    const s = state;
    let granted!: () => void;
    const turn = new Promise<void>((resolve) => (granted = resolve));
    const waiter: Waiter = { mode, granted: false, grant: granted };
    s.queue.push(waiter);
    this.admit(key, s);
    if (!waiter.granted) {
      if (deadline) {
        if (!(await inTime(turn, deadline)) && !waiter.granted) {
          // Leaves the queue at once; an exclusive waiter that gave up may have been what held
          // the shared callers behind it back.
          s.queue.splice(s.queue.indexOf(waiter), 1);
          this.admit(key, s);
          throw deadline.onTimeout();
        }
      } else {
        await turn;
      }
    }
    try {
      return await work();
    } finally {
      if (mode === 'exclusive') s.writer = false;
      else s.readers--;
      this.admit(key, s);
    }
  }

  /** Grants turns from the head of the queue while they are compatible with what runs. */
  private admit(key: string, s: KeyState): void {
    while (s.queue.length > 0) {
      const next = s.queue[0]!;
      if (next.mode === 'exclusive') {
        if (s.writer || s.readers > 0) break;
        s.writer = true;
      } else {
        if (s.writer) break;
        s.readers++;
      }
      s.queue.shift();
      next.granted = true;
      next.grant();
    }
    if (!s.writer && s.readers === 0 && s.queue.length === 0 && this.keys.get(key) === s) this.keys.delete(key);
  }
}
