//! Signing deliveries: HMAC-SHA256 (RFC 2104) over SHA-256, the Standard
//! Webhooks `webhook-signature` and the `X-Aegis-Signature` header.

use base64::Engine as _;
use sha2::{Digest, Sha256};

/// SHA-256's block size in bytes.
const BLOCK: usize = 64;

/// HMAC-SHA256 of `parts` (hashed one after the other) under `key`.
pub(crate) fn hmac_sha256(key: &[u8], parts: &[&[u8]]) -> [u8; 32] {
    // A key longer than a block is hashed first; a shorter one is zero-padded.
    let mut block = [0u8; BLOCK];
    if key.len() > BLOCK {
        block[..32].copy_from_slice(Sha256::digest(key).as_slice());
    } else {
        block[..key.len()].copy_from_slice(key);
    }
    let mut inner = Sha256::new();
    inner.update(block.map(|b| b ^ 0x36));
    for part in parts {
        inner.update(part);
    }
    let inner = inner.finalize();
    let mut outer = Sha256::new();
    outer.update(block.map(|b| b ^ 0x5c));
    outer.update(inner.as_slice());
    let mut out = [0u8; 32];
    out.copy_from_slice(outer.finalize().as_slice());
    out
}

/// The `webhook-signature` value: `v1,` and the base64 HMAC of
/// `id.timestamp.body`.
pub(crate) fn standard_signature(key: &[u8], id: &str, timestamp: i64, body: &str) -> String {
    let timestamp = timestamp.to_string();
    let mac = hmac_sha256(key, &[id.as_bytes(), b".", timestamp.as_bytes(), b".", body.as_bytes()]);
    format!("v1,{}", base64::engine::general_purpose::STANDARD.encode(mac))
}

/// The `X-Aegis-Signature` value: `sha256=` and the hex HMAC of the body.
pub(crate) fn aegis_signature(key: &[u8], body: &str) -> String {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mac = hmac_sha256(key, &[body.as_bytes()]);
    let mut out = String::with_capacity(7 + 64);
    out.push_str("sha256=");
    for byte in mac {
        out.push(char::from(HEX[usize::from(byte >> 4)]));
        out.push(char::from(HEX[usize::from(byte & 0x0f)]));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hex(bytes: &[u8]) -> String {
        bytes.iter().map(|b| format!("{b:02x}")).collect()
    }

    /// RFC 4231 test cases 1, 2 and 6 (a key longer than a block).
    #[test]
    fn rfc_4231_vectors() {
        let cases: [(&[u8], &[u8], &str); 3] = [
            (
                &[0x0b; 20],
                b"Hi There",
                "b0344c61d8db38535ca8afceaf0bf12b881dc200c9833da726e9376c2e32cff7",
            ),
            (
                b"Jefe",
                b"what do ya want for nothing?",
                "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843",
            ),
            (
                &[0xaa; 131],
                b"Test Using Larger Than Block-Size Key - Hash Key First",
                "60e431591ee0b67f0d8a26aacbf5b77f8e0bc6213728c5140546040f0ee37f54",
            ),
        ];
        for (key, data, expected) in cases {
            assert_eq!(hex(&hmac_sha256(key, &[data])), expected);
        }
        // Parts are hashed as one message.
        assert_eq!(
            hmac_sha256(b"Jefe", &[b"what do ya ", b"want for nothing?"]),
            hmac_sha256(b"Jefe", &[b"what do ya want for nothing?"])
        );
    }

    #[test]
    fn header_formats() {
        let standard = standard_signature(b"key", "msg_1", 1_700_000_000, "{}");
        assert!(standard.starts_with("v1,"), "{standard}");
        assert_eq!(standard.len(), 3 + 44);
        let aegis = aegis_signature(b"key", "{}");
        assert_eq!(aegis.len(), 7 + 64);
        assert!(aegis.starts_with("sha256="));
    }
}
