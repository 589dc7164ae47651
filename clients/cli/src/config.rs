//! Where the CLI keeps its login: `<config dir>/session.json`, readable by the user only.

use std::{
    collections::BTreeMap,
    fs,
    io::{ErrorKind, Write as _},
    path::{Path, PathBuf},
};

use serde::{Deserialize, Serialize};

use crate::error::CliError;

/// Overrides the config directory (e.g. one per identity in scripts and tests).
pub const CONFIG_DIR_ENV: &str = "NATTER_CLI_CONFIG_DIR";
const SESSION_FILE: &str = "session.json";

/// The config directory: `$NATTER_CLI_CONFIG_DIR`, else `$XDG_CONFIG_HOME/natter`, else
/// `$HOME/.config/natter`.
pub fn default_dir() -> Result<PathBuf, CliError> {
    let var = |k: &str| std::env::var_os(k).filter(|v| !v.is_empty());
    if let Some(dir) = var(CONFIG_DIR_ENV) {
        return Ok(PathBuf::from(dir));
    }
    if let Some(xdg) = var("XDG_CONFIG_HOME") {
        return Ok(PathBuf::from(xdg).join("natter"));
    }
    if let Some(home) = var("HOME") {
        return Ok(PathBuf::from(home).join(".config").join("natter"));
    }
    Err(CliError::Usage(format!(
        "no config directory: set {CONFIG_DIR_ENV}, XDG_CONFIG_HOME or HOME, or pass --config-dir"
    )))
}

/// A logged-in device, as saved between runs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SavedSession {
    /// The server the tokens belong to.
    pub server: String,
    pub user_id: u64,
    pub username: String,
    pub device_id: u64,
    pub access_token: String,
    pub refresh_token: String,
    /// When the access token stops working (ms since the epoch), so it is refreshed
    /// before a call rather than after a refusal.
    pub access_expires_at_ms: u64,
    /// Usernames this identity knows, by user id: looked up by `@name`, or learnt by id
    /// (`GET /v1/users/by-id/{id}`) when `listen`, `history` or a group met the user.
    #[serde(default)]
    pub names: BTreeMap<u64, String>,
}

/// The config directory and the session file in it.
#[derive(Debug, Clone)]
pub struct Store {
    dir: PathBuf,
}

impl Store {
    pub fn new(dir: PathBuf) -> Self {
        Self { dir }
    }

    pub fn session_path(&self) -> PathBuf {
        self.dir.join(SESSION_FILE)
    }

    /// The saved session; `None` when nobody is logged in.
    pub fn load(&self) -> Result<Option<SavedSession>, CliError> {
        let path = self.session_path();
        let text = match fs::read_to_string(&path) {
            Ok(t) => t,
            Err(e) if e.kind() == ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(CliError::io(format!("reading {}", path.display()), e)),
        };
        serde_json::from_str(&text).map(Some).map_err(|e| {
            CliError::Other(format!("{} is damaged ({e}); log in again", path.display()))
        })
    }

    /// The saved session, or the "not logged in" error.
    pub fn require(&self) -> Result<SavedSession, CliError> {
        self.load()?.ok_or_else(|| {
            CliError::NotLoggedIn(format!(
                "no session in {}; run `natter-cli login USERNAME`",
                self.dir.display()
            ))
        })
    }

    /// Saves atomically (temporary file, then rename) with mode 0600 in a 0700 directory,
    /// so the tokens are never readable by others, not even for a moment.
    pub fn save(&self, session: &SavedSession) -> Result<(), CliError> {
        create_private_dir(&self.dir)?;
        let path = self.session_path();
        let tmp = self
            .dir
            .join(format!("{SESSION_FILE}.{}.tmp", std::process::id()));
        let text = serde_json::to_string_pretty(session)
            .map_err(|e| CliError::Other(format!("encoding the session: {e}")))?;
        let write = || -> std::io::Result<()> {
            let mut file = private_file(&tmp)?;
            file.write_all(text.as_bytes())?;
            file.write_all(b"\n")?;
            file.sync_all()?;
            fs::rename(&tmp, &path)
        };
        write().map_err(|e| {
            // Best effort: a leftover temporary file holds tokens.
            let _ = fs::remove_file(&tmp);
            CliError::io(format!("writing {}", path.display()), e)
        })
    }

    /// Forgets the session; `false` if there was none.
    pub fn delete(&self) -> Result<bool, CliError> {
        let path = self.session_path();
        match fs::remove_file(&path) {
            Ok(()) => Ok(true),
            Err(e) if e.kind() == ErrorKind::NotFound => Ok(false),
            Err(e) => Err(CliError::io(format!("removing {}", path.display()), e)),
        }
    }
}

#[cfg(unix)]
fn create_private_dir(dir: &Path) -> Result<(), CliError> {
    use std::os::unix::fs::DirBuilderExt as _;
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(|e| CliError::io(format!("creating {}", dir.display()), e))
}

#[cfg(not(unix))]
fn create_private_dir(dir: &Path) -> Result<(), CliError> {
    fs::create_dir_all(dir).map_err(|e| CliError::io(format!("creating {}", dir.display()), e))
}

#[cfg(unix)]
fn private_file(path: &Path) -> std::io::Result<fs::File> {
    use std::os::unix::fs::OpenOptionsExt as _;
    fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
}

#[cfg(not(unix))]
fn private_file(path: &Path) -> std::io::Result<fs::File> {
    fs::File::create(path)
}
