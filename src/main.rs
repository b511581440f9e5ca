//! The `iomt` binary.

use std::process::ExitCode;

use clap::Parser;
use iomt_connector::cli::{Cli, EXIT_USAGE, run};

fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli) {
        Ok(code) => code,
        Err(error) => {
            // A closed pipe (`iomt normalize | head`) is not an error.
            if error
                .chain()
                .filter_map(|cause| cause.downcast_ref::<std::io::Error>())
                .any(|io| io.kind() == std::io::ErrorKind::BrokenPipe)
            {
                return ExitCode::SUCCESS;
            }
            eprintln!("iomt: {error:#}");
            ExitCode::from(EXIT_USAGE)
        }
    }
}
