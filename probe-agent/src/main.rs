//! probe-agent: parse, build the runtime config, run.
//! Exit status: 0 done, 1 runtime failure, 2 bad usage.

mod aggregate;
mod btf;
mod caps;
mod catalogue;
mod cli;
mod commands;
mod config;
mod console;
mod containers;
mod cost;

mod disk;
mod family;
mod kubernetes;
mod merge;
mod metrics;
mod names;
mod overhead;
mod pipeline;
mod probes;
mod procfs;
mod recording;
mod records;
mod report;
mod rules;
mod shed;
mod sink;
mod timefmt;

use std::process::ExitCode;

use clap::Parser as _;

fn main() -> ExitCode {
    let cli = cli::Cli::parse(); // exits 2 on a usage error, 0 on --help
    // The console view owns the terminal: only errors are logged over it.
    let console = matches!(cli.command, Some(cli::Command::Top(_)))
        || matches!(&cli.command, Some(cli::Command::Run(a)) if a.console)
        || (cli.command.is_none() && cli.run.console);
    let level = if console { "error" } else { "info" };
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or(level))
        .format_target(false)
        // The HTTP client writes requests' headers (the sinks' credentials)
        // at trace level, unredacted: never past debug, whatever RUST_LOG says.
        .filter_module("ureq", log::LevelFilter::Debug)
        .filter_module("ureq_proto", log::LevelFilter::Info)
        .init();
    let offline = match &cli.command {
        Some(cli::Command::Config { .. }) => Some(commands::print_default_config()),
        Some(cli::Command::CheckConfig { file }) => Some(commands::check_config(file)),
        Some(cli::Command::Replay { file, config }) => {
            Some(commands::replay(file, config.as_deref()))
        }
        Some(cli::Command::Kpis) => Some(commands::print_kpis()),
        Some(cli::Command::Merge { files }) => Some(merge::merge(files)),
        Some(cli::Command::Report { file, config, html }) => {
            Some(commands::report(file, config.as_deref(), html.as_deref()))
        }
        Some(cli::Command::Compare { baseline, current, config, html }) => {
            Some(commands::compare(baseline, current, config.as_deref(), html.as_deref()))
        }
        _ => None,
    };
    if let Some(result) = offline {
        return match result {
            Ok(()) => ExitCode::SUCCESS,
            Err(err) => {
                eprintln!("probe-agent: {err}");
                ExitCode::from(2)
            }
        };
    }
    let runtime = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(err) => {
            eprintln!("probe-agent: cannot start the runtime: {err}");
            return ExitCode::from(1);
        }
    };
    let result = match cli.command {
        Some(cli::Command::Floor { duration, clock }) => {
            runtime.block_on(pipeline::floor(duration, clock))
        }
        Some(cli::Command::Run(args)) => run(&runtime, args),
        Some(cli::Command::Top(mut args)) => {
            args.console = true;
            run(&runtime, args)
        }
        None => run(&runtime, cli.run),
        Some(_) => Ok(()), // offline commands ran above
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(pipeline::AgentError::Usage(msg)) => {
            eprintln!("probe-agent: {msg}");
            ExitCode::from(2)
        }
        Err(err) => {
            eprintln!("probe-agent: {err}");
            ExitCode::from(1)
        }
    }
}

fn run(runtime: &tokio::runtime::Runtime, args: cli::RunArgs) -> Result<(), pipeline::AgentError> {
    let cfg = args.validate().map_err(|e| pipeline::AgentError::Usage(e.0))?;
    runtime.block_on(pipeline::run(cfg))
}
