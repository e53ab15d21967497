//! RECALL (msgid 25) and EDIT (msgid 26): a message changed after it was
//! sent.
//!
//! A change is stored as an event of the conversation, with a `seq` of its
//! own that names the message it changes, and the message itself is
//! changed in the same transaction (a recalled one loses its text; an
//! edited one reads the new text), so history shows the current version.
//! The event is delivered as a message is: to every device of every
//! participant, online or when it comes back, across nodes. Its frame is an
//! ordinary chat frame whose `msg` says in words what happened, so the
//! original client, which knows no events, shows its user a readable line.

use super::requests::Handler;
use super::{LoggedIn, Service, Session};
use crate::model::{Conversation, MsgKind, Seq, UserId, check_body};
use crate::protocol::replies::Sent;
use crate::protocol::requests as wire;
use crate::protocol::{ErrCode, Fail, HistoryTarget};

impl Handler for wire::Recall {
    async fn handle(mut self, svc: &Service, s: &mut Session) -> Result<Sent, Fail> {
        let target = self.target()?;
        let cmid = crate::protocol::checked_cmid(self.cmid.take())?;
        svc.change(s.me_mut()?, target, self.seq, None, cmid).await
    }
}

impl Handler for wire::Edit {
    async fn handle(mut self, svc: &Service, s: &mut Session) -> Result<Sent, Fail> {
        let target = self.target()?;
        let cmid = crate::protocol::checked_cmid(self.cmid.take())?;
        let text = std::mem::take(&mut self.msg);
        svc.change(s.me_mut()?, target, self.seq, Some(text), cmid)
            .await
    }
}

impl Service {
    /// Recalls (`text` is `None`) or edits message `seq`.
    async fn change(
        &self,
        me: &mut LoggedIn,
        target: HistoryTarget,
        seq: Seq,
        text: Option<String>,
        cmid: Option<String>,
    ) -> Result<Sent, Fail> {
        let conv = self.conversation_of(me, target)?;
        if let Some(t) = &text {
            check_body(t, self.config.max_message_bytes).map_err(super::invalid)?;
        }
        let original = self
            .store
            .message(conv, seq)
            .await?
            .filter(|m| !m.kind.is_event())
            .ok_or_else(|| {
                Fail::new(
                    ErrCode::NotFound,
                    format!("there is no message {seq} in this conversation"),
                )
            })?;
        if original.kind == MsgKind::Recalled {
            return Err(Fail::new(
                ErrCode::Recalled,
                format!("message {seq} was recalled"),
            ));
        }
        let age_ms = crate::store::now_ms().saturating_sub(original.ts_ms);
        let mine = original.sender == me.id;
        let kind = match text {
            None => {
                // A group's owner and admins may remove any message of
                // the group, at any time; a sender its own, within the
                // window.
                let moderator = match conv {
                    Conversation::Group(g) => self
                        .store
                        .membership(g, me.id)
                        .await?
                        .is_some_and(|m| m.role.manages()),
                    Conversation::Direct { .. } => false,
                };
                if !mine && !moderator {
                    return Err(Fail::new(
                        ErrCode::Forbidden,
                        "you can only recall your own messages",
                    ));
                }
                if !moderator && age_ms > window_ms(self.config.recall_window) {
                    return Err(Fail::new(
                        ErrCode::TooLate,
                        format!(
                            "messages can be recalled within {} s of sending",
                            self.config.recall_window.as_secs()
                        ),
                    ));
                }
                MsgKind::RecallOf(seq)
            }
            Some(_) => {
                if !mine {
                    return Err(Fail::new(
                        ErrCode::Forbidden,
                        "you can only edit your own messages",
                    ));
                }
                if age_ms > window_ms(self.config.edit_window) {
                    return Err(Fail::new(
                        ErrCode::TooLate,
                        format!(
                            "messages can be edited within {} s of sending",
                            self.config.edit_window.as_secs()
                        ),
                    ));
                }
                MsgKind::EditOf(seq)
            }
        };
        let recipients: Vec<UserId> = match conv {
            Conversation::Direct { .. } => conv.peer_of(me.id).into_iter().chain([me.id]).collect(),
            Conversation::Group(g) => self
                .groups
                .members(self.store.as_ref(), g)
                .await?
                .map(|m| m.to_vec())
                .unwrap_or_default(),
        };
        let body = text.unwrap_or_default();
        let sent = self
            .store_and_deliver(me, conv, body, cmid, kind, &recipients)
            .await?;
        tracing::info!(user = %me.id, %conv, %seq, event = %sent.seq, ?kind, "message changed");
        Ok(sent)
    }
}

fn window_ms(d: std::time::Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}
