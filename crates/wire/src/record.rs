//! The TLS 1.3 record layer (RFC 8446 §5) run by hand on keys rustls extracted after its
//! handshake, as kernel TLS does: records are opened in place in the receive buffer (the
//! plaintext shifted over the headers it replaces, in the same pass) and sealed in place in
//! the send buffer. rustls's own stream API copies every byte into and out of its buffers
//! and reads the socket 4 KiB at a time; on a data channel that moves gigabytes those copies
//! cost more than the cipher.
//!
//! Only TLS 1.3 application data is handled after the handshake: a peer's NewSessionTicket is
//! skipped, close_notify ends the stream, and a KeyUpdate (which needs the traffic secret, not
//! just the key) is an error that makes the data channel reconnect. The sealer stops before the
//! AEAD's confidentiality limit for the same reason.

use bytes::BytesMut;
use ring::aead::{self, Aad, LessSafeKey, Nonce, UnboundKey};
use rustls::ConnectionTrafficSecrets;

/// Largest plaintext of one record (2^14).
pub const MAX_PLAINTEXT: usize = 16 * 1024;
/// Record header length.
pub const HEADER_LEN: usize = 5;
/// AEAD tag length of every TLS 1.3 suite.
pub const TAG_LEN: usize = 16;
/// What a record adds to its plaintext: header, content type, tag.
pub const OVERHEAD: usize = HEADER_LEN + 1 + TAG_LEN;
/// Largest ciphertext a peer may send (RFC 8446 §5.2: 2^14 + 256).
const MAX_CIPHERTEXT: usize = MAX_PLAINTEXT + 256;
/// Records sealed under one key before we stop (AES-GCM's limit is 2^24.5, RFC 8446 §5.5).
const MAX_RECORDS: u64 = 1 << 24;

const APPLICATION_DATA: u8 = 0x17;
const ALERT: u8 = 0x15;
const HANDSHAKE: u8 = 0x16;

/// Errors of the record layer.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum RecordError {
    /// A record that is not TLS 1.3 application data, or too long.
    #[error("malformed TLS record")]
    Malformed,
    /// Authentication failed: the record was altered or keys disagree.
    #[error("TLS record failed authentication")]
    Decrypt,
    /// The peer sent an alert other than close_notify.
    #[error("TLS alert {0} from the peer")]
    Alert(u8),
    /// The peer asked to change keys, which this record layer cannot follow.
    #[error("the peer updated its TLS keys; reconnecting")]
    KeyUpdate,
    /// The key has protected as many records as it safely can.
    #[error("TLS record limit of this connection reached; reconnecting")]
    Exhausted,
    /// A cipher suite the record layer does not run.
    #[error("unsupported TLS cipher suite for the data path")]
    Unsupported,
}

/// One direction's AEAD key, IV and sequence number.
pub struct RecordKey {
    key: LessSafeKey,
    iv: [u8; 12],
    seq: u64,
}

impl std::fmt::Debug for RecordKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RecordKey").field("seq", &self.seq).finish()
    }
}

impl RecordKey {
    /// A key from what `dangerous_extract_secrets` gave for one direction.
    pub fn new(seq: u64, secrets: &ConnectionTrafficSecrets) -> Result<RecordKey, RecordError> {
        let (alg, key, iv) = match secrets {
            ConnectionTrafficSecrets::Aes128Gcm { key, iv } => (&aead::AES_128_GCM, key, iv),
            ConnectionTrafficSecrets::Aes256Gcm { key, iv } => (&aead::AES_256_GCM, key, iv),
            ConnectionTrafficSecrets::Chacha20Poly1305 { key, iv } => {
                (&aead::CHACHA20_POLY1305, key, iv)
            }
            _ => return Err(RecordError::Unsupported),
        };
        let unbound = UnboundKey::new(alg, key.as_ref()).map_err(|_| RecordError::Unsupported)?;
        let iv: [u8; 12] = iv
            .as_ref()
            .try_into()
            .map_err(|_| RecordError::Unsupported)?;
        Ok(RecordKey {
            key: LessSafeKey::new(unbound),
            iv,
            seq,
        })
    }

    fn next_nonce(&mut self) -> Result<Nonce, RecordError> {
        if self.seq >= MAX_RECORDS {
            return Err(RecordError::Exhausted);
        }
        let mut n = self.iv;
        for (b, s) in n[4..].iter_mut().zip(self.seq.to_be_bytes()) {
            *b ^= s;
        }
        self.seq += 1;
        Ok(Nonce::assume_unique_for_key(n))
    }

    /// Seals the record that starts at `start` in `buf`: `buf[start..start + 5]` is reserved
    /// for the header and the plaintext (at most [`MAX_PLAINTEXT`]) runs to the end of `buf`.
    /// Appends the content type and the tag and fills in the header.
    pub fn seal(&mut self, buf: &mut Vec<u8>, start: usize) -> Result<(), RecordError> {
        self.seal_typed(buf, start, APPLICATION_DATA)
    }

    /// Seals a close_notify alert record at the end of `buf`.
    pub fn seal_close_notify(&mut self, buf: &mut Vec<u8>) -> Result<(), RecordError> {
        let start = buf.len();
        buf.extend_from_slice(&[0; HEADER_LEN]);
        buf.extend_from_slice(&[1, 0]);
        self.seal_typed(buf, start, ALERT)
    }

    fn seal_typed(&mut self, buf: &mut Vec<u8>, start: usize, ty: u8) -> Result<(), RecordError> {
        buf.push(ty);
        let len = buf.len() - start - HEADER_LEN + TAG_LEN;
        let len16 = u16::try_from(len).map_err(|_| RecordError::Malformed)?;
        let [hi, lo] = len16.to_be_bytes();
        let header = [APPLICATION_DATA, 3, 3, hi, lo];
        buf[start..start + HEADER_LEN].copy_from_slice(&header);
        let nonce = self.next_nonce()?;
        let tag = self
            .key
            .seal_in_place_separate_tag(nonce, Aad::from(header), &mut buf[start + HEADER_LEN..])
            .map_err(|_| RecordError::Malformed)?;
        buf.extend_from_slice(tag.as_ref());
        Ok(())
    }
}

/// What opening the buffered records found.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Opened {
    /// The peer sent close_notify: no more data will come.
    pub closed: bool,
}

/// Opens every complete record in `buf[*plain..]`, appending their application data to the
/// plaintext `buf[..*plain]` (the decryption writes it there directly), and moves a trailing
/// partial record down behind it.
pub fn open_records(
    key: &mut RecordKey,
    buf: &mut BytesMut,
    plain: &mut usize,
) -> Result<Opened, RecordError> {
    let mut opened = Opened::default();
    let end = buf.len();
    let mut pos = *plain;
    while end - pos >= HEADER_LEN && !opened.closed {
        let mut header = [0u8; HEADER_LEN];
        header.copy_from_slice(&buf[pos..pos + HEADER_LEN]);
        let len = usize::from(u16::from_be_bytes([header[3], header[4]]));
        if header[0] != APPLICATION_DATA || !(TAG_LEN + 1..=MAX_CIPHERTEXT).contains(&len) {
            return Err(RecordError::Malformed);
        }
        // `len` is at most MAX_CIPHERTEXT and `pos + HEADER_LEN + len` at most `end` from
        // here on, so none of the sums below can wrap whatever the peer declared.
        if end - pos < HEADER_LEN + len {
            break;
        }
        let nonce = key.next_nonce()?;
        let shift = pos + HEADER_LEN - *plain;
        let inner = key
            .key
            .open_within(
                nonce,
                Aad::from(header),
                &mut buf[*plain..pos + HEADER_LEN + len],
                shift..,
            )
            .map_err(|_| RecordError::Decrypt)?;
        // TLSInnerPlaintext: content, the real content type, then zero padding.
        let Some(ty_at) = inner.iter().rposition(|&b| b != 0) else {
            return Err(RecordError::Malformed);
        };
        match inner[ty_at] {
            APPLICATION_DATA => *plain += ty_at,
            ALERT => match inner.get(..ty_at) {
                Some([_, 0]) => opened.closed = true,
                Some([_, d]) => return Err(RecordError::Alert(*d)),
                _ => return Err(RecordError::Malformed),
            },
            HANDSHAKE => {
                // Post-handshake messages: tickets are of no use here; a key update is.
                let mut msgs = &inner[..ty_at];
                while let [t, l0, l1, l2, rest @ ..] = msgs {
                    if *t == 24 {
                        return Err(RecordError::KeyUpdate);
                    }
                    let l = usize::from(*l0) << 16 | usize::from(*l1) << 8 | usize::from(*l2);
                    msgs = rest.get(l..).unwrap_or_default();
                }
            }
            _ => return Err(RecordError::Malformed),
        }
        pos += HEADER_LEN + len;
    }
    if pos > *plain {
        buf.copy_within(pos..end, *plain);
        buf.truncate(*plain + (end - pos));
    }
    Ok(opened)
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;

    fn pair() -> (RecordKey, RecordKey) {
        let s = || ConnectionTrafficSecrets::Aes256Gcm {
            key: rustls::crypto::cipher::AeadKey::from([7u8; 32]),
            iv: rustls::crypto::cipher::Iv::new([9u8; 12]),
        };
        (
            RecordKey::new(5, &s()).unwrap(),
            RecordKey::new(5, &s()).unwrap(),
        )
    }

    #[test]
    fn sealed_records_open_in_place_with_partial_tails() {
        let (mut tx, mut rx) = pair();
        let data: Vec<u8> = (0..40_000u32).map(|i| (i * 7) as u8).collect();
        let mut wire = Vec::new();
        for chunk in data.chunks(MAX_PLAINTEXT) {
            let start = wire.len();
            wire.extend_from_slice(&[0; HEADER_LEN]);
            wire.extend_from_slice(chunk);
            tx.seal(&mut wire, start).unwrap();
        }
        tx.seal_close_notify(&mut wire).unwrap();
        // Feed it in odd pieces, as a socket would.
        let mut buf = BytesMut::new();
        let mut plain = 0;
        let mut closed = false;
        for piece in wire.chunks(5_001) {
            buf.extend_from_slice(piece);
            closed |= open_records(&mut rx, &mut buf, &mut plain).unwrap().closed;
        }
        assert!(closed);
        assert_eq!(plain, data.len());
        assert_eq!(&buf[..plain], &data[..]);
    }

    #[test]
    fn a_flipped_bit_fails_authentication() {
        let (mut tx, mut rx) = pair();
        let mut wire = vec![0; HEADER_LEN];
        wire.extend_from_slice(b"hello");
        tx.seal(&mut wire, 0).unwrap();
        wire[7] ^= 1;
        let mut buf = BytesMut::from(&wire[..]);
        let mut plain = 0;
        assert_eq!(
            open_records(&mut rx, &mut buf, &mut plain),
            Err(RecordError::Decrypt)
        );
    }

    #[test]
    fn garbage_is_malformed_not_a_panic() {
        let (_, mut rx) = pair();
        for bad in [
            &[0x16u8, 3, 3, 0, 40][..],
            &[0x17, 3, 3, 0xFF, 0xFF],
            &[0x17, 3, 3, 0, 3],
        ] {
            let mut buf = BytesMut::from(bad);
            buf.extend_from_slice(&[0; 64]);
            let mut plain = 0;
            assert_eq!(
                open_records(&mut rx, &mut buf, &mut plain),
                Err(RecordError::Malformed)
            );
        }
    }
}
