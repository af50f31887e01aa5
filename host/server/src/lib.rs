//! `wasaga serve`: a long-running host that payment services call over HTTP.
//!
//! Runs are started by workflow name and get the version active at that moment; deploys (by
//! this API, by `wasaga deploy` on the database, or by another host) take effect for the next
//! start without a restart. Runs this host starts, and runs it takes over from hosts whose
//! lease expired, are driven in the background. On shutdown the server stops taking work,
//! lets every live run reach its next journal point, and gives up its leases so that the next
//! start (here or on another host) resumes those runs at once.
//!
//! Every `/v1` endpoint needs `Authorization: Bearer <token>`; `/healthz` and `/readyz` do not.

mod auth;
mod console;
mod health;
pub mod ledger_service;
mod metrics;
mod operations;
mod responses;
mod runs;
mod server;
mod state;
mod workflows;

pub use server::{ServerError, ServerSettings, serve, workflow_name_of};
pub use state::{LIST_LIMIT_MAX, REQUESTS_CONCURRENT_MAX, UPLOADS_CONCURRENT_MAX, WAIT_MS_MAX};
