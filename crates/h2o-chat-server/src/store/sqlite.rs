//! The durable store: sessions, conversations, titles and messages in SQLite (`serve --db`),
//! so they survive a restart. The same caps as the memory store apply; every statement waits
//! at most the busy timeout for a lock, and the file is in WAL mode, so concurrent sessions
//! never block each other's reads.
//!
//! ```
//! use h2o_chat_server::{SqliteStore, Store, StoreBounds};
//!
//! let store = SqliteStore::in_memory(StoreBounds::default()).unwrap();
//! store.accept_ethics("session");
//! let id = store.create("session", "model").unwrap();
//! assert_eq!(store.list("session")[0].id, id);
//! ```

use std::path::Path;
use std::sync::atomic::AtomicU32;
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use h2o_chat_db::rusqlite::{OptionalExtension, params};
use h2o_chat_db::{Database, DbError, Migration};

use super::{
    Author, ConversationSummary, CreateError, Store, StoreBounds, StoredConversation,
    StoredMessage, cap_history, object_id, rand_u32,
};

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
];

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

fn time_of(ms: i64) -> SystemTime {
    UNIX_EPOCH + Duration::from_millis(ms.max(0) as u64)
}

/// See the module docs.
pub struct SqliteStore {
    db: Mutex<Database>,
    bounds: StoreBounds,
    counter: AtomicU32,
}

impl SqliteStore {
    /// Opens (or creates) the database file.
    pub fn open(path: &Path, bounds: StoreBounds) -> Result<Self, DbError> {
        Ok(SqliteStore::with(Database::open(path, MIGRATIONS)?, bounds))
    }

    /// A private in-memory database (`serve --db :memory:`).
    pub fn in_memory(bounds: StoreBounds) -> Result<Self, DbError> {
        Ok(SqliteStore::with(
            Database::open_in_memory(MIGRATIONS)?,
            bounds,
        ))
    }

    fn with(db: Database, bounds: StoreBounds) -> Self {
        SqliteStore {
            db: Mutex::new(db),
            bounds,
            counter: AtomicU32::new(rand_u32()),
        }
    }

    /// The file, or `:memory:`.
    pub fn location(&self) -> String {
        self.db().path().to_string()
    }

    fn db(&self) -> MutexGuard<'_, Database> {
        self.db.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Runs `f`, logging (not panicking on) a database error; `fallback` is the answer then.
    fn run<T>(
        &self,
        what: &str,
        fallback: T,
        f: impl FnOnce(&mut Database) -> Result<T, DbError>,
    ) -> T {
        let mut db = self.db();
        match f(&mut db) {
            Ok(value) => value,
            Err(err) => {
                tracing::error!(%err, what, "conversation store");
                fallback
            }
        }
    }

    /// Marks a session as seen now (creating it), forgetting the least recently seen
    /// sessions beyond the cap.
    fn touch_session(db: &Database, session: &str, max_sessions: usize) -> Result<(), DbError> {
        let connection = db.connection();
        let now = now_ms();
        let updated = connection.execute(
            "UPDATE sessions SET seen_at = ?2,
             seen_order = (SELECT COALESCE(MAX(seen_order), 0) + 1 FROM sessions) WHERE id = ?1",
            params![session, now],
        )?;
        if updated == 0 {
            connection.execute(
                "INSERT INTO sessions (id, ethics_at, seen_at, seen_order)
                 VALUES (?1, NULL, ?2, (SELECT COALESCE(MAX(seen_order), 0) + 1 FROM sessions))",
                params![session, now],
            )?;
            let count: i64 =
                connection.query_row("SELECT COUNT(*) FROM sessions", [], |r| r.get(0))?;
            let excess = count - max_sessions.max(1) as i64;
            if excess > 0 {
                let oldest: Vec<String> = connection
                    .prepare("SELECT id FROM sessions WHERE id != ?1 ORDER BY seen_order LIMIT ?2")?
                    .query_map(params![session, excess], |r| r.get(0))?
                    .collect::<Result<_, _>>()?;
                for old in oldest {
                    Self::forget_session(db, &old)?;
                }
            }
        }
        Ok(())
    }

    fn forget_session(db: &Database, session: &str) -> Result<(), DbError> {
        let connection = db.connection();
        connection.execute("DELETE FROM conversations WHERE session = ?1", [session])?;
        connection.execute("DELETE FROM generations WHERE session = ?1", [session])?;
        connection.execute("DELETE FROM sessions WHERE id = ?1", [session])?;
        Ok(())
    }

    fn messages(db: &Database, id: &str) -> Result<Vec<StoredMessage>, DbError> {
        let mut statement = db.connection().prepare(
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
}

impl Store for SqliteStore {
    fn accept_ethics(&self, session: &str) {
        let max = self.bounds.max_sessions;
        self.run("accept_ethics", (), |db| {
            Self::touch_session(db, session, max)?;
            db.connection().execute(
                "UPDATE sessions SET ethics_at = ?2 WHERE id = ?1",
                params![session, now_ms()],
            )?;
            Ok(())
        });
    }

    fn ethics_accepted(&self, session: &str) -> bool {
        self.run("ethics_accepted", false, |db| {
            let accepted: Option<Option<i64>> = db
                .connection()
                .query_row(
                    "SELECT ethics_at FROM sessions WHERE id = ?1",
                    [session],
                    |r| r.get(0),
                )
                .optional()?;
            let accepted = accepted.flatten().is_some();
            if accepted {
                db.connection().execute(
                    "UPDATE sessions SET seen_at = ?2,
                     seen_order = (SELECT COALESCE(MAX(seen_order), 0) + 1 FROM sessions)
                     WHERE id = ?1",
                    params![session, now_ms()],
                )?;
            }
            Ok(accepted)
        })
    }

    fn create(&self, session: &str, model: &str) -> Result<String, CreateError> {
        let bounds = self.bounds;
        let id = object_id(&self.counter);
        self.run("create", Err(CreateError::Unavailable), |db| {
            let connection = db.connection();
            let total: i64 =
                connection.query_row("SELECT COUNT(*) FROM conversations", [], |r| r.get(0))?;
            if total as usize >= bounds.max_conversations {
                return Ok(Err(CreateError::ServerFull {
                    limit: bounds.max_conversations,
                }));
            }
            Self::touch_session(db, session, bounds.max_sessions)?;
            let connection = db.connection();
            let mine: i64 = connection.query_row(
                "SELECT COUNT(*) FROM conversations WHERE session = ?1",
                [session],
                |r| r.get(0),
            )?;
            if mine as usize >= bounds.max_conversations_per_session {
                return Ok(Err(CreateError::SessionFull {
                    limit: bounds.max_conversations_per_session,
                }));
            }
            let now = now_ms();
            let n: i64 = connection.query_row(
                "SELECT COUNT(*) + 1 FROM conversations WHERE session = ?1",
                [session],
                |r| r.get(0),
            )?;
            connection.execute(
                "INSERT INTO conversations (id, session, model, title, created_at, updated_at, touched_at)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?5, ?5)",
                params![id, session, model, format!("Untitled {n}"), now],
            )?;
            Ok(Ok(id.clone()))
        })
    }

    fn get(&self, session: &str, id: &str) -> Option<StoredConversation> {
        self.run("get", None, |db| {
            let connection = db.connection();
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
            connection.execute(
                "UPDATE conversations SET touched_at = ?2 WHERE id = ?1",
                params![id, now_ms()],
            )?;
            Ok(Some(StoredConversation {
                id: id.to_string(),
                session: session.to_string(),
                model,
                title,
                messages: Self::messages(db, id)?,
                created_at: time_of(created_at),
                updated_at: time_of(updated_at),
                touched: Instant::now(),
            }))
        })
    }

    fn list(&self, session: &str) -> Vec<ConversationSummary> {
        self.run("list", Vec::new(), |db| {
            let mut statement = db.connection().prepare(
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

    fn set_messages(&self, session: &str, id: &str, mut messages: Vec<StoredMessage>) -> bool {
        cap_history(&mut messages, self.bounds.max_history_bytes);
        self.run("set_messages", false, |db| {
            let transaction = db.connection_mut().transaction()?;
            let now = now_ms();
            let updated = transaction.execute(
                "UPDATE conversations SET updated_at = ?3, touched_at = ?3 WHERE id = ?1 AND session = ?2",
                params![id, session, now],
            )?;
            if updated == 0 {
                return Ok(false);
            }
            transaction.execute("DELETE FROM messages WHERE conversation = ?1", [id])?;
            {
                let mut insert = transaction.prepare(
                    "INSERT INTO messages (conversation, position, author, content, id) VALUES (?1, ?2, ?3, ?4, ?5)",
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
            transaction.commit()?;
            Ok(true)
        })
    }

    fn set_title(&self, session: &str, id: &str, title: String) -> bool {
        self.run("set_title", false, |db| {
            Ok(db.connection().execute(
                "UPDATE conversations SET title = ?3, updated_at = ?4 WHERE id = ?1 AND session = ?2",
                params![id, session, title, now_ms()],
            )? > 0)
        })
    }

    fn delete(&self, session: &str, id: &str) -> bool {
        self.run("delete", false, |db| {
            Ok(db.connection().execute(
                "DELETE FROM conversations WHERE id = ?1 AND session = ?2",
                params![id, session],
            )? > 0)
        })
    }

    fn record_generation(&self, session: &str) {
        let max = self.bounds.max_sessions;
        self.run("record_generation", (), |db| {
            Self::touch_session(db, session, max)?;
            db.connection().execute(
                "INSERT INTO generations (session, at) VALUES (?1, ?2)",
                params![session, now_ms()],
            )?;
            Ok(())
        });
    }

    fn recent_generations(&self, session: &str, window: Duration) -> (usize, Option<Duration>) {
        self.run("recent_generations", (0, None), |db| {
            let since = now_ms() - window.as_millis() as i64;
            let (count, oldest): (i64, Option<i64>) = db.connection().query_row(
                "SELECT COUNT(*), MIN(at) FROM generations WHERE session = ?1 AND at > ?2",
                params![session, since],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )?;
            let expires = oldest.map(|at| Duration::from_millis((at - since).max(0) as u64));
            Ok((count as usize, expires))
        })
    }

    fn sweep(&self, ttl: Duration) -> usize {
        self.run("sweep", 0, |db| {
            let connection = db.connection();
            let now = now_ms();
            let cutoff = now - ttl.as_millis() as i64;
            let removed =
                connection.execute("DELETE FROM conversations WHERE touched_at <= ?1", [cutoff])?;
            connection.execute("DELETE FROM generations WHERE at < ?1", [now - 60_000])?;
            connection.execute(
                "DELETE FROM sessions WHERE seen_at <= ?1
                 AND id NOT IN (SELECT session FROM conversations)
                 AND id NOT IN (SELECT session FROM generations)",
                [cutoff],
            )?;
            Ok(removed)
        })
    }

    fn conversation_count(&self) -> usize {
        self.run("conversation_count", 0, |db| {
            let count: i64 =
                db.connection()
                    .query_row("SELECT COUNT(*) FROM conversations", [], |r| r.get(0))?;
            Ok(count as usize)
        })
    }

    fn session_count(&self) -> usize {
        self.run("session_count", 0, |db| {
            let count: i64 =
                db.connection()
                    .query_row("SELECT COUNT(*) FROM sessions", [], |r| r.get(0))?;
            Ok(count as usize)
        })
    }

    fn owner_of(&self, id: &str) -> Option<String> {
        self.run("owner_of", None, |db| {
            Ok(db
                .connection()
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

    #[test]
    fn a_failing_database_is_unavailable_never_a_panic_or_a_full_server() {
        let store = SqliteStore::in_memory(StoreBounds::default()).unwrap();
        store.accept_ethics("s");
        let id = store.create("s", "m").unwrap();
        store
            .db()
            .connection()
            .execute_batch("DROP TABLE messages; DROP TABLE conversations;")
            .unwrap();
        assert_eq!(store.create("s", "m"), Err(CreateError::Unavailable));
        assert!(store.get("s", &id).is_none());
        assert!(store.list("s").is_empty());
        assert!(!store.set_messages("s", &id, vec![message("hello")]));
        assert!(!store.delete("s", &id));
    }

    #[test]
    fn conversations_survive_reopening_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("serve.sqlite3");
        let store = SqliteStore::open(&path, StoreBounds::default()).unwrap();
        store.accept_ethics("s");
        let id = store.create("s", "m").unwrap();
        assert!(store.set_messages("s", &id, vec![message("hello")]));
        assert!(store.set_title("s", &id, "Greetings".into()));
        drop(store);
        let store = SqliteStore::open(&path, StoreBounds::default()).unwrap();
        assert!(store.ethics_accepted("s"));
        let conversation = store.get("s", &id).unwrap();
        assert_eq!(conversation.title, "Greetings");
        assert_eq!(conversation.messages, vec![message("hello")]);
        assert!(
            store.get("t", &id).is_none(),
            "another session's: not found"
        );
    }

    #[test]
    fn the_sqlite_store_keeps_the_store_contract() {
        crate::store::contract::check(|bounds| {
            Box::new(SqliteStore::in_memory(bounds).expect("an in-memory database"))
        });
    }
}
