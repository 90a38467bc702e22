//! The command line: clap definitions and what each command does.
//!
//! Every flag can also come from a `TREECAST_*` environment variable or the config file
//! ([`crate::settings`]): flag > environment > file > built-in default.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use clap::{Parser, Subcommand};
use libp2p::Multiaddr;

use crate::config::NodeConfig;
use crate::net::parse_addr;
use crate::node::{Node, Status};
use crate::trust::{PublisherKey, Ticket};

/// Publish a directory tree to many subscribers over a peer-to-peer QUIC swarm.
#[derive(Debug, Parser)]
#[command(name = "treecast", version, about)]
pub struct Cli {
    /// TOML config file (default: $XDG_CONFIG_HOME/treecast/config.toml, if it exists).
    #[arg(long, global = true, env = "TREECAST_CONFIG", value_name = "PATH")]
    pub config: Option<PathBuf>,
    #[command(subcommand)]
    pub command: Command,
}

/// Parse the process's command line with the config file's settings as defaults.
pub fn parse() -> Result<Cli, clap::Error> {
    parse_from(std::env::args_os().collect())
}

/// Parse `args` (program name first) with the config file's settings as defaults.
pub fn parse_from(args: Vec<std::ffi::OsString>) -> Result<Cli, clap::Error> {
    use clap::{CommandFactory, FromArgMatches};
    let mut cmd = Cli::command();
    if let Some((path, explicit)) = crate::settings::locate(&args) {
        if explicit || path.exists() {
            cmd = crate::settings::apply_file(cmd, &path).map_err(|e| {
                Cli::command().error(clap::error::ErrorKind::InvalidValue, e.to_string())
            })?;
        }
    }
    let matches = cmd.try_get_matches_from(args)?;
    Cli::from_arg_matches(&matches)
}

/// Network flags shared by `publish` and `subscribe`.
#[derive(Debug, clap::Args)]
pub struct NetArgs {
    /// Address to listen on: IP:PORT (UDP) or a multiaddr. Port 0 picks a free port.
    #[arg(
        long,
        env = "TREECAST_LISTEN",
        default_value = "0.0.0.0:0",
        value_delimiter = ','
    )]
    pub listen: Vec<String>,
    /// Peer to dial at start (IP:PORT or multiaddr). Repeatable.
    #[arg(long, env = "TREECAST_BOOTSTRAP", value_delimiter = ',')]
    pub bootstrap: Vec<String>,
    /// Most chunk bytes per second to upload, e.g. 500K, 20M (default: unlimited).
    #[arg(long, env = "TREECAST_MAX_UPLOAD", value_parser = parse_rate)]
    pub max_upload: Option<u64>,
    /// Most chunk bytes per second to download, e.g. 2M (default: unlimited).
    #[arg(long, env = "TREECAST_MAX_DOWNLOAD", value_parser = parse_rate)]
    pub max_download: Option<u64>,
    /// Chunk bytes queued to peers and not yet sent before requests from a second peer are
    /// answered "busy", so that a chunk goes whole to a few receivers at a time, e.g. 1M (off
    /// by default: 0; see the README's swarm simulator section for when it helps).
    #[arg(long, env = "TREECAST_UPLOAD_BUDGET", value_parser = parse_budget, default_value_t = crate::config::DEFAULT_UPLOAD_BUDGET)]
    pub upload_budget: u64,
    /// Serve Prometheus metrics at http://ADDR/metrics (e.g. 127.0.0.1:9898).
    #[arg(long, env = "TREECAST_METRICS", value_name = "ADDR")]
    pub metrics: Option<std::net::SocketAddr>,
    /// Serve the web dashboard, /api/status and /metrics at http://ADDR/ (read-only). Given
    /// without a value: 127.0.0.1:9899, this machine only. Any address that is not loopback
    /// needs --http-token.
    #[arg(
        long,
        env = "TREECAST_HTTP",
        value_name = "ADDR",
        num_args = 0..=1,
        default_missing_value = crate::config::DEFAULT_HTTP_ADDR
    )]
    pub http: Option<std::net::SocketAddr>,
    /// The token the dashboard asks every client for (at least 16 characters): open
    /// http://ADDR/?token=TOKEN, or send `Authorization: Bearer TOKEN`.
    #[arg(
        long,
        env = "TREECAST_HTTP_TOKEN",
        value_name = "TOKEN",
        hide_env_values = true
    )]
    pub http_token: Option<String>,
    /// Most peers to keep sessions with; peer exchange dials up to this many.
    #[arg(long, env = "TREECAST_MAX_PEERS", default_value_t = 32)]
    pub max_peers: usize,
    /// Do not look for peers on the local network (mDNS).
    #[arg(long, env = "TREECAST_NO_MDNS", value_parser = clap::builder::FalseyValueParser::new())]
    pub no_mdns: bool,
    /// Do not ask the router (UPnP IGD) to forward our port. UPnP is used only when listening
    /// on a non-loopback address.
    #[arg(long, env = "TREECAST_NO_UPNP", value_parser = clap::builder::FalseyValueParser::new())]
    pub no_upnp: bool,
    /// Do not use the public IPFS DHT (Amino) to find the swarm or announce this node there.
    /// It is on by default: anyone who knows the swarm ID can then learn the addresses of the
    /// swarm's members. It is also off when every listen address is loopback and no
    /// --public-dht-bootstrap is given.
    #[arg(long, env = "TREECAST_NO_PUBLIC_DHT", value_parser = clap::builder::FalseyValueParser::new())]
    pub no_public_dht: bool,
    /// A public-DHT bootstrap peer, a multiaddr ending in /p2p/<peer ID>; repeatable. Replaces
    /// Amino's public bootstrap list (for a private network or a test lab).
    #[arg(long, env = "TREECAST_PUBLIC_DHT_BOOTSTRAP", value_delimiter = ',')]
    pub public_dht_bootstrap: Vec<String>,
    /// An address this node is reachable at from outside (public IP, port forward), as
    /// IP:PORT or a multiaddr; repeatable.
    #[arg(long, env = "TREECAST_EXTERNAL", value_delimiter = ',')]
    pub external: Vec<String>,
    /// Serve as a relay for peers behind NATs (on by default for `dht-node`).
    #[arg(long, env = "TREECAST_RELAY")]
    pub relay: bool,
    /// As a relay: most MiB one relayed connection may carry.
    #[arg(long, env = "TREECAST_RELAY_MAX_CIRCUIT_MIB", default_value_t = 1024)]
    pub relay_max_circuit_mib: u64,
}

/// Parse a byte rate: a number with an optional K, M or G suffix (powers of 1000).
fn parse_rate(s: &str) -> Result<u64, String> {
    let s = s.trim();
    let (num, mult) = match s.chars().last().map(|c| c.to_ascii_uppercase()) {
        Some('K') => (&s[..s.len() - 1], 1_000),
        Some('M') => (&s[..s.len() - 1], 1_000_000),
        Some('G') => (&s[..s.len() - 1], 1_000_000_000),
        _ => (s, 1),
    };
    let n: f64 = num
        .parse()
        .map_err(|_| format!("{s:?} is not a rate like 500K or 20M"))?;
    if n.is_nan() || n <= 0.0 {
        return Err("a rate must be positive".into());
    }
    Ok((n * mult as f64) as u64)
}

/// Parse a byte budget: 0, or a size like a rate (see [`parse_rate`]).
fn parse_budget(s: &str) -> Result<u64, String> {
    if s.trim() == "0" {
        return Ok(0);
    }
    parse_rate(s).map_err(|e| e.replace("rate", "size"))
}

/// The subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Publish DIR: sign a revision whenever it changes, print the ticket, serve until Ctrl-C.
    Publish {
        /// The directory to publish.
        dir: PathBuf,
        #[command(flatten)]
        net: NetArgs,
        /// Publisher key file (32-byte ed25519 secret, mode 0600); created if missing.
        /// Default: DIR/.treecast/publisher.key.
        #[arg(long, env = "TREECAST_KEY")]
        key: Option<PathBuf>,
        /// Seconds between full rescans (a backstop for the file watcher).
        #[arg(long, env = "TREECAST_RESCAN_SECS", default_value_t = 30)]
        rescan_secs: u64,
        /// Do not watch DIR for changes; rely on periodic rescans.
        #[arg(long, env = "TREECAST_NO_WATCH", value_parser = clap::builder::FalseyValueParser::new())]
        no_watch: bool,
        /// Never publish paths matching this gitignore-style pattern (repeatable; applied
        /// after DIR/.treecastignore). Env: comma-separated.
        #[arg(
            long = "ignore",
            value_name = "PATTERN",
            env = "TREECAST_IGNORE",
            value_delimiter = ','
        )]
        ignore: Vec<String>,
        /// Publish even if DIR looks lost: much smaller than the last revision, or older than
        /// what the swarm holds (the next revision number still follows the swarm's).
        #[arg(long, env = "TREECAST_FORCE")]
        force: bool,
        /// First rebuild DIR from the swarm (the newest revision signed by the key), then
        /// publish: for a publisher that lost its files or its state.
        #[arg(long)]
        restore: bool,
        /// The swarm to restore when DIR has no state left (with --restore), or to take over.
        #[arg(long, env = "TREECAST_SWARM_ID", value_name = "UUID")]
        swarm_id: Option<uuid::Uuid>,
        /// Handover records (from `treecast handover`) that make this key the swarm's
        /// publisher: for a new publisher taking a swarm over.
        #[arg(long, env = "TREECAST_SUCCESSION", value_name = "FILE")]
        succession: Option<PathBuf>,
    },
    /// Hand a published swarm over to a new publisher key. Run on the stopped old publisher;
    /// give the file it writes to the new publisher (`publish --succession FILE`).
    /// Subscribers follow the new key from then on and refuse heads signed by the old one.
    Handover {
        /// The published directory.
        dir: PathBuf,
        /// The new publisher's public key (hex, as `keygen` prints it).
        #[arg(long, value_name = "PUBLIC_KEY")]
        to: String,
        /// The first revision the new key signs (default: the next one).
        #[arg(long, value_name = "R")]
        from_revision: Option<u64>,
        /// The current publisher key file (default: DIR/.treecast/publisher.key).
        #[arg(long, env = "TREECAST_KEY")]
        key: Option<PathBuf>,
        /// Where to write the handover records (default: DIR/.treecast/handover.tcs).
        #[arg(long, value_name = "FILE")]
        out: Option<PathBuf>,
    },
    /// Keep DIR an exact, read-only mirror of the newest revision of the swarm in TICKET.
    Subscribe {
        /// The ticket printed by `treecast publish` or `treecast ticket`, or a bare swarm ID
        /// (then --publisher-key is required).
        ticket: String,
        /// The publisher's public key (hex), to pin when TICKET is a bare swarm ID.
        #[arg(long, env = "TREECAST_PUBLISHER_KEY")]
        publisher_key: Option<String>,
        /// The mirror directory: a new or empty one (created if missing), or a mirror of the
        /// same swarm. A directory holding other files is refused unless --adopt.
        dir: PathBuf,
        #[command(flatten)]
        net: NetArgs,
        /// Mirror into DIR although it holds files and no treecast state. Nothing is deleted:
        /// files and directories the revision does not have, and files it has with other
        /// content, are moved to DIR/.treecast/conflicts/; files identical to the revision's
        /// are kept and made read-only.
        #[arg(long, env = "TREECAST_ADOPT")]
        adopt: bool,
        /// Exit 0 as soon as DIR equals the newest revision learned; non-zero if that fails.
        #[arg(long, env = "TREECAST_ONCE")]
        once: bool,
        /// Seconds to wait for a first peer before giving up (with --once).
        #[arg(long, env = "TREECAST_CONNECT_TIMEOUT", default_value_t = 30)]
        connect_timeout: u64,
        /// Print the final status as JSON on stdout (with --once).
        #[arg(long)]
        json: bool,
    },
    /// Print the ticket of a published or mirrored DIR.
    Ticket {
        /// A published or mirrored directory.
        dir: PathBuf,
        /// Leave out dial addresses: swarm ID and publisher key only (peers are then found
        /// through the DHT).
        #[arg(long)]
        no_addrs: bool,
    },
    /// Serve the DHT without joining a swarm: a bootstrap host for others. Prints its addresses.
    DhtNode {
        /// Directory for the node's key.
        #[arg(long, env = "TREECAST_DHT_STATE", default_value = ".treecast-dht")]
        state: PathBuf,
        #[command(flatten)]
        net: NetArgs,
    },
    /// Show where the node running on DIR stands: revision, sync, reachability, peers.
    Status {
        /// The published or mirrored directory of a running node.
        #[arg(default_value = ".")]
        dir: PathBuf,
        /// Print the report as JSON (one line; with --watch, one line per second).
        #[arg(long)]
        json: bool,
        /// Redraw every second until Ctrl-C.
        #[arg(long)]
        watch: bool,
    },
    /// Rehash DIR against the revision it holds; exit 0 only if it matches exactly.
    Verify {
        /// A published or mirrored directory.
        dir: PathBuf,
        /// Print the result as JSON on stdout.
        #[arg(long)]
        json: bool,
    },
    /// Make a new publisher key file (mode 0600) and print its public key.
    Keygen {
        /// Where to write the key; refuses to overwrite.
        out: PathBuf,
    },
    /// Move a publisher key between machines, encrypted with a passphrase.
    Key {
        #[command(subcommand)]
        action: KeyCommand,
    },
    /// Run a self-contained local demo: a publisher and two subscribers on loopback.
    Demo {
        /// Size of the largest sample file, in MiB.
        #[arg(long, default_value_t = 64)]
        size_mib: u64,
    },
}

/// `treecast key …`.
#[derive(Debug, Subcommand)]
pub enum KeyCommand {
    /// Encrypt the publisher key KEY (e.g. DIR/.treecast/publisher.key) into OUT, a text file
    /// safe to copy; asks for a passphrase (Argon2id + ChaCha20-Poly1305).
    Export {
        key: PathBuf,
        out: PathBuf,
        /// Read the passphrase from this file's first line instead of asking (or set
        /// TREECAST_PASSPHRASE).
        #[arg(long, value_name = "FILE")]
        passphrase_file: Option<PathBuf>,
    },
    /// Decrypt an exported key FILE into the key file OUT (mode 0600) and print its public key.
    Import {
        file: PathBuf,
        out: PathBuf,
        /// Read the passphrase from this file's first line instead of asking (or set
        /// TREECAST_PASSPHRASE).
        #[arg(long, value_name = "FILE")]
        passphrase_file: Option<PathBuf>,
    },
}

/// The passphrase: from `file`, else `TREECAST_PASSPHRASE`, else asked on the terminal
/// (twice when `confirm`).
fn passphrase(file: Option<&std::path::Path>, confirm: bool) -> Result<String> {
    if let Some(f) = file {
        let text = std::fs::read_to_string(f)
            .with_context(|| format!("reading the passphrase from {}", f.display()))?;
        return Ok(text.lines().next().unwrap_or("").to_string());
    }
    if let Ok(p) = std::env::var("TREECAST_PASSPHRASE") {
        return Ok(p);
    }
    if !std::io::IsTerminal::is_terminal(&std::io::stdin()) {
        bail!("no passphrase: use --passphrase-file or TREECAST_PASSPHRASE when not on a terminal");
    }
    let first = rpassword::prompt_password("passphrase: ").context("reading the passphrase")?;
    if confirm {
        let again = rpassword::prompt_password("again: ").context("reading the passphrase")?;
        if again != first {
            bail!("the two passphrases differ");
        }
    }
    Ok(first)
}

fn key_command(action: KeyCommand) -> Result<ExitCode> {
    match action {
        KeyCommand::Export {
            key,
            out,
            passphrase_file,
        } => {
            let k = PublisherKey::load(&key)?;
            let pass = passphrase(passphrase_file.as_deref(), true)?;
            let text = crate::trust::export_key(&k, &pass)?;
            use std::io::Write;
            use std::os::unix::fs::OpenOptionsExt;
            let mut f = std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(&out)
                .with_context(|| format!("creating {} (it must not exist yet)", out.display()))?;
            f.write_all(text.as_bytes())
                .and_then(|()| f.sync_all())
                .with_context(|| format!("writing {}", out.display()))?;
            eprintln!(
                "exported publisher key {} to {}",
                crate::node::report::fingerprint(&k.public()),
                out.display()
            );
            println!("{}", k.public());
            Ok(ExitCode::SUCCESS)
        }
        KeyCommand::Import {
            file,
            out,
            passphrase_file,
        } => {
            let text = std::fs::read_to_string(&file)
                .with_context(|| format!("reading {}", file.display()))?;
            let pass = passphrase(passphrase_file.as_deref(), false)?;
            let k = crate::trust::import_key(&text, &pass)
                .with_context(|| format!("importing {}", file.display()))?;
            k.save_new(&out)?;
            eprintln!(
                "imported publisher key {} into {}",
                crate::node::report::fingerprint(&k.public()),
                out.display()
            );
            println!("{}", k.public());
            Ok(ExitCode::SUCCESS)
        }
    }
}

/// Run a parsed command line.
pub async fn run(cli: Cli) -> Result<ExitCode> {
    match cli.command {
        Command::Publish {
            dir,
            net,
            key,
            rescan_secs,
            no_watch,
            ignore,
            force,
            restore,
            swarm_id,
            succession,
        } => {
            tree_to_publish(&dir, restore)?;
            let mut config = node_config(&dir, &net)?;
            config.rescan_interval = Duration::from_secs(rescan_secs.max(1));
            config.watch = !no_watch;
            config.ignore = ignore;
            config.force = force;
            config.swarm_id = swarm_id;
            if let Some(file) = succession {
                let text = std::fs::read_to_string(&file)
                    .with_context(|| format!("reading {}", file.display()))?;
                config.succession = crate::trust::Succession::from_text(&text)
                    .with_context(|| format!("reading handover records from {}", file.display()))?;
            }
            let key_path = key.unwrap_or_else(|| config.state_dir().join("publisher.key"));
            if restore && !key_path.exists() {
                bail!(
                    "--restore needs the publisher key that signed the swarm: {} does not exist \
                     (pass --key, or `treecast key import`)",
                    key_path.display()
                );
            }
            let key = PublisherKey::load_or_create(&key_path)
                .with_context(|| format!("publisher key {}", key_path.display()))?;
            if restore {
                let revision = Node::restore(config.clone(), &key)
                    .await
                    .context("restoring from the swarm")?;
                eprintln!(
                    "restored {} to revision {revision} from the swarm",
                    dir.display()
                );
            }
            publish(config, key).await
        }
        Command::Subscribe {
            ticket,
            publisher_key,
            dir,
            net,
            adopt,
            once,
            connect_timeout,
            json,
        } => {
            let ticket = read_ticket(&ticket, publisher_key.as_deref())?;
            mirror_dir(&dir)?;
            let mut config = node_config(&dir, &net)?;
            config.connect_timeout = Duration::from_secs(connect_timeout);
            config.adopt = adopt;
            subscribe(config, ticket, once, json).await
        }
        Command::Verify { dir, json } => verify(&dir, json),
        Command::Status { dir, json, watch } => status(&dir, json, watch).await,
        Command::Ticket { dir, no_addrs } => {
            let path = dir.join(crate::config::STATE_DIR).join("ticket");
            let text = std::fs::read_to_string(&path).with_context(|| {
                format!(
                    "no ticket at {} (has DIR been published or subscribed?)",
                    path.display()
                )
            })?;
            let ticket: Ticket = text.parse().context("reading the stored ticket")?;
            let ticket = if no_addrs {
                ticket.without_addrs()
            } else {
                ticket
            };
            println!("{ticket}");
            Ok(ExitCode::SUCCESS)
        }
        Command::DhtNode { state, net } => {
            let mut config = node_config(&state, &net)?;
            config.relay_circuit_bytes = Some(net.relay_max_circuit_mib << 20);
            // A DHT node serves the swarm's own DHT and has no swarm to announce.
            config.public_dht = None;
            let node = Node::dht_node(config).await?;
            for addr in node.listen_addrs() {
                println!("{addr}");
            }
            ctrl_c().await?;
            node.shutdown().await;
            Ok(ExitCode::SUCCESS)
        }
        Command::Keygen { out } => {
            let key = PublisherKey::generate();
            key.save_new(&out)?;
            println!("{}", key.public());
            Ok(ExitCode::SUCCESS)
        }
        Command::Demo { size_mib } => crate::demo::run(size_mib).await,
        Command::Key { action } => key_command(action),
        Command::Handover {
            dir,
            to,
            from_revision,
            key,
            out,
        } => {
            let to = crate::trust::PublisherPublicKey::from_hex(&to).context("reading --to")?;
            let key_path =
                key.unwrap_or_else(|| dir.join(crate::config::STATE_DIR).join("publisher.key"));
            let key = PublisherKey::load(&key_path)?;
            let chain = Node::handover(&dir, &key, to, from_revision)?;
            let out =
                out.unwrap_or_else(|| dir.join(crate::config::STATE_DIR).join("handover.tcs"));
            let text = format!(
                "# treecast handover records: give this file to the new publisher\n{}",
                crate::trust::Succession::to_text(&chain)
            );
            std::fs::write(&out, text).with_context(|| format!("writing {}", out.display()))?;
            let from = chain.last().map_or(0, |l| l.body.from_revision);
            eprintln!(
                "handed over to {} from revision {from}; this key no longer publishes {}.\n\
                 On the new publisher: treecast publish DIR --key NEW.key --succession {} --swarm-id {} [--restore]",
                crate::node::report::fingerprint(&to),
                dir.display(),
                out.display(),
                chain.last().map(|l| l.body.swarm_id.to_string()).unwrap_or_default()
            );
            println!("{}", out.display());
            Ok(ExitCode::SUCCESS)
        }
    }
}

/// The tree `publish` is given must be a directory that is there: a mistyped path would
/// otherwise start a swarm of an empty tree. `--restore` rebuilds a lost tree, so with it a
/// missing DIR is created.
fn tree_to_publish(dir: &std::path::Path, restore: bool) -> Result<()> {
    match std::fs::metadata(dir) {
        Ok(m) if m.is_dir() => Ok(()),
        Ok(_) => bail!(
            "{} is not a directory: treecast publishes a directory tree (put the file in a \
             directory and publish that)",
            dir.display()
        ),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound && restore => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => bail!(
            "{} does not exist: check the path (to publish an empty tree, create the directory \
             first; to rebuild a lost tree from its swarm, use --restore)",
            dir.display()
        ),
        Err(e) => Err(e).with_context(|| format!("reading {}", dir.display())),
    }
}

/// A mirror is a directory: say so when DIR is something else, rather than fail to create it.
fn mirror_dir(dir: &std::path::Path) -> Result<()> {
    match std::fs::metadata(dir) {
        Ok(m) if !m.is_dir() => bail!(
            "{} is not a directory: a mirror is a directory (give a new or empty one)",
            dir.display()
        ),
        _ => Ok(()),
    }
}

fn node_config(dir: &std::path::Path, net: &NetArgs) -> Result<NodeConfig> {
    let mut config = NodeConfig::new(dir);
    config.listen = parse_addrs(&net.listen)?;
    config.bootstrap = parse_addrs(&net.bootstrap)?;
    config.max_upload = net.max_upload;
    config.max_download = net.max_download;
    config.upload_budget = net.upload_budget;
    config.metrics = net.metrics;
    config.http = net.http;
    config.http_token = net.http_token.clone();
    config.max_peers = net.max_peers;
    config.mdns = !net.no_mdns;
    // A loopback listener has no router to ask for a port forward.
    let loopback = |a: &libp2p::Multiaddr| crate::net::ip_of(a).is_some_and(|ip| ip.is_loopback());
    config.upnp = !net.no_upnp && config.listen.iter().any(|a| !loopback(a));
    config.public_dht = public_dht(net, &config.listen)?;
    config.external = parse_addrs(&net.external)?;
    config.relay_circuit_bytes = net.relay.then_some(net.relay_max_circuit_mib << 20);
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    Ok(config)
}

/// The public DHT's bootstrap list, or `None` when it is off: `--no-public-dht`, or only
/// loopback listeners (nothing outside this machine could reach the node) and no bootstrap list
/// of one's own.
fn public_dht(net: &NetArgs, listen: &[Multiaddr]) -> Result<Option<Vec<Multiaddr>>> {
    let own = parse_addrs(&net.public_dht_bootstrap)?;
    for addr in &own {
        crate::net::bootstrap_peer(addr).context("--public-dht-bootstrap")?;
    }
    let loopback = |a: &Multiaddr| crate::net::ip_of(a).is_some_and(|ip| ip.is_loopback());
    let local_only = listen.iter().all(loopback);
    Ok(match (net.no_public_dht, own.is_empty()) {
        (true, _) => None,
        (false, true) if local_only => None,
        (false, true) => Some(crate::net::default_bootstrap()),
        (false, false) => Some(own),
    })
}

fn parse_addrs(list: &[String]) -> Result<Vec<Multiaddr>> {
    list.iter()
        .filter(|s| !s.trim().is_empty())
        .map(|s| parse_addr(s.trim()).map_err(Into::into))
        .collect()
}

/// A ticket, or a bare swarm ID with the publisher key given separately.
fn read_ticket(text: &str, publisher_key: Option<&str>) -> Result<Ticket> {
    let Ok(swarm_id) = text.trim().parse::<uuid::Uuid>() else {
        return text.parse().map_err(|e| not_a_ticket(text, e));
    };
    let Some(key) = publisher_key else {
        bail!("{swarm_id} is a bare swarm ID: pass the publisher's key with --publisher-key");
    };
    let publisher =
        crate::trust::PublisherPublicKey::from_hex(key).context("reading --publisher-key")?;
    Ok(Ticket {
        swarm_id,
        publisher,
        addrs: Vec::new(),
    })
}

/// What `subscribe` says of a TICKET that is not one: why, and what a ticket looks like.
fn not_a_ticket(text: &str, why: crate::trust::TrustError) -> anyhow::Error {
    let text = text.trim();
    let mut shown: String = text.chars().take(24).collect();
    if shown.len() < text.len() {
        shown.push('…');
    }
    anyhow::anyhow!(
        "`{shown}` is not a valid treecast ticket: {why}.\n\
         A ticket is {}, as `treecast publish` prints it (the publisher also keeps it in \
         DIR/.treecast/ticket; `treecast ticket DIR` prints it again). A bare swarm ID works too, \
         with --publisher-key.",
        Ticket::SHAPE
    )
}

async fn publish(mut config: NodeConfig, key: PublisherKey) -> Result<ExitCode> {
    let progress = std::sync::Arc::new(crate::tree::ScanProgress::default());
    config.scan_progress = Some(progress.clone());
    let shown = tokio::spawn(show_scan(progress, config.dir.display().to_string()));
    let started = Node::publish(config, key).await;
    shown.abort();
    let _ = shown.await;
    let node = started?;
    println!("{}", node.ticket());
    for addr in node.listen_addrs() {
        tracing::info!(%addr, "listening");
    }
    ctrl_c().await?;
    node.shutdown().await;
    Ok(ExitCode::SUCCESS)
}

/// Show the first scan's progress until aborted: a spinner with files and bytes hashed when
/// stderr is a terminal, a plain line every 10 s otherwise.
async fn show_scan(progress: std::sync::Arc<crate::tree::ScanProgress>, dir: String) {
    use std::io::IsTerminal;
    use std::sync::atomic::Ordering::Relaxed;
    let human = crate::node::report::human_bytes;
    let line = |p: &crate::tree::ScanProgress| {
        format!(
            "scanning {dir}: {} files, {} hashed",
            p.files.load(Relaxed),
            human(p.bytes_hashed.load(Relaxed) as f64)
        )
    };
    if std::io::stderr().is_terminal() {
        let bar = indicatif::ProgressBar::new_spinner();
        bar.enable_steady_tick(Duration::from_millis(120));
        struct Clear(indicatif::ProgressBar);
        impl Drop for Clear {
            fn drop(&mut self) {
                self.0.finish_and_clear();
            }
        }
        let bar = Clear(bar);
        loop {
            bar.0.set_message(line(&progress));
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    } else {
        let mut tick = tokio::time::interval(Duration::from_secs(10));
        tick.tick().await;
        loop {
            tick.tick().await;
            eprintln!("{}", line(&progress));
        }
    }
}

/// Wait for Ctrl-C (SIGINT) or SIGTERM (what `kill` and systemd send), then say we are
/// shutting down.
async fn ctrl_c() -> Result<()> {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        let mut term = signal(SignalKind::terminate()).context("waiting for SIGTERM")?;
        tokio::select! {
            r = tokio::signal::ctrl_c() => r.context("waiting for Ctrl-C")?,
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    tokio::signal::ctrl_c()
        .await
        .context("waiting for Ctrl-C")?;
    tracing::info!("shutting down");
    Ok(())
}

async fn subscribe(config: NodeConfig, ticket: Ticket, once: bool, json: bool) -> Result<ExitCode> {
    let node = Node::subscribe(config, ticket).await?;
    let mut bar = Progress::new();
    let mut status = node.status();
    let stop = ctrl_c();
    tokio::pin!(stop);
    let mut interrupted = false;
    let result = loop {
        let s = status.borrow_and_update().clone();
        bar.show(&s);
        if once && s.synced {
            break Ok(s);
        }
        if once && s.error.is_some() && node_idle(&s) {
            break Err(s);
        }
        tokio::select! {
            changed = status.changed() => if changed.is_err() { break Err(s) },
            _ = &mut stop => {
                interrupted = true;
                // The newest status: the revision may have been applied in the meantime.
                break Ok(status.borrow().clone());
            }
        }
    };
    bar.finish();
    node.shutdown().await;
    match result {
        // `--once` promises the newest revision: stopped short of it, say so and exit as
        // shells report an interrupted command (128 + SIGINT), not with success.
        Ok(s) if once && interrupted && !s.synced => {
            if json {
                println!("{}", status_json(&s));
            }
            eprintln!(
                "interrupted before the newest revision was applied; the mirror is at {}",
                s.revision
                    .map_or("no revision".to_string(), |r| format!("revision {r}"))
            );
            Ok(ExitCode::from(130))
        }
        Ok(s) => {
            if json {
                println!("{}", status_json(&s));
            } else if once {
                eprintln!("mirror is at revision {}", s.revision.unwrap_or(0));
            }
            Ok(ExitCode::SUCCESS)
        }
        Err(s) => {
            if json {
                println!("{}", status_json(&s));
            }
            bail!(
                "could not reach the newest revision: {}",
                s.error.unwrap_or_else(|| "node stopped".into())
            )
        }
    }
}

fn node_idle(s: &Status) -> bool {
    s.progress.is_none()
}

/// Download progress: a bar when stderr is a terminal, a plain line every 10 s otherwise
/// (logs, journald, CI).
struct Progress {
    bar: Option<indicatif::ProgressBar>,
    last_line: Option<std::time::Instant>,
}

impl Progress {
    fn new() -> Self {
        use std::io::IsTerminal;
        let bar = std::io::stderr().is_terminal().then(|| {
            let bar = indicatif::ProgressBar::new(0);
            bar.set_style(
                indicatif::ProgressStyle::with_template(
                    "{spinner} {msg} [{bar:40}] {bytes}/{total_bytes} {bytes_per_sec} eta {eta}",
                )
                .expect("valid template")
                .progress_chars("=> "),
            );
            bar
        });
        Progress {
            bar,
            last_line: None,
        }
    }

    fn show(&mut self, s: &Status) {
        let Some((done, total)) = s.progress else {
            return;
        };
        let revision = s.newest_known.unwrap_or(0);
        match &self.bar {
            Some(bar) => {
                bar.set_length(total);
                bar.set_position(done);
                bar.set_message(format!("revision {revision}"));
            }
            None => {
                let due = self
                    .last_line
                    .is_none_or(|t| t.elapsed() >= Duration::from_secs(10));
                if due || done == total {
                    self.last_line = Some(std::time::Instant::now());
                    let human = crate::node::report::human_bytes;
                    eprintln!(
                        "revision {revision}: {} of {} verified ({:.0}%)",
                        human(done as f64),
                        human(total as f64),
                        if total == 0 {
                            100.0
                        } else {
                            done as f64 * 100.0 / total as f64
                        }
                    );
                }
            }
        }
    }

    fn finish(&self) {
        if let Some(bar) = &self.bar {
            bar.finish_and_clear();
        }
    }
}

fn status_json(s: &Status) -> String {
    serde_json::to_string(s).expect("status serialises")
}

async fn status(dir: &std::path::Path, json: bool, watch: bool) -> Result<ExitCode> {
    use std::io::IsTerminal;
    let once = || async {
        let report = crate::node::report::query(dir).await?;
        anyhow::Ok(if json {
            serde_json::to_string(&report).expect("report serialises")
        } else {
            report.render()
        })
    };
    if !watch {
        print_out(once().await?.trim_end())?;
        return Ok(ExitCode::SUCCESS);
    }
    let clear = !json && std::io::stdout().is_terminal();
    let stop = ctrl_c();
    tokio::pin!(stop);
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    loop {
        tokio::select! {
            _ = &mut stop => return Ok(ExitCode::SUCCESS),
            _ = tick.tick() => {}
        }
        let text = match once().await {
            Ok(t) => t,
            Err(e) if json => return Err(e),
            Err(e) => format!("{e:#}\n(retrying every second; Ctrl-C to stop)"),
        };
        // Home the cursor and clear the screen, then draw.
        let home = if clear { "\x1b[H\x1b[2J" } else { "" };
        if !print_out(&format!("{home}{}", text.trim_end()))? {
            return Ok(ExitCode::SUCCESS);
        }
    }
}

/// Print `text` and a newline on stdout, flushed. Returns false if the reader went away
/// (`treecast status | head -3`): that ends the output quietly, as it does for other
/// command-line tools, where `println!` would panic.
fn print_out(text: &str) -> std::io::Result<bool> {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    match writeln!(out, "{text}").and_then(|()| out.flush()) {
        Ok(()) => Ok(true),
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Ok(false),
        Err(e) => Err(e),
    }
}

fn verify(dir: &std::path::Path, json: bool) -> Result<ExitCode> {
    let (revision, report) = crate::node::verify_dir(dir)?;
    if json {
        let out = serde_json::json!({
            "revision": revision,
            "ok": report.ok(),
            "files_checked": report.files_checked,
            "bytes_checked": report.bytes_checked,
            "problems": report.problems,
        });
        println!("{out}");
    } else if report.ok() {
        println!(
            "ok: {} matches revision {revision} ({} files, {} bytes rehashed)",
            dir.display(),
            report.files_checked,
            report.bytes_checked
        );
    } else {
        println!("{} does NOT match revision {revision}:", dir.display());
        for p in &report.problems {
            println!("  {p}");
        }
    }
    Ok(if report.ok() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

/// The async runtime: half as many worker threads as cores (at least one), unless
/// `TOKIO_WORKER_THREADS` says otherwise. Hashing and file I/O run on the blocking pool and QUIC
/// drives each connection on one task, so more workers add little but wakeups between threads:
/// on 2 cores, with a publisher and a subscriber on one machine, one worker each moved a 1 GiB
/// loopback transfer from about 345 to about 390 MB/s, using less CPU.
pub fn runtime() -> std::io::Result<tokio::runtime::Runtime> {
    let mut builder = tokio::runtime::Builder::new_multi_thread();
    builder.enable_all();
    if std::env::var_os("TOKIO_WORKER_THREADS").is_none() {
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        builder.worker_threads((cores / 2).max(1));
    }
    builder.build()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rates_parse() {
        assert_eq!(parse_rate("500K"), Ok(500_000));
        assert_eq!(parse_rate("2m"), Ok(2_000_000));
        assert_eq!(parse_rate("1.5G"), Ok(1_500_000_000));
        assert_eq!(parse_rate("123"), Ok(123));
        assert!(parse_rate("fast").is_err());
        assert!(parse_rate("0").is_err());
    }

    #[test]
    fn bare_swarm_id_needs_a_publisher_key() {
        let key = crate::trust::PublisherKey::generate().public();
        let id = uuid::Uuid::new_v4();
        assert!(read_ticket(&id.to_string(), None).is_err());
        let t = read_ticket(&id.to_string(), Some(&key.to_string())).unwrap();
        assert_eq!((t.swarm_id, t.publisher, t.addrs.len()), (id, key, 0));
        assert!(read_ticket(&id.to_string(), Some("nothex")).is_err());
    }

    #[test]
    fn flags_parse() {
        Cli::try_parse_from([
            "treecast",
            "publish",
            "d",
            "--max-upload",
            "20M",
            "--max-peers",
            "8",
        ])
        .unwrap();
        assert!(Cli::try_parse_from(["treecast", "publish", "d", "--max-upload", "x"]).is_err());
        let budget =
            |v: &str| Cli::try_parse_from(["treecast", "publish", "d", "--upload-budget", v]);
        assert!(budget("0").is_ok() && budget("1M").is_ok());
        assert!(budget("x").is_err() && budget("-1").is_err());
        let set = |argv: Result<Cli, clap::Error>| match argv.unwrap().command {
            Command::Publish { net, .. } => net.upload_budget,
            _ => unreachable!(),
        };
        assert_eq!(
            set(Cli::try_parse_from(["treecast", "publish", "d"])),
            crate::config::DEFAULT_UPLOAD_BUDGET,
            "the default"
        );
        assert_eq!(crate::config::DEFAULT_UPLOAD_BUDGET, 0, "off by default");
        assert_eq!(set(budget("0")), 0, "0 turns it off");
        assert_eq!(set(budget("2M")), 2_000_000);
    }

    #[test]
    fn the_public_dht_is_on_by_default_and_off_when_told_or_on_loopback_only() {
        let net = |args: &[&str]| {
            let argv = ["treecast", "publish", "d"].iter().chain(args);
            match Cli::try_parse_from(argv).unwrap().command {
                Command::Publish { net, .. } => net,
                _ => unreachable!(),
            }
        };
        let dht = |args: &[&str]| {
            let net = net(args);
            let listen = parse_addrs(&net.listen).unwrap();
            public_dht(&net, &listen)
        };
        let amino = crate::net::default_bootstrap();
        assert_eq!(dht(&[]).unwrap(), Some(amino), "0.0.0.0: Amino's list");
        assert_eq!(dht(&["--no-public-dht"]).unwrap(), None);
        assert_eq!(dht(&["--listen", "127.0.0.1:0"]).unwrap(), None);
        let own =
            "/ip4/127.0.0.1/tcp/4001/p2p/12D3KooWLMaMHKABs1CiEsHv7u3UFrbp4z6As43GB9awawptuLym";
        let listed = dht(&["--listen", "127.0.0.1:0", "--public-dht-bootstrap", own]).unwrap();
        assert_eq!(listed, Some(vec![own.parse().unwrap()]), "its own list: on");
        let none = ["--public-dht-bootstrap", own, "--no-public-dht"];
        assert_eq!(dht(&none).unwrap(), None, "the flag wins");
        let err = dht(&["--public-dht-bootstrap", "/ip4/198.18.1.1/tcp/4001"]).unwrap_err();
        assert!(format!("{err:#}").contains("/p2p/"), "{err:#}");
    }
}
