//! The lifecycle of a session's relay (reference §3.5, §2.6) as a plain type: the interrupt fence, the
//! intentional stop, the disconnect grace, the re-open of a stream that ended, and the orphaned turn (a runner
//! back without it). Its transitions take what the actor sees ([`View`]) and return the [`Effect`]s the actor
//! applies; no I/O, no store, no clock of its own (`now` is passed in), so the rules are tested as a table.

use std::time::Duration;

use tokio::time::Instant;

/// How soon a stream that ended while its runner stayed connected is re-opened.
pub const REOPEN_DELAY: Duration = Duration::from_millis(500);

/// What the actor sees when a transition happens.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct View {
    /// The session's status is `running` or `waiting`.
    pub mid_turn: bool,
    /// The registry has a tunnel of the session's runner.
    pub online: bool,
    /// That tunnel is open (not closing): a reader can be started on it.
    pub open: bool,
    /// A relay reader is running.
    pub reading: bool,
}

/// How the runner's tunnels stand when the relay's stream ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Tunnel {
    /// A newer tunnel than the one the stream was on is open.
    Newer,
    /// The stream's own tunnel is still open.
    Same,
    /// No open tunnel.
    Gone,
}

/// What happened.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Input<'a> {
    /// `interrupt` (or `stop_session`, `stop`) was published: the cancelled turn's trailing output is fenced.
    Interrupted { stop: bool },
    /// The interrupt did not reach the runner.
    InterruptUndelivered { stop: bool },
    /// The runner says a turn started (`session.status running`).
    TurnStarted,
    /// The runner says the session is idle.
    TurnIdle,
    /// A reader was started (on a session launched on a host or not).
    Opened { host_supervised: bool },
    /// The relay now reads from another runner.
    Rebound,
    /// The reader subscribed and initialised the session; the runner says it is idle (`runner_idle`) or not.
    Ready { runner_idle: bool },
    /// The reader's stream ended.
    Ended { tunnel: Tunnel },
    /// The runner is gone (no open tunnel to re-open on).
    Lost,
    /// The server started and found the session mid-turn.
    Recover,
    /// A tunnel of the runner connected.
    Connected,
    /// The host reported the exit of a runner's process (`same_runner`: the session's).
    Exited { same_runner: bool, report: &'a str },
    /// A deadline ([`Lifecycle::deadline`]) passed.
    Timer,
}

/// What the actor does next.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Effect {
    /// Settle the session to idle (a stopped turn is over).
    SettleIdle,
    /// Fail the running turn: keep its text as incomplete, store the error, status `failed`.
    FailTurn { code: &'static str, message: String },
    /// The runner came back without the running turn: keep its text (with a `turn_lost` error if there was
    /// any), settle to idle.
    SettleLostTurn,
    /// Start a reader on the runner's current tunnel.
    Open,
}

/// The relay's lifecycle state.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lifecycle {
    /// How long a runner lost mid-turn may take to come back.
    grace_period: Duration,
    /// Trailing output of an interrupted turn is dropped while this is up.
    pub fence: bool,
    /// The turn was stopped on purpose: a lost runner settles to idle, not failed.
    pub stopping: bool,
    /// When the runner lost mid-turn is given up.
    pub grace: Option<Instant>,
    /// When to re-open a stream that ended while its runner stayed connected.
    pub reopen: Option<Instant>,
    /// The session was launched on a host, whose daemon reports every exit of its runner.
    pub host_supervised: bool,
    /// The runner came back without the running turn (a new process): the turn stays open until the host's
    /// exit report fails it, or the grace runs out.
    pub orphaned: bool,
}

impl Lifecycle {
    pub fn new(grace_period: Duration) -> Self {
        Lifecycle {
            grace_period,
            fence: false,
            stopping: false,
            grace: None,
            reopen: None,
            host_supervised: false,
            orphaned: false,
        }
    }

    /// The next deadline, if any.
    pub fn deadline(&self) -> Option<Instant> {
        [self.grace, self.reopen].into_iter().flatten().min()
    }

    /// Whether a deadline has passed at `now`.
    pub fn due(&self, now: Instant) -> bool {
        self.deadline().is_some_and(|t| t <= now)
    }

    /// Whether the lifecycle waits for something (keeps the actor alive).
    pub fn waiting(&self) -> bool {
        self.grace.is_some() || self.reopen.is_some()
    }

    /// Whether a runner event of `kind` passes the fence. A terminal event lifts it (and passes); other
    /// `response.*` events are dropped while it is up.
    pub fn admit(&mut self, kind: &str, terminal: bool) -> bool {
        if !self.fence {
            return true;
        }
        if terminal {
            self.fence = false;
            return true;
        }
        !kind.starts_with("response.")
    }

    /// One transition.
    pub fn on(&mut self, input: Input<'_>, now: Instant, view: View) -> Vec<Effect> {
        match input {
            Input::Interrupted { stop } => {
                self.fence = true;
                self.stopping |= stop;
                vec![]
            }
            Input::InterruptUndelivered { stop } => {
                self.fence = false;
                self.stopping = false;
                if stop {
                    vec![Effect::SettleIdle]
                } else {
                    vec![]
                }
            }
            Input::TurnStarted => {
                self.fence = false;
                self.stopping = false;
                self.grace = None;
                self.orphaned = false;
                vec![]
            }
            Input::TurnIdle => {
                self.stopping = false;
                vec![]
            }
            Input::Opened { host_supervised } => {
                self.reopen = None;
                self.host_supervised = host_supervised;
                vec![]
            }
            Input::Rebound => {
                self.grace = None;
                self.reopen = None;
                vec![]
            }
            Input::Ready { runner_idle } => self.ready(now, view, runner_idle),
            Input::Ended { tunnel } => match tunnel {
                Tunnel::Newer => vec![Effect::Open],
                Tunnel::Same => {
                    self.reopen = Some(now + REOPEN_DELAY);
                    vec![]
                }
                Tunnel::Gone => self.lost(now, view),
            },
            Input::Lost => self.lost(now, view),
            Input::Recover => {
                if view.mid_turn && !view.reading && self.grace.is_none() {
                    self.grace = Some(now + self.grace_period);
                }
                vec![]
            }
            Input::Connected => {
                self.grace = None;
                vec![]
            }
            Input::Exited {
                same_runner,
                report,
            } => {
                if !same_runner || !view.mid_turn {
                    return vec![];
                }
                self.grace = None;
                self.orphaned = false;
                self.fence = false;
                if std::mem::take(&mut self.stopping) {
                    return vec![Effect::SettleIdle];
                }
                vec![Effect::FailTurn {
                    code: "runner_crashed",
                    message: report.to_owned(),
                }]
            }
            Input::Timer => {
                if self.grace.is_some_and(|t| t <= now) {
                    self.grace = None;
                    return self.grace_expired(view);
                }
                if self.reopen.is_some_and(|t| t <= now) {
                    self.reopen = None;
                    if view.open {
                        return vec![Effect::Open];
                    }
                    return self.lost(now, view);
                }
                vec![]
            }
        }
    }

    /// The runner is gone: mid-turn it gets the grace; a stopped turn settles to idle; idle stays quiet.
    fn lost(&mut self, now: Instant, view: View) -> Vec<Effect> {
        if !view.mid_turn {
            return vec![];
        }
        if self.stopping {
            self.stopping = false;
            self.fence = false;
            return vec![Effect::SettleIdle];
        }
        if self.grace.is_none() {
            self.grace = Some(now + self.grace_period);
        }
        vec![]
    }

    fn grace_expired(&mut self, view: View) -> Vec<Effect> {
        let orphaned = std::mem::take(&mut self.orphaned);
        if !view.mid_turn || (view.online && view.reading && !orphaned) {
            return vec![];
        }
        vec![Effect::FailTurn {
            code: "runner_disconnected",
            message: "Runner disconnected unexpectedly.".to_owned(),
        }]
    }

    fn ready(&mut self, now: Instant, view: View, runner_idle: bool) -> Vec<Effect> {
        self.grace = None;
        self.orphaned = false;
        if !(view.mid_turn && runner_idle) {
            return vec![];
        }
        if self.host_supervised && !self.stopping {
            // A new process on a host: the old one crashed or was killed, and its host's exit report (which
            // carries why, and the log tail) is on its way; fail the turn with it, or when the grace is over.
            self.orphaned = true;
            self.grace = Some(now + self.grace_period);
            return vec![];
        }
        // A restarted runner knows of no turn: the one we relayed is over.
        self.fence = false;
        self.stopping = false;
        vec![Effect::SettleLostTurn]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const GRACE: Duration = Duration::from_secs(10);

    /// One row of the table: what it shows, where it starts, what happens, what the actor sees, the effects
    /// and the state after.
    type Row<'a> = (&'a str, Start, Input<'a>, View, Vec<Effect>, After);

    /// A state to start from, in words.
    #[derive(Debug, Clone, Copy)]
    enum Start {
        Calm,
        Fenced,
        Stopping,
        InGrace,
        Orphaned,
        Reopening,
        HostSupervised,
    }

    /// What the state should look like after, in the fields that matter.
    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    struct After {
        fence: bool,
        stopping: bool,
        grace: bool,
        reopen: bool,
        orphaned: bool,
    }

    const CALM: After = After {
        fence: false,
        stopping: false,
        grace: false,
        reopen: false,
        orphaned: false,
    };

    fn start(at: Start, now: Instant) -> Lifecycle {
        let mut life = Lifecycle::new(GRACE);
        match at {
            Start::Calm => {}
            Start::Fenced => life.fence = true,
            Start::Stopping => {
                life.fence = true;
                life.stopping = true;
            }
            Start::InGrace => life.grace = Some(now),
            Start::Orphaned => {
                life.host_supervised = true;
                life.orphaned = true;
                life.grace = Some(now);
            }
            Start::Reopening => life.reopen = Some(now),
            Start::HostSupervised => life.host_supervised = true,
        }
        life
    }

    const MID: View = View {
        mid_turn: true,
        online: false,
        open: false,
        reading: false,
    };
    const MID_READING: View = View {
        mid_turn: true,
        online: true,
        open: true,
        reading: true,
    };
    const IDLE: View = View {
        mid_turn: false,
        online: true,
        open: true,
        reading: true,
    };

    fn fail(code: &'static str, message: &str) -> Vec<Effect> {
        vec![Effect::FailTurn {
            code,
            message: message.to_owned(),
        }]
    }

    #[test]
    fn every_transition_of_the_relay_lifecycle() {
        let lost = "Runner disconnected unexpectedly.";
        let grace = After {
            grace: true,
            ..CALM
        };
        #[rustfmt::skip]
        let table: Vec<Row<'_>> = vec![
            ("an interrupt raises the fence", Start::Calm, Input::Interrupted { stop: false }, MID, vec![], After { fence: true, ..CALM }),
            ("a stop raises it and remembers the stop", Start::Calm, Input::Interrupted { stop: true }, MID, vec![], After { fence: true, stopping: true, ..CALM }),
            ("an undelivered interrupt lifts the fence", Start::Fenced, Input::InterruptUndelivered { stop: false }, MID, vec![], CALM),
            ("an undelivered stop settles to idle", Start::Stopping, Input::InterruptUndelivered { stop: true }, MID, vec![Effect::SettleIdle], CALM),
            ("a new turn clears fence, stop and grace", Start::Stopping, Input::TurnStarted, MID, vec![], CALM),
            ("a new turn ends an orphaned wait", Start::Orphaned, Input::TurnStarted, MID, vec![], CALM),
            ("idle forgets the stop, keeps the fence", Start::Stopping, Input::TurnIdle, MID, vec![], After { fence: true, ..CALM }),
            ("a runner lost mid-turn gets the grace", Start::Calm, Input::Lost, MID, vec![], grace),
            ("a runner lost while idle is quiet", Start::Calm, Input::Lost, IDLE, vec![], CALM),
            ("a stopped turn whose runner is lost settles", Start::Stopping, Input::Lost, MID, vec![Effect::SettleIdle], CALM),
            ("a stream that ended on a newer tunnel re-opens at once", Start::Calm, Input::Ended { tunnel: Tunnel::Newer }, MID, vec![Effect::Open], CALM),
            ("a stream that ended on its open tunnel re-opens soon", Start::Calm, Input::Ended { tunnel: Tunnel::Same }, MID, vec![], After { reopen: true, ..CALM }),
            ("a stream that ended with its tunnel is a lost runner", Start::Calm, Input::Ended { tunnel: Tunnel::Gone }, MID, vec![], grace),
            ("the re-open time opens on an open tunnel", Start::Reopening, Input::Timer, MID_READING, vec![Effect::Open], CALM),
            ("the re-open time without a tunnel is a lost runner", Start::Reopening, Input::Timer, MID, vec![], grace),
            ("the grace over, a runner still away fails the turn", Start::InGrace, Input::Timer, MID, fail("runner_disconnected", lost), CALM),
            ("the grace over, a runner back and read is fine", Start::InGrace, Input::Timer, MID_READING, vec![], CALM),
            ("the grace over, an orphaned turn fails even when read", Start::Orphaned, Input::Timer, MID_READING, fail("runner_disconnected", lost), CALM),
            ("the grace over after the turn ended is quiet", Start::InGrace, Input::Timer, IDLE, vec![], CALM),
            ("a runner ready mid-turn ends the grace", Start::InGrace, Input::Ready { runner_idle: false }, MID_READING, vec![], CALM),
            ("a restarted runner without the turn settles it", Start::Fenced, Input::Ready { runner_idle: true }, MID_READING, vec![Effect::SettleLostTurn], CALM),
            ("a new process on a host waits for its exit report", Start::HostSupervised, Input::Ready { runner_idle: true }, MID_READING, vec![], After { grace: true, orphaned: true, ..CALM }),
            ("a restarted runner after a stop settles it", Start::Stopping, Input::Ready { runner_idle: true }, MID_READING, vec![Effect::SettleLostTurn], CALM),
            ("an idle runner while idle is nothing", Start::Calm, Input::Ready { runner_idle: true }, IDLE, vec![], CALM),
            ("the runner's exit fails the turn with its report", Start::Orphaned, Input::Exited { same_runner: true, report: "exit 1" }, MID, fail("runner_crashed", "exit 1"), CALM),
            ("the exit of a stopped turn's runner settles it", Start::Stopping, Input::Exited { same_runner: true, report: "exit 1" }, MID, vec![Effect::SettleIdle], CALM),
            ("another runner's exit is not ours", Start::InGrace, Input::Exited { same_runner: false, report: "x" }, MID, vec![], grace),
            ("an exit while idle is quiet", Start::Calm, Input::Exited { same_runner: true, report: "x" }, IDLE, vec![], CALM),
            ("a turn found mid-way at start gets the grace", Start::Calm, Input::Recover, MID, vec![], grace),
            ("a turn found mid-way with a reader waits for nothing", Start::Calm, Input::Recover, MID_READING, vec![], CALM),
            ("a connected runner ends the grace", Start::InGrace, Input::Connected, MID, vec![], CALM),
            ("another runner clears grace and re-open", Start::Reopening, Input::Rebound, MID, vec![], CALM),
            ("a reader started clears the re-open", Start::Reopening, Input::Opened { host_supervised: false }, MID, vec![], CALM),
        ];
        for (name, at, input, view, effects, after) in table {
            let now = Instant::now();
            let mut life = start(at, now);
            let got = life.on(input, now, view);
            assert_eq!(got, effects, "{name}: effects");
            let state = After {
                fence: life.fence,
                stopping: life.stopping,
                grace: life.grace.is_some(),
                reopen: life.reopen.is_some(),
                orphaned: life.orphaned,
            };
            assert_eq!(state, after, "{name}: state");
        }
    }

    #[test]
    fn the_fence_drops_response_events_until_a_terminal_one() {
        let mut life = Lifecycle::new(GRACE);
        assert!(life.admit("response.output_text.delta", false));
        life.on(Input::Interrupted { stop: false }, Instant::now(), MID);
        assert!(!life.admit("response.output_text.delta", false));
        assert!(life.admit("session.status", false));
        assert!(life.admit("response.cancelled", true));
        assert!(!life.fence);
        assert!(life.admit("response.output_text.delta", false));
    }

    #[test]
    fn deadlines_are_the_earliest_of_grace_and_reopen() {
        let now = Instant::now();
        let mut life = Lifecycle::new(GRACE);
        assert_eq!((life.deadline(), life.waiting()), (None, false));
        life.on(Input::Lost, now, MID);
        life.on(
            Input::Ended {
                tunnel: Tunnel::Same,
            },
            now,
            MID,
        );
        assert_eq!(life.deadline(), Some(now + REOPEN_DELAY));
        assert!(life.waiting() && !life.due(now) && life.due(now + REOPEN_DELAY));
    }
}
