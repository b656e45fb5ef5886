//! The state machine of a run's status: which command may move a run from
//! which status to which. Every status change the engine makes is one of
//! these commands, committed as a compare-and-set on the committed status
//! (`Write::Transition`) together with its events (`crate::ledger`), so of
//! two competing changes exactly one wins and a run ends exactly once.
//!
//! ```text
//!  queued ──Start──▶ running ──Wait──▶ waiting ──Resume──▶ running
//!    │                 │ │               │
//!    │                 │ └─Finish──▶ succeeded | failed
//!    │                 └──Interrupt──▶ interrupted      waiting ──Reject──▶ rejected
//!    └─Cancel (from queued, running or waiting)──▶ cancelled
//!    └─Abandon (recovery, from queued, running or waiting)──▶ failed
//! ```
//!
//! A run ends in one place, [`End::change`]: whoever ends it (the run
//! itself, a cancel, a rejection, shutdown, recovery) describes the end and
//! commits the writes and events it gives, so that every end closes the
//! steps left running, says why, and announces `workflow.completed` last.

use aegis_history::{CloseSteps, RunId, RunStatus, RunUpdate, StepStatus, Transition, Write};

use crate::event::{EventData, StepCounts, WorkflowCompleted};

/// A change to a run's status.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Command {
    /// A queued run takes its slot and starts its first step.
    Start,
    /// The run records progress (a step started or finished): it must still
    /// be running, so that nothing is recorded for a run someone ended.
    Progress,
    /// The run reaches a gate.
    Wait,
    /// A decision (or a gate's timeout) lets a waiting run go on.
    Resume,
    /// A decision (or a gate's timeout) ends a waiting run `rejected`.
    Reject,
    /// The run's last step is done: it ends `succeeded` or `failed`.
    Finish { succeeded: bool },
    /// Someone cancels the run.
    Cancel,
    /// The process stops (or stopped) under the run; also a queued run that
    /// can no longer run (its workflow is gone).
    Interrupt,
    /// Recovery gives up a run whose records cannot be read: it ends
    /// `failed`, whatever unfinished status it had, so that it never blocks
    /// a start again.
    Abandon,
}

impl Command {
    /// Every command, for tables.
    #[cfg(test)]
    const ALL: [Command; 10] = [
        Command::Start,
        Command::Progress,
        Command::Wait,
        Command::Resume,
        Command::Reject,
        Command::Finish { succeeded: true },
        Command::Finish { succeeded: false },
        Command::Cancel,
        Command::Interrupt,
        Command::Abandon,
    ];

    /// The status `command` moves a run in `status` to, or `None` when it
    /// may not (the committed state wins and the command is refused).
    pub(crate) fn next(self, status: RunStatus) -> Option<RunStatus> {
        use RunStatus::{
            Cancelled, Failed, Interrupted, Queued, Rejected, Running, Succeeded, Waiting,
        };
        match (self, status) {
            (Command::Start, Queued) => Some(Running),
            (Command::Progress, Running) => Some(Running),
            (Command::Wait, Running) => Some(Waiting),
            (Command::Resume, Waiting) => Some(Running),
            (Command::Reject, Waiting) => Some(Rejected),
            (Command::Finish { succeeded: true }, Running) => Some(Succeeded),
            (Command::Finish { succeeded: false }, Running) => Some(Failed),
            (Command::Cancel, Queued | Running | Waiting) => Some(Cancelled),
            (Command::Interrupt, Queued | Running) => Some(Interrupted),
            (Command::Abandon, Queued | Running | Waiting) => Some(Failed),
            _ => None,
        }
    }

    /// The statuses the command applies from.
    pub(crate) fn from(self) -> Vec<RunStatus> {
        RunStatus::ALL.iter().copied().filter(|s| self.next(*s).is_some()).collect()
    }

    /// The status the command leads to (from any status it applies from).
    pub(crate) fn to(self) -> RunStatus {
        self.from().first().and_then(|s| self.next(*s)).unwrap_or(RunStatus::Running)
    }

    /// The compare-and-set write of this command, with the other fields of
    /// `update` (its status is the command's).
    pub(crate) fn write(self, run_id: &aegis_history::RunId, update: RunUpdate) -> Write {
        Write::Transition(
            run_id.clone(),
            Transition { from: self.from(), update: RunUpdate { status: self.to(), ..update } },
        )
    }

    /// The compare-and-set that changes nothing but the status.
    pub(crate) fn status_write(self, run_id: &aegis_history::RunId) -> Write {
        self.write(run_id, RunUpdate::status(self.to()))
    }
}

/// How a run ends: the command that ends it and what its end says.
#[derive(Debug)]
pub(crate) struct End {
    /// `Finish`, `Reject`, `Cancel`, `Interrupt` or `Abandon`.
    pub(crate) command: Command,
    pub(crate) at: jiff::Timestamp,
    /// Wall time from the run's start to its end.
    pub(crate) duration_ms: u64,
    /// Why the run did not succeed.
    pub(crate) error: Option<String>,
    /// The event saying who or what ended the run (`run.cancelled`,
    /// `run.interrupted`), announced before `workflow.completed`.
    pub(crate) cause: Option<EventData>,
    /// Steps still `running` are closed `failed` with this error.
    pub(crate) close_running: Option<String>,
    /// The run's steps, counted.
    pub(crate) summary: StepCounts,
}

impl End {
    /// A run given up as `failed` for `reason`, which also closes the step
    /// still running: history refused its progress, or its records cannot be
    /// read back.
    pub(crate) fn abandon(reason: String, summary: StepCounts) -> End {
        End {
            command: Command::Abandon,
            at: jiff::Timestamp::now(),
            duration_ms: 0,
            error: Some(reason.clone()),
            cause: None,
            close_running: Some(reason),
            summary,
        }
    }

    /// The status the run ends in.
    pub(crate) fn status(&self) -> RunStatus {
        self.command.to()
    }

    /// The writes and events of the end, to commit together (after any
    /// the caller's change needs first, such as a gate's decision).
    pub(crate) fn change(self, run_id: &RunId) -> (Vec<Write>, Vec<EventData>) {
        let status = self.status();
        let update = RunUpdate {
            status,
            started_at: None,
            completed_at: Some(self.at),
            duration_ms: Some(self.duration_ms),
            error: self.error.clone(),
        };
        let mut writes = vec![self.command.write(run_id, update)];
        if let Some(error) = self.close_running {
            writes.push(Write::CloseSteps(
                run_id.clone(),
                CloseSteps { status: StepStatus::Failed, error, at: self.at },
            ));
        }
        let mut events: Vec<EventData> = self.cause.into_iter().collect();
        events.push(EventData::WorkflowCompleted(WorkflowCompleted {
            status: status.as_str().to_owned(),
            success: status == RunStatus::Succeeded,
            duration_ms: self.duration_ms,
            summary: self.summary,
            error: self.error,
        }));
        (writes, events)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use RunStatus::{
        Cancelled, Failed, Interrupted, Queued, Rejected, Running, Succeeded, Waiting,
    };

    /// Every status × every command: the whole table, written out.
    #[test]
    fn the_transition_table() {
        let table: [(Command, [Option<RunStatus>; 8]); 10] = [
            //                      queued        running            waiting        succeeded failed rejected cancelled interrupted
            (Command::Start, [Some(Running), None, None, None, None, None, None, None]),
            (Command::Progress, [None, Some(Running), None, None, None, None, None, None]),
            (Command::Wait, [None, Some(Waiting), None, None, None, None, None, None]),
            (Command::Resume, [None, None, Some(Running), None, None, None, None, None]),
            (Command::Reject, [None, None, Some(Rejected), None, None, None, None, None]),
            (
                Command::Finish { succeeded: true },
                [None, Some(Succeeded), None, None, None, None, None, None],
            ),
            (
                Command::Finish { succeeded: false },
                [None, Some(Failed), None, None, None, None, None, None],
            ),
            (
                Command::Cancel,
                [Some(Cancelled), Some(Cancelled), Some(Cancelled), None, None, None, None, None],
            ),
            (
                Command::Interrupt,
                [Some(Interrupted), Some(Interrupted), None, None, None, None, None, None],
            ),
            (
                Command::Abandon,
                [Some(Failed), Some(Failed), Some(Failed), None, None, None, None, None],
            ),
        ];
        let statuses =
            [Queued, Running, Waiting, Succeeded, Failed, Rejected, Cancelled, Interrupted];
        assert_eq!(statuses.len(), RunStatus::ALL.len());
        assert_eq!(table.len(), Command::ALL.len());
        for (command, row) in table {
            for (status, expected) in statuses.iter().zip(row) {
                assert_eq!(command.next(*status), expected, "{command:?} from {status}");
            }
        }
    }

    #[test]
    fn a_finished_run_takes_no_command() {
        for status in RunStatus::ALL.iter().filter(|s| s.is_finished()) {
            for command in Command::ALL {
                assert_eq!(command.next(*status), None, "{command:?} from {status}");
            }
        }
    }

    #[test]
    fn writes_are_compare_and_sets_from_the_table() {
        let run = aegis_history::RunId::new("r");
        let Write::Transition(_, transition) = Command::Cancel.status_write(&run) else {
            panic!("not a transition");
        };
        assert_eq!(transition.from, vec![Queued, Running, Waiting]);
        assert_eq!(transition.update.status, Cancelled);
        assert_eq!(Command::Finish { succeeded: false }.to(), Failed);
        assert_eq!(Command::Progress.to(), Running);
    }
}
