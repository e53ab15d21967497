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
//! Each hash works in ~19 MiB of memory. A hashing thread allocates that
//! once and hashes in it ever after, so memory is one block per thread
//! however many logins there are; after [`MEMORY_IDLE`] with no work it
//! gives the block's pages back to the system (it keeps the allocation), so
//! a node whose users are logged in and chatting holds none of it.
//! (Tokio's blocking pool, used before, grew to many threads whose
//! allocator arenas each kept blocks: most of a gigabyte after a few hundred
//! logins. Mapping and unmapping a block per hash keeps memory low too, but
//! takes the process's memory-map lock from a low-priority thread that may
//! be preempted holding it, stalling chat for milliseconds during a login
//! storm.)
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

/// How long a hashing thread keeps its argon2 memory with no work. Long
/// enough that a storm of logins never maps and unmaps it per hash;
/// short against a node's life.
const MEMORY_IDLE: std::time::Duration = std::time::Duration::from_secs(10);

/// Work for a hashing thread, given the thread's own argon2 memory.
type Job = Box<dyn FnOnce(&mut Vec<Block>) + Send>;

/// Jobs waiting for a hashing thread. A mutex and a condition variable
/// rather than a channel: every idle thread waits on its own clock, so each
/// gives its memory back after [`MEMORY_IDLE`] (threads queued on a
/// receiver's lock could not).
#[derive(Default)]
struct JobQueue {
    state: std::sync::Mutex<Pending>,
    ready: std::sync::Condvar,
    /// Hashing threads whose argon2 memory is resident now.
    holding: std::sync::atomic::AtomicUsize,
}

#[derive(Default)]
struct Pending {
    jobs: std::collections::VecDeque<Job>,
    /// Every pool handle is gone: the threads end.
    closed: bool,
}

impl JobQueue {
    fn lock(&self) -> std::sync::MutexGuard<'_, Pending> {
        // Nothing panics while holding it; a poisoned queue is still whole.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn push(&self, job: Job) {
        self.lock().jobs.push_back(job);
        self.ready.notify_one();
    }

    /// The next job, waiting at most `idle` if given; `None` once the
    /// pool is gone.
    fn next(&self, idle: Option<std::time::Duration>) -> Next {
        let mut state = self.lock();
        loop {
            if let Some(job) = state.jobs.pop_front() {
                return Next::Job(job);
            }
            if state.closed {
                return Next::Closed;
            }
            state = match idle {
                None => self.ready.wait(state).unwrap_or_else(|e| e.into_inner()),
                Some(idle) => {
                    let (state, waited) = self
                        .ready
                        .wait_timeout(state, idle)
                        .unwrap_or_else(|e| e.into_inner());
                    if waited.timed_out() && state.jobs.is_empty() && !state.closed {
                        return Next::Idle;
                    }
                    state
                }
            };
        }
    }
}

/// What a hashing thread does next.
enum Next {
    Job(Job),
    /// No job came for the time asked: give the memory back.
    Idle,
    Closed,
}

/// Gives `memory`'s pages back to the system, keeping the allocation.
/// Freeing it would give back nothing: a block this size stays in the
/// allocator's heap (glibc raises its mmap threshold past the first one
/// freed). The next hash finds zeroed pages, which are valid blocks.
fn release(memory: &mut [Block]) {
    #[cfg(target_os = "linux")]
    {
        // SAFETY: a plain query.
        let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
        let page = usize::try_from(page).unwrap_or(4096).max(1);
        let start = memory.as_mut_ptr() as usize;
        let end = start + std::mem::size_of_val(memory);
        // Whole pages inside the allocation only: the allocator's own
        // bookkeeping before and after it stays.
        let (first, last) = (start.next_multiple_of(page), end / page * page);
        if last > first {
            // SAFETY: the range lies inside `memory`, borrowed exclusively
            // here; its pages read as zeros afterwards, and any bytes are a
            // valid `Block` (plain integers).
            unsafe {
                libc::madvise(
                    first as *mut libc::c_void,
                    last - first,
                    libc::MADV_DONTNEED,
                );
            }
        }
    }
    #[cfg(not(target_os = "linux"))]
    let _ = memory;
}

/// The pools' side of the queue: when the last pool handle goes, so do
/// the threads.
struct JobSender(Arc<JobQueue>);

impl Drop for JobSender {
    fn drop(&mut self) {
        self.0.lock().closed = true;
        self.0.ready.notify_all();
    }
}

impl std::fmt::Debug for JobSender {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JobSender").finish_non_exhaustive()
    }
}

/// Hashes and verifies passwords with argon2id (default parameters).
#[derive(Debug, Clone)]
pub struct PasswordHasherPool {
    permits: Arc<Semaphore>,
    jobs: Arc<JobSender>,
    /// A valid hash of a password nobody knows, verified when the account
    /// does not exist.
    dummy: Arc<str>,
}

impl PasswordHasherPool {
    /// A pool computing at most `parallel` hashes at once, on threads of
    /// `niceness` (`None`: the idle scheduling class).
    pub fn new(parallel: usize, niceness: Option<i32>) -> Result<Self, AuthError> {
        Self::with_idle(parallel, niceness, MEMORY_IDLE)
    }

    /// As [`PasswordHasherPool::new`], keeping argon2 memory for `idle`.
    fn with_idle(
        parallel: usize,
        niceness: Option<i32>,
        idle: std::time::Duration,
    ) -> Result<Self, AuthError> {
        let dummy = hash_now(b"dummy password for absent accounts", &mut Vec::new())?;
        let parallel = parallel.max(1);
        // At most `parallel` jobs are queued or running (the permits).
        let queue = Arc::new(JobQueue::default());
        for i in 0..parallel {
            let queue = queue.clone();
            std::thread::Builder::new()
                .name(format!("hash-{i}"))
                .spawn(move || {
                    lower_priority(niceness);
                    use std::sync::atomic::Ordering;
                    let (mut memory, mut resident) = (Vec::new(), false);
                    loop {
                        match queue.next(resident.then_some(idle)) {
                            Next::Job(job) => {
                                job(&mut memory);
                                if !resident && !memory.is_empty() {
                                    resident = true;
                                    queue.holding.fetch_add(1, Ordering::Relaxed);
                                }
                            }
                            Next::Idle => {
                                release(&mut memory);
                                resident = false;
                                queue.holding.fetch_sub(1, Ordering::Relaxed);
                            }
                            Next::Closed => break,
                        }
                    }
                })
                .map_err(|e| AuthError::Hash(format!("cannot start a hashing thread: {e}")))?;
        }
        Ok(PasswordHasherPool {
            permits: Arc::new(Semaphore::new(parallel)),
            jobs: Arc::new(JobSender(queue)),
            dummy: dummy.into(),
        })
    }

    /// Hashing threads holding argon2 memory now.
    #[cfg(test)]
    fn holding_memory(&self) -> usize {
        self.jobs
            .0
            .holding
            .load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Runs `work` on a hashing thread and waits for its result.
    async fn run<T: Send + 'static>(
        &self,
        work: impl FnOnce(&mut Vec<Block>) -> T + Send + 'static,
    ) -> Result<T, AuthError> {
        let _permit = self.permit().await?;
        let (done, result) = tokio::sync::oneshot::channel();
        self.jobs.0.push(Box::new(move |memory: &mut Vec<Block>| {
            let _ = done.send(work(memory));
        }));
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

    #[tokio::test]
    async fn an_idle_hashing_thread_gives_its_memory_back() {
        use std::time::{Duration, Instant};
        let idle = Duration::from_millis(500);
        let pool = PasswordHasherPool::with_idle(2, Some(0), idle).expect("pool");
        assert_eq!(pool.holding_memory(), 0, "nothing before the first hash");
        let pw = Password::parse("s3cret").expect("pw");
        let phc = pool.hash(pw).await.expect("hash");
        let hashed = Instant::now();
        // Counted just after the result is sent.
        while pool.holding_memory() == 0 && hashed.elapsed() < idle / 2 {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        assert_eq!(pool.holding_memory(), 1, "kept for the next hash");
        while pool.holding_memory() > 0 && hashed.elapsed() < Duration::from_secs(10) {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert_eq!(pool.holding_memory(), 0, "given back once idle");
        assert!(hashed.elapsed() >= idle, "not before it was idle that long");
        assert!(
            pool.verify("s3cret".into(), Some(phc))
                .await
                .expect("verify")
        );
    }
}
