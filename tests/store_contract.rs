//! The store contract: what the service relies on from `Store`, checked
//! method by method against both backends (a fresh SQLite file, and a fresh
//! database on MariaDB), so that a backend cannot drift from the other.

mod common;

use std::sync::Arc;

use chat::model::{Conversation, Device, GroupId, GroupRole, NewMessage, Seq, UserId};
use chat::store::{Reader, SharedStore, StoreError};

fn message(conv: Conversation, sender: UserId, body: &str) -> NewMessage {
    from_device(conv, sender, &Device::classic(), body)
}

fn from_device(conv: Conversation, sender: UserId, device: &Device, body: &str) -> NewMessage {
    NewMessage {
        conv,
        sender,
        sender_device: device.clone(),
        sender_name: format!("user{sender}"),
        body: body.into(),
        client_id: None,
        kind: Default::default(),
    }
}

async fn contract(store: SharedStore, backend: &str) {
    // users
    let alice = store.create_user("alice", "hash-a").await.expect("alice");
    let bob = store.create_user("bob", "hash-b").await.expect("bob");
    let carol = store.create_user("carol", "hash-c").await.expect("carol");
    assert!(
        matches!(
            store.create_user("alice", "x").await,
            Err(StoreError::Conflict(_))
        ),
        "{backend}: a taken name"
    );
    let creds = store.credentials(bob).await.expect("read").expect("bob");
    assert_eq!(
        (creds.id, creds.name.as_str(), creds.password_hash.as_str()),
        (bob, "bob", "hash-b")
    );
    assert!(
        store
            .credentials(UserId(9999))
            .await
            .expect("read")
            .is_none()
    );

    // resume tokens: found while unexpired, gone once revoked
    let now = chat::store::now_ms();
    store
        .create_token(alice, &Device::classic(), "t-live", now + 60_000)
        .await
        .expect("token");
    store
        .create_token(alice, &Device::classic(), "t-old", now - 1)
        .await
        .expect("token");
    assert_eq!(
        store.token_user("t-live").await.expect("read"),
        Some((alice, "alice".to_owned(), Device::classic())),
        "{backend}"
    );
    assert_eq!(
        store.token_user("t-old").await.expect("read"),
        None,
        "{backend}: expired"
    );
    store.revoke_token("t-live").await.expect("revoke");
    assert_eq!(
        store.token_user("t-live").await.expect("read"),
        None,
        "{backend}: revoked"
    );

    let classic = |u: UserId| Reader::new(u, Device::classic());
    let rbob = classic(bob);
    // friends: mutual, ordered by id
    store.add_friendship(alice, carol).await.expect("friends");
    store.add_friendship(alice, bob).await.expect("friends");
    assert!(matches!(
        store.add_friendship(alice, bob).await,
        Err(StoreError::Conflict(_))
    ));
    assert!(matches!(
        store.add_friendship(alice, UserId(9999)).await,
        Err(StoreError::NotFound(_))
    ));
    let ids = |v: Vec<chat::model::UserSummary>| v.into_iter().map(|u| u.id).collect::<Vec<_>>();
    assert_eq!(
        ids(store.friends(alice).await.expect("read")),
        [bob, carol],
        "{backend}"
    );
    assert_eq!(
        ids(store.friends(bob).await.expect("read")),
        [alice],
        "{backend}: both ways"
    );
    assert!(store.remove_friendship(bob, alice).await.expect("remove"));
    assert!(!store.remove_friendship(bob, alice).await.expect("remove"));
    assert_eq!(
        ids(store.friends(alice).await.expect("read")),
        [carol],
        "{backend}"
    );

    // groups: the creator starts at 0, a joiner at the present
    let g = store
        .create_group(alice, "rust", "we like it", false)
        .await
        .expect("group");
    assert!(matches!(
        store.create_group(bob, "rust", "", false).await,
        Err(StoreError::Conflict(_))
    ));
    let gconv = Conversation::Group(g);
    let first = store.append(message(gconv, alice, "g1")).await.expect("g1");
    assert_eq!(first.seq.0, 1, "{backend}");
    assert_eq!(
        store.join_group(bob, g).await.expect("join"),
        1,
        "{backend}: joins at 1"
    );
    assert!(matches!(
        store.join_group(bob, g).await,
        Err(StoreError::Conflict(_))
    ));
    assert!(matches!(
        store.join_group(bob, GroupId(9999)).await,
        Err(StoreError::NotFound(_))
    ));
    let groups = store.user_groups(bob).await.expect("read");
    assert_eq!(groups.len(), 1);
    assert_eq!(
        (
            groups[0].id,
            groups[0].name.as_str(),
            groups[0].desc.as_str()
        ),
        (g, "rust", "we like it")
    );
    let roles: Vec<_> = groups[0].members.iter().map(|m| (m.id, m.role)).collect();
    assert_eq!(
        roles,
        [(alice, GroupRole::Creator), (bob, GroupRole::Normal)],
        "{backend}"
    );
    let mut members = store.group_members(g).await.expect("read").expect("group");
    members.sort_unstable();
    assert_eq!(members, [alice, bob]);
    assert_eq!(
        store.group_members(GroupId(9999)).await.expect("read"),
        None
    );

    // messages: numbered per conversation without gaps, unknown targets refused
    let direct = Conversation::direct(alice, bob);
    for n in 1..=3 {
        let m = store
            .append(message(direct, alice, &format!("d{n}")))
            .await
            .expect("direct");
        assert_eq!(m.seq.0, n, "{backend}");
        assert!(m.ts_ms >= now, "{backend}: server time");
    }
    store
        .append(message(direct, bob, "d4"))
        .await
        .expect("from bob");
    assert!(matches!(
        store
            .append(message(
                Conversation::direct(alice, UserId(9999)),
                alice,
                "x"
            ))
            .await,
        Err(StoreError::NotFound(_))
    ));
    assert!(matches!(
        store
            .append(message(Conversation::Group(GroupId(9999)), alice, "x"))
            .await,
        Err(StoreError::NotFound(_))
    ));
    store.append(message(gconv, alice, "g2")).await.expect("g2");

    // bob's undelivered: others' messages past his cursors, by conversation
    let undelivered = store.undelivered(&rbob, 100).await.expect("read");
    let got: Vec<_> = undelivered
        .iter()
        .map(|m| (m.conv, m.seq.0, m.body.as_str()))
        .collect();
    assert_eq!(
        got,
        [
            (direct, 1, "d1"),
            (gconv, 2, "g2"),
            (direct, 2, "d2"),
            (direct, 3, "d3"),
        ],
        "{backend}: round robin over conversations; his own d4 and g1 from before he joined are not his"
    );
    assert_eq!(
        store.undelivered(&rbob, 2).await.expect("read").len(),
        2,
        "{backend}: limit"
    );

    // cursors move forward only, through either path
    store
        .advance_cursors(&rbob, vec![(direct, Seq(2))])
        .await
        .expect("advance");
    store
        .advance_cursors(&rbob, vec![(direct, Seq(1))])
        .await
        .expect("never back");
    assert!(store.queue_cursors(&rbob, vec![(gconv, Seq(2))]).is_ok());
    // queued moves ride in order: one awaited write after it means it is in
    store
        .advance_cursors(&rbob, vec![(direct, Seq(2))])
        .await
        .expect("barrier");
    let mut cursors = store.cursors(&rbob).await.expect("read");
    cursors.sort_by_key(|(c, _)| c.key());
    let mut want = vec![(direct, Seq(2)), (gconv, Seq(2))];
    want.sort_by_key(|(c, _)| c.key());
    assert_eq!(cursors, want, "{backend}");
    let rest: Vec<_> = store
        .undelivered(&rbob, 100)
        .await
        .expect("read")
        .iter()
        .map(|m| m.seq.0)
        .collect();
    assert_eq!(rest, [3], "{backend}");

    // gap fills and history
    let between: Vec<_> = store
        .between(direct, Seq(1), Seq(4), &rbob)
        .await
        .expect("read")
        .iter()
        .map(|m| m.seq.0)
        .collect();
    assert_eq!(
        between,
        [2, 3],
        "{backend}: exclusive bounds, not the reader's own"
    );
    let history: Vec<_> = store
        .history(direct, Seq(0), None, 3)
        .await
        .expect("read")
        .iter()
        .map(|m| m.seq.0)
        .collect();
    assert_eq!(history, [4, 3, 2], "{backend}: newest first");
    let older: Vec<_> = store
        .history(direct, Seq(0), Some(Seq(2)), 10)
        .await
        .expect("read")
        .iter()
        .map(|m| m.seq.0)
        .collect();
    assert_eq!(older, [1], "{backend}");

    // a session start reads what the separate calls read
    let start = store.session_start(&rbob, 100).await.expect("read");
    let mut start_cursors = start.cursors.clone();
    start_cursors.sort_by_key(|(c, _)| c.key());
    assert_eq!(start_cursors, want, "{backend}");
    assert_eq!(
        start.undelivered,
        store.undelivered(&rbob, 100).await.expect("read")
    );
    assert_eq!(
        ids(start.friends),
        ids(store.friends(bob).await.expect("read"))
    );
    assert_eq!(start.groups.len(), 1);
    assert_eq!(start.groups[0].members.len(), 2);

    // a flooded conversation does not hold back another, and a run of
    // one's own messages longer than a page does not hide what follows it
    let dave = store.create_user("dave", "hash-d").await.expect("dave");
    let rdave = classic(dave);
    let erin = store.create_user("erin", "hash-e").await.expect("erin");
    let flood = Conversation::direct(alice, dave);
    let quiet = Conversation::direct(erin, dave);
    for _ in 0..10 {
        store
            .append(message(flood, alice, "flood"))
            .await
            .expect("flood");
    }
    store
        .append(message(quiet, erin, "hello"))
        .await
        .expect("hello");
    let page: Vec<_> = store
        .undelivered(&rdave, 4)
        .await
        .expect("read")
        .iter()
        .map(|m| (m.conv, m.seq.0))
        .collect();
    assert_eq!(page.len(), 4, "{backend}");
    assert!(page.contains(&(quiet, 1)), "{backend}: {page:?}");
    let flood_part: Vec<_> = page
        .iter()
        .filter(|(c, _)| *c == flood)
        .map(|(_, s)| *s)
        .collect();
    assert_eq!(flood_part, [1, 2, 3], "{backend}: a prefix of the flood");
    for _ in 0..5 {
        store
            .append(message(quiet, dave, "mine"))
            .await
            .expect("mine");
    }
    store
        .append(message(quiet, erin, "after"))
        .await
        .expect("after");
    store
        .advance_cursors(&rdave, vec![(flood, Seq(10)), (quiet, Seq(1))])
        .await
        .expect("advance");
    let page: Vec<_> = store
        .undelivered(&rdave, 3)
        .await
        .expect("read")
        .iter()
        .map(|m| (m.conv, m.seq.0, m.body.clone()))
        .collect();
    assert_eq!(page, [(quiet, 7, "after".to_owned())], "{backend}");
    assert_eq!(
        store.cursor(dave, quiet).await.expect("read"),
        1,
        "{backend}"
    );
    assert_eq!(
        store
            .cursor(dave, Conversation::direct(dave, carol))
            .await
            .expect("read"),
        0,
        "{backend}: no row"
    );

    // leaving: membership and its cursor go
    assert!(store.leave_group(bob, g).await.expect("leave"));
    assert!(!store.leave_group(bob, g).await.expect("leave"));
    assert!(store.user_groups(bob).await.expect("read").is_empty());
    assert!(
        store
            .cursors(&rbob)
            .await
            .expect("read")
            .iter()
            .all(|(c, _)| *c != gconv),
        "{backend}"
    );

    devices(&store, backend).await;
    consent(&store, backend).await;
    store.close().await;
}

/// Consent: requests, mutual asking, declines that look pending, the
/// bounds; private groups that a non-invited user cannot join, ids apart
/// from public ones, history from the join on; roles and hand-over.
async fn consent(store: &SharedStore, backend: &str) {
    use chat::store::{AskLimits, FriendAsk, InviteKind, InviteOutcome};
    let limits = AskLimits {
        pending: 2,
        per_day: 3,
    };
    let [hana, ivo, jon, kim] = ["hana", "ivo", "jon", "kim"].map(|n| n.to_owned());
    let hana = store.create_user(&hana, "h").await.expect("user");
    let ivo = store.create_user(&ivo, "h").await.expect("user");
    let jon = store.create_user(&jon, "h").await.expect("user");
    let kim = store.create_user(&kim, "h").await.expect("user");
    let ask = |a, b| store.ask_friend(a, b, limits);
    assert_eq!(ask(hana, ivo).await, Ok(FriendAsk::Requested), "{backend}");
    assert_eq!(
        ask(hana, ivo).await,
        Ok(FriendAsk::AlreadyAsked),
        "{backend}"
    );
    assert!(store.friends(hana).await.expect("friends").is_empty());
    assert_eq!(
        ask(ivo, hana).await,
        Ok(FriendAsk::Befriended),
        "{backend}: both asked"
    );
    assert_eq!(store.friends(ivo).await.expect("friends")[0].id, hana);
    assert!(
        store
            .friend_requests(hana)
            .await
            .expect("r")
            .outgoing
            .is_empty()
    );
    // a declined request looks pending to its asker and stays declined
    assert_eq!(ask(jon, hana).await, Ok(FriendAsk::Requested));
    assert!(
        store
            .answer_friend(hana, jon, false)
            .await
            .expect("decline")
    );
    assert!(
        store
            .friend_requests(hana)
            .await
            .expect("r")
            .incoming
            .is_empty()
    );
    assert_eq!(
        store.friend_requests(jon).await.expect("r").outgoing[0].id,
        hana
    );
    assert_eq!(ask(jon, hana).await, Ok(FriendAsk::AlreadyAsked));
    assert!(!store.answer_friend(hana, kim, true).await.expect("none"));
    // bounds: 2 waiting, 3 a day (withdrawn ones count in the day)
    assert_eq!(ask(jon, kim).await, Ok(FriendAsk::Requested));
    assert_eq!(ask(jon, ivo).await, Ok(FriendAsk::TooManyPending(2)));
    assert!(
        store
            .withdraw_friend_request(jon, kim)
            .await
            .expect("withdraw")
    );
    assert_eq!(ask(jon, ivo).await, Ok(FriendAsk::Requested));
    assert!(
        store
            .withdraw_friend_request(jon, ivo)
            .await
            .expect("withdraw")
    );
    assert!(
        store
            .withdraw_friend_request(jon, hana)
            .await
            .expect("withdraw")
    );
    assert_eq!(
        ask(jon, kim).await,
        Ok(FriendAsk::Requested),
        "asked again today"
    );
    let lee = store.create_user("lee", "h").await.expect("user");
    assert_eq!(ask(jon, lee).await, Ok(FriendAsk::TooManyToday(3)));
    assert_eq!(
        ask(jon, UserId(99_999)).await,
        Err(StoreError::NotFound("user"))
    );

    // private groups
    let public = store
        .create_group(hana, "pub", "", false)
        .await
        .expect("group");
    let private = store
        .create_group(hana, "priv", "", true)
        .await
        .expect("group");
    assert!(
        public.0 < 1 << 30 && private.0 >= 1 << 30,
        "{backend}: {public} {private}"
    );
    let next = store
        .create_group(hana, "pub2", "", false)
        .await
        .expect("group");
    assert_eq!(next.0, public.0 + 1, "{backend}: public ids still count up");
    let conv = Conversation::Group(private);
    store
        .append(message(conv, hana, "before"))
        .await
        .expect("append");
    assert_eq!(
        store.join_group(kim, private).await,
        Err(StoreError::NotFound("group"))
    );
    assert_eq!(
        store
            .invite(private, kim, hana, InviteKind::Invitation, 10)
            .await,
        Ok(InviteOutcome::Pending)
    );
    assert_eq!(
        store
            .invite(private, kim, hana, InviteKind::Invitation, 10)
            .await,
        Ok(InviteOutcome::AlreadyPending)
    );
    assert_eq!(
        store.user_invites(kim).await.expect("invites")[0].group,
        private
    );
    let start = store.join_group(kim, private).await.expect("invited");
    assert_eq!(start, Seq(1));
    let m = store
        .membership(private, kim)
        .await
        .expect("read")
        .expect("member");
    assert_eq!(
        (m.role, m.joined, m.private),
        (GroupRole::Normal, Seq(1), true)
    );
    assert!(store.user_invites(kim).await.expect("invites").is_empty());
    // a request met by an invitation joins
    assert_eq!(
        store
            .invite(private, ivo, ivo, InviteKind::Request, 10)
            .await,
        Ok(InviteOutcome::Pending)
    );
    assert!(matches!(
        store
            .invite(private, ivo, hana, InviteKind::Invitation, 10)
            .await,
        Ok(InviteOutcome::Joined(_))
    ));
    assert_eq!(
        store
            .invite(private, jon, jon, InviteKind::Request, 10)
            .await,
        Ok(InviteOutcome::Pending)
    );
    assert_eq!(
        store.group_invites(private).await.expect("invites").len(),
        1
    );
    assert_eq!(
        store
            .answer_invite(private, jon, InviteKind::Request, false)
            .await,
        Ok(Some(Seq(0)))
    );
    assert_eq!(
        store
            .answer_invite(private, jon, InviteKind::Request, true)
            .await,
        Ok(None),
        "{backend}: declined, nothing left to approve"
    );
    store
        .append(message(conv, hana, "after"))
        .await
        .expect("append");
    let page = store
        .history(conv, m.joined, None, 10)
        .await
        .expect("history");
    assert_eq!(
        page.iter().map(|m| m.body.as_str()).collect::<Vec<_>>(),
        ["after"]
    );
    // roles: hand over, then the owner leaving passes it on
    assert!(
        store
            .set_role(private, kim, GroupRole::Admin)
            .await
            .expect("role")
    );
    assert!(
        store
            .set_role(private, ivo, GroupRole::Creator)
            .await
            .expect("hand over")
    );
    let role = |u| async move {
        store
            .membership(private, u)
            .await
            .expect("read")
            .map(|m| m.role)
    };
    assert_eq!(role(hana).await, Some(GroupRole::Admin));
    assert_eq!(role(ivo).await, Some(GroupRole::Creator));
    assert!(store.leave_group(ivo, private).await.expect("leave"));
    assert_eq!(
        (role(hana).await, role(kim).await),
        (Some(GroupRole::Creator), Some(GroupRole::Admin)),
        "{backend}: the longest-standing admin is the owner now"
    );
    store
        .update_group(private, Some("renamed"), None)
        .await
        .expect("rename");
    assert!(matches!(
        store.update_group(private, Some("pub"), None).await,
        Err(StoreError::Conflict(_))
    ));
    let members = store.dissolve_group(private).await.expect("dissolve");
    assert_eq!(members.len(), 2);
    assert!(store.group(private).await.expect("read").is_none());
    assert!(store.group_members(private).await.expect("read").is_none());
    assert_eq!(
        store.join_group(kim, private).await,
        Err(StoreError::NotFound("group"))
    );
    assert!(
        store
            .history(conv, Seq(0), None, 10)
            .await
            .expect("history")
            .is_empty()
    );
    // its name is free, and its id is not handed out again
    let again = store
        .create_group(hana, "renamed", "", false)
        .await
        .expect("group");
    assert_eq!(again.0, next.0 + 1);
}

/// Devices: each has its own positions; a device does not get back what
/// it sent, the user's other devices do; a new device starts where the
/// furthest had got; past the limit the device unused the longest goes,
/// with its tokens; a device's old row never reaches back before a join.
async fn devices(store: &SharedStore, backend: &str) {
    let (phone, laptop) = (
        Device::parse(Some("phone")).expect("name"),
        Device::parse(Some("laptop")).expect("name"),
    );
    let fred = store.create_user("fred", "hash-f").await.expect("fred");
    let gina = store.create_user("gina", "hash-g").await.expect("gina");
    let (rphone, rlaptop) = (
        Reader::new(fred, phone.clone()),
        Reader::new(fred, laptop.clone()),
    );
    assert!(
        store
            .open_device(fred, &phone, 3)
            .await
            .expect("open")
            .is_empty()
    );
    let d = Conversation::direct(fred, gina);
    store.append(message(d, gina, "to fred")).await.expect("1");
    store
        .append(from_device(d, fred, &phone, "from the phone"))
        .await
        .expect("2");
    let seqs = |v: Vec<chat::model::ChatMessage>| v.iter().map(|m| m.seq.0).collect::<Vec<_>>();
    assert_eq!(
        seqs(store.undelivered(&rphone, 10).await.expect("read")),
        [1],
        "{backend}: the phone does not get its own message back"
    );
    // the laptop is new: it starts where the phone (the furthest) is, 0
    assert!(
        store
            .open_device(fred, &laptop, 3)
            .await
            .expect("open")
            .is_empty()
    );
    assert_eq!(
        seqs(store.undelivered(&rlaptop, 10).await.expect("read")),
        [1, 2],
        "{backend}: the laptop gets gina's message and the phone's"
    );
    assert_eq!(
        seqs(
            store
                .between(d, Seq(0), Seq(3), &rlaptop)
                .await
                .expect("read")
        ),
        [1, 2],
        "{backend}"
    );
    store
        .advance_cursors(&rphone, vec![(d, Seq(2))])
        .await
        .expect("advance");
    assert!(
        store
            .undelivered(&rphone, 10)
            .await
            .expect("read")
            .is_empty()
    );
    assert_eq!(
        store.undelivered(&rlaptop, 10).await.expect("read").len(),
        2,
        "{backend}: positions are per device"
    );
    assert_eq!(
        store.cursor(fred, d).await.expect("read"),
        2,
        "{backend}: the furthest device"
    );
    // a third device starts at the furthest: nothing is offline for it
    let tablet = Device::parse(Some("tablet")).expect("name");
    store.open_device(fred, &tablet, 3).await.expect("open");
    assert!(
        store
            .undelivered(&Reader::new(fred, tablet.clone()), 10)
            .await
            .expect("read")
            .is_empty(),
        "{backend}"
    );
    // tokens name their device; a fourth device forgets the oldest
    let now = chat::store::now_ms();
    store
        .create_token(fred, &phone, "t-phone", now + 60_000)
        .await
        .expect("token");
    assert_eq!(
        store
            .token_user("t-phone")
            .await
            .expect("read")
            .map(|t| t.2),
        Some(phone.clone()),
        "{backend}"
    );
    tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    store.open_device(fred, &laptop, 3).await.expect("touch");
    store.open_device(fred, &tablet, 3).await.expect("touch");
    tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    let watch = Device::parse(Some("watch")).expect("name");
    let forgotten = store.open_device(fred, &watch, 3).await.expect("open");
    assert_eq!(
        forgotten,
        vec![phone.clone()],
        "{backend}: unused the longest"
    );
    assert_eq!(
        store.token_user("t-phone").await.expect("read"),
        None,
        "{backend}"
    );
    let names: Vec<String> = store
        .devices(fred)
        .await
        .expect("read")
        .into_iter()
        .map(|d| d.device.as_str().to_owned())
        .collect();
    assert_eq!(names.len(), 3, "{backend}: {names:?}");
    assert!(!names.contains(&"phone".to_owned()), "{backend}");
    assert!(store.forget_device(fred, &watch).await.expect("forget"));
    assert!(!store.forget_device(fred, &watch).await.expect("forget"));
    // a group left and joined again: the laptop's old row does not count
    let g = store
        .create_group(gina, "devices", "", false)
        .await
        .expect("group");
    let gconv = Conversation::Group(g);
    store.join_group(fred, g).await.expect("join");
    store.append(message(gconv, gina, "g1")).await.expect("g1");
    store
        .advance_cursors(&rlaptop, vec![(gconv, Seq(1))])
        .await
        .expect("advance");
    assert!(store.leave_group(fred, g).await.expect("leave"));
    store
        .append(message(gconv, gina, "while away"))
        .await
        .expect("g2");
    store
        .advance_cursors(&rlaptop, vec![(gconv, Seq(1))])
        .await
        .expect("a late save of the old position");
    assert_eq!(store.join_group(fred, g).await.expect("join"), 2);
    store
        .append(message(gconv, gina, "back"))
        .await
        .expect("g3");
    let page = store.undelivered(&rlaptop, 10).await.expect("read");
    let got: Vec<_> = page
        .iter()
        .filter(|m| m.conv == gconv)
        .map(|m| m.seq.0)
        .collect();
    assert_eq!(got, [3], "{backend}: nothing from while fred was out");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_keeps_the_store_contract() {
    let dir = tempfile::tempdir().expect("tempdir");
    let url = format!("sqlite://{}", dir.path().join("contract.db").display());
    let store = chat::store::sqlite::SqliteStore::open(&url)
        .await
        .expect("sqlite");
    contract(Arc::new(store), "sqlite").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mysql_keeps_the_store_contract() {
    let mut keep = None;
    let url = common::services::create_database(&common::services::mysql_server(&mut keep)).await;
    let store = chat::store::mysql::MySqlStore::open(&url, &Default::default())
        .await
        .expect("mysql");
    contract(Arc::new(store), "mysql").await;
}
