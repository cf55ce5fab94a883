//! Property tests: no generated credential survives into anything we print
//! or store, canonical keys are fixpoints of key derivation, spellings of
//! one source share a key, and a parameter that is not a credential always
//! tells two sources apart.
//!
//! Every generated source is valid input for the rule it is used with: URLs
//! that the key rules accept for the key properties (no `xn--` labels, which
//! the WHATWG host parser decodes as punycode and rejects when invalid), and
//! anything at all, parseable or not, for the redaction property.
//!
//! Records (lock files, cluster values) are other writers' text: the
//! strategies at the end make records with a credential in every text
//! field and any value in the rest, for the modules that show them.

// Built for the cluster crate's tests too (feature `test-support`): there
// only the record strategies are used, not this crate's own properties.
#![cfg_attr(not(test), allow(unused_imports, dead_code))]

use std::fmt::Write as _;

use proptest::prelude::*;

use crate::redact::{redact_source, redact_text};
use crate::secret_params::{listed_envelopes, listed_names};
use crate::source_key::SourceKey;

/// Every generated secret contains this marker; no other generated part can
/// (they are lower-case), so finding it in output means a leak.
const MARKER: &str = "XSECRETX";

fn secret() -> impl Strategy<Value = String> {
    "[A-Za-z0-9._~-]{0,12}".prop_map(|tail| format!("{MARKER}{tail}"))
}

/// Credential parameter names: every exact name of the shared list, names
/// caught by its suffix and prefix rules, and the signed-URL schemes the
/// ECP names, in the spellings their vendors use.
fn sensitive_name() -> impl Strategy<Value = String> {
    let mut names = listed_names();
    names.extend(
        [
            "access_token",
            "accessToken",
            "id_token",
            "refresh-token",
            "api_key",
            "x_api_key",
            "apiKey",
            "client_secret",
            "Signature",
            "url_sig",
            "X-Amz-Signature",
            "X-Amz-Credential",
            "X-Amz-Security-Token",
            "X-Goog-Signature",
            "X-Goog-Credential",
            "wowzatokenhash",
            "wowzatokenendtime",
            "wmsAuthSign",
            "hdnts",
            "__token__",
            "HMAC",
            "JWT",
            "PHPSESSID",
            "session_id",
        ]
        .map(str::to_owned),
    );
    prop::sample::select(names)
}

/// A signed URL's query from one of the listed envelopes: the marker, plus
/// its signing parameters, all with secret values.
fn envelope_query() -> impl Strategy<Value = Vec<(String, String)>> {
    let envelopes = listed_envelopes();
    (prop::sample::select(envelopes), secret(), secret()).prop_map(|((when, params), a, b)| {
        let mut pairs = vec![(when[0].clone(), a)];
        pairs.extend(params.into_iter().map(|p| (p, b.clone())));
        pairs
    })
}

/// A DNS label that is valid for every scheme: not `xn--…` (punycode).
fn label() -> impl Strategy<Value = String> {
    "[a-z][a-z0-9-]{0,10}".prop_filter("xn-- labels are punycode", |l| !l.starts_with("xn--"))
}

fn host() -> impl Strategy<Value = String> {
    prop_oneof![
        (1u8..=254, 0u8..=255, 1u8..=254).prop_map(|(a, b, c)| format!("10.{a}.{b}.{c}")),
        (label(), prop::collection::vec("[a-z]{2,5}", 0..3)).prop_map(|(first, rest)| {
            std::iter::once(first)
                .chain(rest)
                .collect::<Vec<_>>()
                .join(".")
        }),
    ]
}

/// Harmless parameter names: never a credential by the shared list.
fn harmless_name() -> impl Strategy<Value = String> {
    "[a-z][a-z_]{0,8}".prop_filter("not a credential", |n| {
        !crate::secret_params::is_credential_name(n) && !listed_envelope_param(n)
    })
}

fn listed_envelope_param(name: &str) -> bool {
    listed_envelopes()
        .iter()
        .any(|(when, params)| when.iter().chain(params).any(|p| p == name))
}

prop_compose! {
    /// A URL with credentials in the userinfo, credential parameters (query
    /// and path), a signed-URL envelope and the fragment, plus harmless
    /// parameters and path segments.
    fn url_with_credentials()(
        scheme in prop::sample::select(vec!["http", "https", "rtsp", "rtmp", "srt", "udp", "rtp"]),
        user in prop::option::of("[a-z]{1,6}"),
        password in secret(),
        with_userinfo in any::<bool>(),
        host in host(),
        port in prop::option::of(prop_oneof![Just(5004u16), Just(80u16), Just(554u16), 1u16..65535]),
        hdhomerun_path in any::<bool>(),
        channel in (1u8..70, 0u8..10),
        segments in prop::collection::vec("[a-z0-9_.-]{1,8}", 0..4),
        path_secret in prop::option::of(secret()),
        secrets in prop::collection::vec((sensitive_name(), secret()), 0..3),
        envelope in prop::option::of(envelope_query()),
        bare in prop::option::of(secret()),
        harmless in prop::collection::vec((harmless_name(), "[a-z0-9]{0,6}"), 0..3),
        semicolons in any::<bool>(),
        fragment in prop::option::of(secret()),
    ) -> String {
        let mut url = format!("{scheme}://");
        if with_userinfo {
            match user {
                Some(user) => { let _ = write!(url, "{user}{MARKER}:{password}@"); }
                None => { let _ = write!(url, "{password}@"); }
            }
        }
        url.push_str(&host);
        if let Some(port) = port {
            let _ = write!(url, ":{port}");
        }
        if hdhomerun_path {
            let _ = write!(url, "/auto/v{}.{}", channel.0, channel.1);
        } else {
            for segment in &segments {
                url.push('/');
                url.push_str(segment);
            }
            if let Some(value) = path_secret {
                let _ = write!(url, "/live;jsessionid={value}");
            }
        }
        let mut params: Vec<String> = secrets.iter().map(|(n, v)| format!("{n}={v}")).collect();
        params.extend(envelope.into_iter().flatten().map(|(n, v)| format!("{n}={v}")));
        params.extend(bare);
        params.extend(harmless.iter().map(|(n, v)| format!("{n}={v}")));
        if !params.is_empty() {
            url.push('?');
            url.push_str(&params.join(if semicolons { ";" } else { "&" }));
        }
        if let Some(fragment) = fragment {
            url.push('#');
            url.push_str(&fragment);
        }
        url
    }
}

prop_compose! {
    /// Sources the key rules may refuse but the redactor must still mask:
    /// userinfo without `//`, a `/` in the password, a `//` path.
    fn odd_source_with_credentials()(
        form in 0usize..5,
        user in "[a-z]{1,6}",
        password in secret(),
        host in host(),
        tail in "[a-z0-9/]{0,8}",
    ) -> String {
        match form {
            0 => format!("{user}:{password}@{host}/{tail}"),
            1 => format!("rtsp:{user}:{password}@{host}/{tail}"),
            2 => format!("rtsp://{user}:{password}/x@{host}/{tail}"),
            3 => format!("//{user}:{password}@{host}/{tail}"),
            _ => format!("rtsp://{host}/{tail}?{password}"),
        }
    }
}

/// Whether `text` shows a generated secret.
pub fn leaks(text: &str) -> bool {
    text.to_ascii_uppercase().contains(MARKER)
}

/// Other spellings of `10.a.b.c` (`inet_aton` and WHATWG forms).
fn ipv4_spellings(a: u8, b: u8, c: u8) -> Vec<String> {
    let n = (10u32 << 24) | (u32::from(a) << 16) | (u32::from(b) << 8) | u32::from(c);
    vec![
        format!("{n}"),
        format!("0x{n:x}"),
        format!("0{n:o}"),
        format!("012.{a}.{b}.{c}"),
        format!("0xa.0x{a:x}.{b}.{c}"),
        format!("10.{}", n & 0x00ff_ffff),
        format!("10.{a}.{}", (u32::from(b) << 8) | u32::from(c)),
        format!("10.{a}.{b}.{c}."),
        format!("[::ffff:10.{a}.{b}.{c}]"),
    ]
}

proptest! {
    #[test]
    fn redacted_sources_never_contain_a_credential(url in url_with_credentials()) {
        let shown = redact_source(&url);
        prop_assert!(!leaks(&shown), "{url} shown as {shown}");
    }

    #[test]
    fn odd_sources_are_redacted_whatever_they_parse_as(source in odd_source_with_credentials()) {
        let shown = redact_source(&source);
        prop_assert!(!leaks(&shown), "{source} shown as {shown}");
    }

    #[test]
    fn keys_and_lock_file_names_never_contain_a_credential(url in url_with_credentials()) {
        let key = SourceKey::from_source(&url).unwrap();
        prop_assert!(!leaks(key.as_str()), "{url} keyed as {key}");
        prop_assert!(!leaks(&key.lock_file_name()), "{url} named {}", key.lock_file_name());
    }

    #[test]
    fn a_canonical_key_derives_itself(url in url_with_credentials()) {
        // Operators paste keys from logs into `status`; that must find the lock.
        let key = SourceKey::from_source(&url).unwrap();
        let again = SourceKey::from_source(key.as_str()).unwrap();
        prop_assert_eq!(key.as_str(), again.as_str());
        prop_assert_eq!(key.lock_file_name(), again.lock_file_name());
    }

    #[test]
    fn no_two_sources_differing_in_a_non_secret_parameter_share_a_key(
        scheme in prop::sample::select(vec!["http", "https", "rtsp", "rtmp", "srt", "udp", "rtp"]),
        host in host(),
        path in "(/[a-z0-9]{1,6}){1,3}",
        name in harmless_name(),
        values in ("[a-z0-9]{0,4}", "[a-z0-9]{0,4}").prop_filter("different", |(a, b)| a != b),
        secrets in prop::collection::vec((sensitive_name(), secret()), 0..3),
        envelope in prop::option::of(envelope_query()),
        others in prop::collection::vec((harmless_name(), "[a-z0-9]{0,4}"), 0..3),
    ) {
        let build = |value: &str| {
            let mut params: Vec<String> = others.iter().map(|(n, v)| format!("{n}={v}")).collect();
            params.push(format!("{name}={value}"));
            params.extend(secrets.iter().map(|(n, v)| format!("{n}={v}")));
            params.extend(envelope.iter().flatten().map(|(n, v)| format!("{n}={v}")));
            format!("{scheme}://{host}:9000{path}?{}", params.join("&"))
        };
        let (a, b) = (build(&values.0), build(&values.1));
        // A repeated name can make the two values sort the same way only if
        // they are equal, which the filter excludes.
        let (ka, kb) = (SourceKey::from_source(&a).unwrap(), SourceKey::from_source(&b).unwrap());
        prop_assert_ne!(ka.as_str(), kb.as_str(), "{} and {}", a, b);
    }

    #[test]
    fn sources_differing_only_in_credentials_share_a_key(
        scheme in prop::sample::select(vec!["http", "https", "rtsp", "rtmp", "srt", "udp", "rtp"]),
        host in host(),
        path in "(/[a-z0-9]{1,6}){1,3}",
        secrets in prop::collection::vec((sensitive_name(), secret(), secret()), 1..4),
        harmless in prop::collection::vec((harmless_name(), "[a-z0-9]{0,4}"), 0..3),
    ) {
        let build = |second: bool| {
            let mut params: Vec<String> = harmless.iter().map(|(n, v)| format!("{n}={v}")).collect();
            params.extend(secrets.iter().map(|(n, a, b)| format!("{n}={}", if second { b } else { a })));
            format!("{scheme}://{host}:9000{path}?{}", params.join("&"))
        };
        let (a, b) = (build(false), build(true));
        let (ka, kb) = (SourceKey::from_source(&a).unwrap(), SourceKey::from_source(&b).unwrap());
        prop_assert_eq!(ka.as_str(), kb.as_str());
    }

    #[test]
    fn every_spelling_of_an_ipv4_host_shares_a_key(
        scheme in prop::sample::select(vec!["http", "https", "rtsp", "rtmp", "srt", "udp", "rtp"]),
        (a, b, c) in (0u8..=255, 0u8..=255, 1u8..=254),
        path in "(/[a-z0-9]{1,6}){0,3}",
    ) {
        let expected = SourceKey::from_source(&format!("{scheme}://10.{a}.{b}.{c}:9000{path}")).unwrap();
        for spelling in ipv4_spellings(a, b, c) {
            let key = SourceKey::from_source(&format!("{scheme}://{spelling}:9000{path}")).unwrap();
            prop_assert_eq!(key.as_str(), expected.as_str(), "{}", spelling);
        }
    }
}

/// Text with a credential in one of the shapes a record's free text can
/// carry it: a URL, an odd source, `user:secret@host`, a bare parameter,
/// `name=secret`, a URL after a word.
pub fn credential_text() -> impl Strategy<Value = String> {
    prop_oneof![
        url_with_credentials(),
        odd_source_with_credentials(),
        ("[a-z][a-z0-9-]{0,8}", secret(), "[a-z][a-z0-9.-]{0,8}")
            .prop_map(|(user, secret, host)| format!("{user}:{secret}@{host}")),
        ("[a-z][a-z0-9-]{0,8}", secret()).prop_map(|(word, secret)| format!("{word}?{secret}")),
        (sensitive_name(), secret()).prop_map(|(name, secret)| format!("{name}={secret}")),
        ("[a-z]{1,8}", url_with_credentials()).prop_map(|(word, url)| format!("{word} {url}")),
    ]
}

/// What a record field is meant to hold.
#[derive(Debug, Clone, Copy)]
pub enum FieldKind {
    Text,
    Number,
}

/// Any JSON value, mostly of the field's kind: credential text for text,
/// any `u64` (wild times, huge counts) for numbers; else a wrong type, a
/// negative, a float, null or harmless text.
fn hostile_field(kind: FieldKind) -> impl Strategy<Value = serde_json::Value> {
    use serde_json::Value;
    let meant = match kind {
        FieldKind::Text => credential_text().prop_map(Value::from).boxed(),
        FieldKind::Number => prop_oneof![0_u64..100_000, any::<u64>()]
            .prop_map(Value::from)
            .boxed(),
    };
    let other = prop_oneof![
        any::<i64>().prop_map(Value::from),
        any::<f64>()
            .prop_map(|f| serde_json::Number::from_f64(f).map_or(Value::Null, Value::Number)),
        Just(Value::Null),
        any::<bool>().prop_map(Value::from),
        "\\PC{0,16}"
            .prop_filter("no secret", |text| !leaks(text))
            .prop_map(Value::from),
        prop::collection::vec(any::<u8>().prop_map(Value::from), 0..3).prop_map(Value::from),
    ];
    prop_oneof![8 => meant, 1 => other]
}

/// A record's bytes: a JSON object with `fields`, each [`hostile_field`].
pub fn hostile_record(
    fields: &'static [(&'static str, FieldKind)],
) -> impl Strategy<Value = Vec<u8>> {
    fields
        .iter()
        .map(|(_, kind)| hostile_field(*kind))
        .collect::<Vec<_>>()
        .prop_map(move |values| {
            let object: serde_json::Map<String, serde_json::Value> = fields
                .iter()
                .map(|(name, _)| (*name).to_owned())
                .zip(values)
                .collect();
            serde_json::Value::Object(object).to_string().into_bytes()
        })
}

proptest! {
    #[test]
    fn redacted_text_never_contains_a_credential(text in credential_text()) {
        let shown = redact_text(&text);
        prop_assert!(!leaks(&shown), "{text} shown as {shown}");
    }

    #[test]
    fn keys_are_shown_as_they_are(url in url_with_credentials()) {
        // Redacting what is shown of a record must not change a real key.
        let key = SourceKey::from_source(&url).unwrap();
        prop_assert_eq!(redact_text(key.as_str()), key.as_str());
    }
}
