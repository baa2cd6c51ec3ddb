//! The router binary: config, logging, metrics, signals, then [`presence_router::run`].

use anyhow::Context;
use presence_router::{app::App, config::Config};
use tokio::net::TcpListener;
use tracing_subscriber::EnvFilter;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let mut config = Config::load();
    tracing_subscriber::fmt()
        .with_env_filter(EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info")))
        .with_writer(|| LogWriter)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    // Before anything opens sockets: shares the fd limit out, lowering MAX_CONNECTIONS (and
    // the defaults of MAX_HANDSHAKES and FD_RESERVE) to what it allows.
    presence_router::fds::apply(&mut config)?;
    let metrics = presence_router::metrics::install()?;
    let app = App::start(&config, Some(metrics)).await?;
    let listener = presence_router::bind(&config)?;
    let metrics_listener = match config.metrics_addr {
        Some(addr) => {
            let metrics = TcpListener::bind(addr).await.with_context(|| format!("binding --metrics-addr {addr}"))?;
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

/// Standard error for the log, ignoring write errors: when whoever reads it goes away
/// (`router 2>&1 | head`), the subscriber would report the failed write with `eprintln!`,
/// which panics on a closed stderr and takes down the task that logged (the signal task
/// among them, so SIGTERM was ignored). Logs are lost then; the router keeps working.
struct LogWriter;

impl std::io::Write for LogWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let _ = std::io::stderr().write_all(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        let _ = std::io::stderr().flush();
        Ok(())
    }
}
