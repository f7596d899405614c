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

/// The runner id a binding token stands for:
/// `runner_token_` + the first 32 hex of sha256("omnigent-runner:" + token.trim()).
pub fn runner_id_for_token(token: &str) -> String {
    let digest = Sha256::digest(format!("omnigent-runner:{}", token.trim()).as_bytes());
    let hex = hex::encode(digest);
    format!("runner_token_{}", &hex[..32])
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
    fn runner_id_matches_the_python_derivation() {
        let id = runner_id_for_token("  secret ");
        assert_eq!(id, runner_id_for_token("secret"));
        assert!(id.starts_with("runner_token_"));
        assert_eq!(id, "runner_token_d4bbec96a6370d8a1c5ce790fa44aa19");
    }
}
