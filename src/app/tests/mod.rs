//! The catalog conformance suite: every scenario below runs twice, once on a fresh SQLite
//! file and once in a fresh PostgreSQL schema (`CADANG_TEST_POSTGRES_URL`), through the
//! same application API. When the PostgreSQL URL is not set, the PostgreSQL half prints a
//! loud `SKIPPED` line instead of passing silently.

mod assets_secrets;
mod audit_chain;
mod capacity_race;
mod directory;
mod documents_numbering;
mod guards;
mod harness;
mod operations;
pub(crate) mod plans;
mod procedures;
mod reports;

pub(crate) use harness::*;

/// Expands each `module: [scenario, …]` into one test per backend:
/// `on_sqlite::module::scenario` and `on_postgres::module::scenario`.
macro_rules! conformance {
    ($( $module:ident : [ $( $scenario:ident ),* $(,)? ] ),* $(,)?) => {
        mod on_sqlite {
            $(
                mod $module {
                    $(
                        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                        async fn $scenario() {
                            crate::app::tests::harness::on_sqlite(
                                crate::app::tests::$module::$scenario,
                            )
                            .await;
                        }
                    )*
                }
            )*
        }
        mod on_postgres {
            $(
                mod $module {
                    $(
                        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                        async fn $scenario() {
                            crate::app::tests::harness::on_postgres(
                                crate::app::tests::$module::$scenario,
                            )
                            .await;
                        }
                    )*
                }
            )*
        }
    };
}

conformance! {
    plans: [
        the_backup_request_steers_its_plan,
        a_lapsed_lease_is_taken_over,
        the_run_of_a_gone_daemon_is_taken_back_at_once,
        racing_daemons_run_every_slot_exactly_once,
        a_plan_action_of_a_dead_daemon_is_applied_once_by_another,
    ],
    operations: [
        a_backup_waits_for_its_window,
        bad_runs_notify_once_and_delivery_retries,
        reports_show_failures_overdue_plans_and_storage,
    ],
    audit_chain: [
        a_clean_chain_verifies_and_links_every_change,
        an_edited_field_is_detected,
        a_deleted_middle_row_is_detected,
        two_swapped_rows_are_detected,
        an_inserted_row_is_detected,
        tail_truncation_is_detected_against_a_checkpoint,
        a_rewritten_history_is_detected_against_a_checkpoint,
    ],
    directory: [
        the_first_admin_is_bootstrapped_once,
        only_admins_manage_the_directory,
        nip_errors_are_clear,
        duplicates_are_conflicts,
        skpd_accounts_belong_to_an_agency,
        disabled_accounts_cannot_act,
    ],
    procedures: [
        colocation_approved_and_handed_over,
        colocation_capacity_unavailable,
        colocation_rejected_by_the_head_of_agency,
        backup_continued_then_stopped,
        backup_not_continued,
        restore_rejected,
        restore_succeeds_first_time,
        the_restore_of_a_gone_daemon_is_taken_back_at_once,
        restore_falls_back_then_confirms,
        a_restore_whose_agent_stays_away_falls_back_to_the_alternate_target,
        withdrawal_approved,
        withdrawal_rejected,
        maintenance_loops_until_confirmed,
        cancel_releases_the_reservation,
    ],
    guards: [
        wrong_roles_are_forbidden,
        skpd_acts_only_for_its_own_agency,
        decisions_need_a_reason,
        events_on_finished_requests_conflict,
        events_on_other_steps_conflict,
        application_data_must_fit_the_procedure,
        ip_and_domain_errors_are_clear,
        handover_needs_the_observed_specification,
        revision_2_finishes_after_revision_3_is_loaded,
        a_changed_revision_is_refused,
    ],
    capacity_race: [
        concurrent_approvals_cannot_over_commit_a_rack,
        a_taken_rack_turns_yes_into_a_conflict,
        the_capacity_check_reports_numbers,
    ],
    assets_secrets: [
        passwords_are_sealed_and_revealed_only_with_audit,
        agent_reports_record_mismatches,
        servers_predating_cadang_are_registered,
    ],
    documents_numbering: [
        numbers_are_unique_and_yearly,
        concurrent_issuance_never_reuses_a_number,
        documents_escape_user_data,
    ],
    reports: [
        overruns_are_reported_on_the_working_calendar,
        outbox_actions_are_claimed_and_finished,
    ],
}
