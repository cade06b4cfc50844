//! Developer tasks: `cargo xtask <task>`.
use std::path::PathBuf;

use anyhow::Result;
use clap::{Parser, Subcommand};

mod bench;
mod names;
mod soak;
mod stream;
mod vm;

#[derive(Parser)]
struct Cli {
    #[command(subcommand)]
    task: Task,
}

#[derive(Subcommand)]
enum Task {
    /// Regenerate probe-agent/src/names/generated.rs from the kernel UAPI headers.
    GenNames,
    /// Measure the agent's overhead per system call against the floor and bpftrace.
    Bench {
        /// Rounds over all configurations (the table shows medians).
        #[arg(long, default_value_t = 5)]
        rounds: usize,
        /// getppid calls per sample.
        #[arg(long, default_value_t = 5_000_000)]
        calls: u64,
        /// Only the real-server part (nginx + wrk).
        #[arg(long)]
        server_only: bool,
    },
    /// The agent under a mixed load for a while; prints the trend of its
    /// CPU, RSS, map fill and losses.
    Soak {
        #[arg(long, default_value_t = 10.0)]
        minutes: f64,
        #[arg(long, default_value_t = 10)]
        interval: u64,
    },
    /// Bytes per interval of the default stream, near idle and busy (as
    /// root; about 2.5 minutes).
    Stream {
        /// Full 10 s intervals measured in each case.
        #[arg(long, default_value_t = 6)]
        intervals: u64,
        /// Write the table into the README.
        #[arg(long)]
        readme: bool,
    },
    /// Boot each kernel of the matrix under QEMU and run the ground-truth
    /// checks inside (as root; about 5 minutes).
    Vm {
        /// Only these kernels of the matrix (e.g. 6.1-arm64); repeatable.
        #[arg(long)]
        only: Vec<String>,
        /// Fetch the newest package of each kernel series again.
        #[arg(long)]
        refresh: bool,
        /// Run nothing: rewrite the README's kernel table from the last run.
        #[arg(long)]
        readme: bool,
    },
}

fn main() -> Result<()> {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..");
    match Cli::parse().task {
        Task::GenNames => names::run(&root),
        Task::Bench { rounds, calls, server_only } => bench::run(&root, rounds, calls, server_only),
        Task::Soak { minutes, interval } => soak::run(&root, minutes, interval),
        Task::Stream { intervals, readme } => stream::run(&root, intervals, readme),
        Task::Vm { only, refresh, readme } => vm::run(&root, &only, refresh, readme),
    }
}

/// Sends `sig` to process `pid` (gone already: nothing happens).
pub(crate) fn kill(pid: u32, sig: i32) {
    // SAFETY: kill(2) takes two integers and touches no memory of ours.
    unsafe { libc::kill(pid as i32, sig) };
}

/// Whether this process runs as root.
pub(crate) fn is_root() -> bool {
    // SAFETY: geteuid(2) has no arguments and cannot fail.
    unsafe { libc::geteuid() == 0 }
}
