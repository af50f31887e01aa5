//! The module store (modules by content hash) and the deploy registry (each workflow's versions
//! and the active one).

use crate::error::JournalError;
use crate::journal::Journal;
use crate::records::{Deployed, Deployment};
use wasaga_core::clock::now_ms;
use wasaga_db::{DbError, Row, Tx};

impl Journal {
    /// Stores a module's bytes under its content hash (idempotent).
    pub async fn put_module(
        &self,
        hash: &str,
        name: &str,
        bytes: &[u8],
    ) -> Result<(), JournalError> {
        let (hash, name, bytes) = (hash.to_owned(), name.to_owned(), bytes.to_vec());
        self.db
            .write(move |tx| {
                Box::pin(async move {
                    put_module(tx, &hash, &name, &bytes).await?;
                    Ok::<_, JournalError>(())
                })
            })
            .await
    }

    /// The bytes of a stored module.
    pub async fn module_bytes(&self, hash: &str) -> Result<Vec<u8>, JournalError> {
        let hash = hash.to_owned();
        self.db
            .read(move |tx| {
                Box::pin(async move {
                    tx.fetch_optional(
                        "SELECT bytes FROM modules WHERE hash = $1",
                        wasaga_db::args![&hash],
                    )
                    .await?
                    .map(|row| row.blob(0))
                    .transpose()?
                    .ok_or(JournalError::UnknownModule(hash))
                })
            })
            .await
    }

    /// Stores `bytes` (already validated) and makes it the version new runs of `workflow`
    /// get. A module that is already a version of the workflow is re-activated, not added.
    pub async fn deploy(
        &self,
        workflow: &str,
        hash: &str,
        bytes: &[u8],
    ) -> Result<Deployed, JournalError> {
        let (workflow, hash, bytes) = (workflow.to_owned(), hash.to_owned(), bytes.to_vec());
        self.db
            .write(move |tx| {
                Box::pin(async move {
                    one_deploy_at_a_time(tx, &workflow).await?;
                    put_module(tx, &hash, &workflow, &bytes).await?;
                    let previous = active_version(tx, &workflow).await?;
                    let existing = tx
                        .fetch_optional(
                            "SELECT version FROM deployments WHERE workflow = $1 AND hash = $2",
                            wasaga_db::args![&workflow, &hash],
                        )
                        .await?;
                    let (version, new_version) = match existing {
                        Some(row) => (row.int(0)?, false),
                        None => {
                            // Past every number given before, pruned versions' too.
                            let listed = tx
                                .fetch_optional(
                                    "SELECT COALESCE(MAX(version), 0) FROM deployments WHERE workflow = $1",
                                    wasaga_db::args![&workflow],
                                )
                                .await?
                                .map(|r| r.int(0))
                                .transpose()?
                                .unwrap_or(0);
                            let made = tx
                                .fetch_optional(
                                    "SELECT versions_made FROM workflows WHERE name = $1",
                                    wasaga_db::args![&workflow],
                                )
                                .await?
                                .map(|r| r.int(0))
                                .transpose()?
                                .unwrap_or(0);
                            let next = listed.max(made) + 1;
                            tx.execute(
                                "INSERT INTO deployments (workflow, version, hash, deployed_at_ms)
                                 VALUES ($1, $2, $3, $4)",
                                wasaga_db::args![&workflow, next, &hash, now_ms() as i64],
                            )
                            .await?;
                            (next, true)
                        }
                    };
                    let deployment = activate(tx, &workflow, version).await?;
                    tx.execute(
                        "UPDATE workflows SET versions_made = $2 WHERE name = $1 AND versions_made < $2",
                        wasaga_db::args![&workflow, version],
                    )
                    .await?;
                    Ok::<_, JournalError>(Deployed {
                        deployment,
                        new_version,
                        previous,
                    })
                })
            })
            .await
    }

    /// Makes `version` (or, with `None`, the version before the active one) the version new
    /// runs of `workflow` get. Runs already started keep theirs.
    pub async fn activate(
        &self,
        workflow: &str,
        version: Option<i64>,
    ) -> Result<Deployment, JournalError> {
        let workflow = workflow.to_owned();
        self.db
            .write(move |tx| {
                Box::pin(async move {
                    one_deploy_at_a_time(tx, &workflow).await?;
                    let active = active_version(tx, &workflow)
                        .await?
                        .ok_or_else(|| JournalError::UnknownWorkflow(workflow.clone()))?;
                    let target = match version {
                        Some(version) => version,
                        None => tx
                            .fetch_optional(
                                "SELECT MAX(version) FROM deployments WHERE workflow = $1 AND version < $2",
                                wasaga_db::args![&workflow, active],
                            )
                            .await?
                            .map(|r| r.opt_int(0))
                            .transpose()?
                            .flatten()
                            .ok_or_else(|| JournalError::NothingToRollBack {
                                workflow: workflow.clone(),
                                version: active,
                            })?,
                    };
                    activate(tx, &workflow, target).await
                })
            })
            .await
    }

    /// The version new runs of `workflow` get.
    pub async fn active(&self, workflow: &str) -> Result<Deployment, JournalError> {
        let workflow = workflow.to_owned();
        self.db
            .read(move |tx| {
                Box::pin(async move {
                    let row = tx
                        .fetch_optional(
                            "SELECT d.workflow, d.version, d.hash, d.deployed_at_ms
                             FROM workflows w JOIN deployments d
                               ON d.workflow = w.name AND d.version = w.active_version
                             WHERE w.name = $1",
                            wasaga_db::args![&workflow],
                        )
                        .await?
                        .ok_or_else(|| JournalError::UnknownWorkflow(workflow.clone()))?;
                    deployment(&row, true)
                })
            })
            .await
    }

    /// Every version of `workflow`, oldest first.
    pub async fn versions(&self, workflow: &str) -> Result<Vec<Deployment>, JournalError> {
        let workflow = workflow.to_owned();
        self.db
            .read(move |tx| {
                Box::pin(async move {
                    let rows = tx
                        .fetch_all(
                            "SELECT d.workflow, d.version, d.hash, d.deployed_at_ms,
                                    CASE WHEN w.active_version = d.version THEN 1 ELSE 0 END
                             FROM deployments d JOIN workflows w ON w.name = d.workflow
                             WHERE d.workflow = $1 ORDER BY d.version",
                            wasaga_db::args![&workflow],
                        )
                        .await?;
                    if rows.is_empty() {
                        return Err(JournalError::UnknownWorkflow(workflow));
                    }
                    rows.iter().map(|r| deployment(r, r.int(4)? == 1)).collect()
                })
            })
            .await
    }

    /// The active version of every deployed workflow, by name.
    pub async fn workflows(&self) -> Result<Vec<Deployment>, JournalError> {
        self.db
            .read(|tx| {
                Box::pin(async move {
                    let rows = tx
                        .fetch_all(
                            "SELECT d.workflow, d.version, d.hash, d.deployed_at_ms
                             FROM workflows w JOIN deployments d
                               ON d.workflow = w.name AND d.version = w.active_version
                             ORDER BY w.name",
                            &[],
                        )
                        .await?;
                    rows.iter().map(|r| deployment(r, true)).collect()
                })
            })
            .await
    }
}

async fn put_module(tx: &mut dyn Tx, hash: &str, name: &str, bytes: &[u8]) -> Result<(), DbError> {
    tx.execute(
        "INSERT INTO modules (hash, name, bytes, size_bytes, deployed_at_ms) VALUES ($1, $2, $3, $4, $5)
         ON CONFLICT (hash) DO UPDATE SET bytes = EXCLUDED.bytes, size_bytes = EXCLUDED.size_bytes
         WHERE modules.size_bytes = 0",
        wasaga_db::args![hash, name, bytes, bytes.len() as i64, now_ms() as i64],
    )
    .await
    .map(|_| ())
}

/// Deploys and activations of one workflow on PostgreSQL take turns, whichever host makes
/// them: each reads the versions another has just committed, so two at once get two version
/// numbers rather than one of them a duplicate key. (SQLite has one writer at a time.)
async fn one_deploy_at_a_time(tx: &mut dyn Tx, workflow: &str) -> Result<(), DbError> {
    if tx.dialect() == wasaga_db::Dialect::Postgres {
        tx.execute(
            "SELECT pg_advisory_xact_lock(hashtext('wasaga-deploy:' || $1))",
            wasaga_db::args![workflow],
        )
        .await?;
    }
    Ok(())
}

async fn active_version(tx: &mut dyn Tx, workflow: &str) -> Result<Option<i64>, DbError> {
    tx.fetch_optional(
        "SELECT active_version FROM workflows WHERE name = $1",
        wasaga_db::args![workflow],
    )
    .await?
    .map(|r| r.int(0))
    .transpose()
}

async fn activate(
    tx: &mut dyn Tx,
    workflow: &str,
    version: i64,
) -> Result<Deployment, JournalError> {
    let row = tx
        .fetch_optional(
            "SELECT workflow, version, hash, deployed_at_ms FROM deployments
             WHERE workflow = $1 AND version = $2",
            wasaga_db::args![workflow, version],
        )
        .await?
        .ok_or_else(|| JournalError::UnknownVersion {
            workflow: workflow.to_owned(),
            version,
        })?;
    tx.execute(
        "INSERT INTO workflows (name, active_version, activated_at_ms) VALUES ($1, $2, $3)
         ON CONFLICT (name) DO UPDATE SET active_version = excluded.active_version,
                                          activated_at_ms = excluded.activated_at_ms",
        wasaga_db::args![workflow, version, now_ms() as i64],
    )
    .await?;
    deployment(&row, true)
}

fn deployment(row: &Row, active: bool) -> Result<Deployment, JournalError> {
    Ok(Deployment {
        workflow: row.text(0)?,
        version: row.int(1)?,
        hash: row.text(2)?,
        deployed_at_ms: row.int(3)? as u64,
        active,
    })
}
