//! What every [`Store`] promises, checked once against each implementation (the memory
//! store, SQLite in memory and SQLite in a file with its readers).

use std::time::Duration;

use super::{Author, CreateError, Store, StoreBounds, StoredMessage, Sweep, TurnStart};

fn bounds() -> StoreBounds {
    StoreBounds {
        max_sessions: 3,
        max_conversations_per_session: 2,
        max_conversations: 4,
        max_history_bytes: 10,
    }
}

fn message(from: Author, content: &str, id: &str) -> StoredMessage {
    StoredMessage {
        from,
        content: content.into(),
        id: id.into(),
    }
}

fn question(content: &str, id: &str) -> TurnStart {
    TurnStart {
        retry_of: None,
        question: message(Author::User, content, id),
    }
}

/// Keep everything, prune nothing untouched.
const KEEP: Sweep = Sweep {
    retention: None,
    untouched: Duration::from_secs(3600),
};

/// Runs every check on fresh stores from `open`.
pub(crate) fn check(open: impl Fn(StoreBounds) -> Box<dyn Store>) {
    object_ids_are_24_lowercase_hex_and_distinct(open(bounds()).as_ref());
    another_session_sees_nothing(open(bounds()).as_ref());
    caps_refuse_the_session_that_hits_them_and_deleting_frees_them(open(bounds()).as_ref());
    forgetting_a_session_keeps_its_conversations(open(bounds()).as_ref());
    the_sweep_keeps_what_a_user_stored_unless_retention_says(open(bounds()).as_ref());
    a_turn_is_stored_as_it_happens(open(StoreBounds::default()).as_ref());
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
    assert!(store.get("bob", &id).unwrap().is_none());
    assert!(!store.delete("bob", &id).unwrap());
    assert!(!store.begin_turn("bob", &id, &question("x", "q")).unwrap());
    assert!(!store.set_title("bob", &id, "mine").unwrap());
    assert!(store.delete("alice", &id).unwrap());
    assert!(store.get("alice", &id).unwrap().is_none());
    assert_eq!(store.conversation_count(), 0);
}

fn caps_refuse_the_session_that_hits_them_and_deleting_frees_them(store: &dyn Store) {
    let s1 = store.create("s", "m").unwrap();
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
    assert_eq!(store.conversation_count(), 4, "what is stored, counted");
    assert!(store.delete("s", &s1).unwrap());
    assert!(store.create("u", "m").is_ok(), "the room a deletion made");
}

fn forgetting_a_session_keeps_its_conversations(store: &dyn Store) {
    let id = store.create("a", "m").unwrap();
    assert!(store.begin_turn("a", &id, &question("hi", "q1")).unwrap());
    for session in ["a", "b", "c"] {
        store.accept_ethics(session).unwrap();
    }
    // Reading the flag does not refresh a session seen within the last minute.
    assert!(store.ethics_accepted("a").unwrap());
    store.accept_ethics("d").unwrap();
    assert_eq!(store.session_count(), 3);
    assert!(
        !store.ethics_accepted("a").unwrap(),
        "a was the least recently seen"
    );
    assert!(store.ethics_accepted("b").unwrap() && store.ethics_accepted("d").unwrap());
    // Its conversation stays, still its own, still counted against its cap.
    let kept = store.get("a", &id).unwrap().expect("still stored");
    assert_eq!(kept.messages.len(), 1);
    assert_eq!(store.owner_of(&id).unwrap().as_deref(), Some("a"));
    store.create("a", "m").unwrap();
    assert_eq!(
        store.create("a", "m"),
        Err(CreateError::SessionFull { limit: 2 })
    );
}

fn the_sweep_keeps_what_a_user_stored_unless_retention_says(store: &dyn Store) {
    let untouched = store.create("s", "m").unwrap();
    let written = store.create("s", "m").unwrap();
    let titled = store.create("t", "m").unwrap();
    assert!(
        store
            .begin_turn("s", &written, &question("hi", "q1"))
            .unwrap()
    );
    assert!(store.set_title("t", &titled, "Mine").unwrap());
    assert_eq!(store.sweep(&KEEP).unwrap(), 0, "nothing is an hour old");
    let now = Sweep {
        retention: None,
        untouched: Duration::ZERO,
    };
    assert_eq!(store.sweep(&now).unwrap(), 1, "only the untouched one");
    assert!(store.get("s", &untouched).unwrap().is_none());
    assert!(store.get("s", &written).unwrap().is_some());
    assert!(store.get("t", &titled).unwrap().is_some());
    let retention = Sweep {
        retention: Some(Duration::ZERO),
        untouched: Duration::from_secs(3600),
    };
    assert_eq!(store.sweep(&retention).unwrap(), 2, "an explicit retention");
    assert_eq!(store.conversation_count(), 0);
}

fn a_turn_is_stored_as_it_happens(store: &dyn Store) {
    let id = store.create("s", "m").unwrap();
    let answer = |text: &str| message(Author::Assistant, text, &format!("a-{text}"));
    assert!(store.begin_turn("s", &id, &question("one", "q1")).unwrap());
    assert!(store.end_turn("s", &id, "q1", &answer("1")).unwrap());
    // A second question arrives before the first answer is stored: each answer follows its
    // own question.
    assert!(store.begin_turn("s", &id, &question("two", "q2")).unwrap());
    assert!(
        store
            .begin_turn("s", &id, &question("three", "q3"))
            .unwrap()
    );
    assert!(store.end_turn("s", &id, "q2", &answer("2")).unwrap());
    let contents = |store: &dyn Store| -> Vec<String> {
        let conversation = store.get("s", &id).unwrap().unwrap();
        conversation
            .messages
            .into_iter()
            .map(|m| m.content)
            .collect()
    };
    assert_eq!(contents(store), ["one", "1", "two", "2", "three"]);
    // A retry replaces the retried question and what follows it.
    let retry = TurnStart {
        retry_of: Some("q2".into()),
        question: message(Author::User, "two again", "q2"),
    };
    assert!(store.begin_turn("s", &id, &retry).unwrap());
    assert_eq!(contents(store), ["one", "1", "two again"]);
    // An answer whose question is gone is not stored.
    assert!(!store.end_turn("s", &id, "q3", &answer("3")).unwrap());
    assert!(!store.end_turn("s", "nothing", "q1", &answer("x")).unwrap());
}

fn history_keeps_the_newest_messages_within_the_byte_cap(store: &dyn Store) {
    let id = store.create("a", "m").unwrap();
    for (i, text) in ["aaaa", "bbbb", "cccc"].iter().enumerate() {
        let turn = question(text, &format!("q{i}"));
        assert!(store.begin_turn("a", &id, &turn).unwrap());
    }
    let kept = store.get("a", &id).unwrap().unwrap().messages;
    let kept: Vec<&str> = kept.iter().map(|m| m.content.as_str()).collect();
    assert_eq!(kept, ["bbbb", "cccc"]);
    let huge = question(&"x".repeat(100), "q9");
    assert!(store.begin_turn("a", &id, &huge).unwrap());
    assert_eq!(
        store.get("a", &id).unwrap().unwrap().messages.len(),
        1,
        "the newest message is always kept"
    );
}

fn rate_limit_events_count_within_the_window(store: &dyn Store) {
    store.record_generation("s").unwrap();
    store.record_generation("s").unwrap();
    let (count, expires) = store
        .recent_generations("s", Duration::from_secs(60))
        .unwrap();
    assert_eq!(count, 2);
    assert!(expires.unwrap() <= Duration::from_secs(60));
    assert_eq!(
        store
            .recent_generations("t", Duration::from_secs(60))
            .unwrap()
            .0,
        0
    );
}

fn lists_hold_the_session_s_conversations_with_their_titles(store: &dyn Store) {
    let first = store.create("s", "m").unwrap();
    let second = store.create("s", "m").unwrap();
    assert!(store.set_title("s", &first, "Renamed").unwrap());
    let list = store.list("s").unwrap();
    assert_eq!(list.len(), 2);
    let renamed = list.iter().find(|c| c.id == first).unwrap();
    assert_eq!(renamed.title, "Renamed");
    assert!(list.iter().any(|c| c.id == second));
    assert!(store.list("t").unwrap().is_empty());
}
