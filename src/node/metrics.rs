//! Prometheus metrics: the node's status report in the Prometheus text format, which `http`
//! serves at `/metrics` (`--metrics ADDR`, and `--http ADDR` beside the dashboard).

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

use super::report::StatusReport;

type Labels = Vec<(&'static str, String)>;

fn counter(registry: &mut Registry, name: &str, help: &str, value: u64) {
    let c: Counter = Counter::default();
    c.inc_by(value);
    registry.register(name, help, c);
}

fn gauge(registry: &mut Registry, name: &str, help: &str, value: i64) {
    let g: Gauge = Gauge::default();
    g.set(value);
    registry.register(name, help, g);
}

/// The Prometheus text exposition of `r`.
pub fn render(r: &StatusReport) -> String {
    let mut reg = Registry::with_prefix("treecast");
    let bytes = Family::<Labels, Counter>::default();
    for (source, b) in &r.traffic.by_source {
        for (direction, n) in [("up", b.up), ("down", b.down)] {
            bytes
                .get_or_create(&vec![
                    ("direction", direction.to_string()),
                    ("source", source.clone()),
                ])
                .inc_by(n);
        }
    }
    reg.register(
        "chunk_bytes",
        "Chunk bytes moved, by direction (up, down) and source (publisher, peer, relay)",
        bytes,
    );
    let c = &r.counters;
    counter(
        &mut reg,
        "chunks_verified",
        "Chunks fetched and verified against their BLAKE3 hash",
        c.chunks_fetched,
    );
    counter(
        &mut reg,
        "chunks_failed",
        "Chunks that failed verification (the sender was banned)",
        c.bad_chunks,
    );
    counter(
        &mut reg,
        "chunks_sent",
        "Chunks served to peers",
        c.chunks_sent,
    );
    counter(
        &mut reg,
        "chunks_local",
        "Chunks copied from files already on disk instead of fetched",
        c.chunks_local,
    );
    counter(
        &mut reg,
        "heads_rejected",
        "Heads refused: bad signature, wrong key or swarm",
        c.heads_rejected,
    );
    counter(
        &mut reg,
        "peers_banned",
        "Peers banned for hostile behaviour",
        c.peers_banned,
    );
    counter(
        &mut reg,
        "connections_refused",
        "Connections refused at the handshake: the peer is banned or over a connection limit",
        c.connections_refused,
    );
    counter(
        &mut reg,
        "chunks_refused_busy",
        "Chunk requests answered busy while the upload budget was full and another peer had bytes out",
        c.chunks_refused_busy,
    );
    counter(
        &mut reg,
        "hostile_frames",
        "Malformed or oversize frames received",
        c.hostile_frames,
    );
    counter(
        &mut reg,
        "dht_lookups",
        "DHT lookups for the swarm's providers and head",
        c.dht_lookups,
    );
    counter(
        &mut reg,
        "pex_dials",
        "Dials started to peers learned by peer exchange",
        c.pex_dials,
    );
    counter(
        &mut reg,
        "pex_dials_refused",
        "Peers learned by peer exchange and refused a dial (over the dial budget)",
        c.pex_dials_refused,
    );
    if let Some(d) = &r.public_dht {
        gauge(
            &mut reg,
            "public_dht_routing_peers",
            "Peers in the public DHT's (Amino's) routing table",
            d.routing_peers as i64,
        );
        gauge(
            &mut reg,
            "public_dht_last_announce_unix_ms",
            "When an announcement of the swarm last reached a public-DHT node (-1: not yet)",
            d.last_announce_unix_ms.map_or(-1, |v| v as i64),
        );
        counter(
            &mut reg,
            "public_dht_providers_found",
            "Providers of the swarm's key the public DHT named",
            d.providers_found,
        );
        counter(
            &mut reg,
            "public_dht_announces",
            "Announcements of the swarm that reached a public-DHT node",
            c.public_dht_announces,
        );
    }
    let punches = Family::<Labels, Counter>::default();
    punches
        .get_or_create(&vec![("result", "ok".to_string())])
        .inc_by(c.hole_punches_ok);
    punches
        .get_or_create(&vec![("result", "failed".to_string())])
        .inc_by(c.hole_punches_failed);
    reg.register(
        "hole_punches",
        "DCUtR hole punch attempts by result",
        punches,
    );
    let peers = Family::<Labels, Gauge>::default();
    for state in ["online", "offline", "banned"] {
        let n = r
            .peers
            .iter()
            .filter(|p| match state {
                "banned" => p.banned,
                "online" => p.online && !p.banned,
                _ => !p.online && !p.banned,
            })
            .count();
        peers
            .get_or_create(&vec![("state", state.to_string())])
            .set(n as i64);
    }
    reg.register("peers", "Known peers by state", peers);
    gauge(
        &mut reg,
        "revision_held",
        "Revision this node holds (-1: none)",
        r.revision.map_or(-1, |v| v as i64),
    );
    gauge(
        &mut reg,
        "revision_newest_known",
        "Newest verified revision heard of (-1: none)",
        r.newest_known.map_or(-1, |v| v as i64),
    );
    gauge(
        &mut reg,
        "synced",
        "1 when the tree equals the newest revision known",
        r.synced as i64,
    );
    if let Some(s) = &r.sync {
        gauge(
            &mut reg,
            "sync_bytes_done",
            "Bytes verified of the download under way",
            s.bytes_done as i64,
        );
        gauge(
            &mut reg,
            "sync_bytes_total",
            "Bytes of the download under way",
            s.bytes_total as i64,
        );
    }
    if let Some(ro) = &r.rollout {
        let rollout = Family::<Labels, Gauge>::default();
        rollout
            .get_or_create(&vec![("state", "holding".to_string())])
            .set(ro.holding as i64);
        rollout
            .get_or_create(&vec![("state", "behind".to_string())])
            .set(ro.behind.len() as i64);
        reg.register(
            "rollout_subscribers",
            "Publisher: online subscribers holding the current revision, and behind it",
            rollout,
        );
    }
    let mut out = String::new();
    prometheus_client::encoding::text::encode(&mut out, &reg).expect("writing to a String");
    out
}
