//! The service driven directly, without sockets: frames in, frames out.

use std::sync::Arc;

use serde_json::Value;

use super::{Service, Session};
use crate::config::Config;
use crate::hub::Hub;
use crate::hub::local::LocalHub;
use crate::model::Push;
use crate::store::SharedStore;
use crate::store::sqlite::SqliteStore;

async fn service() -> (Service, tempfile::TempDir) {
    let dir = tempfile::tempdir().expect("tempdir");
    let url = format!("sqlite://{}", dir.path().join("t.db").display());
    let store: SharedStore = Arc::new(SqliteStore::open(&url).await.expect("store"));
    let hub: Arc<dyn Hub> = Arc::new(LocalHub::new());
    let service = Service::new(store, hub, Arc::new(Config::default())).expect("service");
    (service, dir)
}

async fn call(svc: &Service, s: &mut Session, frame: &str) -> Value {
    let out = svc.handle_frame(s, frame.as_bytes()).await;
    assert_eq!(out.len(), 1, "one reply per request");
    serde_json::from_slice(&out[0]).expect("reply is JSON")
}

/// Registers and logs in `name` on a fresh session.
async fn user(svc: &Service, name: &str) -> (Session, i64) {
    let mut s = svc.open_session(None, false);
    let r = call(
        svc,
        &mut s,
        &format!(r#"{{"msgid":4,"name":"{name}","password":"pw"}}"#),
    )
    .await;
    let id = r["id"].as_i64().expect("id");
    let r = call(
        svc,
        &mut s,
        &format!(r#"{{"msgid":1,"id":{id},"password":"pw"}}"#),
    )
    .await;
    assert_eq!(r["errno"], 0, "{r}");
    (s, id)
}

#[tokio::test]
async fn requests_before_login_and_in_another_name_are_refused() {
    let (svc, _dir) = service().await;
    let mut anon = svc.open_session(None, false);
    let r = call(&svc, &mut anon, r#"{"msgid":13,"reqid":"x"}"#).await;
    assert_eq!(
        (
            r["msgid"].as_i64(),
            r["errno"].as_i64(),
            r["reqid"].as_str()
        ),
        (Some(113), Some(20), Some("x"))
    );
    let (mut a, alice) = user(&svc, "alice").await;
    let r = call(
        &svc,
        &mut a,
        &format!(r#"{{"msgid":7,"id":{},"friendid":{alice}}}"#, alice + 1),
    )
    .await;
    assert_eq!(r["errno"], 21);
    let r = call(&svc, &mut a, r#"{"msgid":15}"#).await;
    assert_eq!(
        (r["msgid"].as_i64(), r["node"].as_str()),
        (Some(115), Some("standalone"))
    );
}

#[tokio::test]
async fn a_message_is_queued_for_the_receiver_and_rendered_once() {
    let (svc, _dir) = service().await;
    let (mut a, _alice) = user(&svc, "alice").await;
    let (mut b, bob) = user(&svc, "bob").await;
    let r = call(
        &svc,
        &mut a,
        &format!(r#"{{"msgid":6,"toid":{bob},"msg":"hi"}}"#),
    )
    .await;
    assert_eq!(
        (r["msgid"].as_i64(), r["seq"].as_i64()),
        (Some(106), Some(1))
    );
    let push = b.next_push().await.expect("queued for bob");
    let frames = svc.handle_push(&mut b, push.clone()).await;
    assert_eq!(frames.len(), 1);
    let m: Value = serde_json::from_slice(&frames[0]).expect("json");
    assert_eq!(
        (m["msgid"].as_i64(), m["msg"].as_str()),
        (Some(6), Some("hi"))
    );
    assert!(
        svc.handle_push(&mut b, push).await.is_empty(),
        "a second copy is dropped"
    );
}

#[tokio::test]
async fn a_push_that_skips_ahead_is_preceded_by_what_it_skipped() {
    let (svc, _dir) = service().await;
    let (mut a, _alice) = user(&svc, "alice").await;
    let (mut b, bob) = user(&svc, "bob").await;
    for text in ["one", "two", "three"] {
        call(
            &svc,
            &mut a,
            &format!(r#"{{"msgid":6,"toid":{bob},"msg":"{text}"}}"#),
        )
        .await;
    }
    let mut pushes = Vec::new();
    for _ in 0..3 {
        pushes.push(b.next_push().await.expect("push"));
    }
    // deliver the third first, as if it had overtaken the others
    let Push::Message(third) = pushes[2].clone() else {
        panic!("message")
    };
    let frames = svc.handle_push(&mut b, Push::Message(third)).await;
    let texts: Vec<String> = frames
        .iter()
        .map(|f| {
            serde_json::from_slice::<Value>(f).expect("json")["msg"]
                .as_str()
                .unwrap_or("")
                .to_owned()
        })
        .collect();
    assert_eq!(
        texts,
        ["one", "two", "three"],
        "gap filled from the store, in order"
    );
    for p in pushes.into_iter().take(2) {
        assert!(
            svc.handle_push(&mut b, p).await.is_empty(),
            "late originals are dropped"
        );
    }
}
