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

/// Where a URL inside a text ends, where no secret can be cut short by it.
fn ends_url(c: char) -> bool {
    c.is_whitespace() || matches!(c, ')' | '"' | '\'' | '>' | '<' | ',' | ']' | '`')
}

/// `text` with every URL's user information and secret query values replaced by `***`.
pub fn credentials(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(at) = rest.find("://") {
        out.push_str(&rest[..at + 3]);
        rest = &rest[at + 3..];
        // User information may hold any character but these: the authority ends at the
        // first of them, and everything before its last `@` is a credential.
        let authority_end = rest
            .find(|c: char| matches!(c, '/' | '?' | '#') || c.is_whitespace())
            .unwrap_or(rest.len());
        match rest[..authority_end].rfind('@') {
            Some(at) => {
                out.push_str("***");
                out.push_str(&rest[at..authority_end]);
                rest = &rest[authority_end..];
            }
            None => {
                let end = rest[..authority_end]
                    .find(ends_url)
                    .unwrap_or(authority_end);
                out.push_str(&rest[..end]);
                rest = &rest[end..];
                if end < authority_end {
                    continue;
                }
            }
        }
        rest = redact_path(rest, &mut out);
    }
    out.push_str(rest);
    out
}

/// The path and query of a URL (up to where it ends), with secret query values masked;
/// returns what follows the URL.
fn redact_path<'a>(rest: &'a str, out: &mut String) -> &'a str {
    let path_end = rest
        .find(|c: char| c == '?' || ends_url(c))
        .unwrap_or(rest.len());
    out.push_str(&rest[..path_end]);
    let mut rest = &rest[path_end..];
    if !rest.starts_with('?') {
        return rest;
    }
    out.push('?');
    rest = &rest[1..];
    loop {
        let name_end = rest
            .find(|c: char| matches!(c, '=' | '&' | '#') || ends_url(c))
            .unwrap_or(rest.len());
        let name = &rest[..name_end];
        out.push_str(name);
        rest = &rest[name_end..];
        if let Some(after) = rest.strip_prefix('=') {
            out.push('=');
            // A secret's value ends only where the query does, so no separator a URL
            // leaves unencoded (`,`, `)`) shows a piece of it.
            let value_end = if is_secret(name) {
                after
                    .find(|c: char| matches!(c, '&' | '#') || c.is_whitespace())
                    .unwrap_or(after.len())
            } else {
                after
                    .find(|c: char| matches!(c, '&' | '#') || ends_url(c))
                    .unwrap_or(after.len())
            };
            if is_secret(name) {
                out.push_str("***");
            } else {
                out.push_str(&after[..value_end]);
            }
            rest = &after[value_end..];
        }
        match rest.strip_prefix('&') {
            Some(next) => {
                out.push('&');
                rest = next;
            }
            None => break,
        }
    }
    if let Some(fragment) = rest.strip_prefix('#') {
        let end = fragment.find(ends_url).unwrap_or(fragment.len());
        out.push('#');
        out.push_str(&fragment[..end]);
        rest = &fragment[end..];
    }
    rest
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
        // Separators a URL leaves unencoded never cut a secret short.
        assert_eq!(
            credentials("for url (http://user:p)ss,x@127.0.0.1:9/v1)"),
            "for url (http://***@127.0.0.1:9/v1)"
        );
        assert_eq!(
            credentials("(http://h/?api_key=ab,cd)&more=1"),
            "(http://h/?api_key=***&more=1"
        );
        assert_eq!(credentials("no url here"), "no url here");
    }
}
