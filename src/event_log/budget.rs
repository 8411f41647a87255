//! Byte budgets for retained events across sessions: one gateway-wide, and
//! one per principal, on top of each session's own [`super::RetentionLimits`].
//!
//! Every session's log is charged to an [`Account`]: its principal's, which
//! also charges the gateway-wide counter. When an append leaves either over
//! its limit, the appending session evicts its own oldest events (down to
//! the one just written), as it does for its per-session limits; a resume
//! below them then gets the honest 410. Admission control (`job.submit`)
//! reads the same counters to refuse new work early, from the high-water
//! mark ([`ByteCounter::at_high_water`], 7/8 of the limit) on: 429 for a
//! principal there, 503 when the whole gateway is. The last eighth is left
//! to the jobs already running, so they can go on before anything of theirs
//! is evicted.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use crate::ids::Principal;

/// A count of retained bytes against a limit.
#[derive(Debug)]
pub struct ByteCounter {
    used: AtomicUsize,
    limit: usize,
}

impl ByteCounter {
    pub fn new(limit: usize) -> Self {
        ByteCounter {
            used: AtomicUsize::new(0),
            limit,
        }
    }

    pub fn used(&self) -> usize {
        self.used.load(Ordering::Relaxed)
    }

    pub fn limit(&self) -> usize {
        self.limit
    }

    /// More is retained than the limit allows: the appender must evict.
    pub fn over(&self) -> bool {
        self.used() > self.limit
    }

    /// At or past 7/8 of the limit: admission refuses new work.
    pub fn at_high_water(&self) -> bool {
        self.used() >= self.limit - self.limit / 8
    }

    fn add(&self, bytes: usize) {
        self.used.fetch_add(bytes, Ordering::Relaxed);
    }

    fn sub(&self, bytes: usize) {
        // Every subtraction matches an earlier addition of the same bytes.
        self.used.fetch_sub(bytes, Ordering::Relaxed);
    }
}

/// What one owner's logs are charged to: its own counter and the
/// gateway-wide one.
#[derive(Debug)]
pub struct Account {
    own: ByteCounter,
    global: Arc<ByteCounter>,
}

impl Account {
    pub fn charge(&self, bytes: usize) {
        self.own.add(bytes);
        self.global.add(bytes);
    }

    pub fn refund(&self, bytes: usize) {
        self.own.sub(bytes);
        self.global.sub(bytes);
    }

    /// This owner, or the gateway as a whole, retains more than allowed.
    pub fn over(&self) -> bool {
        self.own.over() || self.global.over()
    }

    pub fn used(&self) -> usize {
        self.own.used()
    }

    /// This owner's counter.
    pub fn own(&self) -> &ByteCounter {
        &self.own
    }
}

/// The gateway's budgets and every principal's account.
#[derive(Debug)]
pub struct RetentionBudget {
    global: Arc<ByteCounter>,
    per_principal: usize,
    accounts: Mutex<HashMap<Principal, Arc<Account>>>,
    /// Logs created without an owner (tests, logs whose session record was
    /// lost): charged to the gateway-wide budget only.
    unowned: Arc<Account>,
}

impl RetentionBudget {
    pub fn new(global_limit: usize, per_principal_limit: usize) -> Self {
        let global = Arc::new(ByteCounter::new(global_limit));
        RetentionBudget {
            unowned: Arc::new(Account {
                own: ByteCounter::new(usize::MAX),
                global: global.clone(),
            }),
            global,
            per_principal: per_principal_limit,
            accounts: Mutex::new(HashMap::new()),
        }
    }

    /// No limit beyond each session's own (benchmarks, unit tests).
    pub fn unlimited() -> Self {
        RetentionBudget::new(usize::MAX, usize::MAX)
    }

    /// The account `principal`'s logs are charged to. Principals come from
    /// the configured api tokens, so the map stays small.
    pub fn account(&self, principal: &Principal) -> Arc<Account> {
        let mut accounts = self
            .accounts
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        accounts
            .entry(principal.clone())
            .or_insert_with(|| {
                Arc::new(Account {
                    own: ByteCounter::new(self.per_principal),
                    global: self.global.clone(),
                })
            })
            .clone()
    }

    pub fn unowned(&self) -> Arc<Account> {
        self.unowned.clone()
    }

    pub fn global(&self) -> &ByteCounter {
        &self.global
    }

    pub fn per_principal_limit(&self) -> usize {
        self.per_principal
    }

    /// Bytes `principal`'s sessions retain now.
    pub fn used_by(&self, principal: &Principal) -> usize {
        let accounts = self
            .accounts
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        accounts.get(principal).map_or(0, |account| account.used())
    }

    /// `principal` is at its high-water mark (see the module docs).
    pub fn principal_at_high_water(&self, principal: &Principal) -> bool {
        let accounts = self
            .accounts
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        accounts
            .get(principal)
            .is_some_and(|account| account.own().at_high_water())
    }
}
