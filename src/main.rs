//! `ec-launch`: the per-source lock-and-exec launcher for every-channel
//! publishers. See the README for the contract and `evolution/` for why.

mod cgroup;
mod cli;
mod command;
mod error;
mod exec;
mod exit_code;
mod holder;
mod lock;
mod lock_record;
mod logging;
mod proc_locks;
mod redact;
#[cfg(test)]
mod secret_props;
mod source_key;

use std::error::Error as _;
use std::fmt::Write as _;
use std::process::ExitCode;

use clap::Parser;

use crate::cli::{Cli, Command};

fn main() -> ExitCode {
    let cli = Cli::parse();
    logging::init(cli.verbose);
    let result = match cli.command {
        Command::Run(args) => command::run::run(args),
        Command::Key(args) => command::key::key(&args),
    };
    match result {
        Ok(status) => status.into(),
        Err(error) => {
            eprintln!("{}", error_line(&error));
            error.exit_status().into()
        }
    }
}

/// `error: <what>: <cause>: <cause>; <what to do>`, on one line.
fn error_line(error: &error::Error) -> String {
    let mut line = format!("error: {error}");
    let mut cause = error.source();
    while let Some(inner) = cause {
        let _ = write!(line, ": {inner}");
        cause = inner.source();
    }
    line.push_str("; ");
    line.push_str(error.hint());
    line
}
