//! `cinder-load`: see `cinder-load --help` and the crate docs.

use clap::Parser;

use cinder_load::cli::{Cli, Command};
use cinder_load::report::Report;
use cinder_load::scenario::{ceiling, chat, connect, fanout, idle, presence, sweep};

fn main() {
    cinder_load::clock::init();
    let cli = Cli::parse();
    let result = match &cli.command {
        Command::Fanout(args) => {
            fanout::run(args).and_then(|r| finish(r, args.output.json.as_deref()))
        }
        Command::Chat(args) => chat::run(args).and_then(|r| finish(r, args.output.json.as_deref())),
        Command::Connect(args) => {
            connect::run(args).and_then(|r| finish(r, args.output.json.as_deref()))
        }
        Command::Idle(args) => idle::run(args).and_then(|r| finish(r, args.output.json.as_deref())),
        Command::Presence(args) => {
            presence::run(args).and_then(|r| finish(r, args.output.json.as_deref()))
        }
        Command::Sweep(args) => sweep::run(args).map(|s| {
            s.print();
            println!("chart written to {}", args.svg.display());
        }),
        Command::Ceiling(args) => ceiling::run(args).map(|r| r.print()),
        Command::Drain(args) => ceiling::drain(args),
    };
    if let Err(message) = result {
        eprintln!("cinder-load: {message}");
        std::process::exit(1);
    }
}

fn finish(report: Report, json: Option<&std::path::Path>) -> Result<(), String> {
    report.print();
    if let Some(path) = json {
        report
            .write_json(path)
            .map_err(|e| format!("{}: {e}", path.display()))?;
    }
    Ok(())
}
