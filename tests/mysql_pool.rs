//! The MySQL connection pool as configured: when every connection is busy,
//! a request fails with a clear error after the configured wait, and works
//! again once a connection is free.

mod common;

use std::time::{Duration, Instant};

use chat::config::PoolConfig;
use chat::model::{Conversation, NewMessage};
use chat::store::mysql::MySqlStore;
use chat::store::{Store, StoreError};
use common::services;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_exhausted_pool_fails_after_the_wait_instead_of_hanging() {
    let mut keep = None;
    let url = services::create_database(&services::mysql_server(&mut keep)).await;
    let config = PoolConfig {
        min_connections: 1,
        max_connections: 1,
        idle_timeout: Duration::from_secs(60),
        acquire_timeout: Duration::from_millis(300),
    };
    let store = MySqlStore::open(&url, &config).await.expect("open");
    let alice = store.create_user("alice", "hash").await.expect("user");
    let bob = store.create_user("bob", "hash").await.expect("user");

    let held = store.pool().acquire().await.expect("the only connection");
    let started = Instant::now();
    let err = store
        .friends(alice)
        .await
        .expect_err("no connection to read with");
    assert!(matches!(err, StoreError::Unavailable(_)), "{err:?}");
    let msg = NewMessage {
        conv: Conversation::direct(alice, bob),
        sender: alice,
        sender_device: chat::model::Device::classic(),
        sender_name: "alice".into(),
        body: "hello".into(),
        client_id: None,
        kind: Default::default(),
    };
    let err = store
        .append(msg.clone())
        .await
        .expect_err("no connection to write with");
    assert!(matches!(err, StoreError::Unavailable(_)), "{err:?}");
    let waited = started.elapsed();
    assert!(
        waited >= Duration::from_millis(600),
        "waited for each acquire: {waited:?}"
    );
    assert!(waited < Duration::from_secs(5), "did not hang: {waited:?}");

    drop(held);
    assert!(store.friends(alice).await.expect("works again").is_empty());
    assert_eq!(
        store.append(msg).await.expect("stored").seq,
        1,
        "the refused message was never stored"
    );
    store.close().await;
}
