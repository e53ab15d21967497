//! Domain values shared by the service, the store and the hub.
//!
//! Names and texts are validated once, when they enter through [`UserName::parse`]
//! and friends, so that no other layer has to wonder whether a value is too
//! long or empty.

use std::fmt;
use std::sync::Arc;

use bytes::Bytes;

/// A numeric id as the classic protocol carries it (a JSON integer), typed
/// so that a user's id and a group's cannot be swapped across modules.
macro_rules! id {
    ($(#[$doc:meta])* $name:ident) => {
        $(#[$doc])*
        #[derive(
            Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Default,
            serde::Serialize, serde::Deserialize, sqlx::Type,
        )]
        #[serde(transparent)]
        #[sqlx(transparent)]
        pub struct $name(pub i64);

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                self.0.fmt(f)
            }
        }

        impl From<i64> for $name {
            fn from(id: i64) -> Self {
                $name(id)
            }
        }

        impl From<$name> for i64 {
            fn from(id: $name) -> i64 {
                id.0
            }
        }

        impl PartialEq<i64> for $name {
            fn eq(&self, other: &i64) -> bool {
                self.0 == *other
            }
        }

        impl rusqlite::ToSql for $name {
            fn to_sql(&self) -> rusqlite::Result<rusqlite::types::ToSqlOutput<'_>> {
                self.0.to_sql()
            }
        }

        impl rusqlite::types::FromSql for $name {
            fn column_result(v: rusqlite::types::ValueRef<'_>) -> rusqlite::types::FromSqlResult<Self> {
                i64::column_result(v).map($name)
            }
        }

        impl redis::ToRedisArgs for $name {
            fn write_redis_args<W: ?Sized + redis::RedisWrite>(&self, out: &mut W) {
                self.0.write_redis_args(out)
            }
        }

        impl std::str::FromStr for $name {
            type Err = std::num::ParseIntError;
            fn from_str(s: &str) -> Result<Self, Self::Err> {
                s.parse().map($name)
            }
        }
    };
}

id!(
    /// A user's id.
    UserId
);
id!(
    /// A group's id.
    GroupId
);
id!(
    /// Position of a message inside its conversation; starts at 1, no gaps.
    Seq
);

impl Seq {
    pub const MAX: Seq = Seq(i64::MAX);

    /// The position after this one.
    pub fn next(self) -> Seq {
        Seq(self.0.saturating_add(1))
    }

    /// How many positions lie from `earlier` up to this one (0 if none).
    pub fn since(self, earlier: Seq) -> u64 {
        u64::try_from(self.0.saturating_sub(earlier.0)).unwrap_or(0)
    }
}

/// A conversation is the unit of ordering: a pair of users or a group.
///
/// Sequence numbers, delivery cursors and history are all per conversation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Conversation {
    /// One-to-one conversation; `low < high` always holds (see [`Conversation::direct`]).
    Direct { low: UserId, high: UserId },
    /// A group's conversation.
    Group(GroupId),
}

impl Conversation {
    /// The conversation between two distinct users, whichever writes first.
    pub fn direct(a: UserId, b: UserId) -> Self {
        Conversation::Direct {
            low: a.min(b),
            high: a.max(b),
        }
    }

    /// Storage key: `d:LOW:HIGH` or `g:GROUP`. Stable, human-readable, and the
    /// same text in every backend.
    pub fn key(&self) -> String {
        match self {
            Conversation::Direct { low, high } => format!("d:{low}:{high}"),
            Conversation::Group(g) => format!("g:{g}"),
        }
    }

    /// Inverse of [`Conversation::key`].
    pub fn from_key(key: &str) -> Option<Self> {
        let mut parts = key.split(':');
        let conv = match (parts.next()?, parts.next(), parts.next()) {
            ("d", Some(a), Some(b)) => {
                let (a, b) = (a.parse().ok()?, b.parse().ok()?);
                if a >= b {
                    return None;
                }
                Conversation::direct(a, b)
            }
            ("g", Some(g), None) => Conversation::Group(g.parse().ok()?),
            _ => return None,
        };
        parts.next().is_none().then_some(conv)
    }

    /// For a direct conversation, the participant that is not `me`.
    pub fn peer_of(&self, me: UserId) -> Option<UserId> {
        match *self {
            Conversation::Direct { low, high } if low == me => Some(high),
            Conversation::Direct { low, high } if high == me => Some(low),
            _ => None,
        }
    }
}

impl fmt::Display for Conversation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.key())
    }
}

/// One of a user's devices, as its client names it: 1 to 64 visible ASCII
/// characters. A session that names none is the *classic* device (the
/// empty name): one per user, as the original client has it.
///
/// Each device has its own session, delivery positions and resume tokens;
/// a login replaces only the older session of the same device.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Device(Arc<str>);

impl Default for Device {
    fn default() -> Self {
        Device::classic()
    }
}

impl Device {
    /// Longest device name, in bytes.
    pub const MAX_LEN: usize = 64;

    /// The device of sessions that name none.
    pub fn classic() -> Self {
        Device(Arc::from(""))
    }

    /// Checks a name a client gave (`None`: the classic device).
    pub fn parse(name: Option<&str>) -> Result<Self, Invalid> {
        let Some(s) = name else {
            return Ok(Device::classic());
        };
        if s.is_empty() {
            return Err(Invalid::Empty("device"));
        }
        if s.len() > Self::MAX_LEN {
            return Err(Invalid::TooLong {
                what: "device",
                len: s.len(),
                max: Self::MAX_LEN,
                unit: "bytes",
            });
        }
        if !s.bytes().all(|b| b.is_ascii_graphic()) {
            return Err(Invalid::NotVisibleAscii("device"));
        }
        Ok(Device(Arc::from(s)))
    }

    /// A name read back from storage or Redis (checked when it came in).
    pub fn stored(s: &str) -> Self {
        Device(Arc::from(s))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    pub fn is_classic(&self) -> bool {
        self.0.is_empty()
    }
}

impl fmt::Display for Device {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.is_classic() {
            f.write_str("(classic)")
        } else {
            f.write_str(&self.0)
        }
    }
}

/// A device as the login reply lists it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeviceEntry {
    pub device: Device,
    /// When it last logged in or resumed (ms since the epoch).
    pub last_seen: i64,
}

/// What a row of a conversation is: a message (as sent, edited or
/// recalled), or an event that changed an earlier message. Events have a
/// `seq` of their own and travel like messages, so every device of every
/// participant learns of them, online or later.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum MsgKind {
    #[default]
    Message,
    /// A message whose text its sender changed.
    Edited,
    /// A message taken back (its text is gone).
    Recalled,
    /// The event that recalled message `seq`.
    RecallOf(Seq),
    /// The event that edited message `seq`; its body is the new text.
    EditOf(Seq),
}

impl MsgKind {
    /// The storage columns `kind` and `ref_seq`.
    pub fn columns(self) -> (i64, i64) {
        match self {
            MsgKind::Message => (0, 0),
            MsgKind::Edited => (1, 0),
            MsgKind::Recalled => (2, 0),
            MsgKind::RecallOf(s) => (3, s.0),
            MsgKind::EditOf(s) => (4, s.0),
        }
    }

    /// Inverse of [`MsgKind::columns`]; anything unknown reads as a message.
    pub fn from_columns(kind: i64, ref_seq: i64) -> Self {
        match kind {
            1 => MsgKind::Edited,
            2 => MsgKind::Recalled,
            3 => MsgKind::RecallOf(Seq(ref_seq)),
            4 => MsgKind::EditOf(Seq(ref_seq)),
            _ => MsgKind::Message,
        }
    }

    /// Whether this is an event rather than a message.
    pub fn is_event(self) -> bool {
        matches!(self, MsgKind::RecallOf(_) | MsgKind::EditOf(_))
    }
}

/// A chat message before the store has given it a place.
#[derive(Debug, Clone)]
pub struct NewMessage {
    pub conv: Conversation,
    pub sender: UserId,
    /// The device it was sent from: that device does not get it back, the
    /// sender's other devices do.
    pub sender_device: Device,
    /// Copied from the sender's session so readers never join on users.
    pub sender_name: String,
    pub body: String,
    /// The sender's own id for the message: a resend with the same id is
    /// not stored again; the store answers with the original.
    pub client_id: Option<String>,
    /// [`MsgKind::Message`], or an event ([`MsgKind::RecallOf`],
    /// [`MsgKind::EditOf`]): the store then changes that message too.
    pub kind: MsgKind,
}

impl NewMessage {
    /// The message as stored with number `seq` at `ts_ms`.
    pub fn stored(&self, seq: Seq, ts_ms: i64) -> ChatMessage {
        ChatMessage {
            conv: self.conv,
            seq,
            sender: self.sender,
            sender_name: self.sender_name.clone(),
            body: self.body.clone(),
            ts_ms,
            kind: self.kind,
        }
    }
}

/// A chat message as stored: its conversation, its sequence number and the
/// server time at which it was accepted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChatMessage {
    pub conv: Conversation,
    pub seq: Seq,
    pub sender: UserId,
    pub sender_name: String,
    pub body: String,
    /// Milliseconds since the Unix epoch, server clock.
    pub ts_ms: i64,
    pub kind: MsgKind,
}

/// A stored message together with its wire form, rendered once and shared by
/// every receiver (a group message is serialised once, not once per member).
#[derive(Debug)]
pub struct Delivery {
    /// Where the message belongs and its number there: all a receiving
    /// session needs to order it (the rest is in the frame, and in the store).
    pub conv: Conversation,
    pub seq: Seq,
    /// The JSON object of the push, without terminator.
    pub frame: Bytes,
    /// When it reached this node (stored here, or taken off the bus), for
    /// the delivery latency metric.
    pub arrived: std::time::Instant,
    /// Whether another node sent it.
    pub remote: bool,
    /// The local session that sent it (0: none here), which has it already
    /// and is skipped; the sender's other sessions get it.
    pub origin: u64,
    /// Who sent it, from which device: a later session of that very device
    /// (the client reconnected while the send was under way) must not get
    /// it back as a message from someone.
    pub sender: UserId,
    pub sender_device: Device,
}

/// What the hub hands to a session's queue.
#[derive(Debug, Clone)]
pub enum Push {
    /// A stored message for this session's user.
    Message(Arc<Delivery>),
    /// Live delivery may have missed something (the node's subscription to
    /// the cluster bus was down): catch up from the store.
    Resync,
    /// A frame to write as it is, stored nowhere (a contact came online or
    /// went offline); dropped rather than queued when the session lags.
    /// Behind an `Arc` so that a push is two words: what a session's queue
    /// holds, and what a burst makes it grow to, is counted in pushes.
    Notice(Arc<bytes::Bytes>),
}

/// A user as others see them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UserSummary {
    pub id: UserId,
    pub name: String,
}

/// What login needs to check a password.
#[derive(Debug, Clone)]
pub struct Credentials {
    pub id: UserId,
    pub name: String,
    pub password_hash: String,
}

/// A member's role inside a group.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GroupRole {
    /// The owner (the original's "creator", kept for its client): names
    /// admins, hands the group over, dissolves it.
    Creator,
    /// Removes members, approves requests, invites, renames the group.
    Admin,
    Normal,
}

impl GroupRole {
    /// The wire and storage spelling.
    pub fn as_str(&self) -> &'static str {
        match self {
            GroupRole::Creator => "creator",
            GroupRole::Admin => "admin",
            GroupRole::Normal => "normal",
        }
    }

    /// Whether the role manages members (the owner and admins).
    pub fn manages(&self) -> bool {
        matches!(self, GroupRole::Creator | GroupRole::Admin)
    }

    /// Inverse of [`GroupRole::as_str`]; anything unknown reads as normal.
    pub fn parse(s: &str) -> Self {
        match s {
            "creator" => GroupRole::Creator,
            "admin" => GroupRole::Admin,
            _ => GroupRole::Normal,
        }
    }
}

/// One member of a group, as listed to users.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GroupMember {
    pub id: UserId,
    pub name: String,
    pub role: GroupRole,
}

/// A group with its members.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GroupInfo {
    pub id: GroupId,
    pub name: String,
    pub desc: String,
    pub members: Vec<GroupMember>,
}

/// Why a user-supplied text was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Invalid {
    #[error("{0} must not be empty")]
    Empty(&'static str),
    #[error("{what} is too long ({len} > {max} {unit})")]
    TooLong {
        what: &'static str,
        len: usize,
        max: usize,
        unit: &'static str,
    },
    #[error("{0} must not contain control characters")]
    Control(&'static str),
    #[error("{0} must not start or end with whitespace")]
    Padded(&'static str),
    #[error("{0} must not contain invisible, formatting or direction-changing characters")]
    Invisible(&'static str),
    #[error(
        "{0} mixes scripts in a way that can imitate another name (e.g. Cyrillic and Latin letters)"
    )]
    MixedScript(&'static str),
    #[error("{0} stacks too many combining marks")]
    StackedMarks(&'static str),
    #[error("{0} must be visible ASCII characters only (no spaces)")]
    NotVisibleAscii(&'static str),
}

fn check_text(
    what: &'static str,
    s: &str,
    max_chars: usize,
    allow_empty: bool,
    allow_newlines: bool,
) -> Result<(), Invalid> {
    if s.is_empty() && !allow_empty {
        return Err(Invalid::Empty(what));
    }
    let len = s.chars().count();
    if len > max_chars {
        return Err(Invalid::TooLong {
            what,
            len,
            max: max_chars,
            unit: "characters",
        });
    }
    let bad = |c: char| c.is_control() && !(allow_newlines && (c == '\n' || c == '\t'));
    if s.chars().any(bad) {
        return Err(Invalid::Control(what));
    }
    Ok(())
}

/// Longest user or group name, in characters (the original's VARCHAR(50)).
pub const MAX_NAME_CHARS: usize = 50;
/// Longest group description, in characters (the original's VARCHAR(200)).
pub const MAX_DESC_CHARS: usize = 200;
/// Longest password, in bytes; argon2 would take more, but nobody needs it.
pub const MAX_PASSWORD_BYTES: usize = 128;

/// Names are unique, and databases disagree on whether trailing spaces
/// count (MySQL's PAD SPACE collations ignore them), so names have none.
/// Checks a name and returns it in its one canonical form (NFKC), so that
/// two names that look alike are one name: the uniqueness check of the
/// store then refuses the look-alike. Refused outright: invisible and
/// direction-changing characters (zero-width space, BOM, right-to-left
/// override...), whitespace other than single inner spaces, letters mixing
/// scripts beyond what one language writes (Latin with Han, Kana or Hangul
/// is fine; Cyrillic А inside a Latin name is not), and stacks of combining
/// marks.
fn check_name(what: &'static str, s: &str) -> Result<String, Invalid> {
    use unicode_normalization::UnicodeNormalization;
    use unicode_security::{RestrictionLevel, RestrictionLevelDetection};
    check_text(what, s, MAX_NAME_CHARS * 4, false, false)?;
    if s.chars().any(invisible) {
        return Err(Invalid::Invisible(what));
    }
    let name: String = s.nfkc().collect();
    check_text(what, &name, MAX_NAME_CHARS, false, false)?;
    if name.trim() != name {
        return Err(Invalid::Padded(what));
    }
    // After NFKC: fullwidth and other compatibility spaces are plain spaces.
    if name.chars().any(|c| c.is_whitespace() && c != ' ') || name.contains("  ") {
        return Err(Invalid::Invisible(what));
    }
    if name.chars().any(invisible) {
        return Err(Invalid::Invisible(what));
    }
    let mut marks = 0;
    for c in name.chars() {
        marks = if unicode_normalization::char::is_combining_mark(c) {
            marks + 1
        } else {
            0
        };
        if marks > 2 {
            return Err(Invalid::StackedMarks(what));
        }
    }
    let letters: String = name.chars().filter(|c| c.is_alphanumeric()).collect();
    if letters.as_str().detect_restriction_level() > RestrictionLevel::HighlyRestrictive {
        return Err(Invalid::MixedScript(what));
    }
    Ok(name)
}

/// Characters that show nothing or change how the text around them shows:
/// format characters (Unicode category Cf: zero-width space and joiners,
/// direction marks, embeddings, overrides and isolates, BOM, invisible
/// operators, tags), variation selectors, fillers, and line separators.
fn invisible(c: char) -> bool {
    matches!(c as u32,
        0x00AD | 0x034F | 0x061C | 0x115F | 0x1160 | 0x17B4 | 0x17B5 | 0x180B..=0x180F
        | 0x200B..=0x200F | 0x2028..=0x202E | 0x2060..=0x206F | 0x3164 | 0xFE00..=0xFE0F
        | 0xFEFF | 0xFFA0 | 0xFFF0..=0xFFFB | 0x1BCA0..=0x1BCA3 | 0x1D173..=0x1D17A
        | 0xE0000..=0xE0FFF | 0x0600..=0x0605 | 0x06DD | 0x070F | 0x0890 | 0x0891 | 0x08E2
        | 0x110BD | 0x110CD | 0x13430..=0x1343F)
}

/// A validated user name: 1 to 50 characters, no control characters, no
/// surrounding whitespace.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UserName(String);

impl UserName {
    /// Validates `s` and puts it in its canonical form.
    pub fn parse(s: &str) -> Result<Self, Invalid> {
        Ok(UserName(check_name("name", s)?))
    }
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// A validated group name: like a user name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GroupName(String);

impl GroupName {
    /// Validates `s` and puts it in its canonical form.
    pub fn parse(s: &str) -> Result<Self, Invalid> {
        Ok(GroupName(check_name("groupname", s)?))
    }
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// A validated group description: up to 200 characters, may be empty.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GroupDesc(String);

impl GroupDesc {
    pub fn parse(s: &str) -> Result<Self, Invalid> {
        check_text("groupdesc", s, MAX_DESC_CHARS, true, true)?;
        Ok(GroupDesc(s.to_owned()))
    }
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// A validated password: 1 to 128 bytes. Control characters are allowed:
/// it is never displayed.
#[derive(Clone, PartialEq, Eq)]
pub struct Password(String);

impl fmt::Debug for Password {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Password(***)")
    }
}

impl Password {
    pub fn parse(s: &str) -> Result<Self, Invalid> {
        if s.is_empty() {
            return Err(Invalid::Empty("password"));
        }
        if s.len() > MAX_PASSWORD_BYTES {
            return Err(Invalid::TooLong {
                what: "password",
                len: s.len(),
                max: MAX_PASSWORD_BYTES,
                unit: "bytes",
            });
        }
        Ok(Password(s.to_owned()))
    }
    pub fn as_bytes(&self) -> &[u8] {
        self.0.as_bytes()
    }
}

/// Validates a chat message body against the configured limit (in bytes, the
/// unit that costs memory and bandwidth). Newlines and tabs are allowed.
pub fn check_body(body: &str, max_bytes: usize) -> Result<(), Invalid> {
    if body.is_empty() {
        return Err(Invalid::Empty("msg"));
    }
    if body.len() > max_bytes {
        return Err(Invalid::TooLong {
            what: "msg",
            len: body.len(),
            max: max_bytes,
            unit: "bytes",
        });
    }
    check_text("msg", body, usize::MAX, false, true)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn conversation_keys_round_trip_and_are_order_independent() {
        let c = Conversation::direct(UserId(7), UserId(3));
        assert_eq!(c, Conversation::direct(UserId(3), UserId(7)));
        assert_eq!(c.key(), "d:3:7");
        assert_eq!(Conversation::from_key("d:3:7"), Some(c));
        assert_eq!(
            Conversation::from_key("g:12"),
            Some(Conversation::Group(GroupId(12)))
        );
        assert_eq!(c.peer_of(UserId(3)), Some(UserId(7)));
        assert_eq!(c.peer_of(UserId(7)), Some(UserId(3)));
        assert_eq!(c.peer_of(UserId(4)), None);
        for bad in ["", "d:7:3", "d:3", "g:x", "g:1:2", "x:1", "d:3:3"] {
            assert_eq!(Conversation::from_key(bad), None, "{bad}");
        }
    }

    #[test]
    fn names_are_validated_once() {
        assert!(UserName::parse("alice").is_ok());
        assert!(UserName::parse(&"é".repeat(50)).is_ok());
        assert!(matches!(
            UserName::parse(&"x".repeat(51)),
            Err(Invalid::TooLong { .. })
        ));
        assert_eq!(UserName::parse(""), Err(Invalid::Empty("name")));
        assert_eq!(UserName::parse("a\nb"), Err(Invalid::Control("name")));
        assert_eq!(UserName::parse("bob "), Err(Invalid::Padded("name")));
        assert!(UserName::parse("bob smith").is_ok());
        assert_eq!(GroupName::parse(" g"), Err(Invalid::Padded("groupname")));
        assert!(GroupDesc::parse("").is_ok());
        assert!(check_body("two\nlines", 10).is_ok());
        assert!(check_body("x", 0).is_err());
        assert!(check_body("bell\u{7}", 100).is_err());
        assert!(Password::parse(&"p".repeat(129)).is_err());
    }

    #[test]
    fn look_alike_names_are_refused_or_folded_into_one() {
        let name = |s: &str| UserName::parse(s).map(|n| n.0);
        // one canonical form: fullwidth letters, composed accents
        assert_eq!(name("Ａｌｉｃｅ").as_deref(), Ok("Alice"));
        assert_eq!(name("Jose\u{301}").as_deref(), Ok("José"));
        assert_eq!(name("José").as_deref(), Ok("José"));
        // invisible and direction-changing characters
        for s in [
            "al\u{200B}ice",
            "\u{FEFF}alice",
            "alice\u{202E}",
            "a\u{2066}b",
            "a\u{200D}b",
        ] {
            assert_eq!(name(s), Err(Invalid::Invisible("name")), "{s:?}");
        }
        assert_eq!(
            name("a\u{A0}b").as_deref(),
            Ok("a b"),
            "no-break space folds"
        );
        assert_eq!(
            name("a  b"),
            Err(Invalid::Invisible("name")),
            "double space"
        );
        // a Cyrillic А in a Latin name; Greek omicron in a Latin name
        assert_eq!(name("\u{410}lice"), Err(Invalid::MixedScript("name")));
        assert_eq!(name("b\u{3BF}b"), Err(Invalid::MixedScript("name")));
        assert_eq!(
            name("a\u{301}\u{302}\u{303}\u{304}"),
            Err(Invalid::StackedMarks("name"))
        );
        // real names in one script, or the mixes languages write
        for s in [
            "Иван Петров",
            "张三",
            "山田 太郎",
            "田中タロウ",
            "김철수",
            "Ελένη",
            "李雷 Li Lei",
            "user_42",
            "O'Brien-Smith",
        ] {
            assert!(name(s).is_ok(), "{s:?}: {:?}", name(s));
        }
    }
}
