//! Sealing what ACME keeps in etcd (`cluster.etcd.secret_key`): AES-256-GCM with a fresh
//! random nonce per write, the etcd key as associated data, so a value copied to another key
//! is refused like a tampered one.
//!
//! A sealed value is text: `portico-sealed-1:` then the base64 of the 12-byte nonce, the
//! ciphertext and the 16-byte tag.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use ring::aead::{AES_256_GCM, Aad, LessSafeKey, NONCE_LEN, Nonce, UnboundKey};
use ring::rand::{SecureRandom, SystemRandom};

use crate::config::Diagnostics;
use crate::config::spec::ClusterSpec;

/// What every sealed value starts with (the format's version is in it).
const MAGIC: &str = "portico-sealed-1:";

/// Why a sealed value does not open.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum SealError {
    /// The value is not in the sealed format.
    #[error("not a sealed value")]
    Format,
    /// The tag does not match: another key sealed it, or it was changed.
    #[error(
        "cannot be opened with cluster.etcd.secret_key (another key sealed it, or it was changed)"
    )]
    Refused,
    /// The system's random source failed.
    #[error("no random nonce")]
    Random,
}

/// The key of `cluster.etcd.secret_key`.
pub(crate) struct SealKey {
    key: LessSafeKey,
}

impl std::fmt::Debug for SealKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SealKey(<redacted>)")
    }
}

impl SealKey {
    /// The key written as base64 of 32 bytes, or why it is not one.
    pub(crate) fn parse(text: &str) -> Result<Self, String> {
        let bytes = B64
            .decode(text.trim())
            .map_err(|_| "must be 32 bytes in base64 (make one with `openssl rand -base64 32`)")?;
        if bytes.len() != 32 {
            return Err(format!(
                "must be 32 bytes in base64, not {} (make one with `openssl rand -base64 32`)",
                bytes.len()
            ));
        }
        let key = UnboundKey::new(&AES_256_GCM, &bytes).map_err(|_| "not an AES-256 key")?;
        Ok(SealKey {
            key: LessSafeKey::new(key),
        })
    }

    /// `plain` sealed for the etcd key `at`.
    pub(crate) fn seal(&self, at: &[u8], plain: &[u8]) -> Result<Vec<u8>, SealError> {
        let mut nonce = [0u8; NONCE_LEN];
        SystemRandom::new()
            .fill(&mut nonce)
            .map_err(|_| SealError::Random)?;
        let mut data = plain.to_vec();
        self.key
            .seal_in_place_append_tag(
                Nonce::assume_unique_for_key(nonce),
                Aad::from(at),
                &mut data,
            )
            .map_err(|_| SealError::Refused)?;
        let mut out = nonce.to_vec();
        out.extend_from_slice(&data);
        Ok(format!("{MAGIC}{}", B64.encode(out)).into_bytes())
    }

    /// What was sealed for the etcd key `at`.
    pub(crate) fn open(&self, at: &[u8], sealed: &[u8]) -> Result<Vec<u8>, SealError> {
        let text = sealed
            .strip_prefix(MAGIC.as_bytes())
            .ok_or(SealError::Format)?;
        let mut data = B64.decode(text).map_err(|_| SealError::Format)?;
        if data.len() < NONCE_LEN + AES_256_GCM.tag_len() {
            return Err(SealError::Format);
        }
        let nonce =
            Nonce::try_assume_unique_for_key(&data[..NONCE_LEN]).map_err(|_| SealError::Format)?;
        let plain = self
            .key
            .open_in_place(nonce, Aad::from(at), &mut data[NONCE_LEN..])
            .map_err(|_| SealError::Refused)?;
        Ok(plain.to_vec())
    }
}

/// What a config's `cluster.etcd` means for its ACME listeners.
#[derive(Debug, Clone)]
pub(crate) enum ClusterKey {
    /// No `cluster.etcd`: each node orders and keeps its own certificates.
    Off,
    /// Certificates are shared through etcd, sealed with this key.
    Key(std::sync::Arc<SealKey>),
    /// `cluster.etcd` without a `secret_key`.
    Missing,
    /// A `secret_key` that is not one (already reported).
    Invalid,
}

/// Reads `cluster.etcd.secret_key`; a key that is not one is reported at its position.
pub(crate) fn cluster_key(cluster: Option<&ClusterSpec>, diags: &mut Diagnostics) -> ClusterKey {
    let Some(etcd) = cluster.and_then(|c| c.etcd.as_ref()) else {
        return ClusterKey::Off;
    };
    let Some(text) = &etcd.secret_key else {
        return ClusterKey::Missing;
    };
    match SealKey::parse(text) {
        Ok(key) => ClusterKey::Key(std::sync::Arc::new(key)),
        Err(why) => {
            diags.error(text.pos, format!("cluster.etcd.secret_key: {why}"));
            ClusterKey::Invalid
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY: &str = "MDEyMzQ1Njc4OWFiY2RlZjAxMjM0NTY3ODlhYmNkZWY=";
    const OTHER: &str = "ZmVkY2JhOTg3NjU0MzIxMGZlZGNiYTk4NzY1NDMyMTA=";

    #[test]
    fn sealed_values_open_only_with_their_key_at_their_place() {
        let key = SealKey::parse(KEY).expect("a key");
        let sealed = key
            .seal(b"/p/acme/certs/a.test", b"secret pem")
            .expect("sealed");
        assert!(sealed.starts_with(MAGIC.as_bytes()));
        assert!(!sealed.windows(6).any(|w| w == b"secret"));
        assert_eq!(
            key.open(b"/p/acme/certs/a.test", &sealed).as_deref(),
            Ok(&b"secret pem"[..])
        );
        // A fresh nonce per write: the same text seals differently.
        let again = key
            .seal(b"/p/acme/certs/a.test", b"secret pem")
            .expect("sealed");
        assert_ne!(sealed, again);

        // The wrong key, another place, a flipped bit, a cut value: all refused.
        let other = SealKey::parse(OTHER).expect("a key");
        assert_eq!(
            other.open(b"/p/acme/certs/a.test", &sealed),
            Err(SealError::Refused)
        );
        assert_eq!(
            key.open(b"/p/acme/certs/b.test", &sealed),
            Err(SealError::Refused)
        );
        let mut raw = B64.decode(&sealed[MAGIC.len()..]).expect("base64");
        raw[NONCE_LEN + 2] ^= 1;
        let tampered = format!("{MAGIC}{}", B64.encode(&raw)).into_bytes();
        assert_eq!(
            key.open(b"/p/acme/certs/a.test", &tampered),
            Err(SealError::Refused)
        );
        let cut = format!("{MAGIC}{}", B64.encode(&raw[..NONCE_LEN + 4])).into_bytes();
        assert_eq!(
            key.open(b"/p/acme/certs/a.test", &cut),
            Err(SealError::Format)
        );
        assert_eq!(
            key.open(b"/p/acme/certs/a.test", b"plain"),
            Err(SealError::Format)
        );
    }

    #[test]
    fn keys_are_32_bytes_of_base64() {
        assert!(SealKey::parse(KEY).is_ok());
        let short = SealKey::parse("c2hvcnQ=").expect_err("short");
        assert!(short.contains("not 5"), "{short}");
        assert!(SealKey::parse("not base64!").is_err());
        assert_eq!(
            format!("{:?}", SealKey::parse(KEY).expect("a key")),
            "SealKey(<redacted>)"
        );
    }
}
