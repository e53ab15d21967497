//! READ (msgid 24) and TYPING (msgid 23): what a conversation shares
//! besides its messages.
//!
//! A read position is the user's, not a device's: reading on the phone
//! clears the laptop's unread count, live, through a READ push to the
//! user's other devices. The peer of a direct conversation, and the members
//! of a group of at most `receipts_group_max` members, get the same push
//! (read ticks), unless the reader marked it `private`. Typing is a notice
//! stored nowhere, rate limited per session and dropped (never queued) for
//! a receiver that lags.

use bytes::Bytes;

use super::requests::Handler;
use super::{LoggedIn, Service, Session};
use crate::model::{Conversation, GroupId, Seq, UserId};
use crate::protocol::replies::{Done, ReadDone};
use crate::protocol::requests as wire;
use crate::protocol::{ErrCode, Fail, HistoryTarget, msgid};

impl Handler for wire::Read {
    async fn handle(self, svc: &Service, s: &mut Session) -> Result<ReadDone, Fail> {
        let target = self.target()?;
        svc.read(s.me_mut()?, target, self.seq, self.private).await
    }
}

/// Answered only when refused.
impl Handler for wire::Typing {
    async fn handle(self, svc: &Service, s: &mut Session) -> Result<Done, Fail> {
        let target = self.target()?;
        svc.typing(s.me_mut()?, target).await.map(|()| Done {})
    }
}

/// The wire's `toid`/`groupid` for a conversation, seen by `me`.
pub(super) fn target_fields(conv: Conversation, me: UserId) -> (Option<UserId>, Option<GroupId>) {
    match conv {
        Conversation::Group(g) => (None, Some(g)),
        Conversation::Direct { .. } => (conv.peer_of(me), None),
    }
}

impl Service {
    /// The conversation `target` names for `me`, if `me` takes part in it
    /// (READ, TYPING, RECALL and EDIT).
    pub(super) fn conversation_of(
        &self,
        me: &LoggedIn,
        target: HistoryTarget,
    ) -> Result<Conversation, Fail> {
        match target {
            HistoryTarget::User(peer) if peer == me.id => Err(Fail::new(
                ErrCode::InvalidTarget,
                "there is no conversation with yourself",
            )),
            HistoryTarget::User(peer) => Ok(Conversation::direct(me.id, peer)),
            HistoryTarget::Group(g) => {
                if me.delivery.knows(Conversation::Group(g)) {
                    Ok(Conversation::Group(g))
                } else {
                    Err(Fail::new(
                        ErrCode::Forbidden,
                        format!("you are not a member of group {g}"),
                    ))
                }
            }
        }
    }

    /// Who besides the user's own devices hears of `conv`: the peer, or the
    /// members of a group small enough (never the user itself).
    async fn audience(&self, me: UserId, conv: Conversation) -> Result<Vec<UserId>, Fail> {
        Ok(match conv {
            Conversation::Direct { .. } => match conv.peer_of(me) {
                // A user who blocks, or is blocked by, the other hears nothing.
                Some(peer) => match self.store.may_reach(me, peer).await? {
                    crate::store::Reach::BlockedByThem
                    | crate::store::Reach::BlockedByYou
                    | crate::store::Reach::NoSuchUser => Vec::new(),
                    _ => vec![peer],
                },
                None => Vec::new(),
            },
            Conversation::Group(g) => match self.groups.members(self.store.as_ref(), g).await? {
                Some(m) if m.len() <= self.config.receipts_group_max => {
                    m.iter().copied().filter(|u| *u != me).collect()
                }
                _ => Vec::new(),
            },
        })
    }

    pub(super) async fn read(
        &self,
        me: &mut LoggedIn,
        target: HistoryTarget,
        seq: Seq,
        private: bool,
    ) -> Result<ReadDone, Fail> {
        let conv = self.conversation_of(me, target)?;
        let (read, moved) = self.store.mark_read(me.id, conv, seq).await?;
        if moved {
            let frame = notice(msgid::READ, me, conv, Some(read));
            let mut to = vec![me.id];
            if !private {
                to.extend(self.audience(me.id, conv).await?);
            }
            self.hub.notify_except(frame, &to, me.session).await;
        }
        Ok(ReadDone { seq: read })
    }

    pub(super) async fn typing(
        &self,
        me: &mut LoggedIn,
        target: HistoryTarget,
    ) -> Result<(), Fail> {
        let conv = self.conversation_of(me, target)?;
        if me.typing.try_take(std::time::Instant::now()).is_err() {
            crate::metrics::inc(&crate::metrics::METRICS.limited);
            return Err(Fail::new(
                ErrCode::SlowDown,
                "typing notices are limited to 2 a second; this one was dropped",
            ));
        }
        let to = self.audience(me.id, conv).await?;
        if !to.is_empty() {
            self.hub
                .notify(notice(msgid::TYPING, me, conv, None), &to)
                .await;
        }
        Ok(())
    }
}

/// A READ or TYPING push: who (`id`, `name`), where (`toid` as the sender
/// sees it, or `groupid`) and, for READ, up to where.
fn notice(kind: i64, me: &LoggedIn, conv: Conversation, seq: Option<Seq>) -> Bytes {
    let (toid, groupid) = target_fields(conv, me.id);
    let mut v = serde_json::json!({ "msgid": kind, "id": me.id, "name": me.name });
    if let Some(t) = toid {
        v["toid"] = t.0.into();
    }
    if let Some(g) = groupid {
        v["groupid"] = g.0.into();
    }
    if let Some(s) = seq {
        v["seq"] = s.0.into();
    }
    Bytes::from(serde_json::to_vec(&v).unwrap_or_default())
}
