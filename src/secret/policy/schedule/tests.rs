//! The schedule driven by a scripted IAM, with time moving only when the schedule sleeps: the rules of
//! the module's documentation as tables, and properties over random histories.

use super::*;
use crate::secret::policy::sites::DEFAULT_STANDBY_RESET_WITHIN;
use proptest::prelude::*;

const SEC: Duration = Duration::from_secs(1);
const HOUR: Duration = Duration::from_secs(3600);
const DAY: Duration = Duration::from_secs(86_400);

fn settings(role: Role, check_interval: Duration) -> ScheduleSettings {
    ScheduleSettings {
        role,
        rotate_before: 15 * DAY,
        check_interval,
    }
}

fn standby() -> Role {
    Role::Standby {
        reset_within: DEFAULT_STANDBY_RESET_WITHIN,
    }
}

/// The IAM and the store, as the manager's steps meet them.
struct Iam {
    /// The expiry a read reports (`None`: none, or one that cannot be right).
    expiry: Option<SystemTime>,
    /// How long a reset makes the new secret valid (`None`: an expiry that cannot be right).
    grants: Option<Duration>,
    /// Reads and resets fail so while set.
    read_fails: Option<RetryHint>,
    reset_fails: Option<RetryHint>,
    store_up: bool,
    resets: usize,
}

impl Iam {
    fn new(expires_in: Duration, now: Moment) -> Self {
        Self {
            expiry: Some(now.wall + expires_in),
            grants: Some(90 * DAY),
            read_fails: None,
            reset_fails: None,
            store_up: true,
            resets: 0,
        }
    }

    fn check(&mut self, known: &mut Known) -> CheckOutcome {
        match self.read_fails {
            Some(hint) => CheckOutcome::Failed(hint),
            None => {
                known.expiry = self.expiry;
                CheckOutcome::Read
            }
        }
    }

    /// What the manager's `rotate` does: read again, decide again, reset.
    fn rotate(&mut self, now: Moment, state: &mut Schedule) -> RotationOutcome {
        if let Some(hint) = self.read_fails {
            return RotationOutcome::Failed(hint);
        }
        state.known.expiry = self.expiry;
        state.known.in_grace = false;
        if !matches!(state.site_action(now.wall), SiteAction::Reset(_)) {
            return RotationOutcome::NoLongerDue;
        }
        if let Some(hint) = self.reset_fails {
            return RotationOutcome::Failed(hint);
        }
        self.resets += 1;
        self.expiry = self.grants.map(|valid| now.wall + valid);
        state.known.expiry = self.expiry;
        state.known.granted_validity = self.grants;
        state.known.issued_at = Some(now.wall);
        if self.store_up {
            RotationOutcome::Rotated
        } else {
            RotationOutcome::Unstored(SecretString::from("new"))
        }
    }

    fn persist(&self) -> PersistOutcome {
        if self.store_up {
            PersistOutcome::Stored
        } else {
            PersistOutcome::Failed
        }
    }
}

/// The manager's loop against an [`Iam`]: the steps taken, with their offsets from the start.
struct Run {
    t0: Moment,
    now: Moment,
    state: Schedule,
    steps: Vec<(Duration, Step)>,
    /// Rules of the module's documentation seen broken, as the steps were taken.
    broken: Vec<String>,
    last_check: Option<Instant>,
    failed_rotation: Option<Instant>,
    same_instant: usize,
}

impl Run {
    fn new(settings: ScheduleSettings) -> Self {
        let t0 = Moment {
            at: Instant::now(),
            wall: SystemTime::UNIX_EPOCH + 20_000 * DAY,
        };
        Self {
            t0,
            now: t0,
            state: Schedule::new(t0.at, settings),
            steps: Vec::new(),
            broken: Vec::new(),
            last_check: None,
            failed_rotation: None,
            same_instant: 0,
        }
    }

    /// Follows the schedule until `span` after the start; `jitter` 0.5 throughout.
    fn until(&mut self, span: Duration, iam: &mut Iam) {
        let end = self.t0.at + span;
        loop {
            assert!(self.same_instant < 1000, "the schedule never sleeps");
            let step = next_step(self.now, &self.state);
            if let Step::Sleep { until } = step {
                assert!(until > self.now.at, "a sleep into the past");
                if until > end {
                    if end > self.now.at {
                        self.now = self.now + (end - self.now.at);
                        self.same_instant = 0;
                    }
                    return;
                }
                self.now = self.now + (until - self.now.at);
                self.same_instant = 0;
                continue;
            }
            self.audit(&step);
            self.steps.push((self.now.at - self.t0.at, step.clone()));
            match step {
                Step::RetryPersist => self.state.record_persist(self.now.at, iam.persist(), 0.5),
                Step::Recover => self.state.record_recovery(self.now.at),
                Step::Check => {
                    let outcome = iam.check(&mut self.state.known);
                    self.state.record_check(self.now, outcome, 0.5);
                }
                Step::Rotate(_) => {
                    let outcome = iam.rotate(self.now, &mut self.state);
                    self.failed_rotation = matches!(
                        outcome,
                        RotationOutcome::Failed(_) | RotationOutcome::Adopted { stored: false }
                    )
                    .then_some(self.now.at);
                    self.state.record_rotation(self.now.at, outcome, 0.5);
                }
                Step::Sleep { .. } => unreachable!(),
            }
        }
    }

    /// Notes a rule the step about to be taken breaks.
    fn audit(&mut self, step: &Step) {
        let now = self.now.at;
        let at = now - self.t0.at;
        let state = &self.state;
        self.same_instant += 1;
        if self.same_instant > 4 {
            self.broken.push(format!(
                "{at:?}: {} steps without time passing",
                self.same_instant
            ));
        }
        if state.pending().is_some() && *step != Step::RetryPersist {
            self.broken
                .push(format!("{at:?}: {step:?} while a secret is unstored"));
        }
        match step {
            Step::Check => {
                if let Some(previous) = self.last_check
                    && now - previous > state.settings().check_interval
                {
                    self.broken
                        .push(format!("{at:?}: checks {:?} apart", now - previous));
                }
                self.last_check = Some(now);
            }
            Step::Rotate(_) => {
                let read_since_due = state.known.expiry.is_some_and(|expiry| {
                    let due = reset_due_at(state.settings().role, expiry, state.thresholds());
                    state.last_check.is_some_and(|checked| checked > due)
                });
                if !read_since_due && !state.known.in_grace {
                    self.broken
                        .push(format!("{at:?}: a reset with no read since it fell due"));
                }
                if self
                    .failed_rotation
                    .is_some_and(|failed| now - failed < SEC)
                {
                    self.broken.push(format!("{at:?}: a reset retried at once"));
                }
            }
            // Checks wait while a secret is unstored: their spacing counts from its write.
            Step::RetryPersist => self.last_check = None,
            Step::Recover | Step::Sleep { .. } => {}
        }
    }

    fn event(&mut self, event: SecretEvent) {
        self.state.record_event(self.now.wall, event);
    }

    /// When steps like `step` were taken.
    fn times(&self, wanted: fn(&Step) -> bool) -> Vec<Duration> {
        self.steps
            .iter()
            .filter(|(_, step)| wanted(step))
            .map(|(at, _)| *at)
            .collect()
    }

    fn checks(&self) -> Vec<Duration> {
        self.times(|s| *s == Step::Check)
    }

    fn rotations(&self) -> Vec<Duration> {
        self.times(|s| matches!(s, Step::Rotate(_)))
    }
}

fn gaps(times: &[Duration]) -> Vec<Duration> {
    times.windows(2).map(|w| w[1] - w[0]).collect()
}

#[test]
fn a_secret_far_from_expiry_is_read_every_check_interval_and_never_reset() {
    let mut run = Run::new(settings(Role::Primary, 6 * HOUR));
    let mut iam = Iam::new(90 * DAY, run.t0);
    run.until(3 * DAY, &mut iam);
    let checks = run.checks();
    assert_eq!(checks.len(), 13, "at start, then every 6 h");
    assert!(gaps(&checks).iter().all(|gap| *gap == 6 * HOUR));
    assert!(run.rotations().is_empty());
}

#[test]
fn once_a_reset_falls_due_the_iam_is_read_and_then_it_resets() {
    let mut run = Run::new(settings(Role::Primary, 6 * HOUR));
    let mut iam = Iam::new(15 * DAY + 2 * HOUR, run.t0);
    run.until(DAY, &mut iam);
    // Read at start; read again the moment the reset falls due (not at the next 6-hourly check); reset.
    let steps: Vec<_> = run.steps.iter().take(3).collect();
    assert_eq!(steps[0], &(Duration::ZERO, Step::Check));
    assert_eq!(steps[1].1, Step::Check);
    assert!(
        steps[1].0 > 2 * HOUR && steps[1].0 <= 2 * HOUR + SEC,
        "{steps:?}"
    );
    assert!(matches!(steps[2], (at, Step::Rotate(_)) if *at == steps[1].0));
    assert_eq!(iam.resets, 1);
    assert_eq!(run.rotations().len(), 1);
}

#[test]
fn the_grace_warning_means_rotate_now_without_another_read() {
    let mut run = Run::new(settings(Role::Primary, 6 * HOUR));
    let mut iam = Iam::new(90 * DAY, run.t0);
    run.until(HOUR, &mut iam);
    run.event(SecretEvent::GraceWarning);
    assert!(matches!(next_step(run.now, &run.state), Step::Rotate(_)));
}

#[test]
fn a_reset_the_store_did_not_take_is_written_again_with_backoff_and_nothing_else_happens() {
    let mut run = Run::new(settings(Role::Primary, 60 * SEC));
    let mut iam = Iam::new(10 * DAY, run.t0);
    iam.store_up = false;
    run.until(10 * 60 * SEC, &mut iam);
    assert_eq!(iam.resets, 1);
    assert_eq!(
        run.checks(),
        [Duration::ZERO],
        "no check while the secret is unstored"
    );
    let persists = run.times(|s| *s == Step::RetryPersist);
    // The first write again after the second backoff step (5–10 s), then doubling to the 5 min cap.
    assert!(
        persists[0] >= 5 * SEC && persists[0] <= 10 * SEC,
        "{persists:?}"
    );
    for (i, gap) in gaps(&persists).iter().enumerate() {
        let ceiling = RETRY.ceiling(i as u32 + 3);
        assert!(*gap >= ceiling / 2 && *gap <= ceiling, "{i}: {gap:?}");
    }
    // The store comes back: the next write stores it, and the checks resume; no second reset.
    iam.store_up = true;
    let before = run.steps.len();
    run.until(20 * 60 * SEC, &mut iam);
    assert_eq!(run.steps[before].1, Step::RetryPersist);
    assert_eq!(run.state.pending().map(|_| ()), None);
    assert!(
        run.steps[before + 1..]
            .iter()
            .all(|(_, s)| *s == Step::Check)
    );
    assert_eq!(iam.resets, 1);
}

#[test]
fn a_held_back_admin_login_is_looked_at_again_within_the_password_watch() {
    let mut run = Run::new(settings(Role::Primary, HOUR));
    let mut iam = Iam::new(100 * DAY, run.t0);
    // A rejected password holds logins back for an hour; only a corrected file lifts it.
    iam.read_fails = Some(RetryHint::LoginHeld(HOUR));
    run.until(60 * SEC, &mut iam);
    let checks = run.checks();
    assert_eq!(checks.len(), 7, "{checks:?}");
    assert!(gaps(&checks).iter().all(|gap| *gap == PASSWORD_WATCH));
    // Corrected: the next look reads, and the hourly cadence resumes.
    iam.read_fails = None;
    run.until(3 * HOUR, &mut iam);
    let checks = run.checks();
    assert_eq!(checks[7], 70 * SEC);
    assert_eq!(checks[8] - checks[7], HOUR);
}

#[test]
fn failed_reads_back_off_but_never_past_the_check_interval() {
    let mut run = Run::new(settings(Role::Primary, 60 * SEC));
    let mut iam = Iam::new(100 * DAY, run.t0);
    iam.read_fails = Some(RetryHint::Backoff);
    run.until(10 * 60 * SEC, &mut iam);
    let gaps = gaps(&run.checks());
    assert_eq!(
        &gaps[..4],
        [3750, 7500, 15_000, 30_000].map(Duration::from_millis)
    );
    assert!(gaps[4..].iter().all(|gap| *gap == 60 * SEC), "{gaps:?}");
}

#[test]
fn an_expiry_that_cannot_be_right_causes_one_reset_then_no_loop() {
    let mut run = Run::new(settings(Role::Primary, 60 * SEC));
    // The secret is due; the new one comes with an expiry that cannot be right (treated as unknown).
    let mut iam = Iam::new(10 * DAY, run.t0);
    iam.grants = None;
    run.until(DAY, &mut iam);
    assert_eq!(iam.resets, 1);
    assert_eq!(run.rotations().len(), 1);
    assert_eq!(
        run.checks().len(),
        1 + 24 * 60,
        "only the checks, every minute"
    );
}

#[test]
fn a_deferred_reset_waits_as_long_as_the_reset_bound_says_and_checks_go_on() {
    let mut run = Run::new(settings(Role::Primary, 10 * 60 * SEC));
    let mut iam = Iam::new(10 * DAY, run.t0);
    iam.reset_fails = Some(RetryHint::ResetDeferred(50 * 60 * SEC));
    run.until(2 * HOUR, &mut iam);
    let rotations = run.rotations();
    assert_eq!(gaps(&rotations), [50 * 60 * SEC, 50 * 60 * SEC]);
    assert_eq!(iam.resets, 0);
    assert_eq!(run.checks().len(), 13, "every ten minutes meanwhile");
}

#[test]
fn a_standby_waits_with_four_days_left_and_resets_with_two() {
    let mut run = Run::new(settings(standby(), SEC));
    let mut iam = Iam::new(4 * DAY, run.t0);
    run.until(9 * SEC, &mut iam);
    assert_eq!(run.checks().len(), 10);
    assert!(run.rotations().is_empty());
    iam.expiry = Some(run.now.wall + 2 * DAY);
    run.until(12 * SEC, &mut iam);
    assert_eq!(run.rotations(), [10 * SEC], "at the next check");
    assert_eq!(iam.resets, 1);
}

#[test]
fn rejections_are_read_back_at_most_once_per_spacing() {
    let mut run = Run::new(settings(Role::Primary, 6 * HOUR));
    let mut iam = Iam::new(90 * DAY, run.t0);
    run.until(SEC, &mut iam);
    run.event(SecretEvent::Rejected);
    run.until(2 * SEC, &mut iam);
    run.event(SecretEvent::Rejected);
    run.until(60 * SEC, &mut iam);
    assert_eq!(
        run.times(|s| *s == Step::Recover),
        [SEC, SEC + RECOVERY_SPACING]
    );
}

#[test]
fn a_failed_reset_that_is_no_longer_due_does_not_wake_the_task() {
    // A reset fails; before its retry, a check finds another site made a new secret.
    let mut run = Run::new(settings(Role::Primary, 60 * SEC));
    let mut iam = Iam::new(10 * DAY, run.t0);
    iam.reset_fails = Some(RetryHint::Backoff);
    run.until(SEC, &mut iam);
    assert_eq!(run.state.failures(), 1);
    iam.expiry = Some(run.now.wall + 90 * DAY);
    run.until(61 * SEC, &mut iam);
    // Past the retry time: the next wake-up is the next check, not the stale retry.
    assert_eq!(
        next_step(run.now, &run.state),
        Step::Sleep {
            until: run.t0.at + 120 * SEC
        }
    );
    // Another process made the rotation: that ends the failures too.
    let outcome = iam.rotate(run.now, &mut run.state);
    assert!(matches!(outcome, RotationOutcome::NoLongerDue));
    run.state.record_rotation(run.now.at, outcome, 0.5);
    assert_eq!(run.state.failures(), 0);
}

/// One thing that happens between two turns of a random history.
#[derive(Debug, Clone)]
enum Change {
    Event(u8),
    ReadFails(Option<u8>),
    ResetFails(Option<u8>),
    StoreUp(bool),
    /// The IAM's expiry, in hours from now (another site reset it, or a clock moved).
    Expiry(Option<i16>),
    /// Let this many seconds pass.
    Pass(u32),
}

fn hint(n: u8) -> RetryHint {
    match n % 3 {
        0 => RetryHint::Backoff,
        1 => RetryHint::ResetDeferred(Duration::from_secs(u64::from(n) * 60)),
        _ => RetryHint::LoginHeld(Duration::from_secs(u64::from(n) * 60)),
    }
}

fn change() -> impl Strategy<Value = Change> {
    prop_oneof![
        any::<u8>().prop_map(Change::Event),
        proptest::option::of(any::<u8>()).prop_map(Change::ReadFails),
        proptest::option::of(any::<u8>()).prop_map(Change::ResetFails),
        any::<bool>().prop_map(Change::StoreUp),
        proptest::option::of(-48i16..800).prop_map(Change::Expiry),
        (1u32..40_000).prop_map(Change::Pass),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    /// Whatever the IAM, the store and the token path do, the rules hold (see [`Run::audit`]): no spin,
    /// nothing but writes while a reset secret is unstored, no reset without a read since it fell due
    /// (a grace warning aside), no failed reset retried at once, and a read at least every check
    /// interval (counted from the write, after a secret was held unstored).
    #[test]
    fn the_schedule_never_spins_never_resets_unread_and_keeps_checking(
        changes in proptest::collection::vec(change(), 1..60),
        check_secs in 5u64..7200,
        standby_role in any::<bool>(),
    ) {
        let role = if standby_role { standby() } else { Role::Primary };
        let mut run = Run::new(settings(role, Duration::from_secs(check_secs)));
        let mut iam = Iam::new(16 * DAY, run.t0);
        for change in changes {
            match change {
                Change::Event(n) => run.event(match n % 3 {
                    0 => SecretEvent::Rejected,
                    1 => SecretEvent::GraceWarning,
                    _ => SecretEvent::ExpiryHint(run.now.wall + HOUR * u32::from(n)),
                }),
                Change::ReadFails(n) => iam.read_fails = n.map(hint),
                Change::ResetFails(n) => iam.reset_fails = n.map(hint),
                Change::StoreUp(up) => iam.store_up = up,
                Change::Expiry(hours) => {
                    iam.expiry = hours.map(|h| {
                        let offset = HOUR * u32::from(h.unsigned_abs());
                        if h >= 0 { run.now.wall + offset } else { run.now.wall - offset }
                    });
                }
                Change::Pass(secs) => {
                    let span = run.now.at - run.t0.at + Duration::from_secs(u64::from(secs));
                    run.until(span, &mut iam);
                }
            }
        }
        prop_assert!(run.broken.is_empty(), "{:?}", run.broken);
    }
}
