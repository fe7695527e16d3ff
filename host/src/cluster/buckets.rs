//! The JetStream buckets the cluster keeps (claims, deployments): their names and how they
//! are opened.

use anyhow::{Context, Result};
use async_nats::jetstream::{self, kv};

/// `prefix` as the start of a bucket name (letters, digits, `-` and `_` only).
pub fn name(prefix: &str, what: &str) -> String {
    let prefix: String = prefix
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' {
                c
            } else {
                '_'
            }
        })
        .collect();
    format!("{prefix}-{what}")
}

/// Opens key-value bucket `bucket` (one value per key, values up to `max_value` bytes),
/// creating it if it does not exist. The bucket's stream is made directly: async-nats's
/// `create_key_value` first asks for account details that NATS servers before 2.10 (Debian's
/// 2.9) answer in a shape the client cannot parse. The settings are a bucket's own.
pub async fn key_value(
    client: &async_nats::Client,
    bucket: &str,
    description: &str,
    max_value: i32,
) -> Result<kv::Store> {
    let js = jetstream::new(client.clone());
    if let Ok(store) = js.get_key_value(bucket).await {
        return Ok(store);
    }
    js.get_or_create_stream(jetstream::stream::Config {
        name: format!("KV_{bucket}"),
        description: Some(description.to_string()),
        subjects: vec![format!("$KV.{bucket}.>")],
        max_messages_per_subject: 1,
        max_message_size: max_value,
        allow_rollup: true,
        deny_delete: true,
        deny_purge: false,
        allow_direct: true,
        discard: jetstream::stream::DiscardPolicy::New,
        num_replicas: 1,
        ..Default::default()
    })
    .await
    .with_context(|| format!("cannot create the bucket `{bucket}`"))?;
    js.get_key_value(bucket)
        .await
        .with_context(|| format!("cannot open the bucket `{bucket}`"))
}
