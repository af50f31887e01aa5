//! `wasaga ledger open | list | ...`: the built-in ledger's accounts.

use super::args::LedgerCommand;
use super::failure::{Failure, usage};
use super::host::open;
use super::settings::Settings;
use anyhow::{Result, anyhow};
use serde_json::json;

pub(crate) async fn ledger(g: &Settings, command: &LedgerCommand) -> Result<u8, Failure> {
    let host = open(g).await?;
    let db = host.ledger_db().clone();
    match command {
        LedgerCommand::Open { account, balance } => {
            let opened = match wasaga_participants::ledger::open(&db, account, *balance).await {
                Ok(account) => account,
                Err(wasaga_participants::ledger::OpenError::Database(e)) => {
                    return Err(anyhow!(e).into());
                }
                Err(e) => return Err(usage(e)),
            };
            if g.json {
                println!("{}", json!(opened));
            } else {
                println!("opened {} with balance {}", opened.account, opened.balance);
            }
        }
        LedgerCommand::Balance { account } => {
            let accounts = list_accounts(&db).await?;
            let found = accounts
                .into_iter()
                .find(|a| &a.account == account)
                .ok_or_else(|| {
                    usage(anyhow!(
                        "unknown account '{account}'; `wasaga ledger list` shows the accounts"
                    ))
                })?;
            if g.json {
                println!("{}", json!(found));
            } else {
                println!(
                    "{} balance {} held {}",
                    found.account, found.balance, found.held
                );
            }
        }
        LedgerCommand::Serve { listen } => {
            let token = std::env::var("WASAGA_LEDGER_TOKEN").map_err(|_| {
                usage(anyhow!(
                    "ledger serve needs a bearer token in WASAGA_LEDGER_TOKEN (at least 16 characters, e.g. `openssl rand -hex 24`); the hosts send it as a header of their --ledger"
                ))
            })?;
            if token.len() < super::settings::TOKEN_CHARS_MIN {
                return Err(usage(anyhow!(
                    "WASAGA_LEDGER_TOKEN must be at least {} characters",
                    super::settings::TOKEN_CHARS_MIN
                )));
            }
            let listener = tokio::net::TcpListener::bind(listen).await.map_err(|e| {
                usage(anyhow!(
                    "cannot listen on {listen}: {e}; --listen picks another address"
                ))
            })?;
            let address = listener.local_addr().map_err(|e| anyhow!(e))?;
            println!("listening on http://{address}");
            use std::io::Write;
            let _ = std::io::stdout().flush();
            let stop = async {
                let _ = tokio::signal::ctrl_c().await;
            };
            wasaga_server::ledger_service::serve(db, token, listener, stop)
                .await
                .map_err(|e| anyhow!(e))?;
        }
        LedgerCommand::List => {
            let accounts = list_accounts(&db).await?;
            let total: i64 = accounts.iter().map(|a| a.balance + a.held).sum();
            if g.json {
                println!("{}", json!({ "accounts": accounts, "total": total }));
            } else {
                println!("{:<24} {:>16} {:>12}", "account", "balance", "held");
                for a in &accounts {
                    println!("{:<24} {:>16} {:>12}", a.account, a.balance, a.held);
                }
                println!("{:<24} {:>16}", "total (balance + held)", total);
            }
        }
    }
    Ok(0)
}

pub(crate) async fn list_accounts(
    db: &wasaga_db::Database,
) -> Result<Vec<wasaga_participants::ledger::Account>, Failure> {
    Ok(wasaga_participants::ledger::list(db)
        .await
        .map_err(|e| anyhow!(e))?)
}
