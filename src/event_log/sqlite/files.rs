//! The data directory's files: the directory and database created private
//! to their owner, and the token secret kept beside them.

use std::path::Path;

use super::{store_error, StoreError};

/// The data directory holds every event payload: readable by its owner only
/// (0700) when this process creates it.
pub(super) fn create_private_dir(dir: &Path) -> Result<(), StoreError> {
    if dir.exists() {
        return Ok(());
    }
    let mut builder = std::fs::DirBuilder::new();
    builder.recursive(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::DirBuilderExt;
        builder.mode(0o700);
    }
    builder.create(dir).map_err(|e| store_error(dir, e))
}

/// Creates the database file 0600 before SQLite opens it; SQLite gives its
/// WAL and shared-memory files the same permissions.
pub(super) fn create_private_file(path: &Path) -> Result<(), StoreError> {
    if path.exists() {
        return Ok(());
    }
    new_private_file()
        .open(path)
        .map(drop)
        .map_err(|e| store_error(path, e))
}

/// Reads the token secret kept in the data dir, creating it (mode 0600) on
/// first start, so resume tokens survive restarts.
pub fn load_or_create_secret(data_dir: &Path) -> Result<Vec<u8>, StoreError> {
    use std::io::Write;
    let path = data_dir.join("token-secret");
    create_private_dir(data_dir)?;
    if let Ok(existing) = std::fs::read(&path) {
        if existing.len() < 32 {
            return Err(store_error(
                &path,
                "token secret file is shorter than 32 bytes",
            ));
        }
        return Ok(existing);
    }
    let secret: [u8; 32] = rand::random();
    let mut file = new_private_file()
        .open(&path)
        .map_err(|e| store_error(&path, e))?;
    file.write_all(&secret)
        .and_then(|()| file.sync_all())
        .map_err(|e| store_error(&path, e))?;
    Ok(secret.to_vec())
}

/// Options that create a new file readable and writable by its owner only
/// (0600), failing if it exists.
fn new_private_file() -> std::fs::OpenOptions {
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    options
}
