//! wasaga: runs payment and transaction workflows, written in Rust and compiled to Wasm
//! components, as durable sagas. See ARCHITECTURE.md for the map.

mod batch;
pub mod bench;
mod bindings;
pub mod config;
pub mod crash;
pub mod db;
pub mod engine;
pub mod event;
pub mod executor;
mod host_api;
pub mod journal;
pub mod ledger;
pub mod locks;
pub mod participants;
pub mod server;
pub mod store;
mod two_phase;
pub mod xa;

pub use config::{HostConfig, Limits};
pub use executor::{Host, HostError, RunOutcome};

/// A boxed, sendable future borrowing for `'a`.
pub type BoxFuture<'a, T> = std::pin::Pin<Box<dyn std::future::Future<Output = T> + Send + 'a>>;
