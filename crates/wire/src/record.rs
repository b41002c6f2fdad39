//! The TLS 1.3 record layer (RFC 8446 §5) run by hand on keys rustls extracted after its
//! handshake, as kernel TLS does: records are opened in place in the receive buffer (the
//! plaintext shifted over the headers it replaces, in the same pass) and sealed in place in
//! the send buffer. rustls's own stream API copies every byte into and out of its buffers
//! and reads the socket 4 KiB at a time; on a data channel that moves gigabytes those copies
//! cost more than the cipher.
//!
//! After the handshake a peer may send more than application data (RFC 8446 §4.6): a server's
//! NewSessionTicket is skipped (the data path does not resume), close_notify ends the stream,
//! and a KeyUpdate is followed (§4.6.3, §7.2): the traffic secret, which rustls's key log hands
//! over beside the keys ([`TrafficSecretLog`]), is advanced and the key rederived; a request
//! for an update is answered with our own KeyUpdate before our next record. The sealer also
//! updates its own key before the AEAD's confidentiality limit (§5.5). Any other post-handshake
//! message is refused.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use bytes::BytesMut;
use ring::aead::{self, Aad, LessSafeKey, Nonce, UnboundKey};
use ring::hkdf;
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
/// Records sealed or opened under one key before we stop (AES-GCM's limit is 2^24.5, RFC
/// 8446 §5.5).
const MAX_RECORDS: u64 = 1 << 24;
/// Records sealed under one key before the sealer updates it itself (with a margin below
/// [`MAX_RECORDS`] for the KeyUpdate record).
const UPDATE_AFTER: u64 = MAX_RECORDS - 1024;

/// KeyUpdates rustls may have followed before the record layer took over whose secrets are
/// still recognised.
const UPDATES_BEFORE_TAKEOVER: usize = 8;

const APPLICATION_DATA: u8 = 0x17;
const ALERT: u8 = 0x15;
const HANDSHAKE: u8 = 0x16;
/// Handshake message types of RFC 8446 §4.
const NEW_SESSION_TICKET: u8 = 4;
const KEY_UPDATE: u8 = 24;
/// A KeyUpdate with request_update = update_not_requested.
const KEY_UPDATE_NOT_REQUESTED: [u8; 5] = [KEY_UPDATE, 0, 0, 1, 0];

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
    /// The peer asked to change keys, and this connection has no traffic secret to follow it
    /// with (the key log did not run).
    #[error("the peer updated its TLS keys and this connection cannot follow; reconnecting")]
    KeyUpdate,
    /// A post-handshake message this end does not take (RFC 8446 §4.6): its type.
    #[error("unexpected TLS handshake message {0} after the handshake")]
    UnexpectedHandshake(u8),
    /// The key has protected as many records as it safely can.
    #[error("TLS record limit of this connection reached; reconnecting")]
    Exhausted,
    /// A cipher suite the record layer does not run.
    #[error("unsupported TLS cipher suite for the data path")]
    Unsupported,
}

/// A TLS 1.3 traffic secret and its suite's hash: what a KeyUpdate advances (RFC 8446 §7.2).
#[derive(Clone)]
pub struct TrafficSecret {
    hkdf: hkdf::Algorithm,
    secret: Vec<u8>,
}

impl std::fmt::Debug for TrafficSecret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("TrafficSecret(..)")
    }
}

/// Both directions' first application traffic secrets of one connection, as the handshake
/// left them.
#[derive(Clone, Default)]
pub struct TrafficSecrets {
    /// client_application_traffic_secret_0.
    pub client: Vec<u8>,
    /// server_application_traffic_secret_0.
    pub server: Vec<u8>,
}

impl std::fmt::Debug for TrafficSecrets {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("TrafficSecrets(..)")
    }
}

/// A rustls key log for one connection that keeps its application traffic secrets, so the
/// record layer can follow KeyUpdates: `dangerous_extract_secrets` gives only keys and IVs,
/// and a key cannot be advanced without its secret. Install a fresh one in the connection's
/// config (`config.key_log`), then [`TrafficSecretLog::take`] after the handshake. It records
/// nothing else (no handshake secrets, no exporter).
#[derive(Default)]
pub struct TrafficSecretLog {
    secrets: Mutex<TrafficSecrets>,
}

impl std::fmt::Debug for TrafficSecretLog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("TrafficSecretLog")
    }
}

impl TrafficSecretLog {
    /// A new, empty log for one connection.
    pub fn new() -> Arc<TrafficSecretLog> {
        Arc::new(TrafficSecretLog::default())
    }

    /// The secrets logged so far (and forgets them); `None` unless both directions' are there.
    pub fn take(&self) -> Option<TrafficSecrets> {
        let mut s = self.secrets.lock().ok()?;
        let taken = std::mem::take(&mut *s);
        (!taken.client.is_empty() && !taken.server.is_empty()).then_some(taken)
    }
}

impl rustls::KeyLog for TrafficSecretLog {
    fn log(&self, label: &str, _client_random: &[u8], secret: &[u8]) {
        if let Ok(mut s) = self.secrets.lock() {
            match label {
                "CLIENT_TRAFFIC_SECRET_0" => s.client = secret.to_vec(),
                "SERVER_TRAFFIC_SECRET_0" => s.server = secret.to_vec(),
                _ => {}
            }
        }
    }

    fn will_log(&self, label: &str) -> bool {
        matches!(label, "CLIENT_TRAFFIC_SECRET_0" | "SERVER_TRAFFIC_SECRET_0")
    }
}

/// Output length for ring's HKDF.
struct Len(usize);

impl hkdf::KeyType for Len {
    fn len(&self) -> usize {
        self.0
    }
}

/// HKDF-Expand-Label(secret, label, "", len) of RFC 8446 §7.1.
fn expand_label(
    alg: hkdf::Algorithm,
    secret: &[u8],
    label: &[u8],
    len: usize,
) -> Result<Vec<u8>, RecordError> {
    let out_len = u16::try_from(len)
        .map_err(|_| RecordError::Unsupported)?
        .to_be_bytes();
    let label_len = [u8::try_from(6 + label.len()).map_err(|_| RecordError::Unsupported)?];
    let info: [&[u8]; 5] = [&out_len, &label_len, b"tls13 ", label, &[0]];
    let prk = hkdf::Prk::new_less_safe(alg, secret);
    let okm = prk
        .expand(&info, Len(len))
        .map_err(|_| RecordError::Unsupported)?;
    let mut out = vec![0; len];
    okm.fill(&mut out).map_err(|_| RecordError::Unsupported)?;
    Ok(out)
}

/// One direction's AEAD key, IV and sequence number (and, when known, the traffic secret
/// they came from, so a KeyUpdate can be followed).
pub struct RecordKey {
    alg: &'static aead::Algorithm,
    key: LessSafeKey,
    iv: [u8; 12],
    seq: u64,
    secret: Option<TrafficSecret>,
    /// Set by the receiving key when the peer asked for an update; the sending key of the same
    /// connection answers before its next record.
    update_requested: Arc<AtomicBool>,
    /// Sealing: records under one key before the sealer updates it itself.
    update_after: u64,
    /// Opening: whether a NewSessionTicket may come (the peer is a server).
    accept_tickets: bool,
    /// Opening: bytes of a handshake message that continue in the next record.
    handshake_left: usize,
}

impl std::fmt::Debug for RecordKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RecordKey")
            .field("seq", &self.seq)
            .field("updatable", &self.secret.is_some())
            .finish()
    }
}

/// A suite's AEAD and hash, with one direction's key and IV.
type Parts<'a> = (
    &'static aead::Algorithm,
    hkdf::Algorithm,
    &'a [u8],
    &'a [u8],
);

/// The AEAD, key and IV of what rustls extracted for one direction.
fn parts(secrets: &ConnectionTrafficSecrets) -> Result<Parts<'_>, RecordError> {
    match secrets {
        ConnectionTrafficSecrets::Aes128Gcm { key, iv } => Ok((
            &aead::AES_128_GCM,
            hkdf::HKDF_SHA256,
            key.as_ref(),
            iv.as_ref(),
        )),
        ConnectionTrafficSecrets::Aes256Gcm { key, iv } => Ok((
            &aead::AES_256_GCM,
            hkdf::HKDF_SHA384,
            key.as_ref(),
            iv.as_ref(),
        )),
        ConnectionTrafficSecrets::Chacha20Poly1305 { key, iv } => Ok((
            &aead::CHACHA20_POLY1305,
            hkdf::HKDF_SHA256,
            key.as_ref(),
            iv.as_ref(),
        )),
        _ => Err(RecordError::Unsupported),
    }
}

fn aead_key(alg: &'static aead::Algorithm, key: &[u8]) -> Result<LessSafeKey, RecordError> {
    let unbound = UnboundKey::new(alg, key).map_err(|_| RecordError::Unsupported)?;
    Ok(LessSafeKey::new(unbound))
}

/// The receiving and the sending key of one connection from what rustls extracted, with the
/// traffic secrets from a [`TrafficSecretLog`] when there are any (then KeyUpdates in either
/// direction are followed). `client` says which end this is. A logged secret that does not
/// derive the extracted key (another connection's) is not used.
pub fn key_pair(
    secrets: rustls::ExtractedSecrets,
    traffic: Option<TrafficSecrets>,
    client: bool,
) -> Result<(RecordKey, RecordKey), RecordError> {
    let (rseq, rsec) = secrets.rx;
    let (tseq, tsec) = secrets.tx;
    let mut rx = RecordKey::new(rseq, &rsec)?;
    let mut tx = RecordKey::new(tseq, &tsec)?;
    rx.accept_tickets = client;
    let shared = Arc::new(AtomicBool::new(false));
    rx.update_requested = shared.clone();
    tx.update_requested = shared;
    if let Some(t) = traffic {
        let (rs, ts) = if client {
            (t.server, t.client)
        } else {
            (t.client, t.server)
        };
        rx.adopt_secret(&rsec, rs)?;
        tx.adopt_secret(&tsec, ts)?;
    }
    Ok((rx, tx))
}

impl RecordKey {
    /// A key from what `dangerous_extract_secrets` gave for one direction (without its traffic
    /// secret: a KeyUpdate from the peer then ends the connection, see [`key_pair`]).
    pub fn new(seq: u64, secrets: &ConnectionTrafficSecrets) -> Result<RecordKey, RecordError> {
        let (alg, _, key, iv) = parts(secrets)?;
        let iv: [u8; 12] = iv.try_into().map_err(|_| RecordError::Unsupported)?;
        Ok(RecordKey {
            alg,
            key: aead_key(alg, key)?,
            iv,
            seq,
            secret: None,
            update_requested: Arc::new(AtomicBool::new(false)),
            update_after: UPDATE_AFTER,
            accept_tickets: true,
            handshake_left: 0,
        })
    }

    /// Keeps `secret` for KeyUpdates if it derives the key and IV rustls extracted, or the
    /// secret a few updates on does: rustls may have followed (and answered) a KeyUpdate that
    /// came with the end of the HTTP upgrade, before the record layer took over.
    fn adopt_secret(
        &mut self,
        extracted: &ConnectionTrafficSecrets,
        mut secret: Vec<u8>,
    ) -> Result<(), RecordError> {
        let (alg, hkdf, key, iv) = parts(extracted)?;
        let hash_len = hkdf.hmac_algorithm().digest_algorithm().output_len();
        for _ in 0..=UPDATES_BEFORE_TAKEOVER {
            if expand_label(hkdf, &secret, b"key", alg.key_len())? == key
                && expand_label(hkdf, &secret, b"iv", 12)? == iv
            {
                self.secret = Some(TrafficSecret { hkdf, secret });
                return Ok(());
            }
            secret = expand_label(hkdf, &secret, b"traffic upd", hash_len)?;
        }
        Ok(())
    }

    /// Whether this key can follow (or make) a KeyUpdate.
    pub fn updatable(&self) -> bool {
        self.secret.is_some()
    }

    /// Sets after how many records under one key the sealer sends a KeyUpdate and changes its
    /// key itself (at most just below the AEAD's limit, the default); lower values rotate keys
    /// more often.
    pub fn set_update_after(&mut self, records: u64) {
        self.update_after = records.clamp(1, UPDATE_AFTER);
    }

    /// Moves to the next traffic secret (RFC 8446 §7.2) and the key and IV it derives; the
    /// sequence number starts again at 0.
    fn advance(&mut self) -> Result<(), RecordError> {
        let Some(t) = self.secret.as_mut() else {
            return Err(RecordError::KeyUpdate);
        };
        let hash_len = t.hkdf.hmac_algorithm().digest_algorithm().output_len();
        let next = expand_label(t.hkdf, &t.secret, b"traffic upd", hash_len)?;
        let key = expand_label(t.hkdf, &next, b"key", self.alg.key_len())?;
        let iv = expand_label(t.hkdf, &next, b"iv", 12)?;
        t.secret = next;
        self.key = aead_key(self.alg, &key)?;
        self.iv = iv.try_into().map_err(|_| RecordError::Unsupported)?;
        self.seq = 0;
        Ok(())
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
    /// Appends the content type and the tag and fills in the header. When the peer asked for a
    /// key update, or this key has sealed its share of records, a KeyUpdate record follows
    /// (under this key) and later records are sealed under the next one.
    pub fn seal(&mut self, buf: &mut Vec<u8>, start: usize) -> Result<(), RecordError> {
        self.seal_typed(buf, start, APPLICATION_DATA)?;
        let asked = self.update_requested.load(Ordering::Acquire);
        if self.secret.is_some() && (asked || self.seq >= self.update_after) {
            self.update_requested.store(false, Ordering::Release);
            self.send_key_update(buf)?;
        }
        Ok(())
    }

    /// Appends a KeyUpdate (update_not_requested) sealed under this key, then moves this key
    /// to the next traffic secret.
    fn send_key_update(&mut self, buf: &mut Vec<u8>) -> Result<(), RecordError> {
        let start = buf.len();
        buf.extend_from_slice(&[0; HEADER_LEN]);
        buf.extend_from_slice(&KEY_UPDATE_NOT_REQUESTED);
        self.seal_typed(buf, start, HANDSHAKE)?;
        self.advance()
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

    /// Takes the handshake messages of one record (RFC 8446 §4.6): skips NewSessionTickets
    /// from a server, follows a KeyUpdate (which must end its record, §5.1), refuses the rest.
    fn post_handshake(&mut self, mut msgs: &[u8]) -> Result<(), RecordError> {
        if msgs.is_empty() {
            return Err(RecordError::Malformed);
        }
        // The tail of a ticket that began in an earlier record.
        let skip = self.handshake_left.min(msgs.len());
        self.handshake_left -= skip;
        msgs = &msgs[skip..];
        while !msgs.is_empty() {
            // A message header split across records is legal but never sent by any stack for
            // these small messages; refusing it keeps the parser simple.
            let [ty, l0, l1, l2, rest @ ..] = msgs else {
                return Err(RecordError::Malformed);
            };
            let len = usize::from(*l0) << 16 | usize::from(*l1) << 8 | usize::from(*l2);
            match *ty {
                KEY_UPDATE => {
                    let request = match rest {
                        [r @ (0 | 1)] if len == 1 => *r,
                        _ => return Err(RecordError::Malformed),
                    };
                    self.advance()?;
                    if request == 1 {
                        self.update_requested.store(true, Ordering::Release);
                    }
                    return Ok(());
                }
                NEW_SESSION_TICKET if self.accept_tickets => match rest.get(len..) {
                    Some(after) => msgs = after,
                    None => {
                        self.handshake_left = len - rest.len();
                        msgs = &[];
                    }
                },
                other => return Err(RecordError::UnexpectedHandshake(other)),
            }
        }
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
/// partial record down behind it. Post-handshake messages are taken as they come: records
/// after a KeyUpdate are opened under the next key.
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
        // A handshake message split across records must not be interleaved with others.
        if key.handshake_left > 0 && inner[ty_at] != HANDSHAKE {
            return Err(RecordError::Malformed);
        }
        match inner[ty_at] {
            APPLICATION_DATA => *plain += ty_at,
            ALERT => match inner.get(..ty_at) {
                Some([_, 0]) => opened.closed = true,
                Some([_, d]) => return Err(RecordError::Alert(*d)),
                _ => return Err(RecordError::Malformed),
            },
            HANDSHAKE => {
                key.post_handshake(&inner[..ty_at])?;
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

    /// Key and IV an AES-256-GCM/SHA-384 traffic secret derives, as rustls extracts them.
    fn derived(secret: &[u8]) -> ConnectionTrafficSecrets {
        let key: [u8; 32] = expand_label(hkdf::HKDF_SHA384, secret, b"key", 32)
            .unwrap()
            .try_into()
            .unwrap();
        let iv: [u8; 12] = expand_label(hkdf::HKDF_SHA384, secret, b"iv", 12)
            .unwrap()
            .try_into()
            .unwrap();
        ConnectionTrafficSecrets::Aes256Gcm {
            key: rustls::crypto::cipher::AeadKey::from(key),
            iv: rustls::crypto::cipher::Iv::new(iv),
        }
    }

    /// (receiving, sending) keys of a client and a server end of one connection.
    type End = (RecordKey, RecordKey);

    fn ends(with_secrets: bool) -> (End, End) {
        let (c, s) = (vec![1u8; 48], vec![2u8; 48]);
        let traffic = with_secrets.then(|| TrafficSecrets {
            client: c.clone(),
            server: s.clone(),
        });
        let client = key_pair(
            rustls::ExtractedSecrets {
                tx: (3, derived(&c)),
                rx: (4, derived(&s)),
            },
            traffic.clone(),
            true,
        )
        .unwrap();
        let server = key_pair(
            rustls::ExtractedSecrets {
                tx: (4, derived(&s)),
                rx: (3, derived(&c)),
            },
            traffic,
            false,
        )
        .unwrap();
        assert_eq!(client.0.updatable(), with_secrets);
        (client, server)
    }

    fn data_record(tx: &mut RecordKey, wire: &mut Vec<u8>, data: &[u8]) {
        let start = wire.len();
        wire.extend_from_slice(&[0; HEADER_LEN]);
        wire.extend_from_slice(data);
        tx.seal(wire, start).unwrap();
    }

    /// A handshake record carrying `msgs`, sealed as a peer's stack would.
    fn handshake_record(tx: &mut RecordKey, wire: &mut Vec<u8>, msgs: &[u8]) {
        let start = wire.len();
        wire.extend_from_slice(&[0; HEADER_LEN]);
        wire.extend_from_slice(msgs);
        tx.seal_typed(wire, start, HANDSHAKE).unwrap();
    }

    fn open_all(rx: &mut RecordKey, wire: &[u8]) -> Result<Vec<u8>, RecordError> {
        let mut buf = BytesMut::from(wire);
        let mut plain = 0;
        open_records(rx, &mut buf, &mut plain)?;
        assert_eq!(plain, buf.len(), "no partial record left");
        Ok(buf[..plain].to_vec())
    }

    #[test]
    fn a_key_update_from_the_peer_is_followed_and_answered() {
        let ((mut c_rx, mut c_tx), (mut s_rx, mut s_tx)) = ends(true);
        // The client: data, a KeyUpdate asking for ours, then data under its next key.
        let mut wire = Vec::new();
        data_record(&mut c_tx, &mut wire, b"before ");
        handshake_record(&mut c_tx, &mut wire, &[KEY_UPDATE, 0, 0, 1, 1]);
        c_tx.advance().unwrap();
        data_record(&mut c_tx, &mut wire, b"after");
        assert_eq!(open_all(&mut s_rx, &wire).unwrap(), b"before after");
        assert_eq!(s_rx.seq, 1, "one record under the client's next key");
        // The server answers after its next record, then seals under its next key.
        let mut back = Vec::new();
        data_record(&mut s_tx, &mut back, b"one ");
        assert_eq!(s_tx.seq, 0, "the server moved to its next key");
        data_record(&mut s_tx, &mut back, b"two");
        assert_eq!(open_all(&mut c_rx, &back).unwrap(), b"one two");
        // Asked once, answered once.
        let mut more = Vec::new();
        data_record(&mut s_tx, &mut more, b"three");
        assert_eq!(s_tx.seq, 2);
        assert_eq!(open_all(&mut c_rx, &more).unwrap(), b"three");
        // Without a request the peer's update is followed and not answered.
        let mut wire = Vec::new();
        handshake_record(&mut c_tx, &mut wire, &KEY_UPDATE_NOT_REQUESTED);
        c_tx.advance().unwrap();
        data_record(&mut c_tx, &mut wire, b"x");
        assert_eq!(open_all(&mut s_rx, &wire).unwrap(), b"x");
        let mut back = Vec::new();
        data_record(&mut s_tx, &mut back, b"y");
        assert_eq!(s_tx.seq, 3, "no update of the server's own key");
        assert_eq!(open_all(&mut c_rx, &back).unwrap(), b"y");
    }

    #[test]
    fn without_the_traffic_secret_a_key_update_is_an_error() {
        let ((_, mut c_tx), (mut s_rx, _)) = ends(false);
        let mut wire = Vec::new();
        handshake_record(&mut c_tx, &mut wire, &[KEY_UPDATE, 0, 0, 1, 1]);
        assert_eq!(open_all(&mut s_rx, &wire), Err(RecordError::KeyUpdate));
    }

    #[test]
    fn the_sealer_updates_its_own_key_before_the_limit() {
        let ((_, mut c_tx), (mut s_rx, _)) = ends(true);
        c_tx.set_update_after(3);
        let mut wire = Vec::new();
        let mut sent = Vec::new();
        for i in 0..10u8 {
            data_record(&mut c_tx, &mut wire, &[i; 100]);
            sent.extend_from_slice(&[i; 100]);
        }
        assert_eq!(open_all(&mut s_rx, &wire).unwrap(), sent);
        assert!(s_rx.seq < 3, "the receiver followed: {}", s_rx.seq);
    }

    #[test]
    fn tickets_are_skipped_by_a_client_and_refused_by_a_server() {
        let ((mut c_rx, mut c_tx), (mut s_rx, mut s_tx)) = ends(true);
        let mut ticket = vec![NEW_SESSION_TICKET, 0, 0, 40];
        ticket.extend_from_slice(&[0xAA; 40]);
        let mut wire = Vec::new();
        data_record(&mut s_tx, &mut wire, b"a");
        handshake_record(&mut s_tx, &mut wire, &[&ticket[..], &ticket[..]].concat());
        // One ticket split across two records.
        handshake_record(&mut s_tx, &mut wire, &ticket[..10]);
        handshake_record(&mut s_tx, &mut wire, &ticket[10..]);
        data_record(&mut s_tx, &mut wire, b"b");
        assert_eq!(open_all(&mut c_rx, &wire).unwrap(), b"ab");
        // A server gets no tickets, and neither end takes other post-handshake messages.
        let mut wire = Vec::new();
        handshake_record(&mut c_tx, &mut wire, &ticket);
        assert_eq!(
            open_all(&mut s_rx, &wire),
            Err(RecordError::UnexpectedHandshake(NEW_SESSION_TICKET))
        );
        let ((mut c_rx, _), (_, mut s_tx)) = ends(true);
        let mut wire = Vec::new();
        handshake_record(&mut s_tx, &mut wire, &[13, 0, 0, 2, 0, 0]);
        assert_eq!(
            open_all(&mut c_rx, &wire),
            Err(RecordError::UnexpectedHandshake(13))
        );
    }

    #[test]
    fn malformed_post_handshake_messages_are_refused() {
        for msgs in [
            // A KeyUpdate must end its record.
            &[KEY_UPDATE, 0, 0, 1, 0, NEW_SESSION_TICKET, 0, 0, 0][..],
            // request_update is 0 or 1.
            &[KEY_UPDATE, 0, 0, 1, 2],
            &[KEY_UPDATE, 0, 0, 2, 0, 0],
            // A header cut short.
            &[NEW_SESSION_TICKET, 0],
        ] {
            let ((mut c_rx, _), (_, mut s_tx)) = ends(true);
            let mut wire = Vec::new();
            handshake_record(&mut s_tx, &mut wire, msgs);
            assert_eq!(
                open_all(&mut c_rx, &wire),
                Err(RecordError::Malformed),
                "{msgs:?}"
            );
        }
        // Application data in the middle of a split ticket.
        let ((mut c_rx, _), (_, mut s_tx)) = ends(true);
        let mut wire = Vec::new();
        handshake_record(&mut s_tx, &mut wire, &[NEW_SESSION_TICKET, 0, 0, 9, 1]);
        data_record(&mut s_tx, &mut wire, b"x");
        assert_eq!(open_all(&mut c_rx, &wire), Err(RecordError::Malformed));
    }

    #[test]
    fn a_secret_is_recognised_a_few_updates_on() {
        // rustls followed two KeyUpdates before the take-over: the key log still holds
        // secret 0, the extracted keys are those of secret 2.
        let hash = hkdf::HKDF_SHA384;
        let s0 = vec![5u8; 48];
        let s1 = expand_label(hash, &s0, b"traffic upd", 48).unwrap();
        let s2 = expand_label(hash, &s1, b"traffic upd", 48).unwrap();
        let (c, s) = (vec![1u8; 48], s0.clone());
        let (mut rx, _) = key_pair(
            rustls::ExtractedSecrets {
                tx: (0, derived(&c)),
                rx: (0, derived(&s2)),
            },
            Some(TrafficSecrets {
                client: c,
                server: s,
            }),
            true,
        )
        .unwrap();
        assert!(rx.updatable());
        // The peer's next update (to secret 3) is followed.
        let mut peer = RecordKey::new(0, &derived(&s2)).unwrap();
        peer.adopt_secret(&derived(&s2), s2).unwrap();
        assert!(peer.updatable());
        let mut wire = Vec::new();
        handshake_record(&mut peer, &mut wire, &KEY_UPDATE_NOT_REQUESTED);
        peer.advance().unwrap();
        data_record(&mut peer, &mut wire, b"after");
        assert_eq!(open_all(&mut rx, &wire).unwrap(), b"after");
        // A secret of another connection is not taken.
        let (other, _) = key_pair(
            rustls::ExtractedSecrets {
                tx: (0, derived(&[1u8; 48])),
                rx: (0, derived(&[9u8; 48])),
            },
            Some(TrafficSecrets {
                client: vec![1u8; 48],
                server: vec![2u8; 48],
            }),
            true,
        )
        .unwrap();
        assert!(!other.updatable());
    }
}
