//! A circuit breaker in front of a [`MessageStore`]: when the store keeps failing, calls
//! fail at once with [`StoreError::Unavailable`] instead of each waiting for its own
//! timeout, so partition owners answer UNAVAILABLE quickly (clients retry the same
//! `client_msg_id`) rather than queueing batches behind a dead store.
//!
//! # States
//!
//! - **Closed**: every call goes to the store. A call that fails for want of the store
//!   ([`StoreError::Storage`], [`StoreError::Closed`], [`StoreError::Unavailable`]) is a
//!   failure; any other outcome (success, or an answer such as a conflict) is not.
//!   [`BreakerConfig::failures`] consecutive failures open the breaker, and so does a
//!   share of at least [`BreakerConfig::failure_percent`] failures among the last
//!   [`WINDOW`] calls: a store whose reads answer but whose writes time out never fails
//!   twice in a row (every send batch reads before it appends), yet it fails half the
//!   calls.
//! - **Open** for [`BreakerConfig::cooldown`]: calls are refused without reaching the
//!   store.
//! - **Half-open**: after the cooldown the next call is let through as a probe while the
//!   others are still refused. If the probe reaches the store, the breaker closes; if it
//!   fails (or is dropped unfinished), the breaker opens for another cooldown.
//!
//! Only a probe closes the breaker: a call admitted before the breaker opened that
//! happens to finish well later says little about the store now.
//!
//! # What it never does
//!
//! It never retries and never times a call out itself (the store implementations bound
//! each call: `--store-timeout-ms`), and a refused call stored nothing, so the messages
//! service's guarantees are unchanged: nothing is acked that was not stored, and a
//! retried send finds its original Ack.
//!
//! Metrics: `natter_store_breaker_open` (gauge, 0 or 1), `natter_store_breaker_rejections_total`
//! (calls refused while open or half-open) and `natter_store_breaker_opened_total`
//! (transitions to open, probes that failed included). A transition to open is logged
//! as a warning, back to closed as info.

use std::{
    sync::{Arc, Mutex},
    time::Duration,
};

use natter_proto::{ConversationId, DeviceId, Seq, UserId, v1};
use tokio::time::Instant;

use crate::store::{
    CursorAdvance, DedupeKey, DeviceCursor, MemberCursor, MessageStore, NewMessage, StoreError,
};

/// The calls over which [`BreakerConfig::failure_percent`] is measured.
const WINDOW: u32 = 20;

/// When the breaker opens and for how long.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BreakerConfig {
    /// Consecutive failed calls that open the breaker; 0 turns the breaker off (every
    /// call goes to the store).
    pub failures: u32,
    /// Failed calls among the last 20, in percent, that open the breaker (once 20 calls
    /// were made since it last closed); 0 checks no ratio.
    pub failure_percent: u32,
    /// How long the breaker stays open before it lets one probe through.
    pub cooldown: Duration,
}

impl Default for BreakerConfig {
    fn default() -> Self {
        BreakerConfig {
            failures: 5,
            failure_percent: 50,
            cooldown: Duration::from_secs(2),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Closed {
        /// Failures since the last call that was not one.
        failures: u32,
        /// The outcomes of the last `seen` calls (up to [`WINDOW`]), newest in bit 0,
        /// 1 for a failure.
        window: u32,
        seen: u32,
    },
    Open {
        until: Instant,
    },
    /// One probe is at the store.
    HalfOpen,
}

const CLOSED: State = State::Closed {
    failures: 0,
    window: 0,
    seen: 0,
};

/// A [`MessageStore`] that refuses calls while the store behind it is failing (see the
/// module docs).
pub struct Breaker {
    inner: Arc<dyn MessageStore>,
    config: BreakerConfig,
    state: Mutex<State>,
}

impl std::fmt::Debug for Breaker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Breaker")
            .field("config", &self.config)
            .field("state", &*self.lock())
            .finish_non_exhaustive()
    }
}

/// Whether a call's outcome says the store is unreachable or failing.
fn is_failure<T>(outcome: &Result<T, StoreError>) -> bool {
    matches!(
        outcome,
        Err(StoreError::Storage(_) | StoreError::Closed | StoreError::Unavailable(_))
    )
}

/// A call let through; reports its outcome to the breaker (a probe dropped unfinished
/// reports a failure, so the next call after the cooldown probes again).
struct Ticket<'a> {
    breaker: &'a Breaker,
    probe: bool,
    done: bool,
}

impl Ticket<'_> {
    fn finish(mut self, failed: bool) {
        self.done = true;
        self.breaker.record(self.probe, failed);
    }
}

impl Drop for Ticket<'_> {
    fn drop(&mut self) {
        if !self.done && self.probe {
            self.breaker.record(true, true);
        }
    }
}

impl Breaker {
    /// Wraps `inner`. The gauge `natter_store_breaker_open` starts at 0.
    pub fn new(inner: Arc<dyn MessageStore>, config: BreakerConfig) -> Arc<Breaker> {
        metrics::gauge!("natter_store_breaker_open").set(0.0);
        Arc::new(Breaker {
            inner,
            config,
            state: Mutex::new(CLOSED),
        })
    }

    /// True while calls are refused (open, or half-open with a probe at the store).
    pub fn is_open(&self) -> bool {
        !matches!(*self.lock(), State::Closed { .. })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        // Every update is one assignment: a poisoned state is still a valid one.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Lets a call through (as a probe after the cooldown), or refuses it.
    fn admit(&self) -> Result<Ticket<'_>, StoreError> {
        let mut state = self.lock();
        let probe = match *state {
            State::Closed { .. } => false,
            State::Open { until } if Instant::now() >= until => {
                *state = State::HalfOpen;
                true
            }
            State::Open { .. } | State::HalfOpen => {
                drop(state);
                metrics::counter!("natter_store_breaker_rejections_total").increment(1);
                return Err(StoreError::Unavailable(
                    "the message store is failing; not tried (circuit breaker open)".into(),
                ));
            }
        };
        Ok(Ticket {
            breaker: self,
            probe,
            done: false,
        })
    }

    fn record(&self, probe: bool, failed: bool) {
        let mut state = self.lock();
        let open = |state: &mut State| {
            *state = State::Open {
                until: Instant::now() + self.config.cooldown,
            };
            metrics::gauge!("natter_store_breaker_open").set(1.0);
            metrics::counter!("natter_store_breaker_opened_total").increment(1);
        };
        match (*state, probe, failed) {
            (State::HalfOpen, true, false) => {
                *state = CLOSED;
                metrics::gauge!("natter_store_breaker_open").set(0.0);
                tracing::info!("message store answers again: circuit breaker closed");
            }
            (State::HalfOpen, true, true) => {
                open(&mut state);
                tracing::debug!(
                    cooldown_ms = self.config.cooldown.as_millis(),
                    "message store probe failed: circuit breaker stays open"
                );
            }
            (
                State::Closed {
                    failures,
                    window,
                    seen,
                },
                false,
                _,
            ) => {
                let failures = if failed {
                    failures.saturating_add(1)
                } else {
                    0
                };
                let window = ((window << 1) | u32::from(failed)) & ((1 << WINDOW) - 1);
                let seen = (seen + 1).min(WINDOW);
                let recent = window.count_ones();
                let percent = self.config.failure_percent;
                if failed
                    && (failures >= self.config.failures
                        || (percent > 0 && seen == WINDOW && recent * 100 >= percent * WINDOW))
                {
                    open(&mut state);
                    tracing::warn!(
                        consecutive = failures,
                        of_last_calls = format!("{recent}/{seen}"),
                        cooldown_ms = self.config.cooldown.as_millis(),
                        "message store failing: circuit breaker open, calls fail fast"
                    );
                } else {
                    *state = State::Closed {
                        failures,
                        window,
                        seen,
                    };
                }
            }
            // A call admitted before the breaker opened: it decides nothing now.
            _ => {}
        }
    }

    /// Runs `call` unless the breaker refuses it, and records its outcome.
    async fn guarded<T>(
        &self,
        call: impl Future<Output = Result<T, StoreError>>,
    ) -> Result<T, StoreError> {
        if self.config.failures == 0 {
            return call.await;
        }
        let ticket = self.admit()?;
        let outcome = call.await;
        ticket.finish(is_failure(&outcome));
        outcome
    }
}

#[async_trait::async_trait]
impl MessageStore for Breaker {
    async fn append(&self, batch: Vec<NewMessage>) -> Result<(), StoreError> {
        self.guarded(self.inner.append(batch)).await
    }

    async fn head(&self, conversation: &ConversationId) -> Result<Seq, StoreError> {
        self.guarded(self.inner.head(conversation)).await
    }

    async fn find_dedupe(&self, keys: Vec<DedupeKey>) -> Result<Vec<Option<v1::Ack>>, StoreError> {
        self.guarded(self.inner.find_dedupe(keys)).await
    }

    async fn read_after(
        &self,
        conversation: &ConversationId,
        after: Seq,
        limit: usize,
    ) -> Result<Vec<v1::Message>, StoreError> {
        self.guarded(self.inner.read_after(conversation, after, limit))
            .await
    }

    async fn read_before(
        &self,
        conversation: &ConversationId,
        before: Seq,
        limit: usize,
    ) -> Result<Vec<v1::Message>, StoreError> {
        self.guarded(self.inner.read_before(conversation, before, limit))
            .await
    }

    async fn user_conversations(
        &self,
        user: UserId,
    ) -> Result<Vec<(ConversationId, Seq)>, StoreError> {
        self.guarded(self.inner.user_conversations(user)).await
    }

    async fn advance_cursor(
        &self,
        user: UserId,
        device: DeviceId,
        conversation: &ConversationId,
        kind: v1::ReceiptKind,
        seq: Seq,
    ) -> Result<CursorAdvance, StoreError> {
        self.guarded(
            self.inner
                .advance_cursor(user, device, conversation, kind, seq),
        )
        .await
    }

    async fn device_cursors(
        &self,
        user: UserId,
        device: DeviceId,
    ) -> Result<Vec<DeviceCursor>, StoreError> {
        self.guarded(self.inner.device_cursors(user, device)).await
    }

    async fn member_cursors(
        &self,
        conversation: &ConversationId,
    ) -> Result<Vec<MemberCursor>, StoreError> {
        self.guarded(self.inner.member_cursors(conversation)).await
    }

    async fn redact(
        &self,
        conversation: &ConversationId,
        seq: Seq,
    ) -> Result<Option<v1::Message>, StoreError> {
        self.guarded(self.inner.redact(conversation, seq)).await
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicU8, AtomicUsize, Ordering};

    use tokio::sync::Notify;

    use super::*;

    const OK: u8 = 0;
    const DOWN: u8 = 1;
    const CONFLICT: u8 = 2;

    /// A store double: every call answers `mode` (after `gate`, when one is set), and
    /// counts the calls that reached it.
    #[derive(Default)]
    struct Fake {
        mode: AtomicU8,
        calls: AtomicUsize,
        gate: Mutex<Option<Arc<Notify>>>,
    }

    impl Fake {
        async fn answer<T>(&self, value: T) -> Result<T, StoreError> {
            self.calls.fetch_add(1, Ordering::SeqCst);
            let gate = self.gate.lock().unwrap_or_else(|e| e.into_inner()).clone();
            if let Some(gate) = gate {
                gate.notified().await;
            }
            match self.mode.load(Ordering::SeqCst) {
                DOWN => Err(StoreError::Storage("store role unreachable".into())),
                CONFLICT => Err(StoreError::Conflict("seq is not head + 1".into())),
                _ => Ok(value),
            }
        }

        fn set(&self, mode: u8) {
            self.mode.store(mode, Ordering::SeqCst);
        }

        fn calls(&self) -> usize {
            self.calls.load(Ordering::SeqCst)
        }
    }

    /// Only `head` is used by the tests; the breaker treats every method alike.
    #[async_trait::async_trait]
    impl MessageStore for Fake {
        async fn append(&self, _: Vec<NewMessage>) -> Result<(), StoreError> {
            self.answer(()).await
        }
        async fn head(&self, _: &ConversationId) -> Result<Seq, StoreError> {
            self.answer(Seq(7)).await
        }
        async fn find_dedupe(&self, k: Vec<DedupeKey>) -> Result<Vec<Option<v1::Ack>>, StoreError> {
            self.answer(vec![None; k.len()]).await
        }
        async fn read_after(
            &self,
            _: &ConversationId,
            _: Seq,
            _: usize,
        ) -> Result<Vec<v1::Message>, StoreError> {
            self.answer(Vec::new()).await
        }
        async fn read_before(
            &self,
            _: &ConversationId,
            _: Seq,
            _: usize,
        ) -> Result<Vec<v1::Message>, StoreError> {
            self.answer(Vec::new()).await
        }
        async fn user_conversations(
            &self,
            _: UserId,
        ) -> Result<Vec<(ConversationId, Seq)>, StoreError> {
            self.answer(Vec::new()).await
        }
        async fn advance_cursor(
            &self,
            _: UserId,
            _: DeviceId,
            _: &ConversationId,
            _: v1::ReceiptKind,
            seq: Seq,
        ) -> Result<CursorAdvance, StoreError> {
            self.answer(CursorAdvance { seq, moved: true }).await
        }
        async fn device_cursors(
            &self,
            _: UserId,
            _: DeviceId,
        ) -> Result<Vec<DeviceCursor>, StoreError> {
            self.answer(Vec::new()).await
        }
        async fn member_cursors(
            &self,
            _: &ConversationId,
        ) -> Result<Vec<MemberCursor>, StoreError> {
            self.answer(Vec::new()).await
        }
        async fn redact(
            &self,
            _: &ConversationId,
            _: Seq,
        ) -> Result<Option<v1::Message>, StoreError> {
            self.answer(None).await
        }
    }

    const COOLDOWN: Duration = Duration::from_secs(2);

    fn breaker(failures: u32) -> (Arc<Fake>, Arc<Breaker>) {
        breaker_with(failures, 0)
    }

    fn breaker_with(failures: u32, failure_percent: u32) -> (Arc<Fake>, Arc<Breaker>) {
        let fake = Arc::new(Fake::default());
        let b = Breaker::new(
            fake.clone(),
            BreakerConfig {
                failures,
                failure_percent,
                cooldown: COOLDOWN,
            },
        );
        (fake, b)
    }

    fn conv() -> ConversationId {
        ConversationId::direct(UserId(1), UserId(2)).expect("two users")
    }

    fn refused<T: std::fmt::Debug>(r: Result<T, StoreError>) -> bool {
        matches!(r, Err(StoreError::Unavailable(_)))
    }

    #[tokio::test(start_paused = true)]
    async fn consecutive_failures_open_it_and_calls_then_fail_fast() {
        let (fake, b) = breaker(3);
        fake.set(DOWN);
        for _ in 0..3 {
            let r = b.head(&conv()).await;
            assert!(matches!(r, Err(StoreError::Storage(_))), "{r:?}");
        }
        assert!(b.is_open());
        assert_eq!(fake.calls(), 3);
        for _ in 0..10 {
            assert!(refused(b.head(&conv()).await));
            assert!(refused(b.append(Vec::new()).await));
        }
        assert_eq!(fake.calls(), 3, "refused calls never reach the store");
    }

    #[tokio::test(start_paused = true)]
    async fn a_success_or_an_answer_resets_the_count() {
        let (fake, b) = breaker(3);
        for reset in [OK, CONFLICT] {
            fake.set(DOWN);
            for _ in 0..2 {
                assert!(b.head(&conv()).await.is_err());
            }
            fake.set(reset);
            let _ = b.head(&conv()).await;
            fake.set(DOWN);
            for _ in 0..2 {
                assert!(b.head(&conv()).await.is_err());
            }
            assert!(!b.is_open(), "never 3 failures in a row (reset by {reset})");
            fake.set(OK);
            assert_eq!(b.head(&conv()).await, Ok(Seq(7)));
        }
    }

    #[tokio::test(start_paused = true)]
    async fn half_the_last_calls_failing_opens_it_though_never_twice_in_a_row() {
        let (fake, b) = breaker_with(2, 50);
        // Reads answer, writes fail: alternating outcomes.
        for i in 0..WINDOW {
            assert!(!b.is_open(), "open after only {i} calls");
            fake.set(if i % 2 == 0 { OK } else { DOWN });
            let _ = b.head(&conv()).await;
        }
        assert!(b.is_open(), "10 of the last 20 calls failed");
        assert!(refused(b.head(&conv()).await));

        // Below the share it stays closed, however long it runs.
        let (fake, b) = breaker_with(2, 50);
        for i in 0..(5 * WINDOW) {
            fake.set(if i % 3 == 0 { DOWN } else { OK });
            let _ = b.head(&conv()).await;
        }
        assert!(!b.is_open(), "a third of the calls failing is below 50 %");
        // Without a share, only consecutive failures count.
        let (fake, b) = breaker_with(2, 0);
        for i in 0..(5 * WINDOW) {
            fake.set(if i % 2 == 0 { OK } else { DOWN });
            let _ = b.head(&conv()).await;
        }
        assert!(!b.is_open());
    }

    #[tokio::test(start_paused = true)]
    async fn after_the_cooldown_one_probe_goes_through_and_its_success_closes_it() {
        let (fake, b) = breaker(1);
        fake.set(DOWN);
        assert!(b.head(&conv()).await.is_err());
        assert!(refused(b.head(&conv()).await));
        tokio::time::advance(COOLDOWN).await;

        // The probe waits at the store; meanwhile everyone else is still refused.
        fake.set(OK);
        let gate = Arc::new(Notify::new());
        *fake.gate.lock().unwrap() = Some(gate.clone());
        let probe = {
            let b = b.clone();
            tokio::spawn(async move { b.head(&conv()).await })
        };
        while fake.calls() < 2 {
            tokio::task::yield_now().await;
        }
        assert!(refused(b.head(&conv()).await), "one probe at a time");
        assert_eq!(fake.calls(), 2);
        *fake.gate.lock().unwrap() = None;
        gate.notify_one();
        assert_eq!(probe.await.expect("probe task"), Ok(Seq(7)));

        assert!(!b.is_open());
        for _ in 0..5 {
            assert_eq!(b.head(&conv()).await, Ok(Seq(7)));
        }
        assert_eq!(fake.calls(), 7);
    }

    #[tokio::test(start_paused = true)]
    async fn a_failed_probe_opens_it_for_another_cooldown() {
        let (fake, b) = breaker(2);
        fake.set(DOWN);
        for _ in 0..2 {
            assert!(b.head(&conv()).await.is_err());
        }
        tokio::time::advance(COOLDOWN).await;
        assert!(matches!(b.head(&conv()).await, Err(StoreError::Storage(_))));
        assert_eq!(fake.calls(), 3, "the probe reached the store");
        assert!(refused(b.head(&conv()).await), "open again at once");
        tokio::time::advance(COOLDOWN / 2).await;
        assert!(refused(b.head(&conv()).await), "for a whole cooldown");
        tokio::time::advance(COOLDOWN / 2).await;
        fake.set(OK);
        assert_eq!(b.head(&conv()).await, Ok(Seq(7)));
        assert!(!b.is_open());
    }

    #[tokio::test(start_paused = true)]
    async fn a_probe_dropped_unfinished_lets_the_next_one_through() {
        let (fake, b) = breaker(1);
        fake.set(DOWN);
        assert!(b.head(&conv()).await.is_err());
        tokio::time::advance(COOLDOWN).await;
        let gate = Arc::new(Notify::new());
        *fake.gate.lock().unwrap() = Some(gate);
        // The probe is abandoned while it waits at the store.
        let abandoned = tokio::time::timeout(Duration::from_millis(10), b.head(&conv())).await;
        assert!(abandoned.is_err());
        assert!(b.is_open());
        *fake.gate.lock().unwrap() = None;
        fake.set(OK);
        tokio::time::advance(COOLDOWN).await;
        assert_eq!(b.head(&conv()).await, Ok(Seq(7)));
        assert!(!b.is_open());
    }

    #[tokio::test(start_paused = true)]
    async fn calls_admitted_before_it_opened_do_not_close_it() {
        let (fake, b) = breaker(1);
        let gate = Arc::new(Notify::new());
        *fake.gate.lock().unwrap() = Some(gate.clone());
        // A slow call is at the store when another one fails and opens the breaker.
        let slow = {
            let b = b.clone();
            tokio::spawn(async move { b.head(&conv()).await })
        };
        while fake.calls() < 1 {
            tokio::task::yield_now().await;
        }
        *fake.gate.lock().unwrap() = None;
        fake.set(DOWN);
        assert!(b.head(&conv()).await.is_err());
        assert!(b.is_open());
        fake.set(OK);
        gate.notify_one();
        assert_eq!(slow.await.expect("slow task"), Ok(Seq(7)));
        assert!(b.is_open(), "only a probe closes it");
    }

    #[tokio::test(start_paused = true)]
    async fn zero_failures_turns_it_off() {
        let (fake, b) = breaker(0);
        fake.set(DOWN);
        for _ in 0..20 {
            assert!(matches!(b.head(&conv()).await, Err(StoreError::Storage(_))));
        }
        assert_eq!(fake.calls(), 20);
        assert!(!b.is_open());
    }
}
