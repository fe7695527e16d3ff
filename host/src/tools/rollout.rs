//! `pier deploy --cluster`: puts a component in the cluster's object store, points a listener
//! at it (or back at the version before), announces it, and prints each node's answer.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use futures_util::StreamExt;

use crate::cluster::rollout::{Announcement, Answer, RECEIPT_QUIET, Rollout};

use crate::cluster::wire::Subjects;
use crate::cluster::{ClusterSpec, connect_options};

/// What to roll out where.
pub struct Request {
    /// How to reach the cluster.
    pub spec: ClusterSpec,
    /// The listener (tenant).
    pub listener: String,
    /// The component; `None` to roll back.
    pub file: Option<PathBuf>,
    /// How long to wait for every node's answer.
    pub timeout: Duration,
}

/// Rolls out and prints one line per node; an error when any node refused or did not answer.
pub async fn run(request: Request) -> Result<()> {
    let spec = &request.spec;
    let client = connect_options(spec)
        .await?
        .connection_timeout(Duration::from_secs(5))
        .name("pier deploy")
        .connect(spec.servers.clone())
        .await
        .with_context(|| format!("cannot reach NATS at {}", spec.servers.join(",")))?;
    let rollout = Rollout::new(client.clone(), &spec.subject_prefix);
    let version = match &request.file {
        Some(file) => {
            let bytes =
                std::fs::read(file).with_context(|| format!("cannot read {}", file.display()))?;
            rollout.store(&bytes).await?
        }
        None => rollout.previous(&request.listener).await?,
    };
    let short = version.get(..12).unwrap_or(&version).to_string();
    eprintln!(
        "pier: {} of `{}` is {short}; asking its nodes",
        if request.file.is_some() {
            "the new version"
        } else {
            "the previous version"
        },
        request.listener
    );
    let inbox = client.new_inbox();
    let mut answers = client
        .subscribe(inbox.clone())
        .await
        .context("cannot subscribe for answers")?;
    let announcement = serde_json::to_vec(&Announcement {
        version: version.clone(),
    })?;
    client
        .publish_with_reply(
            Subjects::new(&spec.subject_prefix, &request.listener).deploy(),
            inbox,
            announcement.into(),
        )
        .await
        .context("cannot announce the version")?;
    let outcomes = collect(&mut answers, request.timeout).await;
    if outcomes.is_empty() {
        bail!(
            "no node serving `{}` answered (is the listener clustered and running?)",
            request.listener
        );
    }
    let mut failed = false;
    for (node, outcome) in &outcomes {
        match outcome {
            Some(answer) if answer.state == "swapped" => {
                println!("{node}: swapped to {}", answer.detail)
            }
            Some(answer) => {
                failed = true;
                println!("{node}: refused: {}", answer.detail);
            }
            None => {
                failed = true;
                println!("{node}: no answer within {:?}", request.timeout);
            }
        }
    }
    if failed {
        bail!(
            "not every node serves {short}; the listener's recorded version is unchanged (nodes \
             that swapped serve {short} until the next deploy)"
        );
    }
    // Recorded only once every node serves it: what a node starting later catches up to, and
    // what `--rollback` returns from.
    match &request.file {
        Some(_) => rollout.point(&request.listener, &version).await?,
        None => rollout.roll_back(&request.listener).await?,
    };
    Ok(())
}

/// Answers by node: every node that said it received the announcement, with its final answer
/// (`None`: none came within `timeout`). Receipts are awaited until [`RECEIPT_QUIET`] passed
/// without a new one.
async fn collect(
    answers: &mut async_nats::Subscriber,
    timeout: Duration,
) -> BTreeMap<String, Option<Answer>> {
    let mut outcomes: BTreeMap<String, Option<Answer>> = BTreeMap::new();
    let deadline = tokio::time::Instant::now() + timeout;
    // No receipt at all within a few seconds: no node serves the listener.
    let mut quiet_until = tokio::time::Instant::now() + RECEIPT_QUIET * 3;
    loop {
        let receipts_done = tokio::time::Instant::now() >= quiet_until;
        if receipts_done && outcomes.values().all(Option::is_some) {
            break;
        }
        let wake = if receipts_done {
            deadline
        } else {
            quiet_until.min(deadline)
        };
        let message = match tokio::time::timeout_at(wake, answers.next()).await {
            Ok(Some(message)) => message,
            Ok(None) => break,
            Err(_) if tokio::time::Instant::now() >= deadline => break,
            Err(_) => continue,
        };
        let Ok(answer) = serde_json::from_slice::<Answer>(&message.payload) else {
            continue;
        };
        if answer.state == "received" {
            outcomes.entry(answer.node.clone()).or_insert(None);
            quiet_until = tokio::time::Instant::now() + RECEIPT_QUIET;
        } else {
            outcomes.insert(answer.node.clone(), Some(answer));
        }
    }
    outcomes
}
