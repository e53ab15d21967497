//! The SQL of consent: friend requests, private groups, invitations and
//! roles, written once for both dialects (as [`super::sql`] is). The
//! [`Store`](super::Store) implementation calls these.

use sqlx::{ColumnIndex, Decode, Encode, Executor, IntoArguments, Type};

use super::sql::{DROP_REQUESTS_BETWEEN, Dialect, SqlStore, is_unique_violation};
use super::{
    AskLimits, FriendAsk, FriendRequests, GroupMeta, Invite, InviteKind, InviteOutcome, Membership,
    PRIVATE_GROUP_IDS, StoreError, StoreResult, now_ms,
};
use crate::model::{
    Conversation, GroupId, GroupInfo, GroupMember, GroupRole, Seq, UserId, UserSummary,
};

const DAY_MS: i64 = 24 * 3600 * 1000;

const LIVE_USER: &str = "SELECT COUNT(*) FROM users WHERE id = ? AND password_hash <> '!'";
const ARE_FRIENDS: &str = "SELECT COUNT(*) FROM friends WHERE user_id = ? AND friend_id = ?";
const REQUEST_STATE: &str =
    "SELECT state, created_at FROM friend_requests WHERE from_id = ? AND to_id = ?";
const PENDING_ASKED: &str =
    "SELECT COUNT(*) FROM friend_requests WHERE from_id = ? AND state IN (0, 1)";
const ASKED_SINCE: &str =
    "SELECT COUNT(*) FROM friend_requests WHERE from_id = ? AND created_at > ?";
const NEW_REQUEST: &str =
    "INSERT INTO friend_requests (from_id, to_id, created_at, state) VALUES (?, ?, ?, 0)";
const SET_REQUEST_STATE: &str =
    "UPDATE friend_requests SET state = ? WHERE from_id = ? AND to_id = ?";
const DROP_REQUEST: &str = "DELETE FROM friend_requests WHERE from_id = ? AND to_id = ?";
const INCOMING: &str = "SELECT u.id, u.name FROM friend_requests r JOIN users u ON u.id = r.from_id \
     WHERE r.to_id = ? AND r.state = 0 ORDER BY r.created_at, u.id";
const OUTGOING: &str = "SELECT u.id, u.name FROM friend_requests r JOIN users u ON u.id = r.to_id \
     WHERE r.from_id = ? AND r.state IN (0, 1) ORDER BY r.created_at, u.id";

/// `chat_groups.private`: 0 public, 1 private, 2 dissolved (a tombstone
/// that keeps the id from being handed out again).
const GROUP_META: &str =
    "SELECT id, name, description, private FROM chat_groups WHERE id = ? AND private <> 2";
const GROUP_BY_NAME: &str = "SELECT id FROM chat_groups WHERE name = ?";
const NEXT_PUBLIC_GROUP: &str = "SELECT COALESCE(MAX(id), 0) + 1 FROM chat_groups WHERE id < ?";
const CREATE_GROUP: &str =
    "INSERT INTO chat_groups (id, name, description, created_at, private) VALUES (?, ?, ?, ?, ?)";
const ADD_CREATOR: &str = "INSERT INTO group_members (group_id, user_id, role, joined_seq) \
     VALUES (?, ?, 'creator', 0)";
const ADD_MEMBER: &str = "INSERT INTO group_members (group_id, user_id, role, joined_seq) \
     VALUES (?, ?, 'normal', ?)";
const IS_MEMBER: &str = "SELECT COUNT(*) FROM group_members WHERE group_id = ? AND user_id = ?";
const MEMBERSHIP: &str = "SELECT gm.role, gm.joined_seq, g.private FROM group_members gm \
     JOIN chat_groups g ON g.id = gm.group_id WHERE gm.group_id = ? AND gm.user_id = ?";
const OWNER: &str = "SELECT COUNT(*) FROM group_members WHERE group_id = ? AND role = 'creator'";
/// Who becomes the owner when the owner goes: the longest-standing admin,
/// else the longest-standing member.
const SUCCESSOR: &str = "SELECT user_id FROM group_members WHERE group_id = ? \
     ORDER BY CASE role WHEN 'admin' THEN 0 ELSE 1 END, joined_seq, user_id LIMIT 1";
const SET_ROLE: &str = "UPDATE group_members SET role = ? WHERE group_id = ? AND user_id = ?";
const DEMOTE_OWNER: &str =
    "UPDATE group_members SET role = 'admin' WHERE group_id = ? AND role = 'creator'";
const REMOVE_MEMBER: &str = "DELETE FROM group_members WHERE group_id = ? AND user_id = ?";
const INVITE_KIND: &str = "SELECT kind FROM group_invites WHERE group_id = ? AND user_id = ?";
const INVITES_OF_GROUP: &str = "SELECT COUNT(*) FROM group_invites WHERE group_id = ? AND kind = 0";
const REQUESTS_OF_USER: &str = "SELECT COUNT(*) FROM group_invites WHERE user_id = ? AND kind = 1";
const ADD_INVITE: &str = "INSERT INTO group_invites (group_id, user_id, kind, by_id, created_at) \
     VALUES (?, ?, ?, ?, ?)";
const DROP_INVITE: &str = "DELETE FROM group_invites WHERE group_id = ? AND user_id = ?";
/// Invite rows with their group's name and both users' names, where
/// `$filter` says.
macro_rules! invite_rows {
    ($filter:literal) => {
        concat!(
            "SELECT i.group_id, g.name, u.id, u.name, b.id, b.name, i.kind \
             FROM group_invites i JOIN chat_groups g ON g.id = i.group_id \
             JOIN users u ON u.id = i.user_id JOIN users b ON b.id = i.by_id ",
            $filter
        )
    };
}
const RENAME_GROUP: &str = "UPDATE chat_groups SET name = ? WHERE id = ?";
const DESCRIBE_GROUP: &str = "UPDATE chat_groups SET description = ? WHERE id = ?";
const GROUP_MEMBER_IDS: &str = "SELECT user_id FROM group_members WHERE group_id = ?";
/// What dissolving a group deletes, each binding the group's id, except
/// the ones on its conversation key (marked true). The group's row stays
/// as a tombstone (its id is never handed out again, and SQLite's writer
/// may remember the conversation's last number), and so does the
/// conversation's counter row.
const DISSOLVE: [(&str, bool); 6] = [
    ("DELETE FROM group_members WHERE group_id = ?", false),
    ("DELETE FROM group_invites WHERE group_id = ?", false),
    ("DELETE FROM cursors WHERE conv = ?", true),
    ("DELETE FROM device_cursors WHERE conv = ?", true),
    ("DELETE FROM read_marks WHERE conv = ?", true),
    ("DELETE FROM messages WHERE conv = ?", true),
];
/// Frees the name (the tombstone's has a control character, which no
/// group name may have) and marks the row dissolved. Binds: name, id.
const TOMBSTONE: &str =
    "UPDATE chat_groups SET name = ?, description = '', private = 2 WHERE id = ?";
const LAST_SEQ: &str = "SELECT last_seq FROM conversations WHERE conv = ?";
const SET_CURSOR: &str = "REPLACE INTO cursors (user_id, conv, delivered_seq) VALUES (?, ?, ?)";

/// An invite row as [`invite_rows`] reads it.
type InviteRow = (i64, String, i64, String, i64, String, i64);

fn invite_of((group, group_name, uid, uname, bid, bname, kind): InviteRow) -> Invite {
    Invite {
        group: GroupId(group),
        group_name,
        user: UserSummary {
            id: UserId(uid),
            name: uname,
        },
        by: UserSummary {
            id: UserId(bid),
            name: bname,
        },
        kind: InviteKind::from_column(kind),
    }
}

fn summaries(rows: Vec<(i64, String)>) -> Vec<UserSummary> {
    rows.into_iter()
        .map(|(id, name)| UserSummary {
            id: UserId(id),
            name,
        })
        .collect()
}

/// A random id for a private group.
fn private_group_id() -> StoreResult<i64> {
    let mut bytes = [0u8; 8];
    getrandom::fill(&mut bytes)
        .map_err(|e| StoreError::Unavailable(format!("no randomness for a group id: {e}")))?;
    let span = (PRIVATE_GROUP_IDS.end - PRIVATE_GROUP_IDS.start) as u64;
    Ok(PRIVATE_GROUP_IDS.start + (u64::from_le_bytes(bytes) % span) as i64)
}

impl<DB: Dialect> SqlStore<DB>
where
    for<'c> &'c mut DB::Connection: Executor<'c, Database = DB>,
    DB::Arguments: IntoArguments<DB>,
    for<'e> i64: Encode<'e, DB> + Decode<'e, DB> + Type<DB>,
    for<'e> &'e str: Encode<'e, DB> + Type<DB>,
    for<'e> String: Encode<'e, DB> + Decode<'e, DB> + Type<DB>,
    usize: ColumnIndex<DB::Row>,
{
    /// Counts rows of a `SELECT COUNT(*)` binding two ids.
    async fn count2(
        conn: &mut DB::Connection,
        q: &'static str,
        a: i64,
        b: i64,
    ) -> StoreResult<i64> {
        let (n,): (i64,) = sqlx::query_as(q).bind(a).bind(b).fetch_one(conn).await?;
        Ok(n)
    }

    /// Both friendship rows, and no request left between them.
    async fn befriend(conn: &mut DB::Connection, a: UserId, b: UserId) -> StoreResult<u64> {
        let added = DB::rows_affected(
            &sqlx::query(DB::ADD_FRIENDS)
                .bind(a)
                .bind(b)
                .bind(b)
                .bind(a)
                .execute(&mut *conn)
                .await?,
        );
        sqlx::query(DROP_REQUESTS_BETWEEN)
            .bind(a)
            .bind(b)
            .bind(b)
            .bind(a)
            .execute(&mut *conn)
            .await?;
        Ok(added)
    }

    pub(super) async fn sql_add_friendship(&self, a: UserId, b: UserId) -> StoreResult<()> {
        let mut tx = self.pool.begin_with(DB::BEGIN_WRITE).await?;
        let (live,): (i64,) = sqlx::query_as(LIVE_USER)
            .bind(b)
            .fetch_one(&mut *tx)
            .await?;
        if live == 0 {
            return Err(StoreError::NotFound("user"));
        }
        if Self::befriend(&mut tx, a, b).await? == 0 {
            return Err(StoreError::Conflict("already friends"));
        }
        tx.commit().await?;
        Ok(())
    }

    pub(super) async fn sql_ask_friend(
        &self,
        from: UserId,
        to: UserId,
        limits: AskLimits,
    ) -> StoreResult<FriendAsk> {
        let now = now_ms();
        let mut tx = self.pool.begin_with(DB::BEGIN_WRITE).await?;
        let (live,): (i64,) = sqlx::query_as(LIVE_USER)
            .bind(to)
            .fetch_one(&mut *tx)
            .await?;
        if live == 0 {
            return Err(StoreError::NotFound("user"));
        }
        if Self::count2(&mut tx, ARE_FRIENDS, from.0, to.0).await? > 0 {
            return Err(StoreError::Conflict("already friends"));
        }
        let theirs: Option<(i64, i64)> = sqlx::query_as(REQUEST_STATE)
            .bind(to)
            .bind(from)
            .fetch_optional(&mut *tx)
            .await?;
        if theirs.is_some_and(|(state, _)| state != 2) {
            Self::befriend(&mut tx, from, to).await?;
            tx.commit().await?;
            return Ok(FriendAsk::Befriended);
        }
        let mine: Option<(i64, i64)> = sqlx::query_as(REQUEST_STATE)
            .bind(from)
            .bind(to)
            .fetch_optional(&mut *tx)
            .await?;
        if mine.is_some_and(|(state, _)| state != 2) {
            return Ok(FriendAsk::AlreadyAsked);
        }
        let (pending,): (i64,) = sqlx::query_as(PENDING_ASKED)
            .bind(from)
            .fetch_one(&mut *tx)
            .await?;
        if pending as usize >= limits.pending {
            return Ok(FriendAsk::TooManyPending(limits.pending));
        }
        let (today,): (i64,) = sqlx::query_as(ASKED_SINCE)
            .bind(from)
            .bind(now - DAY_MS)
            .fetch_one(&mut *tx)
            .await?;
        // A request withdrawn today and made again counts once.
        let again_today = mine.is_some_and(|(_, at)| at > now - DAY_MS);
        if !again_today && today as usize >= limits.per_day {
            return Ok(FriendAsk::TooManyToday(limits.per_day));
        }
        if mine.is_some() {
            sqlx::query(SET_REQUEST_STATE)
                .bind(0_i64)
                .bind(from)
                .bind(to)
                .execute(&mut *tx)
                .await?;
        } else {
            sqlx::query(NEW_REQUEST)
                .bind(from)
                .bind(to)
                .bind(now)
                .execute(&mut *tx)
                .await?;
        }
        tx.commit().await?;
        // Two users asking each other at once (MySQL reads a snapshot, so
        // neither transaction saw the other's request): whichever looks
        // again after both committed befriends them; both may, alike.
        let theirs: Option<(i64, i64)> = sqlx::query_as(REQUEST_STATE)
            .bind(to)
            .bind(from)
            .fetch_optional(&self.pool)
            .await?;
        if theirs.is_some_and(|(state, _)| state != 2) {
            let mut tx = self.pool.begin_with(DB::BEGIN_WRITE).await?;
            Self::befriend(&mut tx, from, to).await?;
            tx.commit().await?;
            return Ok(FriendAsk::Befriended);
        }
        Ok(FriendAsk::Requested)
    }

    pub(super) async fn sql_answer_friend(
        &self,
        user: UserId,
        from: UserId,
        accept: bool,
    ) -> StoreResult<bool> {
        let mut tx = self.pool.begin_with(DB::BEGIN_WRITE).await?;
        let row: Option<(i64, i64)> = sqlx::query_as(REQUEST_STATE)
            .bind(from)
            .bind(user)
            .fetch_optional(&mut *tx)
            .await?;
        if row.is_none_or(|(state, _)| state == 2) {
            return Ok(false);
        }
        if accept {
            Self::befriend(&mut tx, user, from).await?;
        } else {
            sqlx::query(SET_REQUEST_STATE)
                .bind(1_i64)
                .bind(from)
                .bind(user)
                .execute(&mut *tx)
                .await?;
        }
        tx.commit().await?;
        Ok(true)
    }

    pub(super) async fn sql_withdraw_friend_request(
        &self,
        from: UserId,
        to: UserId,
    ) -> StoreResult<bool> {
        let now = now_ms();
        let mut tx = self.pool.begin_with(DB::BEGIN_WRITE).await?;
        let row: Option<(i64, i64)> = sqlx::query_as(REQUEST_STATE)
            .bind(from)
            .bind(to)
            .fetch_optional(&mut *tx)
            .await?;
        let Some((state, at)) = row else {
            return Ok(false);
        };
        if state == 2 {
            return Ok(false);
        }
        if at > now - DAY_MS {
            // It still counts in today's requests.
            sqlx::query(SET_REQUEST_STATE)
                .bind(2_i64)
                .bind(from)
                .bind(to)
                .execute(&mut *tx)
                .await?;
        } else {
            sqlx::query(DROP_REQUEST)
                .bind(from)
                .bind(to)
                .execute(&mut *tx)
                .await?;
        }
        tx.commit().await?;
        Ok(true)
    }

    pub(super) async fn sql_friend_requests(&self, user: UserId) -> StoreResult<FriendRequests> {
        let incoming: Vec<(i64, String)> = sqlx::query_as(INCOMING)
            .bind(user)
            .fetch_all(&self.pool)
            .await?;
        let outgoing: Vec<(i64, String)> = sqlx::query_as(OUTGOING)
            .bind(user)
            .fetch_all(&self.pool)
            .await?;
        Ok(FriendRequests {
            incoming: summaries(incoming),
            outgoing: summaries(outgoing),
        })
    }

    pub(super) async fn sql_create_group(
        &self,
        creator: UserId,
        name: &str,
        desc: &str,
        private: bool,
    ) -> StoreResult<GroupId> {
        // Two creations may pick the same id at once (MySQL): the loser
        // tries again with the next.
        for _ in 0..8 {
            let mut tx = self.pool.begin_with(DB::BEGIN_WRITE).await?;
            let taken: Option<(i64,)> = sqlx::query_as(GROUP_BY_NAME)
                .bind(name)
                .fetch_optional(&mut *tx)
                .await?;
            if taken.is_some() {
                return Err(StoreError::Conflict("group name is already taken"));
            }
            let id = if private {
                private_group_id()?
            } else {
                let (next,): (i64,) = sqlx::query_as(NEXT_PUBLIC_GROUP)
                    .bind(PRIVATE_GROUP_IDS.start)
                    .fetch_one(&mut *tx)
                    .await?;
                next
            };
            match sqlx::query(CREATE_GROUP)
                .bind(id)
                .bind(name)
                .bind(desc)
                .bind(now_ms())
                .bind(i64::from(private))
                .execute(&mut *tx)
                .await
            {
                Ok(_) => {}
                Err(e) if is_unique_violation(&e) => continue,
                Err(e) => return Err(e.into()),
            }
            let conv = Conversation::Group(GroupId(id)).key();
            sqlx::query(ADD_CREATOR)
                .bind(id)
                .bind(creator)
                .execute(&mut *tx)
                .await?;
            sqlx::query("INSERT INTO conversations (conv, last_seq) VALUES (?, 0)")
                .bind(&conv)
                .execute(&mut *tx)
                .await?;
            sqlx::query(SET_CURSOR)
                .bind(creator)
                .bind(&conv)
                .bind(0_i64)
                .execute(&mut *tx)
                .await?;
            tx.commit().await?;
            return Ok(GroupId(id));
        }
        Err(StoreError::Unavailable(
            "no free group id found; try again".into(),
        ))
    }

    pub(super) async fn sql_group(&self, group: GroupId) -> StoreResult<Option<GroupMeta>> {
        let row: Option<(i64, String, String, i64)> = sqlx::query_as(GROUP_META)
            .bind(group)
            .fetch_optional(&self.pool)
            .await?;
        Ok(row.map(|(id, name, desc, private)| GroupMeta {
            id: GroupId(id),
            name,
            desc,
            private: private != 0,
        }))
    }

    /// Adds a member at the group's present; `NotFound` when the group is
    /// gone, `Conflict` for a member.
    async fn add_member(
        conn: &mut DB::Connection,
        user: UserId,
        group: GroupId,
    ) -> StoreResult<Seq> {
        let conv = Conversation::Group(group).key();
        let last: Option<(i64,)> = sqlx::query_as(LAST_SEQ)
            .bind(&conv)
            .fetch_optional(&mut *conn)
            .await?;
        let Some((last,)) = last else {
            return Err(StoreError::NotFound("group"));
        };
        match sqlx::query(ADD_MEMBER)
            .bind(group)
            .bind(user)
            .bind(last)
            .execute(&mut *conn)
            .await
        {
            Ok(_) => {}
            Err(e) if is_unique_violation(&e) => {
                return Err(StoreError::Conflict("already a member of this group"));
            }
            Err(e) => return Err(e.into()),
        }
        sqlx::query(DROP_INVITE)
            .bind(group)
            .bind(user)
            .execute(&mut *conn)
            .await?;
        // A new member starts at the present: earlier messages are
        // history, not offline messages.
        sqlx::query(SET_CURSOR)
            .bind(user)
            .bind(&conv)
            .bind(last)
            .execute(&mut *conn)
            .await?;
        Ok(Seq(last))
    }

    pub(super) async fn sql_join_group(&self, user: UserId, group: GroupId) -> StoreResult<Seq> {
        let mut tx = self.pool.begin_with(DB::BEGIN_WRITE).await?;
        let private: Option<(i64,)> =
            sqlx::query_as("SELECT private FROM chat_groups WHERE id = ? AND private <> 2")
                .bind(group)
                .fetch_optional(&mut *tx)
                .await?;
        let Some((private,)) = private else {
            return Err(StoreError::NotFound("group"));
        };
        if private != 0 {
            if Self::count2(&mut tx, IS_MEMBER, group.0, user.0).await? > 0 {
                return Err(StoreError::Conflict("already a member of this group"));
            }
            let kind: Option<(i64,)> = sqlx::query_as(INVITE_KIND)
                .bind(group)
                .bind(user)
                .fetch_optional(&mut *tx)
                .await?;
            if kind.map(|(k,)| InviteKind::from_column(k)) != Some(InviteKind::Invitation) {
                return Err(StoreError::NotFound("group"));
            }
        }
        let start = Self::add_member(&mut tx, user, group).await?;
        tx.commit().await?;
        Ok(start)
    }

    /// Makes someone the owner of a group that has none (its owner left).
    async fn ensure_owner(conn: &mut DB::Connection, group: GroupId) -> StoreResult<()> {
        let (owners,): (i64,) = sqlx::query_as(OWNER)
            .bind(group)
            .fetch_one(&mut *conn)
            .await?;
        if owners > 0 {
            return Ok(());
        }
        let next: Option<(i64,)> = sqlx::query_as(SUCCESSOR)
            .bind(group)
            .fetch_optional(&mut *conn)
            .await?;
        if let Some((next,)) = next {
            sqlx::query(SET_ROLE)
                .bind("creator")
                .bind(group)
                .bind(next)
                .execute(&mut *conn)
                .await?;
        }
        Ok(())
    }

    pub(super) async fn sql_leave_group(&self, user: UserId, group: GroupId) -> StoreResult<bool> {
        let mut tx = self.pool.begin_with(DB::BEGIN_WRITE).await?;
        let left = DB::rows_affected(
            &sqlx::query(REMOVE_MEMBER)
                .bind(group)
                .bind(user)
                .execute(&mut *tx)
                .await?,
        );
        for q in [
            "DELETE FROM cursors WHERE user_id = ? AND conv = ?",
            "DELETE FROM device_cursors WHERE user_id = ? AND conv = ?",
        ] {
            sqlx::query(q)
                .bind(user)
                .bind(Conversation::Group(group).key())
                .execute(&mut *tx)
                .await?;
        }
        if left > 0 {
            Self::ensure_owner(&mut tx, group).await?;
        }
        tx.commit().await?;
        Ok(left > 0)
    }

    /// Hands every group `user` owns to its successor (before the user's
    /// memberships go with its account).
    pub(super) async fn hand_over_all(conn: &mut DB::Connection, user: UserId) -> StoreResult<()> {
        let owned: Vec<(i64,)> = sqlx::query_as(
            "SELECT group_id FROM group_members WHERE user_id = ? AND role = 'creator'",
        )
        .bind(user)
        .fetch_all(&mut *conn)
        .await?;
        for (group,) in owned {
            sqlx::query(REMOVE_MEMBER)
                .bind(group)
                .bind(user)
                .execute(&mut *conn)
                .await?;
            Self::ensure_owner(conn, GroupId(group)).await?;
        }
        Ok(())
    }

    pub(super) async fn sql_invite(
        &self,
        group: GroupId,
        user: UserId,
        by: UserId,
        kind: InviteKind,
        max_pending: usize,
    ) -> StoreResult<InviteOutcome> {
        // An invitation and a request for the same user and group made at
        // the same moment (MySQL: neither transaction sees the other's
        // row): the second insert fails on the key, and looking again
        // finds the other side's, so the user joins.
        for _ in 0..2 {
            let mut tx = self.pool.begin_with(DB::BEGIN_WRITE).await?;
            let (live,): (i64,) = sqlx::query_as(LIVE_USER)
                .bind(user)
                .fetch_one(&mut *tx)
                .await?;
            if live == 0 {
                return Err(StoreError::NotFound("user"));
            }
            if Self::count2(&mut tx, IS_MEMBER, group.0, user.0).await? > 0 {
                return Err(StoreError::Conflict("already a member of this group"));
            }
            let existing: Option<(i64,)> = sqlx::query_as(INVITE_KIND)
                .bind(group)
                .bind(user)
                .fetch_optional(&mut *tx)
                .await?;
            if let Some((k,)) = existing {
                let k = InviteKind::from_column(k);
                if k == kind {
                    return Ok(InviteOutcome::AlreadyPending);
                }
                // The user asked and is now invited, or the reverse: both
                // sides want it.
                let start = Self::add_member(&mut tx, user, group).await?;
                tx.commit().await?;
                return Ok(InviteOutcome::Joined(start));
            }
            let (pending,): (i64,) = match kind {
                InviteKind::Invitation => sqlx::query_as(INVITES_OF_GROUP).bind(group),
                InviteKind::Request => sqlx::query_as(REQUESTS_OF_USER).bind(user),
            }
            .fetch_one(&mut *tx)
            .await?;
            if pending as usize >= max_pending {
                return Ok(InviteOutcome::TooMany(max_pending));
            }
            match sqlx::query(ADD_INVITE)
                .bind(group)
                .bind(user)
                .bind(kind as i64)
                .bind(by)
                .bind(now_ms())
                .execute(&mut *tx)
                .await
            {
                Ok(_) => {}
                Err(e) if is_unique_violation(&e) => continue,
                Err(e) => return Err(e.into()),
            }
            tx.commit().await?;
            return Ok(InviteOutcome::Pending);
        }
        Err(StoreError::Unavailable(
            "the invitation changed meanwhile; try again".into(),
        ))
    }

    pub(super) async fn sql_answer_invite(
        &self,
        group: GroupId,
        user: UserId,
        kind: InviteKind,
        admit: bool,
    ) -> StoreResult<Option<Seq>> {
        let mut tx = self.pool.begin_with(DB::BEGIN_WRITE).await?;
        let existing: Option<(i64,)> = sqlx::query_as(INVITE_KIND)
            .bind(group)
            .bind(user)
            .fetch_optional(&mut *tx)
            .await?;
        if existing.map(|(k,)| InviteKind::from_column(k)) != Some(kind) {
            return Ok(None);
        }
        let start = if admit {
            Self::add_member(&mut tx, user, group).await?
        } else {
            sqlx::query(DROP_INVITE)
                .bind(group)
                .bind(user)
                .execute(&mut *tx)
                .await?;
            Seq(0)
        };
        tx.commit().await?;
        Ok(Some(start))
    }

    pub(super) async fn sql_group_invites(&self, group: GroupId) -> StoreResult<Vec<Invite>> {
        let rows: Vec<InviteRow> =
            sqlx::query_as(invite_rows!("WHERE i.group_id = ? ORDER BY i.created_at"))
                .bind(group)
                .fetch_all(&self.pool)
                .await?;
        Ok(rows.into_iter().map(invite_of).collect())
    }

    pub(super) async fn sql_user_invites(&self, user: UserId) -> StoreResult<Vec<Invite>> {
        let rows: Vec<InviteRow> = sqlx::query_as(invite_rows!(
            "WHERE i.user_id = ? AND i.kind = 0 ORDER BY i.created_at"
        ))
        .bind(user)
        .fetch_all(&self.pool)
        .await?;
        Ok(rows.into_iter().map(invite_of).collect())
    }

    pub(super) async fn sql_set_role(
        &self,
        group: GroupId,
        user: UserId,
        role: GroupRole,
    ) -> StoreResult<bool> {
        let mut tx = self.pool.begin_with(DB::BEGIN_WRITE).await?;
        if Self::count2(&mut tx, IS_MEMBER, group.0, user.0).await? == 0 {
            return Ok(false);
        }
        if role == GroupRole::Creator {
            sqlx::query(DEMOTE_OWNER)
                .bind(group)
                .execute(&mut *tx)
                .await?;
        }
        sqlx::query(SET_ROLE)
            .bind(role.as_str())
            .bind(group)
            .bind(user)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(true)
    }

    pub(super) async fn sql_update_group(
        &self,
        group: GroupId,
        name: Option<&str>,
        desc: Option<&str>,
    ) -> StoreResult<()> {
        let mut tx = self.pool.begin_with(DB::BEGIN_WRITE).await?;
        if let Some(name) = name {
            match sqlx::query(RENAME_GROUP)
                .bind(name)
                .bind(group)
                .execute(&mut *tx)
                .await
            {
                Ok(_) => {}
                Err(e) if is_unique_violation(&e) => {
                    return Err(StoreError::Conflict("group name is already taken"));
                }
                Err(e) => return Err(e.into()),
            }
        }
        if let Some(desc) = desc {
            sqlx::query(DESCRIBE_GROUP)
                .bind(desc)
                .bind(group)
                .execute(&mut *tx)
                .await?;
        }
        tx.commit().await?;
        Ok(())
    }

    pub(super) async fn sql_dissolve_group(&self, group: GroupId) -> StoreResult<Vec<UserId>> {
        let conv = Conversation::Group(group).key();
        let mut tx = self.pool.begin_with(DB::BEGIN_WRITE).await?;
        let members: Vec<(i64,)> = sqlx::query_as(GROUP_MEMBER_IDS)
            .bind(group)
            .fetch_all(&mut *tx)
            .await?;
        for (q, on_conv) in DISSOLVE {
            let query = sqlx::query(q);
            let query = if on_conv {
                query.bind(conv.as_str())
            } else {
                query.bind(group)
            };
            query.execute(&mut *tx).await?;
        }
        sqlx::query(TOMBSTONE)
            .bind(format!("\u{1}dissolved {group}"))
            .bind(group)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(members.into_iter().map(|(id,)| UserId(id)).collect())
    }

    pub(super) async fn sql_membership(
        &self,
        group: GroupId,
        user: UserId,
    ) -> StoreResult<Option<Membership>> {
        let row: Option<(String, i64, i64)> = sqlx::query_as(MEMBERSHIP)
            .bind(group)
            .bind(user)
            .fetch_optional(&self.pool)
            .await?;
        Ok(row.map(|(role, joined, private)| Membership {
            role: GroupRole::parse(&role),
            joined: Seq(joined),
            private: private != 0,
        }))
    }

    pub(super) async fn sql_group_info(&self, group: GroupId) -> StoreResult<Option<GroupInfo>> {
        let Some(meta) = self.sql_group(group).await? else {
            return Ok(None);
        };
        let members: Vec<(i64, String, String)> = sqlx::query_as(
            "SELECT u.id, u.name, gm.role FROM group_members gm JOIN users u ON u.id = gm.user_id \
             WHERE gm.group_id = ? ORDER BY u.id",
        )
        .bind(group)
        .fetch_all(&self.pool)
        .await?;
        Ok(Some(GroupInfo {
            id: meta.id,
            name: meta.name,
            desc: meta.desc,
            members: members
                .into_iter()
                .map(|(id, name, role)| GroupMember {
                    id: UserId(id),
                    name,
                    role: GroupRole::parse(&role),
                })
                .collect(),
        }))
    }
}
