/**
 * One WebSocket to the router, in Node or a browser, behind one small interface.
 *
 * The token travels as docs/PROTOCOL.md ("Handshake") allows:
 * - `header`: headers `token` and `device_id`, as mobile apps send them. Node only (the
 *   `ws` package); browsers cannot set WebSocket headers.
 * - `subprotocol`: `Sec-WebSocket-Protocol: <token>, <deviceId>`; the router echoes one of
 *   them back, as browsers require.
 *
 * A refused handshake is an HTTP error with a JSON body (`{error: {code, message}}`) and
 * maybe `Retry-After`. Node reads it directly. A browser only sees the socket close
 * (1006), so the browser transport then asks the router's HTTP API with the same token,
 * which answers the same token errors, to learn why (when the API is reachable from the
 * page's origin; otherwise the cause stays unknown).
 */

import { readClaims } from "./token.js";

/** Why the router refused a handshake. */
export class HandshakeError extends Error {
  constructor(
    /** HTTP status (401, 429, 503, …). */
    readonly status: number,
    /** The error code of the JSON body (`invalid_token`, `token_expired`, …), or "". */
    readonly code: string,
    message: string,
    /** From `Retry-After`, in ms; null when absent. */
    readonly retryAfterMs: number | null,
  ) {
    super(message);
    this.name = "HandshakeError";
  }
}

export type AuthMode = "header" | "subprotocol";

/** What the client tells the transport. */
export interface TransportHandlers {
  open(): void;
  message(data: Uint8Array): void;
  /** The socket ended: its close code and reason, and the handshake's refusal if it was one. */
  close(code: number, reason: string, refusal: HandshakeError | null): void;
}

/** An open (or opening) socket. */
export interface Transport {
  send(data: Uint8Array): void;
  /** Starts the close handshake. */
  close(code: number, reason?: string): void;
  /** Drops the connection at once, without a close handshake (a zombie). */
  terminate(): void;
  /** Sends a WebSocket ping; `onPong` runs when its pong arrives. Absent in browsers. */
  ping?(onPong: () => void): void;
  /**
   * Whether a refused handshake is always reported with its reason. False in browsers,
   * which learn it only when the router's API can be asked.
   */
  readonly seesRefusals: boolean;
}

/** The browser-style WebSocket constructor (the global one, or one passed in). */
export interface WebSocketLike {
  binaryType: string;
  readonly readyState: number;
  onopen: ((event: unknown) => void) | null;
  onmessage: ((event: { data: unknown }) => void) | null;
  onclose: ((event: { code: number; reason: string }) => void) | null;
  onerror: ((event: unknown) => void) | null;
  send(data: Uint8Array): void;
  close(code?: number, reason?: string): void;
}
export type WebSocketConstructor = new (url: string, protocols?: string | string[]) => WebSocketLike;

export interface Connect {
  url: string;
  token: string;
  deviceId?: string;
  auth: AuthMode;
  /** A constructor to use instead of `ws` (Node) or the global WebSocket (browsers). */
  WebSocket?: WebSocketConstructor;
  handlers: TransportHandlers;
}

/** True in Node (and runtimes that mimic it), where the `ws` package is used. */
export function isNode(): boolean {
  const process = (globalThis as { process?: { versions?: { node?: string } } }).process;
  return typeof process?.versions?.node === "string";
}

/** Opens a socket with the `ws` package (Node) or a browser-style WebSocket. */
export async function openTransport(options: Connect): Promise<Transport> {
  if (options.WebSocket || !isNode()) return openBrowser(options);
  return openNode(options);
}

function protocols(token: string, deviceId?: string): string[] {
  return deviceId ? [token, deviceId] : [token];
}

async function openNode({ url, token, deviceId, auth, handlers }: Connect): Promise<Transport> {
  const { default: WebSocket } = await import("ws");
  const headers: Record<string, string> = {};
  if (auth === "header") {
    headers.token = token;
    if (deviceId) headers.device_id = deviceId;
  }
  const ws = new WebSocket(url, auth === "subprotocol" ? protocols(token, deviceId) : [], {
    headers,
    perMessageDeflate: false,
    handshakeTimeout: 15_000,
  });
  let refusal: HandshakeError | null = null;
  ws.on("unexpected-response", (_request, response) => {
    const chunks: Buffer[] = [];
    response.on("data", (chunk: Buffer) => chunks.push(chunk));
    response.on("end", () => {
      refusal = refusalFrom(
        response.statusCode ?? 0,
        Buffer.concat(chunks).toString("utf8"),
        response.headers["retry-after"] ?? null,
      );
      // Aborts the handshake: `ws` then emits "close" (1006), which reports the refusal.
      ws.terminate();
    });
    response.on("error", () => ws.terminate());
  });
  ws.on("open", () => handlers.open());
  ws.on("message", (data, isBinary) => {
    if (isBinary) handlers.message(toBytes(data));
  });
  ws.on("error", () => {
    // Always followed by "close", which reports the end.
  });
  ws.on("close", (code, reason) => handlers.close(code, reason.toString("utf8"), refusal));
  return {
    seesRefusals: true,
    send: (data) => ws.send(data),
    close: (code, reason) => ws.close(code, reason),
    terminate: () => ws.terminate(),
    ping: (onPong) => {
      ws.once("pong", onPong);
      ws.ping();
    },
  };
}

/** The message as a plain Uint8Array (a view, not a Buffer), as browsers give it. */
function toBytes(data: Buffer | ArrayBuffer | Buffer[]): Uint8Array {
  if (data instanceof ArrayBuffer) return new Uint8Array(data);
  const buffer = Array.isArray(data) ? Buffer.concat(data) : data;
  return new Uint8Array(buffer.buffer, buffer.byteOffset, buffer.byteLength);
}

async function openBrowser({ url, token, deviceId, handlers, WebSocket }: Connect): Promise<Transport> {
  const Ctor = WebSocket ?? (globalThis as { WebSocket?: WebSocketConstructor }).WebSocket;
  if (!Ctor) throw new Error("no WebSocket implementation: pass one as the `WebSocket` option");
  const ws = new Ctor(url, protocols(token, deviceId));
  ws.binaryType = "arraybuffer";
  let opened = false;
  let ended = false;
  const end = (code: number, reason: string, refusal: HandshakeError | null) => {
    if (ended) return;
    ended = true;
    ws.onopen = ws.onmessage = ws.onclose = null;
    handlers.close(code, reason, refusal);
  };
  // Always followed by a close, which reports the end. Set for good: the `ws` package (an
  // EventEmitter, usable as the `WebSocket` option) throws an "error" nobody listens to.
  ws.onerror = () => {};
  ws.onopen = () => {
    opened = true;
    handlers.open();
  };
  ws.onmessage = (event) => {
    if (event.data instanceof ArrayBuffer) handlers.message(new Uint8Array(event.data));
  };
  ws.onclose = (event) => {
    if (opened) return end(event.code, event.reason, null);
    // Never opened: the browser hides the handshake's answer. Ask the API why.
    void diagnose(url, token).then((refusal) => end(event.code, event.reason, refusal));
  };
  return {
    seesRefusals: false,
    send: (data) => ws.send(data),
    close: (code, reason) => ws.close(code, reason),
    // A browser cannot drop a socket without its close handshake; stop listening instead,
    // so the client moves on at once, and let the close finish in the background.
    terminate: () => {
      ws.close(1000, "no answer");
      end(1006, "no answer from the router", null);
    },
  };
}

/**
 * The router's HTTP answer to `token` on its API, as a handshake refusal, or null when it
 * accepts the token or cannot be asked (another origin without CORS, network down).
 *
 * Only an answer that says something is a refusal: 401 (the token is refused), 429 and
 * 5xx (wait, then retry). Any other (404 from a proxy that does not route the API, 400, …)
 * says nothing about the handshake, so the cause stays unknown and the client retries.
 */
async function diagnose(url: string, token: string): Promise<HandshakeError | null> {
  const fetch = (globalThis as { fetch?: typeof globalThis.fetch }).fetch;
  if (!fetch) return null;
  try {
    const api = apiUrl(url, `users/${encodeURIComponent(readClaims(token).sub ?? "_")}/presence`);
    const response = await fetch(api, { headers: { authorization: `Bearer ${token}` } });
    if (response.status !== 401 && response.status !== 429 && response.status < 500) return null;
    return refusalFrom(response.status, await response.text(), response.headers.get("retry-after"));
  } catch {
    return null;
  }
}

/**
 * The router's API URL for `route` (`users/u1/presence`) beside its WebSocket URL: the
 * WebSocket's path with its last segment (`ws`, or none for `/`) replaced by `api/...`, so
 * a router under a path prefix (`wss://host/presence/ws`) is asked at
 * `https://host/presence/api/...`.
 */
export function apiUrl(url: string, route: string): URL {
  const api = new URL(url);
  api.protocol = api.protocol === "wss:" ? "https:" : api.protocol === "ws:" ? "http:" : api.protocol;
  api.pathname = `${api.pathname.replace(/\/ws\/?$/, "/").replace(/\/?$/, "/")}api/${route}`;
  api.search = api.hash = "";
  return api;
}

function refusalFrom(status: number, body: string, retryAfter: string | string[] | null): HandshakeError {
  let code = "";
  let message = `the router refused the connection with HTTP ${status}`;
  try {
    const error = (JSON.parse(body) as { error?: { code?: unknown; message?: unknown } }).error;
    if (typeof error?.code === "string") code = error.code;
    if (typeof error?.message === "string") message = `${message}: ${error.code}: ${error.message}`;
  } catch {
    // Not JSON (431 has no body): the status says it.
  }
  const seconds = Number(Array.isArray(retryAfter) ? retryAfter[0] : retryAfter);
  return new HandshakeError(status, code, message, retryAfter !== null && Number.isFinite(seconds) ? seconds * 1000 : null);
}
