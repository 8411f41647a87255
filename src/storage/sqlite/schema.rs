//! Opening a storage database: file permissions, pragmas, the ownership and
//! version check, and the schema (created on open, idempotently).

use std::path::Path;
use std::time::Duration;

use rusqlite::{Connection, OpenFlags};

use crate::storage::{StorageError, StorageResult};

/// `PRAGMA application_id`: "ARCS" (ARCP storage). A database carrying
/// another id, or tables without this id, is not ours and is refused; it is
/// also distinct from the older `event_log` store's file ("ARCG").
pub const APPLICATION_ID: i64 = 0x4152_4353;
pub const SCHEMA_VERSION: i64 = 1;
/// How long a statement waits for a lock another connection holds (the
/// readers and the writer of this process, or a stray second process).
const BUSY_TIMEOUT: Duration = Duration::from_secs(5);

/// The tables. Counts are SQLite INTEGERs (read back as `u64`: a negative
/// value is a corrupt row); records are serde JSON of the types in
/// `storage::records`; event bodies are BLOBs stored and replayed as is.
const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS logs (
    session_id TEXT PRIMARY KEY,
    floor INTEGER NOT NULL,
    newest INTEGER NOT NULL,
    bytes INTEGER NOT NULL,
    max_events INTEGER NOT NULL,
    max_bytes INTEGER NOT NULL
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS events (
    session_id TEXT NOT NULL,
    seq INTEGER NOT NULL,
    job_id TEXT NOT NULL,
    body BLOB NOT NULL,
    PRIMARY KEY (session_id, seq)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS log_jobs (
    session_id TEXT NOT NULL,
    job_id TEXT NOT NULL,
    last_index INTEGER,
    last_seq INTEGER,
    terminal_seq INTEGER,
    PRIMARY KEY (session_id, job_id)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS sessions (
    session_id TEXT PRIMARY KEY,
    record TEXT NOT NULL,
    issued INTEGER NOT NULL,
    used INTEGER NOT NULL,
    closed INTEGER NOT NULL,
    acked INTEGER,
    holder TEXT
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS jobs (
    session_id TEXT NOT NULL,
    job_id TEXT NOT NULL,
    principal TEXT NOT NULL,
    position INTEGER NOT NULL,
    record TEXT NOT NULL,
    status TEXT NOT NULL,
    owner TEXT,
    cancel_requested INTEGER NOT NULL,
    lease_token TEXT,
    lease_expires_ms INTEGER,
    terminal TEXT,
    PRIMARY KEY (session_id, job_id)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS jobs_by_id ON jobs (job_id);
CREATE UNIQUE INDEX IF NOT EXISTS jobs_by_principal ON jobs (principal, position);
CREATE INDEX IF NOT EXISTS jobs_by_lease_expiry
    ON jobs (lease_expires_ms) WHERE lease_token IS NOT NULL;
CREATE TABLE IF NOT EXISTS idempotency (
    principal TEXT NOT NULL,
    key TEXT NOT NULL,
    record TEXT NOT NULL,
    expires_ms INTEGER NOT NULL,
    PRIMARY KEY (principal, key)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS subscriptions (
    owner TEXT NOT NULL,
    job_id TEXT NOT NULL,
    subscriber TEXT NOT NULL,
    PRIMARY KEY (owner, job_id, subscriber)
) WITHOUT ROWID;
";

/// Creates the file (mode 0600) if missing, then opens and prepares the
/// writer's connection: checks it is ours, sets WAL and `synchronous=FULL`,
/// creates the schema.
pub fn open_writer(path: &Path) -> StorageResult<Connection> {
    create_private_file(path)?;
    let connection = Connection::open(path).map_err(|error| open_error(path, error))?;
    prepare(&connection).map_err(|error| match error {
        Prepare::Sql(error) => open_error(path, error),
        Prepare::Refused(reason) => StorageError::Corrupt(format!("{}: {reason}", path.display())),
    })?;
    Ok(connection)
}

/// A reader's connection to a database the writer already prepared.
pub fn open_reader(path: &Path) -> StorageResult<Connection> {
    let flags = OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX;
    let connection =
        Connection::open_with_flags(path, flags).map_err(|error| open_error(path, error))?;
    connection
        .busy_timeout(BUSY_TIMEOUT)
        .map_err(|error| open_error(path, error))?;
    Ok(connection)
}

fn open_error(path: &Path, error: impl std::fmt::Display) -> StorageError {
    StorageError::Unavailable(format!("{}: {error}", path.display()))
}

enum Prepare {
    Sql(rusqlite::Error),
    Refused(String),
}

impl From<rusqlite::Error> for Prepare {
    fn from(error: rusqlite::Error) -> Self {
        Prepare::Sql(error)
    }
}

fn prepare(connection: &Connection) -> Result<(), Prepare> {
    connection.busy_timeout(BUSY_TIMEOUT)?;
    let application_id: i64 =
        connection.query_row("PRAGMA application_id", [], |row| row.get(0))?;
    let tables: i64 = connection.query_row(
        "SELECT count(*) FROM sqlite_master WHERE type = 'table'",
        [],
        |row| row.get(0),
    )?;
    if application_id != APPLICATION_ID && (application_id != 0 || tables != 0) {
        return Err(Prepare::Refused(format!(
            "not an arcp-gateway storage database (application_id {application_id:#x}); \
             refusing to touch it"
        )));
    }
    let version: i64 = connection.query_row("PRAGMA user_version", [], |row| row.get(0))?;
    if version > SCHEMA_VERSION {
        return Err(Prepare::Refused(format!(
            "storage schema version {version} is newer than this gateway understands \
             ({SCHEMA_VERSION})"
        )));
    }
    // WAL: readers never wait for the writer and see only committed
    // transactions. FULL: in WAL mode NORMAL skips the fsync at commit, so a
    // power loss could take back a transaction whose reply already said
    // "committed"; FULL syncs the WAL at every commit, and group commit
    // shares that one sync among every write of the batch.
    let mode: String = connection.query_row("PRAGMA journal_mode = WAL", [], |row| row.get(0))?;
    if !mode.eq_ignore_ascii_case("wal") {
        return Err(Prepare::Refused(format!(
            "the database cannot use WAL mode (journal_mode stays {mode})"
        )));
    }
    connection.pragma_update(None, "synchronous", "FULL")?;
    let transaction = connection.unchecked_transaction()?;
    transaction.execute_batch(SCHEMA)?;
    transaction.pragma_update(None, "application_id", APPLICATION_ID)?;
    transaction.pragma_update(None, "user_version", SCHEMA_VERSION)?;
    transaction.commit()?;
    let check: String = connection.query_row("PRAGMA quick_check", [], |row| row.get(0))?;
    if check != "ok" {
        return Err(Prepare::Refused(format!(
            "database failed its integrity check: {check}"
        )));
    }
    Ok(())
}

/// The database file is created 0600 before SQLite opens it; SQLite gives
/// its WAL and shared-memory files the same permissions.
fn create_private_file(path: &Path) -> StorageResult<()> {
    if path.exists() {
        return Ok(());
    }
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    match options.open(path) {
        Ok(_) => Ok(()),
        // Another opener created it first: fine.
        Err(error) if error.kind() == std::io::ErrorKind::AlreadyExists => Ok(()),
        Err(error) => Err(open_error(path, error)),
    }
}
