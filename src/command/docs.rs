//! `ec-launch completions SHELL` and `ec-launch man`: packaging aids that
//! render shell completions and the man page from the same clap definition
//! the program parses with, so they cannot drift from the real flags. The
//! flake installs both; `--help` lists them so a user who built with cargo
//! finds them too.
//!
//! `clap_complete`'s bash script (4.6.11, clap issue #6421) spells a state one
//! way in its dispatch loop (`ec__launch__subcmd__run`) and another in the
//! case arms that hold each subcommand's flags (`ec__subcmd__launch__subcmd__run`)
//! when the binary name has a hyphen, so no subcommand's flags ever
//! completed. [`bash_arms_as_the_loop_spells_them`] respells the arms.

use std::io::{self, Write};

use clap::CommandFactory;

use crate::cli::Cli;
use crate::exit_code::ExitStatus;

/// The name the scripts complete, as installed.
const BIN: &str = "ec-launch";

/// Writes the completion script for `shell` to stdout.
#[must_use]
pub fn completions(shell: clap_complete::Shell) -> ExitStatus {
    let mut script = Vec::new();
    clap_complete::generate(shell, &mut Cli::command(), BIN, &mut script);
    if shell == clap_complete::Shell::Bash {
        script = bash_arms_as_the_loop_spells_them(&String::from_utf8_lossy(&script)).into_bytes();
    }
    match io::stdout().lock().write_all(&script) {
        Ok(()) => ExitStatus::Success,
        Err(e) if e.kind() == io::ErrorKind::BrokenPipe => ExitStatus::Success,
        Err(e) => {
            eprintln!("error: cannot write the completion script: {e}; check stdout");
            ExitStatus::OsError
        }
    }
}

/// The bash script with each case arm's state label spelled as the dispatch
/// loop spells it: the binary name's hyphens as `__` (the loop's escaping),
/// not as the subcommand separator `__subcmd__` (the arms' single-pass
/// escaping). Only whole arm labels at the arms' indentation are touched,
/// so a script from a fixed `clap_complete` passes through unchanged.
fn bash_arms_as_the_loop_spells_them(script: &str) -> String {
    let loop_spelling = BIN.replace('-', "__");
    let arm_spelling = BIN.replace('-', "__subcmd__");
    let mut fixed = String::with_capacity(script.len());
    for line in script.split_inclusive('\n') {
        let label = line
            .strip_prefix("        ")
            .and_then(|rest| rest.strip_prefix(&*arm_spelling));
        match label {
            Some(rest) if rest.starts_with(')') || rest.starts_with("__") => {
                fixed.push_str("        ");
                fixed.push_str(&loop_spelling);
                fixed.push_str(rest);
            }
            _ => fixed.push_str(line),
        }
    }
    fixed
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
