//! What a restart must know of a session (the durable store keeps it):
//! identity, generations, close, acknowledgement and subscriptions, as one
//! typed row. Stream state is not kept: after a restart no stream is
//! attached and the window starts again.

use serde::{Deserialize, Serialize};

use super::Session;
use crate::ids::{JobId, Principal, SessionId};

/// A session's durable record. Field names are the stored JSON's (rows
/// written by earlier versions read back; missing numbers are 0).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SessionRow {
    pub id: String,
    pub principal: String,
    pub features: Vec<String>,
    #[serde(default)]
    pub created_at: String,
    #[serde(default)]
    pub issued_generation: u64,
    #[serde(default)]
    pub used_generation: u64,
    #[serde(default)]
    pub closed: bool,
    #[serde(default)]
    pub acked_through: Option<u64>,
    #[serde(default)]
    pub subscriptions: Vec<String>,
}

impl Session {
    pub fn record(&self) -> SessionRow {
        let state = self.state();
        SessionRow {
            id: self.id.as_str().to_owned(),
            principal: self.principal.as_str().to_owned(),
            features: self.features.clone(),
            created_at: self.created_at.clone(),
            issued_generation: state.issued_generation,
            used_generation: state.used_generation,
            closed: state.closed,
            acked_through: state.acked_through,
            subscriptions: state
                .subscriptions
                .iter()
                .map(|id| id.as_str().to_owned())
                .collect(),
        }
    }

    /// Rebuilds a session from its record; its resume window restarts now.
    pub fn restore(row: &SessionRow) -> Session {
        let session = Session::new(
            SessionId::from_client(&row.id),
            Principal::new(&row.principal),
            row.features.clone(),
            row.created_at.clone(),
        );
        {
            let mut state = session.state();
            state.issued_generation = row.issued_generation;
            state.used_generation = row.used_generation;
            state.closed = row.closed;
            state.acked_through = row.acked_through;
            state.subscriptions = row
                .subscriptions
                .iter()
                .map(|id| JobId::from_client(id))
                .collect();
        }
        session
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rows_round_trip_and_old_rows_read_back() {
        let session = Session::new(
            SessionId::from_client("sess_1"),
            Principal::new("alice"),
            vec!["ack".into()],
            "2026-01-01T00:00:00.000Z".into(),
        );
        session.welcome_new();
        session.add_subscription(&JobId::from_client("job_9"));
        let row = session.record();
        let json = serde_json::to_value(&row).unwrap();
        let back: SessionRow = serde_json::from_value(json).unwrap();
        assert_eq!(Session::restore(&back).record(), row);
        // A row without the optional fields (an older gateway's) reads back.
        let old: SessionRow = serde_json::from_str(
            r#"{"id":"sess_2","principal":"bob","features":[],"acked_through":null}"#,
        )
        .unwrap();
        assert_eq!((old.issued_generation, old.closed), (0, false));
    }
}
