/**
 * A typed event emitter that runs unbundled in browsers and Node alike (Node's
 * `EventEmitter` is not in browsers, and `EventTarget` loses the argument types).
 *
 * A listener that throws does not stop the others nor the client: the exception is
 * reported asynchronously (as an uncaught error), so it is not swallowed either.
 */

/** Event names to listener signatures. */
// eslint-disable-next-line @typescript-eslint/no-explicit-any
export type EventMap<Events> = { [E in keyof Events]: (...args: any[]) => void };

export class Emitter<Events extends EventMap<Events>> {
  private listeners = new Map<keyof Events, Set<Events[keyof Events]>>();

  /** Adds `listener` for `event`; returns a function that removes it. */
  on<E extends keyof Events>(event: E, listener: Events[E]): () => void {
    let set = this.listeners.get(event);
    if (!set) this.listeners.set(event, (set = new Set()));
    set.add(listener);
    return () => this.off(event, listener);
  }

  /** Like {@link on}, removed after its first call. */
  once<E extends keyof Events>(event: E, listener: Events[E]): () => void {
    const off = this.on(event, ((...args: Parameters<Events[E]>) => {
      off();
      listener(...args);
    }) as Events[E]);
    return off;
  }

  off<E extends keyof Events>(event: E, listener: Events[E]): void {
    this.listeners.get(event)?.delete(listener);
  }

  protected emit<E extends keyof Events>(event: E, ...args: Parameters<Events[E]>): void {
    const set = this.listeners.get(event);
    if (!set) return;
    for (const listener of [...set]) {
      try {
        listener(...args);
      } catch (error) {
        queueMicrotask(() => {
          throw error;
        });
      }
    }
  }
}
