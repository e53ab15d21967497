//! REG_MSG, LOGIN_MSG and LOGINOUT_MSG.

use std::collections::{HashMap, HashSet};

use super::delivery::{DeliveryState, Reads};
use super::requests::Handler;
use super::session::chronological;
use super::{LoggedIn, Service, Session, counted, invalid};
use crate::hub::SessionHandle;
use crate::limits::AddrKey;
use crate::metrics::{METRICS, inc};
use crate::model::{Device, MAX_PASSWORD_BYTES, Password, UserId, UserName};
use crate::protocol::replies::{
    Contact, DeviceInfo, DeviceList, Done, GroupEntry, LoggedIn as LoginReply, Registered, State,
};
use crate::protocol::requests as wire;
use crate::protocol::{ChatFrame, ErrCode, Fail, render_push};
use crate::store::Reader;
use crate::store::StoreError;
use bytes::Bytes;

impl Handler for wire::Register {
    async fn handle(self, svc: &Service, s: &mut Session) -> Result<Registered, Fail> {
        svc.register(s.peer(), &self.name, &self.password).await
    }
}

impl Handler for wire::Login {
    async fn handle(self, svc: &Service, s: &mut Session) -> Result<LoginReply<'static>, Fail> {
        let device = Device::parse(self.device.as_deref()).map_err(invalid)?;
        svc.may_open_session(s)?;
        counted(
            svc.login(s, self.id, self.password, device, self.acks)
                .await,
        )
    }
}

impl Handler for wire::Resume {
    async fn handle(self, svc: &Service, s: &mut Session) -> Result<LoginReply<'static>, Fail> {
        let device = match self.device.as_deref() {
            Some(d) => Some(Device::parse(Some(d)).map_err(invalid)?),
            None => None,
        };
        svc.may_open_session(s)?;
        counted(svc.resume(s, &self.token, device, self.acks).await)
    }
}

/// The user's devices, and which are online.
impl Handler for wire::Devices {
    async fn handle(self, svc: &Service, s: &mut Session) -> Result<DeviceList, Fail> {
        let me = s.me_mut()?;
        let (id, mine) = (me.id, me.reader.device.clone());
        let known = svc.store.devices(id).await?;
        let online = svc.hub.online_devices(id).await?;
        Ok(DeviceList {
            devices: device_infos(&known, &online, &mine),
        })
    }
}

/// Logs another of the user's devices out: its session ends, wherever it
/// is, and its resume tokens stop working.
impl Handler for wire::DeviceLogout {
    async fn handle(self, svc: &Service, s: &mut Session) -> Result<wire::DeviceLogout, Fail> {
        let device = Device::parse(Some(&self.device)).map_err(|_| {
            // The classic device has no name on the wire but "".
            Fail::new(
                ErrCode::InvalidValue,
                "device must be 0 to 64 visible ASCII characters",
            )
        });
        let device = match (self.device.is_empty(), device) {
            (true, _) => Device::classic(),
            (false, d) => d?,
        };
        let me = s.me_mut()?;
        if device == me.reader.device {
            return Err(Fail::new(
                ErrCode::InvalidTarget,
                "this is the device you are on; use LOGOUT to log it out",
            ));
        }
        let id = me.id;
        if !svc.store.forget_device(id, &device).await? {
            return Err(Fail::new(
                ErrCode::NotFound,
                format!("you have no device named {:?}", device.as_str()),
            ));
        }
        // Its tokens are gone: whatever the hub says, it cannot come back
        // without a password.
        if let Err(e) = svc.hub.end_device(id, &device).await {
            tracing::warn!(user = %id, %device, error = %e, "could not end a logged-out device's session");
        }
        tracing::info!(user = %id, %device, "device logged out by another device");
        Ok(self)
    }
}

/// The login reply's and DEVICES' list: every device the user has, most
/// recently seen first, with whether it is online and which is this one.
fn device_infos(
    known: &[crate::model::DeviceEntry],
    online: &[Device],
    mine: &Device,
) -> Vec<DeviceInfo> {
    known
        .iter()
        .map(|d| DeviceInfo {
            device: d.device.as_str().to_owned(),
            online: online.contains(&d.device) || d.device == *mine,
            last_seen: d.last_seen,
            current: d.device == *mine,
        })
        .collect()
}

/// Deletes the account (its password confirms it): every session and token
/// of it ends, its friendships and memberships go, its name stays taken.
impl Handler for wire::DeleteAccount {
    async fn handle(self, svc: &Service, s: &mut Session) -> Result<Done, Fail> {
        svc.delete_account(s, self.password).await
    }
}

impl Handler for wire::Logout {
    async fn handle(self, svc: &Service, s: &mut Session) -> Result<Done, Fail> {
        svc.logout(s).await
    }
}

/// Typing notices one session may send a second, and at once.
const TYPING_RATE: f64 = 2.0;
const TYPING_BURST: f64 = 6.0;

/// How long a RESUME may have waited in the socket before it is refused
/// (errno 50): clients give up on an answer after a second or more.
const STALE_RESUME: std::time::Duration = std::time::Duration::from_millis(1000);

impl Service {
    pub(super) async fn register(
        &self,
        from: Option<AddrKey>,
        name: &str,
        password: &str,
    ) -> Result<Registered, Fail> {
        let name = UserName::parse(name).map_err(invalid)?;
        let password = Password::parse(password).map_err(invalid)?;
        if let Err(wait) = self.guard.may_register(from) {
            inc(&METRICS.limited);
            return Err(Fail::retry_after(
                ErrCode::TooManyRegistrations,
                "too many registrations from your address",
                wait,
            ));
        }
        let hash = self.hasher.hash(password).await?;
        let id = match self.store.create_user(name.as_str(), &hash).await {
            Ok(id) => id,
            Err(StoreError::Conflict(_)) => {
                return Err(Fail::new(ErrCode::Failed, "name is already taken"));
            }
            Err(e) => return Err(e.into()),
        };
        tracing::info!(user = %id, name = name.as_str(), "registered");
        Ok(Registered {
            id,
            name: name.as_str().to_owned(),
        })
    }

    pub(super) async fn login(
        &self,
        s: &mut Session,
        id: UserId,
        password: String,
        device: Device,
        acks: bool,
    ) -> Result<LoginReply<'static>, Fail> {
        s.logged_out()?;
        let bad = || Fail::new(ErrCode::Failed, "id or password is invalid!");
        if password.is_empty() || password.len() > MAX_PASSWORD_BYTES {
            return Err(bad());
        }
        // Refused before any hash is computed: guessing costs the guesser
        // time and the server nothing.
        if let Err(wait) = self.guard.may_login(id, s.peer()) {
            inc(&METRICS.limited);
            return Err(Fail::retry_after(
                ErrCode::LoginThrottled,
                "too many wrong passwords for this account or from your address",
                wait,
            ));
        }
        let creds = self.store.credentials(id).await?;
        let name = creds.as_ref().map(|c| c.name.clone());
        if !self
            .hasher
            .verify(password, creds.map(|c| c.password_hash))
            .await?
        {
            self.guard
                .login_failed(name.is_some().then_some(id), s.peer());
            return Err(bad());
        }
        let name = name.ok_or_else(bad)?;
        self.guard.login_succeeded(id);
        let reader = Reader::new(id, device);
        self.open_device(&reader).await?;
        if s.classic {
            // The original client cannot resume: no token, and none stored.
            return self.open_user_session(s, reader, name, None, acks).await;
        }
        let Some((token, token_hash)) = crate::auth::token::new_token() else {
            return Err(Fail::new(
                ErrCode::Unavailable,
                "server busy, try again later",
            ));
        };
        let expires = crate::store::now_ms().saturating_add(
            i64::try_from(self.config.resume_token_ttl.as_millis()).unwrap_or(i64::MAX),
        );
        self.store
            .create_token(id, &reader.device, &token_hash, expires)
            .await?;
        let mut reply = self
            .open_user_session(s, reader, name, Some(token_hash), acks)
            .await?;
        reply.token = Some(token);
        Ok(reply)
    }

    /// RESUME: a login with the token an earlier login returned, skipping
    /// the password hash. The token stays valid (until it expires or a
    /// logout revokes it), so a resume whose reply is lost can be retried.
    pub(super) async fn resume(
        &self,
        s: &mut Session,
        token: &str,
        device: Option<Device>,
        acks: bool,
    ) -> Result<LoginReply<'static>, Fail> {
        s.logged_out()?;
        let bad = || {
            Fail::new(
                ErrCode::Failed,
                "session token is invalid or expired; log in with your password",
            )
        };
        if token.is_empty() || token.len() > crate::auth::token::MAX_TOKEN_LEN {
            return Err(bad());
        }
        // A resume that waited this long in the socket before the node took
        // it (the node was stopped, say) is likely one its client gave up
        // on and made again elsewhere; carried out now, it would throw that
        // newer session out. A client still waiting resumes again at once.
        if s.request_age().is_some_and(|age| age > STALE_RESUME) {
            tracing::info!("a resume waited too long before it was read; refused");
            return Err(Fail::new(
                ErrCode::Unavailable,
                "the server took too long to read this resume; resume again",
            ));
        }
        let token_hash = crate::auth::token::token_hash(token);
        let (id, name, made_for) = self.store.token_user(&token_hash).await?.ok_or_else(bad)?;
        if device.is_some_and(|d| d != made_for) {
            return Err(Fail::new(
                ErrCode::Failed,
                "this session token was made for another device; log in with your password",
            ));
        }
        let reader = Reader::new(id, made_for);
        self.open_device(&reader).await?;
        self.open_user_session(s, reader, name, Some(token_hash), acks)
            .await
    }

    /// Notes that the device is in use; a device the user has not had yet
    /// may push one unused the longest past the limit, whose session then
    /// ends.
    async fn open_device(&self, reader: &Reader) -> Result<(), Fail> {
        let forgotten = self
            .store
            .open_device(reader.user, &reader.device, self.config.max_devices)
            .await?;
        for device in forgotten {
            tracing::info!(user = %reader.user, %device, "device forgotten: the user has too many");
            if let Err(e) = self.hub.end_device(reader.user, &device).await {
                tracing::warn!(user = %reader.user, %device, error = %e, "could not end a forgotten device's session");
            }
        }
        Ok(())
    }

    /// Makes `s` the session of `id` (replacing an older one anywhere) and
    /// builds the login reply.
    async fn open_user_session(
        &self,
        s: &mut Session,
        reader: Reader,
        name: String,
        token_hash: Option<String>,
        acks: bool,
    ) -> Result<LoginReply<'static>, Fail> {
        // A client that gave up on this request (its node was stopped while
        // the request was under way, say) and logged in elsewhere must not
        // be thrown out of that newer session by this one.
        if s.client_left() {
            tracing::info!(user = %reader.user, "client left before its login was done; not taking over");
            return Err(Fail::new(
                ErrCode::Unavailable,
                "the connection closed before the login was done",
            ));
        }
        // Claim presence first, then read what is undelivered: a message
        // stored in between is both in the page and queued as a push, and the
        // cursors drop the second copy. The other order could miss it.
        let (tx, rx) = crate::hub::queue::push_queue(self.config.push_queue);
        let reads = match (acks, s.classic) {
            (true, _) => Reads::Acknowledged,
            // The original client: its writes are confirmed by time.
            (false, true) => Reads::Confirmed,
            (false, false) => Reads::Written,
        };
        let id = reader.user;
        self.hub
            .connect(
                id,
                SessionHandle {
                    session_id: s.id,
                    device: reader.device.clone(),
                    pushes: tx,
                    kick: s.kick.clone(),
                    token_fp: token_hash.as_deref().map(crate::hub::token_fp),
                },
            )
            .await?;
        let mut me = LoggedIn {
            id,
            reader,
            session: s.id,
            reach: HashMap::new(),
            typing: crate::limits::Bucket::new(
                TYPING_RATE,
                TYPING_BURST,
                std::time::Instant::now(),
            ),
            name,
            pushes: rx,
            token_hash,
            delivery: DeliveryState::new(reads, std::time::Instant::now()),
            unread_sent: HashMap::new(),
            contacts: Vec::new(),
        };
        match self.login_payload(&mut me, s.classic).await {
            Ok((reply, online_contacts, rest)) => {
                tracing::info!(
                    user = %id,
                    device = %me.reader.device,
                    session = s.id,
                    acks,
                    classic = s.classic,
                    token = me.token_hash.as_deref().map(crate::hub::token_fp).unwrap_or_default(),
                    "user online"
                );
                self.announce(id, &me.name, true, &online_contacts).await;
                s.user = Some(me);
                s.after_reply = rest;
                Ok(reply)
            }
            Err(e) => {
                tracing::info!(user = %id, session = s.id, error = %e.msg, "login failed after taking the device over");
                self.hub.disconnect(id, s.id).await;
                Err(e)
            }
        }
    }

    /// The login reply, which of the user's contacts are online (to be
    /// told that the user is, too), and the offline messages that follow
    /// the reply as pushes (for the original client, those the reply has
    /// no room for).
    async fn login_payload(
        &self,
        me: &mut LoggedIn,
        classic: bool,
    ) -> Result<(LoginReply<'static>, Vec<UserId>, Vec<Bytes>), Fail> {
        // One page rides in the reply. Its positions are stored only once
        // the reply is written (by the next backlog page or the session's
        // end); further pages follow one at a time through the connection.
        let page_size = self.config.offline_page.max(1);
        let start = self.store.session_start(&me.reader, page_size).await?;
        me.delivery.load(start.cursors);
        let first = start.undelivered;
        me.delivery.page_sent(&first);
        let first = chronological(first);

        let (friends, groups) = (start.friends, start.groups);
        // One presence lookup for everyone listed, however many.
        let mut ids: Vec<UserId> = friends.iter().map(|f| f.id).collect();
        ids.extend(groups.iter().flat_map(|g| g.members.iter().map(|m| m.id)));
        let ids: Vec<UserId> = ids
            .into_iter()
            .collect::<HashSet<_>>()
            .into_iter()
            .collect();
        let online: HashMap<UserId, bool> = ids
            .iter()
            .copied()
            .zip(self.hub.online(&ids).await?)
            .collect();
        // Users who block each other do not see each other's presence.
        let blocks = self.store.blocks(me.id).await?;
        let is_online =
            |id: &UserId| !blocks.between(*id) && online.get(id).copied().unwrap_or(false);
        me.contacts = super::presence::contacts_of(me.id, &friends, &groups);
        me.contacts.retain(|c| !blocks.between(*c));
        let online_contacts: Vec<UserId> = me
            .contacts
            .iter()
            .copied()
            .filter(|id| is_online(id))
            .collect();

        let contact = |id, name: &str, role: Option<&str>| Contact {
            id,
            name: name.to_owned(),
            state: State::of(is_online(&id)),
            role: role.map(str::to_owned),
        };
        let mut reply = LoginReply {
            id: me.id,
            name: me.name.clone(),
            offlinemsg: if classic {
                Vec::new()
            } else {
                first
                    .iter()
                    .map(|m| ChatFrame::of(m).into_owned())
                    .collect()
            },
            friends: friends
                .iter()
                .map(|f| contact(f.id, &f.name, None))
                .collect(),
            groups: groups
                .iter()
                .map(|g| GroupEntry {
                    id: g.id,
                    groupname: g.name.clone(),
                    groupdesc: g.desc.clone(),
                    users: g
                        .members
                        .iter()
                        .map(|m| contact(m.id, &m.name, Some(m.role.as_str())))
                        .collect(),
                })
                .collect(),
            token: None,
            acks: me.delivery.reads() == Reads::Acknowledged,
            more: false,
            device: (!me.reader.device.is_classic()).then(|| me.reader.device.as_str().to_owned()),
            devices: Vec::new(),
            reads: Vec::new(),
            blocked: Vec::new(),
            only_friends: false,
            requests: Vec::new(),
            invitations: Vec::new(),
        };
        if !classic {
            // The original client's reply stays as it was (and fits its
            // one read); other clients see the user's devices and where
            // each conversation is read.
            let online = self.hub.online_devices(me.id).await.unwrap_or_default();
            reply.devices = device_infos(&start.devices, &online, &me.reader.device);
            reply.blocked = blocks.blocking.clone();
            reply.only_friends = blocks.only_friends;
            // What waits for the user's consent.
            reply.requests = self
                .store
                .friend_requests(me.id)
                .await?
                .incoming
                .into_iter()
                .map(|u| crate::protocol::replies::UserRef {
                    id: u.id,
                    name: u.name,
                })
                .collect();
            reply.invitations = self
                .store
                .user_invites(me.id)
                .await?
                .into_iter()
                .map(super::group_admin::invite_entry)
                .collect();
            reply.reads = start
                .reads
                .iter()
                .map(|r| {
                    let (toid, groupid) = super::receipts::target_fields(r.conv, me.id);
                    crate::protocol::replies::ReadEntry {
                        toid,
                        groupid,
                        read: r.read,
                        unread: r.unread,
                        peer_read: r.peer_read,
                    }
                })
                .collect();
        }
        let rest = if classic {
            let carried = crate::protocol::classic::fit_login(&mut reply, &first);
            first
                .get(carried..)
                .unwrap_or_default()
                .iter()
                .map(render_push)
                .collect()
        } else {
            Vec::new()
        };
        Ok((reply, online_contacts, rest))
    }

    pub(super) async fn delete_account(
        &self,
        s: &mut Session,
        password: String,
    ) -> Result<Done, Fail> {
        let peer = s.peer();
        let me = s.me_mut()?;
        let id = me.id;
        let bad = || Fail::new(ErrCode::Failed, "the password is not right");
        if password.is_empty() || password.len() > MAX_PASSWORD_BYTES {
            return Err(bad());
        }
        if let Err(wait) = self.guard.may_login(id, peer) {
            inc(&METRICS.limited);
            return Err(Fail::retry_after(
                ErrCode::LoginThrottled,
                "too many wrong passwords for this account or from your address",
                wait,
            ));
        }
        let creds = self.store.credentials(id).await?;
        if !self
            .hasher
            .verify(password, creds.map(|c| c.password_hash))
            .await?
        {
            self.guard.login_failed(Some(id), peer);
            return Err(bad());
        }
        let groups = self.store.user_groups(id).await?;
        let devices = self.store.devices(id).await?;
        if !self.store.delete_account(id).await? {
            return Err(Fail::new(
                ErrCode::NotFound,
                "this account is deleted already",
            ));
        }
        tracing::info!(user = %id, "account deleted");
        for g in groups {
            self.groups.invalidate(g.id);
            self.hub.group_changed(g.id).await;
        }
        let mine = me.reader.device.clone();
        for d in devices.into_iter().filter(|d| d.device != mine) {
            if let Err(e) = self.hub.end_device(id, &d.device).await {
                tracing::warn!(user = %id, error = %e, "could not end a deleted account's session");
            }
        }
        // This session ends too, without storing positions (there is
        // nothing left to store them for).
        if s.user.take().is_some() {
            self.hub.disconnect(id, s.id).await;
            METRICS.sessions_online.dec();
        }
        Ok(Done {})
    }

    pub(super) async fn logout(&self, s: &mut Session) -> Result<Done, Fail> {
        // Logging out ends the token too; a dropped connection keeps it.
        if let Some(hash) = s.user.as_mut().and_then(|me| me.token_hash.take()) {
            self.store.revoke_token(&hash).await?;
        }
        self.end_session(s).await;
        Ok(Done {})
    }
}
