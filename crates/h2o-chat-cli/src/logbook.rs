//! The log of exchanges: every question the command line asks and what came back (prompt,
//! system, answer, model, parameters, finish reason, token counts, timings, server URL,
//! error), in SQLite at `$H2O_CHAT_HOME/logs.sqlite3`, searchable with FTS5. `h2o-chat logs`
//! reads it; `chat -c` and `--cid` continue a conversation from it.
//!
//! The log never costs an answer: it is written after the answer is printed, and a log that
//! cannot be opened or written (read-only, corrupt, locked past the busy timeout) is a
//! warning on stderr.

use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use h2o_chat::Message;
use h2o_chat_db::rusqlite::{OptionalExtension, params};
use h2o_chat_db::{Database, DbError, Migration};
use serde::Serialize;

const MIGRATIONS: &[Migration] = &[Migration {
    version: 1,
    sql: "
        CREATE TABLE exchanges (
            id INTEGER PRIMARY KEY,
            conversation TEXT NOT NULL,
            at INTEGER NOT NULL,
            model TEXT,
            system TEXT,
            prompt TEXT NOT NULL,
            answer TEXT,
            parameters TEXT,
            finish_reason TEXT,
            completion_tokens INTEGER,
            first_token_ms INTEGER,
            total_ms INTEGER,
            url TEXT,
            error TEXT
        );
        CREATE INDEX exchanges_conversation ON exchanges (conversation, id);
        CREATE VIRTUAL TABLE exchanges_fts USING fts5 (
            prompt, answer, content = 'exchanges', content_rowid = 'id'
        );
        CREATE TRIGGER exchanges_fts_insert AFTER INSERT ON exchanges BEGIN
            INSERT INTO exchanges_fts (rowid, prompt, answer)
            VALUES (new.id, new.prompt, coalesce(new.answer, ''));
        END;
        CREATE TRIGGER exchanges_fts_delete AFTER DELETE ON exchanges BEGIN
            INSERT INTO exchanges_fts (exchanges_fts, rowid, prompt, answer)
            VALUES ('delete', old.id, old.prompt, coalesce(old.answer, ''));
        END;
    ",
}];

/// One exchange, as logged and as `logs --json` prints it.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Exchange {
    pub id: i64,
    pub conversation: String,
    /// Milliseconds since the Unix epoch.
    pub at: i64,
    pub model: Option<String>,
    pub system: Option<String>,
    pub prompt: String,
    pub answer: Option<String>,
    pub parameters: Option<serde_json::Value>,
    pub finish_reason: Option<String>,
    pub completion_tokens: Option<i64>,
    pub first_token_ms: Option<i64>,
    pub total_ms: Option<i64>,
    pub url: Option<String>,
    pub error: Option<String>,
}

/// Which exchanges `logs` shows.
#[derive(Debug, Default)]
pub struct Query<'a> {
    pub limit: usize,
    pub conversation: Option<&'a str>,
    /// Full-text search (FTS5 syntax) over prompts and answers.
    pub text: Option<&'a str>,
}

/// See the module docs.
pub struct Logbook {
    db: Database,
}

/// The log's file.
pub fn default_path() -> PathBuf {
    h2o_chat_cli::home::dir().join("logs.sqlite3")
}

pub fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

impl Logbook {
    /// Opens (or creates) the log at `path`.
    pub fn open(path: &Path) -> Result<Logbook, DbError> {
        if let Some(dir) = path.parent() {
            let _ = h2o_chat_cli::home::create_private_dir(dir);
        }
        Ok(Logbook {
            db: Database::open(path, MIGRATIONS)?,
        })
    }

    /// Records an exchange; returns its id.
    pub fn record(&self, exchange: &Exchange) -> Result<i64, DbError> {
        self.db.connection().execute(
            "INSERT INTO exchanges (conversation, at, model, system, prompt, answer, parameters,
                 finish_reason, completion_tokens, first_token_ms, total_ms, url, error)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13)",
            params![
                exchange.conversation,
                exchange.at,
                exchange.model,
                exchange.system,
                exchange.prompt,
                exchange.answer,
                exchange.parameters.as_ref().map(|p| p.to_string()),
                exchange.finish_reason,
                exchange.completion_tokens,
                exchange.first_token_ms,
                exchange.total_ms,
                exchange.url,
                exchange.error,
            ],
        )?;
        Ok(self.db.connection().last_insert_rowid())
    }

    fn row(row: &h2o_chat_db::rusqlite::Row<'_>) -> h2o_chat_db::rusqlite::Result<Exchange> {
        let parameters: Option<String> = row.get(7)?;
        Ok(Exchange {
            id: row.get(0)?,
            conversation: row.get(1)?,
            at: row.get(2)?,
            model: row.get(3)?,
            system: row.get(4)?,
            prompt: row.get(5)?,
            answer: row.get(6)?,
            parameters: parameters.and_then(|p| serde_json::from_str(&p).ok()),
            finish_reason: row.get(8)?,
            completion_tokens: row.get(9)?,
            first_token_ms: row.get(10)?,
            total_ms: row.get(11)?,
            url: row.get(12)?,
            error: row.get(13)?,
        })
    }

    const COLUMNS: &'static str = "e.id, e.conversation, e.at, e.model, e.system, e.prompt, e.answer,
        e.parameters, e.finish_reason, e.completion_tokens, e.first_token_ms, e.total_ms, e.url, e.error";

    /// The newest exchanges first.
    pub fn recent(&self, query: &Query<'_>) -> Result<Vec<Exchange>, DbError> {
        let limit = query.limit.max(1) as i64;
        let connection = self.db.connection();
        let rows = match (query.text, query.conversation) {
            (Some(text), conversation) => {
                let sql = format!(
                    "SELECT {} FROM exchanges_fts f JOIN exchanges e ON e.id = f.rowid
                     WHERE exchanges_fts MATCH ?1 AND (?2 IS NULL OR e.conversation = ?2)
                     ORDER BY e.id DESC LIMIT ?3",
                    Self::COLUMNS
                );
                let mut statement = connection.prepare(&sql)?;
                statement
                    .query_map(params![text, conversation, limit], Self::row)?
                    .collect::<Result<Vec<_>, _>>()?
            }
            (None, conversation) => {
                let sql = format!(
                    "SELECT {} FROM exchanges e WHERE (?1 IS NULL OR e.conversation = ?1)
                     ORDER BY e.id DESC LIMIT ?2",
                    Self::COLUMNS
                );
                let mut statement = connection.prepare(&sql)?;
                statement
                    .query_map(params![conversation, limit], Self::row)?
                    .collect::<Result<Vec<_>, _>>()?
            }
        };
        Ok(rows)
    }

    /// The conversation of the newest exchange.
    pub fn last_conversation(&self) -> Result<Option<String>, DbError> {
        Ok(self
            .db
            .connection()
            .query_row(
                "SELECT conversation FROM exchanges ORDER BY id DESC LIMIT 1",
                [],
                |r| r.get(0),
            )
            .optional()?)
    }

    /// The messages of a conversation, oldest first, to continue it: its system message,
    /// then each answered question and its answer. `None` when there is no such conversation.
    pub fn messages(&self, conversation: &str) -> Result<Option<Transcript>, DbError> {
        let sql = format!(
            "SELECT {} FROM exchanges e WHERE e.conversation = ?1 ORDER BY e.id LIMIT 10000",
            Self::COLUMNS
        );
        let mut statement = self.db.connection().prepare(&sql)?;
        let exchanges = statement
            .query_map([conversation], Self::row)?
            .collect::<Result<Vec<_>, _>>()?;
        if exchanges.is_empty() {
            return Ok(None);
        }
        let system = exchanges.iter().rev().find_map(|e| e.system.clone());
        let mut messages = Vec::new();
        for exchange in exchanges {
            if let (Some(answer), None) = (&exchange.answer, &exchange.error) {
                messages.push(Message::user(exchange.prompt));
                messages.push(Message::assistant(answer.clone()));
            }
        }
        Ok(Some(Transcript { system, messages }))
    }
}

/// A logged conversation as far as it went: its latest system message and its answered turns.
#[derive(Debug, Clone, Default)]
pub struct Transcript {
    pub system: Option<String>,
    pub messages: Vec<Message>,
}

/// `YYYY-MM-DD HH:MM:SS` (UTC) of milliseconds since the epoch.
pub fn format_time(ms: i64) -> String {
    let seconds = ms.div_euclid(1000);
    let (days, rest) = (seconds.div_euclid(86_400), seconds.rem_euclid(86_400));
    // Howard Hinnant's days-to-civil.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02} {:02}:{:02}:{:02}",
        rest / 3600,
        rest % 3600 / 60,
        rest % 60
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn exchange(conversation: &str, prompt: &str, answer: &str) -> Exchange {
        Exchange {
            conversation: conversation.into(),
            at: now_ms(),
            prompt: prompt.into(),
            answer: Some(answer.into()),
            ..Exchange::default()
        }
    }

    #[test]
    fn newest_first_search_and_conversations() {
        let dir = tempfile::tempdir().unwrap();
        let log = Logbook::open(&dir.path().join("logs.sqlite3")).unwrap();
        log.record(&exchange("a", "What is the capital of France?", "Paris."))
            .unwrap();
        log.record(&exchange("b", "Name a colour.", "Blue."))
            .unwrap();
        log.record(&exchange("a", "And of Italy?", "Rome."))
            .unwrap();
        let recent = log
            .recent(&Query {
                limit: 2,
                ..Query::default()
            })
            .unwrap();
        assert_eq!(
            recent.iter().map(|e| e.prompt.as_str()).collect::<Vec<_>>(),
            ["And of Italy?", "Name a colour."]
        );
        let found = log
            .recent(&Query {
                limit: 10,
                text: Some("paris"),
                ..Query::default()
            })
            .unwrap();
        assert_eq!(found.len(), 1);
        assert_eq!(log.last_conversation().unwrap().as_deref(), Some("a"));
        let messages = log.messages("a").unwrap().unwrap().messages;
        assert_eq!(messages.len(), 4);
        assert_eq!(messages[3].content, "Rome.");
        assert!(log.messages("nope").unwrap().is_none());
    }

    #[test]
    fn times_are_formatted_in_utc() {
        assert_eq!(format_time(0), "1970-01-01 00:00:00");
        assert_eq!(format_time(1_795_351_461_000), "2026-11-22 12:44:21");
    }
}
