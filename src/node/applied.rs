//! The revision a node holds, rebuilt from its state database and checked again; and the
//! state database opened for the commands that read it (`verify`, `status`).

use super::error::NodeError;
use super::serve;
use crate::store::StoreError;

/// The revision a node holds: its verified head, manifest and manifest blobs, and the read
/// checks of its files' chunks.
#[derive(Clone)]
pub(crate) struct Applied {
    pub head: crate::trust::VerifiedHead,
    pub manifest: std::sync::Arc<crate::tree::Manifest>,
    pub blobs: Vec<(crate::tree::ContentHash, Vec<u8>)>,
    pub checks: std::sync::Arc<serve::FileChecks>,
}

impl Applied {
    pub fn serve_index(&self, dir: &std::path::Path) -> serve::ServeIndex {
        let never = std::sync::atomic::AtomicBool::new(false);
        self.serve_index_unless(dir, &never).unwrap_or_default()
    }

    /// [`Applied::serve_index`], unless `stop` is set before it is built.
    pub fn serve_index_unless(
        &self,
        dir: &std::path::Path,
        stop: &std::sync::atomic::AtomicBool,
    ) -> Option<serve::ServeIndex> {
        serve::ServeIndex::build_unless(
            dir.to_owned(),
            self.head.signed().clone(),
            &self.manifest,
            self.blobs.clone(),
            &self.checks,
            stop,
        )
    }
}

/// Rebuild the applied revision from the state database, checking signature and hashes again.
/// A stored revision that cannot be read is an error naming the database file, so the node
/// refuses to start rather than guess. `checks` are the read checks of its files, from the
/// file index (the caller holds it, or passes none when it will not serve the revision).
pub(crate) fn load_applied(
    db: &crate::store::Db,
    stored: &crate::store::StoredState,
    lineage: &crate::trust::Lineage,
    swarm_id: uuid::Uuid,
    checks: serve::FileChecks,
) -> Result<Option<Applied>, NodeError> {
    let Some(bytes) = &stored.head else {
        return Ok(None);
    };
    let head = lineage.verify(crate::trust::SignedHead::decode(bytes)?, swarm_id)?;
    let (file, revision) = (db.path().display(), head.revision());
    let corrupt = |what: &str| StoreError::Corrupt(format!("{file}: revision {revision}: {what}"));
    let body = head.body();
    let index_bytes = db
        .blob(&body.manifest_index_hash)?
        .ok_or_else(|| corrupt("manifest index missing"))?;
    let index: Vec<crate::tree::ChunkRef> =
        postcard::from_bytes(&index_bytes).map_err(|_| corrupt("manifest index unreadable"))?;
    let mut bytes = Vec::with_capacity(body.manifest_size as usize);
    let mut blobs = vec![(body.manifest_index_hash, index_bytes)];
    for c in &index {
        let b = db
            .blob(&c.hash)?
            .ok_or_else(|| corrupt("manifest chunk missing"))?;
        bytes.extend_from_slice(&b);
        blobs.push((c.hash, b));
    }
    if crate::tree::ContentHash::of(&bytes) != body.manifest_hash {
        return Err(corrupt("manifest hash mismatch").into());
    }
    // Signed, and the bytes the signature names, yet unreadable: written by a newer treecast
    // (another manifest format) or by a test playing a compromised publisher. Never taken for
    // an empty tree: the publisher's guard against publishing a much smaller one compares with
    // it, and a subscriber applies the next revision over it.
    let manifest = crate::tree::Manifest::decode(&bytes)
        .map_err(|e| corrupt(&format!("its manifest cannot be read ({e})")))?;
    Ok(Some(Applied {
        head,
        manifest: std::sync::Arc::new(manifest),
        blobs,
        checks: std::sync::Arc::new(checks),
    }))
}

/// Open the state database of the tree at `dir`, saying so clearly when a node holds it.
pub(crate) fn open_db(dir: &std::path::Path) -> Result<crate::store::Db, NodeError> {
    let db_path = dir.join(crate::config::STATE_DIR).join("state.redb");
    if !db_path.exists() {
        return Err(NodeError::Refused(format!(
            "{} has no treecast state (no {})",
            dir.display(),
            db_path.display()
        )));
    }
    crate::store::Db::open(&db_path).map_err(|e| match e {
        StoreError::Db(e) if matches!(*e, redb::Error::DatabaseAlreadyOpen) => {
            NodeError::Refused(format!(
                "a treecast node is running on {}: its state database is locked (stop it first)",
                dir.display()
            ))
        }
        other => other.into(),
    })
}

/// Rehash `dir` against the revision its state database says it holds.
pub fn verify_dir(dir: &std::path::Path) -> Result<(u64, crate::store::VerifyReport), NodeError> {
    let db = open_db(dir)?;
    verify_with(&db, dir)
}

pub(crate) fn verify_with(
    db: &crate::store::Db,
    dir: &std::path::Path,
) -> Result<(u64, crate::store::VerifyReport), NodeError> {
    let stored = db.state()?;
    if let Some(revision) = stored.applying {
        return Err(NodeError::Refused(format!(
            "the node stopped while it put revision {revision} in place: the mirror holds whole \
             files of it beside older ones, and the node finishes the switch when it runs again"
        )));
    }
    let Some((swarm, lineage)) = stored.lineage() else {
        return Err(NodeError::Refused(
            "no swarm recorded in the state database".into(),
        ));
    };
    let applied = load_applied(db, &stored, &lineage, swarm, Default::default())?
        .ok_or_else(|| NodeError::Refused("no revision has been applied yet".into()))?;
    let report = crate::store::verify_tree(dir, &applied.manifest)?;
    Ok((applied.head.revision(), report))
}
