/**
 * The wire format: msgpack arrays in VoicePing's layout (docs/PROTOCOL.md, "Frames").
 *
 *     [channelType, messageType, fromId, toId, payload]
 *     [channelType, messageType, fromId, toId, messageId, payload]
 *     [channelType, messageType, fromId, toId]
 *
 * Frames the router sends on its own have six elements (payload at index 5); what it
 * relays keeps the sender's layout. {@link decodeFrame} reads all three shapes.
 */
import { decode, encode } from "@msgpack/msgpack";

/** `channelType` (index 0). */
export const ChannelType = { GROUP: 0, PRIVATE: 1 } as const;

/** `messageType` (index 1), as docs/PROTOCOL.md numbers them. */
export const MessageType = {
  START: 1,
  STOP: 2,
  AUDIO: 3,
  START_ACK: 6,
  STOP_ACK: 7,
  START_FAILED: 8,
  USER_ADD: 15,
  USER_REMOVE: 16,
  TEXT: 17,
  DELIVERED: 20,
  READ: 21,
  TEXT_ACK: 22,
  HEARTBEAT: 30,
  PRESENCE_UPDATE: 31,
  PRESENCE_SNAPSHOT: 32,
  ERROR: 33,
  HEARTBEAT_ACK: 34,
  STATUS: 35,
  ACTIVITY: 36,
  INDICATOR: 37,
  INDICATOR_UPDATE: 38,
  ACK: 39,
  REFRESH: 40,
  RESUMED: 41,
  STALE: 43,
  FRESH: 44,
  SUBSCRIBE: 45,
  UNSUBSCRIBE: 46,
  GROUP_COUNTS: 47,
  GROUP_SNAPSHOT: 48,
} as const;

/** A user or group id: the router treats `123` and `"123"` alike and writes strings. */
export type Id = string | number;

/** One decoded frame, whichever of the three layouts it came in. */
export interface Frame {
  channelType: number;
  messageType: number;
  /** `null` when the frame names no sender (`nil`, `0` or `""`): the router's own frames. */
  fromId: string | null;
  /** `null` when the frame names no receiver. */
  toId: string | null;
  /** Index 4 of a six-element frame (a sequence number, a message id, …); else undefined. */
  messageId: unknown;
  /** The last element of a five- or six-element frame; `null` for four elements. */
  payload: unknown;
  /** How many elements the frame had (4, 5 or 6). */
  length: number;
}

/** Reads an id field: `nil`, `0` and `""` mean "no id"; numbers become their decimal text. */
export function readId(value: unknown): string | null {
  if (value === null || value === undefined || value === 0 || value === "") return null;
  if (typeof value === "string") return value;
  if (typeof value === "number" || typeof value === "bigint") return String(value);
  return null;
}

/**
 * Decodes one binary WebSocket message.
 *
 * @throws {Error} when the bytes are not msgpack or not a 4-, 5- or 6-element array with
 * numeric channel and message types (the router never sends such a frame).
 */
export function decodeFrame(bytes: Uint8Array): Frame {
  const value = decode(bytes);
  if (!Array.isArray(value) || value.length < 4 || value.length > 6) {
    throw new Error("not a 4-, 5- or 6-element msgpack array");
  }
  const [channelType, messageType, fromId, toId] = value;
  if (typeof channelType !== "number" || typeof messageType !== "number") {
    throw new Error("channelType and messageType must be numbers");
  }
  return {
    channelType,
    messageType,
    fromId: readId(fromId),
    toId: readId(toId),
    messageId: value.length === 6 ? value[4] : undefined,
    payload: value.length === 4 ? null : value[value.length - 1],
    length: value.length,
  };
}

/**
 * Encodes a frame; with a `messageId` (not undefined) it has six elements, else five.
 * Ids are sent as given; `0` stands for "no id" as the protocol's examples write it.
 */
export function encodeFrame(
  channelType: number,
  messageType: number,
  fromId: Id,
  toId: Id | null,
  payload: unknown,
  messageId?: unknown,
): Uint8Array {
  const head = [channelType, messageType, fromId, toId ?? 0];
  return encode(messageId === undefined ? [...head, payload] : [...head, messageId, payload]);
}

/** A decoded map payload, or an empty object when the payload is not a map. */
export function payloadMap(payload: unknown): Record<string, unknown> {
  return payload !== null && typeof payload === "object" && !Array.isArray(payload) && !(payload instanceof Uint8Array)
    ? (payload as Record<string, unknown>)
    : {};
}
