//! Parsing and dispatch over the embedded store: each line of the input is
//! a frame from one client, handled by the real service on a SQLite file.
//! Two users exist and the session starts logged in as the first, so
//! requests after login are reached without a password hash per run.
//! Every reply must be a JSON object with a msgid, and nothing may panic.
#![no_main]

use std::sync::{Arc, OnceLock};

use chat::config::{Config, Limits};
use chat::hub::Hub;
use chat::hub::local::LocalHub;
use chat::service::Service;
use chat::store::SharedStore;
use chat::store::sqlite::SqliteStore;
use libfuzzer_sys::fuzz_target;
use serde_json::Value;

struct World {
    rt: tokio::runtime::Runtime,
    service: Service,
    alice: i64,
    _dir: tempfile::TempDir,
}

fn world() -> &'static World {
    static WORLD: OnceLock<World> = OnceLock::new();
    WORLD.get_or_init(|| {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        let dir = tempfile::tempdir().expect("tempdir");
        let url = format!("sqlite://{}", dir.path().join("fuzz.db").display());
        let (service, alice) = rt.block_on(async {
            let store: SharedStore = Arc::new(SqliteStore::open(&url).await.expect("store"));
            let hub: Arc<dyn Hub> = Arc::new(LocalHub::new());
            let config = Config {
                limits: Limits::unlimited(),
                ..Config::default()
            };
            let service = Service::new(store, hub, Arc::new(config)).expect("service");
            let mut s = service.open_session(None, true);
            let mut alice = 0;
            for name in ["alice", "bob"] {
                let reg = format!(r#"{{"msgid":4,"name":"{name}","password":"pw"}}"#);
                let out = service.handle_frame(&mut s, reg.as_bytes()).await;
                let v: Value = serde_json::from_slice(&out[0]).expect("json");
                if name == "alice" {
                    alice = v["id"].as_i64().expect("id");
                }
            }
            service.end_session(&mut s).await;
            (service, alice)
        });
        World {
            rt,
            service,
            alice,
            _dir: dir,
        }
    })
}

fuzz_target!(|data: &[u8]| {
    let w = world();
    w.rt.block_on(async {
        let mut s = w.service.open_session(None, true);
        let login = format!(r#"{{"msgid":1,"id":{},"password":"pw"}}"#, w.alice);
        w.service.handle_frame(&mut s, login.as_bytes()).await;
        for frame in data.split(|b| *b == b'\n').take(64) {
            for reply in w.service.handle_frame(&mut s, frame).await {
                let v: Value = serde_json::from_slice(&reply).expect("a reply is JSON");
                assert!(v.get("msgid").and_then(Value::as_i64).is_some(), "{v}");
            }
        }
        w.service.end_session(&mut s).await;
    });
});
