//! The web client in a real headless Chromium, driven through WebDriver
//! (Debian's chromium and chromium-driver, installed by
//! `scripts/provision.sh`): two browser users chat, one reloads and still
//! sees the history, one leaves, messages arrive meanwhile and it sees them
//! when it comes back, a dropped connection is resumed without losing or
//! doubling a message, and a browser user and a TCP user chat. The run saves
//! a screenshot of the conversation view to `target/screenshots/`.

mod common;

use std::net::SocketAddr;
use std::path::Path;
use std::process::Stdio;
use std::time::{Duration, Instant};

use common::{TestServer, pw, within};
use fantoccini::{Client as Browser, ClientBuilder, Locator, key::Key};
use serde_json::{Value, json};
use tokio::process::{Child, Command};

const CHROMIUM: &str = "/usr/bin/chromium";
const CHROMEDRIVER: &str = "/usr/bin/chromedriver";

/// A chromedriver of our own on a free port, killed with the test, and
/// the browsers it started with it: they share its process group, so a
/// test that fails before closing its browsers leaves none running.
struct Driver {
    child: Child,
    url: String,
}

impl Drop for Driver {
    fn drop(&mut self) {
        if let Some(pid) = self.child.id().and_then(|p| i32::try_from(p).ok()) {
            // SAFETY: kill(2) with a negative pid signals the process group
            // that chromedriver leads (`process_group(0)` below).
            unsafe {
                libc::kill(-pid, libc::SIGKILL);
            }
        }
    }
}

impl Driver {
    async fn start() -> Driver {
        assert!(
            Path::new(CHROMIUM).exists() && Path::new(CHROMEDRIVER).exists(),
            "chromium and chromium-driver are missing; run ./scripts/provision.sh as root"
        );
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("free port")
            .port();
        let child = Command::new(CHROMEDRIVER)
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .process_group(0)
            .spawn()
            .expect("spawn chromedriver");
        let addr = SocketAddr::from(([127, 0, 0, 1], port));
        let deadline = Instant::now() + Duration::from_secs(10);
        while tokio::net::TcpStream::connect(addr).await.is_err() {
            assert!(Instant::now() < deadline, "chromedriver did not start");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        Driver {
            child,
            url: format!("http://{addr}"),
        }
    }

    /// A browser of its own (own profile, so its own session storage).
    async fn browser(&self, width: u32, height: u32) -> Browser {
        let mut caps = serde_json::Map::new();
        caps.insert(
            "goog:chromeOptions".into(),
            json!({
                "binary": CHROMIUM,
                "args": ["--headless=new", "--no-sandbox", "--disable-gpu",
                         "--disable-dev-shm-usage", format!("--window-size={width},{height}"),
                         "--lang=en-US"],
            }),
        );
        ClientBuilder::new(hyper_util::client::legacy::connect::HttpConnector::new())
            .capabilities(caps)
            .connect(&self.url)
            .await
            .expect("browser session")
    }
}

/// Polls `expr` (JavaScript) in the page until it is truthy; returns it.
async fn until(b: &Browser, what: &str, expr: &str) -> Value {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let v = b
            .execute(&format!("return ({expr});"), vec![])
            .await
            .unwrap_or(Value::Null);
        let truthy = match &v {
            Value::Null | Value::Bool(false) => false,
            Value::Array(a) => !a.is_empty(),
            Value::String(s) => !s.is_empty(),
            _ => true,
        };
        if truthy {
            return v;
        }
        if Instant::now() >= deadline {
            let page = b
                .execute(
                    "return [...document.querySelectorAll('.error, #status, #registered')].map(e => e.id + ': ' + e.textContent).join(' | ') + ' | friends: ' + JSON.stringify([...state.friends.values()]);",
                    vec![],
                )
                .await
                .unwrap_or(Value::Null);
            panic!("timed out waiting for {what}; the page says {page}");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The page shows the app (logged in), not the login form.
const APP_SHOWN: &str = "!document.getElementById('app').hidden";

/// The texts of the open conversation, in order.
const TEXTS: &str = "[...document.querySelectorAll('#messages li .text')].map(e => e.textContent)";

async fn click(b: &Browser, css: &str) {
    b.find(Locator::Css(css))
        .await
        .expect(css)
        .click()
        .await
        .expect("click");
}

/// Waits until the sidebar lists conversation `conv` (`u:ID` or `g:ID`),
/// and, if `online`, shows it online.
async fn listed(b: &Browser, what: &str, conv: &str, online: bool) {
    let dot = if online { " .dot.online" } else { "" };
    until(
        b,
        what,
        &format!("document.querySelector(\"button[data-conv='{conv}']{dot}\")"),
    )
    .await;
}

async fn type_into(b: &Browser, css: &str, text: &str) {
    let el = b.find(Locator::Css(css)).await.expect(css);
    el.clear().await.expect("clear");
    el.send_keys(text).await.expect("type");
}

async fn log_in(b: &Browser, web: SocketAddr, id: chat::model::UserId, password: &str) {
    b.goto(&format!("http://{web}/"))
        .await
        .expect("open the page");
    until(
        b,
        "the login form",
        "!document.getElementById('auth').hidden",
    )
    .await;
    type_into(b, "#login-id", &id.to_string()).await;
    type_into(b, "#login-password", password).await;
    click(b, "#login-button").await;
    until(b, "the app after login", APP_SHOWN).await;
}

async fn open(b: &Browser, conv: &str) {
    b.find(Locator::Css(&format!("button[data-conv='{conv}']")))
        .await
        .unwrap_or_else(|_| panic!("conversation {conv} listed"))
        .click()
        .await
        .expect("click");
    until(
        b,
        "the conversation open",
        &format!("document.querySelector(\"button[data-conv='{conv}']\").getAttribute('aria-current') === 'true'"),
    )
    .await;
}

/// Types `text` and presses Enter, as a user does.
async fn say(b: &Browser, text: &str) {
    let input = b.find(Locator::Css("#message-input")).await.expect("input");
    input.send_keys(text).await.expect("type");
    input.send_keys(&Key::Enter).await.expect("enter");
}

/// Sends `text` with the Send button after setting it directly (WebDriver
/// cannot type characters outside the BMP, such as emoji).
async fn say_exactly(b: &Browser, text: &str) {
    b.execute(
        "document.getElementById('message-input').value = arguments[0];",
        vec![json!(text)],
    )
    .await
    .expect("set");
    click(b, "#send-button").await;
}

async fn stored(b: &Browser, text: &str) {
    until(
        b,
        &format!("{text:?} stored"),
        &format!(
            "[...document.querySelectorAll('#messages li[data-state=stored] .text')].some(e => e.textContent === {})",
            json!(text)
        ),
    )
    .await;
}

async fn shown(b: &Browser, text: &str) {
    until(
        b,
        &format!("{text:?} shown"),
        &format!("{TEXTS}.includes({})", json!(text)),
    )
    .await;
}

async fn texts(b: &Browser) -> Vec<String> {
    let v = b
        .execute(&format!("return {TEXTS};"), vec![])
        .await
        .expect("texts");
    serde_json::from_value(v).expect("strings")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn people_chat_from_browsers_and_with_tcp_users() {
    let server = TestServer::start().await;
    let driver = Driver::start().await;
    let web = server.web;
    let alice = server.register("alice").await;
    let (mut carol, carol_id) = server.user("carol").await;

    // Bob registers in the page, then logs in with the id it shows.
    let b = driver.browser(420, 760).await;
    b.goto(&format!("http://{web}/"))
        .await
        .expect("open the page");
    until(
        &b,
        "the register form",
        "!document.getElementById('auth').hidden",
    )
    .await;
    type_into(&b, "#register-name", "bob").await;
    type_into(&b, "#register-password", &pw("bob")).await;
    click(&b, "#register-button").await;
    let bob: chat::model::UserId = until(
        &b,
        "the new id",
        "document.getElementById('registered').dataset.id",
    )
    .await
    .as_str()
    .and_then(|s| s.parse().ok())
    .expect("an id");
    log_in(&b, web, bob, &pw("bob")).await;

    let a = driver.browser(1000, 700).await;
    log_in(&a, web, alice, &pw("alice")).await;

    // They befriend each other (each asks the other: the second ask
    // befriends) and see each other online.
    type_into(&a, "#add-friend-id", &bob.to_string()).await;
    click(&a, "#add-friend-button").await;
    type_into(&b, "#add-friend-id", &alice.to_string()).await;
    click(&b, "#add-friend-button").await;
    listed(&b, "alice listed", &format!("u:{alice}"), false).await;
    listed(&a, "bob listed online", &format!("u:{bob}"), true).await;

    // Two browser users chat; CJK and emoji intact.
    open(&a, &format!("u:{bob}")).await;
    say(&a, "hi Bob, 你好").await;
    stored(&a, "hi Bob, 你好").await;
    until(
        &b,
        "an unread marker",
        &format!("document.querySelector(\"button[data-conv='u:{alice}'] .unread\")"),
    )
    .await;
    open(&b, &format!("u:{alice}")).await;
    shown(&b, "hi Bob, 你好").await;
    say_exactly(&b, "hello Alice 👋🏽").await;
    stored(&b, "hello Alice 👋🏽").await;
    shown(&a, "hello Alice 👋🏽").await;

    // Alice reloads the page: still logged in, the history is there.
    a.refresh().await.expect("reload");
    until(&a, "the app after reload", APP_SHOWN).await;
    open(&a, &format!("u:{bob}")).await;
    // the history page and a message not yet acknowledged before the
    // reload (delivered again, once) may come in either order
    shown(&a, "hello Alice 👋🏽").await;
    shown(&a, "hi Bob, 你好").await;
    assert_eq!(texts(&a).await, ["hi Bob, 你好", "hello Alice 👋🏽"]);

    // Bob leaves the page; messages arrive meanwhile; he comes back and
    // sees them, once each, in order.
    b.goto("about:blank").await.expect("leave");
    until(
        &a,
        "bob shown offline, live",
        &format!("!document.querySelector(\"button[data-conv='u:{bob}'] .dot.online\")"),
    )
    .await;
    say(&a, "are you there?").await;
    stored(&a, "are you there?").await;
    say(&a, "call me").await;
    stored(&a, "call me").await;
    b.goto(&format!("http://{web}/")).await.expect("come back");
    until(&b, "the app on return", APP_SHOWN).await;
    listed(&a, "bob shown online again", &format!("u:{bob}"), true).await;
    open(&b, &format!("u:{alice}")).await;
    shown(&b, "call me").await;
    assert_eq!(
        texts(&b).await,
        [
            "hi Bob, 你好",
            "hello Alice 👋🏽",
            "are you there?",
            "call me"
        ]
    );

    // The connection drops while Bob sends: the message waits, goes again
    // after the resume, and is stored and delivered exactly once.
    b.execute("state.ws.close();", vec![]).await.expect("drop");
    say(&b, "back online").await;
    stored(&b, "back online").await;
    shown(&a, "back online").await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let seen = texts(&a).await;
    assert_eq!(
        seen.iter().filter(|t| *t == "back online").count(),
        1,
        "{seen:?}"
    );

    // A browser user and a TCP user chat.
    carol.chat(alice, "from the terminal").await.expect("chat");
    listed(&a, "carol listed", &format!("u:{carol_id}"), false).await;
    open(&a, &format!("u:{carol_id}")).await;
    shown(&a, "from the terminal").await;
    say(&a, "from the browser").await;
    let m = within(carol.next_message()).await.expect("message");
    assert_eq!((m.from, m.msg.as_str()), (alice, "from the browser"));

    // A group: alice creates it, bob joins by its id and sees its members
    // at once, and they chat in it.
    type_into(&a, "#create-group-name", "team 团队").await;
    click(&a, "#create-group-button").await;
    let group = until(
        &a,
        "the new group listed",
        "document.querySelector(\"#groups button[data-conv^='g:']\")?.dataset.conv",
    )
    .await;
    let group = group.as_str().expect("conv key").to_owned();
    // On his phone-sized screen bob goes back to the list first.
    click(&b, "#back").await;
    type_into(&b, "#join-group-id", &group[2..]).await;
    click(&b, "#join-group-button").await;
    until(
        &b,
        "the joined group listed by name",
        &format!("document.querySelector(\"button[data-conv='{group}']\")?.textContent.includes('team 团队')"),
    )
    .await;
    open(&b, &group).await;
    until(
        &b,
        "its members shown",
        "document.getElementById('conv-members').textContent.includes('alice')",
    )
    .await;
    open(&a, &group).await;
    say(&a, "welcome to the team").await;
    stored(&a, "welcome to the team").await;
    shown(&b, "welcome to the team").await;

    // The conversation view, for the README.
    open(&a, &format!("u:{bob}")).await;
    shown(&a, "back online").await;
    let png = a.screenshot().await.expect("screenshot");
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("target/screenshots");
    std::fs::create_dir_all(&dir).expect("screenshot dir");
    std::fs::write(dir.join("conversation.png"), &png).expect("save screenshot");
    let phone = b.screenshot().await.expect("screenshot");
    std::fs::write(dir.join("conversation-phone.png"), &phone).expect("save screenshot");

    a.close().await.expect("close");
    b.close().await.expect("close");
}

/// Two tabs of one browser are two devices of one user: both online
/// together, each gets what is sent to the user and what the other tab
/// sent, both show the peer's read tick and a recall, and one logs the
/// other out from its device list.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_tabs_of_one_user_are_online_together() {
    let server = TestServer::start().await;
    let driver = Driver::start().await;
    let web = server.web;
    let bob = server.register("bob").await;
    let (mut alice, alice_id) = server.user("alice").await;
    alice.add_friend(bob).await.expect("ask");
    {
        let mut b = server.client().await;
        b.login(bob, &pw("bob")).await.expect("login");
        b.answer_friend(alice_id, true).await.expect("accept");
        b.logout().await.expect("logout");
    }

    let b = driver.browser(1000, 700).await;
    log_in(&b, web, bob, &pw("bob")).await;
    let first = b.window().await.expect("this tab");
    let second = b.new_window(true).await.expect("a second tab").handle;
    b.switch_to_window(second.clone()).await.expect("switch");
    log_in(&b, web, bob, &pw("bob")).await;
    // the second tab lists the first as another device, online
    until(
        &b,
        "the first tab listed online",
        "document.querySelectorAll('#devices li .dot.online').length === 2",
    )
    .await;

    // a message to bob reaches both tabs
    alice.chat(bob, "to both tabs").await.expect("send");
    listed(&b, "alice listed", &format!("u:{alice_id}"), true).await;
    open(&b, &format!("u:{alice_id}")).await;
    shown(&b, "to both tabs").await;
    b.switch_to_window(first.clone()).await.expect("switch");
    open(&b, &format!("u:{alice_id}")).await;
    shown(&b, "to both tabs").await;

    // what the first tab sends shows in the second, as bob's own
    say(&b, "sent from tab one").await;
    stored(&b, "sent from tab one").await;
    let got = within(alice.next_message()).await.expect("alice gets it");
    assert_eq!(got.msg, "sent from tab one");
    b.switch_to_window(second.clone()).await.expect("switch");
    shown(&b, "sent from tab one").await;
    until(
        &b,
        "shown as bob's own",
        "[...document.querySelectorAll('#messages li.mine .text')].some(e => e.textContent === 'sent from tab one')",
    )
    .await;

    // alice reads it: both tabs show the read tick
    alice
        .read(chat::protocol::HistoryTarget::User(bob), got.seq, false)
        .await
        .expect("read");
    const READ_TICK: &str = "[...document.querySelectorAll('#messages li.read .text')].some(e => e.textContent === 'sent from tab one')";
    until(&b, "the read tick in the second tab", READ_TICK).await;
    b.switch_to_window(first.clone()).await.expect("switch");
    until(&b, "the read tick in the first tab", READ_TICK).await;

    // the first tab recalls it from the message's menu: alice and the
    // second tab see it recalled
    click(&b, "#messages li.mine .recall").await;
    shown(&b, "(this message was recalled)").await;
    let event = within(alice.next_message())
        .await
        .expect("the recall event");
    assert_eq!(event.kind, chat::model::MsgKind::RecallOf(got.seq));
    b.switch_to_window(second.clone()).await.expect("switch");
    shown(&b, "(this message was recalled)").await;
    assert!(
        !texts(&b).await.iter().any(|t| t == "sent from tab one"),
        "the recalled text is gone"
    );

    // the second tab logs the first out
    click(&b, "#devices li button").await;
    b.switch_to_window(first).await.expect("switch");
    until(
        &b,
        "the first tab back at the login form",
        "!document.getElementById('auth').hidden",
    )
    .await;
    b.switch_to_window(second).await.expect("switch");
    until(&b, "the second tab still in", APP_SHOWN).await;
    b.close().await.expect("close");
}

/// Consent in the browser: alice asks bob to be her friend and her page
/// says the request is sent (bob is not listed yet); bob's page shows the
/// request and he accepts it there; both then list each other, online.
/// Alice creates a private group, opens its members panel (where she is
/// the owner) and invites bob by his id; bob's page shows the invitation,
/// he accepts it, the group appears in his list by name, alice's panel
/// shows him a member, and what alice says in the group reaches his page.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn friend_request_and_group_invitation_accepted_in_the_browser() {
    let server = TestServer::start().await;
    let driver = Driver::start().await;
    let web = server.web;
    let alice = server.register("alice").await;
    let bob = server.register("bob").await;
    let a = driver.browser(1000, 700).await;
    log_in(&a, web, alice, &pw("alice")).await;
    let b = driver.browser(1000, 700).await;
    log_in(&b, web, bob, &pw("bob")).await;

    // Alice asks: the request is sent, bob is not her friend yet.
    type_into(&a, "#add-friend-id", &bob.to_string()).await;
    click(&a, "#add-friend-button").await;
    until(
        &a,
        "the request said sent",
        &format!("document.getElementById('add-friend-note').textContent.includes('Request sent to bob ({bob})')"),
    )
    .await;
    until(
        &a,
        "the request listed as waiting",
        &format!("document.getElementById('outgoing-{bob}')"),
    )
    .await;
    let listed_early = a
        .execute(
            &format!("return !!document.querySelector(\"button[data-conv='u:{bob}']\");"),
            vec![],
        )
        .await
        .expect("query");
    assert_eq!(listed_early, json!(false), "bob listed before he accepts");

    // Bob's page shows the request; he accepts it.
    until(
        &b,
        "alice's request shown",
        &format!("document.querySelector('#request-{alice}')?.textContent.includes('alice')"),
    )
    .await;
    click(&b, &format!("#request-{alice} .accept")).await;
    listed(&b, "alice listed online", &format!("u:{alice}"), true).await;
    until(
        &b,
        "the request gone",
        &format!("!document.getElementById('request-{alice}')"),
    )
    .await;
    listed(&a, "bob listed online", &format!("u:{bob}"), true).await;
    until(
        &a,
        "the waiting request gone",
        &format!("!document.getElementById('outgoing-{bob}')"),
    )
    .await;

    // Alice creates a private group and invites bob by his id.
    type_into(&a, "#create-group-name", "secret 秘密").await;
    click(&a, "#create-group-private").await;
    click(&a, "#create-group-button").await;
    let group = until(
        &a,
        "the new group listed",
        "document.querySelector(\"#groups button[data-conv^='g:']\")?.dataset.conv",
    )
    .await;
    let group = group.as_str().expect("conv key").to_owned();
    let gid = &group[2..];
    open(&a, &group).await;
    click(&a, "#members-button").await;
    until(
        &a,
        "alice shown as the owner",
        &format!("document.getElementById('member-{alice}')?.dataset.role === 'creator'"),
    )
    .await;
    type_into(&a, "#invite-user-id", &bob.to_string()).await;
    click(&a, "#invite-button").await;
    until(
        &a,
        "bob shown invited",
        &format!("document.getElementById('invited-{bob}')"),
    )
    .await;

    // Bob's page shows the invitation; he accepts; the group is his.
    until(
        &b,
        "the invitation shown",
        &format!(
            "document.querySelector('#invitation-{gid}')?.textContent.includes('secret 秘密')"
        ),
    )
    .await;
    click(&b, &format!("#invitation-{gid} .accept")).await;
    until(
        &b,
        "the group listed by name",
        &format!("document.querySelector(\"button[data-conv='{group}']\")?.textContent.includes('secret 秘密')"),
    )
    .await;
    until(
        &b,
        "the invitation gone",
        &format!("!document.getElementById('invitation-{gid}')"),
    )
    .await;
    until(
        &a,
        "bob shown a member in alice's panel",
        &format!("document.getElementById('member-{bob}')?.dataset.role === 'normal'"),
    )
    .await;
    open(&b, &group).await;

    // What alice says in the group reaches bob.
    say(&a, "welcome to the secret").await;
    stored(&a, "welcome to the secret").await;
    shown(&b, "welcome to the secret").await;

    // Bob's members panel lists both, and offers him nothing to manage.
    click(&b, "#members-button").await;
    until(
        &b,
        "both members listed",
        &format!(
            "document.getElementById('member-{alice}') && document.getElementById('member-{bob}')"
        ),
    )
    .await;
    let manage_hidden = b
        .execute(
            "return document.getElementById('manage-group').hidden;",
            vec![],
        )
        .await
        .expect("query");
    assert_eq!(
        manage_hidden,
        json!(true),
        "a normal member manages nothing"
    );

    a.close().await.expect("close");
    b.close().await.expect("close");
}
