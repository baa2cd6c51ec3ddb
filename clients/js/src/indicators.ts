/**
 * Who is typing, recording or talking where: INDICATOR_UPDATE (38) frames, and the
 * `indicators` a snapshot may carry, held until their end.
 *
 * The router follows every start it announced with exactly one end (if the announcing
 * router dies, another announces the end once its lifetime has passed), and a typist's
 * refreshes are silent: so an indicator is held until its end, however long, with no timer
 * of the client's own. When the connection ends, the ends sent meanwhile never arrive:
 * every indicator is dropped then and reported like an end, with `expired: true` (a
 * watcher's next snapshot lists what is still live).
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
}

/** An INDICATOR_UPDATE as received, or an indicator dropped when the connection ended. */
export interface IndicatorEvent {
  groupId: string;
  userId: string;
  type: IndicatorType | string;
  isActive: boolean;
  /** Unix ms of the change (the router's; the client's clock when dropped). */
  timestamp: number;
  /**
   * True when the client dropped it without an end from the router: the connection ended
   * (ends sent meanwhile would be lost; a watcher's next snapshot lists what is still live).
   */
  expired: boolean;
}

/**
 * The router's lifetimes in ms by indicator type (`TYPING_TTL_MS`, `RECORDING_TTL_MS`,
 * `MAX_TALK_MS`): a client refreshes its own indicators within them.
 */
export type IndicatorLifetimes = Record<IndicatorType, number>;

export const DEFAULT_INDICATOR_LIFETIMES: IndicatorLifetimes = { typing: 5_000, recording: 30_000, talking: 30_000 };

const key = (groupId: string, userId: string, type: string) => `${groupId}\u0000${userId}\u0000${type}`;

export class IndicatorSet implements Iterable<Indicator> {
  private live = new Map<string, Indicator>();

  constructor(
    /** Called for each indicator dropped by {@link dropAll}. */
    private readonly onDrop: (event: IndicatorEvent) => void,
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
      this.live.set(k, { groupId, userId, type: map.type, since });
    } else {
      this.live.delete(k);
    }
    return { groupId, userId, type: map.type, isActive, timestamp, expired: false };
  }

  /**
   * Replaces every indicator with a snapshot's `indicators` list
   * (`[{groupId, userId, type, timestamp}]`). Returns the changes as events, so that a UI
   * fed only by events sees what a snapshot says: a start for each indicator not held
   * before (all of them after a reconnect, since {@link dropAll} ended the old ones), an
   * end for each held one the snapshot no longer lists (stamped `now`, `expired: false`:
   * the router's view says it is over).
   */
  replace(entries: unknown[], now = Date.now()): IndicatorEvent[] {
    const before = this.live;
    this.live = new Map();
    const events: IndicatorEvent[] = [];
    for (const entry of entries) {
      const event = this.apply({ ...payloadMap(entry), isActive: true }, now);
      if (event && !before.has(key(event.groupId, event.userId, event.type))) events.push(event);
    }
    for (const [k, i] of before) {
      if (this.live.has(k)) continue;
      events.push({ groupId: i.groupId, userId: i.userId, type: i.type, isActive: false, timestamp: now, expired: false });
    }
    return events;
  }

  /** Drops every indicator, reporting each as an end with `expired: true`. */
  dropAll(): void {
    const now = Date.now();
    const dropped = [...this.live.values()];
    this.live.clear();
    for (const i of dropped) {
      this.onDrop({ groupId: i.groupId, userId: i.userId, type: i.type, isActive: false, timestamp: now, expired: true });
    }
  }
}
