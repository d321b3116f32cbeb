//! The durable store: sessions, conversations, titles and messages in SQLite (`serve --db`),
//! so they survive a restart. The same caps as the memory store apply.
//!
//! One connection writes (writes are serialised anyway); a few read-only connections serve
//! the reads, which in WAL mode see the last commit and never wait behind the writer. Every
//! statement waits at most the busy timeout for a lock. The counts `/metrics` shows are kept
//! in memory, so scraping it costs no query.
//!
//! ```
//! use h2o_chat_server::{SqliteStore, Store, StoreBounds};
//!
//! let store = SqliteStore::in_memory(StoreBounds::default()).unwrap();
//! store.accept_ethics("session").unwrap();
//! let id = store.create("session", "model").unwrap();
//! assert_eq!(store.list("session").unwrap()[0].id, id);
//! ```

use std::path::Path;
use std::sync::atomic::{AtomicU32, AtomicUsize, Ordering};
use std::sync::{Condvar, Mutex, MutexGuard};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use h2o_chat_db::rusqlite::{Connection, OptionalExtension, params};
use h2o_chat_db::{BUSY_TIMEOUT, Database, DbError, Migration};

use super::{
    Author, ConversationSummary, CreateError, Store, StoreBounds, StoreError, StoredConversation,
    StoredMessage, Sweep, TurnStart, apply_answer, apply_turn, object_id, rand_u32,
};

/// Read-only connections beside the writer.
const READERS: usize = 4;
/// A session's "last seen" is written at most this often when only read.
const SEEN_GRANULARITY_MS: i64 = 60_000;

const MIGRATIONS: &[Migration] = &[
    Migration {
        version: 1,
        sql: "
        CREATE TABLE sessions (
            id TEXT PRIMARY KEY,
            ethics_at INTEGER,
            seen_at INTEGER NOT NULL
        );
        CREATE INDEX sessions_seen ON sessions (seen_at);
        CREATE TABLE conversations (
            id TEXT PRIMARY KEY,
            session TEXT NOT NULL,
            model TEXT NOT NULL,
            title TEXT NOT NULL,
            created_at INTEGER NOT NULL,
            updated_at INTEGER NOT NULL,
            touched_at INTEGER NOT NULL
        );
        CREATE INDEX conversations_session ON conversations (session, updated_at);
        CREATE INDEX conversations_touched ON conversations (touched_at);
        CREATE TABLE messages (
            conversation TEXT NOT NULL REFERENCES conversations (id) ON DELETE CASCADE,
            position INTEGER NOT NULL,
            author TEXT NOT NULL,
            content TEXT NOT NULL,
            id TEXT NOT NULL,
            PRIMARY KEY (conversation, position)
        );
        CREATE TABLE generations (
            session TEXT NOT NULL,
            at INTEGER NOT NULL
        );
        CREATE INDEX generations_session ON generations (session, at);
    ",
    },
    // Sessions are forgotten least recently seen first: an order, not a millisecond clock,
    // which ties when sessions are seen within the same millisecond.
    Migration {
        version: 2,
        sql: "
        ALTER TABLE sessions ADD COLUMN seen_order INTEGER NOT NULL DEFAULT 0;
        CREATE INDEX sessions_seen_order ON sessions (seen_order);
    ",
    },
    // Whether the user ever touched a conversation (a message, a title): untouched ones are
    // pruned after an hour of idleness. Existing rows count as touched.
    Migration {
        version: 3,
        sql: "
        ALTER TABLE conversations ADD COLUMN touched INTEGER NOT NULL DEFAULT 1;
        CREATE INDEX conversations_updated ON conversations (updated_at);
    ",
    },
];

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

fn time_of(ms: i64) -> SystemTime {
    UNIX_EPOCH + Duration::from_millis(ms.max(0) as u64)
}

fn ms_of(duration: Duration) -> i64 {
    i64::try_from(duration.as_millis()).unwrap_or(i64::MAX)
}

/// Read-only connections, taken one at a time.
struct Readers {
    idle: Mutex<Vec<Database>>,
    returned: Condvar,
}

/// See the module docs.
pub struct SqliteStore {
    writer: Mutex<Database>,
    /// Empty for `:memory:` (a private database has one connection): reads use the writer.
    readers: Option<Readers>,
    bounds: StoreBounds,
    counter: AtomicU32,
    conversations: AtomicUsize,
    sessions: AtomicUsize,
    location: String,
}

impl SqliteStore {
    /// Opens (or creates) the database file.
    pub fn open(path: &Path, bounds: StoreBounds) -> Result<Self, DbError> {
        let writer = Database::open(path, MIGRATIONS)?;
        let readers = (0..READERS)
            .map(|_| Database::open_reader(path))
            .collect::<Result<Vec<_>, _>>()?;
        SqliteStore::with(
            writer,
            Some(Readers {
                idle: Mutex::new(readers),
                returned: Condvar::new(),
            }),
            bounds,
        )
    }

    /// A private in-memory database (`serve --db :memory:`).
    pub fn in_memory(bounds: StoreBounds) -> Result<Self, DbError> {
        SqliteStore::with(Database::open_in_memory(MIGRATIONS)?, None, bounds)
    }

    fn with(
        writer: Database,
        readers: Option<Readers>,
        bounds: StoreBounds,
    ) -> Result<Self, DbError> {
        let count = |table: &str| -> Result<usize, DbError> {
            let n: i64 = writer.connection().query_row(
                &format!("SELECT COUNT(*) FROM {table}"),
                [],
                |r| r.get(0),
            )?;
            Ok(usize::try_from(n).unwrap_or(0))
        };
        let (conversations, sessions) = (count("conversations")?, count("sessions")?);
        Ok(SqliteStore {
            location: writer.path().to_string(),
            writer: Mutex::new(writer),
            readers,
            bounds,
            counter: AtomicU32::new(rand_u32()),
            conversations: AtomicUsize::new(conversations),
            sessions: AtomicUsize::new(sessions),
        })
    }

    /// The file, or `:memory:`.
    pub fn location(&self) -> String {
        self.location.clone()
    }

    fn writer(&self) -> MutexGuard<'_, Database> {
        self.writer.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Runs a write.
    fn write<T>(
        &self,
        operation: &'static str,
        f: impl FnOnce(&mut Database) -> Result<T, DbError>,
    ) -> Result<T, StoreError> {
        let mut db = self.writer();
        f(&mut db).map_err(|err| StoreError::new(operation, err))
    }

    /// Runs a read on a reader connection (the writer's for `:memory:`), waiting at most the
    /// busy timeout for one to be free.
    fn read<T>(
        &self,
        operation: &'static str,
        f: impl FnOnce(&Connection) -> Result<T, DbError>,
    ) -> Result<T, StoreError> {
        let Some(readers) = &self.readers else {
            let db = self.writer();
            return f(db.connection()).map_err(|err| StoreError::new(operation, err));
        };
        let mut idle = readers.idle.lock().unwrap_or_else(|e| e.into_inner());
        let deadline = std::time::Instant::now() + BUSY_TIMEOUT;
        let reader = loop {
            if let Some(reader) = idle.pop() {
                break reader;
            }
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            if left.is_zero() {
                return Err(StoreError::new(operation, "every reader stayed busy"));
            }
            idle = readers
                .returned
                .wait_timeout(idle, left)
                .unwrap_or_else(|e| e.into_inner())
                .0;
        };
        drop(idle);
        let result = f(reader.connection()).map_err(|err| StoreError::new(operation, err));
        readers
            .idle
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(reader);
        readers.returned.notify_one();
        result
    }

    /// Marks a session as seen now (creating it), forgetting the least recently seen sessions
    /// beyond the cap — their records only: their conversations stay.
    fn touch_session(&self, db: &Database, session: &str) -> Result<(), DbError> {
        let connection = db.connection();
        let now = now_ms();
        let updated = connection.execute(
            "UPDATE sessions SET seen_at = ?2,
             seen_order = (SELECT COALESCE(MAX(seen_order), 0) + 1 FROM sessions) WHERE id = ?1",
            params![session, now],
        )?;
        if updated > 0 {
            return Ok(());
        }
        connection.execute(
            "INSERT INTO sessions (id, ethics_at, seen_at, seen_order)
             VALUES (?1, NULL, ?2, (SELECT COALESCE(MAX(seen_order), 0) + 1 FROM sessions))",
            params![session, now],
        )?;
        let count: i64 = connection.query_row("SELECT COUNT(*) FROM sessions", [], |r| r.get(0))?;
        let excess = count - self.bounds.max_sessions.max(1) as i64;
        if excess > 0 {
            let oldest: Vec<String> = connection
                .prepare("SELECT id FROM sessions WHERE id != ?1 ORDER BY seen_order LIMIT ?2")?
                .query_map(params![session, excess], |r| r.get(0))?
                .collect::<Result<_, _>>()?;
            for old in oldest {
                connection.execute("DELETE FROM generations WHERE session = ?1", [&old])?;
                connection.execute("DELETE FROM sessions WHERE id = ?1", [&old])?;
            }
        }
        let count: i64 = connection.query_row("SELECT COUNT(*) FROM sessions", [], |r| r.get(0))?;
        self.sessions
            .store(usize::try_from(count).unwrap_or(0), Ordering::Relaxed);
        Ok(())
    }

    fn messages(connection: &Connection, id: &str) -> Result<Vec<StoredMessage>, DbError> {
        let mut statement = connection.prepare(
            "SELECT author, content, id FROM messages WHERE conversation = ?1 ORDER BY position",
        )?;
        let rows = statement.query_map([id], |row| {
            let author: String = row.get(0)?;
            Ok(StoredMessage {
                from: if author == "assistant" {
                    Author::Assistant
                } else {
                    Author::User
                },
                content: row.get(1)?,
                id: row.get(2)?,
            })
        })?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// Rewrites a conversation's messages after `change` (in one transaction); false when the
    /// conversation is gone, another session's, or `change` says nothing changed.
    fn change_messages(
        &self,
        operation: &'static str,
        session: &str,
        id: &str,
        change: impl FnOnce(&mut Vec<StoredMessage>) -> bool,
    ) -> Result<bool, StoreError> {
        self.write(operation, |db| {
            let transaction = db.connection_mut().transaction()?;
            let owned: Option<i64> = transaction
                .query_row(
                    "SELECT 1 FROM conversations WHERE id = ?1 AND session = ?2",
                    params![id, session],
                    |r| r.get(0),
                )
                .optional()?;
            if owned.is_none() {
                return Ok(false);
            }
            let mut messages = Self::messages(&transaction, id)?;
            if !change(&mut messages) {
                return Ok(false);
            }
            transaction.execute("DELETE FROM messages WHERE conversation = ?1", [id])?;
            {
                let mut insert = transaction.prepare(
                    "INSERT INTO messages (conversation, position, author, content, id)
                     VALUES (?1, ?2, ?3, ?4, ?5)",
                )?;
                for (position, message) in messages.iter().enumerate() {
                    insert.execute(params![
                        id,
                        position as i64,
                        message.from.role(),
                        message.content,
                        message.id
                    ])?;
                }
            }
            let now = now_ms();
            transaction.execute(
                "UPDATE conversations SET updated_at = ?2, touched_at = ?2, touched = 1
                 WHERE id = ?1",
                params![id, now],
            )?;
            transaction.commit()?;
            Ok(true)
        })
    }
}

impl Store for SqliteStore {
    fn blocks(&self) -> bool {
        true
    }

    fn accept_ethics(&self, session: &str) -> Result<(), StoreError> {
        self.write("accept_ethics", |db| {
            self.touch_session(db, session)?;
            db.connection().execute(
                "UPDATE sessions SET ethics_at = ?2 WHERE id = ?1",
                params![session, now_ms()],
            )?;
            Ok(())
        })
    }

    /// A read; the session's "last seen" is written only when it is a minute old.
    fn ethics_accepted(&self, session: &str) -> Result<bool, StoreError> {
        let row = self.read("ethics_accepted", |connection| {
            Ok(connection
                .query_row(
                    "SELECT ethics_at, seen_at FROM sessions WHERE id = ?1",
                    [session],
                    |r| Ok((r.get::<_, Option<i64>>(0)?, r.get::<_, i64>(1)?)),
                )
                .optional()?)
        })?;
        let Some((Some(_), seen_at)) = row else {
            return Ok(false);
        };
        if now_ms() - seen_at > SEEN_GRANULARITY_MS {
            self.write("ethics_accepted", |db| self.touch_session(db, session))?;
        }
        Ok(true)
    }

    fn create(&self, session: &str, model: &str) -> Result<String, CreateError> {
        let bounds = self.bounds;
        let id = object_id(&self.counter);
        let created = self.write("create", |db| {
            if self.conversations.load(Ordering::Relaxed) >= bounds.max_conversations {
                return Ok(Err(CreateError::ServerFull {
                    limit: bounds.max_conversations,
                }));
            }
            let mine: i64 = db.connection().query_row(
                "SELECT COUNT(*) FROM conversations WHERE session = ?1",
                [session],
                |r| r.get(0),
            )?;
            if mine as usize >= bounds.max_conversations_per_session {
                return Ok(Err(CreateError::SessionFull {
                    limit: bounds.max_conversations_per_session,
                }));
            }
            self.touch_session(db, session)?;
            let now = now_ms();
            db.connection().execute(
                "INSERT INTO conversations
                 (id, session, model, title, created_at, updated_at, touched_at, touched)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?5, ?5, 0)",
                params![id, session, model, format!("Untitled {}", mine + 1), now],
            )?;
            self.conversations.fetch_add(1, Ordering::Relaxed);
            Ok(Ok(id.clone()))
        });
        created.unwrap_or_else(|err| Err(CreateError::Unavailable(err)))
    }

    fn get(&self, session: &str, id: &str) -> Result<Option<StoredConversation>, StoreError> {
        self.read("get", |connection| {
            let row = connection
                .query_row(
                    "SELECT model, title, created_at, updated_at FROM conversations
                     WHERE id = ?1 AND session = ?2",
                    params![id, session],
                    |r| {
                        Ok((
                            r.get::<_, String>(0)?,
                            r.get::<_, String>(1)?,
                            r.get::<_, i64>(2)?,
                            r.get::<_, i64>(3)?,
                        ))
                    },
                )
                .optional()?;
            let Some((model, title, created_at, updated_at)) = row else {
                return Ok(None);
            };
            Ok(Some(StoredConversation {
                id: id.to_string(),
                session: session.to_string(),
                model,
                title,
                messages: Self::messages(connection, id)?,
                created_at: time_of(created_at),
                updated_at: time_of(updated_at),
            }))
        })
    }

    fn list(&self, session: &str) -> Result<Vec<ConversationSummary>, StoreError> {
        self.read("list", |connection| {
            let mut statement = connection.prepare(
                "SELECT id, title, model, updated_at FROM conversations WHERE session = ?1
                 ORDER BY updated_at DESC, id DESC",
            )?;
            let rows = statement.query_map([session], |r| {
                Ok(ConversationSummary {
                    id: r.get(0)?,
                    title: r.get(1)?,
                    model: r.get(2)?,
                    updated_at: time_of(r.get(3)?),
                })
            })?;
            Ok(rows.collect::<Result<_, _>>()?)
        })
    }

    fn begin_turn(&self, session: &str, id: &str, turn: &TurnStart) -> Result<bool, StoreError> {
        let max_bytes = self.bounds.max_history_bytes;
        self.change_messages("begin_turn", session, id, |messages| {
            apply_turn(messages, turn, max_bytes);
            true
        })
    }

    fn end_turn(
        &self,
        session: &str,
        id: &str,
        question_id: &str,
        answer: &StoredMessage,
    ) -> Result<bool, StoreError> {
        let max_bytes = self.bounds.max_history_bytes;
        self.change_messages("end_turn", session, id, |messages| {
            apply_answer(messages, question_id, answer, max_bytes)
        })
    }

    fn set_title(&self, session: &str, id: &str, title: &str) -> Result<bool, StoreError> {
        self.write("set_title", |db| {
            Ok(db.connection().execute(
                "UPDATE conversations SET title = ?3, updated_at = ?4, touched = 1
                 WHERE id = ?1 AND session = ?2",
                params![id, session, title, now_ms()],
            )? > 0)
        })
    }

    fn delete(&self, session: &str, id: &str) -> Result<bool, StoreError> {
        self.write("delete", |db| {
            let deleted = db.connection().execute(
                "DELETE FROM conversations WHERE id = ?1 AND session = ?2",
                params![id, session],
            )? > 0;
            if deleted {
                self.conversations.fetch_sub(1, Ordering::Relaxed);
            }
            Ok(deleted)
        })
    }

    fn record_generation(&self, session: &str) -> Result<(), StoreError> {
        self.write("record_generation", |db| {
            self.touch_session(db, session)?;
            db.connection().execute(
                "INSERT INTO generations (session, at) VALUES (?1, ?2)",
                params![session, now_ms()],
            )?;
            Ok(())
        })
    }

    fn recent_generations(
        &self,
        session: &str,
        window: Duration,
    ) -> Result<(usize, Option<Duration>), StoreError> {
        self.read("recent_generations", |connection| {
            let since = now_ms() - ms_of(window);
            let (count, oldest): (i64, Option<i64>) = connection.query_row(
                "SELECT COUNT(*), MIN(at) FROM generations WHERE session = ?1 AND at > ?2",
                params![session, since],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )?;
            let expires = oldest.map(|at| Duration::from_millis((at - since).max(0) as u64));
            Ok((count as usize, expires))
        })
    }

    fn sweep(&self, sweep: &Sweep) -> Result<usize, StoreError> {
        self.write("sweep", |db| {
            let connection = db.connection();
            let now = now_ms();
            let retired = match sweep.retention {
                Some(retention) => connection.execute(
                    "DELETE FROM conversations WHERE updated_at <= ?1",
                    [now.saturating_sub(ms_of(retention))],
                )?,
                None => 0,
            };
            let untouched = connection.execute(
                "DELETE FROM conversations WHERE touched = 0 AND updated_at <= ?1
                 AND NOT EXISTS (SELECT 1 FROM messages WHERE conversation = conversations.id)",
                [now.saturating_sub(ms_of(sweep.untouched))],
            )?;
            connection.execute("DELETE FROM generations WHERE at < ?1", [now - 60_000])?;
            let removed = retired + untouched;
            if removed > 0 {
                let count: i64 =
                    connection.query_row("SELECT COUNT(*) FROM conversations", [], |r| r.get(0))?;
                self.conversations
                    .store(usize::try_from(count).unwrap_or(0), Ordering::Relaxed);
            }
            Ok(removed)
        })
    }

    fn conversation_count(&self) -> usize {
        self.conversations.load(Ordering::Relaxed)
    }

    fn session_count(&self) -> usize {
        self.sessions.load(Ordering::Relaxed)
    }

    fn owner_of(&self, id: &str) -> Result<Option<String>, StoreError> {
        self.read("owner_of", |connection| {
            Ok(connection
                .query_row(
                    "SELECT session FROM conversations WHERE id = ?1",
                    [id],
                    |r| r.get(0),
                )
                .optional()?)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn message(content: &str) -> StoredMessage {
        StoredMessage {
            from: Author::User,
            content: content.into(),
            id: "00000000-0000-0000-0000-000000000000".into(),
        }
    }

    fn turn(content: &str) -> TurnStart {
        TurnStart {
            retry_of: None,
            question: message(content),
        }
    }

    #[test]
    fn a_failing_database_is_unavailable_never_a_panic_or_a_full_server() {
        let store = SqliteStore::in_memory(StoreBounds::default()).unwrap();
        store.accept_ethics("s").unwrap();
        let id = store.create("s", "m").unwrap();
        store
            .writer()
            .connection()
            .execute_batch("DROP TABLE messages; DROP TABLE conversations;")
            .unwrap();
        assert!(matches!(
            store.create("s", "m"),
            Err(CreateError::Unavailable(_))
        ));
        assert!(store.get("s", &id).is_err());
        assert!(store.list("s").is_err());
        assert!(store.begin_turn("s", &id, &turn("hello")).is_err());
        assert!(store.delete("s", &id).is_err());
    }

    #[test]
    fn conversations_survive_reopening_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("serve.sqlite3");
        let store = SqliteStore::open(&path, StoreBounds::default()).unwrap();
        store.accept_ethics("s").unwrap();
        let id = store.create("s", "m").unwrap();
        assert!(store.begin_turn("s", &id, &turn("hello")).unwrap());
        assert!(store.set_title("s", &id, "Greetings").unwrap());
        drop(store);
        let store = SqliteStore::open(&path, StoreBounds::default()).unwrap();
        assert!(store.ethics_accepted("s").unwrap());
        assert_eq!(store.conversation_count(), 1, "counted at open");
        let conversation = store.get("s", &id).unwrap().unwrap();
        assert_eq!(conversation.title, "Greetings");
        assert_eq!(conversation.messages, vec![message("hello")]);
        assert!(
            store.get("t", &id).unwrap().is_none(),
            "another session's: not found"
        );
    }

    #[test]
    fn the_sqlite_store_keeps_the_store_contract() {
        crate::store::contract::check(|bounds| {
            Box::new(SqliteStore::in_memory(bounds).expect("an in-memory database"))
        });
    }

    #[test]
    fn the_file_store_keeps_the_store_contract_with_its_readers() {
        let dir = tempfile::tempdir().unwrap();
        let n = AtomicUsize::new(0);
        crate::store::contract::check(|bounds| {
            let path = dir
                .path()
                .join(format!("{}.sqlite3", n.fetch_add(1, Ordering::Relaxed)));
            Box::new(SqliteStore::open(&path, bounds).expect("a database file"))
        });
    }
}
