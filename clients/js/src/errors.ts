/** Errors the client reports, besides {@link HandshakeError} (a refused handshake). */

/**
 * A refusal or failure of one frame: the router's ERROR (33) frame (`code` is its code:
 * `not_a_member`, `floor_not_held`, `token_mismatch`, …), a START_FAILED (`busy`,
 * `already_talking`), or the client's own end of a request: `timeout` (no answer within
 * `requestTimeoutMs`), `disconnected` (the connection ended first), `not_connected`
 * (nothing to send on).
 */
export class RouterError extends Error {
  constructor(
    readonly code: string,
    message: string,
    /** The refused frame's message type, when known. */
    readonly messageType: number | null = null,
    /** The refused frame's message id, when it had one. */
    readonly messageId: unknown = undefined,
  ) {
    super(message);
    this.name = "RouterError";
  }
}

/** The connection closed with a code that tells the client to stop (4009, 4001 without `getToken`). */
export class ClosedError extends Error {
  constructor(
    readonly code: number,
    message: string,
  ) {
    super(message);
    this.name = "ClosedError";
  }
}
