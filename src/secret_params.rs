//! Which URL parameters are credentials: one list, in
//! `nixos/secret-params.json`, read here and by the NixOS module.
//!
//! A credential parameter has its value masked in every output (see
//! `redact`) and is left out of the source key (see `source_key`): a rotated
//! token or a re-signed URL is the same stream, and a key is printed. Every
//! other parameter identifies the stream and stays in the key, so the list is
//! exact names plus documented suffix and prefix rules, never a substring
//! match: `channel_key=5` and `channel_key=6` are two streams. The rules, and
//! the signed-URL schemes they cover, are in
//! `evolution/ECP-0130-key-normalisation-and-secret-parameters.md`.

use std::sync::LazyLock;

use serde::Deserialize;

/// The shared list, as the module reads it too.
const LIST_JSON: &str = include_str!("../nixos/secret-params.json");

static LIST: LazyLock<SecretParams> = LazyLock::new(|| {
    // The file is compiled in and a unit test parses it, so this cannot fail
    // in a released binary.
    serde_json::from_str(LIST_JSON).expect("nixos/secret-params.json is valid")
});

/// Signing parameters of one signed-URL scheme: credentials whenever one of
/// the scheme's marker parameters is present, ordinary parameters otherwise
/// (`expires` alone is part of a stream's identity; beside `Key-Pair-Id` it
/// is `CloudFront`'s signature envelope).
#[derive(Debug, Deserialize)]
struct Envelope {
    when: Vec<String>,
    params: Vec<String>,
}

#[derive(Debug, Deserialize)]
struct SecretParams {
    names: Vec<String>,
    suffixes: Vec<String>,
    prefixes: Vec<String>,
    envelopes: Vec<Envelope>,
}

/// The parameter names of one URL, for asking which are credentials.
#[derive(Debug)]
pub struct ParamNames {
    /// Lower-cased names present, for the envelope markers.
    present: Vec<String>,
}

impl ParamNames {
    /// `names` are the URL's parameter names, percent-decoded.
    pub fn new<'a>(names: impl IntoIterator<Item = &'a str>) -> Self {
        Self {
            present: names.into_iter().map(str::to_ascii_lowercase).collect(),
        }
    }

    /// True when the parameter `name` (percent-decoded) of this URL holds a
    /// credential or signing material.
    #[must_use]
    pub fn is_credential(&self, name: &str) -> bool {
        is_credential_name(name)
            || LIST.envelopes.iter().any(|envelope| {
                let lower = name.to_ascii_lowercase();
                envelope.params.contains(&lower)
                    && envelope.when.iter().any(|m| self.present.contains(m))
            })
    }
}

/// True when a parameter of this name is a credential in any URL (the
/// envelope rule needs the other names: see [`ParamNames`]).
#[must_use]
pub fn is_credential_name(name: &str) -> bool {
    let lower = name.to_ascii_lowercase();
    LIST.names.contains(&lower)
        || LIST.prefixes.iter().any(|p| lower.starts_with(p.as_str()))
        || LIST.suffixes.iter().any(|word| ends_with_word(name, word))
}

/// `x_api_key`, `auth-token`, `my.secret` (a separator before the word) or
/// `accessToken` (a lower-case letter or digit before the capitalised word).
fn ends_with_word(name: &str, word: &str) -> bool {
    let lower = name.to_ascii_lowercase();
    let Some(head) = lower.strip_suffix(word) else {
        return false;
    };
    if head.is_empty() || head.ends_with(['_', '-', '.']) {
        return true;
    }
    let start = head.len();
    let original_head = &name.as_bytes()[..start];
    let first_of_word = name.as_bytes().get(start).copied();
    original_head
        .last()
        .is_some_and(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
        && first_of_word.is_some_and(|b| b.is_ascii_uppercase())
}

/// Every exact name in the list, for property tests that must cover it.
#[cfg(any(test, feature = "test-support"))]
pub fn listed_names() -> Vec<String> {
    LIST.names.clone()
}

/// Every signed-URL envelope as (markers, params), for property tests.
#[cfg(any(test, feature = "test-support"))]
pub fn listed_envelopes() -> Vec<(Vec<String>, Vec<String>)> {
    LIST.envelopes
        .iter()
        .map(|e| (e.when.clone(), e.params.clone()))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_shared_list_parses_and_is_lower_case() {
        let list: SecretParams = serde_json::from_str(LIST_JSON).unwrap();
        let all = list
            .names
            .iter()
            .chain(&list.suffixes)
            .chain(&list.prefixes)
            .chain(
                list.envelopes
                    .iter()
                    .flat_map(|e| e.when.iter().chain(&e.params)),
            );
        for name in all {
            assert_eq!(
                *name,
                name.to_ascii_lowercase(),
                "{name} must be lower-case"
            );
        }
    }

    #[test]
    fn exact_names_and_suffix_rules_match_credentials() {
        for name in [
            "token",
            "Token",
            "access_token",
            "auth-token",
            "accessToken",
            "x_api_key",
            "jwt",
            "hmac",
            "hdnts",
            "__token__",
            "X-Amz-Signature",
            "X-Amz-Credential",
            "X-Goog-Signature",
            "wowzatokenhash",
            "wmsAuthSign",
            "passphrase",
            "client_secret",
            "stream_key",
            "JSESSIONID",
        ] {
            assert!(is_credential_name(name), "{name} is a credential");
        }
    }

    #[test]
    fn parameters_that_only_contain_a_secret_word_identify_the_stream() {
        for name in [
            "channel_key",
            "keyframe",
            "monkey",
            "passthrough",
            "bypass",
            "author",
            "signal",
            "design",
            "tokens_left",
            "expires",
            "se",
            "policy",
            "duration",
            "streamid",
        ] {
            assert!(!is_credential_name(name), "{name} identifies the stream");
        }
    }

    #[test]
    fn envelope_parameters_are_credentials_only_beside_their_marker() {
        let azure = ParamNames::new(["sv", "se", "sp", "sig", "channel"]);
        assert!(azure.is_credential("se") && azure.is_credential("sp"));
        assert!(!azure.is_credential("channel"));
        let plain = ParamNames::new(["se", "sp", "expires"]);
        assert!(!plain.is_credential("se") && !plain.is_credential("expires"));
        let cloudfront = ParamNames::new(["Expires", "Signature", "Key-Pair-Id"]);
        assert!(cloudfront.is_credential("Expires") && cloudfront.is_credential("Key-Pair-Id"));
    }
}
