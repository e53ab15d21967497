//! `chathash`: answers "which chat node does this client land on?" with
//! nginx's own `hash $remote_addr consistent` ring, and writes the nginx.conf
//! that puts nginx in front of the nodes.
//!
//! The original project shipped an interactive consistent-hash toy
//! (`add`, `del`, `get`, `getVirNum`, `showTime`) whose ring was not the one
//! nginx actually uses. `chathash` keeps those commands (run it with no
//! arguments, or pipe commands in) on top of [`chat_ring`], which
//! reproduces nginx's ring exactly, and adds two one-shot commands for
//! operators:
//!
//! ```text
//! chathash which --node 127.0.0.1:6000 --node 127.0.0.1:6001:2 127.0.0.5
//! chathash nginx-conf --listen 127.0.0.1:8000 --node 127.0.0.1:6000 ...
//! ```

use std::io::{BufRead, ErrorKind, IsTerminal, Write};
use std::net::IpAddr;
use std::process::ExitCode;

use chat_ring::{
    Balance, NginxConf, Node, POINTS_PER_WEIGHT, Ring, RingError, nginx_conf, server_text,
};
use clap::{Parser, Subcommand};

#[derive(Debug, Parser)]
#[command(
    name = "chathash",
    version,
    about = "nginx's consistent-hash ring for the chat nodes: who lands where, and the nginx.conf",
    after_help = "With no command, reads ring commands from stdin (type `help`)."
)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Reads ring commands from stdin: add, del, get, getVirNum, showTime
    /// (the default when no command is given).
    Shell {
        /// Nodes to start with, as ADDR or ADDR:WEIGHT (e.g. 127.0.0.1:6001:2).
        #[arg(long = "node", value_name = "ADDR[:WEIGHT]")]
        nodes: Vec<Node>,
    },
    /// Prints the node each client address maps to under nginx's hash.
    Which {
        /// The upstream's server lines in order, as ADDR or ADDR:WEIGHT.
        #[arg(long = "node", value_name = "ADDR[:WEIGHT]", required = true)]
        nodes: Vec<Node>,
        /// Client addresses, as nginx's $remote_addr shows them.
        #[arg(value_name = "CLIENT_IP", required = true)]
        clients: Vec<String>,
    },
    /// Prints a complete nginx.conf proxying LISTEN to the nodes.
    NginxConf {
        /// Address nginx listens on for clients, e.g. 127.0.0.1:8000.
        #[arg(long)]
        listen: String,
        /// hash (consistent, by client address) or round-robin.
        #[arg(long, default_value_t = Balance::Hash)]
        balance: Balance,
        /// The chat nodes in order, as ADDR or ADDR:WEIGHT.
        #[arg(long = "node", value_name = "ADDR[:WEIGHT]", required = true)]
        nodes: Vec<Node>,
        /// Absolute directory for the pid file and error log [default: /tmp].
        #[arg(long, value_name = "DIR")]
        prefix: Option<String>,
        /// Path of the stream module to load.
        #[arg(long, value_name = "FILE", default_value = chat_ring::STREAM_MODULE)]
        module: String,
        /// Send nodes a PROXY protocol header with each client's address
        /// (run the nodes with --proxy-protocol).
        #[arg(long)]
        proxy_protocol: bool,
        /// Also serve the nodes' web listeners (web client and WebSocket)
        /// on this address, e.g. 127.0.0.1:8080.
        #[arg(long, requires = "web_nodes")]
        web_listen: Option<String>,
        /// A node's web listener (chatserver --ws-listen), in node order.
        #[arg(long = "web-node", value_name = "ADDR")]
        web_nodes: Vec<String>,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let stdout = std::io::stdout();
    let mut out = stdout.lock();
    let result = match cli.command.unwrap_or(Command::Shell { nodes: Vec::new() }) {
        Command::Shell { nodes } => shell(nodes, &mut out),
        Command::Which { nodes, clients } => which(nodes, &clients, &mut out),
        Command::NginxConf {
            listen,
            balance,
            nodes,
            prefix,
            module,
            proxy_protocol,
            web_listen,
            web_nodes,
        } => {
            let conf = NginxConf {
                listen,
                balance,
                nodes,
                prefix,
                module: Some(module),
                proxy_protocol,
                web: web_listen.map(|listen| chat_ring::WebConf {
                    listen,
                    nodes: web_nodes,
                }),
            };
            nginx_conf(&conf)
                .map_err(Failure::from)
                .and_then(|text| Ok(out.write_all(text.as_bytes())?))
        }
    };
    let result = result.and_then(|()| Ok(out.flush()?));
    match result {
        Ok(()) => ExitCode::SUCCESS,
        // The reader went away (`chathash ... | head`): nothing left to say.
        Err(Failure::Output(e)) if e.kind() == ErrorKind::BrokenPipe => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("chathash: {e}");
            ExitCode::FAILURE
        }
    }
}

/// Why a command failed: a bad request (the loop reports it and goes on) or
/// a broken stdin/stdout (nothing more can be done).
#[derive(Debug)]
enum Failure {
    Command(String),
    Output(std::io::Error),
}

impl std::fmt::Display for Failure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Failure::Command(e) => f.write_str(e),
            Failure::Output(e) => write!(f, "i/o error: {e}"),
        }
    }
}

impl From<std::io::Error> for Failure {
    fn from(e: std::io::Error) -> Failure {
        Failure::Output(e)
    }
}

impl From<RingError> for Failure {
    fn from(e: RingError) -> Failure {
        Failure::Command(e.to_string())
    }
}

impl From<String> for Failure {
    fn from(e: String) -> Failure {
        Failure::Command(e)
    }
}

/// The key nginx hashes for a client: `$remote_addr`, which is the address
/// in its canonical text form. Anything that is not an IP is hashed as is.
fn client_key(client: &str) -> String {
    client
        .parse::<IpAddr>()
        .map_or_else(|_| client.to_string(), |ip| ip.to_string())
}

fn which(nodes: Vec<Node>, clients: &[String], out: &mut impl Write) -> Result<(), Failure> {
    let ring = Ring::with_nodes(nodes)?;
    for client in clients {
        let key = client_key(client);
        let node = ring.get(&key).ok_or("the ring is empty".to_string())?;
        writeln!(out, "{key} -> {}", node.server())?;
    }
    Ok(())
}

const HELP: &str = "\
commands (one per line):
  add HOST PORT [WEIGHT]  add a server line; it gets 160*WEIGHT virtual nodes
  del HOST PORT           remove a server
  get HOST [PORT]         the server client HOST maps to (nginx hashes the
                          client's address only, so PORT is ignored)
  getVirNum HOST PORT     the virtual nodes (point hashes) of a server
  showTime                every point on the ring: hash -> server
  help                    this text
  quit                    leave (end of input works too)";

/// The command loop. A failed command is reported and the loop goes on;
/// the exit status says whether any command failed, for scripts.
fn shell(nodes: Vec<Node>, out: &mut impl Write) -> Result<(), Failure> {
    let mut ring = Ring::with_nodes(nodes)?;
    let interactive = std::io::stdin().is_terminal();
    if interactive {
        writeln!(
            out,
            "chathash: nginx consistent-hash ring; `help` lists the commands"
        )?;
    }
    let mut failed = 0usize;
    let mut stdin = std::io::stdin().lock();
    let mut line = String::new();
    loop {
        if interactive {
            write!(out, "> ")?;
        }
        // Answers appear as soon as each command is done, also in a pipe.
        out.flush()?;
        line.clear();
        if stdin.read_line(&mut line)? == 0 {
            break;
        }
        let words: Vec<&str> = line.split_whitespace().collect();
        match run(&mut ring, &words, out) {
            Ok(Step::Continue) => {}
            Ok(Step::Quit) => break,
            Err(Failure::Command(e)) => {
                failed += 1;
                writeln!(out, "error: {e}")?;
            }
            Err(e) => return Err(e),
        }
    }
    match failed {
        0 => Ok(()),
        n => Err(Failure::Command(format!("{n} command(s) failed"))),
    }
}

enum Step {
    Continue,
    Quit,
}

/// Runs one command line against the ring, writing its answer to `out`.
fn run(ring: &mut Ring, words: &[&str], out: &mut impl Write) -> Result<Step, Failure> {
    let Some((&cmd, args)) = words.split_first() else {
        return Ok(Step::Continue);
    };
    let port = |s: &str| {
        s.parse::<u16>()
            .map_err(|_| Failure::Command(format!("bad port {s:?} (1-65535)")))
    };
    let cmd = cmd.to_ascii_lowercase();
    match (cmd.as_str(), args) {
        ("add", [host, p]) | ("add", [host, p, _]) => {
            let weight = match args.get(2) {
                Some(w) => w.parse().map_err(|_| format!("bad weight {w:?}"))?,
                None => 1,
            };
            let node = ring.add(host, port(p)?, weight)?;
            writeln!(
                out,
                "added {} weight {} ({} virtual nodes)",
                node.server(),
                node.weight(),
                node.weight() * POINTS_PER_WEIGHT
            )?;
        }
        ("del", [host, p]) => {
            let node = ring.remove(host, port(p)?)?;
            writeln!(out, "removed {}", node.server())?;
        }
        ("get", [client]) | ("get", [client, _]) => {
            let key = client_key(client);
            let node = ring
                .get(&key)
                .ok_or("the ring is empty; add a server".to_string())?;
            writeln!(out, "{key} -> {}", node.server())?;
        }
        ("getvirnum", [host, p]) => {
            let server = server_text(host, port(p)?);
            let hashes = ring
                .points_of(&server)
                .ok_or_else(|| format!("{server} is not on the ring"))?;
            writeln!(out, "{server}: {} virtual nodes", hashes.len())?;
            for h in hashes {
                writeln!(out, "  {h}")?;
            }
        }
        ("showtime", []) => {
            let (points, servers) = (ring.points().len(), ring.len());
            writeln!(out, "{points} points on {servers} server(s)")?;
            for p in ring.points() {
                if let Some(node) = ring.node(p.node) {
                    writeln!(out, "{:>10} -> {}", p.hash, node.server())?;
                }
            }
        }
        ("help", _) => writeln!(out, "{HELP}")?,
        ("quit", []) | ("exit", []) => return Ok(Step::Quit),
        ("add" | "del" | "get" | "getvirnum" | "showtime", _) => {
            return Err(format!("wrong arguments for {cmd}; try `help`").into());
        }
        _ => return Err(format!("unknown command {cmd:?}; try `help`").into()),
    }
    Ok(Step::Continue)
}
