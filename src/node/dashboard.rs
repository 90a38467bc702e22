//! The web dashboard's page, embedded in the binary: HTML, CSS and one script, no build step
//! and nothing fetched from elsewhere (the page works offline and under `http`'s strict
//! Content-Security-Policy: no inline script or style). The script draws everything from
//! `/api/status`'s event stream, the throughput chart too (SVG, written here, no library).
//!
//! Must not: hold data; what the page shows comes from the API, behind its token.

/// `/`.
pub const INDEX_HTML: &str = include_str!("dashboard/index.html");
/// `/dashboard.css`.
pub const STYLE_CSS: &str = include_str!("dashboard/dashboard.css");
/// `/dashboard.js`.
pub const SCRIPT_JS: &str = include_str!("dashboard/dashboard.js");
