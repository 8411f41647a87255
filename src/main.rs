//! The `arcp-gateway` binary: parse configuration, start tracing, serve until
//! SIGINT or SIGTERM. Exit codes: 0 clean shutdown, 1 runtime failure,
//! 2 invalid configuration.

use std::process::ExitCode;

use anyhow::Context;
use arcp_gateway::config::{Config, LogFormat, RawArgs};
use clap::Parser;
use tokio::net::TcpListener;

fn main() -> ExitCode {
    let raw = RawArgs::parse();
    let config = match Config::from_raw(raw) {
        Ok(config) => config,
        Err(error) => {
            eprintln!("arcp-gateway: invalid configuration: {error}");
            return ExitCode::from(2);
        }
    };
    start_logging(config.log_format);
    match run(config) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("arcp-gateway: {error:#}");
            ExitCode::from(1)
        }
    }
}

/// Logs to standard error, filtered by `ARCP_GATEWAY_LOG` (default `info`):
/// text, or one JSON object per line with the event's fields at the top
/// level and the request span's fields (route, session, job, principal)
/// under `span`.
fn start_logging(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_env("ARCP_GATEWAY_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Text => builder
            .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
            .init(),
        LogFormat::Json => builder
            .json()
            .flatten_event(true)
            .with_current_span(true)
            .with_span_list(false)
            .init(),
    }
}

fn run(config: Config) -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    runtime.block_on(async move {
        let listener = TcpListener::bind(config.listen)
            .await
            .with_context(|| format!("binding {}", config.listen))?;
        let address = listener.local_addr().context("reading the bound address")?;
        let metrics_listener = match config.metrics_listen {
            Some(metrics_address) => Some(
                TcpListener::bind(metrics_address)
                    .await
                    .with_context(|| format!("binding {metrics_address} (--metrics-listen)"))?,
            ),
            None => None,
        };
        let secret_was_generated = config.secret_was_generated;
        let data_dir = config.data_dir.clone();
        let dev_token = config.generated_dev_token.clone();
        // Opens (and recovers) the data directory before announcing anything.
        let state = arcp_gateway::build_state(config).await?;
        println!("arcp-gateway listening on http://{address}");
        if let Some(metrics_listener) = metrics_listener {
            let metrics_address = metrics_listener
                .local_addr()
                .context("reading the metrics address")?;
            println!("metrics on http://{metrics_address}/metrics");
            tokio::spawn(arcp_gateway::server::run_metrics(
                metrics_listener,
                state.clone(),
            ));
        }
        if let Some(token) = &dev_token {
            println!("dev api token (principal `dev`): {token}");
            println!("  try: curl -s -X POST -H 'Authorization: Bearer {token}' http://{address}/v1/sessions");
        }
        match &data_dir {
            Some(dir) => println!("durable store: {}", dir.display()),
            None if secret_was_generated => tracing::warn!(
                "no --secret or --data-dir configured: generated a secret; resume tokens will not survive a restart"
            ),
            None => {}
        }
        arcp_gateway::serve_state(state, listener, shutdown_signal()).await;
        Ok(())
    })
}

async fn shutdown_signal() {
    let interrupt = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut terminate =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(signal) => signal,
                Err(_) => {
                    let _ = interrupt.await;
                    return;
                }
            };
        tokio::select! {
            _ = interrupt => {},
            _ = terminate.recv() => {},
        }
    }
    #[cfg(not(unix))]
    {
        let _ = interrupt.await;
    }
    tracing::info!("shutdown signal received");
}
