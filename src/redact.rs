//! Credential redaction for anything that leaves the process as text.
//!
//! A source URL may carry credentials in its userinfo (`user:pass@`) or in
//! query parameters (`?token=…`). The URL itself must reach the program, but
//! nothing `ec-launch` writes (log lines, the lock file's record, `key` and
//! `status` output, error messages) may contain them. Every place that turns a
//! source into text goes through [`redact_source`]; error messages never echo
//! the raw source at all.

use url::Url;

/// What replaces a secret.
pub const MASK: &str = "***";

/// Query parameter names (compared lower-cased, by substring) whose values
/// are treated as secrets. Over-matching costs a masked harmless value;
/// under-matching leaks a credential, so the list is generous.
const SENSITIVE_PARAM_PARTS: &[&str] = &[
    "token", "key", "pass", "pwd", "auth", "sig", "secret", "cred", "session", "bearer",
];

/// True when a query parameter of this name holds a secret.
#[must_use]
pub fn is_sensitive_param(name: &str) -> bool {
    let name = name.to_ascii_lowercase();
    SENSITIVE_PARAM_PARTS.iter().any(|part| name.contains(part))
}

/// The source as it may be shown: userinfo replaced by [`MASK`], sensitive
/// query values masked, fragment dropped. A local path is shown as it is. A
/// string that does not parse as a URL is not shown at all, because we cannot
/// tell which part of it is secret.
#[must_use]
pub fn redact_source(source: &str) -> String {
    let source = source.trim();
    if source.starts_with('/') {
        return source.to_owned();
    }
    match Url::parse(source) {
        Ok(url) => redact_url(&url),
        Err(_) => "<unparseable source>".to_owned(),
    }
}

/// [`redact_source`] for an already parsed URL.
#[must_use]
pub fn redact_url(url: &Url) -> String {
    let mut shown = url.clone();
    shown.set_fragment(None);
    if !url.username().is_empty() || url.password().is_some() {
        // Both setters fail only for URLs that cannot have userinfo, and
        // those cannot carry any, so ignoring the result leaks nothing.
        let _ = shown.set_password(None);
        let _ = shown.set_username(MASK);
    }
    if url.query().is_some() {
        let pairs: Vec<(String, String)> = url
            .query_pairs()
            .map(|(name, value)| {
                let value = if is_sensitive_param(&name) {
                    MASK.to_owned()
                } else {
                    value.into_owned()
                };
                (name.into_owned(), value)
            })
            .collect();
        if pairs.is_empty() {
            shown.set_query(None);
        } else {
            shown.query_pairs_mut().clear().extend_pairs(pairs);
        }
    }
    shown.to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn userinfo_is_masked() {
        let shown = redact_source("http://admin:hunter2@10.0.0.5:5004/auto/v5.1");
        assert_eq!(shown, "http://***@10.0.0.5:5004/auto/v5.1");
    }

    #[test]
    fn sensitive_query_values_are_masked_and_others_kept() {
        let shown =
            redact_source("https://cdn.example/live.m3u8?channel=5&api_key=abc123&Sig=zz#t=1");
        assert_eq!(
            shown,
            "https://cdn.example/live.m3u8?channel=5&api_key=***&Sig=***"
        );
    }

    #[test]
    fn unparseable_sources_are_not_echoed() {
        assert_eq!(
            redact_source("http://us er:secret@"),
            "<unparseable source>"
        );
    }

    #[test]
    fn local_paths_are_shown_as_is() {
        assert_eq!(redact_source("/dev/video0"), "/dev/video0");
    }
}
