//! Events encoded once for the journal's rows.

use wasaga_core::event::Event;

/// Events serialized for the journal, and what they change in the run's projection. Built by
/// the caller, so that the database's writer spends its time on SQL only.
#[derive(Debug, Default)]
pub struct Encoded {
    pub(crate) rows: Vec<(&'static str, String)>,
    /// The status, output and error a terminal (or compensating) event sets.
    pub(crate) projection: Option<(&'static str, Option<String>, Option<String>)>,
}

impl Encoded {
    pub fn new(events: &[Event]) -> Encoded {
        let mut encoded = Encoded {
            rows: Vec::with_capacity(events.len() + 1),
            projection: None,
        };
        for event in events {
            encoded.push(event);
        }
        encoded
    }

    /// Each event's kind and body text.
    pub fn rows(&self) -> &[(&'static str, String)] {
        &self.rows
    }

    pub fn push(&mut self, event: &Event) {
        let body = serde_json::to_string(event).expect("events always serialize");
        self.rows.push((event.kind(), body));
        match event {
            Event::Completed { output } => {
                self.projection = Some(("completed", Some(output.clone()), None))
            }
            Event::Compensating { cause } => {
                self.projection = Some(("compensating", None, Some(cause.clone())))
            }
            Event::Compensated { cause } => {
                self.projection = Some(("compensated", None, Some(cause.clone())))
            }
            Event::Stuck { reason } => {
                self.projection = Some(("stuck", None, Some(reason.clone())))
            }
            _ => {}
        }
    }

    pub fn len(&self) -> usize {
        self.rows.len()
    }

    pub fn is_empty(&self) -> bool {
        self.rows.is_empty()
    }

    /// The status, output and error the events set on the run, if they change its status.
    pub fn projection(&self) -> Option<(&'static str, &Option<String>, &Option<String>)> {
        self.projection
            .as_ref()
            .map(|(status, output, error)| (*status, output, error))
    }
}
