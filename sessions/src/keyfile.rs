//! The generated JWT key: 64 random bytes in `<data_dir>/jwt.key` (mode 0600), written
//! once through a temporary file and a rename so a crash never leaves half a key.

use std::{
    fs,
    io::{self, Write},
    path::Path,
};

use rand::RngCore;

use crate::{MIN_SECRET_BYTES, SessionsError};

const KEY_BYTES: usize = 64;

fn io_err(path: &Path) -> impl FnOnce(io::Error) -> SessionsError + '_ {
    move |source| SessionsError::Io {
        path: path.to_owned(),
        source,
    }
}

/// Reads the key at `path`, generating it first if the file does not exist.
pub(crate) fn load_or_create(path: &Path) -> Result<Vec<u8>, SessionsError> {
    match fs::read(path) {
        Ok(key) if key.len() < MIN_SECRET_BYTES => Err(SessionsError::Key(format!(
            "{} holds {} bytes; at least {MIN_SECRET_BYTES} are needed",
            path.display(),
            key.len()
        ))),
        Ok(key) => Ok(key),
        Err(e) if e.kind() == io::ErrorKind::NotFound => create(path),
        Err(e) => Err(io_err(path)(e)),
    }
}

fn create(path: &Path) -> Result<Vec<u8>, SessionsError> {
    let mut key = vec![0u8; KEY_BYTES];
    rand::rng().fill_bytes(&mut key);
    let tmp = path.with_extension("key.tmp");
    let mut options = fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    {
        let mut file = options.open(&tmp).map_err(io_err(&tmp))?;
        file.write_all(&key).map_err(io_err(&tmp))?;
        file.sync_all().map_err(io_err(&tmp))?;
    }
    fs::rename(&tmp, path).map_err(io_err(path))?;
    if let Some(dir) = path.parent() {
        // Make the rename itself durable. Directories cannot be opened this way on every
        // platform; the key is already on disk either way.
        if let Ok(d) = fs::File::open(dir) {
            let _ = d.sync_all();
        }
    }
    tracing::info!(path = %path.display(), "generated a new JWT signing key");
    Ok(key)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generates_once_then_reuses() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("jwt.key");
        let a = load_or_create(&path).unwrap();
        assert_eq!(a.len(), KEY_BYTES);
        assert_eq!(load_or_create(&path).unwrap(), a);
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = fs::metadata(&path).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600);
        }
    }

    #[test]
    fn refuses_a_short_key() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("jwt.key");
        fs::write(&path, b"short").unwrap();
        assert!(matches!(load_or_create(&path), Err(SessionsError::Key(_))));
    }
}
