//! wasaga's vocabulary, shared by every layer of the host and depending on none: the journal's
//! events and run statuses, calls and how they fail, the limits a run obeys and what a workflow
//! is granted, the clock, and the crash tests' hook. It knows nothing of databases, wasmtime or
//! money.

pub mod clock;
pub mod crash;
pub mod event;
pub mod limits;
pub mod steps;

/// A boxed, sendable future borrowing for `'a`.
pub type BoxFuture<'a, T> = std::pin::Pin<Box<dyn std::future::Future<Output = T> + Send + 'a>>;
