/**
 * Who is typing, recording or talking where: INDICATOR_UPDATE (38) frames, and the
 * `indicators` a snapshot may carry, held until their end.
 *
 * The router follows every start it announced with exactly one end, while it lives; if
 * it dies, no end comes, so each indicator also lapses on its own after its lifetime
 * (typing 5 s, recording 30 s, talking 30 s: the router's `TYPING_TTL_MS`,
 * `RECORDING_TTL_MS` and `MAX_TALK_MS` defaults) counted from its latest start. A lapse
 * is reported like an end, with `expired: true`; so is each indicator dropped when the
 * connection ends (the ends sent meanwhile never arrive).
 */
import { payloadMap, readId } from "./frames.js";

export type IndicatorType = "typing" | "recording" | "talking";

/** A live indicator. */
export interface Indicator {
  groupId: string;
  userId: string;
  type: IndicatorType | string;
  /** Unix ms the router gave for its start. */
  since: number;
  /** Unix ms after which it lapses unless an end or a new start comes first. */
  expiresAt: number;
}

/** An INDICATOR_UPDATE as received, or a lapse. */
export interface IndicatorEvent {
  groupId: string;
  userId: string;
  type: IndicatorType | string;
  isActive: boolean;
  /** Unix ms of the change (the router's; the client's clock for a lapse). */
  timestamp: number;
  /**
   * True when the client dropped it without an end from the router: its lifetime passed,
   * or the connection ended (ends sent meanwhile would be lost; a watcher's next snapshot
   * lists what is still live).
   */
  expired: boolean;
}

/** Lifetimes in ms by indicator type; unknown types get the longest. */
export type IndicatorLifetimes = Record<IndicatorType, number>;

export const DEFAULT_INDICATOR_LIFETIMES: IndicatorLifetimes = { typing: 5_000, recording: 30_000, talking: 30_000 };

const key = (groupId: string, userId: string, type: string) => `${groupId}\u0000${userId}\u0000${type}`;

export class IndicatorSet implements Iterable<Indicator> {
  private live = new Map<string, Indicator>();
  private timer: ReturnType<typeof setTimeout> | undefined;

  constructor(
    private readonly lifetimes: IndicatorLifetimes,
    /** Called for each indicator the set drops on its own (lapsed, or dropped by {@link dropAll}). */
    private readonly onLapse: (event: IndicatorEvent) => void,
  ) {}

  get size(): number {
    return this.live.size;
  }

  [Symbol.iterator](): IterableIterator<Indicator> {
    return this.live.values();
  }

  /** The live indicators of a group (all groups when omitted), optionally of one type. */
  list(groupId?: string, type?: IndicatorType): Indicator[] {
    return [...this.live.values()].filter(
      (i) => (groupId === undefined || i.groupId === groupId) && (type === undefined || i.type === type),
    );
  }

  /** Whether `userId` is typing/recording/talking in `groupId`. */
  has(groupId: string, userId: string, type: IndicatorType): boolean {
    return this.live.has(key(groupId, userId, type));
  }

  private lifetime(type: string): number {
    return (this.lifetimes as Record<string, number>)[type] ?? Math.max(...Object.values(this.lifetimes));
  }

  /** Applies an INDICATOR_UPDATE payload; returns it as an event, or null if malformed. */
  apply(payload: unknown, now = Date.now()): IndicatorEvent | null {
    const map = payloadMap(payload);
    const groupId = readId(map.groupId);
    const userId = readId(map.userId);
    if (groupId === null || userId === null || typeof map.type !== "string") return null;
    const timestamp = typeof map.timestamp === "number" ? map.timestamp : now;
    const isActive = map.isActive !== false;
    const k = key(groupId, userId, map.type);
    if (isActive) {
      const since = this.live.get(k)?.since ?? timestamp;
      this.live.set(k, { groupId, userId, type: map.type, since, expiresAt: now + this.lifetime(map.type) });
    } else {
      this.live.delete(k);
    }
    this.schedule(now);
    return { groupId, userId, type: map.type, isActive, timestamp, expired: false };
  }

  /**
   * Replaces every indicator with a snapshot's `indicators` list
   * (`[{groupId, userId, type, timestamp}]`): each is live now and lapses a lifetime from now.
   */
  replace(entries: unknown[], now = Date.now()): void {
    this.live.clear();
    for (const entry of entries) this.apply({ ...payloadMap(entry), isActive: true }, now);
    this.schedule(now);
  }

  /** Drops every indicator, reporting each as an end with `expired: true`. */
  dropAll(): void {
    const now = Date.now();
    const dropped = [...this.live.values()];
    this.live.clear();
    this.schedule(now);
    for (const i of dropped) this.onLapse(this.lapsed(i, now));
  }

  private lapsed(i: Indicator, now: number): IndicatorEvent {
    return { groupId: i.groupId, userId: i.userId, type: i.type, isActive: false, timestamp: now, expired: true };
  }

  private schedule(now: number): void {
    clearTimeout(this.timer);
    this.timer = undefined;
    let next = Infinity;
    for (const i of this.live.values()) next = Math.min(next, i.expiresAt);
    if (next === Infinity) return;
    this.timer = setTimeout(() => this.lapse(), Math.max(0, next - now));
    // Housekeeping only: in Node it does not keep a process alive on its own.
    (this.timer as { unref?: () => void }).unref?.();
  }

  private lapse(): void {
    const now = Date.now();
    for (const [k, i] of this.live) {
      if (i.expiresAt > now) continue;
      this.live.delete(k);
      this.onLapse(this.lapsed(i, now));
    }
    this.schedule(now);
  }
}
