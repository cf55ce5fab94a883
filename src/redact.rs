//! Credential redaction for anything that leaves the process as text.
//!
//! A source may carry credentials in its userinfo (`user:pass@`) or in
//! parameters (`?token=…`, `;jsessionid=…`). The source itself must reach
//! the program, but nothing `ec-launch` writes (log lines, the lock file's
//! record, `key` and `status` output, error messages, clap's errors) may
//! contain them. Every place that turns a source into text goes through
//! [`redact_source`].
//!
//! The redactor works on the text, not on a parsed URL, because what must
//! be hidden does not depend on what a parser accepts: `admin:S3CR3T@cam/s`
//! (no `//`), `rtsp://admin:pa/ss@cam/s` (a `/` in the password) and
//! `http://h/x?a=1;token=…` (`;` between parameters) are all shown without
//! their secret. It over-masks rather than under-masks: everything up to the
//! last `@` before the query is userinfo, every parameter the shared list
//! (`secret_params`) names is masked, and so is a parameter without `=`.

use crate::secret_params::ParamNames;

/// What replaces a secret.
const MASK: &str = "***";

/// The source as it may be shown: userinfo replaced by [`MASK`], credential
/// parameter values masked (bare parameters entirely), fragment dropped. A
/// string that is neither `scheme:…` nor an absolute path is not shown at
/// all: nothing in it says which part is secret.
#[must_use]
pub fn redact_source(source: &str) -> String {
    let source = source.trim();
    let scheme_len = scheme_len(source);
    if scheme_len.is_none() && !source.starts_with('/') {
        return "<unrecognised source>".to_owned();
    }
    let without_fragment = source.split('#').next().unwrap_or_default();
    let (head, query) = match without_fragment.split_once('?') {
        Some((head, query)) => (head, Some(query)),
        None => (without_fragment, None),
    };
    let mut shown = mask_userinfo(head, scheme_len);
    let names = ParamNames::new(
        path_params(&shown)
            .chain(query.into_iter().flat_map(query_items))
            .filter_map(|item| item.split_once('=').map(|(name, _)| name))
            .map(decode)
            .collect::<Vec<_>>()
            .iter()
            .map(String::as_str),
    );
    shown = mask_path_params(&shown, &names);
    if let Some(query) = query {
        shown.push('?');
        shown.push_str(&mask_query(query, &names));
    }
    shown
}

/// An argument or word that may or may not be a source (a program name, a
/// value clap quotes): redacted when it is a source with something to hide,
/// masked whole when it has no recognisable form but could hold userinfo or
/// parameters, and left as it is otherwise (`ec-node`, `--source`, `75`).
#[must_use]
pub fn redact_word(word: &str) -> String {
    let shown = redact_source(word);
    if shown == word.trim() {
        word.to_owned()
    } else if scheme_len(word.trim()).is_some() || word.trim().starts_with('/') {
        shown
    } else if word.contains(['@', '?', ';', ':']) {
        MASK.to_owned()
    } else {
        word.to_owned()
    }
}

/// Free text another writer put where a name, a time or a key belongs (a
/// record's unit, node, program, launch time; a key read back from etcd):
/// shown as it is when it has no shape that can hold a credential.
///
/// - `scheme:…` or an absolute path: redacted like a source;
/// - none of `@ ? = ; & #`: as it is (`ec-node`, `2026-11-27T08:56:39Z`,
///   a boot ID);
/// - a parameter's characters (`? = ; & #`) or whitespace beside them:
///   masked whole, since nothing says which part is secret;
/// - only `@`: masked up to the last `@` when what precedes it has a `:`
///   or a `/` (`user:password@host`, `x/udp://secret@h`), else as it is
///   (`ec-node@ch5.service`, a template unit).
///
/// A bare secret (`S3CR3T` alone) has no shape; no redactor can tell it.
#[must_use]
pub fn redact_text(text: &str) -> String {
    let trimmed = text.trim();
    if scheme_len(trimmed).is_some() || trimmed.starts_with('/') {
        return redact_source(text);
    }
    if !text.contains(['@', '?', '=', ';', '&', '#']) {
        return text.to_owned();
    }
    if text.contains(|c: char| c.is_whitespace() || "?=;&#".contains(c)) {
        return MASK.to_owned();
    }
    match text.rsplit_once('@') {
        Some((userinfo, host)) if userinfo.contains([':', '/']) => format!("{MASK}@{host}"),
        _ => text.to_owned(),
    }
}

/// The length of `scheme:` at the start of `text`, if it starts with one
/// (RFC 3986: a letter, then letters, digits, `+`, `-`, `.`).
fn scheme_len(text: &str) -> Option<usize> {
    let colon = text.find(':')?;
    let scheme = &text[..colon];
    let mut bytes = scheme.bytes();
    let first_ok = bytes.next().is_some_and(|b| b.is_ascii_alphabetic());
    (first_ok && bytes.all(|b| b.is_ascii_alphanumeric() || matches!(b, b'+' | b'-' | b'.')))
        .then_some(colon + 1)
}

/// Everything before the last `@` of the part before the query is userinfo:
/// after `scheme://` (or a leading `//`) the scheme is kept; without `//`
/// (`admin:pw@cam/s`, `rtsp:admin:pw@cam/s`) nothing before the `@` is,
/// because the "scheme" may be the user name.
fn mask_userinfo(head: &str, scheme_len: Option<usize>) -> String {
    let Some(at) = head.rfind('@') else {
        return head.to_owned();
    };
    let keep = match scheme_len {
        Some(len) if head[len..].starts_with("//") => len + 2,
        None if head.starts_with("//") => 2,
        _ => 0,
    };
    if at == keep {
        // `udp://@239.0.0.1:1234` (ffmpeg's multicast spelling): nothing to hide.
        return head.to_owned();
    }
    format!("{}{MASK}{}", &head[..keep], &head[at..])
}

/// The `;name=value` parameters of the path segments (RFC 3986 3.3).
fn path_params(head: &str) -> impl Iterator<Item = &str> {
    head.split('/')
        .flat_map(|segment| segment.split(';').skip(1))
}

/// The items of a query, split at `&` and at `;` (the HTML 4 alternative).
fn query_items(query: &str) -> impl Iterator<Item = &str> {
    query.split(['&', ';'])
}

fn mask_path_params(head: &str, names: &ParamNames) -> String {
    let segments: Vec<String> = head
        .split('/')
        .map(|segment| {
            let mut parts = segment.split(';');
            let mut out = parts.next().unwrap_or_default().to_owned();
            for param in parts {
                out.push(';');
                out.push_str(&mask_item(param, names));
            }
            out
        })
        .collect();
    segments.join("/")
}

/// The query with credential values masked, separators kept as they were.
fn mask_query(query: &str, names: &ParamNames) -> String {
    let mut out = String::with_capacity(query.len());
    let mut rest = query;
    loop {
        let end = rest.find(['&', ';']).unwrap_or(rest.len());
        out.push_str(&mask_item(&rest[..end], names));
        if end == rest.len() {
            break;
        }
        out.push_str(&rest[end..=end]);
        rest = &rest[end + 1..];
    }
    out
}

/// `name=***` for a credential, `***` for a bare `SECRET`, else as it is.
fn mask_item(item: &str, names: &ParamNames) -> String {
    match item.split_once('=') {
        Some((name, _)) if names.is_credential(&decode(name)) => format!("{name}={MASK}"),
        Some(_) => item.to_owned(),
        None if item.is_empty() => String::new(),
        None => MASK.to_owned(),
    }
}

/// A parameter name as a server reads it: `+` is a space, `%XX` a byte.
#[must_use]
pub fn decode(name: &str) -> String {
    url::form_urlencoded::parse(format!("{name}=").as_bytes())
        .next()
        .map(|(name, _)| name.into_owned())
        .unwrap_or_default()
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
    fn sources_a_url_parser_rejects_are_still_masked() {
        assert_eq!(redact_source("http://us er:secret@"), "http://***@");
        assert_eq!(redact_source("XSECRETX"), "<unrecognised source>");
    }

    #[test]
    fn words_are_redacted_only_when_they_hide_something() {
        assert_eq!(redact_word("ec-node"), "ec-node");
        assert_eq!(redact_word("--source"), "--source");
        assert_eq!(redact_word("http://h/x"), "http://h/x");
        assert_eq!(redact_word("http://u:S3CR3T@h/x"), "http://***@h/x");
        assert_eq!(redact_word("--x=u:S3CR3T@h"), "***");
    }

    #[test]
    fn free_text_is_masked_only_where_it_has_a_credentials_shape() {
        for plain in [
            "ec-node",
            "every-channel-publisher-ch5.service",
            "ec-node@ch5.service",
            "2026-11-27T08:56:39Z",
            "0b1c9a4e-5f7d-4e0a-9c1b-3a2d4e5f6a7b",
            "0.1.0",
            "node-a",
            "hdhomerun://10.0.0.5/v5.1",
            "http://cam.example/live?a=1&b=2",
            "/dev/char/81:0",
            "tuner-a",
            "studio:a",
        ] {
            assert_eq!(redact_text(plain), plain);
        }
        assert_eq!(redact_text("admin:S3CR3T@node-x"), "***@node-x");
        assert_eq!(redact_text("u:S3CR3T@x.service"), "***@x.service");
        assert_eq!(
            redact_text("http://admin:S3CR3T@h/x?token=S3CR3T"),
            "http://***@h/x?token=***"
        );
        for hidden in [
            "x?S3CR3T",
            "token=S3CR3T",
            "a b https://u:S3CR3T@h/?sig=S3CR3T",
            "n;jsessionid=S3CR3T",
            "x&sig=S3CR3T",
        ] {
            assert_eq!(redact_text(hidden), "***", "{hidden}");
        }
    }

    #[test]
    fn local_paths_are_shown_as_is() {
        assert_eq!(redact_source("/dev/video0"), "/dev/video0");
    }

    #[test]
    fn userinfo_without_an_authority_or_with_a_slash_is_masked() {
        assert_eq!(redact_source("admin:S3CR3T@cam/stream"), "***@cam/stream");
        assert_eq!(redact_source("rtsp:admin:S3CR3T@cam/s"), "***@cam/s");
        assert_eq!(
            redact_source("rtsp://admin:pa/ss@cam/s"),
            "rtsp://***@cam/s"
        );
        assert_eq!(redact_source("//admin:S3CR3T@h/x"), "//***@h/x");
        assert_eq!(
            redact_source("udp://@239.0.0.1:1234"),
            "udp://@239.0.0.1:1234"
        );
    }

    #[test]
    fn semicolons_bare_parameters_and_path_parameters_are_masked() {
        assert_eq!(
            redact_source("http://h/x?a=1;token=S3CR3T&b=2"),
            "http://h/x?a=1;token=***&b=2"
        );
        assert_eq!(redact_source("rtsp://cam/s?S3CR3T"), "rtsp://cam/s?***");
        assert_eq!(
            redact_source("http://h/live;jsessionid=S3CR3T/x.ts"),
            "http://h/live;jsessionid=***/x.ts"
        );
        assert_eq!(
            redact_source("http://h/x?%74oken=S3CR3T&channel_key=5"),
            "http://h/x?%74oken=***&channel_key=5"
        );
    }

    #[test]
    fn signed_url_schemes_are_masked() {
        assert_eq!(
            redact_source(
                "https://a.blob.core.windows.net/c/b.ts?sv=2022-11-02&se=2026&sp=r&sig=S3CR3T"
            ),
            "https://a.blob.core.windows.net/c/b.ts?sv=***&se=***&sp=***&sig=***"
        );
        assert_eq!(
            redact_source(
                "https://d.cloudfront.net/x.m3u8?Expires=1&Signature=S3CR3T&Key-Pair-Id=K"
            ),
            "https://d.cloudfront.net/x.m3u8?Expires=***&Signature=***&Key-Pair-Id=***"
        );
        assert_eq!(
            redact_source("https://e.akamaized.net/x.m3u8?hdnts=exp=1~acl=/*~hmac=S3CR3T"),
            "https://e.akamaized.net/x.m3u8?hdnts=***"
        );
    }
}
