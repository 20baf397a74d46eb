//! One record on disk: a 16-byte header, then the body.
//!
//! ```text
//! | body length: u32 LE | CRC-32 of (lsn, length, body): u32 LE | lsn: u64 LE | body |
//! ```
//!
//! The checksum covers the sequence number and the length as well as the body, so a
//! header torn or overwritten by zeros (what a file extended by a crash reads as) never
//! passes for a record.

/// Bytes before the body.
pub const HEADER_LEN: usize = 16;

/// The largest body a record may carry; a header claiming more is damage.
pub const MAX_BODY_LEN: usize = 64 << 20;

/// A record's sequence number: consecutive from 1 over the log's whole life.
pub type Lsn = u64;

/// Appends the record `lsn` with `body` to `out`.
///
/// # Panics
/// When `body` is longer than [`MAX_BODY_LEN`]: callers bound what they log.
pub fn encode(lsn: Lsn, body: &[u8], out: &mut Vec<u8>) {
    assert!(body.len() <= MAX_BODY_LEN, "a log record's body is bounded");
    let len = u32::try_from(body.len()).expect("MAX_BODY_LEN fits in u32");
    out.reserve(HEADER_LEN + body.len());
    out.extend_from_slice(&len.to_le_bytes());
    out.extend_from_slice(&checksum(lsn, len, body).to_le_bytes());
    out.extend_from_slice(&lsn.to_le_bytes());
    out.extend_from_slice(body);
}

/// A record read back.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Frame<'a> {
    /// Its sequence number.
    pub lsn: Lsn,
    /// Its body.
    pub body: &'a [u8],
    /// Its whole length on disk, header included.
    pub len: usize,
}

/// Why the bytes at some offset are not a whole record.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Torn {
    /// Fewer bytes than a header, or than the body the header announces.
    #[error("the record is cut short")]
    Short,
    /// The header announces a body longer than any record may be.
    #[error("the record's length is out of range")]
    Length,
    /// The checksum does not hold.
    #[error("the record's checksum does not match")]
    Checksum,
}

/// Reads the record at the start of `bytes`.
pub fn decode(bytes: &[u8]) -> Result<Frame<'_>, Torn> {
    let header = bytes.get(..HEADER_LEN).ok_or(Torn::Short)?;
    let len = u32::from_le_bytes(header[0..4].try_into().expect("4 bytes"));
    let crc = u32::from_le_bytes(header[4..8].try_into().expect("4 bytes"));
    let lsn = u64::from_le_bytes(header[8..16].try_into().expect("8 bytes"));
    let body_len = usize::try_from(len).map_err(|_| Torn::Length)?;
    if body_len > MAX_BODY_LEN {
        return Err(Torn::Length);
    }
    let body = bytes
        .get(HEADER_LEN..HEADER_LEN + body_len)
        .ok_or(Torn::Short)?;
    if checksum(lsn, len, body) != crc {
        return Err(Torn::Checksum);
    }
    Ok(Frame {
        lsn,
        body,
        len: HEADER_LEN + body_len,
    })
}

fn checksum(lsn: Lsn, len: u32, body: &[u8]) -> u32 {
    let mut hasher = crc32fast::Hasher::new();
    hasher.update(&lsn.to_le_bytes());
    hasher.update(&len.to_le_bytes());
    hasher.update(body);
    hasher.finalize()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_record_reads_back_and_any_damage_is_seen() {
        let mut bytes = Vec::new();
        encode(7, b"hello", &mut bytes);
        let frame = decode(&bytes).unwrap();
        assert_eq!(
            (frame.lsn, frame.body, frame.len),
            (7, &b"hello"[..], bytes.len())
        );
        for cut in 0..bytes.len() {
            assert_eq!(decode(&bytes[..cut]), Err(Torn::Short), "cut at {cut}");
        }
        for at in 0..bytes.len() {
            let mut damaged = bytes.clone();
            damaged[at] ^= 0x40;
            assert!(decode(&damaged).is_err(), "flipped a bit of byte {at}");
        }
        assert!(decode(&[0u8; 64]).is_err(), "zeros are no record");
    }
}
