//! `wasaga outbox list | retry | deliver`: the ledger's transaction records on their way to
//! the configured sinks.

use super::args::{OutboxCommand, OutboxStatus};
use super::failure::{Failure, usage};
use super::host::{lock_executor, open};
use super::settings::Settings;
use anyhow::anyhow;
use serde_json::json;
use std::sync::Arc;
use wasaga_participants::outbox::{self, Outbox, Status};

pub(crate) async fn outbox(g: &Settings, command: &OutboxCommand) -> Result<u8, Failure> {
    let host = open(g).await?;
    let db = host.ledger_db().clone();
    match command {
        OutboxCommand::List { status, limit } => {
            let status = match status {
                OutboxStatus::Pending => Status::Pending,
                OutboxStatus::Failing => Status::Failing,
                OutboxStatus::Delivered => Status::Delivered,
            };
            let records = outbox::list(&db, status, *limit)
                .await
                .map_err(|e| anyhow!(e))?;
            let (pending, failing) = outbox::counts(&db).await.map_err(|e| anyhow!(e))?;
            if g.json {
                println!(
                    "{}",
                    json!({ "records": records, "pending": pending, "failing": failing })
                );
                return Ok(0);
            }
            println!("{pending} record(s) pending, {failing} of them failing");
            for r in &records {
                let state = match (r.delivered_ms, &r.last_error) {
                    (Some(_), _) => format!("delivered to {}", r.acked.join(", ")),
                    (None, Some(error)) => format!("attempt {} failed: {error}", r.attempts),
                    (None, None) => "pending".to_owned(),
                };
                println!(
                    "{:>8}  {}  {:<20} {:>10}  {:<32}  {state}",
                    r.seq, r.event_id, r.account, r.delta, r.op_id
                );
            }
        }
        OutboxCommand::Retry => {
            let due = outbox::retry(&db).await.map_err(|e| anyhow!(e))?;
            if g.json {
                println!("{}", json!({ "due": due }));
            } else {
                println!(
                    "{due} undelivered record(s) are due now; a running `wasaga serve` delivers them, or `wasaga outbox deliver`"
                );
            }
        }
        OutboxCommand::Deliver => {
            // One deliverer per SQLite file: two would send an account's records out of order.
            let executor_lock = lock_executor(
                &g.host.ledger.clone().unwrap_or(g.host.journal.clone()),
                false,
            )?;
            if g.host.outbox.sinks.is_empty() && !g.json {
                eprintln!(
                    "no [[outbox.sinks]] in the config: records are marked delivered to no sink and pruned after the retention period"
                );
            }
            let owner = format!("{}/outbox-{}", g.host.host_id, std::process::id());
            let delivery = Arc::new(
                Outbox::new(db.clone(), &g.host.outbox, &owner).map_err(|e| usage(anyhow!(e)))?,
            );
            if executor_lock.is_some() {
                delivery.take_over().await.map_err(|e| anyhow!(e))?;
            }
            let mut total = outbox::Pass::default();
            loop {
                let pass = delivery.deliver_once().await.map_err(|e| anyhow!(e))?;
                total.delivered += pass.delivered;
                total.failed += pass.failed;
                if pass.delivered == 0 {
                    break;
                }
            }
            let (pending, failing) = outbox::counts(&db).await.map_err(|e| anyhow!(e))?;
            if g.json {
                println!(
                    "{}",
                    json!({ "delivered": total.delivered, "pending": pending, "failing": failing })
                );
            } else {
                println!(
                    "delivered {}; {pending} pending, {failing} failing (`wasaga outbox list --status failing` says why)",
                    total.delivered
                );
            }
            if failing > 0 {
                return Ok(4);
            }
        }
    }
    Ok(0)
}
