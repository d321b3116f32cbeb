//! The stream decoder against a real stream at every split position, and under random
//! input and random chunking (proptest as the fuzzer: no panic, bounded memory).

use h2o_chat_protocol::{DecodeError, Decoder, Event};
use proptest::prelude::*;

/// A stream with everything §b.5 lists: keep-alives, CRLF, `data: `, multi-byte text,
/// a special token, a token containing `data:`, and the final event.
fn real_stream() -> Vec<u8> {
    let mut body = String::from(":\n\n");
    body.push_str("data:{\"token\":{\"id\":9856,\"text\":\"Hello\",\"logprob\":-0.51,\"special\":false},\"generated_text\":null,\"details\":null}\n\n");
    body.push_str("data: {\"token\":{\"id\":7,\"text\":\" мир 👋\",\"logprob\":null,\"special\":false},\"generated_text\":null,\"details\":null}\r\n\r\n");
    body.push_str("data:{\"token\":{\"id\":8,\"text\":\" data:{\\\"x\\\"}\\n\",\"logprob\":-1.5,\"special\":false},\"generated_text\":null,\"details\":null}\r\r");
    body.push_str("data:{\"token\":{\"id\":3,\"text\":\"<|sep|>\",\"logprob\":-0.1,\"special\":true},\"generated_text\":null,\"details\":null}\n\n");
    body.push_str("data:{\"token\":{\"id\":11,\"text\":\"<|endoftext|>\",\"logprob\":-0.03,\"special\":true},\"generated_text\":\"Hello мир 👋 data:{\\\"x\\\"}\\n\",\"details\":null}\n\n");
    body.into_bytes()
}

fn decode(chunks: &[&[u8]], limit: usize) -> Result<Vec<Event>, DecodeError> {
    let mut decoder = Decoder::new(limit);
    let mut events = Vec::new();
    for chunk in chunks {
        decoder.push(chunk);
        while let Some(event) = decoder.next_event()? {
            events.push(event);
        }
    }
    if let Some(event) = decoder.finish()? {
        events.push(event);
    }
    Ok(events)
}

#[test]
fn real_stream_decodes_to_five_events() {
    let events = decode(&[&real_stream()], 1 << 20).unwrap();
    assert_eq!(events.len(), 5);
    let Event::Final(last) = &events[4] else {
        panic!("no final event")
    };
    assert_eq!(last.generated_text, "Hello мир 👋 data:{\"x\"}\n");
}

#[test]
fn every_split_position_of_a_real_stream_gives_the_same_events() {
    let body = real_stream();
    let whole = decode(&[&body], 1 << 20).unwrap();
    for split in 0..=body.len() {
        let (a, b) = body.split_at(split);
        assert_eq!(
            decode(&[a, b], 1 << 20).unwrap(),
            whole,
            "split at byte {split}"
        );
    }
}

#[test]
fn every_pair_of_split_positions_gives_the_same_events() {
    let body = real_stream();
    let whole = decode(&[&body], 1 << 20).unwrap();
    // Every 7th first split keeps this quadratic test fast while covering all second splits.
    for first in (0..body.len()).step_by(7) {
        for second in first..=body.len() {
            let parts = [&body[..first], &body[first..second], &body[second..]];
            assert_eq!(
                decode(&parts, 1 << 20).unwrap(),
                whole,
                "splits at {first}, {second}"
            );
        }
    }
}

#[test]
fn byte_at_a_time_gives_the_same_events() {
    let body = real_stream();
    let whole = decode(&[&body], 1 << 20).unwrap();
    let bytes: Vec<&[u8]> = body.chunks(1).collect();
    assert_eq!(decode(&bytes, 1 << 20).unwrap(), whole);
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 2000, ..ProptestConfig::default() })]

    /// Arbitrary bytes in arbitrary chunks: never a panic, never more than one event plus one
    /// chunk held.
    #[test]
    fn arbitrary_input_never_panics_and_stays_bounded(
        data in proptest::collection::vec(any::<u8>(), 0..4096),
        cuts in proptest::collection::vec(1usize..512, 1..16),
    ) {
        let limit = 1024;
        let mut decoder = Decoder::new(limit);
        let mut at = 0;
        let mut cut = cuts.iter().cycle();
        while at < data.len() {
            let end = (at + cut.next().copied().unwrap_or(1)).min(data.len());
            let chunk_len = end - at;
            decoder.push(&data[at..end]);
            at = end;
            while let Ok(Some(_)) = decoder.next_event() {}
            prop_assert!(decoder.buffered() <= limit + chunk_len + 1);
        }
        let _ = decoder.finish();
    }

    /// Mostly-valid streams (real events with random bytes spliced in), in random chunks, give
    /// the same result as one chunk.
    #[test]
    fn chunking_never_changes_the_result(
        noise in proptest::collection::vec(any::<u8>(), 0..8),
        at in 0usize..600,
        cuts in proptest::collection::vec(1usize..64, 1..32),
    ) {
        let mut body = real_stream();
        let at = at.min(body.len());
        body.splice(at..at, noise);
        let whole = decode(&[&body], 1 << 20);
        let mut parts = Vec::new();
        let mut start = 0;
        for cut in cuts.iter().cycle() {
            if start >= body.len() { break; }
            let end = (start + cut).min(body.len());
            parts.push(&body[start..end]);
            start = end;
        }
        prop_assert_eq!(decode(&parts, 1 << 20), whole);
    }

    /// The hand-written fast path and serde_json agree on every token event.
    #[test]
    fn fast_path_agrees_with_serde(
        id in any::<u32>(),
        text in ".{0,24}",
        logprob in proptest::option::of(-30.0f32..0.0),
        special in any::<bool>(),
    ) {
        let token = h2o_chat_protocol::Token { id, text, logprob, special };
        let data = format!(
            "{{\"token\":{},\"generated_text\":null,\"details\":null}}",
            serde_json::to_string(&token).unwrap()
        );
        let fast = h2o_chat_protocol::event::parse_sse_data(data.as_bytes()).unwrap();
        #[derive(serde::Deserialize)]
        struct Raw { token: h2o_chat_protocol::Token }
        let slow: Raw = serde_json::from_str(&data).unwrap();
        prop_assert_eq!(fast, Event::Token(slow.token));
    }

    /// With spellings serde_json refuses mixed in (leading zeros, signs, bare dots, hex,
    /// exponents without digits, out-of-range values), the decoder's answer is exactly
    /// serde_json's: the same token, or an error where serde has one.
    #[test]
    fn fast_path_agrees_with_serde_on_any_spelling(
        id in prop_oneof![
            any::<u32>().prop_map(|n| n.to_string()),
            Just("007".to_string()), Just("-1".to_string()), Just("+1".to_string()),
            Just("1.0".to_string()), Just("1e2".to_string()), Just("4294967296".to_string()),
            Just("0".to_string()), Just("00".to_string()), Just("".to_string()),
        ],
        logprob in prop_oneof![
            (-30.0f32..0.0).prop_map(|x| x.to_string()),
            any::<f32>().prop_map(|x| format!("{x:e}")),
            Just("null".to_string()), Just("+1".to_string()), Just("1.".to_string()),
            Just(".5".to_string()), Just("-".to_string()), Just("1e".to_string()),
            Just("1e+".to_string()), Just("0x10".to_string()), Just("-0".to_string()),
            Just("01.5".to_string()), Just("1e999".to_string()), Just("-1e-999".to_string()),
            Just("NaN".to_string()), Just("Infinity".to_string()), Just(" 1.5".to_string()),
            Just("1_0".to_string()), Just("2.5E-3".to_string()),
        ],
        text in ".{0,8}",
        special in prop_oneof![Just("true"), Just("false"), Just("True"), Just("1")],
    ) {
        let data = format!(
            "{{\"token\":{{\"id\":{id},\"text\":{},\"logprob\":{logprob},\"special\":{special}}},\"generated_text\":null,\"details\":null}}",
            serde_json::to_string(&text).unwrap()
        );
        #[derive(serde::Deserialize)]
        struct Raw { token: h2o_chat_protocol::Token }
        let slow = serde_json::from_str::<Raw>(&data);
        let decoded = h2o_chat_protocol::event::parse_sse_data(data.as_bytes());
        match (slow, decoded) {
            (Ok(slow), Ok(Event::Token(fast))) => {
                prop_assert_eq!(fast.id, slow.token.id);
                prop_assert_eq!(&fast.text, &slow.token.text);
                prop_assert_eq!(fast.special, slow.token.special);
                prop_assert_eq!(fast.logprob.map(f32::to_bits), slow.token.logprob.map(f32::to_bits));
            }
            (Err(_), Err(_)) => {}
            (slow, decoded) => prop_assert!(false, "{data}: serde {slow:?}, decoder {decoded:?}", slow = slow.map(|r| r.token)),
        }
    }
}
