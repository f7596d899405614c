//! Id formats. The server emits bare 32-hex ids; legacy prefixed ids (`conv_…`, `host_…`) are accepted on input.

use sha2::{Digest, Sha256};

/// A fresh bare 32-hex id (a v4 UUID without dashes).
pub fn new_id() -> String {
    uuid::Uuid::new_v4().simple().to_string()
}

/// Prefixes the Python omnigent used on ids; accepted on input and stripped.
const LEGACY_PREFIXES: &[&str] = &[
    "conv_", "ag_", "host_", "msg_", "fc_", "fco_", "rs_", "err_", "item_", "sess_",
];

/// Canonical form of an id given by a client: legacy prefix stripped, dashes of a UUID removed,
/// lower-cased. Returns `None` when what remains is not 32 hex digits.
pub fn canonical_id(input: &str) -> Option<String> {
    let mut rest = input.trim();
    for prefix in LEGACY_PREFIXES {
        if let Some(stripped) = rest.strip_prefix(prefix) {
            rest = stripped;
            break;
        }
    }
    let hex: String = rest.chars().filter(|c| *c != '-').collect();
    if hex.len() == 32 && hex.chars().all(|c| c.is_ascii_hexdigit()) {
        Some(hex.to_ascii_lowercase())
    } else {
        None
    }
}

/// Longest id accepted in a tunnel path (runner or host). 0.19.1 ids are at most 45 bytes
/// (`runner_token_` + 32 hex).
pub const MAX_PATH_ID_BYTES: usize = 128;

/// The prefix of a runner id derived from a binding token ([`runner_id_for_token`]): such an id may only be
/// claimed with that token.
pub const TOKEN_RUNNER_ID_PREFIX: &str = "runner_token_";

/// Why an id from a URL path was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PathIdError {
    #[error("the id is empty")]
    Empty,
    #[error("the id is {0} bytes long; at most {MAX_PATH_ID_BYTES} are allowed")]
    TooLong(usize),
    #[error(
        "the id may hold only ASCII letters, digits, `_`, `-` and `.`, and must start with a letter or digit"
    )]
    BadCharacter,
}

/// Check an id taken from a URL path (`/v1/runners/{id}/…`, `/v1/hosts/{id}/…`): 1 to [`MAX_PATH_ID_BYTES`]
/// bytes of `[A-Za-z0-9_.-]`, starting with a letter or digit (so never `..`, a path or a control character).
pub fn check_path_id(id: &str) -> Result<(), PathIdError> {
    if id.is_empty() {
        return Err(PathIdError::Empty);
    }
    if id.len() > MAX_PATH_ID_BYTES {
        return Err(PathIdError::TooLong(id.len()));
    }
    let ok = |c: u8| c.is_ascii_alphanumeric() || matches!(c, b'_' | b'-' | b'.');
    if !id.as_bytes()[0].is_ascii_alphanumeric() || !id.bytes().all(ok) {
        return Err(PathIdError::BadCharacter);
    }
    Ok(())
}

/// An untrusted id as it may appear in a log line: at most 64 characters, control and non-ASCII characters
/// escaped, with the full length noted when it was cut.
pub fn loggable_id(id: &str) -> String {
    const MAX: usize = 64;
    let mut out: String = id
        .chars()
        .take(MAX)
        .flat_map(char::escape_default)
        .collect();
    if id.chars().count() > MAX {
        out.push_str(&format!("…({} bytes)", id.len()));
    }
    out
}

/// Whether `runner_id` has the form of an id derived from a binding token.
pub fn is_token_runner_id(runner_id: &str) -> bool {
    runner_id.starts_with(TOKEN_RUNNER_ID_PREFIX)
}

/// The runner id a binding token stands for:
/// `runner_token_` + the first 32 hex of sha256("omnigent-runner:" + token.trim()).
pub fn runner_id_for_token(token: &str) -> String {
    let digest = Sha256::digest(format!("omnigent-runner:{}", token.trim()).as_bytes());
    let hex = hex::encode(digest);
    format!("{TOKEN_RUNNER_ID_PREFIX}{}", &hex[..32])
}

/// A fresh random binding token for a host-launched runner.
pub fn new_binding_token() -> String {
    format!(
        "{}{}",
        uuid::Uuid::new_v4().simple(),
        uuid::Uuid::new_v4().simple()
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn legacy_prefixes_and_dashes_are_accepted() {
        let bare = "236c499235044eda91f89497da50b959";
        assert_eq!(canonical_id(bare).as_deref(), Some(bare));
        assert_eq!(canonical_id(&format!("conv_{bare}")).as_deref(), Some(bare));
        assert_eq!(
            canonical_id("236C4992-3504-4EDA-91F8-9497DA50B959").as_deref(),
            Some(bare)
        );
        assert_eq!(canonical_id("conv_nothex"), None);
        assert_eq!(canonical_id(""), None);
    }

    #[test]
    fn path_ids_are_bounded_and_safe() {
        for ok in [
            "runner_token_695894e76682802a837213595ab91cff",
            "runner_236c499235044eda91f89497da50b959",
            "534486bde1be41d9bec6e7b32874609b",
            "host_534486bd-e1be-41d9-bec6-e7b32874609b",
            "r1",
        ] {
            assert_eq!(check_path_id(ok), Ok(()), "{ok}");
        }
        assert_eq!(check_path_id(""), Err(PathIdError::Empty));
        assert_eq!(
            check_path_id(&"a".repeat(10_000)),
            Err(PathIdError::TooLong(10_000))
        );
        for bad in [
            "../../x", "..", ".hidden", "a/b", "a b", "a\nb", "é", "a%2Fb",
        ] {
            assert_eq!(check_path_id(bad), Err(PathIdError::BadCharacter), "{bad}");
        }
    }

    #[test]
    fn loggable_ids_are_cut_and_escaped() {
        assert_eq!(loggable_id("runner_a"), "runner_a");
        assert_eq!(loggable_id("a\nb"), "a\\nb");
        assert_eq!(loggable_id("a\u{1b}[31m"), "a\\u{1b}[31m");
        let long = loggable_id(&"x".repeat(10_000));
        assert!(long.starts_with(&"x".repeat(64)));
        assert!(long.ends_with("…(10000 bytes)"), "{long}");
    }

    #[test]
    fn runner_id_matches_the_python_derivation() {
        let id = runner_id_for_token("  secret ");
        assert_eq!(id, runner_id_for_token("secret"));
        assert!(id.starts_with("runner_token_"));
        assert_eq!(id, "runner_token_d4bbec96a6370d8a1c5ce790fa44aa19");
    }
}
