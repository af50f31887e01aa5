//! Runs workflow components durably: the wasmtime engine and the host API a module sees, what a
//! run's store holds, and the executor that starts, drives, compensates and resumes runs. See
//! ARCHITECTURE.md for the map.

mod bindings;
pub mod bulk;
pub mod config;
pub mod engine;
pub mod executor;
mod host_api;
mod metrics;
mod shared;
pub mod store;
pub mod trace;
mod two_phase;
pub mod upgrade;

pub use config::HostConfig;
pub use executor::{Host, HostError, NewRun, RunOutcome};
