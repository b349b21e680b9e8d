//! The `boldstream` binary: subcommands over the library.

use clap::{Parser, Subcommand};

#[derive(Debug, Parser)]
#[command(name = "boldstream", version, about = "Real-time fMRI decoding daemon")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Simulate a scanner: write synthetic (or replayed) volumes into a
    /// folder, with known truth and injected faults.
    Simulate(boldstream::simulate::SimulateArgs),
}

fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    match Cli::parse().command {
        Command::Simulate(args) => boldstream::simulate::run_simulate(&args),
    }
}
