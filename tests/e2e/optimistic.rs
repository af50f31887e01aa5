//! Optimistic concurrency: version-checked writes lose to concurrent ones and are retried
//! from a fresh read; no increment is lost.

use crate::guests::OPTIMISTIC;
use crate::support::{Sandbox, rt};
use serde_json::json;
use wasaga_core::event::{Event, RunStatus};
use wasaga_runtime::store::no_observer;
use wasaga_runtime::{Host, HostConfig};

#[test]
fn sixteen_optimistic_writers_lose_no_increment() {
    let s = Sandbox::new("optimistic");
    rt().block_on(async {
        let mut config = HostConfig::new(wasaga_db::Location::Sqlite(s.db.clone()));
        config.limits.concurrent_runs_max = 32;
        let host = Host::open(&config).await.expect("host opens");
        let module = std::fs::read(OPTIMISTIC).expect("guest built");
        let hash = host
            .add_module("optimistic", &module)
            .await
            .expect("valid module");
        let input = json!({ "key": "hits", "increments": 25 }).to_string();
        let mut runs = Vec::new();
        for i in 0..16 {
            let (run_id, _) = host
                .start(Some(format!("occ-{i}")), "optimistic", &hash, &input)
                .await
                .expect("start");
            let host = host.clone();
            runs.push(tokio::spawn(async move {
                host.drive(&run_id, no_observer()).await
            }));
        }
        for run in runs {
            let outcome = run.await.expect("task").expect("drive");
            assert_eq!(outcome.status, RunStatus::Completed, "{outcome:?}");
        }
        let value: String = crate::support::scalar(
            &s.db,
            "SELECT value FROM ledger_registers WHERE key = 'hits'",
        );
        assert_eq!(value, "400", "16 writers x 25 increments");

        let (mut written, mut conflicts) = (0, 0);
        for i in 0..16 {
            for stored in host
                .journal()
                .events(&format!("occ-{i}"))
                .await
                .expect("events")
            {
                if let Event::WriteIf { outcome, .. } = stored.event {
                    match outcome {
                        Ok(_) => written += 1,
                        Err(e) => {
                            assert!(e.reason().starts_with("version conflict"), "{e}");
                            conflicts += 1;
                        }
                    }
                }
            }
        }
        assert_eq!(written, 400, "every successful write is one increment");
        assert!(
            conflicts > 0,
            "16 concurrent writers must have collided and retried"
        );
    });
}
