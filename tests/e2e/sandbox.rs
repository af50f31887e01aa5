//! Misbehaving modules (panic, endless loop, unbounded allocation, oversized payload, endless
//! journal), in one host process: each run ends with a named error, the host
//! compensates its completed steps, and the same host then completes a normal run.

use crate::guests::MISBEHAVE;
use crate::support::{Sandbox, assert_ledger_consistent, rt};
use serde_json::json;
use wasaga_core::event::RunStatus;
use wasaga_runtime::store::no_observer;
use wasaga_runtime::{Host, HostConfig};

async fn balances(host: &Host) -> (i64, i64) {
    let accounts = wasaga_participants::ledger::list(host.ledger_db())
        .await
        .expect("accounts");
    let of = |name: &str| {
        accounts
            .iter()
            .find(|a| a.account == name)
            .map(|a| a.balance)
            .expect("account")
    };
    (of("alice"), of("bob"))
}

/// A host on `s`'s journal with its limits tuned by `tune`, each of `accounts` opened with
/// 1,000, and `misbehave` stored; the host and the module's hash.
async fn misbehave_host(
    s: &Sandbox,
    accounts: &[&str],
    tune: impl FnOnce(&mut wasaga_core::limits::Limits),
) -> (Host, String) {
    let mut config = HostConfig::new(wasaga_db::Location::Sqlite(s.db.clone()));
    tune(&mut config.limits);
    let host = Host::open(&config).await.expect("host opens");
    for account in accounts {
        wasaga_participants::ledger::open(host.ledger_db(), account, 1_000)
            .await
            .expect("open");
    }
    let bytes = std::fs::read(MISBEHAVE).expect("guest built");
    let hash = host
        .add_module("misbehave", &bytes)
        .await
        .expect("valid module");
    (host, hash)
}

#[test]
fn misbehaving_modules_are_stopped_and_compensated_and_the_host_goes_on() {
    let s = Sandbox::new("misbehave");
    rt().block_on(async {
        let mut config = HostConfig::new(wasaga_db::Location::Sqlite(s.db.clone()));
        config.limits.run_duration_ms_max = 1_000;
        config.limits.memory_bytes_max = 16 << 20;
        config.limits.concurrent_runs_max = 8;
        config.limits.payload_bytes_max = 64 << 10;
        config.limits.journal_events_max = 200;
        let host = Host::open(&config).await.expect("host opens");
        wasaga_participants::ledger::open(host.ledger_db(), "alice", 1_000)
            .await
            .expect("open");
        wasaga_participants::ledger::open(host.ledger_db(), "bob", 1_000)
            .await
            .expect("open");
        let bytes = std::fs::read(MISBEHAVE).expect("guest built");
        let hash = host
            .add_module("misbehave", &bytes)
            .await
            .expect("valid module");
        let cases = [
            (
                "panic",
                "module panicked at",
                "deliberate panic after two steps",
            ),
            ("loop", "deadline exceeded", "run_duration_ms_max = 1000"),
            (
                "alloc",
                "memory limit exceeded",
                "memory_bytes_max = 16777216",
            ),
        ];
        for (mode, named, detail) in cases {
            let input =
                json!({ "mode": mode, "from": "alice", "to": "bob", "amount": 7 }).to_string();
            let (run_id, _) = host
                .start(None, "misbehave", &hash, &input)
                .await
                .expect("start");
            let outcome = host.drive(&run_id, no_observer()).await.expect("drive");
            assert_eq!(
                outcome.status,
                RunStatus::Compensated,
                "{mode}: {outcome:?}"
            );
            let error = outcome.error.unwrap_or_default();
            assert!(
                error.contains(named) && error.contains(detail),
                "{mode}: {error}"
            );
            assert_eq!(
                balances(&host).await,
                (1_000, 1_000),
                "{mode}: steps must be undone"
            );
            let events = host.journal().events(&run_id).await.expect("events");
            let undone = events
                .iter()
                .filter(|e| e.event.kind() == "compensation-done")
                .count();
            assert_eq!(
                undone, 2,
                "{mode}: both completed steps are compensated by the host"
            );
        }
        let input = json!({ "mode": "ok", "from": "alice", "to": "bob", "amount": 7 }).to_string();
        let (run_id, _) = host
            .start(None, "misbehave", &hash, &input)
            .await
            .expect("start");
        let outcome = host.drive(&run_id, no_observer()).await.expect("drive");
        assert_eq!(outcome.status, RunStatus::Completed, "{outcome:?}");
        assert_eq!(balances(&host).await, (993, 1_007));
        assert_ledger_consistent(&s.db);
    });
}

/// A module that spins holds no async worker: on a runtime with a single thread (as the
/// binary has with a SQLite journal, beside the writer thread), another run starts, runs and
/// completes while the spinning one is still inside its deadline, and the spinner still ends
/// at its deadline and is compensated.
#[test]
fn a_spinning_module_does_not_stall_the_other_runs() {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, Ordering};
    let s = Sandbox::new("spin");
    rt().block_on(async {
        let (host, hash) = misbehave_host(&s, &["alice", "bob"], |limits| {
            limits.run_duration_ms_max = 10_000;
        })
        .await;
        // Set once the spinner's execution has ended (its deadline passed).
        let spun_out = Arc::new(AtomicBool::new(false));
        let spinner = {
            let host = host.clone();
            let hash = hash.clone();
            let spun_out = spun_out.clone();
            let observer: wasaga_runtime::store::Observer = Arc::new(move |_, event| {
                if event.kind() == "compensating" {
                    spun_out.store(true, Ordering::SeqCst);
                }
            });
            let spin =
                json!({ "mode": "loop", "from": "alice", "to": "bob", "amount": 7 }).to_string();
            tokio::spawn(async move {
                host.start_and_drive(Some("spinner".into()), "misbehave", &hash, &spin, observer)
                    .await
            })
        };
        // Wait until the spinner is in its loop: both its steps are done.
        let waited = std::time::Instant::now();
        loop {
            assert!(
                waited.elapsed() < std::time::Duration::from_secs(30) && !spinner.is_finished(),
                "the spinner never got to its loop"
            );
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
            let events = host.journal().events("spinner").await.unwrap_or_default();
            if events
                .iter()
                .filter(|e| e.event.kind() == "step-done")
                .count()
                == 2
            {
                break;
            }
        }
        let ok = json!({ "mode": "ok", "from": "bob", "to": "alice", "amount": 1 }).to_string();
        let outcome = host
            .start_and_drive(Some("quick".into()), "misbehave", &hash, &ok, no_observer())
            .await
            .expect("drive");
        assert_eq!(outcome.status, RunStatus::Completed, "{outcome:?}");
        assert!(
            !spun_out.load(Ordering::SeqCst),
            "the quick run had to wait for the spinner's deadline: the spinner held the runtime"
        );
        let spun = spinner.await.expect("task").expect("drive");
        assert_eq!(spun.status, RunStatus::Compensated, "{spun:?}");
        assert!(
            spun.error.unwrap_or_default().contains("deadline exceeded"),
            "the spinner still ends at its deadline"
        );
        assert_eq!(balances(&host).await, (1_001, 999));
        assert_ledger_consistent(&s.db);
    });
}

/// Every size a module hands the host is bounded, and so is every event it makes: a run that
/// logs past `journal_events_max` (the logs wait in a buffer for the next write, and count),
/// or hands the host a 1 MiB step name, participant name or lock key, or a commit of 10,000
/// calls, ends with the limit named and is compensated, and nothing that large is journaled.
#[test]
fn every_size_a_module_hands_the_host_is_bounded() {
    let s = Sandbox::new("sizes");
    rt().block_on(async {
        let (host, hash) = misbehave_host(&s, &["alice", "bob"], |limits| {
            limits.journal_events_max = 50;
        })
        .await;
        let cases = [
            ("chatty", "journal_events_max = 50"),
            (
                "long-name",
                "a step name of 1048576 bytes is over name_bytes_max = 128",
            ),
            (
                "long-participant",
                "a participant name of 1048576 bytes is over name_bytes_max = 128",
            ),
            (
                "long-key",
                "a lock key of 1048576 bytes is over key_bytes_max = 256",
            ),
            (
                "many-branches",
                "commit-all of 10000 calls is over branches_max = 32",
            ),
        ];
        for (mode, named) in cases {
            let input =
                json!({ "mode": mode, "from": "alice", "to": "bob", "amount": 7 }).to_string();
            let outcome = host
                .start_and_drive(None, "misbehave", &hash, &input, no_observer())
                .await
                .expect("drive");
            assert_eq!(
                outcome.status,
                RunStatus::Compensated,
                "{mode}: {outcome:?}"
            );
            let error = outcome.error.unwrap_or_default();
            assert!(
                error.contains("limit exceeded") && error.contains(named),
                "{mode}: {error}"
            );
            let events = host
                .journal()
                .events(&outcome.run_id)
                .await
                .expect("events");
            assert!(
                events.len() <= 50 + 4,
                "{mode}: {} events, past the cap and the run's own ending",
                events.len()
            );
            assert_eq!(balances(&host).await, (1_000, 1_000), "{mode}");
        }
        let largest: i64 = crate::support::scalar(&s.db, "SELECT MAX(LENGTH(body)) FROM events");
        assert!(
            largest < 16 << 10,
            "an event of {largest} bytes was journaled"
        );
        assert_ledger_consistent(&s.db);
    });
}

/// A module cannot escape its deadline by sleeping inside a host call: WASI's clocks are
/// frozen for it, so a 20 s `std::thread::sleep` returns at once, and the run, whose deadline
/// is 2 s, completes.
#[test]
fn a_module_cannot_sleep_through_its_deadline() {
    let s = Sandbox::new("sleep");
    rt().block_on(async {
        let (host, hash) = misbehave_host(&s, &["alice", "bob"], |limits| {
            limits.run_duration_ms_max = 2_000;
        })
        .await;
        let input =
            json!({ "mode": "sleep", "from": "alice", "to": "bob", "amount": 7 }).to_string();
        let outcome = host
            .start_and_drive(None, "misbehave", &hash, &input, no_observer())
            .await
            .expect("drive");
        assert_eq!(outcome.status, RunStatus::Completed, "{outcome:?}");
        let output: serde_json::Value =
            serde_json::from_str(&outcome.output.unwrap_or_default()).expect("output");
        let slept_ms = output["slept_ms"].as_u64().expect("slept_ms");
        assert!(slept_ms < 2_000, "the module really slept {slept_ms} ms");
    });
}

/// A compensated run says what compensation could not undo: a step without a compensation
/// and a committed `commit-all` stay applied, and the run's outcome names both.
#[test]
fn a_compensated_run_names_what_it_could_not_undo() {
    let s = Sandbox::new("not-undone");
    rt().block_on(async {
        let (host, hash) = misbehave_host(&s, &["alice", "bob"], |_| {}).await;
        let input = json!({ "mode": "irreversible", "from": "alice", "to": "bob", "amount": 7 })
            .to_string();
        let outcome = host
            .start_and_drive(None, "misbehave", &hash, &input, no_observer())
            .await
            .expect("drive");
        assert_eq!(outcome.status, RunStatus::Compensated, "{outcome:?}");
        let error = outcome.error.unwrap_or_default();
        assert!(error.contains("fails after a commit"), "{error}");
        assert!(
            error.contains("not undone: ")
                && error.contains("commit-all at call")
                && error.contains("committed, and a commit is final")
                && error.contains("step 'note' (ledger.balance) applied and has no compensation"),
            "{error}"
        );
        // The debit and credit steps were undone; the committed transfer of 1 stays.
        assert_eq!(balances(&host).await, (999, 1_001));
        assert_ledger_consistent(&s.db);
    });
}

/// Compiling a module (a deploy, the first run of a new version) never holds an async worker:
/// on a runtime with one thread, another task runs, and sees the compilation in progress,
/// while a deploy compiles.
#[test]
fn a_deploy_compiles_off_the_async_workers() {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, Ordering};
    let s = Sandbox::new("compile-off");
    rt().block_on(async {
        let config = HostConfig::new(wasaga_db::Location::Sqlite(s.db.clone()));
        let host = Host::open(&config).await.expect("host opens");
        let bytes = std::fs::read(MISBEHAVE).expect("guest built");
        let seen = Arc::new(AtomicBool::new(false));
        let done = Arc::new(AtomicBool::new(false));
        let watcher = {
            let (host, seen, done) = (host.clone(), seen.clone(), done.clone());
            tokio::spawn(async move {
                while !done.load(Ordering::SeqCst) {
                    if host.modules_compiling() > 0 {
                        seen.store(true, Ordering::SeqCst);
                    }
                    tokio::task::yield_now().await;
                }
            })
        };
        host.add_module("misbehave", &bytes)
            .await
            .expect("valid module");
        done.store(true, Ordering::SeqCst);
        watcher.await.expect("watcher");
        assert!(
            seen.load(Ordering::SeqCst),
            "no other task ran while the module compiled: the compilation held the runtime"
        );
    });
}

/// Spinning modules queue for the host's few compute slots instead of sharing the workers
/// with everything else: with six spinning at once, no more than `compute_slots_max` compute
/// at any moment, a run that works in host calls completes while they spin, and every
/// spinner still ends at its deadline.
#[test]
fn spinning_modules_queue_for_compute_slots_and_other_runs_go_on() {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
    let s = Sandbox::new("compute-slots");
    rt().block_on(async {
        let (host, hash) = misbehave_host(&s, &["alice", "bob", "carol", "dave"], |limits| {
            // Long enough that the quick run ends first even when the disk is slow to sync.
            limits.run_duration_ms_max = 15_000;
        })
        .await;
        let spun_out = Arc::new(AtomicBool::new(false));
        let mut spinners = Vec::new();
        for i in 0..6 {
            let (host, hash, spun_out) = (host.clone(), hash.clone(), spun_out.clone());
            let observer: wasaga_runtime::store::Observer = Arc::new(move |_, event| {
                if event.kind() == "compensating" {
                    spun_out.store(true, Ordering::SeqCst);
                }
            });
            let spin =
                json!({ "mode": "loop", "from": "alice", "to": "bob", "amount": 1 }).to_string();
            spinners.push(tokio::spawn(async move {
                host.start_and_drive(
                    Some(format!("spin-{i}")),
                    "misbehave",
                    &hash,
                    &spin,
                    observer,
                )
                .await
            }));
        }
        let (most, done) = (
            Arc::new(AtomicUsize::new(0)),
            Arc::new(AtomicBool::new(false)),
        );
        let sampler = {
            let (host, most, done) = (host.clone(), most.clone(), done.clone());
            tokio::spawn(async move {
                while !done.load(Ordering::SeqCst) {
                    most.fetch_max(host.modules_computing(), Ordering::SeqCst);
                    tokio::time::sleep(std::time::Duration::from_millis(1)).await;
                }
            })
        };
        let waited = std::time::Instant::now();
        while most.load(Ordering::SeqCst) == 0 {
            assert!(
                waited.elapsed() < std::time::Duration::from_secs(30),
                "no spinner ever held a compute slot"
            );
            tokio::time::sleep(std::time::Duration::from_millis(5)).await;
        }
        let ok = json!({ "mode": "ok", "from": "carol", "to": "dave", "amount": 3 }).to_string();
        let outcome = host
            .start_and_drive(Some("quick".into()), "misbehave", &hash, &ok, no_observer())
            .await
            .expect("drive");
        assert_eq!(outcome.status, RunStatus::Completed, "{outcome:?}");
        assert!(
            !spun_out.load(Ordering::SeqCst),
            "the quick run waited for the spinners' deadline"
        );
        for spinner in spinners {
            let spun = spinner.await.expect("task").expect("drive");
            assert_eq!(spun.status, RunStatus::Compensated, "{spun:?}");
        }
        done.store(true, Ordering::SeqCst);
        sampler.await.expect("sampler");
        let most = most.load(Ordering::SeqCst);
        assert!(
            (1..=wasaga_runtime::executor::compute_slots_max()).contains(&most),
            "{most} modules computed at once, the slots are {}",
            wasaga_runtime::executor::compute_slots_max()
        );
        assert_eq!(host.modules_computing(), 0, "every slot went back");
        assert_ledger_consistent(&s.db);
    });
}
