//! WebSocket close codes the router sends. 1000–1015 are RFC 6455's; 4000–4999 are
//! reserved for applications and listed in `docs/PROTOCOL.md`.

/// Standard: a normal close; the answer to a client's Close frame without a code.
pub const NORMAL: u16 = 1000;
/// Standard: the client broke the WebSocket protocol (bad framing, a bad close code).
pub const PROTOCOL_ERROR: u16 = 1002;
/// Standard: a text frame or close reason that is not UTF-8.
pub const INVALID_PAYLOAD: u16 = 1007;
/// Standard: a frame or fragmented message was left unfinished past `--frame-timeout-ms`.
pub const POLICY_VIOLATION: u16 = 1008;
/// Standard: the client's message exceeded `--max-frame-bytes`.
pub const MESSAGE_TOO_BIG: u16 = 1009;
/// Standard: the router is shutting down; reconnect (to another router) now.
pub const SERVICE_RESTART: u16 = 1012;
/// The token expired (its `exp` plus the leeway passed) and no REFRESH replaced it.
pub const TOKEN_EXPIRED: u16 = 4001;
/// No heartbeat within the idle timeout (a little over the presence TTL).
pub const HEARTBEAT_TIMEOUT: u16 = 4000;
/// The client did not read its frames fast enough (dashboard ring overrun or write timeout).
pub const SLOW_CONSUMER: u16 = 4008;
/// A newer connection of the same user and device id replaced this one (the device
/// reconnected, perhaps before this connection's death was noticed).
pub const REPLACED: u16 = 4009;
/// The client kept sending past its budget of frames (any kind, control frames and
/// fragments included) or bytes per second.
pub const RATE_LIMITED: u16 = 4029;
