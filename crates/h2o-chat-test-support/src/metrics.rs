//! A server's own figures from `GET /metrics` (Prometheus' text format): one parser for
//! every test that reads them.

use std::collections::HashMap;

/// Every sample of an exposition: name, labels, value.
#[derive(Debug, Clone, Default)]
pub struct Figures {
    samples: Vec<(String, HashMap<String, String>, f64)>,
}

impl Figures {
    /// A metric summed over all its labels; 0 when absent ([`Figures::has`] tells).
    pub fn sum(&self, name: &str) -> f64 {
        self.samples
            .iter()
            .filter(|(n, _, _)| n == name)
            .map(|(_, _, v)| v)
            .sum()
    }

    /// A metric summed over the samples whose `label` is `value`.
    pub fn with(&self, name: &str, label: &str, value: &str) -> f64 {
        self.samples
            .iter()
            .filter(|(n, labels, _)| n == name && labels.get(label).is_some_and(|v| v == value))
            .map(|(_, _, v)| v)
            .sum()
    }

    /// Whether the exposition has any sample of `name`.
    pub fn has(&self, name: &str) -> bool {
        self.samples.iter().any(|(n, _, _)| n == name)
    }
}

/// Parses the text format (comments skipped; label values without escaped quotes, which
/// this project's labels never contain).
pub fn parse(text: &str) -> Figures {
    let samples = text
        .lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
        .filter_map(|line| {
            let (key, value) = line.rsplit_once(' ')?;
            let value = value.parse::<f64>().ok()?;
            let (name, labels) = match key.split_once('{') {
                None => (key.to_string(), HashMap::new()),
                Some((name, rest)) => {
                    let labels = rest
                        .trim_end_matches('}')
                        .split("\",")
                        .filter_map(|pair| {
                            let (k, v) = pair.split_once("=\"")?;
                            Some((k.trim().to_string(), v.trim_end_matches('"').to_string()))
                        })
                        .collect();
                    (name.to_string(), labels)
                }
            };
            Some((name, labels, value))
        })
        .collect();
    Figures { samples }
}

/// `url`'s `/metrics`, parsed.
pub async fn fetch(url: &str) -> Figures {
    let text = crate::http::client()
        .get(format!("{url}/metrics"))
        .send()
        .await
        .expect("the server answers /metrics")
        .text()
        .await
        .expect("a body");
    parse(&text)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels_with_commas_and_spaces_in_values_are_kept_whole() {
        let figures = parse(
            "h2o_chat_requests_total{route=\"POST /conversation/{id}\",status=\"200\"} 4\n\
             h2o_chat_slots{model=\"a, b\"} 8\n\
             h2o_chat_connections 3\n",
        );
        assert_eq!(
            figures.with(
                "h2o_chat_requests_total",
                "route",
                "POST /conversation/{id}"
            ),
            4.0
        );
        assert_eq!(figures.with("h2o_chat_slots", "model", "a, b"), 8.0);
        assert_eq!(figures.sum("h2o_chat_connections"), 3.0);
        assert!(!figures.has("h2o_chat_missing"));
        assert_eq!(figures.sum("h2o_chat_missing"), 0.0);
    }
}
