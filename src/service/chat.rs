//! ONE_CHAT_MSG, GROUP_CHAT_MSG and HISTORY_MSG, and the delivery of pushes.
//!
//! A message is stored (and numbered) first, then handed to the hub for its
//! receivers; the reply to the sender carries the number. Offline receivers
//! need nothing special: the message simply lies past their cursor.

use std::sync::Arc;

use bytes::Bytes;
use serde_json::Value;

use super::account::{chronological, mark_delivered};
use super::delivery::Incoming;
use super::{Service, Session, invalid};
use crate::metrics::{METRICS, inc};
use crate::model::{
    ChatMessage, Conversation, Delivery, GroupId, NewMessage, Push, Seq, UserId, check_body,
};
use crate::protocol::{ChatOut, ErrCode, Fail, HistoryTarget, Reply, classic_time, render_push};

impl Service {
    pub(super) async fn one_chat(
        &self,
        s: &mut Session,
        ack: i64,
        to: UserId,
        body: String,
        cmid: Option<String>,
    ) -> Result<Reply, Fail> {
        let me = s.me()?.id;
        if to == me {
            return Err(Fail::new(
                ErrCode::InvalidTarget,
                "you cannot chat with yourself",
            ));
        }
        self.send(s, ack, Conversation::direct(me, to), body, cmid, &[to])
            .await
    }

    pub(super) async fn group_chat(
        &self,
        s: &mut Session,
        ack: i64,
        group: GroupId,
        body: String,
        cmid: Option<String>,
    ) -> Result<Reply, Fail> {
        let me = s.me()?;
        let (me, member) = (me.id, me.cursors.knows(Conversation::Group(group)));
        let members = self
            .groups
            .members(self.store.as_ref(), group)
            .await?
            .ok_or_else(|| Fail::new(ErrCode::NotFound, format!("group {group} not found")))?;
        // Membership is the session's own knowledge (from login, join and
        // leave), never the shared member cache, which may lag behind.
        if !member {
            return Err(Fail::new(
                ErrCode::Forbidden,
                format!("you are not a member of group {group}"),
            ));
        }
        let others: Vec<UserId> = members.iter().copied().filter(|m| *m != me).collect();
        self.send(s, ack, Conversation::Group(group), body, cmid, &others)
            .await
    }

    async fn send(
        &self,
        s: &mut Session,
        ack: i64,
        conv: Conversation,
        body: String,
        cmid: Option<String>,
        recipients: &[UserId],
    ) -> Result<Reply, Fail> {
        check_body(&body, self.config.max_message_bytes).map_err(invalid)?;
        let me = s.me_mut()?;
        let stored = self
            .store
            .append(NewMessage {
                conv,
                sender: me.id,
                sender_name: me.name.clone(),
                body,
                client_id: cmid,
            })
            .await?;
        if stored.conv != conv {
            // The id names a message of another conversation: never hand
            // that one to these receivers.
            return Err(Fail::new(
                ErrCode::AlreadyExists,
                "cmid already names a message in another conversation",
            ));
        }
        // A resend is answered and delivered as the original was (its
        // receivers drop it if they have it).
        me.cursors.record_own(conv, stored.seq);
        let reply = Reply::ok(ack)
            .with("seq", stored.seq)
            .with("ts", stored.ts_ms)
            .with("time", classic_time(stored.ts_ms));
        inc(&METRICS.messages_stored);
        let delivery = Arc::new(Delivery {
            conv: stored.conv,
            seq: stored.seq,
            frame: render_push(&stored),
            arrived: std::time::Instant::now(),
            remote: false,
        });
        if let Err(e) = self.hub.deliver(delivery, recipients).await {
            // Stored already: receivers get it at their next gap check or login.
            tracing::warn!(error = %e, "live delivery failed");
        }
        Ok(reply)
    }

    pub(super) async fn history(
        &self,
        s: &mut Session,
        ack: i64,
        target: HistoryTarget,
        before: Option<Seq>,
        limit: Option<u32>,
    ) -> Result<Reply, Fail> {
        let me = s.me()?.id;
        let conv = match target {
            HistoryTarget::User(peer) if peer == me => {
                return Err(Fail::new(
                    ErrCode::InvalidTarget,
                    "there is no conversation with yourself",
                ));
            }
            HistoryTarget::User(peer) => Conversation::direct(me, peer),
            HistoryTarget::Group(g) => {
                let member = s.me()?.cursors.knows(Conversation::Group(g));
                if !member && self.groups.members(self.store.as_ref(), g).await?.is_none() {
                    return Err(Fail::new(ErrCode::NotFound, format!("group {g} not found")));
                }
                if !member {
                    return Err(Fail::new(
                        ErrCode::Forbidden,
                        format!("you are not a member of group {g}"),
                    ));
                }
                Conversation::Group(g)
            }
        };
        let limit = match limit {
            None => self.config.history_default,
            Some(0) => return Err(Fail::new(ErrCode::InvalidValue, "limit must be at least 1")),
            Some(n) => n.min(self.config.history_max),
        };
        let messages = self.store.history(conv, before, limit).await?;
        let list: Vec<Value> = messages
            .iter()
            .map(|m| serde_json::to_value(ChatOut::of(m)).unwrap_or(Value::Null))
            .collect();
        Ok(Reply::ok(ack).with("messages", list))
    }

    /// ACK: the client has everything up to each position. Moves the
    /// positions to store, and lets the next backlog page go.
    pub(super) fn ack(&self, s: &mut Session, acks: &[(HistoryTarget, Seq)]) -> Result<(), Fail> {
        let me = s.me_mut()?;
        if !me.cursors.acknowledged() {
            return Err(Fail::new(
                ErrCode::BadRequest,
                "this session did not declare `acks` when it logged in",
            ));
        }
        for (target, seq) in acks {
            let conv = match *target {
                HistoryTarget::User(peer) => Conversation::direct(me.id, peer),
                HistoryTarget::Group(g) => Conversation::Group(g),
            };
            me.cursors.ack(conv, *seq);
        }
        me.awaiting_ack = false;
        Ok(())
    }

    /// Turns a push for this session into the frames to write: nothing for a
    /// duplicate, the message itself when it is next in its conversation, and
    /// first whatever it skipped (from the store) when it is ahead.
    pub async fn handle_push(&self, s: &mut Session, push: Push) -> Vec<Bytes> {
        let Some(me) = s.user.as_mut() else {
            return Vec::new();
        };
        let d = match push {
            Push::Message(d) => d,
            Push::Resync => {
                me.backlog = true;
                return Vec::new();
            }
        };
        let m = &*d;
        match me.cursors.classify(m.conv, m.seq) {
            Incoming::Duplicate => Vec::new(),
            Incoming::InOrder => {
                me.cursors.delivered(m.conv, m.seq);
                inc(if d.remote {
                    &METRICS.delivered_remote
                } else {
                    &METRICS.delivered_local
                });
                METRICS
                    .delivery_latency
                    .observe_duration(d.arrived.elapsed());
                vec![d.frame.clone()]
            }
            Incoming::Gap { after } => {
                match self.store.between(m.conv, after, m.seq, me.id).await {
                    Ok(missing) => {
                        let mut out: Vec<Bytes> = missing.iter().map(render_push).collect();
                        METRICS
                            .delivered_from_store
                            .fetch_add(missing.len() as u64, std::sync::atomic::Ordering::Relaxed);
                        out.push(d.frame.clone());
                        me.cursors.delivered(m.conv, m.seq);
                        out
                    }
                    Err(e) => {
                        // Hold it back rather than skip what is missing: it stays
                        // past the cursor, so the next gap fill or login brings it.
                        tracing::warn!(user = me.id, error = %e, "could not fill a delivery gap");
                        Vec::new()
                    }
                }
            }
        }
    }

    /// The next page of messages waiting in the store: stores the positions
    /// delivered so far (everything before has been written to the client),
    /// then sends what lies past them, one page at a time.
    pub async fn backlog_page(&self, s: &mut Session) -> Vec<Bytes> {
        let Some(me) = s.user.as_mut() else {
            return Vec::new();
        };
        me.backlog = false;
        let page_size = self.config.offline_page.max(1);
        // Every position this session moved, not only the unsaved ones: a
        // save queued earlier may still be in flight, and this write, queued
        // behind it, returns only once both are durable, so the read below
        // never starts from stale positions.
        me.cursors.take_dirty();
        let positions = me.cursors.advanced();
        let page = async {
            self.store.advance_cursors(me.id, positions).await?;
            self.store.undelivered(me.id, page_size).await
        };
        let page = match page.await {
            Ok(page) => page,
            Err(e) => {
                // Still stored: offered again at the next gap fill or login.
                tracing::warn!(user = me.id, error = %e, "could not read undelivered messages");
                return Vec::new();
            }
        };
        me.backlog = page.len() == page_size;
        me.awaiting_ack = me.backlog && me.cursors.acknowledged();
        // Pushes may have delivered some of these meanwhile.
        let fresh: Vec<ChatMessage> = page
            .into_iter()
            .filter(|m| me.cursors.classify(m.conv, m.seq) != Incoming::Duplicate)
            .collect();
        mark_delivered(me, &fresh);
        METRICS
            .delivered_from_store
            .fetch_add(fresh.len() as u64, std::sync::atomic::Ordering::Relaxed);
        chronological(fresh).iter().map(render_push).collect()
    }
}
