//! The two-phase payloads, declared once: what `commit-all` sends every participant that can
//! prepare (the ledger, `postgres-xa` databases), and what they read.
//!
//! Fields are declared in alphabetical order, the order the payloads' keys have always been
//! written in: a participant compares a repeated operation's request text with the first, so
//! a commit journaled by an earlier build and retried by this one must read the same.

use serde::{Deserialize, Serialize};

/// Prepare one branch of transaction `xid`: a debit or credit, held until the decision.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Prepare {
    pub account: String,
    /// `debit` or `credit`.
    pub action: String,
    pub amount: i64,
    pub branch: i64,
    pub xid: String,
}

/// Commit or abort what transaction `xid` prepared at a participant.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Decided {
    /// The branches of `xid` this participant holds: a commit counts only once each of them is
    /// committed (the ledger finds them in its own table and needs no list).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub branches: Option<Vec<i64>>,
    pub xid: String,
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The text is what runs journaled before these types existed (`json!`, keys sorted), so
    /// an operation repeated across an upgrade is the same request.
    #[test]
    fn payloads_read_as_they_always_have() {
        let prepare = Prepare {
            account: "alice".to_owned(),
            action: "debit".to_owned(),
            amount: 7,
            branch: 0,
            xid: "run-1#2pc-3".to_owned(),
        };
        assert_eq!(
            serde_json::to_string(&prepare).expect("serializes"),
            r#"{"account":"alice","action":"debit","amount":7,"branch":0,"xid":"run-1#2pc-3"}"#
        );
        let commit = Decided {
            branches: Some(vec![0, 1]),
            xid: "run-1#2pc-3".to_owned(),
        };
        assert_eq!(
            serde_json::to_string(&commit).expect("serializes"),
            r#"{"branches":[0,1],"xid":"run-1#2pc-3"}"#
        );
        let sweep = Decided {
            branches: None,
            xid: "run-1#2pc-3".to_owned(),
        };
        assert_eq!(
            serde_json::to_string(&sweep).expect("serializes"),
            r#"{"xid":"run-1#2pc-3"}"#
        );
        let read: Decided = serde_json::from_str(r#"{"xid":"x"}"#).expect("reads");
        assert_eq!(read.branches, None);
        assert!(serde_json::from_str::<Prepare>(r#"{"xid":"x","extra":1}"#).is_err());
    }
}
