//! Credentials out of every URL the gateway shows: an upstream named as
//! `http://user:secret@host/` or `…?api_key=secret` keeps its secret in the requests it
//! sends, but `/info`, `/metrics`, logs, error messages and `h2o-chat upstreams` see `***`.
//!
//! ```
//! use h2o_chat_gateway::redact::credentials;
//!
//! assert_eq!(credentials("http://user:s3cret@127.0.0.1:8080/v1"), "http://***@127.0.0.1:8080/v1");
//! assert_eq!(
//!     credentials("error sending request for url (https://host/x?api_key=k&model=m)"),
//!     "error sending request for url (https://host/x?api_key=***&model=m)",
//! );
//! assert_eq!(credentials("http://127.0.0.1:8080/"), "http://127.0.0.1:8080/");
//! ```

/// Query parameters whose values are secrets, by a part of their name (case-insensitive).
const SECRET_PARAMETERS: [&str; 6] = ["key", "token", "secret", "password", "auth", "sig"];

/// Where a URL inside a text ends.
fn ends_url(c: char) -> bool {
    c.is_whitespace() || matches!(c, ')' | '"' | '\'' | '>' | '<' | ',' | ']' | '`')
}

/// `text` with every URL's user information and secret query values replaced by `***`.
pub fn credentials(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(at) = rest.find("://") {
        let (before, after) = rest.split_at(at + 3);
        out.push_str(before);
        let end = after.find(ends_url).unwrap_or(after.len());
        let (url, tail) = after.split_at(end);
        out.push_str(&redact_url_tail(url));
        rest = tail;
    }
    out.push_str(rest);
    out
}

/// One URL after its `scheme://`.
fn redact_url_tail(url: &str) -> String {
    let authority_end = url.find(['/', '?', '#']).unwrap_or(url.len());
    let (authority, path) = url.split_at(authority_end);
    let mut out = match authority.rfind('@') {
        Some(at) => format!("***{}", &authority[at..]),
        None => authority.to_string(),
    };
    let Some(query_start) = path.find('?') else {
        out.push_str(path);
        return out;
    };
    let (path, query) = path.split_at(query_start + 1);
    out.push_str(path);
    let (query, fragment) = match query.find('#') {
        Some(at) => query.split_at(at),
        None => (query, ""),
    };
    let pairs: Vec<String> = query
        .split('&')
        .map(|pair| match pair.split_once('=') {
            Some((name, _)) if is_secret(name) => format!("{name}=***"),
            _ => pair.to_string(),
        })
        .collect();
    out.push_str(&pairs.join("&"));
    out.push_str(fragment);
    out
}

fn is_secret(name: &str) -> bool {
    let name = name.to_ascii_lowercase();
    SECRET_PARAMETERS.iter().any(|part| name.contains(part))
}

#[cfg(test)]
mod tests {
    use super::credentials;

    #[test]
    fn user_information_and_secret_parameters_are_hidden_wherever_the_url_is() {
        assert_eq!(
            credentials("tgi:http://user:pa:ss@127.0.0.1:9/"),
            "tgi:http://***@127.0.0.1:9/"
        );
        assert_eq!(
            credentials("http://only-user@127.0.0.1"),
            "http://***@127.0.0.1"
        );
        assert_eq!(
            credentials("a http://u:p@h/x?Token=1#f and https://h2/?access_token=2&b=3."),
            "a http://***@h/x?Token=***#f and https://h2/?access_token=***&b=3."
        );
        // An @ in the path is not user information.
        assert_eq!(credentials("http://h/a@b"), "http://h/a@b");
        assert_eq!(credentials("no url here"), "no url here");
    }
}
