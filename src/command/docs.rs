//! `ec-launch completions SHELL` and `ec-launch man`: packaging aids that
//! render shell completions and the man page from the same clap definition
//! the program parses with, so they cannot drift from the real flags. The
//! flake installs both; they are hidden from `--help`.

use std::io;

use clap::CommandFactory;

use crate::cli::Cli;
use crate::exit_code::ExitStatus;

/// Writes the completion script for `shell` to stdout.
#[must_use]
pub fn completions(shell: clap_complete::Shell) -> ExitStatus {
    clap_complete::generate(shell, &mut Cli::command(), "ec-launch", &mut io::stdout());
    ExitStatus::Success
}

/// Writes the man page (roff) to stdout, with the exit-code table appended.
#[must_use]
pub fn man() -> ExitStatus {
    let page = clap_mangen::Man::new(Cli::command());
    let mut out = io::stdout().lock();
    let rendered = page
        .render(&mut out)
        .and_then(|()| io::Write::write_all(&mut out, crate::exit_code::man_sections().as_bytes()));
    match rendered {
        Ok(()) => ExitStatus::Success,
        Err(e) if e.kind() == io::ErrorKind::BrokenPipe => ExitStatus::Success,
        Err(e) => {
            eprintln!("error: cannot write the man page: {e}; check stdout");
            ExitStatus::OsError
        }
    }
}
