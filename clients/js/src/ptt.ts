/**
 * Push-to-talk and text as the router relays them (docs/PROTOCOL.md, "Push-to-talk"):
 * channels, and the payload conventions receivers read (VoicePing's JSON strings for STOP
 * and TEXT).
 */
import { ChannelType, type Frame, type Id, payloadMap, readId } from "./frames.js";

/** A PTT/text channel: a group, or the private channel with one user (oneself included). */
export type Channel = { type: "group"; id: string } | { type: "private"; id: string };

/** The channel of group `id`. */
export const group = (id: Id): Channel => ({ type: "group", id: String(id) });

/** The private channel with user `id`. */
export const privateTo = (id: Id): Channel => ({ type: "private", id: String(id) });

export const channelType = (channel: Channel): number =>
  channel.type === "group" ? ChannelType.GROUP : ChannelType.PRIVATE;

/**
 * The channel a relayed frame belongs to, as its receiver `me` sees it: the group, or on a
 * private channel the other user (`me` for the channel to oneself). A frame of the router's
 * own (no `fromId`) names its channel in `toId`.
 */
export function channelOf(frame: Frame, me: string): Channel | null {
  if (frame.channelType === ChannelType.GROUP) return frame.toId === null ? null : group(frame.toId);
  // The router's own frames name no sender: their toId is the channel.
  const other = frame.fromId === me || frame.fromId === null ? frame.toId : frame.fromId;
  return other === null ? null : privateTo(other);
}

/** A START, AUDIO or STOP received from a talker, or the router ending this client's talk. */
export interface PttEvent {
  /**
   * `start`, `audio`, `stop`: relayed from `from`. `ended`: the router ended this client's
   * own talk (`reason`: `max_talk_time`, `idle`, `not_a_member`, …); its AUDIO is dropped
   * from then on.
   */
  type: "start" | "audio" | "stop" | "ended";
  channel: Channel;
  /** The talker. */
  from: string;
  /** The frame's payload as sent (audio bytes, the START's payload, the STOP's JSON text). */
  payload: unknown;
  /** `audio`: the bytes (when the payload is binary). */
  audio?: Uint8Array;
  /** `stop`, `ended`: the talk's message id. */
  messageId?: string | null;
  /** `stop`, `ended`: ms from START_ACK to the stop. */
  durationMs?: number | null;
  /** `stop`, `ended`: why the router ended the talk; absent when the talker stopped. */
  reason?: string;
}

/** A TEXT received. */
export interface TextMessage {
  channel: Channel;
  from: string;
  /** The text, when the payload carried one (plain, or VoicePing's `{message_id, text}`). */
  text: string | null;
  messageId: string | null;
  /** The payload as relayed (a map payload keeps its fields). */
  payload: unknown;
}

/** A DELIVERED (20) or READ (21) receipt for a message this user sent. */
export interface Receipt {
  type: "delivered" | "read";
  /** Who received or read it. */
  from: string;
  /** The message id it names. */
  messageId: unknown;
}

/** Parses a JSON object from a string payload; null when it is not one. */
function jsonObject(payload: unknown): Record<string, unknown> | null {
  if (typeof payload !== "string") return null;
  try {
    const value: unknown = JSON.parse(payload);
    return value !== null && typeof value === "object" && !Array.isArray(value) ? (value as Record<string, unknown>) : null;
  } catch {
    return null;
  }
}

/** A relayed STOP's `{"duration", "message_id", "reason"?}`, or the router's own STOP map. */
export function readStop(payload: unknown): Pick<PttEvent, "messageId" | "durationMs" | "reason"> {
  const map = jsonObject(payload) ?? payloadMap(payload);
  const stop: Pick<PttEvent, "messageId" | "durationMs" | "reason"> = {
    messageId: readId(map.message_id),
    durationMs: typeof map.duration === "number" ? map.duration : null,
  };
  if (typeof map.reason === "string") stop.reason = map.reason;
  return stop;
}

/** A relayed TEXT's text and message id; `fallbackId` is a six-element frame's index 4. */
export function readText(payload: unknown, fallbackId: unknown): Pick<TextMessage, "text" | "messageId"> {
  const map = jsonObject(payload) ?? payloadMap(payload);
  if ("message_id" in map) {
    return { text: typeof map.text === "string" ? map.text : null, messageId: readId(map.message_id) };
  }
  return { text: typeof payload === "string" ? payload : null, messageId: readId(fallbackId) };
}
