//! The router binary: config, logging, metrics, signals, then [`presence_router::run`].

use std::process::ExitCode;

use anyhow::Context;
use presence_router::{app::App, config::Config, logging};
use tokio::net::TcpListener;

#[tokio::main]
async fn main() -> ExitCode {
    let config = Config::load();
    logging::init(config.log_format);
    match serve(config).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            logging::fatal(&e);
            ExitCode::FAILURE
        }
    }
}

async fn serve(mut config: Config) -> anyhow::Result<()> {
    // Before anything opens sockets: shares the fd limit out, lowering MAX_CONNECTIONS (and
    // the defaults of MAX_HANDSHAKES and FD_RESERVE) to what it allows.
    presence_router::fds::apply(&mut config)?;
    let metrics = presence_router::metrics::install()?;
    let app = App::start(&config, Some(metrics)).await?;
    let addr = std::net::SocketAddr::new(config.host, config.port);
    let listener = presence_router::bind(&config).with_context(|| format!("cannot listen on {addr}"))?;
    let metrics_listener = match config.metrics_addr {
        Some(addr) => {
            let metrics =
                TcpListener::bind(addr).await.with_context(|| format!("cannot listen on {addr} (--metrics-addr)"))?;
            tracing::info!(
                addr = %metrics.local_addr()?,
                "serving /metrics on the metrics address only, and the probes (/livez, /readyz, /healthz) there too"
            );
            Some(metrics)
        }
        None => {
            tracing::info!(addr = %listener.local_addr()?, "serving /metrics on the public port (no --metrics-addr)");
            None
        }
    };
    // One line on stdout, so scripts and tests learn the port when it was 0.
    println!("listening on {}", listener.local_addr()?);

    let shutdown = app.shutdown.clone();
    tokio::spawn(async move {
        wait_for_signal().await;
        tracing::info!("shutting down: closing connections with 1012");
        shutdown.cancel();
    });
    presence_router::run_with_metrics(listener, metrics_listener, app).await
}

async fn wait_for_signal() {
    use tokio::signal::unix::{SignalKind, signal};
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
