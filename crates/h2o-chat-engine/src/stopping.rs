//! When a generation ends, in TGI's order (protocol §b.3): the length limit first, then the
//! end-of-sequence token, then a stop string at the end of the output.

use h2o_chat_protocol::FinishReason;

/// The stopping rules of one generation.
#[derive(Debug, Clone)]
pub struct StoppingCriteria {
    max_new_tokens: u32,
    stop: Vec<String>,
}

impl StoppingCriteria {
    pub fn new(max_new_tokens: u32, stop: Vec<String>) -> Self {
        StoppingCriteria {
            max_new_tokens,
            stop: stop.into_iter().filter(|s| !s.is_empty()).collect(),
        }
    }

    /// Checks after a token: `generated` tokens so far (this one included), whether this one
    /// is end-of-sequence, and the text generated so far.
    pub fn check(&self, generated: u32, is_eos: bool, text: &str) -> Option<FinishReason> {
        if generated >= self.max_new_tokens {
            return Some(FinishReason::Length);
        }
        if is_eos {
            return Some(FinishReason::EosToken);
        }
        if self.stop.iter().any(|s| text.ends_with(s.as_str())) {
            return Some(FinishReason::StopSequence);
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn length_wins_over_eos_and_stop() {
        let criteria = StoppingCriteria::new(3, vec!["x".into()]);
        assert_eq!(criteria.check(3, true, "x"), Some(FinishReason::Length));
        assert_eq!(criteria.check(2, true, "x"), Some(FinishReason::EosToken));
        assert_eq!(
            criteria.check(2, false, "abx"),
            Some(FinishReason::StopSequence)
        );
        assert_eq!(criteria.check(2, false, "xab"), None);
    }

    #[test]
    fn empty_stop_strings_never_match() {
        let criteria = StoppingCriteria::new(10, vec![String::new()]);
        assert_eq!(criteria.check(1, false, "abc"), None);
    }
}
