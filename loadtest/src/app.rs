//! The program: runs the chosen scenario, prints and saves its report, and
//! turns the outcome into an exit code (see [`crate::outcome`]).
//!
//! It lives in the library, not in `main.rs`, so end-to-end tests can run
//! a whole command line in-process and check its exit code.

use std::path::Path;

use crate::cli::{Cli, Command};
use crate::outcome::{self, Loss, EXIT_ERROR};
use crate::report::Report;
use crate::scenario::{ceiling, chat, connect, fanout, idle, presence, recover, soak, sweep};

/// Runs `cli` and returns the process exit code: [`outcome::EXIT_OK`],
/// [`EXIT_ERROR`] (with the reason on stderr) or [`outcome::EXIT_LOST`]
/// (with one `LOST …` line per lossy run on stderr).
pub fn run(cli: &Cli) -> i32 {
    match execute(&cli.command) {
        Ok(losses) => {
            outcome::announce(&losses);
            outcome::exit_code(&losses)
        }
        Err(message) => {
            eprintln!("cinder-load: {message}");
            EXIT_ERROR
        }
    }
}

/// Runs one command; returns the runs that lost deliveries.
fn execute(command: &Command) -> Result<Vec<Loss>, String> {
    match command {
        Command::Fanout(args) => finish(fanout::run(args)?, args.output.json.as_deref()),
        Command::Chat(args) => finish(chat::run(args)?, args.output.json.as_deref()),
        Command::Connect(args) => finish(connect::run(args)?, args.output.json.as_deref()),
        Command::Idle(args) => finish(idle::run(args)?, args.output.json.as_deref()),
        Command::Presence(args) => finish(presence::run(args)?, args.output.json.as_deref()),
        Command::Recover(args) => {
            let report = recover::run(args).map_err(|e| e.to_string())?;
            save(&report, args.output.json.as_deref())?;
            Ok(recover::losses(&report))
        }
        Command::Sweep(args) => {
            let report = sweep::run(args)?;
            report.print();
            println!("chart written to {}", args.svg.display());
            Ok(report.losses())
        }
        // The soak prints its lines as it goes and saves its own files.
        Command::Soak(args) => Ok(soak::run(args)?.losses()),
        Command::Ceiling(args) => {
            ceiling::run(args)?.print();
            Ok(Vec::new())
        }
        Command::Drain(args) => ceiling::drain(args).map(|()| Vec::new()),
    }
}

/// Prints `report`, writes its JSON, and names it if it lost deliveries.
/// The JSON is written even then: it is the evidence.
fn finish(report: Report, json: Option<&Path>) -> Result<Vec<Loss>, String> {
    save(&report, json)?;
    Ok(outcome::losses([(report.scenario.clone(), &report)]))
}

/// Prints `report` and writes its JSON.
fn save(report: &Report, json: Option<&Path>) -> Result<(), String> {
    report.print();
    if let Some(path) = json {
        report
            .write_json(path)
            .map_err(|e| format!("{}: {e}", path.display()))?;
    }
    Ok(())
}
