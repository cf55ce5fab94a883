//! Property tests: no generated credential survives into anything we print
//! or store, and canonical keys are fixpoints of key derivation.

use std::fmt::Write as _;

use proptest::prelude::*;

use crate::redact::redact_source;
use crate::source_key::SourceKey;

/// Every generated secret contains this marker; no other generated part can
/// (they are lower-case), so finding it in output means a leak.
const MARKER: &str = "XSECRETX";

fn secret() -> impl Strategy<Value = String> {
    "[A-Za-z0-9._~-]{0,12}".prop_map(|tail| format!("{MARKER}{tail}"))
}

fn sensitive_name() -> impl Strategy<Value = String> {
    prop::sample::select(vec![
        "token",
        "access_token",
        "api_key",
        "key",
        "password",
        "passwd",
        "pwd",
        "auth",
        "authorization",
        "sig",
        "Signature",
        "X-Amz-Signature",
        "secret",
        "client_secret",
        "credential",
        "session_id",
    ])
    .prop_map(str::to_owned)
}

fn host() -> impl Strategy<Value = String> {
    prop_oneof![
        (1u8..=254, 0u8..=255, 1u8..=254).prop_map(|(a, b, c)| format!("10.{a}.{b}.{c}")),
        "[a-z][a-z0-9-]{0,10}(\\.[a-z]{2,5}){0,2}",
    ]
}

prop_compose! {
    /// A URL with credentials in the userinfo, sensitive query parameters
    /// and the fragment, plus harmless parameters and path segments.
    fn url_with_credentials()(
        scheme in prop::sample::select(vec!["http", "https", "rtsp", "srt", "udp"]),
        user in prop::option::of("[a-z]{1,6}"),
        password in secret(),
        with_userinfo in any::<bool>(),
        host in host(),
        port in prop::option::of(prop_oneof![Just(5004u16), Just(80u16), Just(554u16), 1u16..65535]),
        hdhomerun_path in any::<bool>(),
        channel in (1u8..70, 0u8..10),
        segments in prop::collection::vec("[a-z0-9_.-]{1,8}", 0..4),
        secrets in prop::collection::vec((sensitive_name(), secret()), 0..3),
        harmless in prop::collection::vec(("[a-z]{1,6}", "[a-z0-9]{0,6}"), 0..3),
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
        }
        let mut params: Vec<String> = secrets.iter().map(|(n, v)| format!("{n}={v}")).collect();
        params.extend(harmless.iter().map(|(n, v)| format!("{n}={v}")));
        if !params.is_empty() {
            url.push('?');
            url.push_str(&params.join("&"));
        }
        if let Some(fragment) = fragment {
            url.push('#');
            url.push_str(&fragment);
        }
        url
    }
}

fn leaks(text: &str) -> bool {
    text.to_ascii_uppercase().contains(MARKER)
}

proptest! {
    #[test]
    fn redacted_sources_never_contain_a_credential(url in url_with_credentials()) {
        let shown = redact_source(&url);
        prop_assert!(!leaks(&shown), "{url} shown as {shown}");
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
}
