//! The congestion controller of our QUIC connections: which one (`TREECAST_QUIC_CC`, BBR unless
//! set) and the quinn factory for it, handed to libp2p-quic (vendored with the one change that
//! lets it take one: `vendor/libp2p-quic/TREECAST-PATCH.md`). A leaf: no I/O but reading the
//! environment variable.
//!
//! Why BBR: quinn's default, Cubic, takes every lost packet as congestion and shrinks its
//! window, so under random loss a connection carries at most about MSS/RTT × 1.22/√p (Mathis
//! et al.): some 3 Mbit/s at 1% loss and 1.5 Mbit/s at 5% with a 40 ms RTT and 1,200–1,450-byte
//! packets, far under a 50 Mbit/s link. BBR paces at the bottleneck bandwidth and minimum RTT
//! it measures, and does not cut its rate for loss.
//!
//! Every controller is wrapped to count the bytes a node's connections put on the wire
//! ([`WireCounter`]): the upload budget (`swarm::UploadBudget`) takes a chunk as gone once that
//! count has passed it, which a QUIC stream's write does not tell (quinn queues up to 10 MB a
//! connection and the write completes at once).

use std::any::Any;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Instant;

use quinn::congestion::{BbrConfig, Controller, ControllerFactory, ControllerMetrics, CubicConfig};
use quinn_proto::RttEstimator;

use super::error::NetError;

/// The environment variable that picks the controller: `bbr` (the default) or `cubic`.
pub const QUIC_CC_ENV: &str = "TREECAST_QUIC_CC";

/// A congestion controller our QUIC connections can run.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Congestion {
    /// Bottleneck bandwidth and round-trip time: random loss does not slow it down.
    #[default]
    Bbr,
    /// Loss-based (quinn's own default): every lost packet shrinks the window.
    Cubic,
}

impl Congestion {
    /// The controller named by `TREECAST_QUIC_CC`, BBR when it is unset or empty. Any other
    /// value is an error that names it and the values allowed.
    pub fn from_env() -> Result<Self, NetError> {
        match std::env::var(QUIC_CC_ENV) {
            Ok(v) if !v.is_empty() => v.parse(),
            Ok(_) | Err(std::env::VarError::NotPresent) => Ok(Self::default()),
            Err(std::env::VarError::NotUnicode(v)) => {
                Err(NetError::Congestion(v.to_string_lossy().into_owned()))
            }
        }
    }

    /// The quinn factory that builds this controller for each connection.
    pub fn factory(self) -> Arc<dyn ControllerFactory + Send + Sync> {
        match self {
            Self::Bbr => Arc::new(BbrConfig::default()),
            Self::Cubic => Arc::new(CubicConfig::default()),
        }
    }

    /// The factory of this controller, each one counting what it sends on `wire`.
    pub fn counting_factory(self, wire: WireCounter) -> Arc<dyn ControllerFactory + Send + Sync> {
        Arc::new(CountingFactory {
            inner: self.factory(),
            wire,
        })
    }

    /// Its name, as `TREECAST_QUIC_CC` spells it.
    pub fn name(self) -> &'static str {
        match self {
            Self::Bbr => "bbr",
            Self::Cubic => "cubic",
        }
    }
}

/// Bytes of ack-eliciting packets a node's QUIC connections have sent, all connections
/// together, as their congestion controllers saw them go (retransmissions included).
#[derive(Debug, Clone, Default)]
pub struct WireCounter(Arc<AtomicU64>);

impl WireCounter {
    /// Bytes sent so far.
    pub fn get(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }
}

struct CountingFactory {
    inner: Arc<dyn ControllerFactory + Send + Sync>,
    wire: WireCounter,
}

impl ControllerFactory for CountingFactory {
    fn build(self: Arc<Self>, now: Instant, current_mtu: u16) -> Box<dyn Controller> {
        Box::new(Counting {
            inner: self.inner.clone().build(now, current_mtu),
            wire: self.wire.clone(),
        })
    }
}

/// A controller that counts what it sends and otherwise is the one it wraps.
struct Counting {
    inner: Box<dyn Controller>,
    wire: WireCounter,
}

impl Controller for Counting {
    fn on_sent(&mut self, now: Instant, bytes: u64, last_packet_number: u64) {
        self.wire.0.fetch_add(bytes, Ordering::Relaxed);
        self.inner.on_sent(now, bytes, last_packet_number);
    }

    fn on_ack(
        &mut self,
        now: Instant,
        sent: Instant,
        bytes: u64,
        app_limited: bool,
        rtt: &RttEstimator,
    ) {
        self.inner.on_ack(now, sent, bytes, app_limited, rtt);
    }

    fn on_end_acks(
        &mut self,
        now: Instant,
        in_flight: u64,
        app_limited: bool,
        largest_packet_num_acked: Option<u64>,
    ) {
        self.inner
            .on_end_acks(now, in_flight, app_limited, largest_packet_num_acked);
    }

    fn on_congestion_event(
        &mut self,
        now: Instant,
        sent: Instant,
        is_persistent_congestion: bool,
        lost_bytes: u64,
    ) {
        self.inner
            .on_congestion_event(now, sent, is_persistent_congestion, lost_bytes);
    }

    fn on_mtu_update(&mut self, new_mtu: u16) {
        self.inner.on_mtu_update(new_mtu);
    }

    fn window(&self) -> u64 {
        self.inner.window()
    }

    fn metrics(&self) -> ControllerMetrics {
        self.inner.metrics()
    }

    fn clone_box(&self) -> Box<dyn Controller> {
        Box::new(Counting {
            inner: self.inner.clone_box(),
            wire: self.wire.clone(),
        })
    }

    fn initial_window(&self) -> u64 {
        self.inner.initial_window()
    }

    fn into_any(self: Box<Self>) -> Box<dyn Any> {
        self.inner.into_any()
    }
}

impl std::str::FromStr for Congestion {
    type Err = NetError;

    fn from_str(s: &str) -> Result<Self, NetError> {
        match s.trim().to_ascii_lowercase().as_str() {
            "bbr" => Ok(Self::Bbr),
            "cubic" => Ok(Self::Cubic),
            _ => Err(NetError::Congestion(s.to_string())),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_parse_back() {
        for cc in [Congestion::Bbr, Congestion::Cubic] {
            assert_eq!(cc.name().parse::<Congestion>().unwrap(), cc);
        }
        assert_eq!(" BBR ".parse::<Congestion>().unwrap(), Congestion::Bbr);
        assert_eq!(Congestion::default(), Congestion::Bbr);
    }

    #[test]
    fn an_unknown_name_is_an_error_naming_it() {
        let err = "reno".parse::<Congestion>().unwrap_err().to_string();
        assert!(err.contains("\"reno\""), "{err}");
        assert!(err.contains("bbr") && err.contains("cubic"), "{err}");
    }

    #[test]
    fn each_builds_its_own_controller() {
        use quinn::congestion::{Bbr, Cubic};
        let now = std::time::Instant::now();
        let bbr = Congestion::Bbr.factory().build(now, 1200);
        assert!(bbr.into_any().downcast::<Bbr>().is_ok());
        let cubic = Congestion::Cubic.factory().build(now, 1200);
        assert!(cubic.into_any().downcast::<Cubic>().is_ok());
    }
}
