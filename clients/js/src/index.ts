/**
 * presence-router's client for browsers and Node: presence, indicators, push-to-talk and
 * text over the router's msgpack WebSocket protocol (docs/PROTOCOL.md).
 *
 * @example
 * const client = new PresenceClient({ url: "ws://localhost:3000/ws", token });
 * client.on("presence", (user) => console.log(user.userId, user.status));
 * await client.connect();
 */
export { Backoff, type BackoffOptions } from "./backoff.js";
export {
  type ClientEvents,
  type ClientOptions,
  type ConnectionState,
  type DisconnectInfo,
  PresenceClient,
  type ResumedInfo,
  type SnapshotInfo,
  type StaleInfo,
  type Talk,
} from "./client.js";
export { Emitter, type EventMap } from "./emitter.js";
export { GroupSubscriptions, readGroupCounts, type SubscribeOptions } from "./groups.js";
export { ClosedError, RouterError } from "./errors.js";
export { ChannelType, decodeFrame, encodeFrame, type Frame, type Id, MessageType, readId } from "./frames.js";
export {
  DEFAULT_INDICATOR_LIFETIMES,
  type Indicator,
  type IndicatorEvent,
  type IndicatorLifetimes,
  IndicatorSet,
  type IndicatorType,
} from "./indicators.js";
export {
  type Activity,
  type Cause,
  type GroupCounts,
  PresenceMap,
  type PresenceUpdate,
  readUser,
  type ResumePoint,
  type SnapshotGroupCounts,
  type Status,
  type UserPresence,
} from "./presence.js";
export { type Channel, group, type PttEvent, privateTo, type Receipt, type TextMessage } from "./ptt.js";
export { readClaims, type Role, type TokenClaims } from "./token.js";
export { type AuthMode, HandshakeError, type WebSocketConstructor, type WebSocketLike } from "./transport.js";
