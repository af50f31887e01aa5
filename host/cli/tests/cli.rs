//! The `wasaga` binary's argument handling. (Also makes `cargo test --workspace` build the
//! binary that the end-to-end tests in `tests/` drive.)

use std::process::Command;

fn wasaga(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_wasaga"))
        .args(args)
        .output()
        .expect("wasaga runs")
}

#[test]
fn help_lists_the_commands() {
    let out = wasaga(&["--help"]);
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    for command in ["run", "resume", "runs", "ledger", "validate"] {
        assert!(
            text.contains(command),
            "help does not mention {command}: {text}"
        );
    }
}

#[test]
fn unknown_flags_and_bad_values_are_usage_errors() {
    for args in [
        &["run"][..],
        &["run", "x.wasm", "--bogus"],
        &["runs", "list", "--limit", "many"],
        &["ledger", "open"],
        &["run", "x.wasm", "--run-timeout-ms", "0"],
    ] {
        let out = wasaga(args);
        assert_eq!(
            out.status.code(),
            Some(2),
            "{args:?} should be a usage error"
        );
        assert!(!out.stderr.is_empty(), "{args:?} should say what is wrong");
    }
}
