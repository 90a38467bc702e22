//! The `treecast` binary: parse the command line, set up tracing, run, map errors to exit codes.

fn main() -> std::process::ExitCode {
    let cli = match treecast::cli::parse() {
        Ok(cli) => cli,
        Err(e) => e.exit(),
    };
    // The demo narrates on stdout; its nodes only log warnings unless RUST_LOG says otherwise.
    let default_filter = match cli.command {
        treecast::cli::Command::Demo { .. } => "warn",
        _ => "info,libp2p=warn,libp2p_kad=error",
    };
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default_filter)),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let runtime = match treecast::cli::runtime() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    match runtime.block_on(treecast::cli::run(cli)) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
