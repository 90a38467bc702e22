//! Moving a publisher key between machines: `treecast key export` / `key import`.
//!
//! The secret is encrypted with ChaCha20-Poly1305 under a key derived from a passphrase with
//! Argon2id (RustCrypto's `argon2` and `chacha20poly1305`). The file is text:
//!
//! ```text
//! treecast publisher key (encrypted)
//! public: <hex public key>
//! kdf: argon2id m=65536 t=3 p=1
//! data: <hex: salt (16) | nonce (12) | ciphertext with tag (48)>
//! ```
//!
//! The public key is authenticated as associated data and checked against the decrypted
//! secret, so a file whose lines were swapped or edited is refused.

use chacha20poly1305::aead::{Aead, AeadCore, KeyInit, OsRng, Payload};
use chacha20poly1305::ChaCha20Poly1305;

use super::keys::{PublisherKey, PublisherPublicKey};

const HEADER: &str = "treecast publisher key (encrypted)";
/// Argon2id cost: 64 MiB, 3 passes (about a quarter second here).
const M_KIB: u32 = 64 * 1024;
const T: u32 = 3;
/// The most a file may ask for, so a hostile file cannot make import take all memory.
const MAX_M_KIB: u32 = 1024 * 1024;
const MAX_T: u32 = 64;
/// Shortest passphrase accepted for export.
pub const MIN_PASSPHRASE: usize = 8;

/// Why an exported key cannot be read.
#[derive(Debug, thiserror::Error)]
pub enum KeyFileError {
    #[error("not an exported treecast key (missing or malformed `{0}` line)")]
    Malformed(&'static str),
    #[error("unsupported key derivation `{0}`")]
    Kdf(String),
    #[error("wrong passphrase, or the file was altered")]
    Decrypt,
    #[error("a passphrase needs at least {MIN_PASSPHRASE} characters")]
    WeakPassphrase,
}

fn derive(passphrase: &[u8], salt: &[u8], m: u32, t: u32) -> Result<[u8; 32], KeyFileError> {
    let params =
        argon2::Params::new(m, t, 1, Some(32)).map_err(|e| KeyFileError::Kdf(e.to_string()))?;
    let kdf = argon2::Argon2::new(argon2::Algorithm::Argon2id, argon2::Version::V0x13, params);
    let mut out = [0u8; 32];
    kdf.hash_password_into(passphrase, salt, &mut out)
        .map_err(|e| KeyFileError::Kdf(e.to_string()))?;
    Ok(out)
}

/// Encrypt `key` under `passphrase`; returns the file's text.
pub fn export_key(key: &PublisherKey, passphrase: &str) -> Result<String, KeyFileError> {
    if passphrase.chars().count() < MIN_PASSPHRASE {
        return Err(KeyFileError::WeakPassphrase);
    }
    let mut salt = [0u8; 16];
    chacha20poly1305::aead::rand_core::RngCore::fill_bytes(&mut OsRng, &mut salt);
    let wrap = derive(passphrase.as_bytes(), &salt, M_KIB, T)?;
    let cipher = ChaCha20Poly1305::new(&wrap.into());
    let nonce = ChaCha20Poly1305::generate_nonce(&mut OsRng);
    let public = key.public().to_string();
    let sealed = cipher
        .encrypt(
            &nonce,
            Payload {
                msg: &key.secret(),
                aad: public.as_bytes(),
            },
        )
        .expect("encrypting 32 bytes cannot fail");
    let mut data = salt.to_vec();
    data.extend_from_slice(&nonce);
    data.extend_from_slice(&sealed);
    Ok(format!(
        "{HEADER}\npublic: {public}\nkdf: argon2id m={M_KIB} t={T} p=1\ndata: {}\n",
        data_encoding::HEXLOWER.encode(&data)
    ))
}

/// Decrypt an exported key with `passphrase`.
pub fn import_key(text: &str, passphrase: &str) -> Result<PublisherKey, KeyFileError> {
    let mut lines = text.lines().map(str::trim).filter(|l| !l.is_empty());
    if lines.next() != Some(HEADER) {
        return Err(KeyFileError::Malformed("header"));
    }
    let mut field = |name: &'static str| {
        lines
            .next()
            .and_then(|l| l.strip_prefix(name))
            .and_then(|l| l.strip_prefix(": "))
            .ok_or(KeyFileError::Malformed(name))
    };
    let public = field("public")?.to_string();
    let kdf = field("kdf")?.to_string();
    let data = data_encoding::HEXLOWER
        .decode(field("data")?.as_bytes())
        .map_err(|_| KeyFileError::Malformed("data"))?;
    let (m, t) = parse_kdf(&kdf)?;
    if data.len() != 16 + 12 + 32 + 16 {
        return Err(KeyFileError::Malformed("data"));
    }
    let (salt, rest) = data.split_at(16);
    let (nonce, sealed) = rest.split_at(12);
    let wrap = derive(passphrase.as_bytes(), salt, m, t)?;
    let cipher = ChaCha20Poly1305::new(&wrap.into());
    let secret = cipher
        .decrypt(
            nonce.into(),
            Payload {
                msg: sealed,
                aad: public.as_bytes(),
            },
        )
        .map_err(|_| KeyFileError::Decrypt)?;
    let secret: [u8; 32] = secret.try_into().map_err(|_| KeyFileError::Decrypt)?;
    let key = PublisherKey::from_secret(secret);
    let claimed =
        PublisherPublicKey::from_hex(&public).map_err(|_| KeyFileError::Malformed("public"))?;
    if key.public() != claimed {
        return Err(KeyFileError::Decrypt);
    }
    Ok(key)
}

fn parse_kdf(line: &str) -> Result<(u32, u32), KeyFileError> {
    let bad = || KeyFileError::Kdf(line.to_string());
    let mut parts = line.split_whitespace();
    if parts.next() != Some("argon2id") {
        return Err(bad());
    }
    let (mut m, mut t, mut p) = (None, None, None);
    for part in parts {
        let (k, v) = part.split_once('=').ok_or_else(bad)?;
        let v: u32 = v.parse().map_err(|_| bad())?;
        match k {
            "m" => m = Some(v),
            "t" => t = Some(v),
            "p" => p = Some(v),
            _ => return Err(bad()),
        }
    }
    match (m, t, p) {
        (Some(m), Some(t), Some(1)) if (8..=MAX_M_KIB).contains(&m) && (1..=MAX_T).contains(&t) => {
            Ok((m, t))
        }
        _ => Err(bad()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_key_survives_export_and_import() {
        let key = PublisherKey::generate();
        let text = export_key(&key, "correct horse battery").unwrap();
        assert!(text.contains(&key.public().to_string()));
        assert!(!text.contains(&data_encoding::HEXLOWER.encode(&key.secret())));
        let back = import_key(&text, "correct horse battery").unwrap();
        assert_eq!(back.public(), key.public());
        assert_eq!(back.secret(), key.secret());
    }

    #[test]
    fn wrong_passphrase_altered_files_and_weak_passphrases_are_refused() {
        let key = PublisherKey::generate();
        let text = export_key(&key, "correct horse battery").unwrap();
        assert!(matches!(
            import_key(&text, "wrong horse battery"),
            Err(KeyFileError::Decrypt)
        ));
        // Another public key in the file: the associated data no longer matches.
        let other = PublisherKey::generate().public().to_string();
        let swapped = text.replace(&key.public().to_string(), &other);
        assert!(matches!(
            import_key(&swapped, "correct horse battery"),
            Err(KeyFileError::Decrypt)
        ));
        // A file asking for absurd work is refused before any is done.
        let greedy = text.replace("m=65536", "m=4000000000");
        assert!(matches!(
            import_key(&greedy, "x"),
            Err(KeyFileError::Kdf(_))
        ));
        assert!(matches!(
            import_key("hello", "x"),
            Err(KeyFileError::Malformed(_))
        ));
        assert!(matches!(
            export_key(&key, "short"),
            Err(KeyFileError::WeakPassphrase)
        ));
    }
}
