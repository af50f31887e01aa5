//! wasaga's vocabulary, shared by every layer of the host and depending on none: the journal's
//! events and run statuses, calls and how they fail, the limits a run obeys and what a workflow
//! is granted, the clock, the crash tests' hook, and the shapes metrics are measured in. It knows nothing of databases, wasmtime or
//! money.

pub mod clock;
pub mod crash;
pub mod event;
pub mod limits;
pub mod metrics;
pub mod steps;

/// A boxed, sendable future borrowing for `'a`.
pub type BoxFuture<'a, T> = std::pin::Pin<Box<dyn std::future::Future<Output = T> + Send + 'a>>;
