//! What every [`Store`] promises, checked once against each implementation (the memory
//! store and SQLite).

use std::time::Duration;

use super::{Author, CreateError, Store, StoreBounds, StoredMessage};

fn bounds() -> StoreBounds {
    StoreBounds {
        max_sessions: 3,
        max_conversations_per_session: 2,
        max_conversations: 4,
        max_history_bytes: 10,
    }
}

fn message(content: &str) -> StoredMessage {
    StoredMessage {
        from: Author::User,
        content: content.into(),
        id: "00000000-0000-0000-0000-000000000000".into(),
    }
}

/// Runs every check on fresh stores from `open`.
pub(crate) fn check(open: impl Fn(StoreBounds) -> Box<dyn Store>) {
    object_ids_are_24_lowercase_hex_and_distinct(open(bounds()).as_ref());
    another_session_sees_nothing(open(bounds()).as_ref());
    per_session_and_server_caps_and_the_sweep_frees_them(open(bounds()).as_ref());
    the_least_recently_seen_session_is_forgotten_at_the_cap(open(bounds()).as_ref());
    the_sweep_prunes_idle_sessions(open(bounds()).as_ref(), open(bounds()).as_ref());
    history_keeps_the_newest_messages_within_the_byte_cap(open(bounds()).as_ref());
    rate_limit_events_count_within_the_window(open(bounds()).as_ref());
    lists_hold_the_session_s_conversations_with_their_titles(open(StoreBounds::default()).as_ref());
}

fn object_ids_are_24_lowercase_hex_and_distinct(store: &dyn Store) {
    let a = store.create("s", "m").unwrap();
    let b = store.create("s", "m").unwrap();
    assert_eq!(a.len(), 24);
    assert!(
        a.bytes()
            .all(|c| c.is_ascii_digit() || (b'a'..=b'f').contains(&c))
    );
    assert_ne!(a, b);
}

fn another_session_sees_nothing(store: &dyn Store) {
    let id = store.create("alice", "m").unwrap();
    assert!(store.get("bob", &id).is_none());
    assert!(!store.delete("bob", &id));
    assert!(!store.set_messages("bob", &id, vec![message("x")]));
    assert!(store.delete("alice", &id));
    assert!(store.get("alice", &id).is_none());
}

fn per_session_and_server_caps_and_the_sweep_frees_them(store: &dyn Store) {
    store.create("s", "m").unwrap();
    store.create("s", "m").unwrap();
    assert_eq!(
        store.create("s", "m"),
        Err(CreateError::SessionFull { limit: 2 })
    );
    store.create("t", "m").unwrap();
    store.create("t", "m").unwrap();
    assert_eq!(
        store.create("u", "m"),
        Err(CreateError::ServerFull { limit: 4 })
    );
    assert_eq!(
        store.sweep(Duration::from_secs(3600)),
        0,
        "nothing is that old"
    );
    assert_eq!(store.sweep(Duration::ZERO), 4);
    assert!(store.create("s", "m").is_ok());
}

fn the_least_recently_seen_session_is_forgotten_at_the_cap(store: &dyn Store) {
    for session in ["a", "b", "c"] {
        store.accept_ethics(session);
    }
    assert!(store.ethics_accepted("a")); // "a" is now the most recently seen
    store.accept_ethics("d");
    assert_eq!(store.session_count(), 3);
    assert!(!store.ethics_accepted("b"), "b was the least recently seen");
    assert!(store.ethics_accepted("a") && store.ethics_accepted("d"));
}

fn the_sweep_prunes_idle_sessions(with_generation: &dyn Store, without: &dyn Store) {
    with_generation.accept_ethics("a");
    with_generation.record_generation("a");
    assert_eq!(with_generation.sweep(Duration::ZERO), 0);
    // The generation is younger than a minute, so the session stays for the rate limit.
    assert_eq!(with_generation.session_count(), 1);
    without.accept_ethics("b");
    without.sweep(Duration::ZERO);
    assert_eq!(without.session_count(), 0);
}

fn history_keeps_the_newest_messages_within_the_byte_cap(store: &dyn Store) {
    let id = store.create("a", "m").unwrap();
    assert!(store.set_messages(
        "a",
        &id,
        vec![message("aaaa"), message("bbbb"), message("cccc")]
    ));
    let kept = store.get("a", &id).unwrap().messages;
    assert_eq!(kept, vec![message("bbbb"), message("cccc")]);
    assert!(store.set_messages("a", &id, vec![message(&"x".repeat(100))]));
    assert_eq!(
        store.get("a", &id).unwrap().messages.len(),
        1,
        "the newest message is always kept"
    );
}

fn rate_limit_events_count_within_the_window(store: &dyn Store) {
    store.record_generation("s");
    store.record_generation("s");
    let (count, expires) = store.recent_generations("s", Duration::from_secs(60));
    assert_eq!(count, 2);
    assert!(expires.unwrap() <= Duration::from_secs(60));
    assert_eq!(store.recent_generations("t", Duration::from_secs(60)).0, 0);
}

fn lists_hold_the_session_s_conversations_with_their_titles(store: &dyn Store) {
    let first = store.create("s", "m").unwrap();
    let second = store.create("s", "m").unwrap();
    assert!(store.set_title("s", &first, "Renamed".into()));
    let list = store.list("s");
    assert_eq!(list.len(), 2);
    let renamed = list.iter().find(|c| c.id == first).unwrap();
    assert_eq!(renamed.title, "Renamed");
    assert!(list.iter().any(|c| c.id == second));
    assert!(store.list("t").is_empty());
}
