//! Opaque list cursors: the `(created_at, id)` keyset position of the last run of a page.

use jiff::Timestamp;

use crate::error::{Error, Result};
use crate::model::RunId;

/// Version tag inside the cursor, so the format can change later.
const PREFIX: &str = "c1:";

/// The position a page ended at; the next page holds runs strictly older.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Position {
    pub(crate) created_at: Timestamp,
    pub(crate) id: RunId,
}

/// Encodes a position as lowercase hex, so it is URL-safe and opaque.
pub(crate) fn encode(created_at: Timestamp, id: &RunId) -> String {
    let plain = format!("{PREFIX}{}:{}", created_at.as_nanosecond(), id.as_str());
    let mut out = String::with_capacity(plain.len() * 2);
    for byte in plain.bytes() {
        out.push(char::from(HEX[usize::from(byte >> 4)]));
        out.push(char::from(HEX[usize::from(byte & 0x0f)]));
    }
    out
}

const HEX: &[u8; 16] = b"0123456789abcdef";

/// Decodes a cursor produced by [`encode`].
pub(crate) fn decode(cursor: &str) -> Result<Position> {
    let invalid = || Error::InvalidCursor { cursor: cursor.to_owned() };
    let hex = cursor.as_bytes();
    if !hex.len().is_multiple_of(2) {
        return Err(invalid());
    }
    let mut bytes = Vec::with_capacity(hex.len() / 2);
    for pair in hex.chunks_exact(2) {
        let high = nibble(pair[0]).ok_or_else(invalid)?;
        let low = nibble(pair[1]).ok_or_else(invalid)?;
        bytes.push(high << 4 | low);
    }
    let plain = String::from_utf8(bytes).map_err(|_| invalid())?;
    let rest = plain.strip_prefix(PREFIX).ok_or_else(invalid)?;
    let (nanos, id) = rest.split_once(':').ok_or_else(invalid)?;
    let nanos: i128 = nanos.parse().map_err(|_| invalid())?;
    let created_at = Timestamp::from_nanosecond(nanos).map_err(|_| invalid())?;
    if id.is_empty() {
        return Err(invalid());
    }
    Ok(Position { created_at, id: RunId::new(id) })
}

/// Version tag of delivery-log cursors.
const DELIVERY_PREFIX: &str = "d1:";

/// Encodes the position of the last delivery of a page (its store sequence).
pub(crate) fn encode_seq(seq: u64) -> String {
    hex(&format!("{DELIVERY_PREFIX}{seq}"))
}

/// Decodes a cursor produced by [`encode_seq`].
pub(crate) fn decode_seq(cursor: &str) -> Result<u64> {
    let invalid = || Error::InvalidCursor { cursor: cursor.to_owned() };
    let plain = unhex(cursor).ok_or_else(invalid)?;
    plain.strip_prefix(DELIVERY_PREFIX).and_then(|n| n.parse().ok()).ok_or_else(invalid)
}

fn hex(plain: &str) -> String {
    let mut out = String::with_capacity(plain.len() * 2);
    for byte in plain.bytes() {
        out.push(char::from(HEX[usize::from(byte >> 4)]));
        out.push(char::from(HEX[usize::from(byte & 0x0f)]));
    }
    out
}

fn unhex(cursor: &str) -> Option<String> {
    let hex = cursor.as_bytes();
    if !hex.len().is_multiple_of(2) {
        return None;
    }
    let mut bytes = Vec::with_capacity(hex.len() / 2);
    for pair in hex.chunks_exact(2) {
        bytes.push(nibble(pair[0])? << 4 | nibble(pair[1])?);
    }
    String::from_utf8(bytes).ok()
}

fn nibble(c: u8) -> Option<u8> {
    match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips() {
        let at = Timestamp::from_nanosecond(1_700_000_000_123_456_789).unwrap();
        let id = RunId::new("0190a3b4-7c1d-7e2f-8a9b-0c1d2e3f4a5b");
        let cursor = encode(at, &id);
        assert_eq!(decode(&cursor).unwrap(), Position { created_at: at, id });
    }

    #[test]
    fn delivery_cursors_round_trip() {
        assert_eq!(decode_seq(&encode_seq(42)).unwrap(), 42);
        let run_cursor = encode(Timestamp::UNIX_EPOCH, &RunId::new("r"));
        assert!(decode_seq(&run_cursor).is_err());
        assert!(decode_seq("zz").is_err());
    }

    #[test]
    fn rejects_garbage() {
        for bad in ["", "zz", "abc", "6331", "not a cursor", "63313a78793a", "63313a313a"] {
            assert!(
                matches!(decode(bad), Err(Error::InvalidCursor { .. })),
                "{bad:?} should be rejected"
            );
        }
    }
}
