//! Publisher and node keys, stored as 32-byte ed25519 secrets with owner-only permissions.

use std::fmt;
use std::io::Write;
use std::path::Path;

use libp2p::identity::{ed25519, Keypair};

use super::error::TrustError;

/// The ed25519 key that signs revisions. Distinct from the node key so it can move.
#[derive(Clone)]
pub struct PublisherKey(ed25519::Keypair);

/// The public half of a publisher key; what subscribers pin.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct PublisherPublicKey([u8; 32]);

impl PublisherKey {
    /// A fresh random key.
    pub fn generate() -> Self {
        PublisherKey(ed25519::Keypair::generate())
    }

    /// Build from a 32-byte secret.
    pub fn from_secret(secret: [u8; 32]) -> Self {
        let sk = ed25519::SecretKey::try_from_bytes(secret).expect("32 bytes is a valid secret");
        PublisherKey(ed25519::Keypair::from(sk))
    }

    /// Load the key at `path`, or create one there (mode 0600) if the file does not exist.
    pub fn load_or_create(path: &Path) -> Result<Self, TrustError> {
        match std::fs::read(path) {
            Ok(bytes) => Self::from_file_bytes(path, bytes),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let key = Self::generate();
                write_secret(path, &key.secret())?;
                Ok(key)
            }
            Err(source) => Err(TrustError::KeyIo {
                path: path.to_owned(),
                source,
            }),
        }
    }

    /// Load an existing key file.
    pub fn load(path: &Path) -> Result<Self, TrustError> {
        let bytes = std::fs::read(path).map_err(|source| TrustError::KeyIo {
            path: path.to_owned(),
            source,
        })?;
        Self::from_file_bytes(path, bytes)
    }

    /// Write this key to `path` with owner-only permissions; refuses to overwrite.
    pub fn save_new(&self, path: &Path) -> Result<(), TrustError> {
        write_secret(path, &self.secret())
    }

    fn from_file_bytes(path: &Path, bytes: Vec<u8>) -> Result<Self, TrustError> {
        let secret: [u8; 32] = bytes
            .try_into()
            .map_err(|_| TrustError::BadKeyFile(path.to_owned()))?;
        Ok(Self::from_secret(secret))
    }

    pub(crate) fn secret(&self) -> [u8; 32] {
        let mut out = [0u8; 32];
        out.copy_from_slice(self.0.secret().as_ref());
        out
    }

    /// The public half.
    pub fn public(&self) -> PublisherPublicKey {
        PublisherPublicKey(self.0.public().to_bytes())
    }

    /// Sign `msg`.
    pub fn sign(&self, msg: &[u8]) -> [u8; 64] {
        let sig = self.0.sign(msg);
        let mut out = [0u8; 64];
        out.copy_from_slice(&sig);
        out
    }
}

impl PublisherPublicKey {
    /// Parse 32 raw bytes; fails if they are not a curve point.
    pub fn from_bytes(bytes: [u8; 32]) -> Result<Self, TrustError> {
        ed25519::PublicKey::try_from_bytes(&bytes).map_err(|_| TrustError::BadPublicKey)?;
        Ok(PublisherPublicKey(bytes))
    }

    /// Parse the hex form printed by `Display`.
    pub fn from_hex(s: &str) -> Result<Self, TrustError> {
        let raw = data_encoding::HEXLOWER_PERMISSIVE
            .decode(s.trim().as_bytes())
            .map_err(|_| TrustError::BadPublicKey)?;
        let bytes: [u8; 32] = raw.try_into().map_err(|_| TrustError::BadPublicKey)?;
        Self::from_bytes(bytes)
    }

    /// The raw 32 bytes.
    pub fn to_bytes(self) -> [u8; 32] {
        self.0
    }

    /// Check `sig` over `msg`.
    pub fn verify(&self, msg: &[u8], sig: &[u8]) -> bool {
        ed25519::PublicKey::try_from_bytes(&self.0)
            .map(|pk| pk.verify(msg, sig))
            .unwrap_or(false)
    }
}

impl fmt::Display for PublisherPublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&data_encoding::HEXLOWER.encode(&self.0))
    }
}

impl fmt::Debug for PublisherPublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PublisherPublicKey({self})")
    }
}

/// Load the node key at `path` or create it (mode 0600). The node key is the libp2p identity.
pub fn load_or_create_node_key(path: &Path) -> Result<Keypair, TrustError> {
    let key = PublisherKey::load_or_create(path)?;
    Ok(Keypair::from(key.0))
}

fn write_secret(path: &Path, secret: &[u8; 32]) -> Result<(), TrustError> {
    use std::os::unix::fs::OpenOptionsExt;
    let io_err = |source| TrustError::KeyIo {
        path: path.to_owned(),
        source,
    };
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent).map_err(io_err)?;
    }
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .map_err(io_err)?;
    file.write_all(secret).map_err(io_err)?;
    file.sync_all().map_err(io_err)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_file_is_owner_only_and_round_trips() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("k");
        let a = PublisherKey::load_or_create(&path).unwrap();
        let b = PublisherKey::load_or_create(&path).unwrap();
        assert_eq!(a.public(), b.public());
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        assert!(a.save_new(&path).is_err(), "must not overwrite a key");
    }

    #[test]
    fn signatures_verify_only_with_the_right_key() {
        let a = PublisherKey::generate();
        let b = PublisherKey::generate();
        let sig = a.sign(b"msg");
        assert!(a.public().verify(b"msg", &sig));
        assert!(!b.public().verify(b"msg", &sig));
        assert!(!a.public().verify(b"other", &sig));
        let hex = a.public().to_string();
        assert_eq!(PublisherPublicKey::from_hex(&hex).unwrap(), a.public());
    }
}
