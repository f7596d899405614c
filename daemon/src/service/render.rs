//! Rendering the unit and the plist from `packaging/` (compiled in), and choosing what environment they carry.
//!
//! The environment is an allowlist, written explicitly: `PATH` as captured at install, `HOME`, `LANG`, the
//! proxy variables and `OMNIGENT_HOME` when set, and `config.toml`'s `env_passthrough`. A variable named like
//! a secret (`*_KEY`, `*_TOKEN`, `*_SECRET`, `*PASSWORD*`, …) is never written, nor a proxy URL with a
//! password in it: credentials stay in the user's environment files or the config's 0600 secrets.

use std::path::{Path, PathBuf};

use super::{Env, Init, LAUNCHD_LABEL, SUPERVISOR_ENV};

/// The systemd user unit template (`packaging/systemd/omnigent-host.service`).
pub const SYSTEMD_TEMPLATE: &str = include_str!("../../../packaging/systemd/omnigent-host.service");
/// The launchd agent template (`packaging/launchd/ai.omnigent.host.plist`).
pub const LAUNCHD_TEMPLATE: &str =
    include_str!("../../../packaging/launchd/ai.omnigent.host.plist");

/// The first systemd with `RestartSteps=` and `RestartMaxDelaySec=`.
pub const RESTART_STEPS_SINCE: u32 = 254;

/// Variables written when set, besides `PATH` and `HOME`.
const ALWAYS: &[&str] = &["LANG", "OMNIGENT_HOME"];
/// Proxy variables, both spellings.
const PROXIES: &[&str] = &[
    "HTTP_PROXY",
    "HTTPS_PROXY",
    "ALL_PROXY",
    "NO_PROXY",
    "http_proxy",
    "https_proxy",
    "all_proxy",
    "no_proxy",
];

/// What goes into the unit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Spec {
    pub init: Init,
    /// The absolute path of the `omnigent` binary the service runs.
    pub exe: PathBuf,
    /// Written in this order (see [`choose_env`]).
    pub env: Vec<(String, String)>,
    /// launchd's stdout/stderr file (in the logs dir).
    pub log_file: PathBuf,
    /// systemd: the installed version has `RestartSteps=` (see [`RESTART_STEPS_SINCE`]).
    pub restart_steps: bool,
}

/// The environment chosen for the unit, and what was held back and why.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct EnvChoice {
    pub written: Vec<(String, String)>,
    pub withheld: Vec<(String, &'static str)>,
}

/// Named like a credential: `*_KEY`, `*_TOKEN`, `*_SECRET`, `*PASSWORD*` (and `*SECRET*`, `*_CREDENTIALS`,
/// `*_PAT`), in any case.
pub fn is_secret_name(name: &str) -> bool {
    let n = name.to_ascii_uppercase();
    n.ends_with("_KEY")
        || n.ends_with("_TOKEN")
        || n.ends_with("_PAT")
        || n.ends_with("_CREDENTIALS")
        || n.contains("SECRET")
        || n.contains("PASSWORD")
        || n.contains("PASSWD")
        || matches!(n.as_str(), "KEY" | "TOKEN")
}

/// The command the service runs: the daemon in the foreground.
pub fn program_arguments(exe: &Path) -> Vec<String> {
    vec![
        exe.display().to_string(),
        "daemon".into(),
        "run".into(),
        "--foreground".into(),
    ]
}

/// Pick the unit's environment from `env` (see the module doc); `SUPERVISOR_ENV` names `init`.
pub fn choose_env(env: &Env, passthrough: &[String], init: Init) -> EnvChoice {
    let mut choice = EnvChoice::default();
    let mut names: Vec<&str> = vec!["PATH", "HOME"];
    names.extend(ALWAYS);
    names.extend(PROXIES);
    names.extend(passthrough.iter().map(String::as_str));
    for name in names {
        if choice.written.iter().any(|(k, _)| k == name)
            || choice.withheld.iter().any(|(k, _)| k == name)
        {
            continue;
        }
        let Some(value) = env.get(name) else {
            continue;
        };
        let why = if is_secret_name(name) {
            Some("named like a secret")
        } else if !valid_name(name) {
            Some("not a valid variable name")
        } else if value.contains(['\n', '\r', '\0']) {
            Some("its value has a line break")
        } else if PROXIES.contains(&name) && has_password(value) {
            Some("the proxy URL holds a password")
        } else {
            None
        };
        match why {
            Some(why) => choice.withheld.push((name.to_owned(), why)),
            None => choice.written.push((name.to_owned(), value.clone())),
        }
    }
    choice
        .written
        .push((SUPERVISOR_ENV.to_owned(), init.name().to_owned()));
    choice
}

fn valid_name(name: &str) -> bool {
    let mut chars = name.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

/// `scheme://user:password@host…`.
fn has_password(url: &str) -> bool {
    let rest = url.split_once("://").map_or(url, |(_, r)| r);
    let authority = rest.split(['/', '?', '#']).next().unwrap_or("");
    authority
        .rsplit_once('@')
        .is_some_and(|(userinfo, _)| userinfo.contains(':'))
}

/// The unit (or plist) text for `spec`.
pub fn render(spec: &Spec) -> String {
    match spec.init {
        Init::Systemd => render_systemd(spec),
        Init::Launchd => render_launchd(spec),
    }
}

fn render_systemd(spec: &Spec) -> String {
    let exec = program_arguments(&spec.exe)
        .iter()
        .map(|a| systemd_quote(a, true))
        .collect::<Vec<_>>()
        .join(" ");
    let mut out = String::new();
    for line in SYSTEMD_TEMPLATE.lines() {
        match line {
            "@ENVIRONMENT@" => {
                for (k, v) in &spec.env {
                    out.push_str(&format!(
                        "Environment={}\n",
                        systemd_quote(&format!("{k}={v}"), false)
                    ));
                }
            }
            "@RESTART_STEPS@" => {
                if spec.restart_steps {
                    out.push_str("RestartSteps=5\nRestartMaxDelaySec=60\n");
                }
            }
            other => {
                out.push_str(&other.replace("@EXEC_START@", &exec));
                out.push('\n');
            }
        }
    }
    out
}

/// A double-quoted systemd word: `\` and `"` escaped, `%` doubled (specifiers), and in `ExecStart=` `$`
/// doubled (variable expansion).
fn systemd_quote(s: &str, exec: bool) -> String {
    let mut out = String::from("\"");
    for c in s.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '%' => out.push_str("%%"),
            '$' if exec => out.push_str("$$"),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

fn render_launchd(spec: &Spec) -> String {
    let mut out = String::new();
    for line in LAUNCHD_TEMPLATE.lines() {
        match line {
            "@PROGRAM_ARGUMENTS@" => {
                for a in program_arguments(&spec.exe) {
                    out.push_str(&format!("\t\t<string>{}</string>\n", xml_escape(&a)));
                }
            }
            "@ENVIRONMENT@" => {
                for (k, v) in &spec.env {
                    out.push_str(&format!(
                        "\t\t<key>{}</key>\n\t\t<string>{}</string>\n",
                        xml_escape(k),
                        xml_escape(v)
                    ));
                }
            }
            other => {
                out.push_str(
                    &other
                        .replace(
                            "@LOG_FILE@",
                            &xml_escape(&spec.log_file.display().to_string()),
                        )
                        .replace("@LABEL@", LAUNCHD_LABEL),
                );
                out.push('\n');
            }
        }
    }
    out
}

fn xml_escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::service::env_of as env;

    #[test]
    fn secret_names_are_recognised() {
        for n in [
            "ANTHROPIC_API_KEY",
            "GITHUB_TOKEN",
            "MY_SECRET",
            "DB_PASSWORD",
            "PGPASSWORD",
            "aws_secret_access_key",
            "CLIENT_SECRET_ID",
        ] {
            assert!(is_secret_name(n), "{n}");
        }
        for n in [
            "PATH",
            "HOME",
            "LANG",
            "OMNIGENT_HOME",
            "HTTPS_PROXY",
            "KEYBOARD",
        ] {
            assert!(!is_secret_name(n), "{n}");
        }
    }

    #[test]
    fn the_environment_is_the_allowlist_without_secrets() {
        let e = env(&[
            ("PATH", "/usr/bin:/bin"),
            ("HOME", "/home/u"),
            ("LANG", "C.UTF-8"),
            ("HTTPS_PROXY", "http://proxy:3128"),
            ("https_proxy", "http://u:pw@proxy:3128"),
            ("ANTHROPIC_API_KEY", "sk-1"),
            ("MY_TOKEN", "t"),
            ("MY_SETTING", "x"),
            ("UNRELATED", "y"),
        ]);
        let c = choose_env(&e, &["MY_TOKEN".into(), "MY_SETTING".into()], Init::Systemd);
        let names: Vec<&str> = c.written.iter().map(|(k, _)| k.as_str()).collect();
        assert_eq!(
            names,
            [
                "PATH",
                "HOME",
                "LANG",
                "HTTPS_PROXY",
                "MY_SETTING",
                SUPERVISOR_ENV
            ]
        );
        let held: Vec<&str> = c.withheld.iter().map(|(k, _)| k.as_str()).collect();
        assert_eq!(held, ["https_proxy", "MY_TOKEN"]);
    }

    #[test]
    fn systemd_words_are_quoted_and_specifiers_escaped() {
        assert_eq!(
            systemd_quote(r#"a "b" 100% $x\"#, true),
            r#""a \"b\" 100%% $$x\\""#
        );
        assert_eq!(systemd_quote("K=$v", false), r#""K=$v""#);
    }

    #[test]
    fn restart_steps_only_when_the_installed_systemd_has_them() {
        let mut spec = Spec {
            init: Init::Systemd,
            exe: "/opt/omnigent".into(),
            env: vec![("PATH".into(), "/bin".into())],
            log_file: "/l".into(),
            restart_steps: false,
        };
        let old = render(&spec);
        assert!(!old.contains("RestartSteps"));
        assert!(old.contains("ExecStart=\"/opt/omnigent\" \"daemon\" \"run\" \"--foreground\"\n"));
        assert!(old.contains("Environment=\"PATH=/bin\"\n"));
        assert!(!old.contains('@'), "{old}");
        spec.restart_steps = true;
        assert!(render(&spec).contains("RestartSteps=5\nRestartMaxDelaySec=60\n"));
    }
}
