//! Where a setting comes from: flag > environment (`TREECAST_*`) > config file > default.
//!
//! One test in its own binary, because it sets environment variables.

use std::ffi::OsString;

use treecast::cli::{parse_from, Cli, Command};

fn max_peers(cli: Cli) -> usize {
    match cli.command {
        Command::Subscribe { net, .. } => net.max_peers,
        other => panic!("parsed {other:?}"),
    }
}

fn parse(args: &[&str]) -> usize {
    let args: Vec<OsString> = args.iter().map(OsString::from).collect();
    max_peers(parse_from(args).expect("parses"))
}

#[test]
fn flag_beats_env_beats_config_file_beats_default() {
    let tmp = tempfile::tempdir().unwrap();
    let file = tmp.path().join("treecast.toml");
    std::fs::write(&file, "[subscribe]\nmax-peers = 7\n").unwrap();
    let file = file.to_str().unwrap();
    // Keep any real config out of the way: the default location is empty here.
    std::env::set_var("XDG_CONFIG_HOME", tmp.path().join("nothing"));
    std::env::remove_var("TREECAST_MAX_PEERS");
    std::env::remove_var("TREECAST_CONFIG");
    let base = ["treecast", "subscribe", "TICKET", "DIR"];

    assert_eq!(parse(&base), 32, "built-in default");
    let with_file = [&["treecast", "--config", file], &base[1..]].concat();
    assert_eq!(parse(&with_file), 7, "config file over default");

    std::env::set_var("TREECAST_MAX_PEERS", "9");
    assert_eq!(parse(&with_file), 9, "environment over config file");
    let with_flag = [&with_file[..], &["--max-peers", "11"]].concat();
    assert_eq!(parse(&with_flag), 11, "flag over environment");
    std::env::remove_var("TREECAST_MAX_PEERS");

    // The file may also come from TREECAST_CONFIG, or sit at the default location.
    std::env::set_var("TREECAST_CONFIG", file);
    assert_eq!(parse(&base), 7);
    std::env::remove_var("TREECAST_CONFIG");
    let xdg = tmp.path().join("xdg");
    std::fs::create_dir_all(xdg.join("treecast")).unwrap();
    std::fs::write(xdg.join("treecast/config.toml"), "max-peers = 5\n").unwrap();
    std::env::set_var("XDG_CONFIG_HOME", &xdg);
    assert_eq!(parse(&base), 5);

    // A named file that is missing or wrong is an error that says which file.
    let missing = [&["treecast", "--config", "/nonexistent/t.toml"], &base[1..]].concat();
    let args: Vec<OsString> = missing.iter().map(OsString::from).collect();
    let err = parse_from(args).unwrap_err().to_string();
    assert!(err.contains("/nonexistent/t.toml"), "{err}");
    std::fs::write(tmp.path().join("bad.toml"), "max-peer = 1\n").unwrap();
    let bad = tmp.path().join("bad.toml");
    let bad_args = [&["treecast", "--config", bad.to_str().unwrap()], &base[1..]].concat();
    let args: Vec<OsString> = bad_args.iter().map(OsString::from).collect();
    let err = parse_from(args).unwrap_err().to_string();
    assert!(
        err.contains("max-peer") && err.contains("bad.toml"),
        "{err}"
    );
}
