//! The audit trail: every change is recorded in the same transaction, and the hash chain
//! exposes an edited field, a deleted row, swapped rows, an inserted row, truncation and
//! a rewritten history (the last two against an exported checkpoint).

use crate::app::audit::row_hash;
use crate::app::tests::*;
use crate::app::{AuditCheckpoint, AuditProblem};
use crate::catalog::{AuditRow, Catalog};
use crate::workflow::Answer;

async fn rows(env: &Env) -> Vec<AuditRow> {
    let mut tx = env.app.catalog().begin_read().await.expect("read");
    tx.audit_rows_after(0, 10_000).await.expect("rows")
}

async fn problem(env: &Env, checkpoint: Option<&AuditCheckpoint>) -> Option<AuditProblem> {
    env.app
        .verify_audit(checkpoint)
        .await
        .expect("verify")
        .problem
}

pub(crate) async fn a_clean_chain_verifies_and_links_every_change(catalog: Catalog) {
    let env = Env::new(catalog).await;
    let before = rows(&env).await.len();
    assert!(
        before >= 15,
        "the fixture's setup is audited ({before} rows)"
    );
    let opened = env
        .open(
            SKPD,
            "colocation_handover",
            env.colocation(Env::two_servers()),
        )
        .await
        .expect("open");
    let id = opened.request.id;
    env.complete(KADIN, id, 1).await;

    let trail = env
        .app
        .audit_trail("request", &id.to_string())
        .await
        .expect("trail");
    let actions: Vec<&str> = trail.iter().map(|row| row.action.as_str()).collect();
    assert_eq!(actions, ["request.open", "request.complete"]);
    assert_eq!(trail[0].actor, SKPD);
    assert_eq!(trail[0].role.as_deref(), Some("SKPD"));
    assert!(trail[0].before_json.is_none());
    assert_eq!(trail[1].actor, KADIN);
    assert_eq!(trail[1].role.as_deref(), Some("KADIN"));
    let before_state: serde_json::Value =
        serde_json::from_str(trail[1].before_json.as_deref().expect("before")).expect("json");
    let after: serde_json::Value =
        serde_json::from_str(trail[1].after_json.as_deref().expect("after")).expect("json");
    assert_eq!(before_state["progress"]["current"], 1);
    assert_eq!(after["state"]["progress"]["current"], 2);
    assert_eq!(after["event"]["event"], "complete");

    let all = rows(&env).await;
    for pair in all.windows(2) {
        assert_eq!(pair[1].seq, pair[0].seq + 1);
        assert_eq!(pair[1].prev_hash, pair[0].hash);
    }
    let verification = env.app.verify_audit(None).await.expect("verify");
    assert!(verification.is_intact());
    assert_eq!(verification.rows_checked as usize, all.len());
    assert_eq!(verification.last_seq, all.last().expect("rows").seq);

    // A refused event writes nothing.
    let count = all.len();
    assert!(env.try_decide(KASI, id, 4, Answer::Yes, "x").await.is_err());
    assert_eq!(rows(&env).await.len(), count);
}

pub(crate) async fn an_edited_field_is_detected(catalog: Catalog) {
    let env = Env::new(catalog).await;
    let mut tx = env.app.catalog().begin().await.expect("tx");
    tx.tamper_audit_actor(5, "mallory").await.expect("tamper");
    tx.commit().await.expect("commit");
    let found = problem(&env, None).await.expect("detected");
    assert_eq!(found, AuditProblem::HashMismatch { seq: 5 });
    assert_eq!(found.first_bad_seq(), 5);
    assert!(found.to_string().contains("row 5"), "{found}");
    assert_error(
        env.app.audit_checkpoint(env.now()).await,
        conflict,
        "audit row 5",
    );
}

pub(crate) async fn a_deleted_middle_row_is_detected(catalog: Catalog) {
    let env = Env::new(catalog).await;
    let mut tx = env.app.catalog().begin().await.expect("tx");
    tx.tamper_delete_audit_rows(7, 7).await.expect("tamper");
    tx.commit().await.expect("commit");
    let found = problem(&env, None).await.expect("detected");
    assert_eq!(
        found,
        AuditProblem::SequenceGap {
            expected: 7,
            found: 8
        }
    );
    assert_eq!(found.first_bad_seq(), 7);

    // Closing the gap by renumbering does not help: the next row's link is broken.
    let mut tx = env.app.catalog().begin().await.expect("tx");
    let last = rows(&env).await.last().expect("rows").seq;
    for seq in 8..=last {
        tx.tamper_renumber_audit_row(seq, seq - 1)
            .await
            .expect("renumber");
    }
    tx.commit().await.expect("commit");
    assert_eq!(
        problem(&env, None).await,
        Some(AuditProblem::BrokenLink { seq: 7 })
    );
}

pub(crate) async fn two_swapped_rows_are_detected(catalog: Catalog) {
    let env = Env::new(catalog).await;
    let all = rows(&env).await;
    let (fifth, sixth) = (all[4].clone(), all[5].clone());
    let mut tx = env.app.catalog().begin().await.expect("tx");
    tx.tamper_overwrite_audit_row(&AuditRow {
        seq: 5,
        ..sixth.clone()
    })
    .await
    .expect("tamper");
    tx.tamper_overwrite_audit_row(&AuditRow {
        seq: 6,
        ..fifth.clone()
    })
    .await
    .expect("tamper");
    tx.commit().await.expect("commit");
    assert_eq!(
        problem(&env, None).await,
        Some(AuditProblem::BrokenLink { seq: 5 })
    );
}

pub(crate) async fn an_inserted_row_is_detected(catalog: Catalog) {
    let env = Env::new(catalog).await;
    let all = rows(&env).await;
    let last = all.last().expect("rows").seq;
    let mut tx = env.app.catalog().begin().await.expect("tx");
    // Make room after row 5 (from the end, so no number is ever used twice), then insert
    // a forged row that is itself well-formed: linked to row 5 and correctly hashed.
    for seq in (6..=last).rev() {
        tx.tamper_renumber_audit_row(seq, seq + 1)
            .await
            .expect("renumber");
    }
    let mut forged = AuditRow {
        seq: 6,
        at: all[4].at.clone(),
        actor: ADMIN.into(),
        role: Some("ADMIN".into()),
        action: "account.create".into(),
        entity: "account".into(),
        entity_id: "999".into(),
        before_json: None,
        after_json: Some("{\"username\":\"backdoor\"}".into()),
        prev_hash: all[4].hash.clone(),
        hash: String::new(),
    };
    forged.hash = row_hash(&forged);
    tx.tamper_insert_audit_row(&forged).await.expect("insert");
    tx.commit().await.expect("commit");
    assert_eq!(
        problem(&env, None).await,
        Some(AuditProblem::BrokenLink { seq: 7 }),
        "the row after the forged one no longer follows it"
    );
}

pub(crate) async fn tail_truncation_is_detected_against_a_checkpoint(catalog: Catalog) {
    let env = Env::new(catalog).await;
    let checkpoint = env
        .app
        .audit_checkpoint(env.now())
        .await
        .expect("checkpoint");
    let directory = tempfile::tempdir().expect("dir");
    let path = directory.path().join("audit-head.json");
    checkpoint.write_file(&path).expect("written");
    let kept = AuditCheckpoint::read_file(&path).expect("read back");
    assert_eq!(kept, checkpoint);
    assert!(
        env.app
            .verify_audit(Some(&kept))
            .await
            .expect("verify")
            .is_intact()
    );

    // Remove the last three rows.
    let all = rows(&env).await;
    let last = all.last().expect("rows").seq;
    assert_eq!(last, checkpoint.seq);
    let mut tx = env.app.catalog().begin().await.expect("tx");
    tx.tamper_delete_audit_rows(last - 2, last)
        .await
        .expect("tamper");
    tx.commit().await.expect("commit");
    // The stored head still names the old last row…
    assert_eq!(
        problem(&env, None).await,
        Some(AuditProblem::HeadMismatch {
            head_seq: last,
            last_seq: last - 3
        })
    );
    // …so a careful attacker moves it too: the chain alone then looks intact,
    let new_last = &all[all.len() - 4];
    let mut tx = env.app.catalog().begin().await.expect("tx");
    tx.tamper_audit_head(new_last.seq, &new_last.hash)
        .await
        .expect("tamper");
    tx.commit().await.expect("commit");
    assert_eq!(problem(&env, None).await, None);
    // but not against the checkpoint kept elsewhere.
    let found = problem(&env, Some(&kept)).await.expect("detected");
    assert_eq!(
        found,
        AuditProblem::Truncated {
            checkpoint_seq: last,
            last_seq: last - 3
        }
    );
    assert_eq!(found.first_bad_seq(), last - 2);
}

pub(crate) async fn a_rewritten_history_is_detected_against_a_checkpoint(catalog: Catalog) {
    let env = Env::new(catalog).await;
    let checkpoint = env
        .app
        .audit_checkpoint(env.now())
        .await
        .expect("checkpoint");
    // Rewrite row 4 and recompute every hash after it, and the head: a consistent chain.
    let mut all = rows(&env).await;
    all[3].actor = "mallory".into();
    let mut tx = env.app.catalog().begin().await.expect("tx");
    for index in 3..all.len() {
        all[index].prev_hash = all[index - 1].hash.clone();
        all[index].hash = row_hash(&all[index]);
        tx.tamper_overwrite_audit_row(&all[index])
            .await
            .expect("tamper");
    }
    let last = all.last().expect("rows");
    tx.tamper_audit_head(last.seq, &last.hash)
        .await
        .expect("tamper");
    tx.commit().await.expect("commit");
    assert_eq!(problem(&env, None).await, None);
    assert_eq!(
        problem(&env, Some(&checkpoint)).await,
        Some(AuditProblem::CheckpointMismatch {
            seq: checkpoint.seq
        })
    );
}
