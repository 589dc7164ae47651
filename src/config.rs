//! The optional TOML configuration file (`--config FILE` or `NATTER_CONFIG`).
//!
//! Top-level keys apply to every role that has a flag of that name; a `[serve]`,
//! `[edge]`, `[messages]`, `[sessions]` or `[store]` table applies to that role only and
//! overrides top-level keys. Keys are flag names (`jwt-secret-file` or
//! `jwt_secret_file`). Precedence: command-line flag > `NATTER_*` environment variable >
//! file > built-in default. The file is turned into extra arguments for clap, so every
//! value goes through the same parsing and validation as a flag.

use std::{collections::BTreeMap, ffi::OsString, path::PathBuf};

use clap::Command;

/// Why the file could not be applied.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("reading {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: {message}")]
    Invalid { path: PathBuf, message: String },
}

/// Returns `args` with the config file's settings appended as flags (those not already
/// given by flag or environment). Without a config file, `args` unchanged.
pub fn with_file(
    command: &Command,
    args: Vec<OsString>,
    env: impl Fn(&str) -> Option<OsString>,
) -> Result<Vec<OsString>, ConfigError> {
    let Some(path) = config_path(&args).or_else(|| env("NATTER_CONFIG").map(PathBuf::from)) else {
        return Ok(args);
    };
    let text = std::fs::read_to_string(&path).map_err(|source| ConfigError::Read {
        path: path.clone(),
        source,
    })?;
    let invalid = |message: String| ConfigError::Invalid {
        path: path.clone(),
        message,
    };
    let table: toml::Table = text.parse().map_err(|e| invalid(format!("{e}")))?;

    // The role is the first argument naming a subcommand; without one clap reports the
    // missing subcommand itself.
    let roles: Vec<&str> = command.get_subcommands().map(|c| c.get_name()).collect();
    let Some(role) = args
        .iter()
        .skip(1)
        .filter_map(|a| a.to_str())
        .find(|a| roles.contains(a))
    else {
        return Ok(args);
    };
    let Some(sub) = command.find_subcommand(role) else {
        return Ok(args);
    };
    // Flag name -> its environment variable, for the role and the global flags.
    let mut flags: BTreeMap<String, Option<String>> = BTreeMap::new();
    for arg in sub.get_arguments().chain(command.get_arguments()) {
        if let Some(long) = arg.get_long() {
            let env = arg.get_env().and_then(|e| e.to_str()).map(str::to_owned);
            flags.insert(long.to_owned(), env);
        }
    }

    let mut settings: BTreeMap<String, toml::Value> = BTreeMap::new();
    for (key, value) in &table {
        if let toml::Value::Table(_) = value {
            if !roles.contains(&key.as_str()) {
                return Err(invalid(format!(
                    "unknown table [{key}]; tables are roles: {}",
                    roles.join(", ")
                )));
            }
            continue;
        }
        let name = key.replace('_', "-");
        if name == "config" {
            return Err(invalid("`config` cannot be set inside the file".into()));
        }
        // A top-level key another role uses is fine; one no role knows is a typo.
        if flags.contains_key(&name) {
            settings.insert(name, value.clone());
        } else if !known_anywhere(command, &name) {
            return Err(invalid(format!("unknown setting `{key}`")));
        }
    }
    if let Some(toml::Value::Table(own)) = table.get(role) {
        for (key, value) in own {
            let name = key.replace('_', "-");
            if !flags.contains_key(&name) {
                return Err(invalid(format!("[{role}] has no setting `{key}`")));
            }
            settings.insert(name, value.clone());
        }
    }

    let mut out = args.clone();
    for (name, value) in settings {
        let on_command_line = args
            .iter()
            .filter_map(|a| a.to_str())
            .any(|a| a == format!("--{name}") || a.starts_with(&format!("--{name}=")));
        let in_env = flags
            .get(&name)
            .and_then(|e| e.as_deref())
            .is_some_and(|e| env(e).is_some());
        if on_command_line || in_env {
            continue;
        }
        match value {
            toml::Value::Boolean(true) => out.push(format!("--{name}").into()),
            toml::Value::Boolean(false) => {}
            toml::Value::String(s) => out.push(format!("--{name}={s}").into()),
            toml::Value::Integer(i) => out.push(format!("--{name}={i}").into()),
            toml::Value::Float(f) => out.push(format!("--{name}={f}").into()),
            toml::Value::Array(items) => {
                let mut parts = Vec::with_capacity(items.len());
                for item in items {
                    match item {
                        toml::Value::String(s) => parts.push(s),
                        toml::Value::Integer(i) => parts.push(i.to_string()),
                        other => {
                            return Err(invalid(format!(
                                "`{name}`: list items must be strings or integers, not {}",
                                other.type_str()
                            )));
                        }
                    }
                }
                out.push(format!("--{name}={}", parts.join(",")).into());
            }
            other => {
                return Err(invalid(format!(
                    "`{name}`: unsupported value type {}",
                    other.type_str()
                )));
            }
        }
    }
    Ok(out)
}

fn known_anywhere(command: &Command, name: &str) -> bool {
    command
        .get_subcommands()
        .flat_map(|c| c.get_arguments())
        .chain(command.get_arguments())
        .any(|a| a.get_long() == Some(name))
}

/// `--config FILE` or `--config=FILE` among the arguments.
fn config_path(args: &[OsString]) -> Option<PathBuf> {
    let mut it = args.iter().skip(1);
    while let Some(a) = it.next() {
        let s = a.to_str()?;
        if s == "--config" {
            return it.next().map(PathBuf::from);
        }
        if let Some(p) = s.strip_prefix("--config=") {
            return Some(PathBuf::from(p));
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::{Arg, ArgAction};

    fn cli() -> Command {
        Command::new("natter")
            .arg(Arg::new("config").long("config").global(true))
            .arg(
                Arg::new("log-level")
                    .long("log-level")
                    .env("NATTER_LOG")
                    .global(true),
            )
            .subcommand(
                Command::new("edge")
                    .arg(Arg::new("nats").long("nats").env("NATTER_NATS"))
                    .arg(Arg::new("node-id").long("node-id").env("NATTER_NODE_ID"))
                    .arg(
                        Arg::new("verbose")
                            .long("verbose")
                            .action(ArgAction::SetTrue),
                    ),
            )
            .subcommand(
                Command::new("messages")
                    .arg(Arg::new("nats").long("nats").env("NATTER_NATS"))
                    .arg(Arg::new("scylla").long("scylla").env("NATTER_SCYLLA")),
            )
    }

    fn file(text: &str) -> tempfile::NamedTempFile {
        let f = tempfile::NamedTempFile::new().expect("temp file");
        std::fs::write(f.path(), text).expect("write");
        f
    }

    fn args(list: &[&str]) -> Vec<OsString> {
        list.iter().map(OsString::from).collect()
    }

    fn strings(v: Vec<OsString>) -> Vec<String> {
        v.into_iter()
            .map(|s| s.into_string().expect("utf-8"))
            .collect()
    }

    #[test]
    fn file_fills_what_flags_and_env_leave_open() {
        let f = file(
            "nats = \"nats://a:4222\"\nscylla = [\"s1:9042\", \"s2:9042\"]\n\
             [edge]\nnode_id = \"edge-7\"\nverbose = true\n",
        );
        let path = f.path().display().to_string();
        let edge = with_file(&cli(), args(&["natter", "--config", &path, "edge"]), |_| {
            None
        })
        .expect("valid");
        assert_eq!(
            strings(edge)[4..],
            ["--nats=nats://a:4222", "--node-id=edge-7", "--verbose"]
        );
        // A flag beats the file; so does the environment.
        let flagged = with_file(
            &cli(),
            args(&["natter", "--config", &path, "edge", "--nats", "nats://b"]),
            |e| (e == "NATTER_NODE_ID").then(|| "from-env".into()),
        )
        .expect("valid");
        assert_eq!(strings(flagged)[6..], ["--verbose"]);
        let messages = with_file(
            &cli(),
            args(&["natter", &format!("--config={path}"), "messages"]),
            |_| None,
        )
        .expect("valid");
        assert_eq!(
            strings(messages)[3..],
            ["--nats=nats://a:4222", "--scylla=s1:9042,s2:9042"]
        );
    }

    #[test]
    fn mistakes_are_reported_with_the_file() {
        for (text, want) in [
            ("natz = \"x\"\n", "unknown setting `natz`"),
            ("[edge]\nscylla = \"x\"\n", "[edge] has no setting `scylla`"),
            ("[edgy]\nnats = \"x\"\n", "unknown table [edgy]"),
            ("nats = ", "TOML"),
        ] {
            let f = file(text);
            let path = f.path().display().to_string();
            let err = with_file(&cli(), args(&["natter", "--config", &path, "edge"]), |_| {
                None
            })
            .expect_err(text)
            .to_string();
            assert!(
                err.contains(want) || (want == "TOML" && err.contains(&path)),
                "{text:?}: {err}"
            );
        }
        let missing = with_file(&cli(), args(&["natter", "edge"]), |e| {
            (e == "NATTER_CONFIG").then(|| "/nonexistent/natter.toml".into())
        })
        .expect_err("missing file");
        assert!(missing.to_string().contains("/nonexistent/natter.toml"));
    }
}
