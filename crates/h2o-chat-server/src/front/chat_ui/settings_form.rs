//! The fields of chat-ui's settings form (§a.2), read the way SvelteKit's
//! `request.formData()` reads them: `application/x-www-form-urlencoded` or
//! `multipart/form-data`.

use std::convert::Infallible;

use axum::body::Bytes;

/// Largest value of one multipart field (the form has a handful of short fields).
const FIELD_LIMIT: u64 = 64 * 1024;

/// Why the form could not be read (the action then answers 500, §a.2).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FormError(pub String);

/// The form's fields, in order; `media` is the request's media type.
pub async fn read_form(
    media: &str,
    content_type: &str,
    body: Bytes,
) -> Result<Vec<(String, String)>, FormError> {
    match media {
        "application/x-www-form-urlencoded" => Ok(form_urlencoded::parse(&body)
            .map(|(k, v)| (k.into_owned(), v.into_owned()))
            .collect()),
        "multipart/form-data" => read_multipart(content_type, body).await,
        other => Err(FormError(format!("not a form: {other}"))),
    }
}

async fn read_multipart(
    content_type: &str,
    body: Bytes,
) -> Result<Vec<(String, String)>, FormError> {
    let boundary = multer::parse_boundary(content_type).map_err(|e| FormError(e.to_string()))?;
    let constraints =
        multer::Constraints::new().size_limit(multer::SizeLimit::new().per_field(FIELD_LIMIT));
    let stream = futures_util::stream::once(async move { Ok::<Bytes, Infallible>(body) });
    let mut multipart = multer::Multipart::with_constraints(stream, boundary, constraints);
    let mut fields = Vec::new();
    while let Some(field) = multipart
        .next_field()
        .await
        .map_err(|e| FormError(e.to_string()))?
    {
        let name = field.name().unwrap_or_default().to_string();
        // A file part is not one of the settings: read (bounded) and ignore it.
        let is_file = field.file_name().is_some();
        let value = field.text().await.map_err(|e| FormError(e.to_string()))?;
        if !is_file {
            fields.push((name, value));
        }
    }
    Ok(fields)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn urlencoded_fields_are_decoded() {
        let fields = read_form(
            "application/x-www-form-urlencoded",
            "application/x-www-form-urlencoded",
            Bytes::from_static(b"a=1&activeModel=h2oai%2Fx&c=&d=a+b"),
        )
        .await
        .unwrap();
        assert_eq!(
            fields,
            vec![
                ("a".into(), "1".into()),
                ("activeModel".into(), "h2oai/x".into()),
                ("c".into(), "".into()),
                ("d".into(), "a b".into())
            ]
        );
    }

    #[tokio::test]
    async fn multipart_fields_are_read() {
        let body = "--XyZ\r\nContent-Disposition: form-data; name=\"ethicsModalAccepted\"\r\n\r\ntrue\r\n\
                    --XyZ\r\nContent-Disposition: form-data; name=\"activeModel\"\r\n\r\nh2oai/x\r\n--XyZ--\r\n";
        let fields = read_form(
            "multipart/form-data",
            "multipart/form-data; boundary=XyZ",
            Bytes::from(body),
        )
        .await
        .unwrap();
        assert_eq!(
            fields,
            vec![
                ("ethicsModalAccepted".into(), "true".into()),
                ("activeModel".into(), "h2oai/x".into())
            ]
        );
    }

    #[tokio::test]
    async fn a_broken_multipart_body_is_an_error() {
        let err = read_form(
            "multipart/form-data",
            "multipart/form-data; boundary=XyZ",
            Bytes::from_static(b"--XyZ\r\nno headers"),
        )
        .await;
        assert!(err.is_err());
    }
}
