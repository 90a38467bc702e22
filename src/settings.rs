//! The TOML configuration file.
//!
//! Every flag can be set in the file under its long name. Top-level keys apply to every command
//! that has the flag; a table named after a command (`[publish]`, `[subscribe]`, `[dht-node]`)
//! applies to that command only and wins over the top level. File values become the flags'
//! defaults, which gives the precedence flag > environment (`TREECAST_*`) > file > built-in
//! default.
//!
//! The file is `--config PATH` (or `TREECAST_CONFIG`), else `$XDG_CONFIG_HOME/treecast/config.toml`
//! (`~/.config/treecast/config.toml`) when that exists.

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::path::{Path, PathBuf};

use thiserror::Error;

/// A configuration file that cannot be used.
#[derive(Debug, Error)]
pub enum SettingsError {
    #[error("cannot read config file {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("config file {path}: {message}")]
    Invalid { path: PathBuf, message: String },
}

/// The default configuration file location, whether or not it exists.
pub fn default_path() -> Option<PathBuf> {
    let base = std::env::var_os("XDG_CONFIG_HOME")
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".config")))?;
    Some(base.join("treecast").join("config.toml"))
}

/// The configuration file this command line uses: `--config` (before or after the command
/// name), else `TREECAST_CONFIG`, else the default location when a file is there. The second
/// value says whether the file was asked for explicitly (then it must exist).
pub fn locate(args: &[OsString]) -> Option<(PathBuf, bool)> {
    let mut it = args.iter().skip(1);
    while let Some(a) = it.next() {
        let a = a.to_string_lossy();
        if a == "--" {
            break;
        }
        if a == "--config" {
            return it.next().map(|p| (PathBuf::from(p), true));
        }
        if let Some(p) = a.strip_prefix("--config=") {
            return Some((PathBuf::from(p), true));
        }
    }
    if let Some(p) = std::env::var_os("TREECAST_CONFIG").filter(|p| !p.is_empty()) {
        return Some((PathBuf::from(p), true));
    }
    default_path().filter(|p| p.exists()).map(|p| (p, false))
}

/// Read the file at `path` and make its settings the defaults of `cmd`.
pub fn apply_file(cmd: clap::Command, path: &Path) -> Result<clap::Command, SettingsError> {
    let text = std::fs::read_to_string(path).map_err(|source| SettingsError::Read {
        path: path.to_owned(),
        source,
    })?;
    apply(cmd, &text).map_err(|message| SettingsError::Invalid {
        path: path.to_owned(),
        message,
    })
}

/// Make the settings in `text` (TOML) the defaults of `cmd`'s subcommands.
pub fn apply(cmd: clap::Command, text: &str) -> Result<clap::Command, String> {
    let table: toml::Table = text.parse().map_err(|e: toml::de::Error| e.to_string())?;
    let commands: Vec<String> = cmd
        .get_subcommands()
        .map(|s| s.get_name().to_string())
        .collect();
    // Per command: setting -> value, top level first so that sections override it.
    let mut plan: BTreeMap<String, BTreeMap<String, String>> = BTreeMap::new();
    let mut top = Vec::new();
    for (key, value) in &table {
        match value {
            toml::Value::Table(section) => {
                if !commands.iter().any(|c| c == key) {
                    return Err(format!(
                        "[{key}] is not a command (sections are: {})",
                        commands.join(", ")
                    ));
                }
                for (k, v) in section {
                    let v = scalar(k, v)?;
                    let name = flag_name(k);
                    if !has_flag(&cmd, key, &name) {
                        return Err(format!("`treecast {key}` has no flag --{name}"));
                    }
                    plan.entry(key.clone()).or_default().insert(name, v);
                }
            }
            other => top.push((flag_name(key), scalar(key, other)?)),
        }
    }
    for (name, value) in top {
        let users: Vec<&String> = commands
            .iter()
            .filter(|c| has_flag(&cmd, c, &name))
            .collect();
        if users.is_empty() {
            return Err(format!("unknown setting {name:?}: no command has --{name}"));
        }
        for c in users {
            plan.entry(c.clone())
                .or_default()
                .entry(name.clone())
                .or_insert_with(|| value.clone());
        }
    }
    let mut cmd = cmd;
    for (command, settings) in plan {
        cmd = cmd.mut_subcommand(&command, |mut sub| {
            for (name, value) in settings {
                let id = arg_id(&sub, &name).expect("checked above");
                sub = sub.mut_arg(id, |a| a.default_value(value));
            }
            sub
        });
    }
    Ok(cmd)
}

/// Keys may use `-` or `_`; flags use `-`.
fn flag_name(key: &str) -> String {
    key.replace('_', "-")
}

fn arg_id(sub: &clap::Command, long: &str) -> Option<String> {
    sub.get_arguments()
        .find(|a| a.get_long() == Some(long))
        .map(|a| a.get_id().to_string())
}

fn has_flag(cmd: &clap::Command, command: &str, long: &str) -> bool {
    long != "help"
        && cmd
            .find_subcommand(command)
            .is_some_and(|s| arg_id(s, long).is_some())
}

/// A TOML value as the text a flag would take; arrays become comma-separated lists.
fn scalar(key: &str, v: &toml::Value) -> Result<String, String> {
    match v {
        toml::Value::String(s) => Ok(s.clone()),
        toml::Value::Integer(i) => Ok(i.to_string()),
        toml::Value::Float(f) => Ok(f.to_string()),
        toml::Value::Boolean(b) => Ok(b.to_string()),
        toml::Value::Array(items) => {
            let parts: Result<Vec<String>, String> = items
                .iter()
                .map(|i| match i {
                    toml::Value::Array(_) | toml::Value::Table(_) => {
                        Err(format!("{key}: a list may hold only plain values"))
                    }
                    other => scalar(key, other),
                })
                .collect();
            Ok(parts?.join(","))
        }
        toml::Value::Datetime(_) | toml::Value::Table(_) => {
            Err(format!("{key}: expected a string, number, boolean or list"))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::{CommandFactory, FromArgMatches};

    fn parse(file: &str, args: &[&str]) -> Result<crate::cli::Cli, String> {
        let cmd = apply(crate::cli::Cli::command(), file)?;
        let m = cmd.try_get_matches_from(args).map_err(|e| e.to_string())?;
        crate::cli::Cli::from_arg_matches(&m).map_err(|e| e.to_string())
    }

    fn max_peers(cli: &crate::cli::Cli) -> usize {
        match &cli.command {
            crate::cli::Command::Publish { net, .. }
            | crate::cli::Command::Subscribe { net, .. } => net.max_peers,
            _ => panic!("not a node command"),
        }
    }

    #[test]
    fn sections_win_over_the_top_level_and_flags_over_both() {
        let file = "max-peers = 5\n[publish]\nmax_peers = 6\n";
        let publish = parse(file, &["treecast", "publish", "d"]).unwrap();
        assert_eq!(max_peers(&publish), 6);
        let sub = parse(file, &["treecast", "subscribe", "t", "d"]).unwrap();
        assert_eq!(max_peers(&sub), 5);
        let flag = parse(file, &["treecast", "publish", "d", "--max-peers", "9"]).unwrap();
        assert_eq!(max_peers(&flag), 9);
    }

    #[test]
    fn lists_and_switches_can_be_set() {
        let file = "no-mdns = true\n[publish]\nignore = [\"*.tmp\", \"build/\"]\n";
        let cli = parse(file, &["treecast", "publish", "d"]).unwrap();
        let crate::cli::Command::Publish { net, ignore, .. } = cli.command else {
            panic!("publish")
        };
        assert!(net.no_mdns);
        assert_eq!(ignore, vec!["*.tmp".to_string(), "build/".to_string()]);
    }

    #[test]
    fn the_public_dht_keys() {
        let boot =
            "/ip4/198.18.1.1/tcp/4001/p2p/12D3KooWLMaMHKABs1CiEsHv7u3UFrbp4z6As43GB9awawptuLym";
        let file = format!("no-public-dht = true\npublic-dht-bootstrap = [\"{boot}\"]\n");
        let cli = parse(&file, &["treecast", "subscribe", "t", "d"]).unwrap();
        let crate::cli::Command::Subscribe { net, .. } = cli.command else {
            panic!("subscribe")
        };
        assert!(net.no_public_dht);
        assert_eq!(net.public_dht_bootstrap, vec![boot.to_string()]);
    }

    #[test]
    fn mistakes_are_named() {
        let err = |f: &str| parse(f, &["treecast", "publish", "d"]).unwrap_err();
        assert!(err("max-peerz = 1").contains("max-peerz"));
        assert!(err("[publsh]\nmax-peers = 1").contains("publsh"));
        assert!(err("[verify]\nmax-peers = 1").contains("no flag --max-peers"));
        assert!(err("max-peers = [[1]]").contains("plain values"));
        assert!(!err("max-peers = ").is_empty());
        // A bad value is caught by the flag's own parser, naming the flag.
        assert!(err("max-upload = \"fast\"").contains("max-upload"));
    }
}
