//! Exactly-once, in-order delivery per conversation, whatever order pushes
//! arrive in.
//!
//! A session remembers, per conversation, the last sequence number it has
//! delivered. A push at or below it is a duplicate (the login's offline page
//! already carried it) and is dropped; the next number is delivered; a push
//! further ahead means something in between has not arrived (concurrent
//! senders, another node, a dropped publish), so the gap is first filled from
//! the store. The session's own messages also take sequence numbers; it
//! records them so that they do not look like gaps.
//!
//! What is *stored* as the user's position depends on the client. A classic
//! client never says what it got, so a message counts once it has been
//! written to its socket. A client that declared acknowledgements says how
//! far it has got per conversation; only that is stored, so whatever was
//! written but never acknowledged (lost with a broken connection, say) is
//! delivered again to the next session, and the client drops what it
//! already had.
//!
//! The original client cannot acknowledge, and crashes on frames it cannot
//! parse, so for its sessions what was written is acknowledged on its
//! behalf, later ([`Unconfirmed`]): once the client's TCP has acknowledged
//! the bytes and the connection stayed open a grace period after the write.

use std::collections::{BTreeSet, HashMap, VecDeque};
use std::time::{Duration, Instant};

use crate::model::{ChatMessage, Conversation, Seq};
use crate::store::Reader;

/// How a session's delivered positions become positions to store.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reads {
    /// Once written to the connection: a client that cannot acknowledge,
    /// on a transport that delivers whole messages (WebSocket, TLS, a
    /// client of ours that declared no `acks`).
    Written,
    /// On the client's acknowledgements (it declared `acks`).
    Acknowledged,
    /// Written, then confirmed by time and the client's TCP
    /// ([`Unconfirmed`]): the original client.
    Confirmed,
}

/// One session's delivery, the state machine between the store, live
/// pushes and the client: positions per conversation ([`Cursors`]), whether
/// stored messages wait for it (the backlog, read a page at a time),
/// whether the next page waits for the client to acknowledge the last,
/// whether live pushes were dropped for it (lagging), and when positions
/// were last handed to the store.
///
/// One per session, never per user: a user with several sessions (devices)
/// has one each, each with its own positions and pages.
#[derive(Debug)]
pub struct DeliveryState {
    cursors: Cursors,
    reads: Reads,
    /// More undelivered messages may wait in the store than the last page
    /// held.
    backlog: bool,
    /// A page went out to a client whose positions move on
    /// acknowledgements: the next page waits for them (the store, still at
    /// the old positions, would offer the same page again).
    awaiting_ack: bool,
    /// When positions were last handed to the store.
    last_flush: Instant,
}

impl DeliveryState {
    /// A session's delivery, before its stored positions are known.
    pub fn new(reads: Reads, now: Instant) -> Self {
        DeliveryState {
            cursors: Cursors::for_reads(reads, []),
            reads,
            backlog: false,
            awaiting_ack: false,
            last_flush: now,
        }
    }

    /// Starts from the positions stored for the user.
    pub fn load(&mut self, positions: impl IntoIterator<Item = (Conversation, Seq)>) {
        self.cursors = Cursors::for_reads(self.reads, positions);
    }

    pub fn reads(&self) -> Reads {
        self.reads
    }

    /// A page of stored messages went out (the login's, or a backlog
    /// page): they are delivered. Only an empty page says that nothing is
    /// left; after a full one a client that acknowledges must do so before
    /// the next.
    pub fn page_sent(&mut self, page: &[ChatMessage]) {
        for m in page {
            self.cursors.delivered(m.conv, m.seq);
        }
        self.backlog = !page.is_empty();
        self.awaiting_ack = self.backlog && self.reads != Reads::Written;
    }

    /// Whether the next page of stored messages should be read now.
    pub fn wants_page(&self) -> bool {
        self.backlog && !self.awaiting_ack
    }

    /// Starts reading a page: returns every position this session moved,
    /// to be stored before the page is read (a save queued earlier may
    /// still be in flight; storing them all again, behind it, waits it out,
    /// so the page never starts from stale positions).
    pub fn begin_page(&mut self) -> Vec<(Conversation, Seq)> {
        self.backlog = false;
        self.cursors.take_dirty();
        self.cursors.advanced()
    }

    /// Live delivery may have missed something: read from the store.
    pub fn resync(&mut self) {
        self.backlog = true;
    }

    /// The client has (or, for the original client, is taken to have)
    /// everything up to each position; the next page may go.
    pub fn acknowledge(&mut self, positions: impl IntoIterator<Item = (Conversation, Seq)>) {
        for (conv, seq) in positions {
            self.cursors.ack(conv, seq);
        }
        self.awaiting_ack = false;
    }

    /// Classifies a message of `conv` numbered `seq`, sent by someone else.
    pub fn classify(&mut self, conv: Conversation, seq: Seq) -> Incoming {
        self.cursors.classify(conv, seq)
    }

    /// Marks `seq` of `conv` (and everything before it) delivered.
    pub fn delivered(&mut self, conv: Conversation, seq: Seq) {
        self.cursors.delivered(conv, seq);
    }

    /// The session itself sent `seq` in `conv`.
    pub fn record_own(&mut self, conv: Conversation, seq: Seq) {
        self.cursors.record_own(conv, seq);
    }

    /// Whether the session takes part in `conv` as far as it knows.
    pub fn knows(&self, conv: Conversation) -> bool {
        self.cursors.knows(conv)
    }

    /// The session joined (or created) a group whose conversation is at
    /// `seq`.
    pub fn join(&mut self, conv: Conversation, seq: Seq) {
        self.cursors.start(conv, seq);
    }

    /// The session left a group: its messages are no longer ours.
    pub fn leave(&mut self, conv: Conversation) {
        self.cursors.forget(conv);
    }

    /// How many groups the session takes part in.
    pub fn groups(&self) -> usize {
        self.cursors.groups()
    }

    /// Positions delivered but not acknowledged yet.
    pub fn unacknowledged(&self) -> Vec<(Conversation, Seq)> {
        self.cursors.unacknowledged()
    }

    /// When positions not yet stored are due to be, storing at most once
    /// per `interval`.
    pub fn flush_due(&self, interval: Duration) -> Option<Instant> {
        self.cursors.has_dirty().then(|| self.last_flush + interval)
    }

    /// Takes the positions to store now.
    pub fn take_flush(&mut self, now: Instant) -> Vec<(Conversation, Seq)> {
        self.last_flush = now;
        self.cursors.take_dirty()
    }

    /// Goes back to the positions last handed to the store: a write failed,
    /// so what was marked delivered since may not have reached the client.
    pub fn forget_unsaved(&mut self) {
        self.cursors.forget_unsaved();
    }

    /// Every position this session moved, to store when it ends.
    pub fn advanced(&self) -> Vec<(Conversation, Seq)> {
        self.cursors.advanced()
    }
}

/// What to do with an incoming message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Incoming {
    /// Already delivered (or not ours to deliver): drop it.
    Duplicate,
    /// The next one: deliver it.
    InOrder,
    /// Messages after `after` and before this one are missing: fetch them
    /// from the store, deliver them, then this one.
    Gap { after: Seq },
}

#[derive(Debug, Default, Clone)]
struct ConvCursor {
    delivered: Seq,
    /// What the client acknowledged (with acknowledgements on; unused
    /// without).
    acked: Seq,
    /// The position last handed to the store (a failed write goes back here).
    saved: Seq,
    /// The position when the session started (nothing to store below it).
    loaded: Seq,
    /// Our own messages above `delivered` (we never deliver them to
    /// ourselves, but they occupy sequence numbers).
    own: BTreeSet<Seq>,
}

impl ConvCursor {
    fn at(seq: Seq) -> Self {
        ConvCursor {
            delivered: seq,
            acked: seq,
            saved: seq,
            loaded: seq,
            own: BTreeSet::new(),
        }
    }
}

impl ConvCursor {
    fn absorb_own(&mut self) {
        while self.own.remove(&self.delivered.next()) {
            self.delivered = self.delivered.next();
        }
    }
}

/// One session's delivery positions.
#[derive(Debug, Default)]
struct Cursors {
    convs: HashMap<Conversation, ConvCursor>,
    /// Positions to store that are not stored yet.
    dirty: HashMap<Conversation, Seq>,
    /// Stored positions move on the client's acknowledgements.
    acks: bool,
}

impl Cursors {
    /// Starts from the positions stored for the user.
    fn load(positions: impl IntoIterator<Item = (Conversation, Seq)>) -> Self {
        Cursors {
            convs: positions
                .into_iter()
                .map(|(c, s)| (c, ConvCursor::at(s)))
                .collect(),
            dirty: HashMap::new(),
            acks: false,
        }
    }

    /// As [`load`](Self::load), for a client that acknowledges: positions
    /// to store come from [`ack`](Self::ack) only.
    fn load_acknowledged(positions: impl IntoIterator<Item = (Conversation, Seq)>) -> Self {
        Cursors {
            acks: true,
            ..Self::load(positions)
        }
    }

    /// Loads `positions` for a session whose positions move as `reads`
    /// says (confirmed reads come in as acknowledgements).
    fn for_reads(reads: Reads, positions: impl IntoIterator<Item = (Conversation, Seq)>) -> Self {
        match reads {
            Reads::Written => Self::load(positions),
            Reads::Acknowledged | Reads::Confirmed => Self::load_acknowledged(positions),
        }
    }

    /// Whether stored positions follow acknowledgements.
    #[cfg(test)]
    fn acknowledged(&self) -> bool {
        self.acks
    }

    /// The session joined (or created) a group whose conversation is at `seq`.
    fn start(&mut self, conv: Conversation, seq: Seq) {
        self.convs.insert(conv, ConvCursor::at(seq));
    }

    /// The session left a group: its messages are no longer ours.
    fn forget(&mut self, conv: Conversation) {
        self.convs.remove(&conv);
        self.dirty.remove(&conv);
    }

    /// How many groups the session takes part in.
    fn groups(&self) -> usize {
        self.convs
            .keys()
            .filter(|c| matches!(c, Conversation::Group(_)))
            .count()
    }

    /// Whether the session takes part in `conv` as far as it knows.
    fn knows(&self, conv: Conversation) -> bool {
        self.convs.contains_key(&conv)
    }

    /// The session itself sent `seq` in `conv`.
    fn record_own(&mut self, conv: Conversation, seq: Seq) {
        let c = match (self.convs.get_mut(&conv), conv) {
            (Some(c), _) => c,
            (None, Conversation::Direct { .. }) => self.convs.entry(conv).or_default(),
            // Groups are known from login, join or creation; never start
            // one at 0 here (that would offer its whole history later).
            (None, Conversation::Group(_)) => return,
        };
        if seq > c.delivered {
            c.own.insert(seq);
            c.absorb_own();
        }
    }

    /// Classifies a message of `conv` numbered `seq`, sent by someone else.
    fn classify(&mut self, conv: Conversation, seq: Seq) -> Incoming {
        let c = match (self.convs.get_mut(&conv), conv) {
            (Some(c), _) => c,
            // A direct conversation that started after login begins at 0.
            (None, Conversation::Direct { .. }) => self.convs.entry(conv).or_default(),
            // A group we are not (or no longer) in, as far as this session
            // knows: a stale push.
            (None, Conversation::Group(_)) => return Incoming::Duplicate,
        };
        c.absorb_own();
        if seq <= c.delivered {
            return Incoming::Duplicate;
        }
        if seq == c.delivered.next() {
            return Incoming::InOrder;
        }
        if (c.delivered.0 + 1..seq.0).all(|s| c.own.contains(&Seq(s))) {
            // Only our own messages lie between: no gap.
            return Incoming::InOrder;
        }
        Incoming::Gap { after: c.delivered }
    }

    /// Marks `seq` of `conv` (and everything before it) delivered.
    fn delivered(&mut self, conv: Conversation, seq: Seq) {
        let c = self.convs.entry(conv).or_default();
        if seq > c.delivered {
            c.delivered = seq;
            c.own = c.own.split_off(&seq.next());
            c.absorb_own();
            if !self.acks {
                self.dirty.insert(conv, c.delivered);
            }
        }
    }

    /// The client has everything of `conv` up to `seq`. Never beyond what
    /// was delivered (a client cannot vouch for what it was never sent)
    /// and never back; unknown conversations are ignored.
    fn ack(&mut self, conv: Conversation, seq: Seq) {
        if !self.acks {
            return;
        }
        let Some(c) = self.convs.get_mut(&conv) else {
            return;
        };
        c.absorb_own();
        let seq = seq.min(c.delivered);
        if seq > c.acked {
            c.acked = seq;
            self.dirty.insert(conv, seq);
        }
    }

    /// Positions delivered but not acknowledged yet, per conversation.
    fn unacknowledged(&self) -> Vec<(Conversation, Seq)> {
        self.convs
            .iter()
            .filter(|(_, c)| c.delivered > c.acked)
            .map(|(conv, c)| (*conv, c.delivered))
            .collect()
    }

    /// Whether some delivered positions are not stored yet.
    fn has_dirty(&self) -> bool {
        !self.dirty.is_empty()
    }

    /// Takes the positions to store.
    fn take_dirty(&mut self) -> Vec<(Conversation, Seq)> {
        let dirty: Vec<_> = self.dirty.drain().collect();
        for (conv, seq) in &dirty {
            if let Some(c) = self.convs.get_mut(conv) {
                c.saved = c.saved.max(*seq);
            }
        }
        dirty
    }

    /// Goes back to the positions last handed to the store: what was
    /// marked delivered since may not have reached the client.
    fn forget_unsaved(&mut self) {
        if self.acks {
            // Only acknowledged positions are ever stored: nothing to undo.
            return;
        }
        self.dirty.clear();
        for c in self.convs.values_mut() {
            c.delivered = c.saved;
            c.own.clear();
        }
    }

    /// Every position this session moved forward, to store when it ends
    /// (again, if already handed over: the store keeps the maximum, so this
    /// also waits out writes still in flight).
    fn advanced(&self) -> Vec<(Conversation, Seq)> {
        self.convs
            .iter()
            .map(|(conv, c)| {
                (
                    *conv,
                    if self.acks { c.acked } else { c.delivered },
                    c.loaded,
                )
            })
            .filter(|(_, to_store, loaded)| to_store > loaded)
            .map(|(conv, to_store, _)| (conv, to_store))
            .collect()
    }
}

/// Writes within this time of an entry's first write join that entry, so
/// a busy session keeps a few entries, not one per frame.
const MERGE_WINDOW: Duration = Duration::from_millis(100);
/// How soon an entry whose bytes the client's TCP has not acknowledged yet
/// is looked at again.
const RECHECK: Duration = Duration::from_millis(250);

/// Deliveries written to a client that cannot acknowledge them, waiting to
/// be counted as read: each once the connection has stayed open `grace`
/// after its write and the client's TCP has acknowledged every byte up to
/// it. A client that crashes on a frame closes its connection within
/// milliseconds, and a network that drops the connection leaves bytes
/// unacknowledged, so neither counts what it lost as read; the session
/// stores only what was confirmed, and the rest is delivered again.
///
/// Entries name their user: a confirmation that comes due after a logout
/// still counts, as the connection that carried it is still open.
#[derive(Debug, Default)]
pub struct Unconfirmed {
    entries: VecDeque<Written>,
}

#[derive(Debug)]
struct Written {
    user: Reader,
    first: Instant,
    due: Instant,
    /// Bytes written on the connection up to and including this write.
    bytes: u64,
    positions: Vec<(Conversation, Seq)>,
}

impl Unconfirmed {
    /// `user`'s delivered positions are `positions` after a write that
    /// brought the connection's bytes written to `bytes`.
    pub fn written(
        &mut self,
        user: &Reader,
        positions: Vec<(Conversation, Seq)>,
        bytes: u64,
        now: Instant,
        grace: Duration,
    ) {
        if positions.is_empty() {
            return;
        }
        if let Some(last) = self.entries.back_mut()
            && last.user == *user
            && now.saturating_duration_since(last.first) < MERGE_WINDOW
        {
            // Later positions cover earlier ones of the same session.
            for (conv, seq) in positions {
                match last.positions.iter_mut().find(|(c, _)| *c == conv) {
                    Some(p) => p.1 = p.1.max(seq),
                    None => last.positions.push((conv, seq)),
                }
            }
            last.bytes = bytes;
            last.due = now + grace;
            return;
        }
        self.entries.push_back(Written {
            user: user.clone(),
            first: now,
            due: now + grace,
            bytes,
            positions,
        });
    }

    /// When the next entry may be confirmed.
    pub fn next_due(&self) -> Option<Instant> {
        self.entries.front().map(|e| e.due)
    }

    /// Takes the entries due by `now` whose bytes the client's TCP has
    /// acknowledged (`acked`: bytes written less those still unacknowledged;
    /// `None` when that cannot be known, and then the grace alone counts).
    pub fn confirm(
        &mut self,
        acked: Option<u64>,
        now: Instant,
    ) -> Vec<(Reader, Vec<(Conversation, Seq)>)> {
        let mut out = Vec::new();
        while let Some(first) = self.entries.front_mut() {
            if first.due > now {
                break;
            }
            if acked.is_some_and(|a| a < first.bytes) {
                // Later entries wrote later bytes: none can be ready either.
                first.due = now + RECHECK;
                break;
            }
            if let Some(e) = self.entries.pop_front() {
                out.push((e.user, e.positions));
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{Device, GroupId, Seq, UserId};

    fn r(id: i64) -> Reader {
        Reader::new(UserId(id), Device::classic())
    }

    const G: Conversation = Conversation::Group(GroupId(1));

    fn msg(conv: Conversation, seq: Seq) -> ChatMessage {
        ChatMessage {
            conv,
            seq,
            sender: UserId(9),
            sender_name: "x".into(),
            body: String::new(),
            ts_ms: 0,
            kind: Default::default(),
        }
    }

    #[test]
    fn pages_go_one_at_a_time_and_wait_for_acknowledgements() {
        let t0 = Instant::now();
        let mut d = DeliveryState::new(Reads::Acknowledged, t0);
        d.load([(G, Seq(2))]);
        d.page_sent(&[msg(G, Seq(3)), msg(G, Seq(4))]);
        assert!(
            !d.wants_page(),
            "the next page waits for the acknowledgement"
        );
        assert!(
            d.flush_due(Duration::from_millis(50)).is_none(),
            "written is not acknowledged"
        );
        d.acknowledge([(G, Seq(4))]);
        assert!(d.wants_page());
        assert_eq!(
            d.flush_due(Duration::from_millis(50)),
            Some(t0 + Duration::from_millis(50))
        );
        assert_eq!(
            d.begin_page(),
            vec![(G, Seq(4))],
            "stored before the next page is read"
        );
        assert!(!d.wants_page());
        d.page_sent(&[]);
        assert!(!d.wants_page(), "an empty page: nothing left");
        // pushes dropped on a full queue
        d.resync();
        assert!(d.wants_page());
    }

    #[test]
    fn written_reads_page_on_without_waiting() {
        let t0 = Instant::now();
        let mut d = DeliveryState::new(Reads::Written, t0);
        d.load([(G, Seq(0))]);
        d.page_sent(&[msg(G, Seq(1))]);
        assert!(d.wants_page(), "positions moved on the write");
        assert_eq!(d.take_flush(t0), vec![(G, Seq(1))]);
        let mut c = DeliveryState::new(Reads::Confirmed, t0);
        c.load([(G, Seq(0))]);
        c.page_sent(&[msg(G, Seq(1))]);
        assert!(
            !c.wants_page(),
            "the original client's reads are confirmed first"
        );
        assert_eq!(c.unacknowledged(), vec![(G, Seq(1))]);
        c.acknowledge(c.unacknowledged());
        assert!(c.wants_page());
    }

    #[test]
    fn written_deliveries_are_confirmed_after_the_grace_once_tcp_has_them() {
        let grace = Duration::from_secs(2);
        let t0 = Instant::now();
        let mut u = Unconfirmed::default();
        let d = Conversation::direct(UserId(1), UserId(2));
        u.written(&r(7), vec![(G, Seq(3))], 100, t0, grace);
        // joins the first entry: within the merge window
        u.written(
            &r(7),
            vec![(G, Seq(4)), (d, Seq(1))],
            150,
            t0 + Duration::from_millis(50),
            grace,
        );
        u.written(
            &r(7),
            vec![(G, Seq(5))],
            200,
            t0 + Duration::from_millis(500),
            grace,
        );
        u.written(
            &r(7),
            Vec::new(),
            300,
            t0 + Duration::from_millis(600),
            grace,
        );
        assert_eq!(u.next_due(), Some(t0 + Duration::from_millis(2050)));
        assert!(u.confirm(Some(1000), t0 + grace).is_empty(), "not yet");
        // due, but the client's TCP has only the first 120 bytes
        let late = t0 + Duration::from_secs(3);
        assert!(u.confirm(Some(120), late).is_empty());
        assert_eq!(u.next_due(), Some(late + RECHECK));
        let got = u.confirm(Some(150), late + RECHECK);
        assert_eq!(got, vec![(r(7), vec![(G, Seq(4)), (d, Seq(1))])]);
        let got = u.confirm(None, late + 2 * RECHECK);
        assert_eq!(
            got,
            vec![(r(7), vec![(G, Seq(5))])],
            "no TCP figure: grace alone"
        );
        assert_eq!(u.next_due(), None);
        // another user on the same connection (after a logout and login)
        u.written(&r(7), vec![(G, Seq(6))], 400, late, grace);
        u.written(
            &r(8),
            vec![(d, Seq(9))],
            450,
            late + Duration::from_millis(10),
            grace,
        );
        let got = u.confirm(Some(450), late + grace + Duration::from_millis(10));
        assert_eq!(
            got,
            vec![(r(7), vec![(G, Seq(6))]), (r(8), vec![(d, Seq(9))])]
        );
    }

    #[test]
    fn unacknowledged_positions_are_what_was_delivered_beyond_the_acks() {
        let d = Conversation::direct(UserId(1), UserId(2));
        let mut c = Cursors::load_acknowledged([(G, Seq(5)), (d, Seq(0))]);
        assert!(c.unacknowledged().is_empty());
        c.delivered(G, Seq(7));
        assert_eq!(c.unacknowledged(), vec![(G, Seq(7))]);
        c.ack(G, Seq(7));
        assert!(c.unacknowledged().is_empty());
    }

    #[test]
    fn in_order_duplicates_and_gaps() {
        let mut c = Cursors::load([(G, Seq(3))]);
        assert_eq!(c.classify(G, Seq(3)), Incoming::Duplicate);
        assert_eq!(c.classify(G, Seq(4)), Incoming::InOrder);
        c.delivered(G, Seq(4));
        assert_eq!(c.classify(G, Seq(6)), Incoming::Gap { after: Seq(4) });
        c.delivered(G, Seq(6)); // after filling 5 and delivering 6
        assert_eq!(
            c.classify(G, Seq(5)),
            Incoming::Duplicate,
            "the late original of a filled gap"
        );
        assert_eq!(c.take_dirty(), vec![(G, Seq(6))]);
        assert!(!c.has_dirty());
    }

    #[test]
    fn own_messages_are_not_gaps() {
        let mut c = Cursors::load([(G, Seq(0))]);
        c.record_own(G, Seq(1));
        assert_eq!(c.classify(G, Seq(2)), Incoming::InOrder);
        c.delivered(G, Seq(2));
        // someone else's 3 is still in flight when our 4 is stored
        c.record_own(G, Seq(4));
        assert_eq!(c.classify(G, Seq(5)), Incoming::Gap { after: Seq(2) });
        assert_eq!(c.classify(G, Seq(3)), Incoming::InOrder);
        c.delivered(G, Seq(3));
        assert_eq!(c.classify(G, Seq(5)), Incoming::InOrder, "4 is ours");
        c.delivered(G, Seq(5));
        assert_eq!(c.classify(G, Seq(4)), Incoming::Duplicate);
        // own messages alone do not make anything dirty
        assert_eq!(c.take_dirty().len(), 1);
    }

    #[test]
    fn new_direct_conversations_start_at_zero_unknown_groups_are_stale() {
        let mut c = Cursors::default();
        let d = Conversation::direct(UserId(1), UserId(2));
        assert_eq!(c.classify(d, Seq(1)), Incoming::InOrder);
        assert_eq!(
            c.classify(Conversation::direct(UserId(1), UserId(3)), Seq(2)),
            Incoming::Gap { after: Seq(0) }
        );
        assert_eq!(c.classify(G, Seq(1)), Incoming::Duplicate);
        c.start(G, Seq(10));
        assert!(c.knows(G));
        assert_eq!(
            c.classify(G, Seq(10)),
            Incoming::Duplicate,
            "joined after 10"
        );
        assert_eq!(c.classify(G, Seq(11)), Incoming::InOrder);
        c.forget(G);
        assert_eq!(c.classify(G, Seq(12)), Incoming::Duplicate);
    }

    #[test]
    fn a_failed_write_goes_back_to_the_saved_position() {
        let mut c = Cursors::load([(G, Seq(5))]);
        c.delivered(G, Seq(6));
        assert_eq!(c.take_dirty(), vec![(G, Seq(6))]);
        c.delivered(G, Seq(7));
        c.forget_unsaved();
        assert!(!c.has_dirty());
        assert_eq!(
            c.classify(G, Seq(7)),
            Incoming::InOrder,
            "7 is offered again"
        );
        assert_eq!(c.advanced(), vec![(G, Seq(6))]);
        let fresh = Cursors::load([(G, Seq(5))]);
        assert!(fresh.advanced().is_empty());
    }

    #[test]
    fn with_acknowledgements_only_acknowledged_positions_are_stored() {
        let d = Conversation::direct(UserId(1), UserId(2));
        let mut c = Cursors::load_acknowledged([(G, Seq(5)), (d, Seq(0))]);
        assert!(c.acknowledged());
        c.delivered(G, Seq(6));
        c.delivered(G, Seq(7));
        assert!(!c.has_dirty(), "written is not acknowledged");
        assert_eq!(
            c.classify(G, Seq(7)),
            Incoming::Duplicate,
            "but never sent twice"
        );
        c.ack(G, Seq(6));
        assert_eq!(c.take_dirty(), vec![(G, Seq(6))]);
        c.ack(G, Seq(6));
        c.ack(G, Seq(4));
        assert!(!c.has_dirty(), "acknowledgements never go back");
        c.ack(G, Seq(99));
        assert_eq!(
            c.take_dirty(),
            vec![(G, Seq(7))],
            "nor past what was delivered"
        );
        // our own messages count as had
        c.record_own(d, Seq(1));
        c.ack(d, Seq(1));
        assert_eq!(c.take_dirty(), vec![(d, Seq(1))]);
        c.ack(Conversation::Group(GroupId(9)), Seq(3));
        assert!(!c.has_dirty(), "unknown conversations are ignored");
        c.delivered(G, Seq(8));
        c.forget_unsaved();
        assert_eq!(c.classify(G, Seq(8)), Incoming::Duplicate);
        let mut advanced = c.advanced();
        advanced.sort();
        assert_eq!(
            advanced,
            vec![(d, Seq(1)), (G, Seq(7))],
            "the end stores acknowledged ones"
        );
    }

    #[test]
    fn without_acknowledgements_an_ack_changes_nothing() {
        let mut c = Cursors::load([(G, Seq(5))]);
        c.delivered(G, Seq(6));
        c.ack(G, Seq(3));
        assert_eq!(c.take_dirty(), vec![(G, Seq(6))]);
        assert_eq!(c.advanced(), vec![(G, Seq(6))]);
    }

    #[test]
    fn own_messages_never_start_an_unknown_group() {
        let mut c = Cursors::default();
        c.record_own(G, Seq(3));
        assert!(!c.knows(G));
        assert_eq!(c.classify(G, Seq(4)), Incoming::Duplicate);
    }
}
