//! `sluice-edge`: parse config, set up logs, run until SIGTERM/SIGINT, drain.

use clap::Parser;
use sluice_edge::config::{Config, LogFormat};
use tokio_util::sync::CancellationToken;

/// jemalloc returns what a burst freed to the OS (`allocator.rs`).
#[cfg(feature = "jemalloc")]
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let config = Config::parse();
    init_logs(config.log_format);
    if let Err(e) = config.validate() {
        eprintln!("sluice-edge: {e}");
        return std::process::ExitCode::from(2);
    }
    match sluice_edge::fdlimit::ensure(config.max_connections, config.max_open_connections()) {
        Ok(limit) => tracing::info!(open_files = limit, "open-file limit"),
        Err(e) => {
            eprintln!("sluice-edge: {e}");
            return std::process::ExitCode::from(2);
        }
    }
    #[cfg(feature = "jemalloc")]
    match sluice_edge::allocator::configure() {
        Ok(how) => tracing::info!(allocator = %how, "memory"),
        Err(e) => {
            tracing::warn!(cause = %e, "cannot configure the allocator; freed memory may stay with the process")
        }
    }
    tracing::info!(config = %config.redacted(), "starting");
    let listeners = match sluice_edge::Listeners::bind(&config).await {
        Ok(l) => l,
        Err(e) => {
            eprintln!("sluice-edge: {e}");
            return std::process::ExitCode::from(2);
        }
    };
    let shutdown = CancellationToken::new();
    tokio::spawn(signal(shutdown.clone()));
    match sluice_edge::run(config, listeners, shutdown).await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("sluice-edge: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

fn init_logs(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}

/// Fires `token` on SIGTERM or Ctrl-C.
async fn signal(token: CancellationToken) {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = term.recv() => {}
                    _ = tokio::signal::ctrl_c() => {}
                }
            }
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
    tracing::info!("shutdown signal received");
    token.cancel();
}
