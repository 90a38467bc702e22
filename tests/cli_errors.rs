//! The rough edges a new user meets at the command line (issue #23): the real binary is run as
//! a user would run it, and its exit code, its message on stderr and what it left on disk are
//! checked. A mistyped path or ticket is an error that says what is wrong, and a directory of
//! the user's is never taken over without `--adopt`.

mod common;

use std::path::Path;
use std::process::{Command, ExitStatus, Stdio};

use common::*;

/// How a run of `treecast` ended.
struct Outcome {
    code: Option<i32>,
    stderr: String,
}

/// Run `treecast ARGS` until it exits (killed if it has not after `WAIT`).
async fn treecast<I, S>(args: I) -> Outcome
where
    I: IntoIterator<Item = S>,
    S: AsRef<std::ffi::OsStr>,
{
    let log = tempfile::NamedTempFile::new().unwrap();
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_treecast"));
    cmd.args(args)
        .env_remove("TREECAST_ADOPT")
        .env("XDG_CONFIG_HOME", log.path().with_extension("no-config"))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(log.reopen().unwrap());
    let mut running = Spawned::new(&mut cmd);
    let status: ExitStatus = running.exited().await;
    Outcome {
        code: status.code(),
        stderr: std::fs::read_to_string(log.path()).unwrap(),
    }
}

/// `treecast subscribe TICKET DIR EXTRA… --once` on loopback, as a user runs it.
async fn subscribe_once(ticket: &treecast::Ticket, dir: &Path, extra: &[&str]) -> Outcome {
    let mut args: Vec<std::ffi::OsString> = vec!["subscribe".into(), ticket.to_string().into()];
    args.push(dir.into());
    for a in [
        "--once",
        "--listen",
        "127.0.0.1:0",
        "--no-mdns",
        "--connect-timeout",
        "30",
    ]
    .iter()
    .chain(extra)
    {
        args.push(a.into());
    }
    treecast(args).await
}

/// The names in a directory, sorted.
fn names(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    v.sort();
    v
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publishing_a_missing_directory_fails_and_creates_nothing() {
    let lab = Lab::new();
    let missing = lab.tmp.path().join("sitte");
    let out = treecast([
        "publish".as_ref(),
        missing.as_os_str(),
        "--listen".as_ref(),
        "127.0.0.1:0".as_ref(),
        "--no-mdns".as_ref(),
    ])
    .await;
    assert_eq!(out.code, Some(1), "{}", out.stderr);
    assert!(
        out.stderr
            .contains(&format!("{} does not exist", missing.display())),
        "{}",
        out.stderr
    );
    assert!(out.stderr.contains("--restore"), "{}", out.stderr);
    assert!(!missing.exists(), "a mistyped path is not created");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publishing_a_file_says_it_is_not_a_directory() {
    let lab = Lab::new();
    let file = lab.tmp.path().join("report.pdf");
    std::fs::write(&file, b"not a tree").unwrap();
    let out = treecast([
        "publish".as_ref(),
        file.as_os_str(),
        "--listen".as_ref(),
        "127.0.0.1:0".as_ref(),
        "--no-mdns".as_ref(),
    ])
    .await;
    assert_eq!(out.code, Some(1), "{}", out.stderr);
    assert!(
        out.stderr
            .contains(&format!("{} is not a directory", file.display())),
        "{}",
        out.stderr
    );
    assert!(!out.stderr.contains("os error"), "{}", out.stderr);
    assert_eq!(std::fs::read(&file).unwrap(), b"not a tree");
    // The same for a mirror.
    let ticket = treecast::Ticket {
        swarm_id: uuid::Uuid::new_v4(),
        publisher: test_key().public(),
        addrs: vec!["/ip4/127.0.0.1/udp/1/quic-v1".parse().unwrap()],
    };
    let out = subscribe_once(&ticket, &file, &[]).await;
    assert_eq!(out.code, Some(1), "{}", out.stderr);
    assert!(
        out.stderr
            .contains(&format!("{} is not a directory", file.display())),
        "{}",
        out.stderr
    );
    assert_eq!(std::fs::read(&file).unwrap(), b"not a tree");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_string_that_is_no_ticket_is_named_and_a_ticket_described() {
    let lab = Lab::new();
    let mirror = lab.tmp.path().join("mirror");
    for garbage in ["tc1garbage", "garbage", "tc1!!!!"] {
        let out = treecast([
            "subscribe".as_ref(),
            garbage.as_ref(),
            mirror.as_os_str(),
            "--once".as_ref(),
        ])
        .await;
        assert_eq!(out.code, Some(1), "{garbage}: {}", out.stderr);
        assert!(
            out.stderr
                .contains(&format!("`{garbage}` is not a valid treecast ticket")),
            "{}",
            out.stderr
        );
        // What one looks like, and where to find it.
        assert!(
            out.stderr.contains("`tc1` and then 85 or more"),
            "{}",
            out.stderr
        );
        assert!(out.stderr.contains("treecast ticket DIR"), "{}", out.stderr);
        assert!(!out.stderr.contains("base32"), "{}", out.stderr);
        assert!(!mirror.exists(), "nothing written for {garbage}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_directory_of_the_users_is_refused_and_adopted_only_when_told() {
    let lab = Lab::new();
    let src = lab.dir("site");
    write(&src, "index.html", b"published index");
    write(&src, "docs/guide.txt", b"published guide");
    let p = publisher(&src).await;
    let home = lab.dir("home");
    write(&home, "thesis.txt", b"four years of work");
    write(&home, "index.html", b"my own index");
    let before = snapshot(&home);

    let out = subscribe_once(p.ticket(), &home, &[]).await;
    assert_eq!(out.code, Some(1), "{}", out.stderr);
    for said in [
        "holds files (index.html, thesis.txt) and no treecast mirror",
        "new or empty directory",
        "--adopt",
        ".treecast/conflicts/",
    ] {
        assert!(out.stderr.contains(said), "no {said:?} in {}", out.stderr);
    }
    assert_eq!(snapshot(&home), before, "nothing touched");
    assert_eq!(
        names(&home),
        ["index.html", "thesis.txt"],
        "no state written"
    );

    // Told to adopt it, with --once: it ends only once the directory is an exact mirror, and
    // nothing of the user's is lost.
    let out = subscribe_once(p.ticket(), &home, &["--adopt"]).await;
    assert_eq!(out.code, Some(0), "{}", out.stderr);
    assert!(
        out.stderr.contains("--adopt: mirroring into a directory"),
        "{}",
        out.stderr
    );
    assert_same_tree(&src, &home);
    let conflicts = home.join(".treecast/conflicts");
    let mut kept: Vec<Vec<u8>> = names(&conflicts)
        .iter()
        .map(|n| std::fs::read(conflicts.join(n)).unwrap())
        .collect();
    kept.sort();
    assert_eq!(
        kept,
        [b"four years of work".to_vec(), b"my own index".to_vec()]
    );
    p.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn new_empty_and_mirrored_directories_subscribe_and_another_swarms_mirror_is_refused() {
    let lab = Lab::new();
    let src = lab.dir("site");
    write(&src, "index.html", b"published index");
    let p = publisher(&src).await;
    let new = lab.tmp.path().join("new");
    let empty = lab.dir("empty");
    for dir in [&new, &empty, &new] {
        let out = subscribe_once(p.ticket(), dir, &[]).await;
        assert_eq!(out.code, Some(0), "{}: {}", dir.display(), out.stderr);
        assert_same_tree(&src, dir);
    }

    let other_src = lab.dir("other-site");
    write(&other_src, "other.txt", b"another swarm");
    let other = treecast::Node::publish(config(&other_src), other_key())
        .await
        .expect("the other publisher starts");
    let out = subscribe_once(other.ticket(), &new, &["--adopt"]).await;
    assert_eq!(out.code, Some(1), "{}", out.stderr);
    assert!(
        out.stderr.contains(&format!(
            "already mirrors swarm {}; refusing to mix in swarm {}",
            p.ticket().swarm_id,
            other.ticket().swarm_id
        )),
        "{}",
        out.stderr
    );
    assert_same_tree(&src, &new);
    other.shutdown().await;
    p.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subscribe_help_says_what_adopt_does_with_existing_files() {
    let out = Command::new(env!("CARGO_BIN_EXE_treecast"))
        .args(["subscribe", "--help"])
        .output()
        .expect("run treecast");
    assert!(out.status.success());
    let help = String::from_utf8_lossy(&out.stdout);
    for said in [
        "--adopt",
        "Nothing is deleted",
        "DIR/.treecast/conflicts/",
        "refused unless --adopt",
    ] {
        assert!(help.contains(said), "no {said:?} in {help}");
    }
}

/// Scripts set the `TREECAST_NO_*` switches as shells do (`1`, `yes`, `0`): each is taken as
/// the flag it stands for, not refused as "not true or false" before the node could start.
#[test]
fn switches_from_the_environment_take_1_and_0() {
    let lab = Lab::new();
    let missing = lab.tmp.path().join("gone");
    let out = Command::new(env!("CARGO_BIN_EXE_treecast"))
        .args(["publish".as_ref(), missing.as_os_str()])
        .args(["--listen", "127.0.0.1:0"])
        .env("TREECAST_NO_PUBLIC_DHT", "1")
        .env("TREECAST_NO_MDNS", "yes")
        .env("TREECAST_NO_UPNP", "1")
        .env("TREECAST_NO_WATCH", "0")
        .env("XDG_CONFIG_HOME", lab.tmp.path().join("no-config"))
        .stdin(Stdio::null())
        .output()
        .expect("run treecast");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains(&format!("{} does not exist", missing.display())),
        "the flags parsed and the node went on to the directory: {stderr}"
    );
}

/// `--once` promises the newest revision: Ctrl-C before it is applied exits 130 (as a shell
/// reports an interrupted command) and says where the mirror stands, instead of success.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subscribe_once_interrupted_before_the_revision_exits_130() {
    let lab = Lab::new();
    let mirror = lab.tmp.path().join("mirror");
    // Nobody listens at the ticket's address: the revision can never arrive.
    let ticket = treecast::Ticket {
        swarm_id: uuid::Uuid::new_v4(),
        publisher: test_key().public(),
        addrs: vec!["/ip4/127.0.0.1/udp/1/quic-v1".parse().unwrap()],
    };
    let log = tempfile::NamedTempFile::new().unwrap();
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_treecast"));
    cmd.args(["subscribe", &ticket.to_string()])
        .arg(&mirror)
        .args(["--once", "--listen", "127.0.0.1:0", "--no-mdns"])
        .env("XDG_CONFIG_HOME", log.path().with_extension("no-config"))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(log.reopen().unwrap());
    let mut running = Spawned::new(&mut cmd);
    // The node runs once its control socket answers.
    eventually(WAIT, "the subscriber's status to answer", || {
        Command::new(env!("CARGO_BIN_EXE_treecast"))
            .arg("status")
            .arg(&mirror)
            .output()
            .is_ok_and(|o| o.status.success())
    })
    .await;
    running.signal(libc::SIGINT);
    let status = running.exited().await;
    let stderr = std::fs::read_to_string(log.path()).unwrap();
    assert_eq!(status.code(), Some(130), "{stderr}");
    assert!(
        stderr.contains(
            "interrupted before the newest revision was applied; the mirror is at no revision"
        ),
        "{stderr}"
    );
}
