//! RFC 6455 framing, server side: parse client frame headers, unmask payloads, encode the
//! headers of frames we send, and check close payloads. Pure functions; the socket in
//! `socket.rs` drives them.
//!
//! The router speaks no extensions (no permessage-deflate is negotiated), so a frame
//! with a reserved bit set is a protocol violation, as is an unmasked client frame, an
//! unknown opcode, a fragmented or oversized control frame, or a 64-bit length with its
//! top bit set.

/// Why a peer's bytes are not an acceptable WebSocket stream; each maps to the close
/// code RFC 6455 names for it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Violation {
    /// Malformed framing: reserved bits, unknown opcode, unmasked frame, bad control
    /// frame, a 64-bit length with its top bit set, continuation without a start, a new
    /// message inside a fragmented one, a bad close code. Closed with 1002.
    #[error("protocol error: {0}")]
    Protocol(&'static str),
    /// A text frame or close reason that is not UTF-8. Closed with 1007.
    #[error("invalid UTF-8")]
    InvalidUtf8,
    /// A frame or reassembled message larger than `--max-frame-bytes`. Closed with 1009.
    #[error("message too big")]
    TooBig,
    /// A frame or fragmented message begun and left unfinished past `--frame-timeout-ms`.
    /// Closed with 1008.
    #[error("message not finished in time")]
    Unfinished,
}

impl Violation {
    /// The close code RFC 6455 assigns to this violation.
    pub fn close_code(self) -> u16 {
        match self {
            Violation::Protocol(_) => super::close::PROTOCOL_ERROR,
            Violation::InvalidUtf8 => super::close::INVALID_PAYLOAD,
            Violation::TooBig => super::close::MESSAGE_TOO_BIG,
            Violation::Unfinished => super::close::POLICY_VIOLATION,
        }
    }

    /// A low-cardinality metric label.
    pub fn reason(self) -> &'static str {
        match self {
            Violation::Protocol(_) => "protocol",
            Violation::InvalidUtf8 => "invalid_utf8",
            Violation::TooBig => "too_big",
            Violation::Unfinished => "unfinished",
        }
    }
}

/// Opcode bits (RFC 6455 section 5.2), for code that writes raw frames.
pub mod opcode {
    pub const CONTINUATION: u8 = 0x0;
    pub const TEXT: u8 = 0x1;
    pub const BINARY: u8 = 0x2;
    pub const CLOSE: u8 = 0x8;
    pub const PING: u8 = 0x9;
    pub const PONG: u8 = 0xA;
}

/// Frame opcodes (RFC 6455 section 5.2).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Opcode {
    Continuation,
    Text,
    Binary,
    Close,
    Ping,
    Pong,
}

impl Opcode {
    fn from_bits(bits: u8) -> Option<Opcode> {
        Some(match bits {
            opcode::CONTINUATION => Opcode::Continuation,
            opcode::TEXT => Opcode::Text,
            opcode::BINARY => Opcode::Binary,
            opcode::CLOSE => Opcode::Close,
            opcode::PING => Opcode::Ping,
            opcode::PONG => Opcode::Pong,
            _ => return None,
        })
    }

    fn bits(self) -> u8 {
        match self {
            Opcode::Continuation => opcode::CONTINUATION,
            Opcode::Text => opcode::TEXT,
            Opcode::Binary => opcode::BINARY,
            Opcode::Close => opcode::CLOSE,
            Opcode::Ping => opcode::PING,
            Opcode::Pong => opcode::PONG,
        }
    }

    pub fn is_control(self) -> bool {
        matches!(self, Opcode::Close | Opcode::Ping | Opcode::Pong)
    }
}

/// A parsed client frame header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    pub fin: bool,
    pub opcode: Opcode,
    pub mask: [u8; 4],
    /// Payload length in bytes.
    pub len: usize,
    /// Bytes the header itself takes (2 to 14).
    pub header_len: usize,
}

/// Control frames carry at most this many payload bytes.
const MAX_CONTROL_PAYLOAD: usize = 125;

/// Parses the header at the start of `buf`: `Ok(None)` while incomplete. A data frame
/// whose payload is longer than `max_payload` is refused as soon as its length is known,
/// before any of it is buffered.
pub fn parse_header(buf: &[u8], max_payload: usize) -> Result<Option<Header>, Violation> {
    let [b0, b1, ..] = *buf else { return Ok(None) };
    if b0 & 0x70 != 0 {
        return Err(Violation::Protocol("reserved bits set without a negotiated extension"));
    }
    let opcode = Opcode::from_bits(b0 & 0x0F).ok_or(Violation::Protocol("unknown opcode"))?;
    let fin = b0 & 0x80 != 0;
    if b1 & 0x80 == 0 {
        return Err(Violation::Protocol("client frames must be masked"));
    }
    let (len, mut at) = match b1 & 0x7F {
        126 => match buf.get(2..4) {
            Some(bytes) => (u64::from(u16::from_be_bytes([bytes[0], bytes[1]])), 4),
            None => return Ok(None),
        },
        127 => match buf.get(2..10) {
            // RFC 6455 section 5.2: the most significant bit must be 0.
            Some(bytes) if bytes[0] & 0x80 != 0 => {
                return Err(Violation::Protocol("a 64-bit payload length with its top bit set"));
            }
            Some(bytes) => (u64::from_be_bytes(bytes.try_into().expect("8 bytes")), 10),
            None => return Ok(None),
        },
        short => (u64::from(short), 2),
    };
    if opcode.is_control() && (!fin || len > MAX_CONTROL_PAYLOAD as u64) {
        return Err(Violation::Protocol("control frames must be whole and at most 125 bytes"));
    }
    if !opcode.is_control() && len > max_payload as u64 {
        return Err(Violation::TooBig);
    }
    let Some(mask) = buf.get(at..at + 4) else { return Ok(None) };
    let mask = mask.try_into().expect("4 bytes");
    at += 4;
    Ok(Some(Header { fin, opcode, mask, len: len as usize, header_len: at }))
}

/// Unmasks (or masks: the operation is its own inverse) `payload` in place.
pub fn unmask(payload: &mut [u8], mask: [u8; 4]) {
    for (i, byte) in payload.iter_mut().enumerate() {
        *byte ^= mask[i & 3];
    }
}

/// An encoded server frame header: unmasked, final, at most 10 bytes.
#[derive(Debug, Clone, Copy)]
pub struct OutHeader {
    bytes: [u8; 10],
    len: u8,
}

impl OutHeader {
    /// The header of a final, unfragmented frame carrying `payload_len` bytes.
    pub fn new(opcode: Opcode, payload_len: usize) -> OutHeader {
        let mut bytes = [0u8; 10];
        bytes[0] = 0x80 | opcode.bits();
        let len = if payload_len < 126 {
            bytes[1] = payload_len as u8;
            2
        } else if let Ok(short) = u16::try_from(payload_len) {
            bytes[1] = 126;
            bytes[2..4].copy_from_slice(&short.to_be_bytes());
            4
        } else {
            bytes[1] = 127;
            bytes[2..10].copy_from_slice(&(payload_len as u64).to_be_bytes());
            10
        };
        OutHeader { bytes, len }
    }

    pub fn as_slice(&self) -> &[u8] {
        &self.bytes[..usize::from(self.len)]
    }

    pub fn opcode(&self) -> Opcode {
        Opcode::from_bits(self.bytes[0] & 0x0F).expect("built from an Opcode")
    }
}

/// A client's frame, masked as RFC 6455 requires of clients: `fin`, the raw `opcode` bits
/// (reserved ones too) and `payload`. The router never sends one; the load tool and the
/// tests do, to write what no client library would (floods, fragments, violations).
pub fn masked_frame(fin: bool, opcode: u8, payload: &[u8]) -> Vec<u8> {
    const MASK: [u8; 4] = [0x37, 0xFA, 0x21, 0x3D];
    let mut out = Vec::with_capacity(payload.len() + 14);
    out.push(if fin { 0x80 } else { 0 } | (opcode & 0x0F));
    match payload.len() {
        n if n < 126 => out.push(0x80 | n as u8),
        n if n <= 0xFFFF => {
            out.push(0x80 | 126);
            out.extend_from_slice(&(n as u16).to_be_bytes());
        }
        n => {
            out.push(0x80 | 127);
            out.extend_from_slice(&(n as u64).to_be_bytes());
        }
    }
    out.extend_from_slice(&MASK);
    out.extend(payload.iter().enumerate().map(|(i, b)| b ^ MASK[i & 3]));
    out
}

/// Close codes a peer may send (RFC 6455 section 7.4 and IANA's registry): 1000–1003,
/// 1007–1014 and the 3000–4999 range; 1004–1006 and 1015 are reserved for local use and
/// never sent.
fn is_valid_close_code(code: u16) -> bool {
    matches!(code, 1000..=1003 | 1007..=1014 | 3000..=4999)
}

/// The code of a close frame's payload: `None` for an empty payload. A one-byte payload,
/// an invalid code or a reason that is not UTF-8 is a violation.
pub fn close_code(payload: &[u8]) -> Result<Option<u16>, Violation> {
    match payload {
        [] => Ok(None),
        [_] => Err(Violation::Protocol("a close payload needs a two-byte code")),
        [hi, lo, reason @ ..] => {
            let code = u16::from_be_bytes([*hi, *lo]);
            if !is_valid_close_code(code) {
                return Err(Violation::Protocol("invalid close code"));
            }
            std::str::from_utf8(reason).map_err(|_| Violation::InvalidUtf8)?;
            Ok(Some(code))
        }
    }
}

/// The payload of a close frame: the code, then the reason truncated to fit a control
/// frame on a character boundary.
pub fn close_payload(code: u16, reason: &str) -> Vec<u8> {
    let mut end = reason.len().min(MAX_CONTROL_PAYLOAD - 2);
    while !reason.is_char_boundary(end) {
        end -= 1;
    }
    let mut payload = Vec::with_capacity(2 + end);
    payload.extend_from_slice(&code.to_be_bytes());
    payload.extend_from_slice(&reason.as_bytes()[..end]);
    payload
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    #[test]
    fn parses_the_three_length_forms() {
        for len in [0, 125, 126, 65_535, 65_536] {
            let payload = vec![7u8; len];
            let bytes = masked_frame(true, 0x2, &payload);
            let header = parse_header(&bytes, 1 << 20).unwrap().unwrap();
            assert_eq!((header.fin, header.opcode, header.len), (true, Opcode::Binary, len));
            assert_eq!(header.header_len + len, bytes.len());
            let mut body = bytes[header.header_len..].to_vec();
            unmask(&mut body, header.mask);
            assert_eq!(body, payload);
            // Every strict prefix of the header is "not yet".
            for cut in 0..header.header_len {
                assert_eq!(parse_header(&bytes[..cut], 1 << 20), Ok(None));
            }
        }
    }

    #[test]
    fn violations_map_to_their_close_codes() {
        let frame = |first: u8, payload: &[u8]| {
            let mut bytes = masked_frame(first & 0x80 != 0, first & 0x0F, payload);
            bytes[0] |= first & 0x70;
            bytes
        };
        let cases: [(Vec<u8>, u16); 6] = [
            (frame(0xC2, b"x"), 1002),       // RSV1 without permessage-deflate
            (frame(0x83, b"x"), 1002),       // reserved opcode 3
            (vec![0x82, 0x01, b'x'], 1002),  // unmasked
            (frame(0x09, b"p"), 1002),       // fragmented ping
            (frame(0x89, &[0; 126]), 1002),  // control frame over 125 bytes
            (frame(0x82, &[0; 2000]), 1009), // over the payload cap
        ];
        for (bytes, code) in cases {
            assert_eq!(parse_header(&bytes, 1000).unwrap_err().close_code(), code, "{bytes:02x?}");
        }
    }

    #[test]
    fn an_oversized_length_is_refused_before_its_payload_arrives() {
        let mut header = vec![0x82, 0x80 | 127];
        header.extend_from_slice(&(u64::MAX >> 1).to_be_bytes());
        assert_eq!(parse_header(&header, 65_536), Err(Violation::TooBig));
        // A length with the top bit set is no length at all (RFC 6455 section 5.2).
        let mut header = vec![0x82, 0x80 | 127];
        header.extend_from_slice(&u64::MAX.to_be_bytes());
        assert!(matches!(parse_header(&header, 65_536), Err(Violation::Protocol(_))));
    }

    #[test]
    fn close_payloads() {
        assert_eq!(close_code(&[]), Ok(None));
        assert_eq!(close_code(&[0x03, 0xE8]), Ok(Some(1000)));
        assert_eq!(close_code(&[0x0F, 0xA0, b'o', b'k']), Ok(Some(4000)));
        assert_eq!(close_code(&1012u16.to_be_bytes()), Ok(Some(1012)), "service restart, as routers send it");
        assert!(matches!(close_code(&[0x03]), Err(Violation::Protocol(_))));
        for reserved in [999u16, 1004, 1005, 1006, 1015, 2999, 5000] {
            assert!(matches!(close_code(&reserved.to_be_bytes()), Err(Violation::Protocol(_))), "{reserved}");
        }
        assert_eq!(close_code(&[0x03, 0xE8, 0xFF, 0xFE]), Err(Violation::InvalidUtf8));
        let long = "é".repeat(100);
        let payload = close_payload(4008, &long);
        assert!(payload.len() <= MAX_CONTROL_PAYLOAD);
        assert_eq!(close_code(&payload), Ok(Some(4008)));
    }

    #[test]
    fn server_headers() {
        assert_eq!(OutHeader::new(Opcode::Binary, 5).as_slice(), [0x82, 5]);
        assert_eq!(OutHeader::new(Opcode::Pong, 0).as_slice(), [0x8A, 0]);
        assert_eq!(OutHeader::new(Opcode::Binary, 300).as_slice(), [0x82, 126, 1, 44]);
        assert_eq!(OutHeader::new(Opcode::Binary, 70_000).as_slice(), [0x82, 127, 0, 0, 0, 0, 0, 1, 0x11, 0x70]);
    }

    proptest! {
        /// Any bytes parse to a header, "not yet" or a violation; never a panic, and a
        /// parsed header never claims more than the cap.
        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..32)) {
            if let Ok(Some(header)) = parse_header(&bytes, 4096) {
                prop_assert!(header.len <= 4096);
                prop_assert!(header.header_len <= 14);
            }
            let _ = close_code(&bytes);
        }
    }
}
