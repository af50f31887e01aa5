//! What a run's journal says of each of its saga steps: the one fold of events into steps,
//! used by compensation (which steps to undo), by the command line as a run goes and by
//! `runs show`.

use crate::event::{CallSpec, Event};

/// What the journal says about one step's action.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StepOutcome {
    /// It applied.
    Done,
    /// It was refused, or never reached its participant: nothing to undo.
    Failed,
    /// No outcome yet, or one that may have applied (a lost reply): must be checked.
    Unknown,
}

/// One saga step, as far as the journal has got.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Step {
    pub call: u32,
    pub name: String,
    pub action: CallSpec,
    pub compensation: Option<CallSpec>,
    pub fencing_tokens: Vec<(String, u64)>,
    pub outcome: StepOutcome,
    pub compensated: bool,
}

impl Step {
    /// `participant.action` of the step's action.
    pub fn action_name(&self) -> String {
        format!("{}.{}", self.action.participant, self.action.action)
    }
}

/// A run's steps in journal order, folded from its events.
#[derive(Debug, Clone, Default)]
pub struct Steps {
    steps: Vec<Step>,
}

impl Steps {
    /// The steps `events` (a run's journal, in order) record.
    pub fn of(events: &[Event]) -> Steps {
        let mut steps = Steps::default();
        for event in events {
            steps.apply(event);
        }
        steps
    }

    /// Folds in the next event of the run; returns the step it concerns, if any.
    pub fn apply(&mut self, event: &Event) -> Option<&Step> {
        let (call, outcome, compensated) = match event {
            Event::StepIntent {
                call,
                name,
                action,
                compensation,
                fencing_tokens,
            } => {
                self.steps.push(Step {
                    call: *call,
                    name: name.clone(),
                    action: action.clone(),
                    compensation: compensation.clone(),
                    fencing_tokens: fencing_tokens.clone(),
                    outcome: StepOutcome::Unknown,
                    compensated: false,
                });
                return self.steps.last();
            }
            Event::StepDone { call, .. }
            | Event::StepResolved {
                call,
                outcome: Ok(_),
            } => (*call, Some(StepOutcome::Done), false),
            Event::StepFailed { call, error }
            | Event::StepResolved {
                call,
                outcome: Err(error),
            } => {
                let outcome = if error.may_have_applied() {
                    StepOutcome::Unknown
                } else {
                    StepOutcome::Failed
                };
                (*call, Some(outcome), false)
            }
            Event::CompensationDone { call, .. } => (*call, None, true),
            _ => return None,
        };
        let step = self.steps.iter_mut().find(|s| s.call == call)?;
        if let Some(outcome) = outcome {
            step.outcome = outcome;
        }
        step.compensated |= compensated;
        Some(step)
    }

    /// The step of call `call`.
    pub fn get(&self, call: u32) -> Option<&Step> {
        self.steps.iter().find(|s| s.call == call)
    }

    /// The steps, in journal order.
    pub fn into_vec(self) -> Vec<Step> {
        self.steps
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::CallFailure;

    fn spec(action: &str) -> CallSpec {
        CallSpec {
            participant: "ledger".to_owned(),
            action: action.to_owned(),
            payload: "{}".to_owned(),
        }
    }

    fn intent(call: u32, name: &str) -> Event {
        Event::StepIntent {
            call,
            name: name.to_owned(),
            action: spec("debit"),
            compensation: Some(spec("credit")),
            fencing_tokens: Vec::new(),
        }
    }

    #[test]
    fn each_step_ends_as_its_last_event_says() {
        let events = [
            intent(1, "applied"),
            Event::StepDone {
                call: 1,
                output: "{}".to_owned(),
            },
            intent(2, "refused"),
            Event::StepFailed {
                call: 2,
                error: CallFailure::Rejected("no".to_owned()),
            },
            intent(3, "lost reply"),
            Event::StepFailed {
                call: 3,
                error: CallFailure::Unknown("timeout".to_owned()),
            },
            intent(4, "checked"),
            Event::StepResolved {
                call: 4,
                outcome: Ok("{}".to_owned()),
            },
            Event::CompensationDone {
                call: 1,
                output: "{}".to_owned(),
            },
            intent(5, "cut off"),
        ];
        let steps = Steps::of(&events).into_vec();
        let seen: Vec<(&str, StepOutcome, bool)> = steps
            .iter()
            .map(|s| (s.name.as_str(), s.outcome, s.compensated))
            .collect();
        assert_eq!(
            seen,
            [
                ("applied", StepOutcome::Done, true),
                ("refused", StepOutcome::Failed, false),
                ("lost reply", StepOutcome::Unknown, false),
                ("checked", StepOutcome::Done, false),
                ("cut off", StepOutcome::Unknown, false),
            ]
        );
        assert_eq!(steps[0].action_name(), "ledger.debit");
    }

    #[test]
    fn an_event_of_an_unknown_call_changes_nothing() {
        let mut steps = Steps::of(&[intent(1, "a")]);
        let done = Event::StepDone {
            call: 9,
            output: "{}".to_owned(),
        };
        assert!(steps.apply(&done).is_none());
        assert_eq!(steps.get(1).map(|s| s.outcome), Some(StepOutcome::Unknown));
    }
}
