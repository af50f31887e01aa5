//! The two-phase payloads, declared once: what `commit-all` sends every participant that can
//! prepare (the ledger, `postgres-xa` databases), and what they read.

use serde::{Deserialize, Serialize};

/// Prepare one branch of transaction `xid`: a debit or credit, held until the decision.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Prepare {
    pub xid: String,
    pub branch: i64,
    /// `debit` or `credit`.
    pub action: String,
    pub account: String,
    pub amount: i64,
}

/// Commit or abort what transaction `xid` prepared at a participant.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Decided {
    pub xid: String,
    /// The branches of `xid` this participant holds: a commit counts only once each of them is
    /// committed (the ledger finds them in its own table and needs no list).
    #[serde(default)]
    pub branches: Option<Vec<i64>>,
}
