//! The web listener: the web client's files, and the chat protocol over
//! WebSocket, spoken by a WebSocket client here and a TCP client beside it.

mod common;

use std::time::Duration;

use common::{TestServer, pw, within};
use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_tungstenite::tungstenite::Message;

type Ws =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

async fn ws(server: &TestServer) -> Ws {
    let (ws, _) = tokio_tungstenite::connect_async(format!("ws://{}/ws", server.web))
        .await
        .expect("websocket");
    ws
}

async fn send(ws: &mut Ws, frame: Value) {
    ws.send(Message::text(frame.to_string()))
        .await
        .expect("send");
}

/// The next JSON frame; `None` once the server closed.
async fn next(ws: &mut Ws) -> Option<Value> {
    loop {
        match within(ws.next()).await? {
            Ok(Message::Text(t)) => return Some(serde_json::from_str(&t).expect("json")),
            Ok(Message::Close(_)) | Err(_) => return None,
            Ok(_) => continue,
        }
    }
}

/// Reads until the reply with `msgid`, skipping pushes.
async fn reply(ws: &mut Ws, msgid: i64) -> Value {
    loop {
        let f = next(ws).await.expect("closed before the reply");
        if f["msgid"] == msgid {
            return f;
        }
    }
}

async fn http_get(server: &TestServer, path: &str) -> String {
    let mut s = tokio::net::TcpStream::connect(server.web)
        .await
        .expect("connect");
    s.write_all(format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").as_bytes())
        .await
        .expect("write");
    let mut out = String::new();
    within(s.read_to_string(&mut out)).await.expect("read");
    out
}

#[tokio::test]
async fn the_web_client_is_served_with_a_strict_content_policy() {
    let server = TestServer::start().await;
    let page = http_get(&server, "/").await;
    assert!(page.starts_with("HTTP/1.1 200"), "{page}");
    assert!(page.contains("content-security-policy: default-src 'none'"));
    assert!(page.contains("<script src=\"/app.js\""));
    let js = http_get(&server, "/app.js").await;
    assert!(js.contains("text/javascript") && js.contains("new WebSocket"));
    assert!(
        http_get(&server, "/nothing")
            .await
            .starts_with("HTTP/1.1 404")
    );
}

#[tokio::test]
async fn a_websocket_user_and_a_tcp_user_chat_and_the_same_rules_hold() {
    let server = TestServer::start().await;
    let (mut tcp, tcp_id) = server.user("tcp_user").await;
    let web_id = server.register("web_user").await;

    // Identity comes from the session, as on TCP: nothing before login.
    let mut w = ws(&server).await;
    send(&mut w, json!({"msgid": 6, "toid": tcp_id, "msg": "sneaky"})).await;
    assert_eq!(reply(&mut w, 106).await["errno"], 20);

    send(
        &mut w,
        json!({"msgid": 1, "id": web_id, "password": pw("web_user"), "acks": true}),
    )
    .await;
    let login = reply(&mut w, 2).await;
    assert_eq!(login["errno"], 0, "{login}");
    assert_eq!(login["acks"], true);
    let token = login["token"].as_str().expect("token").to_owned();

    // Both ways, CJK and emoji intact; a resend with the same cmid is
    // stored once.
    for _ in 0..2 {
        send(
            &mut w,
            json!({"msgid": 6, "toid": tcp_id, "msg": "你好 from the web 👋", "cmid": "c1", "reqid": 7}),
        )
        .await;
        let sent = reply(&mut w, 106).await;
        assert_eq!(
            (sent["errno"].clone(), sent["reqid"].clone()),
            (json!(0), json!(7))
        );
    }
    let m = within(tcp.next_message()).await.expect("message");
    assert_eq!((m.from, m.msg.as_str()), (web_id, "你好 from the web 👋"));
    tcp.chat(web_id, "hello browser").await.expect("chat");
    let push = reply(&mut w, 6).await;
    assert_eq!(
        (push["id"].clone(), push["msg"].clone()),
        (json!(tcp_id), json!("hello browser"))
    );
    let seq = push["seq"].as_i64().expect("seq");

    // Unacknowledged, a message comes again to the next session; resumed
    // with the token (no password), acknowledged ones do not.
    drop(w);
    tcp.chat(web_id, "while away").await.expect("chat");
    let mut w = ws(&server).await;
    send(&mut w, json!({"msgid": 17, "token": token, "acks": true})).await;
    let resumed = reply(&mut w, 117).await;
    assert_eq!(resumed["errno"], 0, "{resumed}");
    let offline: Vec<String> = resumed["offlinemsg"]
        .as_array()
        .expect("offline")
        .iter()
        .map(|s| {
            let m: Value = serde_json::from_str(s.as_str().expect("string")).expect("json");
            m["msg"].as_str().expect("msg").to_owned()
        })
        .collect();
    assert_eq!(
        offline,
        ["hello browser", "while away"],
        "never acknowledged"
    );
    send(
        &mut w,
        json!({"msgid": 18, "acks": [{"toid": tcp_id, "seq": seq + 1}]}),
    )
    .await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    drop(w);
    tokio::time::sleep(Duration::from_millis(300)).await;
    let mut w = ws(&server).await;
    send(&mut w, json!({"msgid": 17, "token": token, "acks": true})).await;
    let again = reply(&mut w, 117).await;
    assert_eq!(again["errno"], 0, "{again}");
    assert!(again.get("offlinemsg").is_none(), "acknowledged: {again}");
}

#[tokio::test]
async fn a_large_frame_before_login_closes_a_websocket_too() {
    let server = TestServer::start().await;
    let mut w = ws(&server).await;
    let big = format!(
        r#"{{"msgid":4,"name":"x","password":"{}"}}"#,
        "p".repeat(5000)
    );
    w.send(Message::text(big)).await.expect("send");
    let notice = next(&mut w).await.expect("notice");
    assert_eq!(notice["errno"], 14, "{notice}");
    assert!(next(&mut w).await.is_none(), "closed");
    // Others are still served.
    let (_, _) = server.user("still_fine").await;
}

#[tokio::test]
async fn a_slow_http_client_is_closed_within_the_frame_deadline() {
    let server = TestServer::start_with(chat::config::Config {
        limits: chat::config::Limits {
            frame_timeout: Duration::from_secs(1),
            ..chat::config::Limits::default()
        },
        ..chat::config::Config::default()
    })
    .await;
    let mut s = tokio::net::TcpStream::connect(server.web)
        .await
        .expect("connect");
    s.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n")
        .await
        .expect("write");
    let t = std::time::Instant::now();
    let mut out = Vec::new();
    let _ = within(s.read_to_end(&mut out)).await;
    assert!(t.elapsed() < Duration::from_secs(4), "{:?}", t.elapsed());
    // The page is still served to others.
    assert!(http_get(&server, "/").await.starts_with("HTTP/1.1 200"));
}
