//! Uptime Kuma's state machine: a failure makes a Monitor PENDING until `failureThreshold`
//! failures in a row make it DOWN; `successThreshold` successes in a row make a DOWN Monitor UP
//! again. Inside a maintenance window the state is MAINTENANCE and nothing alerts.
//!
//! Which steps alert: the change to DOWN, the return to UP after an announced DOWN (with the
//! outage's duration), a reminder every `repeat` while DOWN, and the first slow success of a
//! slow spell. A DOWN that happened during maintenance is announced when the window closes if
//! the Monitor is still DOWN; a recovery is announced whenever the DOWN was, so no outage is left
//! open ("zombie") in the receiver.

use std::time::Duration;

use jiff::Timestamp;
use serde::{Deserialize, Serialize};

/// A Monitor's state.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum State {
    /// Not checked yet, or failing but not confirmed.
    #[default]
    Pending,
    Up,
    Down,
    Maintenance,
}

impl State {
    pub fn as_str(self) -> &'static str {
        match self {
            State::Pending => "PENDING",
            State::Up => "UP",
            State::Down => "DOWN",
            State::Maintenance => "MAINTENANCE",
        }
    }
}

impl std::fmt::Display for State {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The settings that drive the machine.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Settings {
    pub failure_threshold: u32,
    pub success_threshold: u32,
    /// Repeat the DOWN alert at this interval while down.
    pub repeat: Option<Duration>,
    /// A success slower than this alerts once per slow spell.
    pub slow: Option<Duration>,
    pub alert_on_down: bool,
    pub alert_on_recovery: bool,
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            failure_threshold: 3,
            success_threshold: 1,
            repeat: None,
            slow: None,
            alert_on_down: true,
            alert_on_recovery: true,
        }
    }
}

/// What the machine remembers between checks (what a restart must recover).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Machine {
    pub state: State,
    /// The state before maintenance began (what the counters say underneath).
    pub underlying: State,
    pub failures: u32,
    pub successes: u32,
    /// When the current outage began (first failure of the run that made it DOWN).
    pub down_since: Option<Timestamp>,
    /// When a failure run began (PENDING counts from here).
    pub failing_since: Option<Timestamp>,
    /// A DOWN alert was sent for the current outage: its recovery must be announced.
    pub announced_down: bool,
    pub last_alert: Option<Timestamp>,
    pub slow: bool,
    pub last_change: Option<Timestamp>,
}

/// An alert to send.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Alert {
    Down { since: Timestamp, reason: String },
    StillDown { since: Timestamp, reason: String },
    Recovered { outage: Duration },
    Slow { took: Duration },
}

/// What one check did to the machine.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Step {
    pub from: State,
    pub to: State,
    pub alert: Option<Alert>,
    /// A failure is being confirmed: check again at the retry interval.
    pub retry_soon: bool,
}

impl Step {
    pub fn changed(&self) -> bool {
        self.from != self.to
    }
}

/// One check's outcome as the machine needs it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outcome {
    pub success: bool,
    pub response_time: Duration,
    /// What failed (for the DOWN alert).
    pub message: String,
}

impl Machine {
    /// Applies one check's outcome at `now`; `maintenance` says whether a window is open.
    pub fn observe(
        &mut self,
        settings: &Settings,
        outcome: &Outcome,
        maintenance: bool,
        now: Timestamp,
    ) -> Step {
        let from = self.state;
        let was = self.underlying_state();
        let underlying = if outcome.success {
            self.failures = 0;
            self.failing_since = None;
            self.successes = self.successes.saturating_add(1);
            match was {
                State::Down if self.successes < settings.success_threshold => State::Down,
                _ => State::Up,
            }
        } else {
            self.successes = 0;
            self.failures = self.failures.saturating_add(1);
            let since = *self.failing_since.get_or_insert(now);
            if was == State::Down || self.failures >= settings.failure_threshold {
                if was != State::Down {
                    self.down_since = Some(since);
                }
                State::Down
            } else {
                State::Pending
            }
        };
        self.underlying = underlying;
        self.state = if maintenance {
            State::Maintenance
        } else {
            underlying
        };
        if self.state != from {
            self.last_change = Some(now);
        }
        let mut alert = None;
        if !maintenance {
            match underlying {
                State::Down if !self.announced_down => {
                    self.announced_down = true;
                    if settings.alert_on_down {
                        self.last_alert = Some(now);
                        alert = Some(Alert::Down {
                            since: self.down_since.unwrap_or(now),
                            reason: outcome.message.clone(),
                        });
                    }
                }
                State::Down => {
                    if let (Some(repeat), Some(last)) = (settings.repeat, self.last_alert)
                        && settings.alert_on_down
                        && elapsed(last, now) >= repeat
                    {
                        self.last_alert = Some(now);
                        alert = Some(Alert::StillDown {
                            since: self.down_since.unwrap_or(now),
                            reason: outcome.message.clone(),
                        });
                    }
                }
                State::Up if self.announced_down => {
                    self.announced_down = false;
                    let outage = self.down_since.map(|s| elapsed(s, now)).unwrap_or_default();
                    self.down_since = None;
                    self.slow = false;
                    if settings.alert_on_recovery {
                        self.last_alert = Some(now);
                        alert = Some(Alert::Recovered { outage });
                    }
                }
                State::Up => {
                    if was != State::Down {
                        self.down_since = None;
                    }
                    match settings.slow {
                        Some(limit) if outcome.response_time > limit => {
                            if !self.slow {
                                self.slow = true;
                                alert = Some(Alert::Slow {
                                    took: outcome.response_time,
                                });
                            }
                        }
                        _ => self.slow = false,
                    }
                }
                _ => {}
            }
        } else if underlying == State::Up && !self.announced_down {
            self.down_since = None;
        }
        Step {
            from,
            to: self.state,
            alert,
            retry_soon: underlying == State::Pending,
        }
    }

    /// The state the counters give, maintenance aside.
    fn underlying_state(&self) -> State {
        match self.state {
            State::Maintenance => self.underlying,
            s => s,
        }
    }
}

fn elapsed(from: Timestamp, to: Timestamp) -> Duration {
    Duration::try_from(to.duration_since(from)).unwrap_or_default()
}

/// `1h2m3s`-style text for alert messages.
pub fn human(d: Duration) -> String {
    let secs = d.as_secs();
    let (h, m, s) = (secs / 3600, (secs / 60) % 60, secs % 60);
    match (h, m) {
        (0, 0) if secs == 0 => format!("{}ms", d.as_millis()),
        (0, 0) => format!("{s}s"),
        (0, _) => format!("{m}m{s}s"),
        _ => format!("{h}h{m}m{s}s"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(secs: i64) -> Timestamp {
        Timestamp::from_second(1_700_000_000 + secs).unwrap()
    }

    fn ok(ms: u64) -> Outcome {
        Outcome {
            success: true,
            response_time: Duration::from_millis(ms),
            message: String::new(),
        }
    }

    fn fail() -> Outcome {
        Outcome {
            success: false,
            response_time: Duration::ZERO,
            message: "connection refused".into(),
        }
    }

    #[test]
    fn failures_confirm_down_after_the_threshold_and_recovery_carries_the_outage() {
        let s = Settings::default();
        let mut m = Machine::default();
        let step = m.observe(&s, &ok(10), false, at(0));
        assert_eq!(
            (step.from, step.to, step.alert),
            (State::Pending, State::Up, None)
        );
        let step = m.observe(&s, &fail(), false, at(60));
        assert_eq!(step.to, State::Pending);
        assert!(step.retry_soon);
        assert_eq!(step.alert, None);
        assert_eq!(m.observe(&s, &fail(), false, at(80)).to, State::Pending);
        let step = m.observe(&s, &fail(), false, at(100));
        assert_eq!(step.to, State::Down);
        assert_eq!(
            step.alert,
            Some(Alert::Down {
                since: at(60),
                reason: "connection refused".into()
            })
        );
        // Still down: no second alert without a repeat interval.
        assert_eq!(m.observe(&s, &fail(), false, at(160)).alert, None);
        let step = m.observe(&s, &ok(10), false, at(220));
        assert_eq!(step.to, State::Up);
        assert_eq!(
            step.alert,
            Some(Alert::Recovered {
                outage: Duration::from_secs(160)
            })
        );
        assert_eq!(m.observe(&s, &ok(10), false, at(280)).alert, None);
    }

    #[test]
    fn a_pending_failure_that_clears_alerts_nothing() {
        let s = Settings::default();
        let mut m = Machine::default();
        m.observe(&s, &ok(1), false, at(0));
        m.observe(&s, &fail(), false, at(1));
        m.observe(&s, &fail(), false, at(2));
        let step = m.observe(&s, &ok(1), false, at(3));
        assert_eq!((step.to, step.alert), (State::Up, None));
        // The counter starts over.
        assert_eq!(m.observe(&s, &fail(), false, at(4)).to, State::Pending);
    }

    #[test]
    fn success_threshold_and_repeat_interval() {
        let s = Settings {
            failure_threshold: 1,
            success_threshold: 2,
            repeat: Some(Duration::from_secs(300)),
            ..Default::default()
        };
        let mut m = Machine::default();
        assert!(matches!(
            m.observe(&s, &fail(), false, at(0)).alert,
            Some(Alert::Down { .. })
        ));
        assert_eq!(m.observe(&s, &fail(), false, at(200)).alert, None);
        assert!(matches!(
            m.observe(&s, &fail(), false, at(300)).alert,
            Some(Alert::StillDown { .. })
        ));
        assert_eq!(m.observe(&s, &ok(1), false, at(400)).to, State::Down);
        let step = m.observe(&s, &ok(1), false, at(460));
        assert_eq!(step.to, State::Up);
        assert_eq!(
            step.alert,
            Some(Alert::Recovered {
                outage: Duration::from_secs(460)
            })
        );
    }

    #[test]
    fn maintenance_silences_and_defers() {
        let s = Settings {
            failure_threshold: 1,
            ..Default::default()
        };
        let mut m = Machine::default();
        m.observe(&s, &ok(1), false, at(0));
        let step = m.observe(&s, &fail(), true, at(10));
        assert_eq!((step.to, step.alert), (State::Maintenance, None));
        // Still failing after the window: the DOWN is announced then.
        let step = m.observe(&s, &fail(), false, at(20));
        assert_eq!(step.to, State::Down);
        assert!(matches!(step.alert, Some(Alert::Down { since, .. }) if since == at(10)));
        // Announced outage recovering inside a window: deferred until the window closes.
        assert_eq!(m.observe(&s, &ok(1), true, at(30)).alert, None);
        let step = m.observe(&s, &ok(1), false, at(40));
        assert_eq!(step.to, State::Up);
        assert!(matches!(step.alert, Some(Alert::Recovered { .. })));
        // A DOWN that ends inside the window was never announced: nothing.
        m.observe(&s, &fail(), true, at(50));
        m.observe(&s, &ok(1), true, at(60));
        assert_eq!(m.observe(&s, &ok(1), false, at(70)).alert, None);
    }

    #[test]
    fn slow_alerts_once_per_spell_and_switches_respected() {
        let s = Settings {
            slow: Some(Duration::from_millis(500)),
            alert_on_down: false,
            alert_on_recovery: false,
            failure_threshold: 1,
            ..Default::default()
        };
        let mut m = Machine::default();
        m.observe(&s, &ok(1), false, at(0));
        assert_eq!(
            m.observe(&s, &ok(900), false, at(1)).alert,
            Some(Alert::Slow {
                took: Duration::from_millis(900)
            })
        );
        assert_eq!(m.observe(&s, &ok(900), false, at(2)).alert, None);
        m.observe(&s, &ok(10), false, at(3));
        assert!(m.observe(&s, &ok(900), false, at(4)).alert.is_some());
        assert_eq!(m.observe(&s, &fail(), false, at(5)).alert, None);
        assert_eq!(m.observe(&s, &ok(1), false, at(6)).alert, None);
    }

    #[test]
    fn the_machine_survives_serialisation() {
        let s = Settings::default();
        let mut m = Machine::default();
        for i in 0..3 {
            m.observe(&s, &fail(), false, at(i));
        }
        let json = serde_json::to_string(&m).unwrap();
        let mut back: Machine = serde_json::from_str(&json).unwrap();
        assert_eq!(back, m);
        assert!(matches!(
            back.observe(&s, &ok(1), false, at(10)).alert,
            Some(Alert::Recovered { .. })
        ));
    }

    #[test]
    fn human_durations() {
        assert_eq!(human(Duration::from_secs(3723)), "1h2m3s");
        assert_eq!(human(Duration::from_secs(61)), "1m1s");
        assert_eq!(human(Duration::from_secs(5)), "5s");
        assert_eq!(human(Duration::from_millis(20)), "20ms");
    }
}
