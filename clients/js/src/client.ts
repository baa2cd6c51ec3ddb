/**
 * The client: one connection to presence-router, kept up.
 *
 * - Opens the WebSocket with the token in a header (Node) or the subprotocol pair
 *   (browsers); see `transport.ts`.
 * - Mobile sessions heartbeat every `heartbeatIntervalMs` (default half the router's
 *   presence TTL, as its HEARTBEAT_ACK tells it: `presenceTtlMs`; 30 s until then) and count a heartbeat without HEARTBEAT_ACK within `ackTimeoutMs`
 *   as a dead connection (a zombie: the network dropped it without a close). Other roles
 *   may not heartbeat; in Node they send WebSocket pings at the same interval instead.
 * - Reconnects with exponential backoff and full jitter, and follows each close code as
 *   docs/PROTOCOL.md says: 1012 (router stopping) at once, 4001 (token expired) with a new
 *   token from `getToken`, 4029 (rate limited) after the penalty, 4009 (replaced by a
 *   newer connection of the same device) never.
 * - With `getToken`, sends REFRESH (40) with a fresh token before the current one expires.
 * - Folds snapshots and updates into {@link PresenceMap}, indicators into
 *   {@link IndicatorSet}, and speaks push-to-talk and text.
 * - A watcher reconnects with its view's last position, so the router sends only what
 *   changed meanwhile (then RESUMED) instead of a full snapshot, when it can.
 */
import { Backoff, type BackoffOptions } from "./backoff.js";
import { Emitter } from "./emitter.js";
import { ClosedError, RouterError } from "./errors.js";
import { ChannelType, decodeFrame, encodeFrame, type Frame, type Id, MessageType, payloadMap } from "./frames.js";
import {
  DEFAULT_INDICATOR_LIFETIMES,
  type IndicatorEvent,
  type IndicatorLifetimes,
  IndicatorSet,
  type IndicatorType,
} from "./indicators.js";
import { GroupSubscriptions, readGroupCounts, type SubscribeOptions, subscribePayload } from "./groups.js";
import {
  type GroupCounts,
  PresenceMap,
  type PresenceUpdate,
  type SnapshotGroupCounts,
  type UserPresence,
} from "./presence.js";
import {
  type Channel,
  channelOf,
  channelType,
  type PttEvent,
  type Receipt,
  readStop,
  readText,
  type TextMessage,
} from "./ptt.js";
import { readClaims, type TokenClaims } from "./token.js";
import {
  type AuthMode,
  type HandshakeError,
  isNode,
  openTransport,
  type Transport,
  type WebSocketConstructor,
} from "./transport.js";

export type ConnectionState = "idle" | "connecting" | "open" | "reconnecting" | "closed";

export interface ClientOptions {
  /** The router's WebSocket URL, e.g. `ws://localhost:3000/ws`. */
  url: string;
  /** The JWT to connect with. Without it, `getToken` supplies the first one. */
  token?: string;
  /**
   * Supplies a fresh token: before the current one expires (sent as REFRESH), before
   * reconnecting after 4001 or a refused token, and when the token is about to expire.
   */
  getToken?: () => string | Promise<string>;
  /** The device id: a reconnect of the same user and device replaces the old session. */
  deviceId?: string;
  /**
   * The `fromId` of every frame; default: the token's `sub`. Set it when the router reads
   * the user from another claim (`JWT_SUBJECT_CLAIM`, such as VoicePing's `uid`).
   */
  userId?: Id;
  /** Where the token goes: `header` (default in Node) or `subprotocol` (browsers). */
  auth?: AuthMode;
  /** A browser-style WebSocket constructor to use instead of `ws` or the global one. */
  WebSocket?: WebSocketConstructor;
  /**
   * Send HEARTBEATs; default: when the token's role is `mobile`, or it names none (the
   * router's default role is `mobile`).
   */
  heartbeat?: boolean;
  /**
   * The router's `PRESENCE_TTL` in ms; heartbeats go at half of it. Default: what the
   * router's HEARTBEAT_ACK says (`presenceTtlMs`; the first heartbeat goes at once), 60 000
   * until it has said it (or from a router that does not).
   */
  presenceTtlMs?: number;
  /** Interval of heartbeats (or pings) in ms; default `presenceTtlMs / 2`. */
  heartbeatIntervalMs?: number;
  /** How long a heartbeat (or ping) may go unanswered before the connection counts as dead (default 10 000). */
  ackTimeoutMs?: number;
  /** How long any other request waits for its answer (default 10 000). */
  requestTimeoutMs?: number;
  /** Reconnect delays; `false` never reconnects. */
  reconnect?: BackoffOptions | false;
  /** The router's `ABUSE_PENALTY_MS` (default 10 000): the least wait after a 4029. */
  penaltyMs?: number;
  /**
   * With `getToken`, send REFRESH (40) with a new token before the current one expires
   * (default true). Off, or on a router without REFRESH, an expired token closes the
   * connection (4001) and the client reconnects with a new one.
   */
  refreshBeforeExpiry?: boolean;
  /** Fetch a new token this long before `exp` (default 30 000; at most half the token's remaining life). */
  refreshAheadMs?: number;
  /** The router's indicator lifetimes, when not its defaults: own indicators are refreshed within them. */
  indicatorLifetimesMs?: Partial<IndicatorLifetimes>;
  /**
   * Reconnect from the view's last position (default true): the router sends only what
   * changed since (`resumed`), or a full snapshot when it cannot tell that exactly.
   */
  resume?: boolean;
}

/** What `disconnected` reports. */
export interface DisconnectInfo {
  /** The close code (1006 when the connection dropped or never opened). */
  code: number;
  reason: string;
  /** Delay until the next attempt, in ms; null when the client stopped for good. */
  reconnectInMs: number | null;
  /** The handshake's refusal, when it was one (401, 429, 503, …). */
  refusal: HandshakeError | null;
}

/** What `snapshot` reports; the map and indicators are the client's own, already replaced. */
export interface SnapshotInfo {
  presence: PresenceMap;
  indicators: IndicatorSet;
  seq: number | null;
  /** How many users the snapshot listed. */
  count: number;
  timestamp: number | null;
  /** Each group's users shown online, away and dnd, when the router sends them (as received). */
  groupCounts?: Record<string, SnapshotGroupCounts>;
}

/** What `resumed` reports: the view was brought up to date without a snapshot. */
export interface ResumedInfo {
  presence: PresenceMap;
  indicators: IndicatorSet;
  seq: number | null;
  /** How many users' changes the router sent before RESUMED. */
  changes: number;
  /** The view's position now. */
  position: string | null;
}

/**
 * A stale spell of the router's view (STALE, 43): since when (Unix ms, when the router first
 * knew) and why (`store_unreachable`, `store_data_lost`, `subscription_lost`,
 * `updates_missed`). While it lasts the presence map holds the last view the router had.
 */
export interface StaleInfo {
  since: number;
  reason: string;
}

export interface ClientEvents {
  state: (state: ConnectionState, previous: ConnectionState) => void;
  /** The socket opened; `attempt` is how many failed attempts came before. */
  connected: (info: { attempt: number }) => void;
  disconnected: (info: DisconnectInfo) => void;
  /** A PRESENCE_SNAPSHOT replaced the view (first frame of a watcher, and after a resync). */
  snapshot: (snapshot: SnapshotInfo) => void;
  /**
   * A reconnect resumed from the view's last position: the updates it missed came (each
   * reported as `presence`), then RESUMED; no snapshot.
   */
  resumed: (info: ResumedInfo) => void;
  /**
   * The router's view went stale (STALE: `stale` is the spell, and a more serious reason for
   * the same spell comes as another call) or fresh again (FRESH, after the corrections were
   * applied: `stale` is null, `previous` the spell it ends).
   */
  stale: (stale: StaleInfo | null, previous: StaleInfo | null) => void;
  /** A PRESENCE_UPDATE changed one user (stale ones are not reported). */
  presence: (update: PresenceUpdate, previous: UserPresence | undefined) => void;
  /**
   * An indicator started or ended (or was dropped with the connection: `expired`). Right
   * after each `snapshot`, its indicators not held before come as starts and held ones it
   * no longer lists as ends, so a UI driven by this event alone is current after every
   * (re)connect.
   */
  indicator: (event: IndicatorEvent) => void;
  ptt: (event: PttEvent) => void;
  text: (message: TextMessage) => void;
  receipt: (receipt: Receipt) => void;
  /** A REFRESH was accepted; the connection now lives on the new token. */
  refreshed: (claims: TokenClaims) => void;
  /** A GROUP_COUNTS: a group watched by counts only (`subscribe(g, {countsOnly: true})`). */
  groupCounts: (groupId: string, counts: GroupCounts) => void;
  /** A GROUP_SNAPSHOT replaced what the map shows of a group just subscribed to in full. */
  groupSnapshot: (groupId: string, counts: GroupCounts) => void;
  /** Something failed that no promise reports: an unmatched ERROR frame, a refused handshake, `getToken`. */
  error: (error: Error) => void;
  /** Every decoded frame, before the client handles it. */
  frame: (frame: Frame) => void;
}

/** This client's talk: the floor it holds. */
export interface Talk {
  channel: Channel;
  /** Unix ms of START_ACK. */
  since: number;
}

interface Pending {
  messageType: number;
  channelType: number;
  toId: string | null;
  messageId: unknown;
  resolve(frame: Frame): void;
  reject(error: Error): void;
  timer: ReturnType<typeof setTimeout>;
}

/**
 * How often a held indicator is sent again: every 3 s (typing) or 10 s (recording), as
 * docs/PROTOCOL.md asks for the router's default lifetimes of 5 s and 30 s, and at most
 * every 60% of a shorter lifetime set in `indicatorLifetimesMs`.
 */
const INDICATOR_REFRESH_MS: Record<string, number> = { typing: 3_000, recording: 10_000 };
const indicatorRefreshMs = (type: string, lifetimeMs: number): number =>
  Math.max(1, Math.min(INDICATOR_REFRESH_MS[type] ?? 3_000, lifetimeMs * 0.6));

/** The router accepts a token until its `exp` plus this leeway (docs/PROTOCOL.md, "Handshake"). */
const LEEWAY_MS = 5_000;

/** `setTimeout` takes at most this (about 24.8 days). */
const MAX_TIMER_MS = 2 ** 31 - 1;

const num = (value: unknown): number | null => (typeof value === "number" ? value : null);

export class PresenceClient extends Emitter<ClientEvents> {
  /** Everyone this watcher sees, versioned (empty for mobile sessions, which get no snapshot). */
  readonly presence = new PresenceMap();
  /** Live typing/recording/talking indicators this client was told of. */
  readonly indicators: IndicatorSet;

  private readonly options: ClientOptions;
  private readonly backoff: Backoff;
  private readonly lifetimes: IndicatorLifetimes;
  private token: string | undefined;
  private claims: TokenClaims = {};
  private socket: Transport | null = null;
  private stateValue: ConnectionState = "idle";
  /** Bumped per socket, so a late event of an old socket changes nothing. */
  private generation = 0;
  /** close() was called: no reconnect. */
  private stopped = false;
  private needToken = false;
  /** False once the router answered REFRESH with `unsupported_type`. */
  private canRefresh = true;
  /** The socket has been answered since it opened (the backoff is reset then). */
  private answered = false;
  /** The current socket opened (a handshake that failed never did). */
  private opened = false;
  /** Why the client dropped the socket itself (a zombie), reported as the close reason. */
  private dropReason: string | null = null;
  private pending: Pending[] = [];
  private nextMessageId = 1;
  private talkValue: Talk | null = null;
  private staleValue: StaleInfo | null = null;
  /** The current socket has not sent its first snapshot or RESUMED yet. */
  private firstView = true;
  /** The presence TTL the router's HEARTBEAT_ACK said, in ms. */
  private learnedTtlMs: number | null = null;
  private waiters: { resolve(): void; reject(error: Error): void }[] = [];
  private timers: {
    retry?: ReturnType<typeof setTimeout>;
    beat?: ReturnType<typeof setInterval>;
    refresh?: ReturnType<typeof setTimeout>;
    closing?: ReturnType<typeof setTimeout>;
  } = {};
  /** USER_ADD / USER_REMOVE applied, sent again after every reconnect (they belong to the session). */
  private memberships = new Map<string, number>();
  /** The groups this dashboard chose (SUBSCRIBE), sent again after every reconnect. */
  private groupSubscriptions = new GroupSubscriptions();
  /** Indicators this client holds on, refreshed while they last and sent again after a reconnect. */
  private ownIndicators = new Map<string, { groupId: string; type: string; timer: ReturnType<typeof setInterval> }>();

  constructor(options: ClientOptions) {
    super();
    this.options = options;
    this.backoff = new Backoff(options.reconnect || {});
    this.lifetimes = { ...DEFAULT_INDICATOR_LIFETIMES, ...options.indicatorLifetimesMs };
    this.indicators = new IndicatorSet((event) => this.emit("indicator", event));
    if (options.token) this.setToken(options.token);
    else if (!options.getToken) throw new TypeError("PresenceClient needs a token or getToken");
  }

  get state(): ConnectionState {
    return this.stateValue;
  }

  /** The user this client speaks as (`fromId`). */
  get userId(): string | undefined {
    return this.options.userId !== undefined ? String(this.options.userId) : this.claims.sub;
  }

  /** The current token's role, as it claims. */
  get role(): string | undefined {
    return this.claims.role;
  }

  /** The floor this client holds, or null. */
  get talk(): Talk | null {
    return this.talkValue;
  }

  /**
   * The router's stale spell, or null while its view is fed (docs/PROTOCOL.md, "Stale and
   * fresh views"). Kept across a reconnect until the new connection's first snapshot: the
   * router sends STALE right after it if the spell goes on.
   */
  get stale(): StaleInfo | null {
    return this.staleValue;
  }

  /**
   * Starts connecting (and keeps reconnecting). Resolves once the socket is open; rejects if
   * the client stops first (a refused token without `getToken`, 4009, `close()`).
   */
  connect(): Promise<void> {
    if (this.stateValue === "open") return Promise.resolve();
    const opened = new Promise<void>((resolve, reject) => this.waiters.push({ resolve, reject }));
    if (this.stateValue === "idle" || this.stateValue === "closed") {
      this.stopped = false;
      this.backoff.reset();
      void this.dial();
    }
    return opened;
  }

  /** Closes for good (1000) and resolves once the socket is closed. */
  close(): Promise<void> {
    this.stopped = true;
    clearTimeout(this.timers.retry);
    const socket = this.socket;
    if (!socket) {
      this.stop(null);
      return Promise.resolve();
    }
    return new Promise((resolve) => {
      this.once("disconnected", () => resolve());
      socket.close(1000, "client closed");
      // A router that no longer answers would hold the close handshake open.
      this.timers.closing = setTimeout(() => socket.terminate(), 2_000);
    });
  }

  // ---- connection lifecycle -------------------------------------------------------------

  private setState(state: ConnectionState): void {
    const previous = this.stateValue;
    if (previous === state) return;
    this.stateValue = state;
    this.emit("state", state, previous);
  }

  private setToken(token: string): void {
    this.token = token;
    this.claims = readClaims(token);
  }

  private async fetchToken(): Promise<string> {
    if (!this.options.getToken) throw new Error("no getToken to fetch a token with");
    const token = await this.options.getToken();
    if (typeof token !== "string" || token === "") throw new Error("getToken returned no token");
    return token;
  }

  /**
   * The router would refuse the token within `refreshAheadMs`: its `exp` plus the router's
   * leeway ({@link LEEWAY_MS}) is that close, or past.
   */
  private tokenExpiring(): boolean {
    const exp = this.claims.exp;
    return exp !== undefined && exp * 1000 + LEEWAY_MS - Date.now() < (this.options.refreshAheadMs ?? 30_000);
  }

  private async dial(): Promise<void> {
    const generation = ++this.generation;
    this.setState("connecting");
    this.dropReason = null;
    this.answered = false;
    this.opened = false;
    try {
      if (!this.token || (this.options.getToken && (this.needToken || this.tokenExpiring()))) {
        this.setToken(await this.fetchToken());
        this.needToken = false;
      }
    } catch (error) {
      if (generation !== this.generation || this.stopped) return;
      const failure = error instanceof Error ? error : new Error(String(error));
      this.emit("error", failure);
      return this.retry(1006, `no token: ${failure.message}`, null, this.backoff.next());
    }
    if (generation !== this.generation || this.stopped) return;
    if (this.userId === undefined) {
      this.emit("error", new Error("the token names no `sub`: pass `userId`"));
      return this.stop(new ClosedError(1006, "the token names no `sub`: pass `userId`"));
    }
    const live = () => generation === this.generation;
    try {
      const socket = await openTransport({
        url: this.connectUrl(),
        token: this.token!,
        deviceId: this.options.deviceId,
        auth: this.options.auth ?? (isNode() && !this.options.WebSocket ? "header" : "subprotocol"),
        WebSocket: this.options.WebSocket,
        handlers: {
          open: () => live() && this.onOpen(),
          message: (data) => live() && this.onMessage(data),
          close: (code, reason, refusal) => live() && this.onClose(code, reason, refusal),
        },
      });
      if (!live()) return socket.terminate();
      this.socket = socket;
      if (this.stopped) socket.close(1000, "client closed");
    } catch (error) {
      // The URL or the WebSocket implementation is unusable: retrying cannot help.
      const failure = error instanceof Error ? error : new Error(String(error));
      this.emit("error", failure);
      this.stop(new ClosedError(1006, failure.message));
    }
  }

  /** The URL to connect to: with the view's last position, to resume from it. */
  private connectUrl(): string {
    const point = this.options.resume === false ? null : this.presence.resumePoint();
    if (!point) return this.options.url;
    const url = new URL(this.options.url);
    url.searchParams.set("position", point.position);
    url.searchParams.set("view", point.view);
    return url.toString();
  }

  private onOpen(): void {
    this.opened = true;
    this.presence.reconnected();
    this.firstView = true;
    const attempt = this.backoff.attempt;
    this.setState("open");
    this.emit("connected", { attempt });
    for (const waiter of this.waiters.splice(0)) waiter.resolve();
    this.startLiveness();
    this.scheduleRefresh();
    for (const [groupId, messageType] of this.memberships) this.background(this.membership(messageType, groupId));
    for (const [groupId, options] of this.groupSubscriptions.entries()) this.background(this.subscribe(groupId, options));
    for (const own of this.ownIndicators.values()) this.background(this.sendIndicator(own.groupId, own.type, true));
  }

  private onClose(code: number, reason: string, refusal: HandshakeError | null): void {
    const seesRefusals = this.socket?.seesRefusals ?? true;
    this.socket = null;
    this.generation++;
    clearTimeout(this.timers.closing);
    clearInterval(this.timers.beat);
    this.beatEvery = null;
    clearTimeout(this.timers.refresh);
    this.talkValue = null;
    this.indicators.dropAll();
    const ended = new RouterError("disconnected", `the connection closed (${code})`);
    for (const request of this.pending.splice(0)) {
      clearTimeout(request.timer);
      request.reject(ended);
    }
    reason = this.dropReason ?? reason;
    if (this.stopped) {
      this.emit("disconnected", { code, reason, reconnectInMs: null, refusal });
      return this.stop(null);
    }
    const { delay, fatal } = this.decide(code, reason, refusal, seesRefusals);
    this.retry(code, reason, refusal, delay, fatal);
  }

  /** What a close (or a refused handshake) calls for: a delay before the next attempt, or a stop. */
  private decide(
    code: number,
    reason: string,
    refusal: HandshakeError | null,
    seesRefusals: boolean,
  ): { delay: number | null; fatal?: Error } {
    const canRenew = this.options.getToken !== undefined;
    // A browser whose handshake failed for a reason it could not learn: the token may be
    // the cause, and a fresh one costs little.
    if (!this.opened && !refusal && !seesRefusals && canRenew) this.needToken = true;
    if (refusal) {
      if (refusal.status === 401) {
        if (!canRenew) return { delay: null, fatal: refusal };
        this.needToken = true;
        return { delay: this.backoff.next() };
      }
      if (refusal.status === 429 || refusal.status >= 500) {
        return { delay: Math.max(refusal.retryAfterMs ?? 0, this.backoff.next()) };
      }
      return { delay: null, fatal: refusal };
    }
    switch (code) {
      case 4009:
        return { delay: null, fatal: new ClosedError(code, `replaced by a newer connection of this device: ${reason}`) };
      case 4001:
        if (!canRenew) return { delay: null, fatal: new ClosedError(code, "the token expired and there is no getToken") };
        this.needToken = true;
        return { delay: this.backoff.prompt() };
      case 4029:
        return { delay: (this.options.penaltyMs ?? 10_000) + this.backoff.next() };
      case 1012:
        return { delay: this.backoff.prompt() };
      default:
        return { delay: this.backoff.next() };
    }
  }

  private retry(
    code: number,
    reason: string,
    refusal: HandshakeError | null,
    delay: number | null,
    fatal?: Error,
  ): void {
    if (this.options.reconnect === false) delay = null;
    this.emit("disconnected", { code, reason, reconnectInMs: delay, refusal });
    if (fatal) this.emit("error", fatal);
    if (delay === null) return this.stop(fatal ?? new ClosedError(code, `the connection closed (${code}) ${reason}`));
    this.setState("reconnecting");
    this.timers.retry = setTimeout(() => void this.dial(), delay);
  }

  /** Stops for good: no reconnect; pending `connect()` calls reject with `error`. */
  private stop(error: Error | null): void {
    this.stopped = true;
    clearTimeout(this.timers.retry);
    for (const own of this.ownIndicators.values()) clearInterval(own.timer);
    this.ownIndicators.clear();
    this.setState("closed");
    const failure = error ?? new ClosedError(1000, "the client was closed");
    for (const waiter of this.waiters.splice(0)) waiter.reject(failure);
  }

  /**
   * Drops `socket` when it stopped answering (a zombie: the network lost it without a
   * close), so the client reconnects as after any other drop. A later socket is left alone.
   */
  private drop(socket: Transport | null, reason: string): void {
    if (!socket || socket !== this.socket) return;
    this.dropReason = reason;
    socket.terminate();
  }

  /** The interval of heartbeats (or pings): the option, else half the router's TTL. */
  private beatInterval(): number {
    return this.options.heartbeatIntervalMs ?? (this.options.presenceTtlMs ?? this.learnedTtlMs ?? 60_000) / 2;
  }

  private startLiveness(): void {
    const heartbeats = this.options.heartbeat ?? (this.claims.role ?? "mobile") === "mobile";
    const timeout = this.options.ackTimeoutMs ?? 10_000;
    const socket = this.socket;
    let beat: (() => void) | undefined;
    if (heartbeats) {
      beat = () => this.background(this.heartbeat());
    } else if (socket?.ping) {
      beat = () => {
        const timer = setTimeout(() => this.drop(socket, `no pong within ${timeout} ms`), timeout);
        socket.ping!(() => clearTimeout(timer));
      };
    }
    if (!beat) return;
    if (heartbeats) beat(); // at once: proves the session (its answer resets the backoff, and says the TTL)
    this.beatEvery = beat;
    this.timers.beat = setInterval(beat, this.beatInterval());
  }

  /** What the liveness timer runs. */
  private beatEvery: (() => void) | null = null;

  /**
   * Takes the TTL a HEARTBEAT_ACK states (`presenceTtlMs`): the heartbeats follow it from
   * now on, so a router with a short TTL never sees this session lapse between two.
   */
  private learnTtl(payload: unknown): void {
    const ttl = num(payloadMap(payload).presenceTtlMs);
    if (ttl === null || ttl <= 0 || ttl === this.learnedTtlMs) return;
    this.learnedTtlMs = ttl;
    if (!this.beatEvery) return;
    clearInterval(this.timers.beat);
    this.timers.beat = setInterval(this.beatEvery, this.beatInterval());
  }

  /** Schedules a REFRESH before the token expires, when `getToken` can supply one. */
  private scheduleRefresh(): void {
    clearTimeout(this.timers.refresh);
    const exp = this.claims.exp;
    if (!this.options.getToken || exp === undefined || this.options.refreshBeforeExpiry === false || !this.canRefresh) {
      return;
    }
    const now = Date.now();
    const expMs = exp * 1000;
    const at = Math.max(now + (expMs - now) / 2, expMs - (this.options.refreshAheadMs ?? 30_000));
    this.timers.refresh = setTimeout(
      () => this.background(this.refresh()),
      Math.min(MAX_TIMER_MS, Math.max(0, at - now)),
    );
  }

  // ---- frames in ------------------------------------------------------------------------

  private onMessage(data: Uint8Array): void {
    let frame: Frame;
    try {
      frame = decodeFrame(data);
    } catch (error) {
      this.emit("error", new Error(`an undecodable frame from the router: ${(error as Error).message}`));
      return;
    }
    if (!this.answered) {
      this.answered = true;
      this.backoff.reset();
    }
    this.emit("frame", frame);
    const me = this.userId!;
    switch (frame.messageType) {
      case MessageType.PRESENCE_SNAPSHOT:
        return this.onSnapshot(frame);
      case MessageType.RESUMED:
        return this.onResumed(frame);
      case MessageType.PRESENCE_UPDATE: {
        const applied = this.presence.applyUpdate(frame.payload, num(frame.messageId));
        if (applied) this.emit("presence", applied.update, applied.previous);
        return;
      }
      case MessageType.INDICATOR_UPDATE: {
        // A dashboard's are numbered with its presence updates; the snapshot holds those up to its own.
        if (this.presence.contains(num(frame.messageId))) return;
        const event = this.indicators.apply(frame.payload);
        if (event) this.emit("indicator", event);
        return;
      }
      case MessageType.STALE:
      case MessageType.FRESH:
        return this.onStale(frame);
      case MessageType.GROUP_SNAPSHOT:
      case MessageType.GROUP_COUNTS: {
        const read = readGroupCounts(frame.payload);
        if (!read) return;
        if (frame.messageType === MessageType.GROUP_COUNTS) {
          this.groupSubscriptions.counts.set(read.groupId, read.counts);
          return this.emit("groupCounts", read.groupId, read.counts);
        }
        this.presence.applyGroupSnapshot(read.groupId, frame.payload, num(frame.messageId));
        return this.emit("groupSnapshot", read.groupId, read.counts);
      }
      case MessageType.ACK:
        return this.settle(num(payloadMap(frame.payload).messageType), frame, (p) => this.sameId(p, frame));
      case MessageType.HEARTBEAT_ACK:
        this.learnTtl(frame.payload);
        return this.settle(MessageType.HEARTBEAT, frame, (p) => this.sameId(p, frame));
      case MessageType.ERROR:
        return this.onError(frame);
      case MessageType.START_ACK:
      case MessageType.START_FAILED:
        return this.settle(MessageType.START, frame, (p) => this.sameChannel(p, frame));
      case MessageType.STOP_ACK:
        return this.settle(MessageType.STOP, frame, (p) => this.sameChannel(p, frame));
      case MessageType.TEXT_ACK:
        return this.settle(
          MessageType.TEXT,
          frame,
          (p) => this.sameChannel(p, frame) && (p.messageId === undefined || this.sameId(p, frame)),
        );
      case MessageType.START:
      case MessageType.AUDIO:
      case MessageType.STOP:
        return this.onPtt(frame, me);
      case MessageType.TEXT: {
        const channel = channelOf(frame, me);
        if (channel && frame.fromId !== null) {
          const text = readText(frame.payload, frame.messageId);
          this.emit("text", { channel, from: frame.fromId, ...text, payload: frame.payload });
        }
        return;
      }
      case MessageType.DELIVERED:
      case MessageType.READ:
        if (frame.fromId !== null) {
          const type = frame.messageType === MessageType.DELIVERED ? "delivered" : "read";
          this.emit("receipt", { type, from: frame.fromId, messageId: frame.payload ?? frame.messageId });
        }
        return;
    }
  }

  /** STALE sets the spell (again, with a more serious reason), FRESH ends it. */
  private onStale(frame: Frame): void {
    const payload = payloadMap(frame.payload);
    const since = num(payload.since);
    const reason = typeof payload.reason === "string" ? payload.reason : "unknown";
    this.setStale(frame.messageType === MessageType.STALE && since !== null ? { since, reason } : null);
  }

  private setStale(stale: StaleInfo | null): void {
    const previous = this.staleValue;
    if (previous === null && stale === null) return;
    this.staleValue = stale;
    this.emit("stale", stale, previous);
  }

  /**
   * A new connection's snapshot or RESUMED is the router's view as it is now: a spell
   * reported on an earlier connection is over unless STALE follows it at once.
   */
  private viewStarted(): void {
    if (this.firstView) {
      this.firstView = false;
      this.setStale(null);
    }
  }

  private onSnapshot(frame: Frame): void {
    this.viewStarted();
    const seq = num(frame.messageId);
    this.presence.applySnapshot(frame.payload, seq);
    const payload = payloadMap(frame.payload);
    const changed = Array.isArray(payload.indicators) ? this.indicators.replace(payload.indicators) : [];
    const snapshot: SnapshotInfo = {
      presence: this.presence,
      indicators: this.indicators,
      seq,
      count: num(payload.count) ?? (Array.isArray(payload.users) ? payload.users.length : 0),
      timestamp: num(payload.timestamp),
    };
    if (payload.groupCounts !== undefined) snapshot.groupCounts = payload.groupCounts as Record<string, SnapshotGroupCounts>;
    this.emit("snapshot", snapshot);
    for (const event of changed) this.emit("indicator", event);
  }

  private onResumed(frame: Frame): void {
    this.viewStarted();
    const seq = num(frame.messageId);
    this.presence.applyResumed(frame.payload, seq);
    const payload = payloadMap(frame.payload);
    if (Array.isArray(payload.indicators)) this.indicators.replace(payload.indicators);
    this.emit("resumed", {
      presence: this.presence,
      indicators: this.indicators,
      seq,
      changes: num(payload.changes) ?? 0,
      position: typeof payload.position === "string" ? payload.position : null,
    });
  }

  private onPtt(frame: Frame, me: string): void {
    const channel = channelOf(frame, me);
    if (!channel) return;
    if (frame.fromId === null) {
      // The router's own STOP: it ended this client's talk.
      if (frame.messageType !== MessageType.STOP) return;
      this.talkValue = null;
      this.emit("ptt", { type: "ended", channel, from: me, payload: frame.payload, ...readStop(frame.payload) });
      return;
    }
    const event: PttEvent = { type: "start", channel, from: frame.fromId, payload: frame.payload };
    if (frame.messageType === MessageType.AUDIO) {
      event.type = "audio";
      if (frame.payload instanceof Uint8Array) event.audio = frame.payload;
    } else if (frame.messageType === MessageType.STOP) {
      Object.assign(event, { type: "stop" }, readStop(frame.payload));
    }
    this.emit("ptt", event);
  }

  private onError(frame: Frame): void {
    const payload = payloadMap(frame.payload);
    const code = typeof payload.code === "string" ? payload.code : "error";
    const messageType = num(payload.messageType);
    const error = new RouterError(
      code,
      typeof payload.message === "string" ? `${code}: ${payload.message}` : code,
      messageType,
      frame.messageId ?? undefined,
    );
    const hasId = frame.messageId !== undefined && frame.messageId !== null;
    const request =
      messageType === null
        ? undefined
        : (this.pending.find((p) => p.messageType === messageType && hasId && this.sameId(p, frame)) ??
          this.pending.find((p) => p.messageType === messageType && !hasId && p.messageId === undefined));
    if (!request) return this.emit("error", error);
    this.take(request);
    request.reject(error);
  }

  private sameId(pending: Pending, frame: Frame): boolean {
    return pending.messageId === frame.messageId;
  }

  private sameChannel(pending: Pending, frame: Frame): boolean {
    return pending.channelType === frame.channelType && pending.toId === frame.toId;
  }

  /** Resolves the oldest request of `messageType` that `matches` the answer `frame`. */
  private settle(messageType: number | null, frame: Frame, matches: (p: Pending) => boolean): void {
    const request = this.pending.find((p) => p.messageType === messageType && matches(p));
    if (!request) return;
    this.take(request);
    request.resolve(frame);
  }

  private take(request: Pending): void {
    clearTimeout(request.timer);
    this.pending.splice(this.pending.indexOf(request), 1);
  }

  // ---- frames out -----------------------------------------------------------------------

  /** Sends one frame now. @throws {RouterError} `not_connected` while not open. */
  private send(
    channelType: number,
    messageType: number,
    toId: Id | null,
    payload: unknown,
    messageId?: unknown,
  ): void {
    if (this.stateValue !== "open" || !this.socket) {
      throw new RouterError("not_connected", "not connected to the router", messageType, messageId);
    }
    this.socket.send(encodeFrame(channelType, messageType, this.userId!, toId, payload, messageId));
  }

  /**
   * Sends a frame and waits for its answer: resolves with it, rejects with the router's
   * ERROR, or `timeout` after `timeoutMs`. With `withId` the frame carries a fresh message
   * id (six elements), which ACK and ERROR echo.
   */
  private request(
    channelType: number,
    messageType: number,
    toId: Id | null,
    payload: unknown,
    { withId = true, messageId, timeoutMs }: { withId?: boolean; messageId?: Id; timeoutMs?: number } = {},
    onTimeout?: () => void,
  ): Promise<Frame> {
    const id = messageId ?? (withId ? this.nextMessageId++ : undefined);
    return new Promise<Frame>((resolve, reject) => {
      this.send(channelType, messageType, toId, payload, id);
      const wait = timeoutMs ?? this.options.requestTimeoutMs ?? 10_000;
      const request: Pending = {
        messageType,
        channelType,
        toId: toId === null ? null : String(toId),
        messageId: id,
        resolve,
        reject,
        timer: setTimeout(() => {
          this.take(request);
          reject(new RouterError("timeout", `no answer within ${wait} ms`, messageType, id));
          onTimeout?.();
        }, wait),
      };
      this.pending.push(request);
    });
  }

  /** Reports a background request's failure as an `error` event (a disconnect is not one). */
  private background(request: Promise<unknown>): void {
    request.catch((error: Error) => {
      if (!(error instanceof RouterError && (error.code === "disconnected" || error.code === "not_connected"))) {
        this.emit("error", error);
      }
    });
  }

  /**
   * Sends a HEARTBEAT now (mobile sessions; the client also sends them on its own). Resolves
   * with the round trip in ms once HEARTBEAT_ACK arrives; no answer within `ackTimeoutMs`
   * drops the connection as dead and reconnects.
   */
  async heartbeat(): Promise<number> {
    const sent = Date.now();
    const timeoutMs = this.options.ackTimeoutMs ?? 10_000;
    const socket = this.socket;
    await this.request(
      ChannelType.GROUP,
      MessageType.HEARTBEAT,
      null,
      { type: "heartbeat", timestamp: sent },
      { timeoutMs },
      () => this.drop(socket, `no HEARTBEAT_ACK within ${timeoutMs} ms`),
    );
    return Date.now() - sent;
  }

  /**
   * Sends REFRESH (40) with `token` (default: a new one from `getToken`); resolves on ACK,
   * from when the connection lives on it. Rejects with the router's code (`token_mismatch`,
   * `invalid_token`, …): the old token stays until it expires.
   */
  async refresh(token?: string): Promise<void> {
    const next = token ?? (await this.fetchToken());
    const before = this.claims.exp;
    try {
      await this.request(ChannelType.GROUP, MessageType.REFRESH, null, { token: next });
    } catch (error) {
      // A router without REFRESH: the token is renewed by reconnecting after 4001 instead.
      if (error instanceof RouterError && error.code === "unsupported_type") this.canRefresh = false;
      throw error;
    }
    this.setToken(next);
    this.emit("refreshed", this.claims);
    if (this.claims.exp === undefined || before === undefined || this.claims.exp > before) this.scheduleRefresh();
    else this.emit("error", new Error("getToken gave a token that expires no later than the one it replaces"));
  }

  /**
   * STATUS (35): `online`, `away`, `dnd` or `invisible`, with an optional text (mobile), and
   * an activity: `{type, name?}` sets it, `null` clears it, omitted leaves it as it is.
   */
  async setStatus(
    status: "online" | "away" | "dnd" | "invisible",
    text?: string | null,
    activity?: { type: string; name?: string | null } | null,
  ): Promise<void> {
    const payload: Record<string, unknown> = { status, text: text ?? null };
    if (activity !== undefined) payload.activity = activity;
    await this.request(ChannelType.GROUP, MessageType.STATUS, null, payload);
  }

  /** ACTIVITY (36): the user is active; brings an `online` user shown `away` back (mobile). */
  async activity(): Promise<void> {
    await this.request(ChannelType.GROUP, MessageType.ACTIVITY, null, {});
  }

  /**
   * Starts or ends this user's typing or recording indicator in `groupId` (mobile). While it
   * is on, the client sends it again every 3 s (typing) or 10 s (recording; sooner with
   * shorter `indicatorLifetimesMs`) so it does not lapse, and after a reconnect. Resolves on
   * the router's ACK.
   */
  async setIndicator(groupId: Id, type: Exclude<IndicatorType, "talking">, isActive = true): Promise<void> {
    const key = `${groupId}\u0000${type}`;
    const held = this.ownIndicators.get(key);
    if (held) clearInterval(held.timer);
    this.ownIndicators.delete(key);
    if (isActive) {
      const timer = setInterval(
        () => this.background(this.sendIndicator(String(groupId), type, true)),
        indicatorRefreshMs(type, this.lifetimes[type]),
      );
      this.ownIndicators.set(key, { groupId: String(groupId), type, timer });
    }
    try {
      await this.sendIndicator(String(groupId), type, isActive);
    } catch (error) {
      clearInterval(this.ownIndicators.get(key)?.timer);
      this.ownIndicators.delete(key);
      throw error;
    }
  }

  private async sendIndicator(groupId: string, type: string, isActive: boolean): Promise<void> {
    await this.request(ChannelType.GROUP, MessageType.INDICATOR, groupId, { type, isActive });
  }

  /** USER_ADD (15): joins `groupId` for this session, and again after every reconnect (mobile). */
  async joinGroup(groupId: Id): Promise<void> {
    await this.membership(MessageType.USER_ADD, String(groupId));
    this.memberships.set(String(groupId), MessageType.USER_ADD);
  }

  /** USER_REMOVE (16): leaves `groupId` for this session, and again after every reconnect (mobile). */
  async leaveGroup(groupId: Id): Promise<void> {
    await this.membership(MessageType.USER_REMOVE, String(groupId));
    this.memberships.set(String(groupId), MessageType.USER_REMOVE);
  }

  /**
   * SUBSCRIBE (45), dashboards: from now on watch `groupId` (within the token's groups) in
   * full, its changes coalesced per `intervalMs`, or with `countsOnly` by its counts
   * (`groupCounts` events; {@link groupCounts}). The first call narrows what the router
   * sends to the groups chosen: users in none of the groups watched in full are dropped
   * from {@link presence}. Resolves once the router applied it (a `groupSnapshot` or
   * `groupCounts` event follows); kept across reconnects.
   *
   * @throws {RouterError} `not_in_scope` (a group outside the token's), `too_many_subscriptions`,
   * `invalid_payload`, `not_allowed` (a mobile session).
   */
  async subscribe(groupId: Id, options: SubscribeOptions = {}): Promise<void> {
    await this.request(ChannelType.GROUP, MessageType.SUBSCRIBE, groupId, subscribePayload(options));
    this.groupSubscriptions.add(String(groupId), options);
    this.dropUnwatched();
  }

  /** {@link subscribe} with `countsOnly`: online / away / dnd / offline at most every `intervalMs`. */
  countsOnly(groupId: Id, intervalMs?: number): Promise<void> {
    return this.subscribe(groupId, { countsOnly: true, intervalMs });
  }

  /**
   * UNSUBSCRIBE (46): stop watching `groupId`; its members in no other group watched in
   * full are dropped from {@link presence}.
   *
   * @throws {RouterError} `not_subscribed`.
   */
  async unsubscribe(groupId: Id): Promise<void> {
    await this.request(ChannelType.GROUP, MessageType.UNSUBSCRIBE, groupId, null);
    this.groupSubscriptions.remove(String(groupId), this.claims.groups);
    this.dropUnwatched();
  }

  /** The last counts of each group watched by counts only. */
  get groupCounts(): ReadonlyMap<string, GroupCounts> {
    return this.groupSubscriptions.counts;
  }

  private dropUnwatched(): void {
    const full = this.groupSubscriptions.full();
    if (full) this.presence.retainGroups(full);
  }

  private async membership(messageType: number, groupId: string): Promise<void> {
    await this.request(ChannelType.GROUP, messageType, groupId, null);
  }

  // ---- push-to-talk and text ------------------------------------------------------------

  /**
   * START (1): asks for `channel`'s floor. Resolves with the talk once START_ACK grants it;
   * rejects with `busy` (someone else talks), `already_talking` (this session holds another
   * channel's floor) or the router's ERROR (`not_a_member`, `not_allowed`, …).
   * Sent in VoicePing's five-element layout, so VoicePing apps in the group read it.
   */
  async startTalk(channel: Channel, payload: unknown = null): Promise<Talk> {
    const answer = await this.request(channelType(channel), MessageType.START, channel.id, payload, { withId: false });
    if (answer.messageType === MessageType.START_FAILED) {
      const why = String(answer.payload);
      throw new RouterError(why === "Busy" ? "busy" : "already_talking", why, MessageType.START);
    }
    this.talkValue = { channel, since: Date.now() };
    return this.talkValue;
  }

  /** AUDIO (3): the next chunk of this client's talk, relayed as sent. @throws when not talking. */
  sendAudio(data: Uint8Array): void {
    const talk = this.talkValue;
    if (!talk) throw new RouterError("floor_not_held", "no talk: call startTalk first", MessageType.AUDIO);
    this.send(channelType(talk.channel), MessageType.AUDIO, talk.channel.id, data);
  }

  /**
   * STOP (2): gives the floor back. Resolves with the talk's message id from STOP_ACK.
   * `channel` defaults to the current talk's.
   */
  async stopTalk(channel: Channel | undefined = this.talkValue?.channel, payload: unknown = null): Promise<{ messageId: string | null }> {
    if (!channel) throw new RouterError("floor_not_held", "no talk to stop", MessageType.STOP);
    const answer = await this.request(channelType(channel), MessageType.STOP, channel.id, payload, { withId: false });
    if (this.talkValue?.channel.id === channel.id && this.talkValue.channel.type === channel.type) this.talkValue = null;
    return { messageId: answer.messageId === undefined ? null : String(answer.messageId) };
  }

  /**
   * TEXT (17) to `channel`; resolves with the message id from TEXT_ACK. Without
   * `messageId` the router makes one (five-element layout); with one, the message keeps it.
   */
  async sendText(channel: Channel, text: string | Record<string, unknown>, options: { messageId?: Id } = {}): Promise<{ messageId: string | null }> {
    const answer = await this.request(channelType(channel), MessageType.TEXT, channel.id, text, {
      withId: false,
      messageId: options.messageId,
    });
    return { messageId: answer.messageId === undefined || answer.messageId === null ? null : String(answer.messageId) };
  }

  /** DELIVERED (20): tells `sender` its message `messageId` reached this user (private channels). */
  delivered(sender: Id, messageId: unknown): void {
    this.send(ChannelType.PRIVATE, MessageType.DELIVERED, sender, messageId);
  }

  /** READ (21): tells `sender` its message `messageId` was read (private channels). */
  read(sender: Id, messageId: unknown): void {
    this.send(ChannelType.PRIVATE, MessageType.READ, sender, messageId);
  }
}
