/**
 * Reconnect delays: exponential backoff with full jitter, so a fleet cut off by one
 * router restart does not come back in lock-step (every client picks a uniformly random
 * delay below a cap that doubles per failed attempt).
 */

export interface BackoffOptions {
  /** Cap of the first retry's delay, in ms (default 500). */
  initialDelayMs?: number;
  /** Largest cap, in ms (default 30 000). */
  maxDelayMs?: number;
}

export class Backoff {
  readonly initialDelayMs: number;
  readonly maxDelayMs: number;
  /** Failed attempts since the last healthy connection. */
  attempt = 0;

  constructor(
    options: BackoffOptions = {},
    private readonly random: () => number = Math.random,
  ) {
    this.initialDelayMs = Math.max(0, options.initialDelayMs ?? 500);
    this.maxDelayMs = Math.max(this.initialDelayMs, options.maxDelayMs ?? 30_000);
  }

  /** The cap for attempt `n` (0-based): `min(max, initial · 2^n)`, in ms. */
  cap(n: number): number {
    return Math.min(this.maxDelayMs, this.initialDelayMs * 2 ** Math.min(n, 52));
  }

  /** The next delay, uniform in [0, cap(attempt)] ms; counts the attempt. */
  next(): number {
    return Math.floor(this.random() * this.cap(this.attempt++));
  }

  /** A delay within the first cap, not counted: for a prompt reconnect (router restart). */
  prompt(): number {
    return Math.floor(this.random() * this.initialDelayMs);
  }

  reset(): void {
    this.attempt = 0;
  }
}
