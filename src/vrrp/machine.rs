//! The RFC 5798 §6 state machine of one virtual router, as a pure value.
//!
//! No socket, no clock, no tokio: [`Machine::handle`] takes the time and one [`Event`] and
//! returns [`Action`]s (send an advert, take or release the VIPs, arm the one timer, log a
//! transition). The driver executes them and feeds timer expiries back as events, so tests can
//! run several machines on a fake clock and replay a split brain in microseconds.
//!
//! Beyond the RFC (each as keepalived does it, PROTOCOLS.md §7.4): `preempt_delay` and the
//! "hold" (a starting node does not preempt before its first health verdict) both make a backup
//! behave as non-preempting for a while; a master that hears a *lower* advert for its VRID is in
//! a dual-master situation: it says so and re-asserts at once rather than waiting its interval.

use std::net::IpAddr;
use std::time::{Duration, Instant};

use super::packet::{PRIORITY_OWNER, PRIORITY_RESIGN};

/// RFC 5798 §6.4 states.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum State {
    Initialize,
    Backup,
    Master,
}

impl State {
    pub const ALL: [State; 3] = [State::Initialize, State::Backup, State::Master];

    pub fn as_str(self) -> &'static str {
        match self {
            State::Initialize => "initialize",
            State::Backup => "backup",
            State::Master => "master",
        }
    }
}

/// Which of the two RFC timers is armed (an instance never runs both).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Timer {
    /// Master: time to send the next advert.
    Adver,
    /// Backup: the master is presumed down when it fires.
    MasterDown,
}

/// Why a transition happened, for the log line and nothing else.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reason {
    /// Startup as the address owner (priority 255).
    Owner,
    /// Startup with a priority below 255.
    Startup,
    /// No advert for Master_Down_Interval.
    MasterDown,
    /// The master resigned (priority-0 advert) and our skew time ran out.
    MasterResigned,
    /// An advert with higher priority (or equal priority from a higher address).
    HigherPriority,
    /// Shutdown (graceful stop).
    Shutdown,
    /// The operator asked this node to step down.
    Demoted,
}

impl Reason {
    pub fn as_str(self) -> &'static str {
        match self {
            Reason::Owner => "address owner",
            Reason::Startup => "startup",
            Reason::MasterDown => "master down interval expired",
            Reason::MasterResigned => "master resigned (priority 0)",
            Reason::HigherPriority => "advert with higher priority",
            Reason::Shutdown => "shutdown",
            Reason::Demoted => "demoted by operator",
        }
    }
}

/// Inputs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Event {
    Startup,
    Shutdown,
    /// The armed timer's deadline passed. Stale expiries (a timer re-armed since) are ignored.
    TimerFired(Timer),
    /// A valid advert for our VRID (already checked: TTL, checksum, peer).
    Advert {
        priority: u8,
        interval_cs: u16,
        src: IpAddr,
    },
    /// The effective priority changed (tracking, demote, resume). 1..=255.
    Priority(u8),
    /// Holding back preemption (first health verdict pending) starts or ends.
    PreemptHold(bool),
    /// The operator demotes a master: resign now (priority-0 advert) and stay backup with
    /// priority 1 until [`Event::Priority`] restores it.
    Demote,
}

/// Outputs, to be executed in order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// Send one advert with this priority.
    SendAdvert {
        priority: u8,
    },
    /// Add the VIPs and announce them (gratuitous ARP / unsolicited NA).
    TakeVips,
    /// Remove the VIPs.
    ReleaseVips,
    /// (Re)arm the timer; replaces any armed one.
    ArmTimer {
        timer: Timer,
        at: Instant,
    },
    StopTimer,
    /// One log line and the transition metrics.
    Transition {
        from: State,
        to: State,
        reason: Reason,
    },
    /// A master heard another master's advert with a lower priority (or equal priority from a
    /// lower address): two masters for one VRID.
    DualMaster {
        peer: IpAddr,
        peer_priority: u8,
    },
}

/// The up-to-5 actions one event can produce, without allocating.
pub type Actions = arrayvec_lite::Actions;

/// Configuration of one instance, as the machine needs it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Params {
    /// Our primary address on the interface (source of our adverts): the tie-break.
    pub primary: IpAddr,
    /// Configured priority, 1..=255.
    pub priority: u8,
    /// Our Advertisement_Interval in centiseconds, 1..=4095.
    pub interval_cs: u16,
    pub preempt: bool,
    /// After startup, preemption waits this long.
    pub preempt_delay: Duration,
}

/// RFC 5798 §6.1 Skew_Time, microsecond precision: ((256 − priority) × interval) / 256.
pub fn skew_time(priority: u8, interval_cs: u16) -> Duration {
    let us = (256 - u64::from(priority)) * u64::from(interval_cs) * 10_000 / 256;
    Duration::from_micros(us)
}

/// RFC 5798 §6.1 Master_Down_Interval: 3 × interval + Skew_Time.
pub fn master_down_interval(priority: u8, interval_cs: u16) -> Duration {
    cs(interval_cs) * 3 + skew_time(priority, interval_cs)
}

fn cs(v: u16) -> Duration {
    Duration::from_millis(u64::from(v) * 10)
}

/// One virtual router.
#[derive(Debug, Clone)]
pub struct Machine {
    params: Params,
    state: State,
    /// Effective priority (configured, less tracking penalties, or 1 while demoted).
    priority: u8,
    /// Master_Adver_Interval: learned from the master while backup, ours while master.
    master_interval_cs: u16,
    timer: Option<(Timer, Instant)>,
    started: Option<Instant>,
    became_master: Option<Instant>,
    hold: bool,
    /// The running MasterDown timer is the short (skew time) one after a priority-0 advert.
    resigned_wait: bool,
}

impl Machine {
    pub fn new(params: Params) -> Machine {
        Machine {
            priority: params.priority,
            master_interval_cs: params.interval_cs,
            params,
            state: State::Initialize,
            timer: None,
            started: None,
            became_master: None,
            hold: false,
            resigned_wait: false,
        }
    }

    pub fn state(&self) -> State {
        self.state
    }

    pub fn priority(&self) -> u8 {
        self.priority
    }

    pub fn params(&self) -> &Params {
        &self.params
    }

    /// The armed timer, for the driver's sleep.
    pub fn deadline(&self) -> Option<(Timer, Instant)> {
        self.timer
    }

    pub fn master_interval_cs(&self) -> u16 {
        self.master_interval_cs
    }

    pub fn handle(&mut self, now: Instant, ev: Event) -> Actions {
        let mut out = Actions::new();
        match (self.state, ev) {
            // Settings, in any state (also before Startup).
            (_, Event::Priority(p)) => {
                self.priority = p.max(1);
                // A master's next advert carries it; a backup's next timer restart uses it.
            }
            (_, Event::PreemptHold(h)) => self.hold = h,
            (State::Initialize, Event::Startup) => {
                self.started = Some(now);
                if self.priority == PRIORITY_OWNER {
                    self.become_master(now, Reason::Owner, &mut out);
                } else {
                    self.master_interval_cs = self.params.interval_cs;
                    self.become_backup(now, Reason::Startup, &mut out);
                }
            }
            (State::Initialize, _) => {}
            (State::Backup, Event::Shutdown) => {
                self.disarm(&mut out);
                self.goto(State::Initialize, Reason::Shutdown, &mut out);
            }
            (State::Master, Event::Shutdown) => {
                self.disarm(&mut out);
                out.push(Action::SendAdvert {
                    priority: PRIORITY_RESIGN,
                });
                out.push(Action::ReleaseVips);
                self.goto(State::Initialize, Reason::Shutdown, &mut out);
            }
            (State::Backup, Event::TimerFired(Timer::MasterDown)) => {
                if matches!(self.timer, Some((Timer::MasterDown, at)) if at <= now) {
                    let reason = if self.resigned_wait {
                        Reason::MasterResigned
                    } else {
                        Reason::MasterDown
                    };
                    self.become_master(now, reason, &mut out);
                }
            }
            (State::Master, Event::TimerFired(Timer::Adver)) => {
                if matches!(self.timer, Some((Timer::Adver, at)) if at <= now) {
                    out.push(Action::SendAdvert {
                        priority: self.priority,
                    });
                    self.arm(Timer::Adver, now + cs(self.params.interval_cs), &mut out);
                }
            }
            (_, Event::TimerFired(_)) => {}
            (
                State::Backup,
                Event::Advert {
                    priority,
                    interval_cs,
                    ..
                },
            ) => {
                if priority == PRIORITY_RESIGN {
                    self.resigned_wait = true;
                    let at = now + skew_time(self.priority, self.master_interval_cs);
                    self.arm(Timer::MasterDown, at, &mut out);
                } else if !self.preempting(now) || priority >= self.priority {
                    self.resigned_wait = false;
                    self.master_interval_cs = interval_cs.max(1);
                    self.arm_down(now, &mut out);
                }
                // else: preempt and lower priority: discard; our timer runs out and we take over.
            }
            (
                State::Master,
                Event::Advert {
                    priority,
                    interval_cs,
                    src,
                },
            ) => {
                if priority == PRIORITY_RESIGN {
                    out.push(Action::SendAdvert {
                        priority: self.priority,
                    });
                    self.arm(Timer::Adver, now + cs(self.params.interval_cs), &mut out);
                } else if self.priority != PRIORITY_OWNER
                    && (priority > self.priority
                        || (priority == self.priority && src > self.params.primary))
                {
                    self.master_interval_cs = interval_cs.max(1);
                    self.become_backup(now, Reason::HigherPriority, &mut out);
                } else {
                    // The other side believes it is master too. Right after we took over this
                    // is the old master's last advert in flight: not worth an alarm.
                    let grace = cs(self.params.interval_cs.max(interval_cs));
                    let settled = self
                        .became_master
                        .is_none_or(|t| now.saturating_duration_since(t) > grace);
                    if settled {
                        out.push(Action::DualMaster {
                            peer: src,
                            peer_priority: priority,
                        });
                    }
                    // Re-assert now so the other side steps down within one packet.
                    out.push(Action::SendAdvert {
                        priority: self.priority,
                    });
                }
            }
            (State::Master, Event::Demote) => {
                self.priority = 1;
                out.push(Action::SendAdvert {
                    priority: PRIORITY_RESIGN,
                });
                self.master_interval_cs = self.params.interval_cs;
                out.push(Action::ReleaseVips);
                self.resigned_wait = false;
                let at = now + master_down_interval(self.priority, self.master_interval_cs);
                self.timer = Some((Timer::MasterDown, at));
                out.push(Action::ArmTimer {
                    timer: Timer::MasterDown,
                    at,
                });
                self.goto(State::Backup, Reason::Demoted, &mut out);
            }
            (_, Event::Demote) => self.priority = 1,
            (State::Backup | State::Master, Event::Startup) => {}
        }
        out
    }

    /// Whether lower-priority adverts are to be ignored (RFC Preempt_Mode) right now.
    fn preempting(&self, now: Instant) -> bool {
        if !self.params.preempt || self.hold {
            return false;
        }
        match self.started {
            Some(t) => now.saturating_duration_since(t) >= self.params.preempt_delay,
            None => true,
        }
    }

    fn become_master(&mut self, now: Instant, reason: Reason, out: &mut Actions) {
        self.resigned_wait = false;
        out.push(Action::SendAdvert {
            priority: self.priority,
        });
        out.push(Action::TakeVips);
        self.master_interval_cs = self.params.interval_cs;
        self.arm(Timer::Adver, now + cs(self.params.interval_cs), out);
        self.became_master = Some(now);
        self.goto(State::Master, reason, out);
    }

    fn become_backup(&mut self, now: Instant, reason: Reason, out: &mut Actions) {
        self.resigned_wait = false;
        let was_master = self.state == State::Master;
        if was_master {
            out.push(Action::ReleaseVips);
        }
        self.arm_down(now, out);
        self.goto(State::Backup, reason, out);
    }

    fn arm_down(&mut self, now: Instant, out: &mut Actions) {
        let at = now + master_down_interval(self.priority, self.master_interval_cs);
        self.arm(Timer::MasterDown, at, out);
    }

    fn arm(&mut self, timer: Timer, at: Instant, out: &mut Actions) {
        self.timer = Some((timer, at));
        out.push(Action::ArmTimer { timer, at });
    }

    fn disarm(&mut self, out: &mut Actions) {
        self.timer = None;
        out.push(Action::StopTimer);
    }

    fn goto(&mut self, to: State, reason: Reason, out: &mut Actions) {
        let from = self.state;
        self.state = to;
        if to != State::Master {
            self.became_master = None;
        }
        out.push(Action::Transition { from, to, reason });
    }
}

/// A tiny fixed-capacity vector, so one event's actions need no heap.
pub mod arrayvec_lite {
    use super::Action;

    /// The most actions one event produces (demote: send, release, arm, transition).
    const CAP: usize = 6;

    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    pub struct Actions {
        items: [Option<Action>; CAP],
        len: usize,
    }

    impl Default for Actions {
        fn default() -> Self {
            Self::new()
        }
    }

    impl Actions {
        pub fn new() -> Actions {
            Actions {
                items: [None; CAP],
                len: 0,
            }
        }

        pub(super) fn push(&mut self, a: Action) {
            // CAP is above the longest sequence `handle` builds; a debug assert guards edits.
            debug_assert!(self.len < CAP, "raise CAP");
            if let Some(slot) = self.items.get_mut(self.len) {
                *slot = Some(a);
                self.len += 1;
            }
        }

        pub fn len(&self) -> usize {
            self.len
        }

        pub fn is_empty(&self) -> bool {
            self.len == 0
        }

        pub fn iter(&self) -> impl Iterator<Item = Action> + '_ {
            self.items.iter().take(self.len).filter_map(|a| *a)
        }

        pub fn contains(&self, a: &Action) -> bool {
            self.iter().any(|x| x == *a)
        }
    }
}

#[cfg(test)]
#[path = "machine_tests.rs"]
mod tests;
