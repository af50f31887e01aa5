//! End-to-end tests: the real `wasaga` binary and host library against real SQLite files,
//! running the real guest workflows built by `tests/build.rs`.

mod architecture;
mod bad_input;
mod bench;
mod browser;
mod card_payment;
mod console;
mod crash;
mod http_two_phase;
mod guests {
    include!(concat!(env!("OUT_DIR"), "/guests.rs"));
}
mod ledger_service;
mod locks;
mod nondeterminism;
mod observability;
mod optimistic;
mod outbox;
mod postgres;
mod sagas;
mod sandbox;
mod scale;
mod server;
mod server_steps;
use wasaga_testkit::services;
mod soak;
mod support;
mod two_phase;
mod upgrades;
mod waits;
mod xa;
