//! One Redis, or a Redis Cluster: where `--redis` points, and a connection
//! that speaks to either.
//!
//! A standalone Redis is `redis://[USER:PASS@]HOST:PORT[/DB]`. A Redis
//! Cluster is `redis+cluster://[USER:PASS@]HOST:PORT[,HOST:PORT...]`: the
//! addresses are seeds, any reachable one is enough to learn the rest. The
//! cluster connection (redis-rs's `cluster-async`) follows `MOVED`/`ASK`
//! redirections during resharding, reloads the slot map when a primary
//! fails over to its replica, and resubscribes sharded channels after it.
//!
//! Every key and channel of one deployment carries the same hash tag
//! (`{PREFIX}`, see [`super::Keys`]), so they live in one slot: each Lua
//! script touches one slot, as a cluster demands, and a pipeline goes to one
//! shard in one round trip.

use std::time::Duration;

use redis::aio::{ConnectionLike, ConnectionManager, ConnectionManagerConfig};
use redis::cluster::ClusterClient;
use redis::cluster_async::ClusterConnection;
use redis::{Cmd, Pipeline, RedisFuture, Value};

use crate::hub::HubError;

/// The scheme that marks a Redis Cluster's seed list.
const CLUSTER_SCHEME: &str = "redis+cluster://";
/// The same over TLS.
const CLUSTER_TLS_SCHEME: &str = "rediss+cluster://";

/// What `--redis` names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    /// One Redis server.
    Single(String),
    /// A Redis Cluster, by seed URLs (each `redis://[AUTH@]HOST:PORT`).
    Cluster(Vec<String>),
}

impl Target {
    /// Reads `--redis`. A cluster URL becomes one seed URL per address,
    /// each with the URL's credentials.
    pub fn parse(url: &str) -> Result<Target, HubError> {
        let (scheme, rest) = if let Some(rest) = url.strip_prefix(CLUSTER_SCHEME) {
            ("redis://", rest)
        } else if let Some(rest) = url.strip_prefix(CLUSTER_TLS_SCHEME) {
            ("rediss://", rest)
        } else {
            return Ok(Target::Single(url.to_owned()));
        };
        let rest = rest.trim_end_matches('/');
        if rest.contains('/') || rest.contains('?') {
            return Err(HubError::Unavailable(
                "a Redis Cluster URL names no database or options: \
                 redis+cluster://[USER:PASS@]HOST:PORT[,HOST:PORT...]"
                    .into(),
            ));
        }
        // Credentials end at the last '@' (a password may hold one).
        let (auth, hosts) = match rest.rsplit_once('@') {
            Some((auth, hosts)) => (format!("{auth}@"), hosts),
            None => (String::new(), rest),
        };
        let seeds: Vec<String> = hosts
            .split(',')
            .filter(|h| !h.is_empty())
            .map(|h| format!("{scheme}{auth}{h}"))
            .collect();
        if seeds.is_empty() {
            return Err(HubError::Unavailable(
                "a Redis Cluster URL needs at least one HOST:PORT".into(),
            ));
        }
        Ok(Target::Cluster(seeds))
    }

    pub fn is_cluster(&self) -> bool {
        matches!(self, Target::Cluster(_))
    }

    /// The first address, without credentials, for logs.
    pub fn display(&self) -> String {
        let first = match self {
            Target::Single(u) => u.as_str(),
            Target::Cluster(seeds) => seeds.first().map(String::as_str).unwrap_or(""),
        };
        let shown = match first.split_once("://") {
            Some((scheme, rest)) => {
                let hosts = rest.rsplit_once('@').map(|(_, h)| h).unwrap_or(rest);
                format!("{scheme}://{hosts}")
            }
            None => first.to_owned(),
        };
        match self {
            Target::Cluster(seeds) if seeds.len() > 1 => {
                format!("{shown} (+{} more seeds, cluster)", seeds.len() - 1)
            }
            Target::Cluster(_) => format!("{shown} (cluster)"),
            Target::Single(_) => shown,
        }
    }

    /// A client for the cluster, RESP3 (sharded pub/sub needs its pushes),
    /// with `pushes` receiving them when given.
    pub(super) fn cluster_client(
        seeds: &[String],
        timeout: Duration,
        pushes: Option<tokio::sync::mpsc::UnboundedSender<redis::PushInfo>>,
    ) -> Result<ClusterClient, redis::RedisError> {
        let mut builder = redis::cluster::ClusterClientBuilder::new(seeds.to_vec())
            .use_protocol(redis::ProtocolVersion::RESP3)
            .connection_timeout(timeout)
            .response_timeout(timeout)
            // Ride out a failover: the slot map is reloaded between tries.
            .retries(4)
            .min_retry_wait(100)
            .max_retry_wait(1000);
        if let Some(tx) = pushes {
            builder = builder.push_sender(tx);
        }
        builder.build()
    }

    /// Connects for commands and scripts. A cluster must cover every slot:
    /// a partial one is refused here rather than failing later.
    pub(super) async fn connect(&self, timeout: Duration) -> Result<Conn, redis::RedisError> {
        match self {
            Target::Single(url) => {
                let client = redis::Client::open(url.as_str())?;
                let manager = ConnectionManagerConfig::new()
                    .set_connection_timeout(Some(timeout))
                    .set_response_timeout(Some(timeout))
                    .set_number_of_retries(1)
                    .set_max_delay(Duration::from_millis(500));
                Ok(Conn::Single(
                    ConnectionManager::new_with_config(client, manager).await?,
                ))
            }
            Target::Cluster(seeds) => {
                let attempt = async {
                    let client = Self::cluster_client(seeds, timeout, None)?;
                    let mut conn = client.get_async_connection().await?;
                    let info: String = redis::cmd("CLUSTER")
                        .arg("INFO")
                        .query_async(&mut conn)
                        .await?;
                    Ok::<_, redis::RedisError>((conn, info))
                };
                let (conn, info) = match attempt.await {
                    Ok(connected) => connected,
                    Err(e) => return Err(explain(seeds, timeout, e).await),
                };
                if !info.lines().any(|l| l.trim() == "cluster_state:ok") {
                    return Err(explain(
                        seeds,
                        timeout,
                        redis::RedisError::from((
                            redis::ErrorKind::Io,
                            "the Redis Cluster is not serving every slot (cluster_state is not ok)",
                        )),
                    )
                    .await);
                }
                Ok(Conn::Cluster(conn))
            }
        }
    }
}

/// Why no cluster connection could be made, in an operator's terms: asks
/// each seed on its own whether it is a cluster node and whether its
/// cluster serves every slot; `e` when none says anything clearer.
async fn explain(seeds: &[String], timeout: Duration, e: redis::RedisError) -> redis::RedisError {
    let mut why = Vec::new();
    for seed in seeds {
        let shown = Target::Single(seed.clone()).display();
        let asked = async {
            let client = redis::Client::open(seed.as_str())?;
            let mut conn = client.get_multiplexed_async_connection().await?;
            redis::cmd("CLUSTER")
                .arg("INFO")
                .query_async::<String>(&mut conn)
                .await
        };
        match tokio::time::timeout(timeout, asked).await {
            Ok(Ok(info)) => {
                let state = info
                    .lines()
                    .find_map(|l| l.trim().strip_prefix("cluster_state:"))
                    .unwrap_or("unknown")
                    .to_owned();
                if state != "ok" {
                    why.push(format!(
                        "{shown}: the Redis Cluster is not serving every slot (cluster_state:{state})"
                    ));
                }
            }
            Ok(Err(err)) if err.to_string().contains("cluster support disabled") => {
                why.push(format!("{shown}: not a Redis Cluster node (use redis://)"));
            }
            Ok(Err(err)) => why.push(format!("{shown}: {err}")),
            Err(_) => why.push(format!("{shown}: no answer")),
        }
    }
    if why.is_empty() {
        return e;
    }
    redis::RedisError::from((
        redis::ErrorKind::Io,
        "cannot join the Redis Cluster",
        why.join("; "),
    ))
}

/// A connection to one Redis or to a cluster; both reconnect by themselves.
#[derive(Clone)]
pub(super) enum Conn {
    Single(ConnectionManager),
    Cluster(ClusterConnection),
}

impl Conn {
    /// The publish command for this kind of Redis: sharded in a cluster
    /// (the channel lives on one shard instead of being broadcast to every
    /// node), plain on one server (which may predate Redis 7).
    pub(super) fn publish_command(&self) -> &'static str {
        match self {
            Conn::Single(_) => "PUBLISH",
            Conn::Cluster(_) => "SPUBLISH",
        }
    }
}

impl ConnectionLike for Conn {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        match self {
            Conn::Single(c) => c.req_packed_command(cmd),
            Conn::Cluster(c) => c.req_packed_command(cmd),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        match self {
            Conn::Single(c) => c.req_packed_commands(pipeline, offset, count),
            Conn::Cluster(c) => c.req_packed_commands(pipeline, offset, count),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            Conn::Single(c) => c.get_db(),
            Conn::Cluster(c) => c.get_db(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cluster_urls_become_seeds_with_their_credentials() {
        assert_eq!(
            Target::parse("redis://h:1/2").unwrap(),
            Target::Single("redis://h:1/2".into())
        );
        assert_eq!(
            Target::parse("redis+cluster://u:p@ss@a:1,b:2/").unwrap(),
            Target::Cluster(vec![
                "redis://u:p@ss@a:1".into(),
                "redis://u:p@ss@b:2".into()
            ])
        );
        assert_eq!(
            Target::parse("rediss+cluster://a:1").unwrap(),
            Target::Cluster(vec!["rediss://a:1".into()])
        );
        assert!(Target::parse("redis+cluster://").is_err());
        assert!(Target::parse("redis+cluster://a:1/3").is_err());
    }

    #[test]
    fn shown_targets_carry_no_password() {
        let t = Target::parse("redis+cluster://u:secret@a:1,b:2").unwrap();
        assert_eq!(t.display(), "redis://a:1 (+1 more seeds, cluster)");
        let s = Target::parse("redis://:secret@h:6379/0").unwrap();
        assert!(!s.display().contains("secret"));
    }
}
