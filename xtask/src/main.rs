//! Developer tasks: `cargo xtask <task>`.
use std::path::PathBuf;

use anyhow::Result;
use clap::{Parser, Subcommand};

mod names;

#[derive(Parser)]
struct Cli {
    #[command(subcommand)]
    task: Task,
}

#[derive(Subcommand)]
enum Task {
    /// Regenerate probe-agent/src/names/generated.rs from the kernel UAPI headers.
    GenNames,
}

fn main() -> Result<()> {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..");
    match Cli::parse().task {
        Task::GenNames => names::run(&root),
    }
}
