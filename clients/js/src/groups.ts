/**
 * The groups a dashboard chose to watch (docs/PROTOCOL.md, "Choosing groups"): in full, or
 * by counts only (GROUP_COUNTS, at most every `intervalMs`, never below 100 ms). Until the
 * first {@link PresenceClient.subscribe} or {@link PresenceClient.unsubscribe} a dashboard
 * is sent everything its token reads, as always.
 */
import { payloadMap, readId } from "./frames.js";
import type { GroupCounts } from "./presence.js";

/** How to watch one group. */
export interface SubscribeOptions {
  /** Counts only (online / away / dnd / offline); default: in full. */
  countsOnly?: boolean;
  /**
   * Counts: the shortest time between two GROUP_COUNTS (default 1000, at least 100). In
   * full: the coalescing window, each user's latest change once per window (default 100;
   * 0: every change at once). At most 60000.
   */
  intervalMs?: number;
}

/** The SUBSCRIBE payload for `options`. */
export function subscribePayload(options: SubscribeOptions): Record<string, unknown> {
  const payload: Record<string, unknown> = { counts: options.countsOnly ?? false };
  if (options.intervalMs !== undefined) payload.intervalMs = options.intervalMs;
  return payload;
}

function count(value: unknown): number {
  return typeof value === "number" ? value : typeof value === "bigint" ? Number(value) : 0;
}

/** Reads `{groupId, counts: {online, away, dnd, offline}}` (GROUP_COUNTS, GROUP_SNAPSHOT). */
export function readGroupCounts(payload: unknown): { groupId: string; counts: GroupCounts } | null {
  const map = payloadMap(payload);
  const groupId = readId(map.groupId);
  if (groupId === null) return null;
  const counts = payloadMap(map.counts);
  return {
    groupId,
    counts: { online: count(counts.online), away: count(counts.away), dnd: count(counts.dnd), offline: count(counts.offline) },
  };
}

export class GroupSubscriptions {
  /** The chosen groups and how each is watched; null: not chosen yet (everything). */
  private chosen: Map<string, SubscribeOptions> | null = null;
  /** The last counts received per group. */
  readonly counts = new Map<string, GroupCounts>();

  /** The router answered a SUBSCRIBE of `groupId`. */
  add(groupId: string, options: SubscribeOptions): void {
    (this.chosen ??= new Map()).set(groupId, options);
    if (!options.countsOnly) this.counts.delete(groupId);
  }

  /**
   * The router answered an UNSUBSCRIBE of `groupId`. A dashboard that had not chosen
   * watched each of its token's `tokenGroups` in full, every change at once.
   */
  remove(groupId: string, tokenGroups: string[] | undefined): void {
    this.chosen ??= new Map((tokenGroups ?? []).map((group) => [group, { intervalMs: 0 }]));
    this.chosen.delete(groupId);
    this.counts.delete(groupId);
  }

  /** The groups watched in full; null while everything the token reads is sent. */
  full(): Set<string> | null {
    if (!this.chosen) return null;
    return new Set([...this.chosen].filter(([, options]) => !options.countsOnly).map(([group]) => group));
  }

  /** What to SUBSCRIBE to again after a reconnect. */
  entries(): [string, SubscribeOptions][] {
    return this.chosen ? [...this.chosen] : [];
  }
}
