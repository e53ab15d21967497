// The web client: the chat protocol (docs/protocol.md) over a WebSocket to
// /ws, one JSON frame per message. No build step and no dependencies: the
// server serves this file as it is.
//
// What it keeps a user from losing:
// - it acknowledges what it has shown (LOGIN/RESUME with "acks": true), so
//   what never reached the page comes again after a reconnect;
// - every message it sends carries a client message id (cmid); one resent
//   after a network loss is stored once, and the reply says where;
// - the resume token lives in sessionStorage, so a reload or a dropped
//   network resumes the session without the password;
// - each tab is a device of its own (docs/protocol.md, "Devices"): a name
//   made of this browser's id (localStorage) and the tab's (sessionStorage,
//   so a reload stays the same device), so two tabs are online together and
//   each gets everything, including what the other sent.
'use strict';

const $ = (id) => document.getElementById(id);
const TOKEN_KEY = 'chat.token';
const BROWSER_KEY = 'chat.browser';
const TAB_KEY = 'chat.tab';
const RECEIPTS_KEY = 'chat.receipts';
const TYPING_EVERY_MS = 3000;
const TYPING_SHOWN_MS = 5000;
const HISTORY_PAGE = 50;
const REQUEST_TIMEOUT_MS = 10000;
const PING_EVERY_MS = 15000;

const state = {
  ws: null,
  ready: false,       // logged in on the current socket
  reqid: 0,
  pending: new Map(), // reqid -> {resolve, reject, timer}
  me: null,           // {id, name}
  friends: new Map(), // id -> {id, name, state, stranger?}
  groups: new Map(),  // id -> {id, groupname, groupdesc, users: [...], private?, invites?}
  requests: new Map(), // id -> {id, name}: who asks to be our friend
  outgoing: new Map(), // id -> {id, name}: whom we asked, waiting
  invitations: new Map(), // groupid -> {groupid, groupname, by, byname}: held invitations
  membersOpen: false, // the members panel of the open group is shown
  infoTimers: new Map(), // groupid -> timer of a GROUP_INFO due
  convs: new Map(),   // 'u:ID' | 'g:ID' -> conversation
  current: null,
  outbox: new Map(),  // cmid -> {cmid, key, text, state, error?}
  ackDue: new Map(),  // key -> highest seq to acknowledge
  ackTimer: null,
  pingTimer: null,
  backoff: 500,
  replaced: false,
  abandonedResumes: 0, // resumes given up on unanswered: each may land late
  ownReplacedAt: 0,   // last replacement by our own token not accounted for
  away: false,        // the page is hidden in the back/forward cache
};

// ---- connection -----------------------------------------------------------

function setStatus(kind, text) {
  const el = $('status');
  el.dataset.state = kind;
  el.textContent = text || kind;
}

function connect() {
  const scheme = location.protocol === 'https:' ? 'wss://' : 'ws://';
  const ws = new WebSocket(scheme + location.host + '/ws');
  state.ws = ws;
  setStatus('connecting', 'connecting…');
  ws.onopen = () => {
    state.backoff = 500;
    startPing();
    const token = sessionStorage.getItem(TOKEN_KEY);
    if (token) {
      resume(token);
    } else {
      setStatus('connected', 'not logged in');
      showAuth();
    }
  };
  ws.onmessage = (e) => {
    let frame;
    try {
      frame = JSON.parse(e.data);
    } catch (_) {
      return;
    }
    onFrame(frame);
  };
  ws.onclose = () => {
    if (state.ws !== ws) return;
    state.ready = false;
    stopPing();
    for (const [, p] of state.pending) {
      clearTimeout(p.timer);
      p.reject(new Error('disconnected'));
    }
    state.pending.clear();
    if (state.replaced) {
      setStatus('offline', 'logged in elsewhere; reload to continue here');
      return;
    }
    if (state.away) return;
    setStatus('offline', 'offline, reconnecting…');
    const wait = state.backoff * (0.75 + Math.random() / 2);
    state.backoff = Math.min(state.backoff * 2, 10000);
    setTimeout(connect, wait);
  };
}

function send(frame) {
  if (state.ws && state.ws.readyState === WebSocket.OPEN) {
    state.ws.send(JSON.stringify(frame));
    return true;
  }
  return false;
}

/** Sends a request and resolves with its reply (matched by reqid). */
function request(frame, timeout = REQUEST_TIMEOUT_MS) {
  return new Promise((resolve, reject) => {
    const reqid = ++state.reqid;
    frame.reqid = reqid;
    if (!send(frame)) {
      reject(new Error('disconnected'));
      return;
    }
    const timer = setTimeout(() => {
      state.pending.delete(reqid);
      reject(new Error('timeout'));
    }, timeout);
    state.pending.set(reqid, { resolve, reject, timer });
  });
}

function startPing() {
  stopPing();
  state.pingTimer = setInterval(() => {
    // An unanswered ping means the network is gone: reconnect.
    request({ msgid: 16 }).catch((e) => {
      if (e.message === 'timeout' && state.ws) state.ws.close();
    });
  }, PING_EVERY_MS);
}

function stopPing() {
  if (state.pingTimer) clearInterval(state.pingTimer);
  state.pingTimer = null;
}

function onFrame(f) {
  if (f.reqid !== undefined && state.pending.has(f.reqid)) {
    const p = state.pending.get(f.reqid);
    state.pending.delete(f.reqid);
    clearTimeout(p.timer);
    p.resolve(f);
    return;
  }
  switch (f.msgid) {
    case 6:
    case 10:
      receive(f, true);
      render();
      break;
    case 19:
      presence(f);
      break;
    case 22:
      membership(f);
      break;
    case 23:
      typingNotice(f);
      break;
    case 24:
      readNotice(f);
      break;
    case 31:
      friendRequested(f);
      break;
    case 32:
      friendAnswered(f);
      break;
    case 33:
      invited(f);
      break;
    case 34:
    case 40:
      // Someone asks to join (to the owner and admins), or the group
      // changed: its members, roles or name.
      if (state.groups.has(f.groupid)) refreshGroupInfoSoon(f.groupid);
      break;
    case 100:
      if (f.errno === 63) {
        // Logged out from another device: the token is dead.
        state.replaced = true;
        sessionStorage.removeItem(TOKEN_KEY);
        state.ready = false;
        showAuth(f.errmsg);
      }
      if (f.errno === 54) {
        // "resumed": replaced by a resume of this tab's own token, one it
        // gave up on that a stalled server carried out late: reconnect and
        // resume, once for each it gave up on and once a minute beyond
        // that. More is another live copy of this session: stay out
        // rather than fight it.
        let ownLate = false;
        if (f.resumed === true && state.abandonedResumes > 0) {
          state.abandonedResumes -= 1;
          ownLate = true;
        } else if (f.resumed === true) {
          ownLate = Date.now() - state.ownReplacedAt > 60000;
          state.ownReplacedAt = Date.now();
        }
        if (!ownLate) state.replaced = true;
      }
      if (f.errmsg) setStatus(state.ready ? 'online' : 'offline', f.errmsg);
      break;
    default:
      break;
  }
}

// ---- session --------------------------------------------------------------

function randomId(bytes) {
  const b = new Uint8Array(bytes);
  crypto.getRandomValues(b);
  return [...b].map((x) => x.toString(16).padStart(2, '0')).join('');
}

/** This tab's device name: web-BROWSER-TAB (visible ASCII, under 64). */
function deviceName() {
  let browser = localStorage.getItem(BROWSER_KEY);
  if (!browser) {
    browser = randomId(6);
    localStorage.setItem(BROWSER_KEY, browser);
  }
  let tab = sessionStorage.getItem(TAB_KEY);
  if (!tab) {
    tab = randomId(3);
    sessionStorage.setItem(TAB_KEY, tab);
  }
  return `web-${browser}-${tab}`;
}

async function login(id, password) {
  const r = await request({ msgid: 1, id, password, acks: true, device: deviceName() });
  if (r.errno !== 0) throw new Error(r.errmsg || 'login failed');
  if (r.token) sessionStorage.setItem(TOKEN_KEY, r.token);
  startSession(r);
}

async function resume(token) {
  let r;
  try {
    r = await request({ msgid: 17, token, acks: true, device: deviceName() });
  } catch (_) {
    // Unanswered: the server may still carry it out (see errno 54).
    state.abandonedResumes += 1;
    return; // the socket dropped; the next one tries again
  }
  if (r.errno !== 0) {
    sessionStorage.removeItem(TOKEN_KEY);
    setStatus('connected', 'not logged in');
    showAuth(r.errmsg);
    return;
  }
  startSession(r);
}

function decodeList(list) {
  return (list || []).map((s) => (typeof s === 'string' ? JSON.parse(s) : s));
}

function startSession(r) {
  if (state.me && state.me.id !== r.id) resetData();
  state.me = { id: r.id, name: r.name };
  state.devices = r.devices || [];
  state.blocked = new Set(r.blocked || []);
  state.ready = true;
  state.replaced = false;
  for (const f of decodeList(r.friends)) state.friends.set(f.id, f);
  // The reply lists every group the user is in: one left, dissolved or
  // removed from while this tab was away goes.
  const groups = new Map();
  for (const g of decodeList(r.groups)) {
    g.users = decodeList(g.users);
    const known = state.groups.get(g.id);
    if (known && known.invites) g.invites = known.invites;
    if (known && known.private) g.private = known.private;
    groups.set(g.id, g);
  }
  const current = currentGroup();
  state.groups = groups;
  if (current && !groups.has(current.id)) forgetGroup(current.id);
  // What waits for the user's consent.
  state.requests = new Map((r.requests || []).map((u) => [u.id, { id: u.id, name: u.name }]));
  for (const id of state.requests.keys()) {
    if (state.friends.has(id) && !state.friends.get(id).stranger) state.requests.delete(id);
  }
  state.invitations = new Map();
  for (const i of r.invitations || []) {
    if (i.kind !== 'request') {
      state.invitations.set(i.groupid, { groupid: i.groupid, groupname: i.groupname, by: i.by, byname: i.byname });
    }
  }
  // Read positions and read ticks as the server keeps them (per user, so
  // what was read on another device is not unread here), then the unread
  // counts, which also count what the offline page did not carry.
  const reads = r.reads || [];
  for (const e of reads) {
    const c = conv(e.groupid ? 'g:' + e.groupid : 'u:' + e.toid);
    c.readUpTo = Math.max(c.readUpTo || 0, e.read);
    if (e.peer_read) c.peerRead = Math.max(c.peerRead || 0, e.peer_read);
  }
  for (const m of decodeList(r.offlinemsg)) receive(m, true);
  for (const e of reads) conv(e.groupid ? 'g:' + e.groupid : 'u:' + e.toid).unread = e.unread;
  $('me').textContent = `${r.name} (id ${r.id})`;
  setStatus('online', 'online');
  showApp();
  // What was being sent when the network went goes again, with its cmid:
  // if the server stored it already, it answers with the same seq.
  for (const entry of state.outbox.values()) {
    if (entry.state === 'sending') transmit(entry);
  }
  flushAcks();
  render();
  loadFriendRequests().catch(() => {});
  if (state.current && state.current[0] === 'g') refreshGroupInfo(Number(state.current.slice(2)));
}

function resetData() {
  state.friends.clear();
  state.groups.clear();
  state.requests.clear();
  state.outgoing.clear();
  state.invitations.clear();
  state.membersOpen = false;
  state.convs.clear();
  state.outbox.clear();
  state.ackDue.clear();
  state.current = null;
}

async function logout() {
  try {
    await request({ msgid: 3 });
  } catch (_) {
    // offline: the token is forgotten anyway
  }
  sessionStorage.removeItem(TOKEN_KEY);
  state.me = null;
  state.ready = false;
  resetData();
  $('me').textContent = '';
  setStatus('connected', 'not logged in');
  showAuth();
}

// ---- conversations --------------------------------------------------------

function conv(key) {
  let c = state.convs.get(key);
  if (!c) {
    c = { key, messages: new Map(), unread: 0, firstUnread: null, loaded: false, complete: false };
    state.convs.set(key, c);
  }
  return c;
}

function keyOf(m) {
  if (m.msgid === 10) return 'g:' + m.groupid;
  return 'u:' + (m.id === state.me.id ? m.toid : m.id);
}

/** A message from the server (push, offline page or history). */
function receive(m, live) {
  const key = keyOf(m);
  const c = conv(key);
  if (m.recall || m.edit) {
    // An event: it changes an earlier message, and is not shown itself.
    const target = c.messages.get(m.recall || m.edit);
    if (target && m.recall) Object.assign(target, { msg: '(this message was recalled)', recalled: true });
    if (target && m.edit && !target.recalled) Object.assign(target, { msg: m.text, edited: true });
    if (!target) c.changes = Object.assign(c.changes || {}, { [m.recall || m.edit]: m });
    c.messages.set(m.seq, Object.assign(m, { event: true }));
    if (live) queueAck(key, m.seq);
    return;
  }
  const pending = c.changes && c.changes[m.seq];
  if (pending && pending.recall) Object.assign(m, { msg: '(this message was recalled)', recalled: true });
  if (pending && pending.edit && !m.recalled) Object.assign(m, { msg: pending.text, edited: true });
  if (m.msgid === 6 && m.id !== state.me.id && !state.friends.has(m.id)) {
    state.friends.set(m.id, { id: m.id, name: m.name, state: '', stranger: true });
  }
  const fresh = !c.messages.has(m.seq);
  c.messages.set(m.seq, m);
  if (!live) return;
  if (fresh && m.id !== state.me.id && m.seq > (c.readUpTo || 0)
      && (key !== state.current || document.hidden)) {
    c.unread += 1;
    if (c.firstUnread === null) c.firstUnread = m.seq;
  }
  if (fresh && m.id !== state.me.id && key === state.current && !document.hidden) markRead(key);
  queueAck(key, m.seq);
}

/** The conversation a READ or TYPING push is about. */
function keyOfNotice(f) {
  if (f.groupid) return 'g:' + f.groupid;
  return 'u:' + (f.id === state.me.id ? f.toid : f.id);
}

/** Tells the server (and so the user's other devices, and the peer unless
 * receipts are off) that the open conversation is read to its end. */
function markRead(key) {
  const c = conv(key);
  const seqs = [...c.messages.keys()];
  if (!seqs.length) return;
  const seq = Math.max(...seqs);
  if (seq <= (c.readUpTo || 0)) return;
  c.readUpTo = seq;
  const id = Number(key.slice(2));
  const frame = key[0] === 'u' ? { msgid: 24, toid: id, seq } : { msgid: 24, groupid: id, seq };
  if (localStorage.getItem(RECEIPTS_KEY) === 'off') frame.private = true;
  request(frame).catch(() => {});
}

/** Someone read a conversation: this user on another device (no longer
 * unread here), or the peer or a member (read ticks). */
function readNotice(f) {
  const c = conv(keyOfNotice(f));
  if (f.id === state.me.id) {
    c.readUpTo = Math.max(c.readUpTo || 0, f.seq);
    let unread = 0;
    for (const m of c.messages.values()) {
      if (!m.event && m.id !== state.me.id && m.seq > c.readUpTo) unread += 1;
    }
    c.unread = unread;
    if (c.firstUnread !== null && c.firstUnread <= c.readUpTo) c.firstUnread = null;
  } else {
    c.peerRead = Math.max(c.peerRead || 0, f.seq);
    c.readBy = Object.assign(c.readBy || {}, { [f.id]: Math.max((c.readBy || {})[f.id] || 0, f.seq) });
  }
  render();
}

/** Someone is typing: shown for a few seconds. */
function typingNotice(f) {
  const key = keyOfNotice(f);
  const c = conv(key);
  c.typing = { name: f.name, until: Date.now() + TYPING_SHOWN_MS };
  render();
  setTimeout(render, TYPING_SHOWN_MS + 50);
}

/** Tells the peer the user is typing, at most every few seconds. */
function typing() {
  const key = state.current;
  if (!key || !state.ready) return;
  const now = Date.now();
  if (now - (state.lastTyping || 0) < TYPING_EVERY_MS) return;
  state.lastTyping = now;
  const id = Number(key.slice(2));
  send(key[0] === 'u' ? { msgid: 23, toid: id } : { msgid: 23, groupid: id });
}

/** Recalls or edits one of the user's messages. */
async function changeMessage(key, seq, newText) {
  const id = Number(key.slice(2));
  const where = key[0] === 'u' ? { toid: id } : { groupid: id };
  const frame = newText === null
    ? Object.assign({ msgid: 25, seq }, where)
    : Object.assign({ msgid: 26, seq, msg: newText }, where);
  const r = await request(frame).catch(() => null);
  if (!r || r.errno !== 0) {
    $('sidebar-error').textContent = (r && r.errmsg) || 'could not change the message';
    return;
  }
  const c = conv(key);
  const target = c.messages.get(seq);
  if (target && newText === null) Object.assign(target, { msg: '(this message was recalled)', recalled: true });
  if (target && newText !== null) Object.assign(target, { msg: newText, edited: true });
  render();
}

function queueAck(key, seq) {
  state.ackDue.set(key, Math.max(seq, state.ackDue.get(key) || 0));
  if (!state.ackTimer) state.ackTimer = setTimeout(flushAcks, 200);
}

function flushAcks() {
  state.ackTimer = null;
  if (!state.ready || state.ackDue.size === 0) return;
  const acks = [];
  for (const [key, seq] of state.ackDue) {
    const id = Number(key.slice(2));
    acks.push(key[0] === 'u' ? { toid: id, seq } : { groupid: id, seq });
  }
  if (send({ msgid: 18, acks })) state.ackDue.clear();
}

async function refreshFriends() {
  const list = await request({ msgid: 13 });
  if (list.errno !== 0) return;
  for (const f of decodeList(list.friends)) state.friends.set(f.id, f);
  render();
}

/** The user joined a group (on another device, by an accepted invitation
 * or an approved request) or left it (on another device, removed, or the
 * group dissolved). */
function membership(m) {
  if (m.member) {
    const invitation = state.invitations.get(m.groupid);
    state.invitations.delete(m.groupid);
    if (!state.groups.has(m.groupid)) {
      state.groups.set(m.groupid, {
        id: m.groupid, groupname: (invitation && invitation.groupname) || `group ${m.groupid}`, groupdesc: '', users: [],
      });
    }
    // Its name and members.
    refreshGroupInfo(m.groupid);
  } else {
    forgetGroup(m.groupid);
  }
  render();
}

function forgetGroup(id) {
  state.groups.delete(id);
  if (state.current === 'g:' + id) {
    state.current = null;
    state.membersOpen = false;
    $('app').classList.remove('in-conversation');
  }
}

// ---- friend requests ------------------------------------------------------

/** Who asks to be the user's friend, and whom the user asked. */
async function loadFriendRequests() {
  const r = await request({ msgid: 31 });
  if (r.errno !== 0) return;
  state.requests = new Map((r.incoming || []).map((u) => [u.id, { id: u.id, name: u.name }]));
  state.outgoing = new Map((r.outgoing || []).map((u) => [u.id, { id: u.id, name: u.name }]));
  render();
}

/** Push: someone asks to be the user's friend. */
function friendRequested(f) {
  state.requests.set(f.id, { id: f.id, name: f.name });
  render();
}

/** Push: someone the user asked answered (accepted: a friend now). */
function friendAnswered(f) {
  state.outgoing.delete(f.id);
  state.requests.delete(f.id);
  if (f.accept) {
    const known = state.friends.get(f.id);
    state.friends.set(f.id, { id: f.id, name: f.name, state: known && !known.stranger ? known.state : '' });
    $('add-friend-note').textContent = `${f.name} (${f.id}) accepted your friend request`;
    // Whether the new friend is online (a presence push says so too).
    refreshFriends().catch(() => {});
  }
  render();
}

/** Accepts or declines `id`'s friend request. */
async function answerFriend(id, accept) {
  $('sidebar-error').textContent = '';
  const asker = state.requests.get(id);
  const r = await request({ msgid: 32, userid: id, accept }).catch(() => null);
  if (!r || r.errno !== 0) {
    $('sidebar-error').textContent = (r && r.errmsg) || 'could not answer the request';
    if (r && r.errno === 30) state.requests.delete(id); // withdrawn meanwhile
    render();
    return;
  }
  state.requests.delete(id);
  if (accept) {
    const name = asker ? asker.name : `user ${id}`;
    state.friends.set(id, { id, name, state: r.state || '' });
    $('add-friend-note').textContent = `${name} (${id}) is your friend now`;
  }
  render();
}

/** Withdraws the user's request to `id`. */
async function withdrawRequest(id) {
  $('sidebar-error').textContent = '';
  const r = await request({ msgid: 12, friendid: id }).catch(() => null);
  if (!r || r.errno !== 0) {
    $('sidebar-error').textContent = (r && r.errmsg) || 'could not withdraw the request';
    return;
  }
  state.outgoing.delete(id);
  render();
}

function renderRequests() {
  reconcile($('friend-requests'), [...state.requests.values()].map((u) => {
    const li = document.createElement('li');
    li.id = `request-${u.id}`;
    li.dataset.request = String(u.id);
    const who = document.createElement('span');
    who.className = 'who';
    who.textContent = `${u.name} (${u.id}) asks to be your friend`;
    li.append(who,
      smallButton('Accept', 'accept', `Accept ${u.name}'s friend request`, () => answerFriend(u.id, true)),
      smallButton('Decline', 'decline', `Decline ${u.name}'s friend request`, () => answerFriend(u.id, false)));
    return li;
  }));
  reconcile($('outgoing-requests'), [...state.outgoing.values()].map((u) => {
    const li = document.createElement('li');
    li.id = `outgoing-${u.id}`;
    li.dataset.outgoing = String(u.id);
    const who = document.createElement('span');
    who.className = 'who';
    who.textContent = `You asked ${u.name} (${u.id})`;
    li.append(who, smallButton('Withdraw', 'withdraw', `Withdraw your request to ${u.name}`, () => withdrawRequest(u.id)));
    return li;
  }));
  $('requests-section').hidden = state.requests.size === 0 && state.outgoing.size === 0;
}

function smallButton(text, className, label, action) {
  const b = document.createElement('button');
  b.type = 'button';
  b.className = className;
  b.textContent = text;
  if (label) b.setAttribute('aria-label', label);
  b.addEventListener('click', action);
  return b;
}

// ---- group invitations and administration ---------------------------------

/** Push: the user is invited into a group. */
function invited(f) {
  state.invitations.set(f.groupid, { groupid: f.groupid, groupname: f.groupname, by: f.id, byname: f.name });
  render();
}

/** Accepts or declines the user's invitation to group `id`. */
async function answerInvitation(id, accept) {
  $('sidebar-error').textContent = '';
  const invitation = state.invitations.get(id);
  const r = await request({ msgid: 35, groupid: id, accept }).catch(() => null);
  if (!r || r.errno !== 0) {
    $('sidebar-error').textContent = (r && r.errmsg) || 'could not answer the invitation';
    if (r && r.errno === 30) state.invitations.delete(id); // gone meanwhile
    render();
    return;
  }
  state.invitations.delete(id);
  if (accept && r.joined !== false) {
    if (!state.groups.has(id)) {
      state.groups.set(id, {
        id, groupname: invitation ? invitation.groupname : `group ${id}`, groupdesc: '', users: [], private: true,
      });
    }
    refreshGroupInfo(id);
  }
  render();
}

function renderInvitations() {
  reconcile($('invitations'), [...state.invitations.values()].map((i) => {
    const li = document.createElement('li');
    li.id = `invitation-${i.groupid}`;
    li.dataset.invitation = String(i.groupid);
    const who = document.createElement('span');
    who.className = 'who';
    who.textContent = `${i.byname} (${i.by}) invites you to ${i.groupname} (#${i.groupid})`;
    li.append(who,
      smallButton('Accept', 'accept', `Join ${i.groupname}`, () => answerInvitation(i.groupid, true)),
      smallButton('Decline', 'decline', `Decline the invitation to ${i.groupname}`, () => answerInvitation(i.groupid, false)));
    return li;
  }));
  $('invitations-section').hidden = state.invitations.size === 0;
}

/** Asks for group `id`'s name, members, roles and (to its owner and
 * admins) pending invitations and requests. */
async function refreshGroupInfo(id) {
  let r;
  try {
    r = await request({ msgid: 40, groupid: id });
  } catch (_) {
    return;
  }
  if (r.errno === 30 || r.errno === 31) {
    // Not (or no longer) a member: removed, or the group is gone.
    forgetGroup(id);
    render();
    return;
  }
  if (r.errno !== 0) return;
  const g = state.groups.get(id);
  if (!g) return; // left meanwhile
  Object.assign(g, {
    groupname: r.groupname, groupdesc: r.groupdesc || '', private: !!r.private,
    users: r.users || [], invites: r.invites || [],
  });
  render();
}

/** The same, a moment later, once for a burst of pushes. */
function refreshGroupInfoSoon(id) {
  if (state.infoTimers.has(id)) return;
  state.infoTimers.set(id, setTimeout(() => {
    state.infoTimers.delete(id);
    refreshGroupInfo(id);
  }, 150));
}

function currentGroup() {
  if (!state.current || state.current[0] !== 'g') return null;
  return state.groups.get(Number(state.current.slice(2))) || null;
}

function myRole(g) {
  const me = g.users.find((u) => u.id === state.me.id);
  return me ? me.role || 'normal' : 'normal';
}

const ROLE_NAMES = { creator: 'owner', admin: 'admin', normal: 'member' };

/** Runs a group administration request; shows its failure in the panel. */
async function administer(frame, otherwise) {
  $('members-error').textContent = '';
  const r = await request(frame).catch((e) => ({ errno: -1, errmsg: e.message === 'disconnected' ? 'not connected; try again in a moment' : 'no answer from the server' }));
  if (r.errno !== 0) {
    $('members-error').textContent = r.errmsg || otherwise;
    return null;
  }
  const gone = frame.msgid === 11 || frame.msgid === 39; // left, dissolved
  if (!gone && state.groups.has(frame.groupid)) refreshGroupInfo(frame.groupid);
  return r;
}

function renderMembers() {
  const g = currentGroup();
  const button = $('members-button');
  button.hidden = !g;
  const open = !!g && state.membersOpen;
  button.setAttribute('aria-expanded', open ? 'true' : 'false');
  $('members-panel').hidden = !open;
  if (!open) return;
  const mine = myRole(g);
  const owner = mine === 'creator';
  const manages = owner || mine === 'admin';
  $('group-about').textContent = `${g.private ? 'Private group: joined by invitation' : 'Public group: anyone with its id joins'}`
    + ` · id ${g.id}${g.groupdesc ? ' · ' + g.groupdesc : ''} · you are ${ROLE_NAMES[mine] || mine}`;
  const order = { creator: 0, admin: 1, normal: 2 };
  const users = [...g.users].sort((a, b) => (order[a.role] ?? 2) - (order[b.role] ?? 2) || a.name.localeCompare(b.name));
  reconcile($('member-list'), users.map((u) => {
    const li = document.createElement('li');
    li.id = `member-${u.id}`;
    li.dataset.member = String(u.id);
    li.dataset.role = u.role || 'normal';
    const dot = document.createElement('span');
    dot.className = 'dot' + (u.state === 'online' ? ' online' : '');
    dot.setAttribute('aria-hidden', 'true');
    const who = document.createElement('span');
    who.className = 'who';
    who.textContent = `${u.name} (${u.id})${u.id === state.me.id ? ' · you' : ''}`;
    const role = document.createElement('span');
    role.className = 'role';
    role.textContent = ROLE_NAMES[u.role] || u.role || 'member';
    li.append(dot, who, role);
    if (u.id === state.me.id) return li;
    const gid = g.id;
    if (owner && u.role === 'normal') {
      li.append(smallButton('Make admin', 'make-admin', `Make ${u.name} an admin`,
        () => administer({ msgid: 36, groupid: gid, userid: u.id, role: 'admin' }, 'could not change the role')));
    }
    if (owner && u.role === 'admin') {
      li.append(smallButton('Remove admin', 'remove-admin', `Make ${u.name} a normal member`,
        () => administer({ msgid: 36, groupid: gid, userid: u.id, role: 'normal' }, 'could not change the role')));
    }
    if (owner) {
      li.append(smallButton('Hand over', 'hand-over', `Hand the group over to ${u.name}`, () => {
        if (confirm(`Hand ${g.groupname} over to ${u.name}? You will be an admin.`)) {
          administer({ msgid: 36, groupid: gid, userid: u.id, role: 'creator' }, 'could not hand the group over');
        }
      }));
    }
    if (manages && u.role !== 'creator' && (u.role !== 'admin' || owner)) {
      li.append(smallButton('Remove', 'remove-member', `Remove ${u.name} from the group`, () => {
        if (confirm(`Remove ${u.name} from ${g.groupname}?`)) {
          administer({ msgid: 37, groupid: gid, userid: u.id }, 'could not remove the member');
        }
      }));
    }
    return li;
  }));
  $('manage-group').hidden = !manages;
  const invites = manages ? g.invites || [] : [];
  $('group-invites-title').hidden = invites.length === 0;
  reconcile($('group-invites'), invites.map((i) => {
    const li = document.createElement('li');
    const who = document.createElement('span');
    who.className = 'who';
    if (i.kind === 'request') {
      li.id = `join-request-${i.id}`;
      li.dataset.joinRequest = String(i.id);
      who.textContent = `${i.name} (${i.id}) asks to join`;
      li.append(who,
        smallButton('Approve', 'approve', `Let ${i.name} join`,
          () => administer({ msgid: 35, groupid: g.id, userid: i.id, accept: true }, 'could not approve the request')),
        smallButton('Decline', 'decline', `Decline ${i.name}'s request`,
          () => administer({ msgid: 35, groupid: g.id, userid: i.id, accept: false }, 'could not decline the request')));
    } else {
      li.id = `invited-${i.id}`;
      li.dataset.invited = String(i.id);
      who.textContent = `${i.name} (${i.id}) invited by ${i.byname}, not answered yet`;
      li.append(who);
    }
    return li;
  }));
  $('dissolve-button').hidden = !owner;
}

/** The user's devices, with a button to log each other one out. */
async function refreshDevices() {
  try {
    const r = await request({ msgid: 20 });
    if (r.errno === 0) state.devices = r.devices || [];
  } catch (_) {
    // shown as last known
  }
  renderDevices();
}

function renderDevices() {
  const list = $('devices');
  if (!list) return;
  reconcile(list, (state.devices || []).map((d) => {
    const li = document.createElement('li');
    const name = document.createElement('span');
    name.textContent = (d.device || '(classic client)') + (d.current ? ' (this tab)' : '');
    const dot = document.createElement('span');
    dot.className = 'dot' + (d.online ? ' online' : '');
    dot.setAttribute('aria-hidden', 'true');
    li.append(dot, name);
    li.dataset.device = d.device;
    li.dataset.key = 'device:' + d.device;
    if (!d.current) {
      const b = document.createElement('button');
      b.type = 'button';
      b.textContent = 'Log out this device';
      b.setAttribute('aria-label', `Log out device ${d.device || 'classic client'}`);
      b.addEventListener('click', async () => {
        const r = await request({ msgid: 21, device: d.device });
        if (r.errno !== 0) $('sidebar-error').textContent = r.errmsg || 'could not log the device out';
        refreshDevices();
      });
      li.append(b);
    }
    return li;
  }));
}

function presence(p) {
  const f = state.friends.get(p.id);
  if (f) f.state = p.state;
  const member = [...state.groups.values()].some((g) => g.users.some((u) => u.id === p.id));
  // Someone we do not know of: a new friend (friendship is mutual).
  if (!f && !member) refreshFriends().catch(() => {});
  for (const g of state.groups.values()) {
    for (const u of g.users) if (u.id === p.id) u.state = p.state;
  }
  render();
}

async function openConversation(key) {
  if (state.current && state.current !== key) conv(state.current).firstUnread = null;
  if (state.current !== key) {
    $('invite-note').textContent = '';
    $('members-error').textContent = '';
  }
  const c = conv(key);
  state.current = key;
  c.unread = 0;
  $('app').classList.add('in-conversation');
  render();
  $('message-input').focus();
  if (key[0] === 'g') refreshGroupInfo(Number(key.slice(2)));
  if (!c.loaded) await loadHistory(key);
  markRead(key);
}

async function loadHistory(key) {
  const c = conv(key);
  const id = Number(key.slice(2));
  const req = { msgid: 14, limit: HISTORY_PAGE };
  if (key[0] === 'u') req.toid = id; else req.groupid = id;
  const oldest = c.messages.size ? Math.min(...c.messages.keys()) : null;
  if (c.loaded && oldest !== null) req.before = oldest;
  let r;
  try {
    r = await request(req);
  } catch (_) {
    return;
  }
  if (r.errno !== 0) {
    $('sidebar-error').textContent = r.errmsg || 'could not read the history';
    return;
  }
  const list = $('messages');
  const fromBottom = list.scrollHeight - list.scrollTop;
  const page = decodeList(r.messages);
  for (const m of page) receive(m, false);
  c.loaded = true;
  const lowest = page.length ? Math.min(...page.map((m) => m.seq)) : 1;
  if (page.length === 0 || lowest <= 1) c.complete = true;
  render();
  if (req.before !== undefined) list.scrollTop = list.scrollHeight - fromBottom;
}

// ---- sending --------------------------------------------------------------

function newCmid() {
  const bytes = new Uint8Array(12);
  crypto.getRandomValues(bytes);
  return 'w' + Array.from(bytes, (b) => b.toString(16).padStart(2, '0')).join('');
}

function sendMessage(text) {
  if (!state.current || !text.trim()) return;
  const entry = { cmid: newCmid(), key: state.current, text, state: 'sending' };
  state.outbox.set(entry.cmid, entry);
  render();
  transmit(entry);
}

async function transmit(entry) {
  entry.state = 'sending';
  entry.error = null;
  const id = Number(entry.key.slice(2));
  const direct = entry.key[0] === 'u';
  const frame = direct
    ? { msgid: 6, toid: id, msg: entry.text, cmid: entry.cmid }
    : { msgid: 10, groupid: id, msg: entry.text, cmid: entry.cmid };
  let r;
  try {
    r = await request(frame);
  } catch (e) {
    // Disconnected: stays 'sending' and goes again after the resume.
    // Timed out: the user decides.
    if (e.message === 'timeout') entry.state = 'failed';
    entry.error = e.message === 'timeout' ? 'no answer from the server' : null;
    render();
    return;
  }
  if (r.errno !== 0) {
    entry.state = 'failed';
    entry.error = r.errmsg || `refused (errno ${r.errno})`;
    render();
    return;
  }
  state.outbox.delete(entry.cmid);
  const stored = {
    msgid: direct ? 6 : 10, id: state.me.id, name: state.me.name, msg: entry.text,
    seq: r.seq, ts: r.ts, time: r.time,
  };
  if (direct) stored.toid = id; else stored.groupid = id;
  receive(stored, false);
  render();
}

// ---- rendering ------------------------------------------------------------

/** Puts `fresh` (elements just built) in `list`, keeping each element
 * already there that looks the same (same key, equal node): one being
 * clicked or focused is not swapped for a copy under the pointer. Keys are
 * `data-key`, else the element's id. */
function reconcile(list, fresh) {
  const old = new Map();
  for (const el of list.children) {
    const key = el.dataset.key || el.id;
    if (key) old.set(key, el);
  }
  const nodes = fresh.map((el) => {
    const key = el.dataset.key || el.id;
    const was = key && old.get(key);
    return was && was.isEqualNode(el) ? was : el;
  });
  const kids = list.children;
  const same = nodes.length === kids.length && nodes.every((n, i) => kids[i] === n);
  if (!same) list.replaceChildren(...nodes);
}

function showAuth(error) {
  $('auth').hidden = false;
  $('app').hidden = true;
  $('logout').hidden = true;
  $('auth-error').textContent = error || '';
}

function showApp() {
  $('auth').hidden = true;
  $('app').hidden = false;
  $('logout').hidden = false;
}

function convButton(key, label, online, unread) {
  const li = document.createElement('li');
  li.dataset.key = key;
  const b = document.createElement('button');
  b.type = 'button';
  b.dataset.conv = key;
  if (key === state.current) b.setAttribute('aria-current', 'true');
  const dot = document.createElement('span');
  dot.className = 'dot' + (online ? ' online' : '');
  dot.setAttribute('aria-hidden', 'true');
  const name = document.createElement('span');
  name.textContent = label;
  b.append(dot, name);
  let aria = label + (online ? ', online' : '');
  if (unread > 0) {
    const badge = document.createElement('span');
    badge.className = 'unread';
    badge.textContent = String(unread);
    b.append(badge);
    aria += `, ${unread} unread`;
  }
  b.setAttribute('aria-label', aria);
  b.addEventListener('click', () => openConversation(key));
  li.append(b);
  return li;
}

function render() {
  if (!state.me) return;
  const friends = $('friends');
  reconcile(friends, [...state.friends.values()].map((f) =>
    convButton('u:' + f.id, `${f.name} (${f.id})`, f.state === 'online', conv('u:' + f.id).unread)));
  const groups = $('groups');
  reconcile(groups, [...state.groups.values()].map((g) => {
    const li = convButton('g:' + g.id, `${g.groupname} (#${g.id})`, false, conv('g:' + g.id).unread);
    const asking = (g.invites || []).filter((i) => i.kind === 'request').length;
    if (asking > 0) {
      const badge = document.createElement('span');
      badge.className = 'asking';
      badge.textContent = `${asking} asking to join`;
      const b = li.querySelector('button');
      b.append(badge);
      b.setAttribute('aria-label', b.getAttribute('aria-label') + `, ${asking} asking to join`);
    }
    return li;
  }));
  renderRequests();
  renderInvitations();
  renderDevices();
  renderConversation();
}

function titleOf(key) {
  const id = Number(key.slice(2));
  if (key[0] === 'u') {
    const f = state.friends.get(id);
    return f ? `${f.name} (${f.id})` : `user ${id}`;
  }
  const g = state.groups.get(id);
  return g ? `${g.groupname} (#${g.id})` : `group ${id}`;
}

function renderConversation() {
  const key = state.current;
  $('composer').hidden = !key;
  renderMembers();
  if (!key) return;
  const c = conv(key);
  $('conv-title').textContent = titleOf(key);
  const g = key[0] === 'g' ? state.groups.get(Number(key.slice(2))) : null;
  $('conv-members').textContent = g
    ? g.users.map((u) => `${u.name}${u.state === 'online' ? ' ●' : ''}`).join(', ')
    : '';
  const peer = key[0] === 'u' ? Number(key.slice(2)) : null;
  const blockButton = $('block');
  blockButton.hidden = peer === null;
  if (peer !== null) {
    const blocked = state.blocked && state.blocked.has(peer);
    blockButton.textContent = blocked ? 'Unblock' : 'Block';
    blockButton.dataset.peer = String(peer);
  }
  const typingNow = c.typing && c.typing.until > Date.now();
  $('typing').textContent = typingNow ? `${c.typing.name} is typing…` : '';
  $('older').hidden = !c.loaded || c.complete;
  const list = $('messages');
  const atBottom = list.scrollHeight - list.scrollTop - list.clientHeight < 40;
  const items = [...c.messages.values()].filter((m) => !m.event).sort((a, b) => a.seq - b.seq).map((m) => {
    const mine = m.id === state.me.id;
    const read = mine && key[0] === 'u' && (c.peerRead || 0) >= m.seq;
    const readers = mine && key[0] === 'g'
      ? Object.values(c.readBy || {}).filter((s) => s >= m.seq).length : 0;
    let meta = `${mine ? 'you' : m.name} · ${m.time || ''}${mine ? ' · stored' : ''}`;
    if (m.edited) meta += ' · edited';
    if (read) meta += ' · ✓✓ read';
    if (readers) meta += ` · read by ${readers}`;
    const li = messageItem(m.msg, mine, mine ? 'stored' : 'received', meta, m.seq, c.firstUnread === m.seq);
    if (read) li.classList.add('read');
    if (m.recalled) li.classList.add('recalled');
    if (mine && !m.recalled) {
      const edit = document.createElement('button');
      edit.type = 'button';
      edit.className = 'edit';
      edit.textContent = 'Edit';
      edit.setAttribute('aria-label', 'Edit this message');
      edit.addEventListener('click', () => {
        const text = prompt('New text', m.msg);
        if (text !== null && text.trim()) changeMessage(key, m.seq, text);
      });
      const recall = document.createElement('button');
      recall.type = 'button';
      recall.className = 'recall';
      recall.textContent = 'Recall';
      recall.setAttribute('aria-label', 'Recall this message');
      recall.addEventListener('click', () => changeMessage(key, m.seq, null));
      li.querySelector('.meta').append(edit, recall);
    }
    return li;
  });
  for (const entry of state.outbox.values()) {
    if (entry.key !== key) continue;
    const note = entry.state === 'sending' ? 'sending…' : `not sent: ${entry.error || 'failed'}`;
    const li = messageItem(entry.text, true, entry.state, `you · ${note}`, null, false);
    li.dataset.key = 'o:' + entry.cmid;
    if (entry.state === 'failed') {
      const retry = document.createElement('button');
      retry.type = 'button';
      retry.className = 'retry';
      retry.textContent = 'Retry';
      retry.setAttribute('aria-label', 'Retry sending this message');
      retry.addEventListener('click', () => { transmit(entry); render(); });
      li.querySelector('.meta').append(retry);
    }
    items.push(li);
  }
  reconcile(list, items);
  if (atBottom) list.scrollTop = list.scrollHeight;
}

function messageItem(text, mine, kind, meta, seq, firstUnread) {
  const li = document.createElement('li');
  li.className = (mine ? 'mine ' : '') + 'state-' + kind + (firstUnread ? ' first-unread' : '');
  li.dataset.state = kind;
  if (seq !== null) li.dataset.seq = String(seq);
  if (seq !== null) li.dataset.key = 's:' + seq;
  const body = document.createElement('span');
  body.className = 'text';
  body.textContent = text;
  const m = document.createElement('span');
  m.className = 'meta';
  m.textContent = (firstUnread ? 'new · ' : '') + meta;
  li.append(body, m);
  return li;
}

// ---- wiring ---------------------------------------------------------------

/** Runs `action` when form `form` is submitted; its failure is shown in `errorId`. */
function onSubmit(form, errorId, action) {
  $(form).addEventListener('submit', async (e) => {
    e.preventDefault();
    $(errorId).textContent = '';
    try {
      await action();
    } catch (err) {
      $(errorId).textContent = err.message === 'disconnected' ? 'not connected; try again in a moment' : err.message;
    }
  });
}

/** Sends `frame`; resolves with the reply, or throws its errmsg (or `otherwise`). */
async function ask(frame, otherwise) {
  const r = await request(frame);
  if (r.errno !== 0) throw new Error(r.errmsg || otherwise);
  return r;
}

window.addEventListener('DOMContentLoaded', () => {
  onSubmit('login-form', 'auth-error', () => login(Number($('login-id').value), $('login-password').value));
  onSubmit('register-form', 'auth-error', async () => {
    const r = await ask({ msgid: 4, name: $('register-name').value, password: $('register-password').value },
      'registration failed');
    $('registered').textContent = `Registered: your user id is ${r.id}. Log in with it.`;
    $('registered').dataset.id = String(r.id);
    $('login-id').value = String(r.id);
    $('login-password').focus();
  });
  // Adding a friend asks them; they are friends once they accept (or at
  // once, if they had asked the user too).
  onSubmit('add-friend-form', 'sidebar-error', async () => {
    const id = Number($('add-friend-id').value);
    $('add-friend-note').textContent = '';
    const r = await request({ msgid: 7, friendid: id });
    if (r.errno === 0 && r.pending) {
      if (!state.outgoing.has(id)) state.outgoing.set(id, { id, name: `user ${id}` });
      $('add-friend-id').value = '';
      // The list of requests names whom the user asked.
      await loadFriendRequests().catch(() => {});
      const asked = state.outgoing.get(id);
      const name = asked && asked.name !== `user ${id}` ? `${asked.name} (${id})` : String(id);
      $('add-friend-note').textContent = `Request sent to ${name}; you are friends once they accept`;
      render();
      return;
    }
    if (r.errno === 0) {
      // They had asked too: friends now.
      state.requests.delete(id);
      state.outgoing.delete(id);
      await refreshFriends();
      const f = state.friends.get(id);
      $('add-friend-note').textContent = `${f ? `${f.name} (${id})` : id} is your friend now`;
      $('add-friend-id').value = '';
      render();
      return;
    }
    await refreshFriends();
    const f = state.friends.get(id);
    if (f && !f.stranger) {
      $('add-friend-note').textContent = `${f.name} (${id}) is your friend already`;
      $('add-friend-id').value = '';
      render();
      return;
    }
    throw new Error(r.errmsg || 'could not add the friend');
  });
  onSubmit('create-group-form', 'sidebar-error', async () => {
    const frame = { msgid: 8, groupname: $('create-group-name').value, groupdesc: '' };
    if ($('create-group-private').checked) frame.private = true;
    const r = await ask(frame, 'could not create the group');
    state.groups.set(r.groupid, {
      id: r.groupid, groupname: r.groupname, groupdesc: r.groupdesc || '', private: !!r.private,
      users: [{ id: state.me.id, name: state.me.name, role: 'creator', state: 'online' }], invites: [],
    });
    $('create-group-name').value = '';
    $('create-group-private').checked = false;
    $('join-group-note').textContent = r.private
      ? `Private group ${r.groupname} (#${r.groupid}) created: open it and invite people from its members panel`
      : '';
    render();
  });
  onSubmit('join-group-form', 'sidebar-error', async () => {
    const id = Number($('join-group-id').value);
    $('join-group-note').textContent = '';
    // (For a private group the user is invited to, this accepts.)
    const r = await ask({ msgid: 9, groupid: id }, 'could not join the group');
    state.invitations.delete(id);
    state.groups.set(id, {
      id, groupname: r.groupname || `group ${id}`, groupdesc: r.groupdesc || '', users: r.users || [],
    });
    $('join-group-id').value = '';
    render();
  });
  // A private group answers a join by id as one that does not exist: ask
  // its owner and admins instead.
  $('request-join-button').addEventListener('click', async () => {
    const input = $('join-group-id');
    $('sidebar-error').textContent = '';
    $('join-group-note').textContent = '';
    if (!input.reportValidity()) return;
    const id = Number(input.value);
    const r = await request({ msgid: 34, groupid: id }).catch(() => null);
    if (!r || r.errno !== 0) {
      $('sidebar-error').textContent = (r && r.errmsg) || 'could not ask to join';
      return;
    }
    input.value = '';
    if (state.groups.has(id)) {
      refreshGroupInfo(id); // it was an invitation: joined
    } else {
      $('join-group-note').textContent = `Asked to join group ${id}: if it is a private group, its owner or an admin will answer`;
    }
  });
  // The members panel of the open group.
  $('members-button').addEventListener('click', () => {
    state.membersOpen = !state.membersOpen;
    const g = currentGroup();
    if (state.membersOpen && g) refreshGroupInfo(g.id);
    render();
  });
  onSubmit('invite-form', 'members-error', async () => {
    const g = currentGroup();
    if (!g) return;
    const id = Number($('invite-user-id').value);
    $('invite-note').textContent = '';
    const r = await administer({ msgid: 33, groupid: g.id, userid: id }, 'could not invite');
    if (!r) return;
    $('invite-user-id').value = '';
    $('invite-note').textContent = r.joined
      ? `User ${id} had asked to join: a member now`
      : `Invited user ${id}; they join once they accept`;
  });
  onSubmit('rename-group-form', 'members-error', async () => {
    const g = currentGroup();
    if (!g) return;
    const r = await administer({ msgid: 38, groupid: g.id, groupname: $('rename-group-name').value },
      'could not rename the group');
    if (r) $('rename-group-name').value = '';
  });
  $('leave-group-button').addEventListener('click', async () => {
    const g = currentGroup();
    if (!g || !confirm(`Leave ${g.groupname}?`)) return;
    const r = await administer({ msgid: 11, groupid: g.id }, 'could not leave the group');
    if (!r) return;
    forgetGroup(g.id);
    render();
  });
  $('dissolve-button').addEventListener('click', async () => {
    const g = currentGroup();
    if (!g || !confirm(`Dissolve ${g.groupname}? Every member leaves and its messages go.`)) return;
    const r = await administer({ msgid: 39, groupid: g.id }, 'could not dissolve the group');
    if (!r) return;
    forgetGroup(g.id);
    render();
  });
  $('composer').addEventListener('submit', (e) => {
    e.preventDefault();
    const input = $('message-input');
    sendMessage(input.value);
    input.value = '';
  });
  $('message-input').addEventListener('input', typing);
  $('receipts').checked = localStorage.getItem(RECEIPTS_KEY) !== 'off';
  $('receipts').addEventListener('change', (e) => {
    localStorage.setItem(RECEIPTS_KEY, e.target.checked ? 'on' : 'off');
  });
  $('message-input').addEventListener('keydown', (e) => {
    if (e.key === 'Enter' && !e.shiftKey && !e.isComposing) {
      e.preventDefault();
      $('composer').requestSubmit();
    }
  });
  $('older').addEventListener('click', () => state.current && loadHistory(state.current));
  $('messages').addEventListener('scroll', () => {
    const c = state.current && conv(state.current);
    if (c && c.loaded && !c.complete && $('messages').scrollTop === 0) loadHistory(state.current);
  });
  $('back').addEventListener('click', () => {
    $('app').classList.remove('in-conversation');
    state.current = null;
    state.membersOpen = false;
    render();
  });
  $('logout').addEventListener('click', logout);
  $('refresh-devices').addEventListener('click', refreshDevices);
  // Blocking: neither reaches the other one to one (docs/protocol.md).
  $('block').addEventListener('click', async () => {
    const peer = Number($('block').dataset.peer);
    if (!state.blocked) state.blocked = new Set();
    const unblock = state.blocked.has(peer);
    const r = await request({ msgid: unblock ? 28 : 27, userid: peer }).catch(() => null);
    if (!r || r.errno !== 0) {
      $('sidebar-error').textContent = (r && r.errmsg) || 'could not change the block';
      return;
    }
    if (unblock) state.blocked.delete(peer); else state.blocked.add(peer);
    if (!unblock) state.friends.delete(peer);
    render();
  });
  document.addEventListener('visibilitychange', () => {
    if (!document.hidden && state.current) {
      conv(state.current).unread = 0;
      render();
    }
  });
  // A page kept in the back/forward cache must not stay online, frozen:
  // its messages go to the store, and it resumes when shown again.
  window.addEventListener('pagehide', (e) => {
    if (!e.persisted || !state.ws) return;
    state.away = true;
    flushAcks();
    state.ws.close();
  });
  window.addEventListener('pageshow', (e) => {
    if (!e.persisted || !state.away) return;
    state.away = false;
    connect();
  });
  connect();
});
