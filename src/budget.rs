//! The byte budget: one bound on the request-body bytes the process holds at once, across every
//! connection and every listener.
//!
//! A per-request cap alone does not bound memory: eight requests at the cap hold eight times it. Every
//! body the broker buffers takes its bytes from this budget as they arrive, and gives them back when the
//! request is done ([`BudgetPermit`] is dropped). A request that cannot get its bytes waits a bounded time
//! for others to finish, then is refused (the HTTP layer answers `503` with `Retry-After`). So what the
//! process can be made to hold is `idle + budget + working set`, whatever the callers do; the README gives
//! the rule for choosing the budget from the pod's memory limit.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// Default budget: 24 MiB. With the default 16 MiB body cap, one largest body fits with room for small
/// ones; with the chart's 48 MiB memory limit, idle (under 10 MiB) + budget + working set fit.
pub const DEFAULT_BUDGET_BYTES: usize = 24 * 1024 * 1024;
/// Room a body needs in the budget besides itself: the signature's header segment read in front of it.
pub const PREFIX_ALLOWANCE: usize = 16 * 1024;
/// Idle RSS of the broker (bench/RESULTS.md: about 5 MiB for the shipped build, 9 MiB for glibc's),
/// rounded up; with [`WORKING_SET_BYTES`], what the README's rule for the memory limit adds to the budget.
pub const IDLE_BYTES: usize = 10 * 1024 * 1024;
/// Working set besides buffered bodies (connections, crypto jobs, answers), rounded up.
pub const WORKING_SET_BYTES: usize = 8 * 1024 * 1024;
/// How long a request waits for budget before it is refused.
pub const DEFAULT_WAIT: Duration = Duration::from_secs(2);
/// Largest budget accepted (tokio's semaphore counts permits in a `usize` shifted by 3 bits, and one
/// acquisition takes at most `u32::MAX`).
pub const MAX_BUDGET_BYTES: usize = 1 << 31;

/// Why bytes could not be had.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum BudgetError {
    /// More than the whole budget was asked for: it can never be granted.
    #[error("the request needs more than the whole body budget")]
    TooLarge,
    /// Others hold the budget and did not give it back in time.
    #[error("the body budget is in use; try again shortly")]
    Exhausted,
}

/// The process-wide budget. Cheap to clone (shared).
#[derive(Clone)]
pub struct ByteBudget {
    inner: Arc<Inner>,
}

struct Inner {
    semaphore: Arc<Semaphore>,
    total: usize,
    wait: Duration,
    /// Body bytes read, ever (what `/metrics` and the tests count).
    bytes_read: AtomicU64,
    /// Requests refused for want of budget.
    exhausted: AtomicU64,
    /// The most bytes held at once since start.
    peak: AtomicUsize,
    /// Bodies refused, by reason (in the order of [`REFUSALS`]).
    refusals: [AtomicU64; REFUSALS.len()],
}

/// Why a body may be refused, as counted by [`ByteBudget::count_refusal`].
pub const REFUSALS: [&str; 4] = ["too_large", "timeout", "budget_exhausted", "aborted"];

impl std::fmt::Debug for ByteBudget {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ByteBudget")
            .field("total", &self.inner.total)
            .field("in_use", &self.in_use())
            .finish()
    }
}

impl ByteBudget {
    /// A budget of `total` bytes (clamped to `1..=MAX_BUDGET_BYTES`); a request waits at most `wait`.
    pub fn new(total: usize, wait: Duration) -> Self {
        let total = total.clamp(1, MAX_BUDGET_BYTES);
        Self {
            inner: Arc::new(Inner {
                semaphore: Arc::new(Semaphore::new(total)),
                total,
                wait,
                bytes_read: AtomicU64::new(0),
                exhausted: AtomicU64::new(0),
                peak: AtomicUsize::new(0),
                refusals: Default::default(),
            }),
        }
    }

    pub fn total(&self) -> usize {
        self.inner.total
    }

    /// Bytes held by requests now.
    pub fn in_use(&self) -> usize {
        self.inner
            .total
            .saturating_sub(self.inner.semaphore.available_permits())
    }

    /// The most bytes held at once since start.
    pub fn peak(&self) -> usize {
        self.inner.peak.load(Ordering::Relaxed)
    }

    /// Body bytes read since start.
    pub fn bytes_read(&self) -> u64 {
        self.inner.bytes_read.load(Ordering::Relaxed)
    }

    /// Requests refused because the budget stayed in use.
    pub fn exhausted(&self) -> u64 {
        self.inner.exhausted.load(Ordering::Relaxed)
    }

    /// Records bytes read from a client.
    pub fn count_read(&self, bytes: usize) {
        self.inner
            .bytes_read
            .fetch_add(bytes as u64, Ordering::Relaxed);
    }

    /// Counts a refused body; `reason` is one of [`REFUSALS`].
    pub fn count_refusal(&self, reason: &str) {
        if let Some(index) = REFUSALS.iter().position(|r| *r == reason) {
            self.inner.refusals[index].fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Bodies refused since start, by reason.
    pub fn refusals(&self) -> [(&'static str, u64); REFUSALS.len()] {
        let mut out = [("", 0); REFUSALS.len()];
        for (slot, (name, count)) in out
            .iter_mut()
            .zip(REFUSALS.iter().zip(&self.inner.refusals))
        {
            *slot = (name, count.load(Ordering::Relaxed));
        }
        out
    }

    /// An empty permit, to grow with [`ByteBudget::grow`].
    pub fn empty(&self) -> BudgetPermit {
        BudgetPermit {
            budget: self.clone(),
            held: None,
            bytes: 0,
        }
    }

    /// Grows `permit` to hold `bytes` in all (no change when it holds that many already). Waits at most
    /// the budget's wait.
    pub async fn grow(&self, permit: &mut BudgetPermit, bytes: usize) -> Result<(), BudgetError> {
        let more = bytes.saturating_sub(permit.bytes);
        if more == 0 {
            return Ok(());
        }
        if bytes > self.inner.total {
            return Err(BudgetError::TooLarge);
        }
        let count = u32::try_from(more).map_err(|_| BudgetError::TooLarge)?;
        let semaphore = Arc::clone(&self.inner.semaphore);
        // Free bytes are taken without a timer; only a request that must wait pays for one.
        let granted = match Arc::clone(&semaphore).try_acquire_many_owned(count) {
            Ok(granted) => granted,
            Err(_) => {
                match tokio::time::timeout(self.inner.wait, semaphore.acquire_many_owned(count))
                    .await
                {
                    Ok(Ok(granted)) => granted,
                    _ => {
                        self.inner.exhausted.fetch_add(1, Ordering::Relaxed);
                        return Err(BudgetError::Exhausted);
                    }
                }
            }
        };
        match permit.held.as_mut() {
            Some(held) => held.merge(granted),
            None => permit.held = Some(granted),
        }
        permit.bytes = bytes;
        self.inner.peak.fetch_max(self.in_use(), Ordering::Relaxed);
        Ok(())
    }
}

/// Bytes taken from the budget; given back when dropped.
pub struct BudgetPermit {
    budget: ByteBudget,
    held: Option<OwnedSemaphorePermit>,
    bytes: usize,
}

impl BudgetPermit {
    /// Bytes held.
    pub fn bytes(&self) -> usize {
        self.bytes
    }

    /// The budget this permit draws on.
    pub fn budget(&self) -> &ByteBudget {
        &self.budget
    }
}

impl std::fmt::Debug for BudgetPermit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "BudgetPermit({} bytes)", self.bytes)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn bytes_are_held_until_the_permit_is_dropped() {
        let budget = ByteBudget::new(100, Duration::from_secs(1));
        let mut first = budget.empty();
        budget.grow(&mut first, 60).await.unwrap();
        budget.grow(&mut first, 40).await.unwrap();
        assert_eq!((first.bytes(), budget.in_use()), (60, 60));
        let mut second = budget.empty();
        budget.grow(&mut second, 40).await.unwrap();
        assert_eq!(budget.in_use(), 100);
        // The budget is spent: a third waits the bounded time, then is refused.
        let mut third = budget.empty();
        let started = tokio::time::Instant::now();
        assert_eq!(
            budget.grow(&mut third, 1).await,
            Err(BudgetError::Exhausted)
        );
        assert_eq!(started.elapsed(), Duration::from_secs(1));
        assert_eq!(budget.exhausted(), 1);
        drop(first);
        assert_eq!(budget.in_use(), 40);
        budget.grow(&mut third, 60).await.unwrap();
        assert_eq!(budget.in_use(), 100);
        drop((second, third));
        assert_eq!(budget.in_use(), 0);
    }

    #[tokio::test(start_paused = true)]
    async fn a_waiter_gets_bytes_given_back_while_it_waits() {
        let budget = ByteBudget::new(10, Duration::from_secs(5));
        let mut held = budget.empty();
        budget.grow(&mut held, 10).await.unwrap();
        let waiter = {
            let budget = budget.clone();
            tokio::spawn(async move {
                let mut permit = budget.empty();
                budget.grow(&mut permit, 5).await.map(|()| permit.bytes())
            })
        };
        tokio::time::sleep(Duration::from_secs(1)).await;
        drop(held);
        assert_eq!(waiter.await.unwrap(), Ok(5));
    }

    /// The chart's memory limit holds idle + the default budget + the working set (the README's rule).
    #[test]
    fn the_charts_memory_limit_holds_the_default_budget() {
        let values = include_str!("../helm/aa-token-broker/values.yaml");
        let limit = values
            .lines()
            .skip_while(|l| !l.trim_start().starts_with("limits:"))
            .find_map(|l| l.trim().strip_prefix("memory:"))
            .and_then(|v| v.trim().strip_suffix("Mi"))
            .and_then(|v| v.parse::<usize>().ok())
            .expect("the sidecar's memory limit in Mi");
        let needed = IDLE_BYTES + DEFAULT_BUDGET_BYTES + WORKING_SET_BYTES;
        assert!(
            limit * 1024 * 1024 >= needed,
            "the chart's {limit}Mi cannot hold idle + budget + working set ({} MiB)",
            needed >> 20
        );
        // The default body cap fits the default budget with its prefix.
        const {
            assert!(
                crate::http::jws::DEFAULT_MAX_BODY_BYTES + PREFIX_ALLOWANCE <= DEFAULT_BUDGET_BYTES
            )
        };
    }

    #[tokio::test]
    async fn more_than_the_whole_budget_is_never_granted() {
        let budget = ByteBudget::new(10, Duration::from_secs(5));
        let mut permit = budget.empty();
        assert_eq!(
            budget.grow(&mut permit, 11).await,
            Err(BudgetError::TooLarge)
        );
        assert_eq!(budget.in_use(), 0);
    }
}
