//! The `wasaga` binary: parses the command line and hands it to `cli`, which maps what
//! happened onto a one-line message and an exit code.

mod cli;

use clap::Parser;

fn main() -> std::process::ExitCode {
    let args = cli::Cli::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return std::process::ExitCode::from(cli::EXIT_FAILURE);
        }
    };
    runtime.block_on(cli::main(args))
}
