//! Several database hosts behind one `--db`: a Galera cluster (or any
//! group of MySQL/MariaDB servers that replicate synchronously).
//!
//! `mysql://USER:PASS@HOST1:PORT1,HOST2:PORT2,HOST3:PORT3/DB` lists the
//! hosts in order of preference. A node writes (and reads) through one host
//! at a time: the first one in the list that is *ready*, meaning it answers
//! and, when it is a Galera node, `wsrep_ready` is ON, its component is
//! Primary and its state is Synced. A node that lost quorum or is still
//! joining is never used.
//!
//! Why one host for all nodes rather than spreading them: every message
//! bumps its conversation's sequence row, and two Galera nodes updating the
//! same row at once fail certification (one of them rolls back and
//! retries). With every chat node on the same (first ready) host, those
//! conflicts become ordinary row locks. All chat nodes use the same list,
//! so they agree on the host without talking to each other.
//!
//! [`Failover`] checks the current host every [`CHECK_EVERY`] (and at once
//! when the writer reports a lost connection) and, if it is not ready, moves
//! the pool to the first ready host: new connections go there, and pooled
//! connections opened before the move are closed when next taken.

use std::str::FromStr;
use std::sync::Arc;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use sqlx::mysql::{MySqlConnectOptions, MySqlPool};
use sqlx::{ConnectOptions, Connection, Row};
use tokio::sync::Notify;

use super::{StoreError, StoreResult};

/// How often the current host is checked.
pub const CHECK_EVERY: Duration = Duration::from_secs(1);
/// How long one readiness check may take.
const CHECK_TIMEOUT: Duration = Duration::from_secs(2);

/// The hosts of a `--db` URL, each as a URL of its own (credentials,
/// database and options repeated). A URL with one host gives one.
pub fn split_hosts(url: &str) -> StoreResult<Vec<String>> {
    let bad = || StoreError::Unavailable(format!("cannot read the database URL {}", redact(url)));
    let (scheme, rest) = url.split_once("://").ok_or_else(bad)?;
    // The host list ends at the first '/' or '?' after the credentials.
    let (auth, after_auth) = match rest.find(['/', '?']) {
        Some(end) => match rest[..end].rfind('@') {
            Some(at) => (&rest[..=at], &rest[at + 1..]),
            None => ("", rest),
        },
        None => match rest.rfind('@') {
            Some(at) => (&rest[..=at], &rest[at + 1..]),
            None => ("", rest),
        },
    };
    let split = after_auth.find(['/', '?']).unwrap_or(after_auth.len());
    let (hosts, tail) = after_auth.split_at(split);
    let out: Vec<String> = hosts
        .split(',')
        .filter(|h| !h.is_empty())
        .map(|h| format!("{scheme}://{auth}{h}{tail}"))
        .collect();
    if out.is_empty() {
        return Err(bad());
    }
    Ok(out)
}

/// The URL with its password replaced by `***`, for logs and errors.
pub fn redact(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_owned();
    };
    let end = rest.find(['/', '?']).unwrap_or(rest.len());
    let Some(at) = rest[..end].rfind('@') else {
        return url.to_owned();
    };
    match rest[..at].split_once(':') {
        Some((user, _)) => format!("{scheme}://{user}:***{}", &rest[at..]),
        None => url.to_owned(),
    }
}

/// Whether a host may be written to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Readiness {
    Ready,
    /// It answers but must not be used (Galera: not synced, no quorum).
    NotReady(String),
    /// It does not answer.
    Down(String),
}

/// Connects to `options` once and asks whether it can take writes.
pub async fn check(options: &MySqlConnectOptions) -> Readiness {
    let attempt = async {
        let mut conn = options.connect().await?;
        // A read-only server (an asynchronous replica, say) takes no writes.
        let read_only = sqlx::query("SELECT @@read_only")
            .fetch_one(&mut conn)
            .await?
            .try_get::<i64, _>(0)
            .unwrap_or(0)
            == 1;
        if read_only {
            let _ = conn.close().await;
            return Ok((false, vec![("read_only".to_owned(), "ON".to_owned())]));
        }
        // A plain server says wsrep_on = 0 (MariaDB) or knows no such
        // variable (MySQL): it is ready if it answers.
        let galera = sqlx::query("SELECT @@wsrep_on")
            .fetch_one(&mut conn)
            .await
            .ok()
            .and_then(|r| r.try_get::<i64, _>(0).ok())
            .is_some_and(|on| on == 1);
        let mut state = Vec::new();
        if galera {
            for row in sqlx::query(
                "SHOW GLOBAL STATUS WHERE Variable_name IN \
                 ('wsrep_ready', 'wsrep_cluster_status', 'wsrep_local_state_comment')",
            )
            .fetch_all(&mut conn)
            .await?
            {
                let name: String = row.try_get(0)?;
                let value: String = row.try_get(1)?;
                state.push((name.to_ascii_lowercase(), value));
            }
        }
        let _ = conn.close().await;
        Ok::<_, sqlx::Error>((galera, state))
    };
    match tokio::time::timeout(CHECK_TIMEOUT, attempt).await {
        Err(_) => Readiness::Down("no answer within 2 s".into()),
        Ok(Err(e)) => Readiness::Down(e.to_string()),
        Ok(Ok((false, state))) if state.is_empty() => Readiness::Ready,
        Ok(Ok((false, _))) => Readiness::NotReady("read-only".into()),
        Ok(Ok((true, state))) => galera_readiness(&state),
    }
}

/// A Galera node is usable when ready, in the Primary component, and Synced.
fn galera_readiness(state: &[(String, String)]) -> Readiness {
    let get = |name: &str| {
        state
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
            .unwrap_or("")
    };
    let (ready, component, local) = (
        get("wsrep_ready"),
        get("wsrep_cluster_status"),
        get("wsrep_local_state_comment"),
    );
    if ready.eq_ignore_ascii_case("ON")
        && component.eq_ignore_ascii_case("Primary")
        && local.eq_ignore_ascii_case("Synced")
    {
        Readiness::Ready
    } else {
        Readiness::NotReady(format!(
            "wsrep_ready={ready} cluster_status={component} state={local}"
        ))
    }
}

/// The hosts of one `--db`, and which of them the pool uses.
pub struct Failover {
    hosts: Vec<Host>,
    state: Mutex<Current>,
    /// Asks the monitor to check now (the writer lost its connection).
    wake: Notify,
    /// Told after every move to another host.
    pub moved: Notify,
}

struct Host {
    /// For logs: host and port, no credentials.
    name: String,
    options: MySqlConnectOptions,
}

struct Current {
    index: usize,
    /// When the pool last moved; connections older than this are closed.
    since: Instant,
}

impl Failover {
    /// Reads the hosts of `url` and finds the first ready one; an error
    /// naming each host and what is wrong with it when none is.
    pub async fn start(url: &str) -> StoreResult<Arc<Failover>> {
        let mut hosts = Vec::new();
        for one in split_hosts(url)? {
            let options = MySqlConnectOptions::from_str(&one)?;
            let name = one
                .split_once("://")
                .map(|(_, r)| r)
                .and_then(|r| r.rsplit_once('@').map(|(_, h)| h).or(Some(r)))
                .and_then(|h| h.split(['/', '?']).next())
                .unwrap_or("?")
                .to_owned();
            hosts.push(Host { name, options });
        }
        let failover = Arc::new(Failover {
            hosts,
            state: Mutex::new(Current {
                index: 0,
                since: Instant::now(),
            }),
            wake: Notify::new(),
            moved: Notify::new(),
        });
        let mut why = Vec::new();
        for (i, host) in failover.hosts.iter().enumerate() {
            match check(&host.options).await {
                Readiness::Ready => {
                    failover.set(i);
                    return Ok(failover);
                }
                Readiness::NotReady(s) | Readiness::Down(s) => {
                    why.push(format!("{}: {s}", host.name));
                }
            }
        }
        Err(StoreError::Unavailable(format!(
            "no database host is ready ({})",
            why.join("; ")
        )))
    }

    /// How many hosts there are.
    pub fn len(&self) -> usize {
        self.hosts.len()
    }

    pub fn is_empty(&self) -> bool {
        self.hosts.is_empty()
    }

    /// The options of the host in use.
    pub fn current(&self) -> MySqlConnectOptions {
        let index = self.lock().index;
        self.hosts[index].options.clone()
    }

    /// The host in use, for logs and status.
    pub fn current_name(&self) -> String {
        let index = self.lock().index;
        self.hosts[index].name.clone()
    }

    /// Whether a pooled connection of this age predates the last move.
    pub fn is_stale(&self, age: Duration) -> bool {
        age > self.lock().since.elapsed()
    }

    /// The writer lost its connection: check now.
    pub fn suspect(&self) {
        self.wake.notify_one();
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Current> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn set(&self, index: usize) {
        let mut s = self.lock();
        s.index = index;
        s.since = Instant::now();
    }

    /// Checks the host in use every [`CHECK_EVERY`] (or when woken); when
    /// a host earlier in the list is ready again, or the current one is
    /// not, moves `pool` to the first ready host. Returns once the pool is
    /// closed.
    pub async fn monitor(self: Arc<Self>, pool: MySqlPool) {
        loop {
            tokio::select! {
                _ = tokio::time::sleep(CHECK_EVERY) => {}
                _ = self.wake.notified() => {}
            }
            if pool.is_closed() {
                return;
            }
            let current = self.lock().index;
            // The first ready host, checking only up to the current one
            // while it is fine (most checks are one query to it).
            let mut chosen = None;
            for (i, host) in self.hosts.iter().enumerate() {
                match check(&host.options).await {
                    Readiness::Ready => {
                        chosen = Some(i);
                        break;
                    }
                    other if i == current => {
                        tracing::warn!(host = %host.name, state = ?other, "database host in use is not ready");
                    }
                    _ => {}
                }
            }
            match chosen {
                Some(i) if i != current => {
                    tracing::warn!(
                        from = %self.hosts[current].name,
                        to = %self.hosts[i].name,
                        "moving to another database host"
                    );
                    pool.set_connect_options(self.hosts[i].options.clone());
                    self.set(i);
                    crate::metrics::inc(&crate::metrics::METRICS.db_failovers);
                    self.moved.notify_waiters();
                }
                Some(_) => {}
                None => tracing::warn!("no database host is ready"),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_host_list_becomes_one_url_per_host() {
        assert_eq!(
            split_hosts("mysql://u:p@a:1,b:2,c:3/chat?ssl-mode=disabled").unwrap(),
            vec![
                "mysql://u:p@a:1/chat?ssl-mode=disabled",
                "mysql://u:p@b:2/chat?ssl-mode=disabled",
                "mysql://u:p@c:3/chat?ssl-mode=disabled",
            ]
        );
        assert_eq!(
            split_hosts("mysql://root@h:3306/db").unwrap(),
            vec!["mysql://root@h:3306/db"]
        );
        assert_eq!(
            split_hosts("mysql://a,b").unwrap(),
            vec!["mysql://a", "mysql://b"]
        );
        // a password may hold '@' and ','
        assert_eq!(
            split_hosts("mysql://u:p@,x@a:1,b:2/d").unwrap(),
            vec!["mysql://u:p@,x@a:1/d", "mysql://u:p@,x@b:2/d"]
        );
        assert!(split_hosts("nonsense").is_err());
    }

    #[test]
    fn passwords_never_show() {
        assert_eq!(
            redact("mysql://root:s3cret@a:1,b:2/chat"),
            "mysql://root:***@a:1,b:2/chat"
        );
        assert_eq!(redact("mysql://root@a:1/chat"), "mysql://root@a:1/chat");
        assert_eq!(redact("sqlite://x.db"), "sqlite://x.db");
        let e = split_hosts("mysql://u:hunter2@").unwrap_err();
        assert!(!e.to_string().contains("hunter2"), "{e}");
    }

    #[test]
    fn only_a_synced_primary_galera_node_is_ready() {
        let state = |ready: &str, component: &str, local: &str| {
            vec![
                ("wsrep_ready".to_owned(), ready.to_owned()),
                ("wsrep_cluster_status".to_owned(), component.to_owned()),
                ("wsrep_local_state_comment".to_owned(), local.to_owned()),
            ]
        };
        assert_eq!(
            galera_readiness(&state("ON", "Primary", "Synced")),
            Readiness::Ready
        );
        for (r, c, l) in [
            ("OFF", "Primary", "Synced"),
            ("ON", "non-Primary", "Synced"),
            ("ON", "Primary", "Joining"),
            ("ON", "Primary", "Donor/Desynced"),
        ] {
            assert!(matches!(
                galera_readiness(&state(r, c, l)),
                Readiness::NotReady(_)
            ));
        }
        assert!(matches!(galera_readiness(&[]), Readiness::NotReady(_)));
    }
}
