//! `cinder-load`: see `cinder-load --help` and the crate docs.

use clap::Parser;

use cinder_load::cli::Cli;

fn main() {
    cinder_load::clock::init();
    let cli = Cli::parse();
    std::process::exit(cinder_load::app::run(&cli));
}
