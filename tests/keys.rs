//! Moving a publisher to another machine: `treecast key export` on the old one, `key import`
//! on the new one, then `--restore` and publishing carries on.

mod common;

use std::process::Command;

use common::*;
use treecast::{Node, PublisherKey};

fn treecast(args: &[&std::ffi::OsStr]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_treecast"))
        .args(args)
        .env_remove("TREECAST_PASSPHRASE")
        .output()
        .expect("run treecast")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_exported_key_publishes_the_same_swarm_from_another_machine() {
    let lab = Lab::new();
    let old_dir = lab.dir("old-machine");
    write(&old_dir, "site/index.html", b"<h1>hello</h1>");
    let key_path = lab.tmp.path().join("old.key");
    let key = PublisherKey::generate();
    key.save_new(&key_path).unwrap();
    let p = Node::publish(config(&old_dir), key.clone()).await.unwrap();
    let s = subscriber(&lab.dir("mirror"), p.ticket()).await;
    synced(&s, 1).await;
    let swarm = p.ticket().swarm_id;
    p.shutdown().await;

    // Export on the old machine, import on the new one, through the CLI.
    let pass = lab.tmp.path().join("pass");
    std::fs::write(&pass, "a long passphrase\n").unwrap();
    let exported = lab.tmp.path().join("key.enc");
    let out = treecast(&[
        "key".as_ref(),
        "export".as_ref(),
        key_path.as_os_str(),
        exported.as_os_str(),
        "--passphrase-file".as_ref(),
        pass.as_os_str(),
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = std::fs::read_to_string(&exported).unwrap();
    assert!(text.contains(&key.public().to_string()));
    let imported = lab.tmp.path().join("new.key");
    std::fs::write(&pass, "not the passphrase\n").unwrap();
    let import = |p: &std::path::Path| {
        treecast(&[
            "key".as_ref(),
            "import".as_ref(),
            exported.as_os_str(),
            imported.as_os_str(),
            "--passphrase-file".as_ref(),
            p.as_os_str(),
        ])
    };
    let out = import(&pass);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("wrong passphrase"));
    assert!(!imported.exists(), "nothing written on a wrong passphrase");
    std::fs::write(&pass, "a long passphrase\n").unwrap();
    let out = import(&pass);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let moved = PublisherKey::load(&imported).unwrap();
    assert_eq!(moved.public(), key.public());

    // The new machine has no tree: it restores from the swarm and publishes revision 2.
    let new_dir = lab.dir("new-machine");
    let mut cfg = config(&new_dir);
    cfg.swarm_id = Some(swarm);
    cfg.bootstrap = s.listen_addrs().to_vec();
    assert_eq!(Node::restore(cfg.clone(), &moved).await.unwrap(), 1);
    let p2 = Node::publish(cfg, moved).await.unwrap();
    write(
        &new_dir,
        "site/index.html",
        b"<h1>hello from the new machine</h1>",
    );
    assert_eq!(p2.rescan().await.unwrap(), Some(2));
    synced(&s, 2).await;
    assert_same_tree(&new_dir, &lab.tmp.path().join("mirror"));
    s.shutdown().await;
    p2.shutdown().await;
}
