//! `chatclient`: the terminal client, with the original's menu and commands.
//!
//! Reads lines from standard input, so it can be scripted through a pipe as
//! well as used at a terminal. Incoming messages print as they arrive.

use std::io::Write;
use std::process::ExitCode;
use std::time::Duration;

use chat::client::command::{self, Command, HELP};
use chat::client::reliable::{Event, Options, Reliable};
use chat::client::{Client, ClientError, Endpoint, LoginInfo};
use chat::protocol::HistoryTarget;
use clap::Parser;
use tokio::io::{AsyncBufReadExt, BufReader, Lines, Stdin};

#[derive(Debug, Parser)]
#[command(
    name = "chatclient",
    version,
    about = "Terminal chat client (classic commands)"
)]
struct Cli {
    /// Server IP address.
    ip: Option<String>,
    /// Server port.
    port: Option<u16>,
    /// Server address as HOST:PORT; overrides IP and PORT.
    #[arg(long)]
    server: Option<String>,
    /// Speak TLS, trusting the certificate (or authority) in this PEM file
    /// (the server's `--tls-listen` port).
    #[arg(long, env = "CHAT_TLS_CA")]
    tls_ca: Option<std::path::PathBuf>,
    /// The name the server's certificate must carry (default: the host of
    /// the server address).
    #[arg(long, requires = "tls_ca")]
    tls_name: Option<String>,
    /// The name of this device (1 to 64 visible ASCII characters): each of
    /// a user's devices is online at once and gets everything. Default:
    /// one per machine and system user (cli-HOST-USER); `-` for the
    /// classic device (one per user, as the original client).
    #[arg(long)]
    device: Option<String>,
}

/// The device name this machine and system user use by default.
fn default_device() -> String {
    let host = std::fs::read_to_string("/etc/hostname").unwrap_or_default();
    let user = std::env::var("USER").unwrap_or_default();
    let clean = |s: &str| -> String {
        s.trim()
            .chars()
            .filter(|c| c.is_ascii_graphic())
            .take(24)
            .collect()
    };
    format!("cli-{}-{}", clean(&host), clean(&user))
}

type Input = Lines<BufReader<Stdin>>;

fn say(s: impl AsRef<str>) {
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{}", s.as_ref());
    let _ = out.flush();
}

fn prompt(s: &str) {
    let mut out = std::io::stdout().lock();
    let _ = write!(out, "{s}");
    let _ = out.flush();
}

async fn read_line(input: &mut Input) -> Option<String> {
    input.next_line().await.ok().flatten()
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    let addr = match (&cli.server, &cli.ip, cli.port) {
        (Some(s), _, _) => s.clone(),
        (None, Some(ip), Some(port)) => format!("{ip}:{port}"),
        _ => {
            eprintln!("command invalid! example: ./chatclient 127.0.0.1 6000");
            return ExitCode::from(2);
        }
    };
    let tls = match &cli.tls_ca {
        None => None,
        Some(ca) => {
            let name = cli
                .tls_name
                .clone()
                .unwrap_or_else(|| chat::tls::host_of(&addr).to_owned());
            match chat::tls::TlsClient::new(ca, &name) {
                Ok(t) => Some(t),
                Err(e) => {
                    eprintln!("TLS: {e}");
                    return ExitCode::from(2);
                }
            }
        }
    };
    let endpoint = Endpoint { addr, tls };
    let device = match cli.device.as_deref() {
        Some("-") => None,
        Some(d) => Some(d.to_owned()),
        None => Some(default_device()),
    };
    let mut client = match endpoint.connect().await {
        Ok(c) => c,
        Err(e) => {
            eprintln!("connect server error: {e}");
            return ExitCode::FAILURE;
        }
    };
    let mut input = BufReader::new(tokio::io::stdin()).lines();
    loop {
        say("========================");
        say("1. login");
        say("2. register");
        say("3. quit");
        say("========================");
        prompt("choice:");
        let Some(choice) = read_line(&mut input).await else {
            return ExitCode::SUCCESS;
        };
        match choice.trim() {
            "1" => {
                prompt("userid:");
                let Some(id) = read_line(&mut input).await else {
                    break;
                };
                prompt("userpassword:");
                let Some(password) = read_line(&mut input).await else {
                    break;
                };
                let Ok(id) = id.trim().parse() else {
                    say("userid must be a number!");
                    continue;
                };
                // The session gets a connection of its own that outlives
                // network trouble: it reconnects, resumes and resends.
                let options = Options {
                    device: device.clone(),
                    ..Options::default()
                };
                match Reliable::login(endpoint.clone(), id, &password, options).await {
                    Ok((mut session, info)) => {
                        show_login(&info);
                        match chat_loop(&mut session, &mut input).await {
                            Ok(true) => continue,
                            Ok(false) => break,
                            Err(e) => {
                                eprintln!("connection lost: {e}");
                                return ExitCode::FAILURE;
                            }
                        }
                    }
                    Err(ClientError::Server { errmsg, .. }) => say(errmsg),
                    Err(e) => {
                        eprintln!("connection lost: {e}");
                        return ExitCode::FAILURE;
                    }
                }
            }
            "2" => {
                prompt("username:");
                let Some(name) = read_line(&mut input).await else {
                    break;
                };
                prompt("userpassword:");
                let Some(password) = read_line(&mut input).await else {
                    break;
                };
                match client.register(&name, &password).await {
                    Ok(id) => say(format!(
                        "{name} register success, userid is {id}, do not forget it!"
                    )),
                    Err(ClientError::Server { errmsg, .. }) => {
                        say(format!("{name} register error: {errmsg}"))
                    }
                    Err(e) => {
                        eprintln!("connection lost: {e}");
                        return ExitCode::FAILURE;
                    }
                }
            }
            "3" => break,
            _ => say("invalid input!"),
        }
    }
    ExitCode::SUCCESS
}

fn show_login(info: &LoginInfo) {
    say("======================================================");
    say(format!(
        "current login user => id:{} name:{}",
        info.id, info.name
    ));
    say("----------------------friend list---------------------");
    for f in &info.friends {
        say(format!("{} {} {}", f.id, f.name, state(f.online)));
    }
    say("----------------------group list----------------------");
    for g in &info.groups {
        say(format!("{} {} {}", g.id, g.name, g.desc));
        for m in &g.members {
            say(format!(
                "\t{} {} {} {}",
                m.id,
                m.name,
                state(m.online),
                m.role.as_deref().unwrap_or("normal")
            ));
        }
    }
    for u in &info.requests {
        say(format!(
            "{} {} asks to be your friend (accept:{} or decline:{})",
            u.id, u.name, u.id, u.id
        ));
    }
    for i in &info.invitations {
        say(format!(
            "{} {} invites you into group {} (id {}): acceptinvite:{}",
            i.by, i.byname, i.groupname, i.groupid, i.groupid
        ));
    }
    say("======================================================");
    for m in &info.offline {
        say(m.display());
    }
}

fn msgid_of(v: &serde_json::Value) -> Option<i64> {
    v.get("msgid").and_then(|m| m.as_i64())
}

fn state(online: bool) -> &'static str {
    if online { "online" } else { "offline" }
}

fn show_help() {
    say("show command list >>> ");
    for (name, text) in HELP {
        say(format!("{name} : {text}"));
    }
    say("");
}

/// Shows an event; false once the session is over (replaced elsewhere).
fn show_event(event: Event, me: chat::model::UserId) -> bool {
    match event {
        Event::Message(m) => say(m.display()),
        Event::Notice(v) if v.get("msgid").and_then(|m| m.as_i64()) == Some(23) => {
            let name = v.get("name").and_then(|n| n.as_str()).unwrap_or("someone");
            say(format!("({name} is typing...)"));
        }
        Event::Notice(v) if v.get("msgid").and_then(|m| m.as_i64()) == Some(24) => {
            // Read receipts: the peer's, shown; the user's own (from
            // another device), not.
            let name = v.get("name").and_then(|n| n.as_str()).unwrap_or("");
            let seq = v.get("seq").and_then(|s| s.as_i64()).unwrap_or(0);
            if v.get("id").and_then(|i| i.as_i64()) != Some(me.0) {
                say(format!("({name} has read up to #{seq})"));
            }
        }
        Event::Notice(v) if v.get("msgid").and_then(|m| m.as_i64()) == Some(22) => {
            let group = v.get("groupid").and_then(|g| g.as_i64()).unwrap_or(0);
            if v.get("member").and_then(|m| m.as_bool()) == Some(true) {
                say(format!("(you are a member of group {group} now)"));
            } else {
                say(format!("(you are no longer a member of group {group})"));
            }
        }
        Event::Notice(v) if matches!(msgid_of(&v), Some(31..=34)) => {
            let text = |k: &str| v.get(k).and_then(|x| x.as_str()).unwrap_or("").to_owned();
            let num = |k: &str| v.get(k).and_then(|x| x.as_i64()).unwrap_or(0);
            let (id, name, group) = (num("id"), text("name"), num("groupid"));
            say(match msgid_of(&v) {
                Some(31) => format!(
                    "({name} (id {id}) asks to be your friend: accept:{id} or decline:{id})"
                ),
                Some(32) => format!("({name} (id {id}) accepted: you are friends now)"),
                Some(33) => format!(
                    "({name} invites you into group {} (id {group}): acceptinvite:{group} or declineinvite:{group})",
                    text("groupname")
                ),
                _ => format!(
                    "({name} (id {id}) asks to join group {} (id {group}): approve:{group}:{id} or reject:{group}:{id})",
                    text("groupname")
                ),
            });
        }
        // "The group changed": shown by groupinfo when asked.
        Event::Notice(v) if msgid_of(&v) == Some(40) => {}
        Event::Notice(v) => {
            let msg = v
                .get("errmsg")
                .or_else(|| v.get("error"))
                .and_then(|m| m.as_str())
                .unwrap_or("");
            say(format!("server: {msg}"));
        }
        Event::Reconnecting { attempt, wait } => say(format!(
            "connection lost; reconnecting in {} ms (attempt {attempt})...",
            wait.as_millis()
        )),
        Event::Reconnected => say("reconnected; nothing was lost"),
        Event::Replaced => return false,
    }
    true
}

/// Runs commands until logout (`Ok(true)`) or end of input (`Ok(false)`).
/// Heartbeats, acknowledgements and reconnects happen inside [`Reliable`]:
/// it notices a dead server or network within its ping interval plus its
/// answer timeout (15 s + 10 s) and says so here while it reconnects.
async fn chat_loop(client: &mut Reliable, input: &mut Input) -> Result<bool, ClientError> {
    show_help();
    loop {
        let line = tokio::select! {
            line = read_line(input) => line,
            event = client.next_event() => {
                if show_event(event, client.id()) {
                    continue;
                }
                return Err(ClientError::Closed);
            }
        };
        let Some(line) = line else {
            // Input ended: show what has already arrived, say we have it,
            // then leave.
            while let Ok(event) =
                tokio::time::timeout(Duration::from_millis(100), client.next_event()).await
            {
                if !show_event(event, client.id()) {
                    break;
                }
            }
            client.acknowledge_now().await;
            return Ok(false);
        };
        if line.trim().is_empty() {
            continue;
        }
        let cmd = match command::parse(&line) {
            Ok(c) => c,
            Err(e) => {
                say(e);
                continue;
            }
        };
        match run(client, cmd).await {
            Ok(Some(true)) => return Ok(true),
            Ok(_) => {}
            Err(ClientError::Server { errno, errmsg }) => say(format!("error {errno}: {errmsg}")),
            // Chat messages are resent by the session itself; other
            // commands are the user's to repeat once it has reconnected.
            Err(e) => say(format!("not done, the connection broke ({e}); try again")),
        }
    }
}

/// Runs one command; `Some(true)` means the user logged out.
async fn run(session: &mut Reliable, cmd: Command) -> Result<Option<bool>, ClientError> {
    match cmd {
        Command::Help => show_help(),
        Command::Chat { to, msg } => {
            session.send(HistoryTarget::User(to), &msg).await?;
        }
        Command::GroupChat { group, msg } => {
            session.send(HistoryTarget::Group(group), &msg).await?;
        }
        Command::Logout => {
            session.logout().await?;
            return Ok(Some(true));
        }
        other => run_request(session.client().await?, other).await?,
    }
    Ok(None)
}

/// The commands that are plain requests.
async fn run_request(client: &mut Client, cmd: Command) -> Result<(), ClientError> {
    match cmd {
        Command::Help | Command::Chat { .. } | Command::GroupChat { .. } | Command::Logout => {}
        Command::Devices => {
            say("----------------------your devices--------------------");
            for d in client.devices().await? {
                let name = if d.device.is_empty() {
                    "(classic)"
                } else {
                    &d.device
                };
                let here = if d.current { " (this one)" } else { "" };
                say(format!("{name} {}{here}", state(d.online)));
            }
        }
        Command::Recall { with, seq } => {
            let event = client.recall(with, seq).await?;
            say(format!("message #{seq} recalled (event #{event})"));
        }
        Command::Edit { with, seq, msg } => {
            let event = client.edit(with, seq, &msg).await?;
            say(format!("message #{seq} edited (event #{event})"));
        }
        Command::DeleteAccount(password) => {
            client.delete_account(&password).await?;
            say("your account is deleted");
        }
        Command::Block(id) => {
            client.block(id).await?;
            say(format!("user {id} is blocked"));
        }
        Command::Unblock(id) => {
            client.unblock(id).await?;
            say(format!("user {id} is no longer blocked"));
        }
        Command::OnlyFriends(on) => {
            let now = client.set_only_friends(on).await?;
            say(if now {
                "you take messages from friends only"
            } else {
                "you take messages from anyone"
            });
        }
        Command::LogoutDevice(name) => {
            client.device_logout(&name).await?;
            say(format!("device {name} is logged out"));
        }
        Command::AddFriend(id) => {
            if client.add_friend(id).await? {
                say(format!(
                    "asked user {id} to be your friend; you are friends once they accept"
                ));
            } else {
                say(format!("user {id} is now your friend"));
            }
        }
        Command::FriendRequests => {
            let r = client.friend_requests().await?;
            say("----------------------friend requests-----------------");
            for u in &r.incoming {
                say(format!(
                    "{} {} asks you (accept:{} or decline:{})",
                    u.id, u.name, u.id, u.id
                ));
            }
            for u in &r.outgoing {
                say(format!("{} {} has not answered you yet", u.id, u.name));
            }
        }
        Command::AnswerFriend(id, accept) => {
            client.answer_friend(id, accept).await?;
            say(if accept {
                format!("user {id} is now your friend")
            } else {
                format!("declined user {id}'s request (they are not told)")
            });
        }
        Command::Invite(g, u) => {
            let r = client.group_invite(g, u).await?;
            say(if r.joined {
                format!("user {u} had asked to join group {g}: they are a member now")
            } else {
                format!("invited user {u} into group {g}")
            });
        }
        Command::JoinRequest(g) => {
            client.group_join_request(g).await?;
            say(format!(
                "asked to join group {g}; its admins decide (nothing more is said if there is no such group)"
            ));
        }
        Command::AnswerInvite(g, accept) => {
            client.group_answer(g, None, accept).await?;
            say(if accept {
                format!("joined group {g}")
            } else {
                format!("declined the invitation to group {g}")
            });
        }
        Command::AnswerRequest(g, u, accept) => {
            client.group_answer(g, Some(u), accept).await?;
            say(if accept {
                format!("user {u} is a member of group {g} now")
            } else {
                format!("declined user {u}'s request to join group {g}")
            });
        }
        Command::SetRole(g, u, role) => {
            client.set_group_role(g, u, &role).await?;
            say(format!("user {u} is {role} of group {g} now"));
        }
        Command::RemoveMember(g, u) => {
            client.group_remove(g, u).await?;
            say(format!("removed user {u} from group {g}"));
        }
        Command::RenameGroup(g, name) => {
            client.group_update(g, Some(&name), None).await?;
            say(format!("group {g} is called {name} now"));
        }
        Command::Dissolve(g) => {
            client.group_dissolve(g).await?;
            say(format!("group {g} is dissolved"));
        }
        Command::GroupInfo(g) => {
            let info = client.group_info(g).await?;
            let kind = if info.private { "private" } else { "public" };
            say(format!(
                "{} {} {} ({kind})",
                info.groupid, info.groupname, info.groupdesc
            ));
            for m in &info.users {
                let online = m.state == chat::protocol::replies::State::Online;
                say(format!(
                    "\t{} {} {} {}",
                    m.id,
                    m.name,
                    state(online),
                    m.role.as_deref().unwrap_or("normal")
                ));
            }
            for i in &info.invites {
                say(format!("\tpending {}: {} {}", i.kind, i.id, i.name));
            }
        }
        Command::DelFriend(id) => {
            client.del_friend(id).await?;
            say(format!("user {id} is no longer your friend"));
        }
        Command::CreateGroup {
            name,
            desc,
            private,
        } => {
            let id = client.create_group_as(&name, &desc, private).await?;
            say(format!("group {name} created, groupid is {id}"));
        }
        Command::AddGroup(id) => {
            client.join_group(id).await?;
            say(format!("joined group {id}"));
        }
        Command::DelGroup(id) => {
            client.leave_group(id).await?;
            say(format!("left group {id}"));
        }
        Command::ShowFriendList => {
            say("----------------------friend list---------------------");
            for f in client.friends().await? {
                say(format!("{} {} {}", f.id, f.name, state(f.online)));
            }
        }
        Command::History {
            with,
            before,
            limit,
        } => {
            let msgs = client.history(with, before, limit).await?;
            let label = match with {
                HistoryTarget::User(u) => format!("friend {u}"),
                HistoryTarget::Group(g) => format!("group {g}"),
            };
            say(format!(
                "----------------history with {label}----------------"
            ));
            for m in msgs.iter().rev() {
                say(format!("#{} {}", m.seq, m.display()));
            }
            if let Some(oldest) = msgs.last() {
                say(format!("(older: history:...:{})", oldest.seq));
            }
        }
    }
    Ok(())
}
