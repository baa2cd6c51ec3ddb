/**
 * A watcher's view of presence: PRESENCE_SNAPSHOT (32) and PRESENCE_UPDATE (31) folded
 * into one map, as docs/PROTOCOL.md says a dashboard should:
 *
 * - an update whose `version` is not above the last one applied for its user is stale
 *   and ignored (updates cross several routers and may arrive out of order);
 * - an update whose sequence number is at or below the snapshot's is already in it;
 * - a second snapshot replaces the whole view (the router rebuilt its own). Users it does
 *   not list are offline: those already known offline stay, with their last seen; those
 *   that were shown online are dropped (their last seen is not known);
 * - the view's `position` and `view` (from the snapshot, each update that carries one, and
 *   RESUMED) are kept: reconnecting with them, the router sends only what changed since
 *   (the updates, then RESUMED) instead of a snapshot.
 */
import { payloadMap, readId } from "./frames.js";

/** What others see of a user (docs/PROTOCOL.md, "Statuses"). */
export type Status = "online" | "away" | "dnd" | "offline";

/** Why a user's presence changed (`cause` of PRESENCE_UPDATE). */
export type Cause = "connect" | "disconnect" | "expired" | "status" | "idle" | "active" | "groups";

/** What a user is doing, beside its status (`driving`, `on_call`). */
export interface Activity {
  type: string;
  name?: string;
  /** Unix ms when this type and name were set. */
  startedAt: number;
}

/** One user's presence as the map holds it. */
export interface UserPresence {
  userId: string;
  status: Status;
  /** Unix ms of the last connect/heartbeat (shown online) or of going offline; null if unknown. */
  lastSeen: number | null;
  deviceId: string | null;
  /** Grows with every change of this user, cluster-wide (Unix ms or more). */
  version: number;
  groups: string[];
  statusText?: string;
  /** Unix ms of the user's last activity; updates carry it, snapshots do not. */
  lastActivity?: number;
  /** What the user is doing; only while shown online, away or dnd. */
  activity?: Activity;
}

/** A PRESENCE_UPDATE as received. */
export interface PresenceUpdate extends UserPresence {
  cause: Cause | string;
  /** Unix ms when the router decided the change. */
  timestamp: number;
  /** The router's event sequence number (index 4). */
  seq: number | null;
}

/** Counts per group over the map, for headers such as "12 online · 3 away · 1 dnd". */
export interface GroupCounts {
  online: number;
  away: number;
  dnd: number;
  offline: number;
}

/** A snapshot's `groupCounts` entry: the group's users shown online, away and dnd. */
export type SnapshotGroupCounts = Omit<GroupCounts, "offline">;

const STATUSES: readonly string[] = ["online", "away", "dnd", "offline"];

function num(value: unknown): number | null {
  return typeof value === "number" ? value : typeof value === "bigint" ? Number(value) : null;
}

/** Reads a user entry of a snapshot or an update; null when it names no user. */
export function readUser(value: unknown): UserPresence | null {
  const map = payloadMap(value);
  const userId = readId(map.userId);
  if (userId === null) return null;
  const status = typeof map.status === "string" && STATUSES.includes(map.status) ? (map.status as Status) : "offline";
  const user: UserPresence = {
    userId,
    status,
    lastSeen: num(map.lastSeen),
    deviceId: readId(map.deviceId),
    version: num(map.version) ?? 0,
    groups: Array.isArray(map.groups) ? map.groups.map(String) : [],
  };
  if (typeof map.statusText === "string") user.statusText = map.statusText;
  const lastActivity = num(map.lastActivity);
  if (lastActivity !== null) user.lastActivity = lastActivity;
  const activity = map.activity === undefined || map.activity === null ? null : payloadMap(map.activity);
  const startedAt = activity === null ? null : num(activity.startedAt);
  if (activity !== null && typeof activity.type === "string" && startedAt !== null) {
    user.activity = { type: activity.type, startedAt };
    if (typeof activity.name === "string") user.activity.name = activity.name;
  }
  return user;
}

/** Where a view stands, to resume from: the query parameters of a reconnect. */
export interface ResumePoint {
  /** The view's position in the router's change log (opaque). */
  position: string;
  /** The name of the scope the view was taken with (opaque). */
  view: string;
}

export class PresenceMap implements Iterable<UserPresence> {
  private users = new Map<string, UserPresence>();
  /** Sequence number of the last snapshot; updates at or below it are already in it. */
  private snapshotSeq: number | null = null;
  private position: string | null = null;
  private view: string | null = null;
  /** Updates ignored because their version was not above the one held (for diagnostics). */
  staleUpdates = 0;

  get size(): number {
    return this.users.size;
  }

  get(userId: string | number): UserPresence | undefined {
    return this.users.get(String(userId));
  }

  has(userId: string | number): boolean {
    return this.users.has(String(userId));
  }

  values(): IterableIterator<UserPresence> {
    return this.users.values();
  }

  [Symbol.iterator](): IterableIterator<UserPresence> {
    return this.users.values();
  }

  /** Users shown online, away or dnd. */
  *online(): IterableIterator<UserPresence> {
    for (const user of this.users.values()) if (user.status !== "offline") yield user;
  }

  /** Counts by status per group, over the users the map holds (offline ones included). */
  countsByGroup(): Map<string, GroupCounts> {
    const counts = new Map<string, GroupCounts>();
    for (const user of this.users.values()) {
      for (const group of user.groups) {
        let c = counts.get(group);
        if (!c) counts.set(group, (c = { online: 0, away: 0, dnd: 0, offline: 0 }));
        c[user.status]++;
      }
    }
    return counts;
  }

  /**
   * Replaces the view with a PRESENCE_SNAPSHOT payload (`{users, count, timestamp}`) taken
   * at sequence number `seq`.
   */
  applySnapshot(payload: unknown, seq: number | null): void {
    const next = new Map<string, UserPresence>();
    for (const [id, user] of this.users) if (user.status === "offline") next.set(id, user);
    const listed = payloadMap(payload).users;
    for (const entry of Array.isArray(listed) ? listed : []) {
      const user = readUser(entry);
      if (user) next.set(user.userId, user);
    }
    this.users = next;
    this.snapshotSeq = seq;
    this.mark(payload, true);
  }

  /**
   * A new connection: its sequence numbers start over (they are the router's own), so no
   * update is taken as already held until its snapshot or RESUMED says so.
   */
  reconnected(): void {
    this.snapshotSeq = null;
  }

  /**
   * RESUMED (`{position, view, changes, indicators}`) at sequence number `seq`: the updates
   * before it brought the view up to date; later changes come with higher numbers.
   */
  applyResumed(payload: unknown, seq: number | null): void {
    this.snapshotSeq = seq;
    this.mark(payload, true);
  }

  /** Where the view stands, once the router told it (null: resuming is not possible). */
  resumePoint(): ResumePoint | null {
    return this.position !== null && this.view !== null ? { position: this.position, view: this.view } : null;
  }

  /** Keeps the payload's position (and, from a snapshot or RESUMED, its view: none is
   * no position to resume from). */
  private mark(payload: unknown, names: boolean): void {
    const map = payloadMap(payload);
    if (typeof map.position === "string") this.position = map.position;
    else if (names) this.position = null;
    if (names) this.view = typeof map.view === "string" ? map.view : null;
  }

  /**
   * Folds one PRESENCE_UPDATE payload in. Returns the update and the entry it replaced
   * (undefined for a user not held before), or null when the update was stale or already
   * contained in the snapshot.
   */
  applyUpdate(
    payload: unknown,
    seq: number | null,
  ): { update: PresenceUpdate; previous: UserPresence | undefined } | null {
    const user = readUser(payload);
    if (!user) return null;
    if (this.contains(seq)) return null;
    // Stale or not, the view now holds everything up to the position the update carries.
    this.mark(payload, false);
    const previous = this.users.get(user.userId);
    if (previous && user.version <= previous.version) {
      this.staleUpdates++;
      return null;
    }
    this.users.set(user.userId, user);
    const map = payloadMap(payload);
    const update: PresenceUpdate = {
      ...user,
      cause: typeof map.cause === "string" ? map.cause : "",
      timestamp: num(map.timestamp) ?? Date.now(),
      seq,
    };
    return { update, previous };
  }

  /**
   * Replaces what the map shows of `groupId`'s members with a GROUP_SNAPSHOT payload taken
   * at `seq` (the router sent every change up to it before): members shown online that it
   * does not list are dropped, offline ones stay with their last seen.
   */
  applyGroupSnapshot(groupId: string, payload: unknown, seq: number | null): void {
    for (const [id, user] of this.users) {
      if (user.status !== "offline" && user.groups.includes(groupId)) this.users.delete(id);
    }
    const listed = payloadMap(payload).users;
    for (const entry of Array.isArray(listed) ? listed : []) {
      const user = readUser(entry);
      if (user) this.users.set(user.userId, user);
    }
    if (seq !== null) this.snapshotSeq = Math.max(this.snapshotSeq ?? seq, seq);
  }

  /** Drops the users in none of `groups`: the router no longer sends their changes. */
  retainGroups(groups: ReadonlySet<string>): void {
    for (const [id, user] of this.users) if (!user.groups.some((group) => groups.has(group))) this.users.delete(id);
  }

  /**
   * Whether the last snapshot already holds the change numbered `seq` (a PRESENCE_UPDATE
   * or an INDICATOR_UPDATE sent to a dashboard): its number is at or below the snapshot's.
   */
  contains(seq: number | null): boolean {
    return seq !== null && this.snapshotSeq !== null && seq <= this.snapshotSeq;
  }
}
