//! `ec-launch completions SHELL` and `ec-launch man`: packaging aids that
//! render shell completions and the man page from the same clap definition
//! the program parses with, so they cannot drift from the real flags. The
//! flake installs both; they are hidden from `--help`.

use std::io::{self, Write};

use clap::CommandFactory;

use crate::cli::Cli;
use crate::exit_code::ExitStatus;

/// Writes the completion script for `shell` to stdout.
#[must_use]
pub fn completions(shell: clap_complete::Shell) -> ExitStatus {
    clap_complete::generate(shell, &mut Cli::command(), "ec-launch", &mut io::stdout());
    ExitStatus::Success
}

/// Writes the man page (roff) to stdout: the program, then one section per
/// subcommand with its synopsis and every flag, then the exit-code table.
/// One page, so `man ec-launch` answers every question and no page it refers
/// to is missing.
#[must_use]
pub fn man() -> ExitStatus {
    let mut out = io::stdout().lock();
    let rendered = render_man(&mut out);
    match rendered {
        Ok(()) => ExitStatus::Success,
        Err(e) if e.kind() == io::ErrorKind::BrokenPipe => ExitStatus::Success,
        Err(e) => {
            eprintln!("error: cannot write the man page: {e}; check stdout");
            ExitStatus::OsError
        }
    }
}

fn render_man(out: &mut impl Write) -> io::Result<()> {
    let command = Cli::command();
    let page = clap_mangen::Man::new(command.clone());
    page.render_title(out)?;
    page.render_name_section(out)?;
    page.render_synopsis_section(out)?;
    page.render_description_section(out)?;
    page.render_options_section(out)?;
    for sub in command.get_subcommands().filter(|s| !s.is_hide_set()) {
        let name = format!("ec-launch {}", sub.get_name());
        writeln!(out, ".SH \"{}\"", name.to_uppercase())?;
        if let Some(about) = sub.get_about() {
            writeln!(out, "{about}")?;
        }
        // The subcommand's own synopsis and options, as subsections.
        let sub_page = clap_mangen::Man::new(sub.clone().bin_name(name));
        let mut section = Vec::new();
        sub_page.render_synopsis_section(&mut section)?;
        sub_page.render_options_section(&mut section)?;
        let section = String::from_utf8_lossy(&section).replace(".SH ", ".SS ");
        out.write_all(section.as_bytes())?;
    }
    out.write_all(crate::exit_code::man_sections().as_bytes())?;
    page.render_version_section(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_man_page_documents_every_flag_of_every_subcommand_and_refers_to_no_other_page() {
        let mut page = Vec::new();
        render_man(&mut page).unwrap();
        let page = String::from_utf8(page).unwrap();
        let command = Cli::command();
        for sub in command.get_subcommands().filter(|s| !s.is_hide_set()) {
            for arg in sub.get_arguments().filter(|a| !a.is_hide_set()) {
                if let Some(long) = arg.get_long() {
                    let roff = format!("\\-\\-{}", long.replace('-', "\\-"));
                    assert!(
                        page.contains(&roff),
                        "{} --{long} is missing",
                        sub.get_name()
                    );
                }
            }
        }
        for (code, _) in crate::exit_code::rows() {
            assert!(
                page.contains(&format!(".TP\n{code}\n")),
                "exit code {code} is missing"
            );
        }
        assert!(
            !page.contains("ec\\-launch\\-run(1)"),
            "refers to a page that is never generated"
        );
    }
}
