//! The webhook signature: `X-Presence-Signature: t=<unix seconds>,v1=<hex HMAC-SHA256 of
//! "<t>.<body>" under --webhook-secret>`, Stripe's scheme. The timestamp is signed with
//! the body, so a receiver that refuses old timestamps refuses replays of a captured
//! request too.

use hmac::{Hmac, Mac};
use sha2::Sha256;

/// The header the signature travels in.
pub const HEADER: &str = "X-Presence-Signature";

/// The header's value for `body` sent at `unix_secs`.
pub fn sign(secret: &[u8], unix_secs: u64, body: &[u8]) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(secret).expect("HMAC takes a key of any length");
    mac.update(unix_secs.to_string().as_bytes());
    mac.update(b".");
    mac.update(body);
    let hex: String = mac.finalize().into_bytes().iter().map(|b| format!("{b:02x}")).collect();
    format!("t={unix_secs},v1={hex}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_signature_is_the_hmac_of_the_timestamp_and_the_body() {
        // python3 -c 'import hmac,hashlib;print(hmac.new(b"0123456789abcdef0123456789abcdef",
        //   b"1700000000.{\"events\":[]}", hashlib.sha256).hexdigest())'
        assert_eq!(
            sign(b"0123456789abcdef0123456789abcdef", 1_700_000_000, br#"{"events":[]}"#),
            "t=1700000000,v1=df29826f9365a4c39eb569c867ae31fb39108dee0a0b3e4bcf09f11a0ba43081"
        );
    }
}
