//! ONE_CHAT_MSG, GROUP_CHAT_MSG, HISTORY_MSG and ACK_MSG.
//!
//! A message is stored (and numbered) first, then handed to the hub for its
//! receivers; the reply to the sender carries the number. Offline receivers
//! need nothing special: the message simply lies past their cursor.

use std::sync::Arc;

use super::requests::Handler;
use super::{LoggedIn, Service, Session, invalid};
use crate::metrics::{METRICS, inc};
use crate::model::{Conversation, Delivery, GroupId, MsgKind, NewMessage, Seq, UserId, check_body};
use crate::protocol::replies::{Done, HistoryPage, Sent};
use crate::protocol::requests as wire;
use crate::protocol::{ChatFrame, ErrCode, Fail, HistoryTarget, classic_time, render_push};

impl Handler for wire::OneChat {
    async fn handle(mut self, svc: &Service, s: &mut Session) -> Result<Sent, Fail> {
        let cmid = self.cmid()?;
        svc.one_chat(s.me_mut()?, self.toid, self.msg, cmid).await
    }
}

impl Handler for wire::GroupChat {
    async fn handle(mut self, svc: &Service, s: &mut Session) -> Result<Sent, Fail> {
        let cmid = self.cmid()?;
        svc.group_chat(s.me_mut()?, self.groupid, self.msg, cmid)
            .await
    }
}

impl Handler for wire::History {
    async fn handle(self, svc: &Service, s: &mut Session) -> Result<HistoryPage<'static>, Fail> {
        let target = self.target()?;
        // Anything above the server's maximum means the maximum.
        let limit = self.limit.map(|l| u32::try_from(l).unwrap_or(u32::MAX));
        svc.history(s.me_mut()?, target, self.before, limit).await
    }
}

/// Answered only when refused.
impl Handler for wire::Ack {
    async fn handle(self, svc: &Service, s: &mut Session) -> Result<Done, Fail> {
        let positions = self.targets()?;
        svc.ack(s.me_mut()?, &positions).map(|()| Done {})
    }
}

/// Direct conversations whose unread count one session tracks at most.
const UNREAD_TRACKED: usize = 4096;

impl Service {
    pub(super) async fn one_chat(
        &self,
        me: &mut LoggedIn,
        to: UserId,
        body: String,
        cmid: Option<String>,
    ) -> Result<Sent, Fail> {
        if to == me.id {
            return Err(Fail::new(
                ErrCode::InvalidTarget,
                "you cannot chat with yourself",
            ));
        }
        let conv = Conversation::direct(me.id, to);
        self.may_reach(me, to, false).await?;
        self.check_unread(me, conv, to).await?;
        // The sender's other devices get it too (self-sync).
        let sent = self.send(me, conv, body, cmid, &[to, me.id]).await?;
        if me.unread_sent.len() >= UNREAD_TRACKED && !me.unread_sent.contains_key(&conv) {
            // Forgetting only costs a store read at the next message.
            me.unread_sent.clear();
        }
        let entry = me.unread_sent.entry(conv).or_insert((Seq(0), Seq(0)));
        entry.0 = entry.0.max(sent.seq);
        Ok(sent)
    }

    /// The unread quota: one sender may leave at most
    /// `limits.unread_per_sender` messages unread for one receiver. The
    /// receiver's position is read from the store only when the last known
    /// one says the limit may be reached, so a normal chat costs nothing.
    async fn check_unread(
        &self,
        me: &mut LoggedIn,
        conv: Conversation,
        to: UserId,
    ) -> Result<(), Fail> {
        let max = self.config.limits.unread_per_sender;
        let Some(&(last, seen)) = me.unread_sent.get(&conv) else {
            return Ok(());
        };
        if last.since(seen) < max {
            return Ok(());
        }
        let seen = self.store.cursor(to, conv).await?;
        me.unread_sent.insert(conv, (last, seen));
        let unread = last.since(seen);
        if unread < max {
            return Ok(());
        }
        inc(&METRICS.limited);
        Err(Fail::new(
            ErrCode::QuotaExceeded,
            format!(
                "user {to} has not read the last {unread} messages of your conversation, the most allowed; wait until they read some"
            ),
        ))
    }

    pub(super) async fn group_chat(
        &self,
        me: &mut LoggedIn,
        group: GroupId,
        body: String,
        cmid: Option<String>,
    ) -> Result<Sent, Fail> {
        // Membership is the session's own knowledge (from login, join and
        // leave, and the notices of other devices and of admins).
        if !me.delivery.knows(Conversation::Group(group)) {
            return Err(self.not_member(group).await);
        }
        let Some(members) = self.groups.members(self.store.as_ref(), group).await? else {
            me.delivery.leave(Conversation::Group(group));
            return Err(Fail::new(
                ErrCode::NotFound,
                format!("group {group} not found"),
            ));
        };
        if !members.contains(&me.id) {
            // Removed, and the notice did not reach this session (or the
            // shared list lags behind a join): the store decides.
            if self.store.membership(group, me.id).await?.is_none() {
                me.delivery.leave(Conversation::Group(group));
                return Err(self.not_member(group).await);
            }
        }
        // Every member, the sender too: its other devices get it.
        self.send(me, Conversation::Group(group), body, cmid, &members)
            .await
    }

    async fn send(
        &self,
        me: &mut LoggedIn,
        conv: Conversation,
        body: String,
        cmid: Option<String>,
        recipients: &[UserId],
    ) -> Result<Sent, Fail> {
        check_body(&body, self.config.max_message_bytes).map_err(invalid)?;
        self.store_and_deliver(me, conv, body, cmid, MsgKind::Message, recipients)
            .await
    }

    /// Stores a message or event and hands it to its receivers' sessions
    /// (the sender's other devices among them).
    pub(super) async fn store_and_deliver(
        &self,
        me: &mut LoggedIn,
        conv: Conversation,
        body: String,
        cmid: Option<String>,
        kind: MsgKind,
        recipients: &[UserId],
    ) -> Result<Sent, Fail> {
        if !self.guard.may_store(me.id, body.len()) {
            inc(&METRICS.limited);
            return Err(Fail::new(
                ErrCode::QuotaExceeded,
                format!(
                    "you have stored {} bytes of messages today, the most allowed; try again after midnight UTC",
                    self.config.limits.bytes_per_user_day
                ),
            ));
        }
        let stored = self
            .store
            .append(NewMessage {
                conv,
                sender: me.id,
                sender_device: me.reader.device.clone(),
                sender_name: me.name.clone(),
                body,
                client_id: cmid,
                kind,
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
        me.delivery.record_own(conv, stored.seq);
        let reply = Sent {
            seq: stored.seq,
            ts: stored.ts_ms,
            time: classic_time(stored.ts_ms),
        };
        inc(&METRICS.messages_stored);
        let delivery = Arc::new(Delivery {
            conv: stored.conv,
            seq: stored.seq,
            frame: render_push(&stored),
            arrived: std::time::Instant::now(),
            remote: false,
            origin: me.session,
            sender: me.id,
            sender_device: me.reader.device.clone(),
        });
        if let Err(e) = self.hub.deliver(delivery, recipients).await {
            // Stored already: receivers get it at their next gap check or login.
            tracing::warn!(error = %e, "live delivery failed");
        }
        Ok(reply)
    }

    pub(super) async fn history(
        &self,
        me: &LoggedIn,
        target: HistoryTarget,
        before: Option<Seq>,
        limit: Option<u32>,
    ) -> Result<HistoryPage<'static>, Fail> {
        let mut after = Seq(0);
        let conv = match target {
            HistoryTarget::User(peer) if peer == me.id => {
                return Err(Fail::new(
                    ErrCode::InvalidTarget,
                    "there is no conversation with yourself",
                ));
            }
            HistoryTarget::User(peer) => Conversation::direct(me.id, peer),
            HistoryTarget::Group(g) => {
                if !me.delivery.knows(Conversation::Group(g)) {
                    return Err(self.not_member(g).await);
                }
                // A private group shows a member nothing from before it
                // joined.
                match self.store.membership(g, me.id).await? {
                    Some(m) if m.private => after = m.joined,
                    Some(_) => {}
                    None => return Err(self.not_member(g).await),
                }
                Conversation::Group(g)
            }
        };
        let limit = match limit {
            None => self.config.history_default,
            Some(0) => return Err(Fail::new(ErrCode::InvalidValue, "limit must be at least 1")),
            Some(n) => n.min(self.config.history_max),
        };
        let mut messages = self.store.history(conv, after, before, limit).await?;
        keep_newest_within(&mut messages, self.config.limits.history_max_bytes);
        Ok(HistoryPage {
            messages: messages
                .iter()
                .map(|m| ChatFrame::of(m).into_owned())
                .collect(),
        })
    }

    /// ACK: the client has everything up to each position. Moves the
    /// positions to store, and lets the next backlog page go.
    pub(super) fn ack(&self, me: &mut LoggedIn, acks: &[(HistoryTarget, Seq)]) -> Result<(), Fail> {
        if me.delivery.reads() != crate::service::delivery::Reads::Acknowledged {
            return Err(Fail::new(
                ErrCode::BadRequest,
                "this session did not declare `acks` when it logged in",
            ));
        }
        let positions = acks.iter().map(|(target, seq)| {
            let conv = match *target {
                HistoryTarget::User(peer) => Conversation::direct(me.id, peer),
                HistoryTarget::Group(g) => Conversation::Group(g),
            };
            (conv, *seq)
        });
        me.delivery.acknowledge(positions.collect::<Vec<_>>());
        Ok(())
    }
}

/// Cuts a history page down to its newest messages that fit in `max_bytes`
/// (at least one), so that a small request cannot ask for megabytes. The
/// client pages on with `before` set to the oldest it got.
fn keep_newest_within(page: &mut Vec<crate::model::ChatMessage>, max_bytes: usize) {
    let mut newest_first: Vec<(Seq, usize)> = page
        .iter()
        .map(|m| (m.seq, m.body.len() + m.sender_name.len() + 64))
        .collect();
    newest_first.sort_unstable_by_key(|b| std::cmp::Reverse(b.0));
    let mut total = 0usize;
    let mut oldest_kept = Seq(i64::MIN);
    for (i, (seq, size)) in newest_first.iter().enumerate() {
        total = total.saturating_add(*size);
        if total > max_bytes && i > 0 {
            break;
        }
        oldest_kept = *seq;
    }
    page.retain(|m| m.seq >= oldest_kept);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::ChatMessage;
    use crate::model::{GroupId, Seq, UserId};

    #[test]
    fn a_history_page_keeps_its_newest_messages_within_the_byte_limit() {
        let msg = |seq| ChatMessage {
            conv: Conversation::Group(GroupId(1)),
            seq: Seq(seq),
            sender: UserId(1),
            sender_name: "a".into(),
            body: "x".repeat(935),
            ts_ms: 0,
            kind: Default::default(),
        };
        let mut page: Vec<ChatMessage> = (1..=10).rev().map(msg).collect();
        keep_newest_within(&mut page, 3000);
        let seqs: Vec<Seq> = page.iter().map(|m| m.seq).collect();
        assert_eq!(
            seqs,
            vec![10, 9, 8],
            "1000 bytes each, newest kept, order kept"
        );
        let mut one = vec![msg(5)];
        keep_newest_within(&mut one, 10);
        assert_eq!(one.len(), 1, "never empty");
    }
}
