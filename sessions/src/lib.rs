//! natter-sessions: accounts (argon2id passwords), devices (one per login), JWT access
//! tokens and rotating refresh tokens, the REST endpoints for them ([`router`]) and the
//! bus endpoints other roles ask ([`start`]): "is this device still logged in?" and
//! "does this user exist?" — [`Users`] is the client other services ask the latter with.
//! Devices also register a push token, and users mute conversations; the notifier asks
//! "where do I push for this user, and is this conversation muted?" over the bus.
//!
//! Administrators reach sessions over the bus only (`admin.rs`): search and inspect
//! accounts, disable (ban) and enable them, delete them, and post announcements, which
//! clients list with `GET /v1/announcements` (`announce.rs`).
//!
//! State lives in one redb file; the users, which of them are disabled and the
//! active/revoked state of every device are also cached in memory so the bus endpoints
//! (hit on every WebSocket connect) and bearer checks never read the disk.

mod accounts;
mod addr_limit;
mod admin;
mod announce;
mod api;
mod bus_service;
mod cache;
pub mod client_addr;
mod device_auth;
pub mod directory;
mod keyfile;
mod lockout;
pub mod openapi;
mod password;
mod push;
mod store;
mod token;
mod users;

use std::{
    path::PathBuf,
    sync::{Arc, RwLock},
    time::Duration,
};

pub use addr_limit::AddrLimits;
pub use api::{openapi, router};
pub use bus_service::start;
pub use device_auth::{DeviceAuth, DeviceAuthError, Identity};
pub use lockout::LoginLimits;
pub use token::{AuthError, Claims, TokenVerifier};
pub use users::Users;

/// Reads the secret key at `path`, generating 64 random bytes there (mode 0600) first
/// if the file does not exist. `natter serve` keeps its generated keys this way.
pub fn load_or_create_key(path: &std::path::Path) -> Result<Vec<u8>, SessionsError> {
    keyfile::load_or_create(path)
}

use natter_proto::{DeviceId, UserId};

/// The JWT issuer (`iss`) of every natter access token.
pub const ISSUER: &str = "natter";
/// Shortest accepted HS256 secret, in bytes (RFC 7518 §3.2: at least the hash size).
pub const MIN_SECRET_BYTES: usize = 32;

/// How sessions runs. Its `Debug` leaves the secrets out.
#[derive(Clone)]
pub struct Config {
    /// Holds `sessions.redb` and, unless `jwt_secret` is given, `jwt.key`.
    pub data_dir: PathBuf,
    /// The HS256 secret (at least [`MIN_SECRET_BYTES`]); when `None` a key is generated
    /// on first start into `<data_dir>/jwt.key` (mode 0600) and reused afterwards.
    pub jwt_secret: Option<Vec<u8>>,
    /// Secrets of earlier keys (each at least [`MIN_SECRET_BYTES`]): tokens they signed
    /// are still accepted, by their `kid`, during a key rotation. Nothing is signed with
    /// them.
    pub jwt_previous_secrets: Vec<Vec<u8>>,
    /// Lifetime of an access token.
    pub access_ttl: Duration,
    /// Lifetime of a refresh token (each refresh issues a new one with a fresh lifetime).
    pub refresh_ttl: Duration,
    /// Argon2id memory cost in KiB (t=2, p=1).
    pub argon2_memory_kib: u32,
    /// Wrong passwords allowed per account before its logins lock (see [`LoginLimits`]).
    pub login_limits: LoginLimits,
    /// Failed logins allowed per client address (see [`AddrLimits`]). Applies to
    /// requests that carry a [`client_addr::ClientAddr`] (the HTTP server adds it).
    pub addr_limits: AddrLimits,
}

impl std::fmt::Debug for Config {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Config")
            .field("data_dir", &self.data_dir)
            .field(
                "jwt_secret",
                &self.jwt_secret.as_ref().map(|_| "<redacted>"),
            )
            .field("jwt_previous_secrets", &self.jwt_previous_secrets.len())
            .field("access_ttl", &self.access_ttl)
            .field("refresh_ttl", &self.refresh_ttl)
            .field("argon2_memory_kib", &self.argon2_memory_kib)
            .field("login_limits", &self.login_limits)
            .field("addr_limits", &self.addr_limits)
            .finish()
    }
}

impl Default for Config {
    fn default() -> Self {
        Self {
            data_dir: PathBuf::from("./data"),
            jwt_secret: None,
            jwt_previous_secrets: Vec::new(),
            access_ttl: Duration::from_secs(15 * 60),
            refresh_ttl: Duration::from_secs(30 * 24 * 3600),
            argon2_memory_kib: 19_456,
            login_limits: LoginLimits::default(),
            addr_limits: AddrLimits::default(),
        }
    }
}

/// Why sessions could not start.
#[derive(Debug, thiserror::Error)]
pub enum SessionsError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("invalid configuration: {0}")]
    Config(String),
    #[error("JWT key: {0}")]
    Key(String),
    #[error("database: {0}")]
    Db(#[from] redb::Error),
    #[error("database holds an unreadable record: {0}")]
    Corrupt(String),
    #[error("bus: {0}")]
    Bus(#[from] natter_bus::BusError),
}

impl From<store::StoreError> for SessionsError {
    fn from(e: store::StoreError) -> Self {
        match e {
            store::StoreError::Db(e) => SessionsError::Db(e),
            store::StoreError::Corrupt(what) => SessionsError::Corrupt(what),
        }
    }
}

/// The sessions service: accounts, devices and tokens. Cheap to clone.
#[derive(Clone)]
pub struct Sessions {
    inner: Arc<Inner>,
}

struct Inner {
    store: store::Store,
    cache: RwLock<cache::Cache>,
    issuer: token::TokenIssuer,
    verifier: TokenVerifier,
    hasher: password::Hasher,
    access_ttl: Duration,
    refresh_ttl: Duration,
    /// Held by an admin change from its commit through its cache update, so the cache
    /// sees concurrent changes of one account in the order the store did.
    admin_lock: std::sync::Mutex<()>,
    /// Failed logins per account (see [`LoginLimits`]).
    lockout: lockout::Lockout,
    /// Failed logins per client address (see [`AddrLimits`]).
    addr_limiter: addr_limit::AddrLimiter,
}

impl std::fmt::Debug for Sessions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sessions").finish_non_exhaustive()
    }
}

impl Sessions {
    /// Opens (creating if needed) the data directory, the JWT key and the database, and
    /// loads the user and device cache. Blocking: call it before serving, or from
    /// `spawn_blocking`.
    pub fn open(config: Config) -> Result<Sessions, SessionsError> {
        if config.access_ttl.is_zero() || config.refresh_ttl.is_zero() {
            return Err(SessionsError::Config(
                "access_ttl and refresh_ttl must be positive".into(),
            ));
        }
        std::fs::create_dir_all(&config.data_dir).map_err(|source| SessionsError::Io {
            path: config.data_dir.clone(),
            source,
        })?;
        let secret = match &config.jwt_secret {
            Some(s) if s.len() < MIN_SECRET_BYTES => {
                return Err(SessionsError::Key(format!(
                    "the configured secret has {} bytes; at least {MIN_SECRET_BYTES} are needed",
                    s.len()
                )));
            }
            Some(s) => s.clone(),
            None => keyfile::load_or_create(&config.data_dir.join("jwt.key"))?,
        };
        for (i, old) in config.jwt_previous_secrets.iter().enumerate() {
            if old.len() < MIN_SECRET_BYTES {
                return Err(SessionsError::Key(format!(
                    "previous secret #{} has {} bytes; at least {MIN_SECRET_BYTES} are needed",
                    i + 1,
                    old.len()
                )));
            }
        }
        let (issuer, verifier) =
            token::keys(&secret, &config.jwt_previous_secrets, config.access_ttl);
        if let Some((signing, previous)) = verifier.key_ids().split_first() {
            tracing::info!(
                signing_kid = %signing,
                previous_kids = %previous.join(","),
                "JWT keys loaded"
            );
        }
        // The configured limit, beside its rejections (`natter_limit_rejections_total`).
        metrics::gauge!("natter_limit", "limit" => "login_per_ip")
            .set(f64::from(config.addr_limits.failures));
        let hasher = password::Hasher::new(config.argon2_memory_kib)
            .map_err(|e| SessionsError::Config(format!("argon2 parameters: {e}")))?;
        let store = store::Store::open(&config.data_dir.join("sessions.redb"))?;
        let cache = cache::Cache::load(&store)?;
        Ok(Sessions {
            inner: Arc::new(Inner {
                store,
                cache: RwLock::new(cache),
                issuer,
                verifier,
                hasher,
                access_ttl: config.access_ttl,
                refresh_ttl: config.refresh_ttl,
                admin_lock: std::sync::Mutex::new(()),
                lockout: lockout::Lockout::new(config.login_limits),
                addr_limiter: addr_limit::AddrLimiter::new(config.addr_limits),
            }),
        })
    }

    /// Checks access tokens (signature, expiry, issuer; not revocation). Cheap to clone.
    pub fn verifier(&self) -> TokenVerifier {
        self.inner.verifier.clone()
    }

    /// Is this device of this user logged in (not revoked) and its account not
    /// disabled? Answered from memory.
    pub fn is_device_active(&self, user: UserId, device: DeviceId) -> bool {
        self.inner.cache_read().device_active(user, device)
    }

    /// Verifies an access token and that its device is still logged in
    /// ([`AuthError::Revoked`] if not) and its account enabled ([`AuthError::Disabled`]).
    pub fn authenticate(&self, token: &str) -> Result<Claims, AuthError> {
        let claims = self.inner.verifier.verify(token)?;
        match self.inner.cache_read().standing(claims.user, claims.device) {
            cache::Standing::Active => Ok(claims),
            cache::Standing::Disabled => Err(AuthError::Disabled),
            cache::Standing::Inactive => Err(AuthError::Revoked),
        }
    }
}

impl Inner {
    fn cache_read(&self) -> std::sync::RwLockReadGuard<'_, cache::Cache> {
        // A panic while holding the lock cannot leave the maps half-updated (each update
        // is one insert), so a poisoned lock is still consistent.
        self.cache.read().unwrap_or_else(|e| e.into_inner())
    }

    fn cache_write(&self) -> std::sync::RwLockWriteGuard<'_, cache::Cache> {
        self.cache.write().unwrap_or_else(|e| e.into_inner())
    }
}
