//! `chatbench`: the load tool. Every figure it prints is measured against a
//! real server over TCP, and `compare` prints it beside the bare relay's from
//! the same sitting.
//!
//! ```text
//! chatbench relay --listen 127.0.0.1:7000         # the bare relay
//! chatbench pairs --addr 127.0.0.1:6000 --pairs 10 --server-pid PID
//! chatbench compare --pairs 10,100 --repeat 3     # relay vs chatserver, pinned
//! ```

use std::process::{Child, Command, ExitCode, Stdio};
use std::time::{Duration, Instant};

use chat_bench::{self as bench, PairsOptions, PairsReport};
use clap::{Args, Parser, Subcommand};

#[derive(Debug, Parser)]
#[command(name = "chatbench", version, about = "Load tool for the chat server")]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
    /// Speak TLS to the server (its --tls-listen port), trusting the
    /// certificates in this PEM file.
    #[arg(long, global = true, value_name = "PEM")]
    tls_ca: Option<std::path::PathBuf>,
    /// The name the server's certificate must carry.
    #[arg(long, global = true, default_value = "localhost", requires = "tls_ca")]
    tls_name: String,
}

#[derive(Debug, Subcommand)]
enum Cmd {
    /// A bare in-memory relay speaking the same frames (no storage, no acks).
    Relay {
        #[arg(long, default_value = "127.0.0.1:7000")]
        listen: String,
        /// The durable relay instead: append each message to this file,
        /// fdatasync (one per batch), then acknowledge and forward it.
        #[arg(long)]
        durable: Option<std::path::PathBuf>,
        /// With --durable: keep the messages in a SQLite database at that
        /// path (a table keyed by conversation and number, WAL,
        /// synchronous=FULL) instead of a flat log: the floor for a server
        /// that stores in SQLite.
        #[arg(long, requires = "durable")]
        sqlite: bool,
        /// With --sqlite: make each batch durable in a log beside the
        /// database (PATH.log) and acknowledge it, then write the messages
        /// into SQLite in one transaction every this many milliseconds.
        #[arg(long, requires = "sqlite")]
        apply_ms: Option<u64>,
    },
    /// Closed-loop one-to-one pairs against a running server.
    Pairs {
        /// Server address.
        #[arg(long, default_value = "127.0.0.1:6000")]
        addr: String,
        /// Where the receivers log in (another node); default: --addr.
        #[arg(long)]
        recv_addr: Option<String>,
        #[arg(long, default_value_t = 10)]
        pairs: usize,
        /// The server side's PIDs (comma-separated: nodes, database, Redis),
        /// to report their CPU per delivered message.
        #[arg(long, value_delimiter = ',')]
        server_pid: Vec<u32>,
        /// A named group of server-side PIDs, NAME=PID[,PID...], reported
        /// with its own CPU per message (repeat it: --tier node=1,2
        /// --tier db=3).
        #[arg(long, value_parser = parse_tier)]
        tier: Vec<(String, Vec<u32>)>,
        /// The server sends no acknowledgements (the relay).
        #[arg(long)]
        no_acks: bool,
        /// Open loop: this many messages per second over all pairs, sent on
        /// schedule; latency counts from when each message was due.
        #[arg(long)]
        rate: Option<f64>,
        #[command(flatten)]
        run: RunArgs,
    },
    /// Registers users, logs them all in and holds them: login rate and the
    /// server's memory per logged-in connection.
    Logins {
        #[arg(long, default_value = "127.0.0.1:6000")]
        addr: String,
        /// Users to register and log in.
        #[arg(long, default_value_t = 1000)]
        users: usize,
        /// Logins in flight at once.
        #[arg(long, default_value_t = 50)]
        concurrency: usize,
        /// The server's PID, to read its memory.
        #[arg(long)]
        server_pid: Option<u32>,
        /// Processes to spread the connections over (each may open at most
        /// 20,000 files here).
        #[arg(long, default_value_t = 1)]
        procs: usize,
        /// Index of the first connection (which loopback source it uses).
        #[arg(long, default_value_t = 0, hide = true)]
        first_source: usize,
        /// Run as one of several processes: print the report, then hold the
        /// connections until stdin closes.
        #[arg(long, hide = true)]
        child: bool,
    },
    /// Logs users in with their passwords, drops the connections, and has
    /// them all resume with their tokens: how fast a node takes back the
    /// users of a dead one.
    Resumes {
        #[arg(long, default_value = "127.0.0.1:6000")]
        addr: String,
        #[arg(long, default_value_t = 2000)]
        users: usize,
        /// Logins and resumes in flight at once.
        #[arg(long, default_value_t = 50)]
        concurrency: usize,
        /// Rounds of resumes (each drops the sessions and resumes them all).
        #[arg(long, default_value_t = 1)]
        rounds: usize,
    },
    /// Chat latency of logged-in pairs, quiet and during a storm of
    /// concurrent password logins.
    Storm {
        #[arg(long, default_value = "127.0.0.1:6000")]
        addr: String,
        #[arg(long, default_value_t = 10)]
        pairs: usize,
        /// Users logging in at once during the storm.
        #[arg(long, default_value_t = 500)]
        logins: usize,
        #[arg(long)]
        server_pid: Option<u32>,
        #[command(flatten)]
        run: RunArgs,
    },
    /// One sender, a group with every member online: time until a message
    /// reaches all of them.
    Fanout {
        #[arg(long, default_value = "127.0.0.1:6000")]
        addr: String,
        /// Members besides the sender.
        #[arg(long, default_value_t = 1000)]
        members: usize,
        /// Messages sent, one after the other.
        #[arg(long, default_value_t = 20)]
        messages: usize,
        #[arg(long)]
        server_pid: Option<u32>,
    },
    /// Readers that read as the original client does (one `recv` of at
    /// most 1024 bytes per frame), each sent a burst by several senders at
    /// once: reads it could not have parsed, and how long the burst took.
    Classic {
        #[arg(long, default_value = "127.0.0.1:6000")]
        addr: String,
        #[arg(long, default_value_t = 20)]
        readers: usize,
        /// Senders per reader, writing at the same moment.
        #[arg(long, default_value_t = 3)]
        senders: usize,
        /// Messages each sender sends in its burst.
        #[arg(long, default_value_t = 20)]
        messages: usize,
        /// Microseconds each reader spends per read (printing it).
        #[arg(long, default_value_t = 1000)]
        pause_us: u64,
    },
    /// Starts the relays (bare, durable log, durable SQLite) and chatserver
    /// on one core, drives them from another, and prints medians side by
    /// side.
    Compare {
        /// The chatserver binary (default: beside this one).
        #[arg(long)]
        server: Option<String>,
        /// Extra arguments for chatserver (after --listen and --db).
        #[arg(long, allow_hyphen_values = true)]
        server_arg: Vec<String>,
        /// Pair counts to run, comma-separated.
        #[arg(long, value_delimiter = ',', default_value = "10,100")]
        pairs: Vec<usize>,
        /// Rounds per pair count (relay and server alternate).
        #[arg(long, default_value_t = 3)]
        repeat: usize,
        /// Core for the servers.
        #[arg(long, default_value_t = 0)]
        server_cpu: usize,
        /// Core for this load generator.
        #[arg(long, default_value_t = 1)]
        client_cpu: usize,
        #[command(flatten)]
        run: RunArgs,
    },
}

#[derive(Debug, Clone, Args)]
struct RunArgs {
    /// Seconds measured per run.
    #[arg(long, default_value_t = 5.0)]
    duration: f64,
    /// Seconds run before measuring.
    #[arg(long, default_value_t = 1.0)]
    warmup: f64,
    /// Filler bytes in each message body.
    #[arg(long, default_value_t = 32)]
    body: usize,
    /// Also draw the delivery latency by percentile into this SVG file.
    #[arg(long, value_name = "FILE")]
    plot: Option<std::path::PathBuf>,
    /// Log in and chat exactly as the original C++ client does (its
    /// frames, no reqid): the server then treats every session as the
    /// original client's, which gets no acknowledgements.
    #[arg(long)]
    original_frames: bool,
}

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "warn".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("chatbench: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    if let Some(ca) = &cli.tls_ca {
        match chat::tls::TlsClient::new(ca, &cli.tls_name) {
            Ok(tls) => {
                bench::use_tls(tls);
            }
            Err(e) => {
                eprintln!("chatbench: {e}");
                return ExitCode::FAILURE;
            }
        }
    }
    match rt.block_on(run(cli.command)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("chatbench: {e}");
            ExitCode::FAILURE
        }
    }
}

async fn run(cmd: Cmd) -> Result<(), String> {
    match cmd {
        Cmd::Relay {
            listen,
            durable,
            sqlite,
            apply_ms,
        } => {
            let listener = tokio::net::TcpListener::bind(&listen)
                .await
                .map_err(|e| format!("cannot listen on {listen}: {e}"))?;
            // The bound address (the port, when asked for port 0), for
            // `compare`, which reads it from this line.
            let bound = listener
                .local_addr()
                .map_err(|e| format!("cannot listen on {listen}: {e}"))?;
            eprintln!("relay listening on {bound}");
            match durable {
                Some(db) if sqlite => {
                    let every = apply_ms.map(Duration::from_millis);
                    bench::relay::run_durable_sqlite(listener, &db, every).await
                }
                Some(log) => bench::relay::run_durable(listener, &log).await,
                None => bench::relay::run(listener).await,
            }
            .map_err(|e| e.to_string())
        }
        Cmd::Pairs {
            addr,
            recv_addr,
            pairs,
            server_pid,
            tier,
            no_acks,
            rate,
            run,
        } => {
            let users = register(&addr, pairs).await?;
            let mut opts = options(&addr, pairs, users, server_pid, !no_acks, &run);
            opts.recv_addr = recv_addr;
            opts.rate = rate;
            opts.tiers = tier;
            let report = bench::pairs(&opts).await.map_err(|e| e.to_string())?;
            print_table(&[("server", &report, None)]);
            if !report.window.tier_cpu_us_per_msg.is_empty() {
                let shown: Vec<String> = report
                    .window
                    .tier_cpu_us_per_msg
                    .iter()
                    .map(|(name, us)| match us {
                        Some(us) => format!("{name} {us:.1}"),
                        None => format!("{name} -"),
                    })
                    .collect();
                println!("CPU µs/msg by tier: {}", shown.join(", "));
            }
            let title = format!("{pairs} pairs against {addr}");
            plot(
                &run,
                &title,
                &[("server".into(), report.window.latency.as_ref())],
            )?;
            println!(
                "{}",
                serde_json::to_string(&report).map_err(|e| e.to_string())?
            );
            Ok(())
        }
        Cmd::Logins {
            addr,
            users,
            concurrency,
            server_pid,
            procs,
            first_source,
            child,
        } => {
            if procs > 1 && !child {
                return logins_over_processes(&addr, users, concurrency, server_pid, procs).await;
            }
            let prefix = format!("l{}-", std::process::id());
            let started = Instant::now();
            let ids = bench::register_users(&addr, &prefix, PASSWORD, users, 8)
                .await
                .map_err(|e| format!("registering users: {e}"))?;
            eprintln!(
                "registered {} users in {:.1}s; server RSS {}",
                ids.len(),
                started.elapsed().as_secs_f64(),
                mib(server_pid.and_then(bench::process_rss))
            );
            let opts = bench::LoginsOptions {
                addr,
                users: ids,
                password: PASSWORD.to_owned(),
                concurrency,
                server_pid,
                first_source,
            };
            let (report, held) = bench::logins(&opts).await.map_err(|e| e.to_string())?;
            if !child {
                print_logins(&report, concurrency);
            }
            println!(
                "{}",
                serde_json::to_string(&report).map_err(|e| e.to_string())?
            );
            if child {
                // Hold the connections until the parent closes our stdin.
                use tokio::io::AsyncReadExt;
                let mut sink = Vec::new();
                let _ = tokio::io::stdin().read_to_end(&mut sink).await;
            }
            drop(held);
            Ok(())
        }
        Cmd::Resumes {
            addr,
            users,
            concurrency,
            rounds,
        } => {
            let prefix = format!("r{}-", std::process::id());
            let ids = bench::register_users(&addr, &prefix, PASSWORD, users, 8)
                .await
                .map_err(|e| format!("registering users: {e}"))?;
            let r = bench::resumes(&addr, &ids, PASSWORD, concurrency, rounds)
                .await
                .map_err(|e| e.to_string())?;
            eprintln!(
                "{} users: password logins {:.0}/s; {} resumes in {:.2}s ({:.0}/s, x{:.1} the logins; rounds {:.0?}), {} failed{}",
                r.users,
                r.logins_per_s,
                r.resumes,
                r.seconds,
                r.resumes_per_s,
                r.resumes_per_s / r.logins_per_s,
                r.rounds,
                r.failed,
                r.first_failure
                    .as_deref()
                    .map(|f| format!(" (first: {f})"))
                    .unwrap_or_default()
            );
            println!("{}", serde_json::to_string(&r).map_err(|e| e.to_string())?);
            Ok(())
        }
        Cmd::Storm {
            addr,
            pairs,
            logins,
            server_pid,
            run,
        } => {
            let users = register(&addr, pairs + logins.div_ceil(2)).await?;
            let (pair_users, storm_users) = users.split_at(2 * pairs);
            let pairs_opts = options(
                &addr,
                pairs,
                pair_users.to_vec(),
                server_pid.into_iter().collect(),
                true,
                &run,
            );
            let storm_opts = bench::LoginsOptions {
                addr: addr.clone(),
                users: storm_users.iter().copied().take(logins).collect(),
                password: PASSWORD.to_owned(),
                concurrency: logins,
                server_pid,
                first_source: 0,
            };
            let r = bench::storm(&pairs_opts, &storm_opts)
                .await
                .map_err(|e| e.to_string())?;
            plot(
                &run,
                &format!("{pairs} pairs chatting, then during {logins} logins"),
                &[
                    ("quiet".into(), r.quiet.latency.as_ref()),
                    ("login storm".into(), r.storm.latency.as_ref()),
                ],
            )?;
            println!(
                "{:<7} {:>8} {:>8} {:>8} {:>9}",
                "window", "msg/s", "p50 µs", "p99 µs", "seconds"
            );
            for (name, w) in [("quiet", &r.quiet), ("storm", &r.storm)] {
                println!(
                    "{name:<7} {:>8.0} {:>8} {:>8} {:>9.1}",
                    w.msg_per_s, w.p50_us, w.p99_us, w.seconds
                );
            }
            println!(
                "{} logins during the storm ({} failed); p50 x{:.2}, p99 x{:.2} of quiet",
                r.logins.logins, r.logins.failed, r.p50_ratio, r.p99_ratio
            );
            println!("{}", serde_json::to_string(&r).map_err(|e| e.to_string())?);
            Ok(())
        }
        Cmd::Fanout {
            addr,
            members,
            messages,
            server_pid,
        } => {
            let users = register(&addr, (members + 2) / 2).await?;
            let mut users = users;
            users.truncate(members + 1);
            if users.len() < members + 1 {
                return Err("registration returned too few users".into());
            }
            let r = bench::fanout(&bench::FanoutOptions {
                addr,
                users,
                password: PASSWORD.to_owned(),
                messages,
                server_pid,
            })
            .await
            .map_err(|e| e.to_string())?;
            println!(
                "group of {} online members, {} messages: all had it after {:.1} ms (median), {:.1} ms (worst); half after {:.1} ms; server CPU {} per message",
                r.members,
                r.messages,
                r.all_p50_ms,
                r.all_max_ms,
                r.half_p50_ms,
                r.server_cpu_ms_per_message
                    .map_or("-".into(), |c| format!("{c:.1} ms"))
            );
            println!("{}", serde_json::to_string(&r).map_err(|e| e.to_string())?);
            Ok(())
        }
        Cmd::Classic {
            addr,
            readers,
            senders,
            messages,
            pause_us,
        } => {
            let n = readers * (1 + senders);
            let mut users = register(&addr, n.div_ceil(2)).await?;
            users.truncate(n);
            let r = bench::classic(&bench::ClassicOptions {
                addr,
                users,
                password: PASSWORD.to_owned(),
                readers,
                senders,
                messages,
                pause: Duration::from_micros(pause_us),
            })
            .await
            .map_err(|e| e.to_string())?;
            println!(
                "{} classic readers, {} senders each sending {} at once: {} of {} messages in {} reads, {} unreadable; a reader had all after {:.1} ms (median), {:.1} ms (worst)",
                r.readers,
                r.senders,
                r.messages,
                r.delivered,
                r.readers * r.senders * r.messages,
                r.reads,
                r.unreadable,
                r.all_ms_p50,
                r.all_ms_max
            );
            println!("{}", serde_json::to_string(&r).map_err(|e| e.to_string())?);
            Ok(())
        }
        Cmd::Compare {
            server,
            server_arg,
            pairs,
            repeat,
            server_cpu,
            client_cpu,
            run,
        } => {
            compare(
                server,
                server_arg,
                pairs,
                repeat.max(1),
                server_cpu,
                client_cpu,
                run,
            )
            .await
        }
    }
}

const PASSWORD: &str = "bench-password";

async fn register(addr: &str, pairs: usize) -> Result<Vec<chat::model::UserId>, String> {
    // Names unique per call: `compare` registers anew for each round.
    static CALLS: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    let call = CALLS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let prefix = format!("b{}-{call}-", std::process::id());
    let started = Instant::now();
    let users = bench::register_users(addr, &prefix, PASSWORD, 2 * pairs, 4)
        .await
        .map_err(|e| format!("registering users: {e}"))?;
    eprintln!(
        "registered {} users in {:.1}s",
        users.len(),
        started.elapsed().as_secs_f64()
    );
    Ok(users)
}

fn options(
    addr: &str,
    pairs: usize,
    users: Vec<chat::model::UserId>,
    server_pids: Vec<u32>,
    expect_acks: bool,
    run: &RunArgs,
) -> PairsOptions {
    PairsOptions {
        addr: addr.to_owned(),
        recv_addr: None,
        pairs,
        warmup: Duration::from_secs_f64(run.warmup),
        duration: Duration::from_secs_f64(run.duration),
        server_pids,
        tiers: Vec::new(),
        expect_acks,
        users,
        password: PASSWORD.to_owned(),
        body_len: run.body,
        rate: None,
        original_frames: run.original_frames,
    }
}

/// `NAME=PID[,PID...]`.
fn parse_tier(s: &str) -> Result<(String, Vec<u32>), String> {
    let (name, pids) = s
        .split_once('=')
        .ok_or_else(|| format!("{s:?}: expected NAME=PID[,PID...]"))?;
    let pids = pids
        .split(',')
        .map(|p| p.trim().parse().map_err(|_| format!("{p:?} is not a PID")))
        .collect::<Result<Vec<u32>, _>>()?;
    Ok((name.to_owned(), pids))
}

/// A child process pinned to one core, killed when dropped.
struct Pinned(Child);

impl Drop for Pinned {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Starts `program` pinned to `cpu`, listening on a port of its own
/// choosing (its arguments ask for port 0), and returns the address it
/// names in the first line of its standard error that `address` finds one
/// in. Picking a free port beforehand would race with every other process
/// binding ports meanwhile (the test suite runs several servers at once).
/// The rest of its standard error is passed on.
async fn spawn_listening(
    program: &str,
    args: &[String],
    cpu: usize,
    address: fn(&str) -> Option<String>,
) -> Result<(String, Pinned), String> {
    use std::io::BufRead;
    use std::os::unix::process::CommandExt;
    let mut cmd = Command::new(program);
    cmd.args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        // Warnings, and the server's ready line that names its address.
        .env("RUST_LOG", "warn,chatserver=info");
    // SAFETY: only a system call runs between fork and exec. A core that
    // cannot be had (a smaller machine) leaves the child unpinned.
    unsafe {
        cmd.pre_exec(move || {
            let _ = pin(cpu);
            Ok(())
        });
    }
    let mut child = cmd
        .spawn()
        .map_err(|e| format!("cannot start {program}: {e}"))?;
    let stderr = child.stderr.take();
    let child = Pinned(child);
    let (found, addr) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let Some(stderr) = stderr else { return };
        let mut found = Some(found);
        for line in std::io::BufReader::new(stderr).lines() {
            let Ok(line) = line else { break };
            if let Some(a) = found.as_ref().and_then(|_| address(&line)) {
                if let Some(tx) = found.take() {
                    let _ = tx.send(a);
                }
            } else {
                eprintln!("{line}");
            }
        }
    });
    let program = program.to_owned();
    tokio::task::spawn_blocking(move || addr.recv_timeout(Duration::from_secs(20)))
        .await
        .map_err(|e| e.to_string())?
        .map(|a| (a, child))
        .map_err(|_| format!("{program} named no address it listens on"))
}

/// The address in a relay's "relay listening on ADDR" line.
fn relay_address(line: &str) -> Option<String> {
    line.split("relay listening on ")
        .nth(1)
        .map(|a| a.trim().to_owned())
}

/// The address in the server's "chatserver ready" log line (`listen=ADDR`).
fn server_address(line: &str) -> Option<String> {
    if !line.contains("chatserver ready") {
        return None;
    }
    line.split("listen=")
        .nth(1)
        .and_then(|rest| rest.split_whitespace().next())
        .map(str::to_owned)
}

fn pin(cpu: usize) -> std::io::Result<()> {
    // SAFETY: the set is zeroed, then one bit is set; the call reads it.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(cpu, &mut set);
        if libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set) != 0 {
            return Err(std::io::Error::last_os_error());
        }
    }
    Ok(())
}

/// A scratch directory for the servers' databases, removed at the end.
struct TempDir(std::path::PathBuf);

impl TempDir {
    fn new() -> Result<Self, String> {
        let path = std::env::temp_dir().join(format!("chatbench-{}", std::process::id()));
        std::fs::create_dir_all(&path).map_err(|e| format!("{}: {e}", path.display()))?;
        Ok(TempDir(path))
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

async fn wait_listening(addr: &str) -> Result<(), String> {
    let deadline = Instant::now() + Duration::from_secs(20);
    while Instant::now() < deadline {
        if tokio::net::TcpStream::connect(addr).await.is_ok() {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Err(format!("nothing listens on {addr}"))
}

async fn compare(
    server: Option<String>,
    server_args: Vec<String>,
    pair_counts: Vec<usize>,
    repeat: usize,
    server_cpu: usize,
    client_cpu: usize,
    run: RunArgs,
) -> Result<(), String> {
    if let Err(e) = pin(client_cpu) {
        eprintln!("chatbench: not pinned to core {client_cpu} ({e}); figures will be noisier");
    }
    let me = std::env::current_exe().map_err(|e| e.to_string())?;
    let server = match server {
        Some(s) => s,
        None => me
            .with_file_name("chatserver")
            .to_string_lossy()
            .into_owned(),
    };
    let dir = TempDir::new()?;
    let mut rows: Vec<(String, PairsReport)> = Vec::new();
    for &pairs in &pair_counts {
        // One of this tool's relays on the server core: its address and process.
        let relay_at = |extra: Vec<String>| {
            let mut args = vec![
                "relay".to_owned(),
                "--listen".to_owned(),
                "127.0.0.1:0".to_owned(),
            ];
            args.extend(extra);
            let me = me.to_string_lossy().into_owned();
            async move { spawn_listening(&me, &args, server_cpu, relay_address).await }
        };
        let in_dir = |name: String| dir.0.join(name).to_string_lossy().into_owned();
        let (relay_addr, relay) = relay_at(Vec::new()).await?;
        let (durable_addr, durable) = relay_at(vec![
            "--durable".into(),
            in_dir(format!("relay-{pairs}.log")),
        ])
        .await?;
        let (sqlite_addr, sqlite) = relay_at(vec![
            "--durable".into(),
            in_dir(format!("relay-{pairs}.db")),
            "--sqlite".into(),
        ])
        .await?;
        let db = dir.0.join(format!("bench-{pairs}.db"));
        let mut args = vec![
            "--listen".to_owned(),
            "127.0.0.1:0".to_owned(),
            "--db".to_owned(),
            format!("sqlite://{}", db.display()),
            // A few connections sending as fast as they can: the
            // per-connection request budget would measure itself.
            "--request-rate".to_owned(),
            "0".to_owned(),
        ];
        args.extend(server_args.iter().cloned());
        let (server_addr, node) =
            spawn_listening(&server, &args, server_cpu, server_address).await?;
        wait_listening(&relay_addr).await?;
        wait_listening(&durable_addr).await?;
        wait_listening(&sqlite_addr).await?;
        wait_listening(&server_addr).await?;
        let mut relay_users = register(&relay_addr, pairs).await?;
        let mut durable_users = register(&durable_addr, pairs).await?;
        let mut sqlite_users = register(&sqlite_addr, pairs).await?;
        let mut server_users = register(&server_addr, pairs).await?;
        for round in 1..=repeat {
            if run.original_frames && round > 1 {
                // The original client acknowledges nothing, so the server
                // counts what it wrote in the last 2 s before a disconnect
                // as unread and sends it again at the next login: users of
                // the round before would start with a backlog, spaced 5 ms
                // a frame, that this round would measure. Fresh users
                // start clean.
                relay_users = register(&relay_addr, pairs).await?;
                durable_users = register(&durable_addr, pairs).await?;
                sqlite_users = register(&sqlite_addr, pairs).await?;
                server_users = register(&server_addr, pairs).await?;
            }
            for (name, addr, child, users, acks) in [
                ("relay", &relay_addr, &relay, &relay_users, false),
                (
                    "durable-relay",
                    &durable_addr,
                    &durable,
                    &durable_users,
                    true,
                ),
                ("sqlite-relay", &sqlite_addr, &sqlite, &sqlite_users, true),
                ("chatserver", &server_addr, &node, &server_users, true),
            ] {
                let opts = options(addr, pairs, users.clone(), vec![child.0.id()], acks, &run);
                let report = bench::pairs(&opts)
                    .await
                    .map_err(|e| format!("{name}, {pairs} pairs: {e}"))?;
                eprintln!(
                    "round {round}/{repeat} {name:>13} {pairs:>4} pairs: {:>8.0} msg/s, {:>6.1} µs CPU/msg, p50 {} µs",
                    report.window.msg_per_s,
                    report.window.server_cpu_us_per_msg.unwrap_or(f64::NAN),
                    report.window.p50_us
                );
                rows.push((name.to_owned(), report));
            }
        }
        drop(node);
        drop(sqlite);
        drop(durable);
        drop(relay);
    }
    // Medians per (target, pairs).
    let mut medians: Vec<(String, PairsReport)> = Vec::new();
    for &pairs in &pair_counts {
        for name in ["relay", "durable-relay", "sqlite-relay", "chatserver"] {
            let mut runs: Vec<&PairsReport> = rows
                .iter()
                .filter(|(n, r)| n == name && r.pairs == pairs)
                .map(|(_, r)| r)
                .collect();
            runs.sort_by(|a, b| a.window.msg_per_s.total_cmp(&b.window.msg_per_s));
            if let Some(mid) = runs.get(runs.len() / 2) {
                let mut m = (*mid).clone();
                m.window.server_cpu_us_per_msg = median(
                    runs.iter()
                        .filter_map(|r| r.window.server_cpu_us_per_msg)
                        .collect(),
                );
                m.window.p50_us = median(runs.iter().map(|r| r.window.p50_us as f64).collect())
                    .map_or(m.window.p50_us, |v| v as u64);
                medians.push((name.to_owned(), m));
            }
        }
    }
    let table: Vec<(&str, &PairsReport, Option<&PairsReport>)> = medians
        .iter()
        .map(|(n, r)| {
            let relay = medians
                .iter()
                .find(|(rn, rr)| rn == "relay" && rr.pairs == r.pairs)
                .map(|(_, rr)| rr);
            (n.as_str(), r, relay.filter(|_| n != "relay"))
        })
        .collect();
    println!("medians of {repeat} rounds, servers on core {server_cpu}, load on core {client_cpu}");
    print_table(&table);
    let json: Vec<serde_json::Value> = medians
        .iter()
        .map(|(n, r)| {
            let mut v = serde_json::to_value(r).unwrap_or_default();
            v["target"] = n.as_str().into();
            v
        })
        .collect();
    println!("{}", serde_json::Value::from(json));
    // Every round's messages, merged per target and pair count.
    let mut merged: Vec<(String, hdrhistogram::Histogram<u64>)> = Vec::new();
    for (name, r) in &rows {
        let Some(h) = &r.window.latency else { continue };
        let key = format!("{name}, {} pairs", r.pairs);
        match merged.iter_mut().find(|(k, _)| *k == key) {
            Some((_, m)) => {
                let _ = m.add(h);
            }
            None => merged.push((key, h.clone())),
        }
    }
    let series: Vec<(String, Option<&hdrhistogram::Histogram<u64>>)> =
        merged.iter().map(|(k, h)| (k.clone(), Some(h))).collect();
    plot(
        &run,
        &format!("chatserver against the bare relay (rounds: {repeat})"),
        &series,
    )?;
    Ok(())
}

/// Writes the `--plot` picture, if one was asked for.
fn plot(
    run: &RunArgs,
    title: &str,
    series: &[(String, Option<&hdrhistogram::Histogram<u64>>)],
) -> Result<(), String> {
    let Some(path) = &run.plot else {
        return Ok(());
    };
    let series: Vec<(&str, &hdrhistogram::Histogram<u64>)> = series
        .iter()
        .filter_map(|(name, h)| Some((name.as_str(), (*h)?)))
        .collect();
    std::fs::write(path, bench::plot::latency_svg(title, &series))
        .map_err(|e| format!("cannot write {}: {e}", path.display()))?;
    eprintln!("latency plot written to {}", path.display());
    Ok(())
}

fn print_logins(r: &bench::LoginsReport, concurrency: usize) {
    println!(
        "{} logins in {:.1}s ({:.0}/s), {concurrency} at a time; {} refused at the cap (errno 51), {} failed{}; server RSS {} before, {} with all logged in ({} per connection)",
        r.logins,
        r.seconds,
        r.logins_per_s,
        r.refused_full,
        r.failed,
        r.first_failure
            .as_ref()
            .map_or(String::new(), |f| format!(" (first: {f})")),
        mib(r.rss_before),
        mib(r.rss_logged_in),
        r.rss_per_connection
            .map_or("-".into(), |b| format!("{:.1} KiB", b / 1024.0)),
    );
}

/// Runs `logins` in `procs` child processes at once, each holding its share,
/// and reads the server's memory while all of them hold their connections.
async fn logins_over_processes(
    addr: &str,
    users: usize,
    concurrency: usize,
    server_pid: Option<u32>,
    procs: usize,
) -> Result<(), String> {
    use tokio::io::AsyncBufReadExt;
    let me = std::env::current_exe().map_err(|e| e.to_string())?;
    let rss_before = server_pid.and_then(bench::process_rss);
    let started = Instant::now();
    let per = users.div_ceil(procs);
    let mut children = Vec::new();
    for p in 0..procs {
        let n = per.min(users.saturating_sub(p * per));
        if n == 0 {
            break;
        }
        let mut cmd = tokio::process::Command::new(&me);
        cmd.args(["logins", "--child", "--addr", addr])
            .args(["--users", &n.to_string()])
            .args(["--concurrency", &concurrency.div_ceil(procs).to_string()])
            .args(["--first-source", &(p * per).to_string()])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .kill_on_drop(true);
        children.push(
            cmd.spawn()
                .map_err(|e| format!("cannot start a child: {e}"))?,
        );
    }
    let mut total = bench::LoginsReport {
        logins: 0,
        refused_full: 0,
        failed: 0,
        first_failure: None,
        seconds: 0.0,
        logins_per_s: 0.0,
        rss_before,
        rss_logged_in: None,
        rss_per_connection: None,
    };
    for child in &mut children {
        let out = child.stdout.take().ok_or("child has no stdout")?;
        let mut line = String::new();
        tokio::io::BufReader::new(out)
            .read_line(&mut line)
            .await
            .map_err(|e| e.to_string())?;
        let r: bench::LoginsReport =
            serde_json::from_str(&line).map_err(|e| format!("child report {line:?}: {e}"))?;
        total.logins += r.logins;
        total.refused_full += r.refused_full;
        total.failed += r.failed;
        total.first_failure = total.first_failure.or(r.first_failure);
    }
    total.seconds = started.elapsed().as_secs_f64();
    total.logins_per_s = total.logins as f64 / total.seconds;
    tokio::time::sleep(Duration::from_millis(500)).await;
    total.rss_logged_in = server_pid.and_then(bench::process_rss);
    total.rss_per_connection = rss_before
        .zip(total.rss_logged_in)
        .filter(|_| total.logins > 0)
        .map(|(a, b)| (b as f64 - a as f64) / total.logins as f64);
    print_logins(&total, concurrency);
    println!(
        "{}",
        serde_json::to_string(&total).map_err(|e| e.to_string())?
    );
    for mut child in children {
        drop(child.stdin.take());
        let _ = child.wait().await;
    }
    Ok(())
}

fn mib(bytes: Option<u64>) -> String {
    bytes.map_or("-".into(), |b| format!("{:.1} MiB", b as f64 / 1048576.0))
}

fn median(mut v: Vec<f64>) -> Option<f64> {
    v.sort_by(f64::total_cmp);
    v.get(v.len() / 2).copied()
}

fn print_table(rows: &[(&str, &PairsReport, Option<&PairsReport>)]) {
    println!(
        "{:<13} {:>5} {:>9} {:>8} {:>10} {:>8} {:>8} {:>8} {:>9} {:>9}",
        "target",
        "pairs",
        "msg/s",
        "x relay",
        "CPU µs/msg",
        "x relay",
        "p50 µs",
        "p99 µs",
        "sent",
        "acked"
    );
    for (name, r, relay) in rows {
        let ratio = |a: Option<f64>, b: Option<f64>| match (a, b) {
            (Some(a), Some(b)) if b > 0.0 => format!("{:.2}", a / b),
            _ => "-".into(),
        };
        println!(
            "{:<13} {:>5} {:>9.0} {:>8} {:>10} {:>8} {:>8} {:>8} {:>9} {:>9}",
            name,
            r.pairs,
            r.window.msg_per_s,
            ratio(Some(r.window.msg_per_s), relay.map(|x| x.window.msg_per_s)),
            r.window
                .server_cpu_us_per_msg
                .map_or("-".into(), |c| format!("{c:.1}")),
            ratio(
                r.window.server_cpu_us_per_msg,
                relay.and_then(|x| x.window.server_cpu_us_per_msg)
            ),
            r.window.p50_us,
            r.window.p99_us,
            r.sent,
            r.acked,
        );
    }
}
