//! A conversation's life on the server: created for one completion, always deleted after it
//! (§a.3, §a.5, DESIGN "Nothing leaks").
//!
//! [`Conversation`] deletes itself when dropped — after a normal end, after any error, and
//! when the caller drops the stream early. The DELETE is spawned so it stays off the caller's
//! critical path; [`crate::H2o::wait_for_cleanup`] waits for the outstanding ones. At runtime
//! shutdown a spawned DELETE may not run: that is the one case this is best effort.

use std::sync::Arc;

use reqwest::{Client, header};
use tokio::runtime::Handle;

use crate::client::Inner;
use crate::client::reply::{JSON_BODY_LIMIT, read_capped, status_error, transport};
use crate::error::{Error, Step};
use crate::protocol::wire::{ConversationCreated, CreateConversation};

/// A server conversation owned by one completion.
pub(crate) struct Conversation {
    inner: Arc<Inner>,
    client: Client,
    /// `{base}/conversation/{id}`.
    url: String,
    /// The runtime the conversation was created on: a drop may happen on a thread with no
    /// runtime (the blocking face), and the DELETE must still be spawned somewhere.
    runtime: Handle,
}

impl Conversation {
    /// `POST /conversation` with the model id; the reply's `conversationId` names it.
    pub(crate) async fn create(
        inner: &Arc<Inner>,
        client: &Client,
        model: &str,
    ) -> Result<Conversation, Error> {
        let config = &inner.config;
        let url = format!("{}/conversation", config.url);
        let response = client
            .post(&url)
            .header(header::REFERER, config.referer())
            .json(&CreateConversation {
                model: model.to_string(),
            })
            .timeout(config.request_timeout)
            .send()
            .await
            .map_err(|err| {
                transport(Step::CreateConversation, &url, err, config.request_timeout)
            })?;
        if !response.status().is_success() {
            return Err(status_error(
                Step::CreateConversation,
                &url,
                response,
                config.request_timeout,
            )
            .await);
        }
        let protocol = |detail: String| Error::Protocol {
            step: Step::CreateConversation,
            url: url.clone(),
            detail,
            partial: String::new(),
        };
        let body = read_capped(response, JSON_BODY_LIMIT)
            .await
            .map_err(|err| transport(Step::CreateConversation, &url, err, config.request_timeout))?
            .ok_or_else(|| protocol(format!("reply larger than {JSON_BODY_LIMIT} bytes")))?;
        let created: ConversationCreated = serde_json::from_slice(&body).map_err(|err| {
            protocol(format!(
                "no `conversationId` in the reply ({err}): {}",
                String::from_utf8_lossy(&body[..body.len().min(200)])
            ))
        })?;
        let id = created.conversation_id;
        // The id goes into a URL path: refuse anything that could change the path.
        if id.is_empty()
            || !id
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        {
            return Err(protocol(format!("unusable conversationId `{id}`")));
        }
        tracing::debug!(%id, "conversation created");
        Ok(Conversation {
            inner: inner.clone(),
            client: client.clone(),
            url: format!("{url}/{id}"),
            runtime: Handle::current(),
        })
    }

    /// `{base}/conversation/{id}`, where generate and delete go.
    pub(crate) fn url(&self) -> &str {
        &self.url
    }
}

impl Drop for Conversation {
    fn drop(&mut self) {
        let inner = self.inner.clone();
        let client = self.client.clone();
        let url = std::mem::take(&mut self.url);
        let task = async move { delete(&inner, &client, &url).await };
        self.inner.cleanup.spawn_on(task, &self.runtime);
    }
}

/// `DELETE /conversation/{id}`. A failure is a warning, never a lost answer (§f).
async fn delete(inner: &Inner, client: &Client, url: &str) {
    let config = &inner.config;
    let result = client
        .delete(url)
        .header(header::REFERER, config.referer())
        .timeout(config.request_timeout)
        .send()
        .await;
    match result {
        Ok(response) if response.status().is_success() => {
            tracing::debug!(url, "conversation deleted");
        }
        Ok(response) => {
            let err = status_error(
                Step::DeleteConversation,
                url,
                response,
                config.request_timeout,
            )
            .await;
            tracing::warn!(%err, "could not delete the conversation");
        }
        Err(err) => {
            let err = transport(Step::DeleteConversation, url, err, config.request_timeout);
            tracing::warn!(%err, "could not delete the conversation");
        }
    }
}
