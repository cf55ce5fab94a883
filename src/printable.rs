//! Text from processes and files, made safe to print on a terminal.
//!
//! A holder's command name (`/proc/<pid>/comm`, which any process may set to
//! anything), a lock file's record (anyone who can write the file can forge
//! it) and lock file names are not ours: printed raw, a control character
//! could clear the operator's screen, move the cursor over a warning, or
//! forge a whole line with a carriage return. Every control character is
//! shown escaped (`\x1b`, `\r`, `\u{9b}`), and bytes that are not UTF-8 (a
//! file name may hold any) as `\xNN`. JSON output needs none of this:
//! `serde_json` escapes control characters itself.

use std::borrow::Cow;
use std::fmt::Write as _;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

/// `text` with every control character escaped; borrowed when there is none.
#[must_use]
pub fn printable(text: &str) -> Cow<'_, str> {
    if !text.chars().any(char::is_control) {
        return Cow::Borrowed(text);
    }
    let mut escaped = String::with_capacity(text.len() + 8);
    push_escaped(&mut escaped, text);
    Cow::Owned(escaped)
}

/// Bytes as text: UTF-8 runs escaped like [`printable`], other bytes as `\xNN`.
#[must_use]
fn printable_bytes(bytes: &[u8]) -> String {
    let mut text = String::with_capacity(bytes.len());
    for chunk in bytes.utf8_chunks() {
        push_escaped(&mut text, chunk.valid());
        for byte in chunk.invalid() {
            let _ = write!(text, "\\x{byte:02x}");
        }
    }
    text
}

/// A path as text, escaped like [`printable_bytes`].
#[must_use]
pub fn printable_path(path: &Path) -> String {
    printable_bytes(path.as_os_str().as_bytes())
}

/// `text` as one word of a POSIX shell command line, so a command we
/// suggest works when pasted: bare when every character is one the shell
/// takes literally, else in single quotes (a `'` inside as `'\''`). Text
/// with control characters cannot be pasted anyway; it is escaped like
/// [`printable`] inside the quotes, so the terminal stays safe.
#[must_use]
pub fn shell_word(text: &str) -> Cow<'_, str> {
    let plain = |c: char| c.is_ascii_alphanumeric() || "_-./:@%+=,".contains(c);
    if !text.is_empty() && text.chars().all(plain) {
        return Cow::Borrowed(text);
    }
    Cow::Owned(format!("'{}'", printable(text).replace('\'', "'\\''")))
}

fn push_escaped(out: &mut String, text: &str) {
    for c in text.chars() {
        match c {
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if c.is_control() && u32::from(c) < 0x80 => {
                let _ = write!(out, "\\x{:02x}", u32::from(c));
            }
            c if c.is_control() => {
                let _ = write!(out, "\\u{{{:x}}}", u32::from(c));
            }
            c => out.push(c),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn control_characters_are_escaped_and_plain_text_is_untouched() {
        assert!(matches!(printable("ec-node"), Cow::Borrowed("ec-node")));
        assert_eq!(
            printable("a\x1b[2Jb\rc\n\x07\u{9b}"),
            "a\\x1b[2Jb\\rc\\n\\x07\\u{9b}"
        );
    }

    #[test]
    fn bytes_that_are_not_utf8_are_shown_as_hex() {
        assert_eq!(
            printable_bytes(b"locks-\xff\x1b/a.lock"),
            "locks-\\xff\\x1b/a.lock"
        );
        assert_eq!(printable_bytes("é".as_bytes()), "é");
    }
}

#[cfg(test)]
mod shell_word_tests {
    use super::shell_word;

    #[test]
    fn shell_words_are_bare_when_safe_and_quoted_otherwise() {
        assert_eq!(
            shell_word("hdhomerun://10.0.0.5/v5.1"),
            "hdhomerun://10.0.0.5/v5.1"
        );
        assert_eq!(
            shell_word("/run/every-channel/source-locks"),
            "/run/every-channel/source-locks"
        );
        assert_eq!(shell_word("Studio A's feed"), "'Studio A'\\''s feed'");
        assert_eq!(shell_word(""), "''");
        assert_eq!(shell_word("a$b`c"), "'a$b`c'");
    }
}
