//! The consistent-hash ring nginx uses for `hash $remote_addr consistent`,
//! reproduced bit for bit, and the nginx.conf that puts it in front of the
//! chat nodes.
//!
//! In cluster mode nginx, not us, decides which chat node a client lands on.
//! Operators still need to answer "which node serves 10.1.2.3?" and "which
//! clients move if node B goes away?" without reading nginx's memory, so this
//! module computes the same ring nginx builds (stream module,
//! `ngx_stream_upstream_hash_module.c`):
//!
//! * every `server` line (a [`Node`]) of weight `w` gets `160 * w` points;
//! * the server text is split into host and port at the last `:` followed
//!   only by digits (`unix:PATH` has no port);
//! * point `j` hashes to `crc32(HOST "\0" PORT prev)`, where `prev` is the
//!   previous point's hash as 4 little-endian bytes (0 for the first point);
//! * points are sorted by hash and, of equal hashes, only the first is kept;
//! * a client's key (`$remote_addr`, e.g. `127.0.0.5`) goes to the first
//!   point whose hash is `>=` `crc32(key)`, wrapping round to the first point.
//!
//! Only the healthy case is modelled: nginx skips to the next point when the
//! chosen server is down or has failed too often, which depends on live state
//! we cannot see. [`nginx_conf`] writes the configuration the ring describes.

use std::fmt::Write as _;
use std::str::FromStr;

use thiserror::Error;

/// Points per unit of weight (nginx: `npoints = peer->weight * 160`).
pub const POINTS_PER_WEIGHT: u32 = 160;

/// Largest weight accepted. nginx has no such cap, but every unit costs 160
/// points and weights come from the command line.
pub const MAX_WEIGHT: u32 = 1000;

/// Where Debian's `libnginx-mod-stream` puts the stream module.
pub const STREAM_MODULE: &str = "/usr/lib/nginx/modules/ngx_stream_module.so";

/// Position of a node in [`Ring::nodes`] (which is nginx's peer order).
pub type NodeIndex = usize;

/// Why a node, a ring change or a configuration was refused.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum RingError {
    #[error("server address is empty")]
    Empty,
    #[error("{0:?} has characters nginx.conf cannot take unquoted")]
    BadChars(String),
    #[error("no port in {0:?} (nginx's stream upstream needs HOST:PORT)")]
    NoPort(String),
    #[error("bad port in {0:?} (1-65535)")]
    BadPort(String),
    #[error("bad weight {0:?} (1-{MAX_WEIGHT})")]
    BadWeight(String),
    #[error("{0:?}: write an IPv6 address in brackets, e.g. [::1]:6000")]
    BareIpv6(String),
    #[error("{0} is already on the ring")]
    Duplicate(String),
    #[error("{0} is not on the ring")]
    Missing(String),
    #[error("no nodes given")]
    NoNodes,
    #[error("bad {what} {value:?}: {why}")]
    BadSetting {
        what: &'static str,
        value: String,
        why: &'static str,
    },
}

/// One `server` line of the upstream block: its address text exactly as
/// written in nginx.conf (the ring hashes this text, not the resolved
/// address) and its weight.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Node {
    server: String,
    weight: u32,
}

impl Node {
    /// A node for the server text `server` (`HOST:PORT`, `[IPV6]:PORT` or
    /// `unix:PATH`) with the given weight.
    pub fn new(server: &str, weight: u32) -> Result<Node, RingError> {
        if server.is_empty() {
            return Err(RingError::Empty);
        }
        if !server.chars().all(safe_char) {
            return Err(RingError::BadChars(server.to_string()));
        }
        if !(1..=MAX_WEIGHT).contains(&weight) {
            return Err(RingError::BadWeight(weight.to_string()));
        }
        let (host, port) = split_server(server);
        if host.is_empty() {
            return Err(RingError::Empty);
        }
        if !is_unix(server) {
            let Some(port) = port else {
                return Err(RingError::NoPort(server.to_string()));
            };
            if !matches!(port.parse::<u16>(), Ok(p) if p > 0) {
                return Err(RingError::BadPort(server.to_string()));
            }
            // "::1:6000" would split into host "::1" and port "6000", which
            // nginx would not parse as meant.
            if host.contains(':') && !host.starts_with('[') {
                return Err(RingError::BareIpv6(server.to_string()));
            }
        }
        Ok(Node {
            server: server.to_string(),
            weight,
        })
    }

    /// A node for `host` and `port`; IPv6 hosts get the brackets nginx needs.
    pub fn from_host_port(host: &str, port: u16, weight: u32) -> Result<Node, RingError> {
        Node::new(&server_text(host, port), weight)
    }

    /// The address text, as it appears on the `server` line.
    pub fn server(&self) -> &str {
        &self.server
    }

    pub fn weight(&self) -> u32 {
        self.weight
    }

    /// The host part nginx hashes (`[::1]` keeps its brackets).
    pub fn host(&self) -> &str {
        split_server(&self.server).0
    }

    /// The port part nginx hashes, if any.
    pub fn port(&self) -> Option<&str> {
        split_server(&self.server).1
    }

    /// This node's point hashes in the order nginx generates them (before
    /// sorting and removing duplicates); `160 * weight` of them.
    pub fn point_hashes(&self) -> Vec<u32> {
        point_hashes(&self.server, self.weight)
    }
}

/// `ADDR` or `ADDR:WEIGHT`, e.g. `127.0.0.1:6001`, `127.0.0.1:6001:2`,
/// `[::1]:6001:2`, `unix:/run/chat.sock:2`.
impl FromStr for Node {
    type Err = RingError;

    fn from_str(spec: &str) -> Result<Node, RingError> {
        let parse_weight = |w: &str| {
            w.parse::<u32>()
                .map_err(|_| RingError::BadWeight(w.to_string()))
        };
        if is_unix(spec) {
            return match spec[5..].rsplit_once(':') {
                Some((path, w)) if !w.is_empty() && w.bytes().all(|b| b.is_ascii_digit()) => {
                    Node::new(&spec[..5 + path.len()], parse_weight(w)?)
                }
                _ => Node::new(spec, 1),
            };
        }
        // Only the part after an IPv6 literal's `]` can hold port and weight.
        let tail_start = spec.rfind(']').map_or(0, |i| i + 1);
        let colons = spec[tail_start..].matches(':').count();
        match colons {
            0 | 1 => Node::new(spec, 1),
            2 => match spec.rsplit_once(':') {
                Some((addr, w)) => Node::new(addr, parse_weight(w)?),
                None => Node::new(spec, 1),
            },
            _ => Err(RingError::BareIpv6(spec.to_string())),
        }
    }
}

/// Characters allowed in addresses and paths written into nginx.conf: enough
/// for hostnames, IPv4/IPv6 literals (with zone ids) and socket paths, and
/// nothing that ends a directive or starts a comment or variable.
fn safe_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_' | ':' | '[' | ']' | '/' | '%')
}

/// Whether `server` starts with `unix:` (any case). Compared as bytes, so
/// slicing off those 5 ASCII bytes afterwards is always on a char boundary.
fn is_unix(server: &str) -> bool {
    server
        .as_bytes()
        .get(..5)
        .is_some_and(|b| b.eq_ignore_ascii_case(b"unix:"))
}

/// `HOST:PORT` as nginx wants it on a `server` line: IPv6 in brackets.
pub fn server_text(host: &str, port: u16) -> String {
    if host.contains(':') && !host.starts_with('[') {
        format!("[{host}]:{port}")
    } else {
        format!("{host}:{port}")
    }
}

/// Splits server text into the host and port nginx hashes, exactly as
/// `ngx_stream_upstream_init_chash` does: `unix:PATH` is all host; otherwise
/// the port is the digits after the last `:`, and text whose end is not
/// `:DIGITS` is all host.
pub fn split_server(server: &str) -> (&str, Option<&str>) {
    if is_unix(server) {
        return (&server[5..], None);
    }
    for (i, b) in server.bytes().enumerate().rev() {
        if b == b':' {
            return (&server[..i], Some(&server[i + 1..]));
        }
        if !b.is_ascii_digit() {
            break;
        }
    }
    (server, None)
}

/// The point hashes nginx generates for one `server` line, in generation
/// order: `crc32(HOST "\0" PORT prev_hash_le)` for `160 * weight` points.
/// Private because it trusts `weight`; [`Node::new`] caps it.
fn point_hashes(server: &str, weight: u32) -> Vec<u32> {
    let (host, port) = split_server(server);
    // ngx_crc32_init + update(host) + update("\0") + update(port), without
    // the final xor: each point continues from this state.
    let mut base = crc32fast::Hasher::new();
    base.update(host.as_bytes());
    base.update(&[0]);
    base.update(port.unwrap_or("").as_bytes());
    let n = weight.saturating_mul(POINTS_PER_WEIGHT) as usize;
    let mut out = Vec::with_capacity(n);
    let mut prev: u32 = 0;
    for _ in 0..n {
        let mut h = base.clone();
        // nginx copies the u32 through a byte union; on little-endian hosts
        // (and explicitly on big-endian ones) that is the LE byte order.
        h.update(&prev.to_le_bytes());
        prev = h.finalize();
        out.push(prev);
    }
    out
}

/// The hash of a client key (nginx: `ngx_crc32_long(key)`).
pub fn key_hash(key: &str) -> u32 {
    crc32fast::hash(key.as_bytes())
}

/// One point on the ring: its hash and the node it belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Point {
    pub hash: u32,
    pub node: NodeIndex,
}

/// The ring of an upstream block: its nodes in `server`-line order and their
/// points sorted by hash.
#[derive(Debug, Clone, Default)]
pub struct Ring {
    nodes: Vec<Node>,
    points: Vec<Point>,
}

impl Ring {
    /// An empty ring; [`Ring::get`] answers `None` until a node is added.
    pub fn new() -> Ring {
        Ring::default()
    }

    /// The ring of an upstream block with these `server` lines, in order.
    pub fn with_nodes(nodes: impl IntoIterator<Item = Node>) -> Result<Ring, RingError> {
        let mut ring = Ring::new();
        for node in nodes {
            ring.push(node)?;
        }
        ring.rebuild();
        Ok(ring)
    }

    /// Adds `host:port` with `weight` as the last `server` line.
    pub fn add(&mut self, host: &str, port: u16, weight: u32) -> Result<&Node, RingError> {
        self.insert(Node::from_host_port(host, port, weight)?)
    }

    /// Adds the server text `addr` (e.g. `127.0.0.1:6000`) with `weight`.
    pub fn add_node(&mut self, addr: &str, weight: u32) -> Result<&Node, RingError> {
        self.insert(Node::new(addr, weight)?)
    }

    /// Adds `node` as the last `server` line.
    pub fn insert(&mut self, node: Node) -> Result<&Node, RingError> {
        self.push(node)?;
        self.rebuild();
        let last = self.nodes.len() - 1;
        Ok(&self.nodes[last])
    }

    /// Removes `host:port`, returning it.
    pub fn remove(&mut self, host: &str, port: u16) -> Result<Node, RingError> {
        self.remove_node(&server_text(host, port))
    }

    /// Removes the node whose server text is `addr`, returning it.
    pub fn remove_node(&mut self, addr: &str) -> Result<Node, RingError> {
        let i = self
            .index_of(addr)
            .ok_or_else(|| RingError::Missing(addr.to_string()))?;
        let node = self.nodes.remove(i);
        self.rebuild();
        Ok(node)
    }

    /// The node nginx sends a client with key `key` to (its `$remote_addr`
    /// text, e.g. `127.0.0.5`), when every node is healthy.
    pub fn get(&self, key: &str) -> Option<&Node> {
        self.point_for(key).and_then(|p| self.nodes.get(p.node))
    }

    /// The point a key lands on: the first with `hash >= crc32(key)`, or the
    /// first point when the key hashes past the last one.
    pub fn point_for(&self, key: &str) -> Option<Point> {
        let h = key_hash(key);
        // The points are unique, so this is the index nginx's binary search
        // (ngx_stream_upstream_find_chash_point) returns; `% number` wraps.
        let i = self.points.partition_point(|p| p.hash < h);
        self.points.get(i).or(self.points.first()).copied()
    }

    /// The nodes, in `server`-line order.
    pub fn nodes(&self) -> &[Node] {
        &self.nodes
    }

    pub fn node(&self, i: NodeIndex) -> Option<&Node> {
        self.nodes.get(i)
    }

    /// The index of the node whose server text is `addr`.
    pub fn index_of(&self, addr: &str) -> Option<NodeIndex> {
        self.nodes.iter().position(|n| n.server == addr)
    }

    /// Every point, sorted by hash, duplicates removed: the ring itself.
    pub fn points(&self) -> &[Point] {
        &self.points
    }

    /// The hashes of the points on the ring that belong to `addr`, sorted
    /// (fewer than `160 * weight` only if some collided with another's).
    pub fn points_of(&self, addr: &str) -> Option<Vec<u32>> {
        let i = self.index_of(addr)?;
        Some(
            self.points
                .iter()
                .filter(|p| p.node == i)
                .map(|p| p.hash)
                .collect(),
        )
    }

    pub fn is_empty(&self) -> bool {
        self.nodes.is_empty()
    }

    pub fn len(&self) -> usize {
        self.nodes.len()
    }

    fn push(&mut self, node: Node) -> Result<(), RingError> {
        if self.index_of(&node.server).is_some() {
            return Err(RingError::Duplicate(node.server));
        }
        self.nodes.push(node);
        Ok(())
    }

    fn rebuild(&mut self) {
        let mut points = Vec::new();
        for (i, node) in self.nodes.iter().enumerate() {
            points.extend(
                node.point_hashes()
                    .into_iter()
                    .map(|hash| Point { hash, node: i }),
            );
        }
        // nginx sorts with libc qsort and keeps the first of equal hashes.
        // glibc's qsort is a stable merge sort for arrays this size, so the
        // earlier server line wins a tie, as it does with this stable sort.
        // (A tie needs two equal 32-bit hashes; with a few thousand points
        // that is about a one in a million event.)
        points.sort_by_key(|p| p.hash);
        points.dedup_by_key(|p| p.hash);
        self.points = points;
    }
}

/// How the generated upstream block balances clients.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Balance {
    /// `hash $remote_addr consistent;`: a client keeps its node, and losing
    /// a node only moves that node's clients.
    #[default]
    Hash,
    /// nginx's default weighted round robin, as the original deployment used.
    RoundRobin,
}

impl FromStr for Balance {
    type Err = String;

    fn from_str(s: &str) -> Result<Balance, String> {
        match s {
            "hash" | "consistent" => Ok(Balance::Hash),
            "round-robin" | "roundrobin" | "rr" => Ok(Balance::RoundRobin),
            _ => Err(format!("unknown balance {s:?} (hash or round-robin)")),
        }
    }
}

impl std::fmt::Display for Balance {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Balance::Hash => "hash",
            Balance::RoundRobin => "round-robin",
        })
    }
}

/// What [`nginx_conf`] needs to write a complete nginx.conf.
#[derive(Debug, Clone)]
pub struct NginxConf {
    /// The `listen` address clients connect to, e.g. `127.0.0.1:8000` or `8000`.
    pub listen: String,
    pub balance: Balance,
    /// The chat nodes, in `server`-line order (the order matters to the
    /// ring only when two points tie).
    pub nodes: Vec<Node>,
    /// Absolute directory for the pid file and error log; `/tmp` if `None`.
    pub prefix: Option<String>,
    /// The stream module to load; [`STREAM_MODULE`] if `None`.
    pub module: Option<String>,
    /// Send each node a PROXY protocol header naming the client (nodes run
    /// with `--proxy-protocol`), so their per-address limits see clients,
    /// not nginx.
    pub proxy_protocol: bool,
    /// Also balance the nodes' web listeners (`--ws-listen`): nginx serves
    /// HTTP and WebSocket on `listen`, to these node addresses.
    pub web: Option<WebConf>,
}

/// The web side of [`NginxConf`].
#[derive(Debug, Clone)]
pub struct WebConf {
    /// The `listen` address browsers connect to, e.g. `127.0.0.1:8080`.
    pub listen: String,
    /// Each node's web listener, in node order.
    pub nodes: Vec<String>,
}

impl NginxConf {
    /// A configuration with the defaults for prefix and module.
    pub fn new(listen: &str, balance: Balance, nodes: Vec<Node>) -> NginxConf {
        NginxConf {
            listen: listen.to_string(),
            balance,
            nodes,
            prefix: None,
            module: None,
            proxy_protocol: false,
            web: None,
        }
    }
}

/// A complete nginx.conf: the stream module, one worker, pid file and error
/// log under the prefix, an upstream `chat` of the nodes and a TCP proxy
/// from `listen` to it with the timeouts a chat connection needs.
pub fn nginx_conf(conf: &NginxConf) -> Result<String, RingError> {
    if conf.nodes.is_empty() {
        return Err(RingError::NoNodes);
    }
    // The ring rejects duplicate server lines, so the config does too.
    Ring::with_nodes(conf.nodes.iter().cloned())?;
    check_setting("listen address", &conf.listen, false)?;
    let dir = conf.prefix.as_deref().unwrap_or("/tmp");
    check_setting("prefix directory", dir, true)?;
    let dir = dir.trim_end_matches('/');
    let module = conf.module.as_deref().unwrap_or(STREAM_MODULE);
    check_setting("module path", module, true)?;

    let mut out = String::new();
    // `writeln!` into a String cannot fail; the results are ignored.
    let w = &mut out;
    let _ = writeln!(w, "# nginx in front of the chat nodes ({}).", conf.balance);
    let _ = writeln!(
        w,
        "# Generated by `chathash nginx-conf`; regenerate rather than edit."
    );
    let _ = writeln!(w, "# Run: nginx -p DIR -c THIS_FILE -g 'daemon off;'");
    let _ = writeln!(w);
    let _ = writeln!(w, "load_module {module};");
    let _ = writeln!(w);
    let _ = writeln!(w, "worker_processes auto;");
    // Every proxied chat client holds two descriptors (client and node) for
    // as long as it stays connected.
    let _ = writeln!(w, "worker_rlimit_nofile 20000;");
    let _ = writeln!(w, "pid {dir}/chat-nginx.pid;");
    let _ = writeln!(w, "error_log {dir}/chat-nginx.error.log notice;");
    let _ = writeln!(w);
    let _ = writeln!(w, "events {{");
    let _ = writeln!(w, "    worker_connections 9000;");
    let _ = writeln!(w, "}}");
    let _ = writeln!(w);
    let _ = writeln!(w, "stream {{");
    let _ = writeln!(w, "    upstream chat {{");
    if conf.balance == Balance::Hash {
        let _ = writeln!(
            w,
            "        # A client keeps its node; `chathash which` says which one."
        );
        let _ = writeln!(w, "        hash $remote_addr consistent;");
    }
    for node in &conf.nodes {
        let _ = writeln!(
            w,
            "        server {} weight={} max_fails=3 fail_timeout=30s;",
            node.server, node.weight
        );
    }
    let _ = writeln!(w, "    }}");
    let _ = writeln!(w);
    let _ = writeln!(w, "    server {{");
    let _ = writeln!(w, "        listen {};", conf.listen);
    let _ = writeln!(w, "        proxy_pass chat;");
    if conf.proxy_protocol {
        let _ = writeln!(
            w,
            "        # Nodes learn each client's address (chatserver --proxy-protocol)."
        );
        let _ = writeln!(w, "        proxy_protocol on;");
    }
    let _ = writeln!(w, "        proxy_connect_timeout 1s;");
    let _ = writeln!(
        w,
        "        # Chat connections idle for long stretches between messages."
    );
    let _ = writeln!(w, "        proxy_timeout 24h;");
    let _ = writeln!(w, "        tcp_nodelay on;");
    let _ = writeln!(w, "    }}");
    let _ = writeln!(w, "}}");
    if let Some(web) = &conf.web {
        write_web(w, web, conf.balance, dir)?;
    }
    Ok(out)
}

/// The `http` block for the web listeners: the web client and WebSocket
/// upgrades to `/ws`, the client's address in `X-Forwarded-For` (nodes
/// believe it from trusted balancers, `--proxy-from`).
fn write_web(w: &mut String, web: &WebConf, balance: Balance, dir: &str) -> Result<(), RingError> {
    if web.nodes.is_empty() {
        return Err(RingError::NoNodes);
    }
    check_setting("web listen address", &web.listen, false)?;
    for node in &web.nodes {
        check_setting("web node address", node, false)?;
    }
    let _ = writeln!(w);
    let _ = writeln!(w, "http {{");
    let _ = writeln!(w, "    access_log off;");
    for temp in ["client_body", "proxy", "fastcgi", "uwsgi", "scgi"] {
        let _ = writeln!(w, "    {temp}_temp_path {dir}/{temp}_temp;");
    }
    let _ = writeln!(w, "    map $http_upgrade $connection_upgrade {{");
    let _ = writeln!(w, "        default upgrade;");
    let _ = writeln!(w, "        '' close;");
    let _ = writeln!(w, "    }}");
    let _ = writeln!(w, "    upstream chat_web {{");
    if balance == Balance::Hash {
        let _ = writeln!(w, "        hash $remote_addr consistent;");
    }
    for node in &web.nodes {
        let _ = writeln!(w, "        server {node} max_fails=3 fail_timeout=30s;");
    }
    let _ = writeln!(w, "    }}");
    let _ = writeln!(w, "    server {{");
    let _ = writeln!(w, "        listen {};", web.listen);
    let _ = writeln!(w, "        location / {{");
    let _ = writeln!(w, "            proxy_pass http://chat_web;");
    let _ = writeln!(w, "            proxy_http_version 1.1;");
    let _ = writeln!(w, "            proxy_set_header Host $host;");
    let _ = writeln!(w, "            proxy_set_header Upgrade $http_upgrade;");
    let _ = writeln!(
        w,
        "            proxy_set_header Connection $connection_upgrade;"
    );
    let _ = writeln!(
        w,
        "            proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;"
    );
    let _ = writeln!(w, "            proxy_connect_timeout 1s;");
    let _ = writeln!(
        w,
        "            # WebSocket sessions idle for long stretches between messages."
    );
    let _ = writeln!(w, "            proxy_read_timeout 24h;");
    let _ = writeln!(w, "            proxy_send_timeout 24h;");
    let _ = writeln!(w, "        }}");
    let _ = writeln!(w, "    }}");
    let _ = writeln!(w, "}}");
    Ok(())
}

/// Refuses settings that would break out of their directive.
fn check_setting(what: &'static str, value: &str, absolute: bool) -> Result<(), RingError> {
    let bad = |why| {
        Err(RingError::BadSetting {
            what,
            value: value.to_string(),
            why,
        })
    };
    if value.is_empty() {
        return bad("empty");
    }
    if !value.chars().all(safe_char) {
        return bad("only letters, digits and . - _ : [ ] / % are allowed");
    }
    if absolute && !value.starts_with('/') {
        return bad("must be an absolute path");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn three() -> Ring {
        Ring::with_nodes([
            Node::new("127.0.0.1:6000", 1).unwrap(),
            Node::new("127.0.0.1:6001", 2).unwrap(),
            Node::new("127.0.0.1:6002", 1).unwrap(),
        ])
        .unwrap()
    }

    #[test]
    fn crc_is_nginx_crc32() {
        // The IEEE CRC-32 check value: nginx's ngx_crc32_table256 is this CRC.
        assert_eq!(key_hash("123456789"), 0xCBF4_3926);
    }

    #[test]
    fn splits_like_nginx() {
        assert_eq!(split_server("127.0.0.1:6000"), ("127.0.0.1", Some("6000")));
        assert_eq!(split_server("[::1]:6000"), ("[::1]", Some("6000")));
        assert_eq!(
            split_server("chat.example:80"),
            ("chat.example", Some("80"))
        );
        assert_eq!(
            split_server("unix:/run/chat.sock"),
            ("/run/chat.sock", None)
        );
        assert_eq!(split_server("UNIX:/x"), ("/x", None));
        // A non-digit before any ':' means no port at all.
        assert_eq!(split_server("a:b"), ("a:b", None));
        assert_eq!(split_server("host"), ("host", None));
        assert_eq!(split_server("host:"), ("host", Some("")));
    }

    #[test]
    fn points_follow_the_formula_by_hand() {
        // crc32(HOST "\0" PORT prev_le), computed on the concatenated bytes
        // rather than by continuing a hasher.
        let pts = point_hashes("127.0.0.1:6000", 1);
        assert_eq!(pts.len(), 160);
        let mut prev = 0u32;
        for &p in &pts {
            let mut bytes = b"127.0.0.1\x006000".to_vec();
            bytes.extend_from_slice(&prev.to_le_bytes());
            assert_eq!(p, crc32fast::hash(&bytes));
            prev = p;
        }
        // The same first points from Python's zlib.crc32, an independent
        // CRC-32 implementation.
        assert_eq!(&pts[..3], &[2484274456, 2448993868, 3445250704]);
        assert_eq!(point_hashes("127.0.0.1:6001", 2).len(), 320);
    }

    #[test]
    fn maps_keys_like_an_independent_model() {
        // Expected nodes from a 15-line Python model of the same algorithm
        // (zlib.crc32, bisect_left, wrap to 0) for weights 1, 2, 1.
        let ring = three();
        assert_eq!(ring.points().len(), 640);
        let expect = [
            ("127.0.0.2", "127.0.0.1:6002"),
            ("127.0.0.3", "127.0.0.1:6001"),
            ("127.0.0.4", "127.0.0.1:6000"),
            ("127.0.0.5", "127.0.0.1:6002"),
            ("127.0.0.6", "127.0.0.1:6001"),
            ("127.0.0.7", "127.0.0.1:6000"),
            ("127.0.0.8", "127.0.0.1:6001"),
            ("127.0.0.9", "127.0.0.1:6001"),
            ("127.0.0.10", "127.0.0.1:6002"),
            ("127.0.0.11", "127.0.0.1:6000"),
        ];
        for (key, server) in expect {
            assert_eq!(ring.get(key).unwrap().server(), server, "{key}");
        }
        assert_eq!(key_hash("127.0.0.5"), 3503956913);
    }

    #[test]
    fn lookup_takes_first_point_at_or_above_and_wraps() {
        let ring = three();
        let pts = ring.points();
        assert!(pts.windows(2).all(|w| w[0].hash < w[1].hash));
        for key in (0..500).map(|i| format!("10.0.{}.{}", i / 256, i % 256)) {
            let h = key_hash(&key);
            let want = pts.iter().find(|p| p.hash >= h).unwrap_or(&pts[0]);
            assert_eq!(ring.point_for(&key), Some(*want));
        }
    }

    #[test]
    fn removing_a_node_only_moves_its_keys() {
        let before = three();
        let mut after = before.clone();
        let gone = after.remove("127.0.0.1", 6001).unwrap();
        assert_eq!(gone.weight(), 2);
        assert_eq!(after.points().len(), 320);
        let mut moved = 0;
        for key in (0..2000).map(|i| format!("192.168.{}.{}", i / 256, i % 256)) {
            let old = before.get(&key).unwrap().server();
            let new = after.get(&key).unwrap().server();
            if old == "127.0.0.1:6001" {
                moved += 1;
                assert_ne!(new, old);
            } else {
                assert_eq!(new, old, "{key} moved although its node stayed");
            }
        }
        // Weight 2 of 4 holds about half the keys.
        assert!((700..1300).contains(&moved), "{moved}");
    }

    #[test]
    fn adding_a_node_only_takes_keys() {
        let before = three();
        let mut after = before.clone();
        after.add_node("127.0.0.1:6003", 1).unwrap();
        for key in (0..2000).map(|i| format!("172.16.{}.{}", i / 256, i % 256)) {
            let old = before.get(&key).unwrap().server();
            let new = after.get(&key).unwrap().server();
            assert!(
                new == old || new == "127.0.0.1:6003",
                "{key}: {old} -> {new}"
            );
        }
    }

    #[test]
    fn ring_bookkeeping() {
        let mut ring = Ring::new();
        assert!(ring.get("127.0.0.1").is_none());
        ring.add("127.0.0.1", 6000, 1).unwrap();
        assert_eq!(ring.get("anything").unwrap().server(), "127.0.0.1:6000");
        assert_eq!(
            ring.add("127.0.0.1", 6000, 2).unwrap_err(),
            RingError::Duplicate("127.0.0.1:6000".into())
        );
        ring.add("::1", 6000, 1).unwrap();
        assert_eq!(ring.nodes()[1].server(), "[::1]:6000");
        assert_eq!(ring.nodes()[1].host(), "[::1]");
        assert_eq!(ring.points_of("[::1]:6000").unwrap().len(), 160);
        assert_eq!(ring.points().len(), 320);
        assert!(ring.remove("127.0.0.1", 6001).is_err());
        ring.remove("::1", 6000).unwrap();
        assert_eq!(ring.len(), 1);
        assert!(ring.points().iter().all(|p| p.node == 0));
    }

    #[test]
    fn parses_node_specs() {
        let n: Node = "127.0.0.1:6001".parse().unwrap();
        assert_eq!((n.server(), n.weight()), ("127.0.0.1:6001", 1));
        let n: Node = "127.0.0.1:6001:2".parse().unwrap();
        assert_eq!((n.server(), n.weight()), ("127.0.0.1:6001", 2));
        let n: Node = "[::1]:6001:3".parse().unwrap();
        assert_eq!((n.server(), n.weight()), ("[::1]:6001", 3));
        let n: Node = "unix:/run/chat.sock:2".parse().unwrap();
        assert_eq!((n.server(), n.weight()), ("unix:/run/chat.sock", 2));
        let n: Node = "unix:/run/chat.sock".parse().unwrap();
        assert_eq!((n.server(), n.weight()), ("unix:/run/chat.sock", 1));
        for bad in [
            "",
            "127.0.0.1",
            "127.0.0.1:0",
            "127.0.0.1:70000",
            "127.0.0.1:6000:0",
            "127.0.0.1:6000:x",
            "127.0.0.1:6000:1001",
            "::1:6000",
            "a b:6000",
            "h;x:6000",
            ":6000",
        ] {
            assert!(bad.parse::<Node>().is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn writes_a_hash_config() {
        let mut conf = NginxConf::new("127.0.0.1:8000", Balance::Hash, three().nodes().to_vec());
        conf.prefix = Some("/tmp/x/".into());
        let text = nginx_conf(&conf).unwrap();
        for line in [
            "load_module /usr/lib/nginx/modules/ngx_stream_module.so;",
            "worker_processes auto;",
            "worker_rlimit_nofile 20000;",
            "    worker_connections 9000;",
            "pid /tmp/x/chat-nginx.pid;",
            "error_log /tmp/x/chat-nginx.error.log notice;",
            "    upstream chat {",
            "        hash $remote_addr consistent;",
            "        server 127.0.0.1:6000 weight=1 max_fails=3 fail_timeout=30s;",
            "        server 127.0.0.1:6001 weight=2 max_fails=3 fail_timeout=30s;",
            "        listen 127.0.0.1:8000;",
            "        proxy_pass chat;",
            "        proxy_connect_timeout 1s;",
            "        proxy_timeout 24h;",
            "        tcp_nodelay on;",
        ] {
            assert!(text.lines().any(|l| l == line), "missing {line:?}:\n{text}");
        }
        assert_eq!(text.matches('{').count(), text.matches('}').count());
    }

    #[test]
    fn writes_a_round_robin_config_and_refuses_bad_settings() {
        let nodes = three().nodes().to_vec();
        let conf = NginxConf::new("8000", Balance::RoundRobin, nodes.clone());
        let text = nginx_conf(&conf).unwrap();
        assert!(!text.contains("hash $remote_addr"));
        assert!(text.contains("pid /tmp/chat-nginx.pid;"));
        assert!(text.contains("        listen 8000;"));
        assert!(!text.contains("proxy_protocol"));
        let mut proxying = conf.clone();
        proxying.proxy_protocol = true;
        let text = nginx_conf(&proxying).unwrap();
        assert!(text.lines().any(|l| l == "        proxy_protocol on;"));
        assert!(!text.contains("http {"));
        let mut web = conf.clone();
        web.web = Some(WebConf {
            listen: "127.0.0.1:8080".into(),
            nodes: vec!["127.0.0.1:6100".into(), "127.0.0.1:6101".into()],
        });
        let text = nginx_conf(&web).unwrap();
        for line in [
            "http {",
            "        server 127.0.0.1:6101 max_fails=3 fail_timeout=30s;",
            "        listen 127.0.0.1:8080;",
            "            proxy_set_header Upgrade $http_upgrade;",
        ] {
            assert!(text.lines().any(|l| l == line), "missing {line:?}:\n{text}");
        }
        assert_eq!(text.matches('{').count(), text.matches('}').count());
        web.web = Some(WebConf {
            listen: "8080; evil".into(),
            nodes: vec!["127.0.0.1:6100".into()],
        });
        assert!(nginx_conf(&web).is_err());

        let bad_listen = NginxConf::new("8000; evil", Balance::Hash, nodes.clone());
        assert!(nginx_conf(&bad_listen).is_err());
        let mut relative = NginxConf::new("8000", Balance::Hash, nodes.clone());
        relative.prefix = Some("run".into());
        assert!(nginx_conf(&relative).is_err());
        assert_eq!(
            nginx_conf(&NginxConf::new("8000", Balance::Hash, vec![])).unwrap_err(),
            RingError::NoNodes
        );
        let dup = vec![nodes[0].clone(), nodes[0].clone()];
        assert!(nginx_conf(&NginxConf::new("8000", Balance::Hash, dup)).is_err());
        assert_eq!("rr".parse::<Balance>(), Ok(Balance::RoundRobin));
        assert!("random".parse::<Balance>().is_err());
    }
}
