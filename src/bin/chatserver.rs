//! `chatserver`: runs one chat node.
//!
//! `chatserver` alone serves 127.0.0.1:6000 from `./chatserver.db` (SQLite,
//! created on first run). The original's form `chatserver IP PORT` works too.

use std::process::ExitCode;

use chat::config::Config;
use chat::server::Node;
use clap::Parser;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

#[derive(Debug, Parser)]
#[command(
    name = "chatserver",
    version,
    about = "Chat server speaking the classic chat protocol"
)]
struct Cli {
    /// IP address to listen on (the original's first argument).
    ip: Option<String>,
    /// Port to listen on (the original's second argument).
    port: Option<u16>,
    /// Address to listen on, as IP:PORT; overrides IP and PORT.
    #[arg(long)]
    listen: Option<String>,
    /// Database URL: sqlite://PATH (created if missing).
    #[arg(long, env = "CHAT_DB", default_value = "sqlite://chatserver.db")]
    db: String,
    /// Largest frame accepted from a client, in bytes.
    #[arg(long, default_value_t = Config::default().max_frame)]
    max_frame: usize,
    /// Largest chat message body, in bytes.
    #[arg(long, default_value_t = Config::default().max_message_bytes)]
    max_message_bytes: usize,
    /// Connections served at once; further ones are refused with errno 51.
    #[arg(long, default_value_t = Config::default().max_connections)]
    max_connections: usize,
    /// Pushes queued per session before a too-slow reader is disconnected.
    #[arg(long, default_value_t = Config::default().push_queue)]
    push_queue: usize,
}

impl Cli {
    fn listen_addr(&self) -> Result<String, String> {
        match (&self.listen, &self.ip, self.port) {
            (Some(l), _, _) => Ok(l.clone()),
            (None, Some(ip), Some(port)) => Ok(format!("{ip}:{port}")),
            (None, Some(_), None) => {
                Err("give both IP and PORT, e.g. chatserver 127.0.0.1 6000".into())
            }
            (None, None, _) => Ok("127.0.0.1:6000".into()),
        }
    }
}

#[tokio::main]
async fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .init();
    let cli = Cli::parse();
    let addr = match cli.listen_addr() {
        Ok(a) => a,
        Err(e) => {
            eprintln!("chatserver: {e}");
            return ExitCode::from(2);
        }
    };
    let config = Config {
        max_frame: cli.max_frame,
        max_message_bytes: cli.max_message_bytes,
        max_connections: cli.max_connections,
        push_queue: cli.push_queue,
        ..Config::default()
    };
    let node = match Node::open(&cli.db, config).await {
        Ok(n) => n,
        Err(e) => {
            eprintln!("chatserver: cannot open {}: {e}", cli.db);
            return ExitCode::FAILURE;
        }
    };
    let listener = match TcpListener::bind(&addr).await {
        Ok(l) => l,
        Err(e) => {
            eprintln!("chatserver: cannot listen on {addr}: {e}");
            return ExitCode::FAILURE;
        }
    };
    let local = listener.local_addr().map(|a| a.to_string()).unwrap_or(addr);
    tracing::info!(listen = %local, db = %cli.db, "chatserver ready");
    let shutdown = CancellationToken::new();
    tokio::spawn(cancel_on_signal(shutdown.clone()));
    node.serve(listener, shutdown).await;
    ExitCode::SUCCESS
}

/// Ctrl+C or SIGTERM start a graceful shutdown.
async fn cancel_on_signal(token: CancellationToken) {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = tokio::signal::ctrl_c() => {}
                    _ = term.recv() => {}
                }
            }
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    let _ = tokio::signal::ctrl_c().await;
    tracing::info!("shutting down");
    token.cancel();
}
