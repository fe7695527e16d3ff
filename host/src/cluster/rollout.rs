//! Rolling a plugin out to every node of a cluster (`pier deploy --cluster`): the components
//! in a JetStream object store (named by their SHA-256, so a version is stored once and cannot
//! change under its name), the version each tenant should serve in a key-value bucket, and the
//! announcement on `P.T.deploy` that nodes answer.
//!
//! A node receiving an announcement answers `received` at once, fetches the component, checks
//! its digest, and hands it to the listener's deploy hook (the deployer: compiled and checked
//! exactly as a local reload, then hot-swapped at frame boundaries), then answers `swapped` or
//! `refused: REASON`. A node that starts later, or comes back from a NATS outage, asks the
//! key-value bucket which version its tenant should serve and swaps to it.

use std::time::Duration;

use anyhow::{Context, Result, anyhow, bail};
use async_nats::jetstream::{self, kv, object_store};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use tokio::io::AsyncReadExt;
use tokio::sync::OnceCell;

/// Largest component a rollout carries (the Python and JavaScript runtimes are 12–18 MB).
pub const MAX_COMPONENT: usize = 64 * 1024 * 1024;

/// What `P.T.deploy` carries: serve this version.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct Announcement {
    /// The component's SHA-256, hex.
    pub version: String,
}

/// A node's answer to an announcement.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct Answer {
    /// The node.
    pub node: String,
    /// `received`, `swapped` or `refused`.
    pub state: String,
    /// The reason of a refusal.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub detail: String,
}

/// The version a tenant should serve, and the one before (for `--rollback`).
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct Pointer {
    /// Serve this.
    pub version: String,
    /// What served before, if anything was deployed before.
    #[serde(default)]
    pub previous: Option<String>,
}

/// The cluster's plugin store and deployment pointers.
pub struct Rollout {
    client: async_nats::Client,
    prefix: String,
    objects: OnceCell<object_store::ObjectStore>,
    pointers: OnceCell<kv::Store>,
}

/// The SHA-256 of `bytes`, hex: a component's name in the store.
pub fn digest(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

impl Rollout {
    /// The rollout stores of the cluster whose subjects start with `prefix`.
    pub fn new(client: async_nats::Client, prefix: &str) -> Rollout {
        Rollout {
            client,
            prefix: prefix.to_string(),
            objects: OnceCell::new(),
            pointers: OnceCell::new(),
        }
    }

    async fn objects(&self) -> Result<&object_store::ObjectStore> {
        self.objects
            .get_or_try_init(|| async {
                let js = jetstream::new(self.client.clone());
                let bucket = super::buckets::name(&self.prefix, "plugins");
                match js.get_object_store(&bucket).await {
                    Ok(store) => Ok(store),
                    Err(_) => js
                        .create_object_store(object_store::Config {
                            bucket: bucket.clone(),
                            description: Some("pier: plugin components by SHA-256".into()),
                            ..Default::default()
                        })
                        .await
                        .with_context(|| format!("cannot create the object store `{bucket}`")),
                }
            })
            .await
    }

    async fn pointers(&self) -> Result<&kv::Store> {
        self.pointers
            .get_or_try_init(|| async {
                let bucket = super::buckets::name(&self.prefix, "deployments");
                super::buckets::key_value(
                    &self.client,
                    &bucket,
                    "pier: which version each listener serves",
                    4096,
                )
                .await
            })
            .await
    }

    /// The pointer key of listener `tenant` (hex: any name is a valid key).
    fn key(tenant: &str) -> String {
        hex::encode(tenant.as_bytes())
    }

    /// Stores `bytes` under their digest (once) and returns the digest.
    pub async fn store(&self, bytes: &[u8]) -> Result<String> {
        let name = digest(bytes);
        let objects = self.objects().await?;
        if objects.info(&name).await.is_err() {
            let mut reader = bytes;
            objects
                .put(name.as_str(), &mut reader)
                .await
                .context("cannot store the component")?;
        }
        Ok(name)
    }

    /// The component named `version`, checked against its name.
    pub async fn fetch(&self, version: &str) -> Result<Vec<u8>> {
        let objects = self.objects().await?;
        let mut object = objects
            .get(version)
            .await
            .with_context(|| format!("no component {version} in the store"))?;
        let mut bytes = Vec::new();
        (&mut object)
            .take(MAX_COMPONENT as u64 + 1)
            .read_to_end(&mut bytes)
            .await
            .context("cannot read the component")?;
        if bytes.len() > MAX_COMPONENT {
            bail!("the component is larger than {MAX_COMPONENT} bytes");
        }
        if digest(&bytes) != version {
            bail!("the stored component does not match its digest {version}");
        }
        Ok(bytes)
    }

    /// What `tenant` should serve, if anything was deployed to it.
    pub async fn pointer(&self, tenant: &str) -> Result<Option<Pointer>> {
        let pointers = self.pointers().await?;
        let Some(entry) = pointers
            .get(Self::key(tenant))
            .await
            .context("cannot read the deployment")?
        else {
            return Ok(None);
        };
        Ok(Some(
            serde_json::from_slice(&entry).context("the deployment record is malformed")?,
        ))
    }

    /// Makes `version` what `tenant` serves; returns the new pointer.
    pub async fn point(&self, tenant: &str, version: &str) -> Result<Pointer> {
        let previous = self.pointer(tenant).await?.map(|p| p.version);
        let pointer = Pointer {
            version: version.to_string(),
            previous: previous.filter(|p| p != version),
        };
        self.write(tenant, &pointer).await?;
        Ok(pointer)
    }

    /// The version `tenant` served before its current one.
    pub async fn previous(&self, tenant: &str) -> Result<String> {
        self.pointer(tenant)
            .await?
            .ok_or_else(|| anyhow!("nothing was deployed to `{tenant}`"))?
            .previous
            .ok_or_else(|| anyhow!("`{tenant}` has no earlier deployed version"))
    }

    /// Points `tenant` back at its previous version.
    pub async fn roll_back(&self, tenant: &str) -> Result<Pointer> {
        let current = self
            .pointer(tenant)
            .await?
            .ok_or_else(|| anyhow!("nothing was deployed to `{tenant}`"))?;
        let previous = current
            .previous
            .ok_or_else(|| anyhow!("`{tenant}` has no earlier deployed version"))?;
        let pointer = Pointer {
            version: previous,
            previous: Some(current.version),
        };
        self.write(tenant, &pointer).await?;
        Ok(pointer)
    }

    async fn write(&self, tenant: &str, pointer: &Pointer) -> Result<()> {
        let pointers = self.pointers().await?;
        pointers
            .put(Self::key(tenant), serde_json::to_vec(pointer)?.into())
            .await
            .context("cannot record the deployment")?;
        Ok(())
    }
}

/// How long `pier deploy` waits for nodes to say they received the announcement after the
/// last one did.
pub const RECEIPT_QUIET: Duration = Duration::from_secs(1);
