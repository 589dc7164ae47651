//! Argon2id password hashing (PHC strings, t=2, p=1, memory from the config). Hashing is
//! deliberately slow and memory-hungry, so callers run it in `spawn_blocking` and at most
//! one hash per CPU runs at a time (a login flood queues instead of exhausting memory).

use argon2::{
    Algorithm, Argon2, Params, PasswordHash, PasswordHasher, PasswordVerifier, Version,
    password_hash::SaltString,
};
use rand::RngCore;
use tokio::sync::Semaphore;

pub(crate) struct Hasher {
    argon: Argon2<'static>,
    /// A hash of a random password with the current parameters: unknown users are
    /// verified against it so their login costs the same as a wrong password.
    dummy: String,
    /// Permits for concurrent hashes.
    pub(crate) permits: Semaphore,
}

impl Hasher {
    /// Refuses parameters argon2 refuses (the message says why).
    pub(crate) fn new(memory_kib: u32) -> Result<Hasher, String> {
        let params = Params::new(memory_kib, 2, 1, None).map_err(|e| e.to_string())?;
        let argon = Argon2::new(Algorithm::Argon2id, Version::V0x13, params);
        let mut random = [0u8; 32];
        rand::rng().fill_bytes(&mut random);
        let mut hasher = Hasher {
            argon,
            dummy: String::new(),
            permits: Semaphore::new(
                std::thread::available_parallelism()
                    .map(|n| n.get())
                    .unwrap_or(2),
            ),
        };
        hasher.dummy = hasher.hash(&random).map_err(|e| e.to_string())?;
        Ok(hasher)
    }

    /// A PHC string for `password` with a fresh random salt.
    pub(crate) fn hash(&self, password: &[u8]) -> Result<String, argon2::password_hash::Error> {
        let mut salt = [0u8; 16];
        rand::rng().fill_bytes(&mut salt);
        let salt = SaltString::encode_b64(&salt)?;
        Ok(self.argon.hash_password(password, &salt)?.to_string())
    }

    /// Does `password` match `hash`? A hash that does not parse is logged and is a no.
    pub(crate) fn verify(&self, password: &[u8], hash: &str) -> bool {
        match PasswordHash::new(hash) {
            Ok(parsed) => self.argon.verify_password(password, &parsed).is_ok(),
            Err(e) => {
                tracing::error!(error = %e, "stored password hash does not parse");
                false
            }
        }
    }

    /// Spends the time of a verification and says no.
    pub(crate) fn verify_dummy(&self, password: &[u8]) -> bool {
        let _ = self.verify(password, &self.dummy);
        false
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hashes_are_salted_argon2id_and_verify() {
        let h = Hasher::new(256).unwrap();
        let a = h.hash(b"correct horse").unwrap();
        let b = h.hash(b"correct horse").unwrap();
        assert_ne!(a, b, "fresh salt per hash");
        assert!(a.starts_with("$argon2id$v=19$m=256,t=2,p=1$"), "{a}");
        assert!(h.verify(b"correct horse", &a));
        assert!(!h.verify(b"wrong horse", &a));
        assert!(!h.verify(b"correct horse", "not a hash"));
        assert!(!h.verify_dummy(b"anything"));
    }

    #[test]
    fn too_little_memory_is_refused() {
        assert!(Hasher::new(1).is_err());
    }
}
