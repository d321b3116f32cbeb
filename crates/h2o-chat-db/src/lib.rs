//! # h2o-chat-db
//!
//! The SQLite plumbing h2o-chat's two stores share — the server's conversations
//! (`serve --db`) and the command line's log of exchanges — while each keeps its own schema
//! and file: opening with write-ahead logging (readers never wait for a writer) and a busy
//! timeout (every wait for a lock is bounded), and versioned migrations run in order, each in
//! its own transaction, recorded in `PRAGMA user_version`. A file it creates is readable by
//! its owner only (`0600`; SQLite gives its `-wal` and `-shm` files the same mode).
//!
//! ```
//! use h2o_chat_db::{Database, Migration};
//!
//! const MIGRATIONS: &[Migration] = &[Migration {
//!     version: 1,
//!     sql: "CREATE TABLE notes (id INTEGER PRIMARY KEY, text TEXT NOT NULL);",
//! }];
//! let db = Database::open_in_memory(MIGRATIONS).unwrap();
//! db.connection().execute("INSERT INTO notes (text) VALUES ('hi')", []).unwrap();
//! assert_eq!(db.version().unwrap(), 1);
//! ```

use std::path::Path;
use std::time::Duration;

pub use rusqlite;
use rusqlite::Connection;

/// How long a statement waits for another connection's lock before failing.
pub const BUSY_TIMEOUT: Duration = Duration::from_secs(2);

/// One step of a schema.
#[derive(Debug, Clone, Copy)]
pub struct Migration {
    /// 1, 2, 3, … in order.
    pub version: u32,
    pub sql: &'static str,
}

/// What can go wrong with a database.
#[derive(Debug, thiserror::Error)]
pub enum DbError {
    #[error("cannot create the database {path}: {source}")]
    Create {
        path: String,
        source: std::io::Error,
    },
    #[error("cannot open the database {path}: {source}")]
    Open {
        path: String,
        source: rusqlite::Error,
    },
    #[error(
        "the database {path} was made by a newer h2o-chat (schema {found}, this one knows {known})"
    )]
    TooNew {
        path: String,
        found: u32,
        known: u32,
    },
    #[error("database error: {0}")]
    Sql(#[from] rusqlite::Error),
}

/// An open database with its schema up to date.
pub struct Database {
    connection: Connection,
    path: String,
}

impl Database {
    /// Opens (or creates, owner-only) the file, in WAL mode, and runs the migrations it
    /// lacks.
    pub fn open(path: &Path, migrations: &[Migration]) -> Result<Database, DbError> {
        let name = path.display().to_string();
        create_private(path).map_err(|source| DbError::Create {
            path: name.clone(),
            source,
        })?;
        let connection = Connection::open(path).map_err(|source| DbError::Open {
            path: name.clone(),
            source,
        })?;
        Database::prepare(connection, name, migrations, true)
    }

    /// Another connection to a file `open` has prepared, for reading only: in WAL mode its
    /// reads see the last commit and never wait for the writer.
    pub fn open_reader(path: &Path) -> Result<Database, DbError> {
        let name = path.display().to_string();
        let open = |source| DbError::Open {
            path: name.clone(),
            source,
        };
        let connection = Connection::open_with_flags(
            path,
            rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY | rusqlite::OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )
        .map_err(open)?;
        connection.busy_timeout(BUSY_TIMEOUT).map_err(open)?;
        Ok(Database {
            connection,
            path: name,
        })
    }

    /// A private in-memory database.
    pub fn open_in_memory(migrations: &[Migration]) -> Result<Database, DbError> {
        let connection = Connection::open_in_memory().map_err(|source| DbError::Open {
            path: ":memory:".into(),
            source,
        })?;
        Database::prepare(connection, ":memory:".into(), migrations, false)
    }

    fn prepare(
        mut connection: Connection,
        path: String,
        migrations: &[Migration],
        wal: bool,
    ) -> Result<Database, DbError> {
        let open = |source| DbError::Open {
            path: path.clone(),
            source,
        };
        connection.busy_timeout(BUSY_TIMEOUT).map_err(open)?;
        if wal {
            connection
                .pragma_update(None, "journal_mode", "WAL")
                .map_err(open)?;
            connection
                .pragma_update(None, "synchronous", "NORMAL")
                .map_err(open)?;
        }
        connection
            .pragma_update(None, "foreign_keys", "ON")
            .map_err(open)?;
        let found: u32 = connection
            .pragma_query_value(None, "user_version", |row| row.get(0))
            .map_err(open)?;
        let known = migrations.iter().map(|m| m.version).max().unwrap_or(0);
        if found > known {
            return Err(DbError::TooNew { path, found, known });
        }
        for migration in migrations.iter().filter(|m| m.version > found) {
            let transaction = connection.transaction()?;
            transaction.execute_batch(migration.sql)?;
            transaction.pragma_update(None, "user_version", migration.version)?;
            transaction.commit()?;
        }
        Ok(Database { connection, path })
    }

    pub fn connection(&self) -> &Connection {
        &self.connection
    }

    pub fn connection_mut(&mut self) -> &mut Connection {
        &mut self.connection
    }

    /// The schema version.
    pub fn version(&self) -> Result<u32, DbError> {
        Ok(self
            .connection
            .pragma_query_value(None, "user_version", |row| row.get(0))?)
    }

    pub fn path(&self) -> &str {
        &self.path
    }
}

/// Creates `path` empty and owner-only if it does not exist (SQLite would create it with the
/// process's umask, often readable by every local user).
fn create_private(path: &Path) -> std::io::Result<()> {
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    match options.open(path) {
        Ok(_) => Ok(()),
        Err(err) if err.kind() == std::io::ErrorKind::AlreadyExists => Ok(()),
        Err(err) => Err(err),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ONE: &[Migration] = &[Migration {
        version: 1,
        sql: "CREATE TABLE a (x INTEGER);",
    }];
    const TWO: &[Migration] = &[
        Migration {
            version: 1,
            sql: "CREATE TABLE a (x INTEGER);",
        },
        Migration {
            version: 2,
            sql: "ALTER TABLE a ADD COLUMN y TEXT;",
        },
    ];

    #[test]
    fn migrations_run_once_in_order_and_a_newer_file_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t.sqlite3");
        Database::open(&path, ONE).unwrap();
        let db = Database::open(&path, TWO).unwrap();
        assert_eq!(db.version().unwrap(), 2);
        db.connection()
            .execute("INSERT INTO a (x, y) VALUES (1, 'z')", [])
            .unwrap();
        drop(db);
        assert!(matches!(
            Database::open(&path, ONE),
            Err(DbError::TooNew {
                found: 2,
                known: 1,
                ..
            })
        ));
    }

    #[cfg(unix)]
    #[test]
    fn a_new_database_is_readable_by_its_owner_only() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("private.sqlite3");
        let db = Database::open(&path, ONE).unwrap();
        db.connection()
            .execute("INSERT INTO a (x) VALUES (1)", [])
            .unwrap();
        for file in [path.clone(), dir.path().join("private.sqlite3-wal")] {
            let mode = std::fs::metadata(&file).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600, "{}", file.display());
        }
    }

    #[test]
    fn a_reader_sees_the_last_commit_while_the_writer_holds_a_transaction() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("shared.sqlite3");
        let mut writer = Database::open(&path, ONE).unwrap();
        writer
            .connection()
            .execute("INSERT INTO a (x) VALUES (1)", [])
            .unwrap();
        let transaction = writer.connection_mut().transaction().unwrap();
        transaction
            .execute("INSERT INTO a (x) VALUES (2)", [])
            .unwrap();
        let reader = Database::open_reader(&path).unwrap();
        let count: i64 = reader
            .connection()
            .query_row("SELECT COUNT(*) FROM a", [], |r| r.get(0))
            .unwrap();
        assert_eq!(
            count, 1,
            "the uncommitted row is not seen, and nothing waited"
        );
        transaction.commit().unwrap();
    }

    #[test]
    fn a_file_that_is_not_a_database_is_a_clear_error() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("bad.sqlite3");
        std::fs::write(&path, b"this is not a database, just text").unwrap();
        let err = Database::open(&path, ONE).err().expect("refused");
        assert!(err.to_string().contains("bad.sqlite3"), "{err}");
    }
}
