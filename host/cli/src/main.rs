//! The `wasaga` binary: parses the command line and hands it to `cli`, which starts the async
//! runtime and maps what happened onto a one-line message and an exit code.

mod bench;
mod cli;

use clap::Parser;

/// Rust's allocations go to mimalloc: its thread-local free lists make the executor's many
/// short-lived allocations (events, payloads, futures) and the hand-off of jobs and answers
/// between the runtime and the SQLite writer thread cheap. With glibc's malloc, frees of
/// memory allocated on the other thread showed as lock waits in the writer's profile, and
/// `wasaga bench transfer --n 20000` ran 8,150-8,200 sagas/s against 9,300-9,700 with this.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> std::process::ExitCode {
    keep_freed_memory();
    let cli = cli::Cli::parse();
    if cli.only_prints() {
        stop_quietly_on_a_closed_pipe();
    }
    cli::main(cli)
}

/// `wasaga runs list | head` closes the pipe early: a command that only prints then ends as
/// other Unix tools do (SIGPIPE), not with a panic of `println!`. Not for commands that talk
/// to other processes over pipes and sockets (`serve`, `bench`), which handle their errors.
#[cfg(unix)]
#[allow(unsafe_code)]
fn stop_quietly_on_a_closed_pipe() {
    // SAFETY: restores the default action of one signal before any other thread exists.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
}

#[cfg(not(unix))]
fn stop_quietly_on_a_closed_pipe() {}

/// Stops glibc's malloc (which SQLite's C code still uses) from handing freed memory back to the kernel at every free that
/// leaves the top of a heap empty. SQLite frees a statement journal after each write
/// statement, and each hand-back (`madvise`) costs a TLB shootdown across every core running
/// the process: a tenth of the SQLite writer's time in the transfer benchmark's profile. Large
/// allocations still come from `mmap` above 8 MiB, as glibc's own adaptive threshold would
/// choose for this process.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
#[allow(unsafe_code)]
fn keep_freed_memory() {
    // SAFETY: mallopt only sets malloc's tuning parameters; it is called before any other
    // thread exists, and a refused setting (return value 0) leaves glibc's defaults in place.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 8 << 20);
        libc::mallopt(libc::M_TRIM_THRESHOLD, 256 << 20);
    }
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
fn keep_freed_memory() {}
