//! Password hashing: argon2id, off the reactor threads, bounded in parallel.
//!
//! Hashing is deliberately slow and memory-hungry, so it runs on a few
//! threads of its own, behind a semaphore. Their priority is a choice
//! (`Config::hash_niceness`). By default (niceness 0) they compete with
//! chat as equals, and every login of a storm gets through, at a higher
//! chat tail latency. In the idle scheduling class chat traffic gets the
//! core first, and during a storm on a busy core the logins queue (for at
//! most [`HASH_WAIT`], then "server busy, try again") (`docs/benchmarks.md`,
//! "A login storm").
//! Each hash works in ~19 MiB of memory. Every hashing thread allocates
//! that once and hashes in it ever after, so memory is one block per thread
//! however many logins there are. (Tokio's blocking pool, used before, grew
//! to many threads whose allocator arenas each kept blocks: most of a
//! gigabyte after a few hundred logins. Mapping and unmapping a block per
//! hash keeps memory low too, but takes the process's memory-map lock from a
//! low-priority thread that may be preempted holding it, stalling chat for
//! milliseconds during a login storm.)
//! A login for an account that does not exist still verifies against a
//! fixed dummy hash, so response time does not reveal which ids exist.

pub mod token;

use std::sync::Arc;

use argon2::password_hash::phc::{Output, ParamsString, PasswordHash, Salt};
use argon2::{Algorithm, Argon2, Block, Params, Version};
use tokio::sync::Semaphore;

use crate::model::Password;

/// Why hashing could not run.
#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    #[error("password hashing failed: {0}")]
    Hash(String),
    #[error("password hashing task failed")]
    Join,
    #[error("too many logins at once")]
    Busy,
}

/// How long a login or registration waits for a hashing slot. Long enough
/// to ride out a storm (users would rather wait than retry, and retries
/// only add load); bounded so that nobody waits forever.
const HASH_WAIT: std::time::Duration = std::time::Duration::from_secs(30);

/// Work for a hashing thread, given the thread's own argon2 memory.
type Job = Box<dyn FnOnce(&mut Vec<Block>) + Send>;

/// Hashes and verifies passwords with argon2id (default parameters).
#[derive(Debug, Clone)]
pub struct PasswordHasherPool {
    permits: Arc<Semaphore>,
    jobs: std::sync::mpsc::SyncSender<Job>,
    /// A valid hash of a password nobody knows, verified when the account
    /// does not exist.
    dummy: Arc<str>,
}

impl PasswordHasherPool {
    /// A pool computing at most `parallel` hashes at once, on threads of
    /// `niceness` (`None`: the idle scheduling class).
    pub fn new(parallel: usize, niceness: Option<i32>) -> Result<Self, AuthError> {
        let dummy = hash_now(b"dummy password for absent accounts", &mut Vec::new())?;
        let parallel = parallel.max(1);
        // At most `parallel` jobs are queued or running (the permits), so
        // the queue never fills.
        let (jobs, rx) = std::sync::mpsc::sync_channel::<Job>(parallel);
        let rx = Arc::new(std::sync::Mutex::new(rx));
        for i in 0..parallel {
            let rx = rx.clone();
            std::thread::Builder::new()
                .name(format!("hash-{i}"))
                .spawn(move || {
                    lower_priority(niceness);
                    let mut memory = Vec::new();
                    loop {
                        // The lock is held only while waiting for a job.
                        let job = match rx.lock() {
                            Ok(rx) => rx.recv(),
                            Err(_) => break,
                        };
                        match job {
                            Ok(job) => job(&mut memory),
                            Err(_) => break,
                        }
                    }
                })
                .map_err(|e| AuthError::Hash(format!("cannot start a hashing thread: {e}")))?;
        }
        Ok(PasswordHasherPool {
            permits: Arc::new(Semaphore::new(parallel)),
            jobs,
            dummy: dummy.into(),
        })
    }

    /// Runs `work` on a hashing thread and waits for its result.
    async fn run<T: Send + 'static>(
        &self,
        work: impl FnOnce(&mut Vec<Block>) -> T + Send + 'static,
    ) -> Result<T, AuthError> {
        let _permit = self.permit().await?;
        let (done, result) = tokio::sync::oneshot::channel();
        self.jobs
            .try_send(Box::new(move |memory: &mut Vec<Block>| {
                let _ = done.send(work(memory));
            }))
            .map_err(|_| AuthError::Busy)?;
        result.await.map_err(|_| AuthError::Join)
    }

    async fn permit(&self) -> Result<tokio::sync::SemaphorePermit<'_>, AuthError> {
        match tokio::time::timeout(HASH_WAIT, self.permits.acquire()).await {
            Ok(Ok(p)) => Ok(p),
            Ok(Err(_)) => Err(AuthError::Join),
            Err(_) => Err(AuthError::Busy),
        }
    }

    /// The PHC string (`$argon2id$v=19$...`) of `password` with a fresh salt.
    pub async fn hash(&self, password: Password) -> Result<String, AuthError> {
        self.run(move |memory| hash_now(password.as_bytes(), memory))
            .await?
    }

    /// Whether `password` matches `phc`; with `None`, checks against the dummy
    /// hash (always false) in the same time.
    pub async fn verify(&self, password: String, phc: Option<String>) -> Result<bool, AuthError> {
        let exists = phc.is_some();
        let phc = phc.unwrap_or_else(|| self.dummy.to_string());
        let ok = self
            .run(move |memory| verify_now(password.as_bytes(), &phc, memory))
            .await?;
        Ok(ok && exists)
    }
}

/// Gives the calling thread `niceness` (Linux: per thread), or with `None`
/// puts it in the idle scheduling class: it then runs only when no chat
/// work wants the core (where that class is refused, niceness 19 does most
/// of the same). Failing is harmless: hashing then competes as an equal.
fn lower_priority(niceness: Option<i32>) {
    #[cfg(target_os = "linux")]
    // SAFETY: plain system calls on the calling thread's own id, with a
    // zeroed parameter struct (priority 0 is what SCHED_IDLE requires).
    unsafe {
        let tid = libc::syscall(libc::SYS_gettid) as libc::id_t;
        match niceness {
            Some(n) => {
                libc::setpriority(libc::PRIO_PROCESS, tid, n);
            }
            None => {
                let param: libc::sched_param = std::mem::zeroed();
                if libc::sched_setscheduler(0, libc::SCHED_IDLE, &param) != 0 {
                    libc::setpriority(libc::PRIO_PROCESS, tid, 19);
                }
            }
        }
    }
    #[cfg(not(target_os = "linux"))]
    let _ = niceness;
}

/// `memory` sized for `params` (grown once, then reused).
fn blocks<'a>(memory: &'a mut Vec<Block>, params: &Params) -> &'a mut [Block] {
    let n = params.block_count();
    if memory.len() < n {
        memory.resize(n, Block::default());
    }
    &mut memory[..n]
}

/// The PHC string of `password` under the default argon2id parameters, with
/// a fresh random salt, computed in `memory`.
fn hash_now(password: &[u8], memory: &mut Vec<Block>) -> Result<String, AuthError> {
    let err = |e: &dyn std::fmt::Display| AuthError::Hash(e.to_string());
    let params = Params::default();
    let mut salt = [0u8; 16];
    getrandom::fill(&mut salt).map_err(|e| err(&e))?;
    let mut out = [0u8; Params::DEFAULT_OUTPUT_LEN];
    let argon2 = Argon2::new(Algorithm::Argon2id, Version::V0x13, params.clone());
    argon2
        .hash_password_into_with_memory(password, &salt, &mut out, blocks(memory, &params))
        .map_err(|e| err(&e))?;
    let phc = PasswordHash {
        algorithm: Algorithm::Argon2id.ident(),
        version: Some(Version::V0x13.into()),
        params: ParamsString::try_from(&params).map_err(|e| err(&e))?,
        salt: Some(Salt::new(&salt).map_err(|e| err(&e))?),
        hash: Some(Output::new(&out).map_err(|e| err(&e))?),
    };
    Ok(phc.to_string())
}

/// Whether `password` matches the PHC string `phc` (any argon2 variant and
/// parameters it names), computed in `memory`. Anything unparsable matches
/// nothing. The comparison is constant-time.
fn verify_now(password: &[u8], phc: &str, memory: &mut Vec<Block>) -> bool {
    let mut check = || -> Option<bool> {
        let hash = PasswordHash::new(phc).ok()?;
        let algorithm = Algorithm::try_from(hash.algorithm.as_str()).ok()?;
        let version = match hash.version {
            Some(v) => Version::try_from(v).ok()?,
            None => Version::default(),
        };
        let params = Params::try_from(&hash).ok()?;
        let salt = hash.salt?;
        let expected = hash.hash?;
        let mut out = vec![0u8; expected.len()];
        Argon2::new(algorithm, version, params.clone())
            .hash_password_into_with_memory(
                password,
                salt.as_ref(),
                &mut out,
                blocks(memory, &params),
            )
            .ok()?;
        Some(Output::new(&out).ok()? == expected)
    };
    check().unwrap_or(false)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn hashes_verify_and_are_salted() {
        let pool = PasswordHasherPool::new(2, None).expect("pool");
        let pw = Password::parse("s3cret").expect("pw");
        let a = pool.hash(pw.clone()).await.expect("hash");
        let b = pool.hash(pw).await.expect("hash");
        assert!(a.starts_with("$argon2id$"), "{a}");
        assert_ne!(a, b, "each hash has its own salt");
        assert!(
            pool.verify("s3cret".into(), Some(a.clone()))
                .await
                .expect("verify")
        );
        assert!(!pool.verify("wrong".into(), Some(a)).await.expect("verify"));
        assert!(!pool.verify("s3cret".into(), None).await.expect("verify"));
        assert!(
            !pool
                .verify("x".into(), Some("garbage".into()))
                .await
                .expect("verify")
        );
    }
}
