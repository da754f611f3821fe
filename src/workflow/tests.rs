//! Tests of the workflow against the real procedure files in `config/sop`.

use std::collections::{BTreeMap, BTreeSet};

use chrono::{DateTime, NaiveDate, NaiveTime, TimeDelta, TimeZone, Utc, Weekday};

use super::*;

// ---------------------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------------------

const SOP_DIR: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/config/sop");

/// Every `*.toml` in `config/sop`, as (file name, text), sorted by name.
fn sop_files() -> Vec<(String, String)> {
    let mut files: Vec<(String, String)> = std::fs::read_dir(SOP_DIR)
        .expect("config/sop exists")
        .map(|entry| entry.expect("readable entry").path())
        .filter(|path| path.extension().is_some_and(|ext| ext == "toml"))
        .map(|path| {
            let name = path.file_name().unwrap().to_string_lossy().into_owned();
            let text = std::fs::read_to_string(&path).expect("readable file");
            (name, text)
        })
        .collect();
    files.sort();
    files
}

fn sop_file(name: &str) -> String {
    sop_files()
        .into_iter()
        .find(|(file, _)| file == name)
        .unwrap_or_else(|| panic!("{name} is in config/sop"))
        .1
}

fn registry() -> Registry {
    Registry::from_sources(sop_files()).expect("the SOP definitions load")
}

fn definition(code: &str) -> ProcedureDefinition {
    registry()
        .latest(&ProcedureCode::from(code))
        .unwrap_or_else(|| panic!("{code} is defined"))
        .clone()
}

/// A local time in Asia/Jakarta (WIB, UTC+7), as UTC.
fn wib(year: i32, month: u32, day: u32, hour: u32, minute: u32) -> DateTime<Utc> {
    chrono_tz::Asia::Jakarta
        .with_ymd_and_hms(year, month, day, hour, minute, 0)
        .single()
        .expect("valid local time")
        .with_timezone(&Utc)
}

fn date(year: i32, month: u32, day: u32) -> NaiveDate {
    NaiveDate::from_ymd_opt(year, month, day).expect("valid date")
}

fn actor(role: Role) -> Actor {
    Actor::new(format!("user-{}", role.code().to_lowercase()), [role])
}

fn kadin() -> Actor {
    actor(Role::Kadin)
}
fn kabid() -> Actor {
    actor(Role::KabidTik)
}
fn kasi() -> Actor {
    actor(Role::KasiInfras)
}
fn petugas() -> Actor {
    actor(Role::Petugas)
}
fn skpd() -> Actor {
    actor(Role::Skpd)
}
fn admin() -> Actor {
    actor(Role::Admin)
}

fn render(document: DocumentKind) -> SystemAction {
    SystemAction::RenderDocument { document }
}

fn n(step: u32) -> StepNumber {
    StepNumber(step)
}

/// Drives one request, ten minutes per event, asserting each event is accepted.
struct Run {
    definition: ProcedureDefinition,
    state: RequestState,
    now: DateTime<Utc>,
}

impl Run {
    fn start(definition: &ProcedureDefinition, by: &Actor) -> (Run, Vec<PendingAction>) {
        let now = wib(2026, 3, 2, 8, 0); // a Monday
        let decision = start(definition, by, now).expect("start accepted");
        let run = Run {
            definition: definition.clone(),
            state: decision.state,
            now,
        };
        (run, decision.actions)
    }

    fn try_apply(&mut self, event: Event, by: &Actor) -> Result<Vec<PendingAction>, Rejection> {
        self.now += TimeDelta::minutes(10);
        let decision = decide(&self.definition, &self.state, event, by, self.now)?;
        self.state = decision.state;
        Ok(decision.actions)
    }

    fn ok(&mut self, event: Event, by: &Actor) -> Vec<PendingAction> {
        let description = format!("{event:?} by {:?}", by.roles);
        self.try_apply(event, by)
            .unwrap_or_else(|rejection| panic!("{description} rejected: {rejection}"))
    }

    fn complete(&mut self, step: u32, by: &Actor) -> Vec<PendingAction> {
        self.ok(Event::complete(step), by)
    }

    fn decide(&mut self, step: u32, answer: Answer, by: &Actor) -> Vec<PendingAction> {
        self.ok(
            Event::decide(step, answer, format!("reason for {step}")),
            by,
        )
    }

    /// The rejection of an event, asserting the state did not change.
    fn rejected(&self, event: Event, by: &Actor) -> Rejection {
        let before = self.state.clone();
        let rejection = decide(&self.definition, &self.state, event, by, self.now)
            .expect_err("event must be rejected");
        assert_eq!(self.state, before);
        rejection
    }

    fn path(&self) -> Vec<u32> {
        self.state.path().into_iter().map(|step| step.0).collect()
    }
}

fn actions_of(actions: &[PendingAction]) -> Vec<(u32, Trigger, SystemAction)> {
    actions
        .iter()
        .map(|pending| (pending.step.0, pending.trigger, pending.action))
        .collect()
}

/// Every path through a definition, answering each decision both ways and acting at each
/// step with the first role the step lists. A step is visited at most twice, so a loop is
/// taken once.
fn explore(definition: &ProcedureDefinition) -> BTreeSet<(Vec<u32>, Outcome)> {
    let (run, _) = Run::start(definition, &actor(definition.policy().start_roles[0]));
    let mut ends = BTreeSet::new();
    let mut pending = vec![run];
    while let Some(run) = pending.pop() {
        let Some(current) = run.state.current_step() else {
            ends.insert((run.path(), run.state.outcome().unwrap()));
            continue;
        };
        if run.path().iter().filter(|&&step| step == current.0).count() > 2 {
            continue;
        }
        let step = definition.step(current).unwrap();
        let by = actor(step.roles[0]);
        let events = if step.flow.is_decision() {
            vec![
                Event::decide(current.0, Answer::Yes, "ya"),
                Event::decide(current.0, Answer::No, "tidak"),
            ]
        } else {
            vec![Event::complete(current.0)]
        };
        for event in events {
            let mut next = Run {
                definition: run.definition.clone(),
                state: run.state.clone(),
                now: run.now,
            };
            next.ok(event, &by);
            pending.push(next);
        }
    }
    ends
}

// ---------------------------------------------------------------------------------------
// The definitions in config/sop
// ---------------------------------------------------------------------------------------

#[test]
fn all_sop_definitions_load_with_the_sop_identity() {
    let registry = registry();
    // Code, revision, steps. Revision 2 of the restore procedure adds the restore
    // execution form at step 7; revision 1 stays for the requests opened under it.
    let expected = [
        ("backup_request", 1, 8),
        ("colocation_handover", 1, 8),
        ("colocation_withdrawal", 1, 6),
        ("maintenance_request", 1, 5),
        ("restore_request", 1, 7),
        ("restore_request", 2, 7),
    ];
    let loaded: Vec<(String, u32, usize)> = registry
        .iter()
        .map(|definition| {
            (
                definition.code().to_string(),
                definition.revision().0,
                definition.steps().len(),
            )
        })
        .collect();
    let expected: Vec<(String, u32, usize)> = expected
        .iter()
        .map(|(code, revision, steps)| (code.to_string(), *revision, *steps))
        .collect();
    assert_eq!(loaded, expected);
    for definition in registry.iter() {
        assert_eq!(definition.sop_number(), "067/798");
        assert_eq!(definition.sop_revision_date(), date(2019, 2, 19));
        assert_eq!(definition.start_step(), n(1));
        assert_eq!(
            definition.policy().cancel_roles,
            vec![Role::Kadin, Role::Admin]
        );
        for step in definition.steps() {
            assert!(
                !step.roles.contains(&Role::Admin),
                "{} step {}: ADMIN must not execute SOP steps by default",
                definition.code(),
                step.number
            );
        }
    }
}

#[test]
fn procedure_a_matches_the_sop_table() {
    let a = definition("colocation_handover");
    assert_eq!(a.label(), Some("A"));
    let step1 = a.step(n(1)).unwrap();
    assert_eq!(
        step1.text.indonesian,
        "Menerima dan mendisposisi Surat dari SKPD"
    );
    assert_eq!(step1.roles, vec![Role::Kadin]);
    assert_eq!(step1.time_standard, TimeStandard::Hours(1));
    let inputs: Vec<&str> = step1.inputs.iter().map(|i| i.indonesian.as_str()).collect();
    assert_eq!(inputs, ["Buku agenda", "Lembar disposisi"]);
    assert_eq!(
        step1.output.as_ref().unwrap().indonesian,
        "Berkas permohonan"
    );

    let step4 = a.step(n(4)).unwrap();
    assert_eq!(
        step4.flow,
        Flow::Decision {
            yes: Target::Step(n(5)),
            no: Target::Step(n(8)),
        }
    );
    assert_eq!(step4.roles, vec![Role::KasiInfras]);
    assert_eq!(
        a.step(n(5)).unwrap().flow,
        Flow::Decision {
            yes: Target::Step(n(6)),
            no: Target::End(Outcome::Rejected),
        }
    );
    let step8 = a.step(n(8)).unwrap();
    assert_eq!(step8.time_standard, TimeStandard::WorkingDays(1));
    assert_eq!(
        step8.flow,
        Flow::Task {
            next: Target::End(Outcome::CapacityUnavailable)
        }
    );
    assert_eq!(
        a.step(n(3)).unwrap().actions,
        vec![ActionBinding {
            on: Trigger::Enter,
            action: SystemAction::CapacityCheck,
        }]
    );
    let times: Vec<String> = a
        .steps()
        .iter()
        .map(|step| step.time_standard.to_string())
        .collect();
    assert_eq!(
        times,
        [
            "1 jam", "3 jam", "2 jam", "2 jam", "3 jam", "3 jam", "2 jam", "1 hari"
        ]
    );
}

#[test]
fn procedures_b_and_c_match_the_sop_tables() {
    let b = definition("backup_request");
    let bound: Vec<(u32, SystemAction)> = b
        .steps()
        .iter()
        .flat_map(|step| step.actions.iter().map(move |a| (step.number.0, a.action)))
        .collect();
    assert_eq!(
        bound,
        [
            (3, SystemAction::StartBackupPlan),
            (5, SystemAction::StartBackupPlan),
            (7, SystemAction::StopBackupPlan),
            (8, render(DocumentKind::LetterBackupStopped)),
        ]
    );
    assert_eq!(b.step(n(6)).unwrap().time_from, ClockStart::FirstDocument);

    let c = definition("restore_request");
    assert_eq!(
        c.step(n(2)).unwrap().roles,
        [Role::KasiInfras, Role::Petugas]
    );
    assert_eq!(c.step(n(3)).unwrap().roles, [Role::KabidTik]);
    assert_eq!(
        c.step(n(5)).unwrap().flow,
        Flow::Decision {
            yes: Target::Step(n(7)),
            no: Target::Step(n(6)),
        }
    );
    let bound: Vec<(u32, SystemAction)> = c
        .steps()
        .iter()
        .flat_map(|step| step.actions.iter().map(move |a| (step.number.0, a.action)))
        .collect();
    assert_eq!(
        bound,
        [
            (4, SystemAction::RunRestore),
            (5, SystemAction::VerifyRestore),
            (6, SystemAction::FallbackRestore),
            (7, render(DocumentKind::RestoreExecutionForm)),
            (7, render(DocumentKind::LetterRestoreResult)),
        ]
    );
}

// ---------------------------------------------------------------------------------------
// Every path through every procedure
// ---------------------------------------------------------------------------------------

fn paths(list: &[(&[u32], Outcome)]) -> BTreeSet<(Vec<u32>, Outcome)> {
    list.iter()
        .map(|(path, outcome)| (path.to_vec(), *outcome))
        .collect()
}

#[test]
fn every_path_through_every_procedure_ends_as_the_sop_says() {
    let expected: BTreeMap<&str, BTreeSet<(Vec<u32>, Outcome)>> = BTreeMap::from([
        (
            "colocation_handover",
            paths(&[
                (&[1, 2, 3, 4, 5, 6, 7], Outcome::Completed),
                (&[1, 2, 3, 4, 5], Outcome::Rejected),
                (&[1, 2, 3, 4, 8], Outcome::CapacityUnavailable),
            ]),
        ),
        (
            "backup_request",
            paths(&[
                (&[1, 2, 3, 4, 5, 6, 7, 8], Outcome::Completed),
                (&[1, 2, 3, 4, 6, 7, 8], Outcome::Completed),
            ]),
        ),
        (
            "restore_request",
            paths(&[
                (&[1, 2, 3], Outcome::Rejected),
                (&[1, 2, 3, 4, 5, 7], Outcome::Completed),
                (&[1, 2, 3, 4, 5, 6, 7], Outcome::Completed),
            ]),
        ),
        (
            "colocation_withdrawal",
            paths(&[
                (&[1, 2, 3, 4, 5], Outcome::Completed),
                (&[1, 2, 3, 6], Outcome::Rejected),
            ]),
        ),
        (
            "maintenance_request",
            paths(&[
                (&[1, 2, 3, 4, 5], Outcome::Completed),
                (&[1, 2, 3, 4, 3, 4, 5], Outcome::Completed),
            ]),
        ),
    ]);
    let registry = registry();
    for definition in registry.iter() {
        let code = definition.code().as_str();
        assert_eq!(explore(definition), expected[code], "paths through {code}");
    }
    let codes: std::collections::BTreeSet<&str> = registry
        .iter()
        .map(|definition| definition.code().as_str())
        .collect();
    assert_eq!(codes.len(), expected.len());
}

#[test]
fn procedure_a_approved_records_every_step_and_emits_its_actions() {
    let a = definition("colocation_handover");
    let (mut run, actions) = Run::start(&a, &skpd());
    assert!(actions.is_empty());
    assert_eq!(run.state.current_step(), Some(n(1)));
    assert_eq!(run.state.opened_by, UserId("user-skpd".into()));

    assert!(run.complete(1, &kadin()).is_empty());
    assert_eq!(
        actions_of(&run.complete(2, &kasi())),
        [(3, Trigger::Enter, SystemAction::CapacityCheck)]
    );
    assert!(run.complete(3, &petugas()).is_empty());
    assert!(run.decide(4, Answer::Yes, &kasi()).is_empty());
    assert_eq!(
        actions_of(&run.decide(5, Answer::Yes, &kadin())),
        [
            (5, Trigger::Complete, render(DocumentKind::ApprovalForm)),
            (
                6,
                Trigger::Enter,
                render(DocumentKind::LetterRequestApproved)
            ),
        ]
    );
    assert!(run.complete(6, &kabid()).is_empty());
    assert_eq!(
        actions_of(&run.complete(7, &petugas())),
        [
            (7, Trigger::Complete, SystemAction::UpdateAssetRegister),
            (7, Trigger::Complete, render(DocumentKind::HandoverForm)),
        ]
    );

    assert!(run.state.is_finished());
    assert_eq!(run.state.outcome(), Some(Outcome::Completed));
    assert_eq!(run.state.current_step(), None);
    assert_eq!(run.path(), [1, 2, 3, 4, 5, 6, 7]);
    let roles: Vec<Role> = run.state.steps.iter().map(|r| r.role.unwrap()).collect();
    assert_eq!(
        roles,
        [
            Role::Kadin,
            Role::KasiInfras,
            Role::Petugas,
            Role::KasiInfras,
            Role::Kadin,
            Role::KabidTik,
            Role::Petugas
        ]
    );
    let opened = wib(2026, 3, 2, 8, 0);
    for (index, record) in run.state.steps.iter().enumerate() {
        let index = index as i32;
        assert_eq!(record.started_at, opened + TimeDelta::minutes(10) * index);
        assert_eq!(
            record.finished_at,
            Some(opened + TimeDelta::minutes(10) * (index + 1))
        );
        assert!(!record.cancelled);
    }
    let step5 = &run.state.steps[4];
    assert_eq!(step5.decision, Some(Answer::Yes));
    assert_eq!(step5.reason.as_deref(), Some("reason for 5"));
    assert_eq!(step5.actor, Some(UserId("user-kadin".into())));
    assert_eq!(run.state.steps[0].decision, None);
    assert_eq!(
        run.state.progress,
        Progress::Finished {
            outcome: Outcome::Completed,
            at: opened + TimeDelta::minutes(70),
        }
    );
}

#[test]
fn procedure_a_capacity_unavailable_goes_through_the_letter() {
    let a = definition("colocation_handover");
    let (mut run, _) = Run::start(&a, &admin());
    run.complete(1, &kadin());
    run.complete(2, &kasi());
    run.complete(3, &petugas());
    assert_eq!(
        actions_of(&run.decide(4, Answer::No, &kasi())),
        [(
            8,
            Trigger::Enter,
            render(DocumentKind::LetterCapacityUnavailable)
        )]
    );
    assert_eq!(run.state.current_step(), Some(n(8)));
    assert!(!run.state.is_finished());
    run.complete(8, &kabid());
    assert_eq!(run.state.outcome(), Some(Outcome::CapacityUnavailable));
    assert_eq!(run.path(), [1, 2, 3, 4, 8]);
    assert_eq!(run.state.steps[3].decision, Some(Answer::No));
}

#[test]
fn procedure_a_refused_by_the_head_of_agency_ends_rejected() {
    let a = definition("colocation_handover");
    let (mut run, _) = Run::start(&a, &kadin());
    run.complete(1, &kadin());
    run.complete(2, &kasi());
    run.complete(3, &petugas());
    run.decide(4, Answer::Yes, &kasi());
    let actions = run.ok(
        Event::decide(5, Answer::No, "Rak penuh untuk tahun anggaran ini"),
        &kadin(),
    );
    // Form 2 records the refusal too; no letter of approval is drafted.
    assert_eq!(
        actions_of(&actions),
        [(5, Trigger::Complete, render(DocumentKind::ApprovalForm))]
    );
    assert_eq!(run.state.outcome(), Some(Outcome::Rejected));
    assert_eq!(
        run.state.steps[4].reason.as_deref(),
        Some("Rak penuh untuk tahun anggaran ini")
    );
}

#[test]
fn procedure_b_both_branches_start_and_stop_the_plan() {
    let b = definition("backup_request");

    let (mut run, _) = Run::start(&b, &skpd());
    run.complete(1, &kadin());
    assert_eq!(
        actions_of(&run.complete(2, &kasi())),
        [(3, Trigger::Enter, SystemAction::StartBackupPlan)]
    );
    run.complete(3, &petugas());
    assert_eq!(
        actions_of(&run.decide(4, Answer::Yes, &kasi())),
        [(5, Trigger::Enter, SystemAction::StartBackupPlan)]
    );
    assert!(run.complete(5, &petugas()).is_empty());
    assert_eq!(
        actions_of(&run.complete(6, &kadin())),
        [(7, Trigger::Enter, SystemAction::StopBackupPlan)]
    );
    assert_eq!(
        actions_of(&run.complete(7, &petugas())),
        [(8, Trigger::Enter, render(DocumentKind::LetterBackupStopped))]
    );
    run.complete(8, &kabid());
    assert_eq!(run.state.outcome(), Some(Outcome::Completed));
    assert_eq!(run.path(), [1, 2, 3, 4, 5, 6, 7, 8]);

    let (mut run, _) = Run::start(&b, &skpd());
    run.complete(1, &kadin());
    run.complete(2, &kasi());
    run.complete(3, &petugas());
    assert!(run.decide(4, Answer::No, &kasi()).is_empty());
    assert_eq!(run.state.current_step(), Some(n(6)));
    run.complete(6, &kadin());
    run.complete(7, &petugas());
    run.complete(8, &kabid());
    assert_eq!(run.state.outcome(), Some(Outcome::Completed));
    assert_eq!(run.path(), [1, 2, 3, 4, 6, 7, 8]);
}

#[test]
fn procedure_c_rejected_succeeded_and_fallback() {
    let c = definition("restore_request");

    let (mut run, _) = Run::start(&c, &skpd());
    run.complete(1, &kadin());
    run.complete(2, &petugas()); // either KASI_INFRAS or PETUGAS records the joint step
    assert_eq!(run.state.steps[1].role, Some(Role::Petugas));
    assert!(run.decide(3, Answer::No, &kabid()).is_empty());
    assert_eq!(run.state.outcome(), Some(Outcome::Rejected));
    assert_eq!(run.path(), [1, 2, 3]);

    let (mut run, _) = Run::start(&c, &skpd());
    run.complete(1, &kadin());
    run.complete(2, &kasi());
    assert_eq!(
        actions_of(&run.decide(3, Answer::Yes, &kabid())),
        [(4, Trigger::Enter, SystemAction::RunRestore)]
    );
    assert_eq!(
        actions_of(&run.complete(4, &petugas())),
        [(5, Trigger::Enter, SystemAction::VerifyRestore)]
    );
    assert_eq!(
        actions_of(&run.decide(5, Answer::Yes, &petugas())),
        [
            (
                7,
                Trigger::Enter,
                render(DocumentKind::RestoreExecutionForm)
            ),
            (7, Trigger::Enter, render(DocumentKind::LetterRestoreResult))
        ]
    );
    run.complete(7, &kasi());
    assert_eq!(run.state.outcome(), Some(Outcome::Completed));
    assert_eq!(run.path(), [1, 2, 3, 4, 5, 7]);

    let (mut run, _) = Run::start(&c, &skpd());
    run.complete(1, &kadin());
    run.complete(2, &kasi());
    run.decide(3, Answer::Yes, &kabid());
    run.complete(4, &petugas());
    assert_eq!(
        actions_of(&run.decide(5, Answer::No, &petugas())),
        [(6, Trigger::Enter, SystemAction::FallbackRestore)]
    );
    run.complete(6, &petugas());
    run.complete(7, &petugas());
    assert_eq!(run.state.outcome(), Some(Outcome::Completed));
    assert_eq!(run.path(), [1, 2, 3, 4, 5, 6, 7]);
}

#[test]
fn withdrawal_approved_and_refused() {
    let w = definition("colocation_withdrawal");

    let (mut run, _) = Run::start(&w, &skpd());
    run.complete(1, &kadin());
    run.complete(2, &kasi());
    assert_eq!(
        actions_of(&run.decide(3, Answer::Yes, &kabid())),
        [(4, Trigger::Enter, render(DocumentKind::WithdrawalForm))]
    );
    assert_eq!(
        actions_of(&run.complete(4, &petugas())),
        [
            (4, Trigger::Complete, SystemAction::UpdateAssetRegister),
            (
                5,
                Trigger::Enter,
                render(DocumentKind::LetterWithdrawalDone)
            ),
        ]
    );
    run.complete(5, &kabid());
    assert_eq!(run.state.outcome(), Some(Outcome::Completed));

    let (mut run, _) = Run::start(&w, &skpd());
    run.complete(1, &kadin());
    run.complete(2, &kasi());
    assert_eq!(
        actions_of(&run.decide(3, Answer::No, &kabid())),
        [(
            6,
            Trigger::Enter,
            render(DocumentKind::LetterWithdrawalRejected)
        )]
    );
    run.complete(6, &kabid());
    assert_eq!(run.state.outcome(), Some(Outcome::Rejected));
    assert_eq!(run.path(), [1, 2, 3, 6]);
}

#[test]
fn maintenance_loops_back_until_the_agency_confirms() {
    let m = definition("maintenance_request");
    let (mut run, _) = Run::start(&m, &skpd());
    run.complete(1, &kasi());
    run.complete(2, &petugas());
    run.complete(3, &petugas());
    run.decide(4, Answer::No, &skpd());
    assert_eq!(run.state.current_step(), Some(n(3)));
    run.complete(3, &petugas());
    assert_eq!(
        actions_of(&run.decide(4, Answer::Yes, &skpd())),
        [(5, Trigger::Enter, render(DocumentKind::MaintenanceReport))]
    );
    run.complete(5, &kasi());
    assert_eq!(run.state.outcome(), Some(Outcome::Completed));
    assert_eq!(run.path(), [1, 2, 3, 4, 3, 4, 5]);
    // Each visit has its own record.
    let visits: Vec<&StepRecord> = run.state.steps.iter().filter(|r| r.step == n(3)).collect();
    assert_eq!(visits.len(), 2);
    assert!(visits[0].finished_at < Some(visits[1].started_at));
    assert_eq!(run.state.steps[3].role, Some(Role::Skpd));
}

// ---------------------------------------------------------------------------------------
// Rejections
// ---------------------------------------------------------------------------------------

#[test]
fn wrong_role_is_refused_naming_the_allowed_roles() {
    let a = definition("colocation_handover");
    let (run, _) = Run::start(&a, &skpd());

    let rejection = run.rejected(Event::complete(1), &petugas());
    assert_eq!(
        rejection,
        Rejection::WrongRole {
            act: Act::Step(n(1)),
            allowed: vec![Role::Kadin],
            held: vec![Role::Petugas],
        }
    );
    assert_eq!(
        rejection.to_string(),
        "only KADIN may act on step 1 (you hold: PETUGAS)"
    );
    assert_eq!(rejection.class(), RejectionClass::Forbidden);

    // ADMIN is not listed on the step, so it may not complete it.
    assert!(matches!(
        run.rejected(Event::complete(1), &admin()),
        Rejection::WrongRole { .. }
    ));

    // Cancelling needs KADIN or ADMIN.
    let rejection = run.rejected(
        Event::Cancel {
            reason: "salah kirim".into(),
        },
        &petugas(),
    );
    assert_eq!(
        rejection.to_string(),
        "only KADIN or ADMIN may cancel this request (you hold: PETUGAS)"
    );

    // Starting needs one of the start roles.
    let rejection = start(&a, &petugas(), run.now).unwrap_err();
    assert!(matches!(
        rejection,
        Rejection::WrongRole {
            act: Act::Start,
            ..
        }
    ));
    assert_eq!(
        rejection.to_string(),
        "only SKPD, KADIN or ADMIN may start this request (you hold: PETUGAS)"
    );
}

#[test]
fn a_user_with_several_roles_acts_in_the_one_the_step_allows() {
    let c = definition("restore_request");
    let (mut run, _) = Run::start(&c, &skpd());
    let head = Actor::new("riena", [Role::Admin, Role::Kadin]);
    run.complete(1, &head);
    assert_eq!(run.state.steps[0].role, Some(Role::Kadin));
    assert_eq!(run.state.steps[0].actor, Some(UserId("riena".into())));
    let both = Actor::new("both", [Role::Petugas, Role::KasiInfras]);
    run.complete(2, &both);
    // The definition's order decides: KASI_INFRAS is listed first at C2.
    assert_eq!(run.state.steps[1].role, Some(Role::KasiInfras));
}

#[test]
fn a_decision_needs_a_reason() {
    let a = definition("colocation_handover");
    let (mut run, _) = Run::start(&a, &skpd());
    run.complete(1, &kadin());
    run.complete(2, &kasi());
    run.complete(3, &petugas());
    for reason in ["", "   \n\t"] {
        let rejection = run.rejected(Event::decide(4, Answer::Yes, reason), &kasi());
        assert_eq!(
            rejection,
            Rejection::MissingReason {
                act: Act::Step(n(4))
            }
        );
        assert_eq!(rejection.class(), RejectionClass::InvalidInput);
    }
    // The reason is stored trimmed.
    run.ok(Event::decide(4, Answer::Yes, "  cukup 4U  "), &kasi());
    assert_eq!(run.state.steps[3].reason.as_deref(), Some("cukup 4U"));
}

#[test]
fn cancelling_needs_a_reason() {
    let a = definition("colocation_handover");
    let (run, _) = Run::start(&a, &skpd());
    assert_eq!(
        run.rejected(Event::Cancel { reason: " ".into() }, &kadin()),
        Rejection::MissingReason { act: Act::Cancel }
    );
}

#[test]
fn events_must_fit_the_kind_of_step() {
    let a = definition("colocation_handover");
    let (mut run, _) = Run::start(&a, &skpd());
    assert_eq!(
        run.rejected(Event::decide(1, Answer::Yes, "ya"), &kadin()),
        Rejection::NotADecisionStep { step: n(1) }
    );
    run.complete(1, &kadin());
    run.complete(2, &kasi());
    run.complete(3, &petugas());
    let rejection = run.rejected(Event::complete(4), &kasi());
    assert_eq!(rejection, Rejection::DecisionRequired { step: n(4) });
    assert_eq!(
        rejection.to_string(),
        "step 4 is a decision step: decide it yes or no, with a reason"
    );
}

#[test]
fn events_must_name_the_current_step() {
    let a = definition("colocation_handover");
    let (mut run, _) = Run::start(&a, &skpd());
    let rejection = run.rejected(Event::complete(2), &kasi());
    assert_eq!(
        rejection,
        Rejection::NotCurrentStep {
            requested: n(2),
            current: n(1),
        }
    );
    assert_eq!(rejection.class(), RejectionClass::Conflict);
    run.complete(1, &kadin());
    // A second click on an already completed step is a conflict, not a repeat.
    assert!(matches!(
        run.rejected(Event::complete(1), &kadin()),
        Rejection::NotCurrentStep { .. }
    ));
    assert!(matches!(
        run.rejected(
            Event::Attach {
                step: n(1),
                document: "SURAT/1".into(),
            },
            &kadin()
        ),
        Rejection::NotCurrentStep { .. }
    ));
}

#[test]
fn a_finished_request_is_immutable() {
    let c = definition("restore_request");
    let (mut run, _) = Run::start(&c, &skpd());
    run.complete(1, &kadin());
    run.complete(2, &kasi());
    run.decide(3, Answer::No, &kabid());
    assert!(run.state.is_finished());
    let events = [
        Event::complete(3),
        Event::decide(3, Answer::Yes, "berubah pikiran"),
        Event::Attach {
            step: n(3),
            document: "SURAT/9".into(),
        },
        Event::Cancel {
            reason: "terlambat".into(),
        },
    ];
    for event in events {
        let rejection = run.rejected(event, &Actor::new("all", Role::ALL));
        assert_eq!(
            rejection,
            Rejection::Finished {
                outcome: Outcome::Rejected
            }
        );
        assert_eq!(rejection.class(), RejectionClass::Conflict);
    }
}

#[test]
fn cancel_by_kadin_or_admin_finishes_the_request() {
    let b = definition("backup_request");
    for canceller in [kadin(), admin()] {
        let (mut run, _) = Run::start(&b, &skpd());
        run.complete(1, &kadin());
        let actions = run.ok(
            Event::Cancel {
                reason: "SKPD menarik permohonan".into(),
            },
            &canceller,
        );
        assert!(actions.is_empty());
        assert_eq!(run.state.outcome(), Some(Outcome::Cancelled));
        let record = run.state.steps.last().unwrap();
        assert_eq!(record.step, n(2));
        assert!(record.cancelled);
        assert_eq!(record.reason.as_deref(), Some("SKPD menarik permohonan"));
        assert_eq!(record.role, Some(canceller.roles[0]));
        assert_eq!(record.finished_at, Some(run.now));
        assert_eq!(
            run.rejected(Event::complete(2), &kasi()),
            Rejection::Finished {
                outcome: Outcome::Cancelled
            }
        );
    }
}

/// A small valid definition to derive variants from.
const MINI: &str = r#"
format = 1
code = "mini"
title = { id = "Mini", en = "Mini" }
sop_number = "067/798"
sop_revision_date = 2019-02-19
revision = 1

[policy]
start_roles = ["SKPD"]
cancel_roles = ["SKPD"]

[[steps]]
number = 1
text = { id = "Satu", en = "One" }
roles = ["ADMIN"]
time = "1 jam"
next = 2

[[steps]]
number = 2
kind = "decision"
text = { id = "Dua?", en = "Two?" }
roles = ["PETUGAS"]
time = "2 jam"
yes = 3
no = { end = "rejected" }

[[steps]]
number = 3
text = { id = "Tiga", en = "Three" }
roles = ["PETUGAS"]
time = "1 hari"
next = "end"
"#;

#[test]
fn roles_and_cancel_rights_come_from_the_definition() {
    let mini = ProcedureDefinition::from_toml("mini.toml", MINI).unwrap();
    // policy.attach_roles was omitted: it defaults to none.
    assert!(mini.policy().attach_roles.is_empty());
    let (mut run, _) = Run::start(&mini, &skpd());
    // ADMIN acts at step 1 because the definition lists it there.
    run.complete(1, &admin());
    // Here only SKPD may cancel: ADMIN and KADIN may not.
    for by in [admin(), kadin()] {
        assert!(matches!(
            run.rejected(Event::Cancel { reason: "x".into() }, &by),
            Rejection::WrongRole {
                act: Act::Cancel,
                ..
            }
        ));
    }
    run.ok(
        Event::Cancel {
            reason: "tidak jadi".into(),
        },
        &skpd(),
    );
    assert_eq!(run.state.outcome(), Some(Outcome::Cancelled));
}

#[test]
fn documents_are_attached_to_the_current_step() {
    let a = definition("colocation_handover");
    let (mut run, _) = Run::start(&a, &skpd());
    let attach = |document: &str| Event::Attach {
        step: n(1),
        document: document.into(),
    };

    // ADMIN (an attach role) scans the incoming letter; the step stays open.
    assert!(run.ok(attach("SURAT/2026/001"), &admin()).is_empty());
    assert_eq!(run.state.current_step(), Some(n(1)));
    // Attaching the same reference again is a no-op.
    run.ok(attach("SURAT/2026/001"), &kadin());
    // An SKPD user is neither a step role nor an attach role here.
    assert!(matches!(
        run.rejected(attach("X"), &skpd()),
        Rejection::WrongRole { .. }
    ));
    assert_eq!(
        run.rejected(attach("  "), &kadin()),
        Rejection::EmptyDocumentRef
    );

    let attached_at = run.state.steps[0].documents[0].attached_at;
    run.ok(
        Event::Complete {
            step: n(1),
            note: Some("didisposisi ke Kasi Infras".into()),
            documents: vec!["DISPOSISI/17".into()],
        },
        &kadin(),
    );
    let record = &run.state.steps[0];
    let documents: Vec<(&str, &str)> = record
        .documents
        .iter()
        .map(|d| (d.document.0.as_str(), d.attached_by.0.as_str()))
        .collect();
    assert_eq!(
        documents,
        [
            ("SURAT/2026/001", "user-admin"),
            ("DISPOSISI/17", "user-kadin")
        ]
    );
    assert_eq!(attached_at, wib(2026, 3, 2, 8, 10));
    assert_eq!(record.note.as_deref(), Some("didisposisi ke Kasi Infras"));
    // The finishing actor is KADIN, not the ADMIN who attached.
    assert_eq!(record.role, Some(Role::Kadin));

    // Documents on a decision are kept too; an empty reference refuses the whole event.
    run.complete(2, &kasi());
    run.complete(3, &petugas());
    assert_eq!(
        run.rejected(
            Event::Decide {
                step: n(4),
                answer: Answer::Yes,
                reason: "ok".into(),
                documents: vec!["".into()],
            },
            &kasi()
        ),
        Rejection::EmptyDocumentRef
    );
}

#[test]
fn a_state_of_another_definition_or_an_inconsistent_state_is_refused() {
    let a = definition("colocation_handover");
    let b = definition("backup_request");
    let (run, _) = Run::start(&a, &skpd());
    let rejection = decide(&b, &run.state, Event::complete(1), &kadin(), run.now).unwrap_err();
    assert!(matches!(rejection, Rejection::WrongDefinition { .. }));
    assert_eq!(rejection.class(), RejectionClass::Internal);

    let mut broken = run.state.clone();
    broken.progress = Progress::Active { current: n(99) };
    let rejection = decide(&a, &broken, Event::complete(99), &kadin(), run.now).unwrap_err();
    assert!(matches!(rejection, Rejection::InconsistentState(_)));

    let mut broken = run.state.clone();
    broken.steps.clear();
    let rejection = decide(&a, &broken, Event::complete(1), &kadin(), run.now).unwrap_err();
    assert!(matches!(rejection, Rejection::InconsistentState(_)));
}

// ---------------------------------------------------------------------------------------
// Revisions
// ---------------------------------------------------------------------------------------

#[test]
fn a_request_started_under_revision_1_finishes_under_it_after_revision_2_is_loaded() {
    let mut registry = registry();
    let code = ProcedureCode::from("colocation_handover");
    let revision1 = registry.latest(&code).unwrap().clone();
    let (mut old, _) = Run::start(&revision1, &skpd());
    old.complete(1, &kadin());
    assert_eq!(old.state.revision, Revision(1));

    // Revision 2: the capacity check moves from PETUGAS to KASI_INFRAS.
    let original = sop_file("colocation_handover.r1.toml");
    let revised = original
        .replacen("revision = 1", "revision = 2", 1)
        .replacen(
            "roles = [\"PETUGAS\"]\ninputs = [{ id = \"Berita acara Klarifikasi\"",
            "roles = [\"KASI_INFRAS\"]\ninputs = [{ id = \"Berita acara Klarifikasi\"",
            1,
        );
    assert_ne!(revised, original, "the fixture edit applied");
    registry
        .load("colocation_handover.r2.toml", &revised)
        .expect("revision 2 loads");
    let revision2 = registry.latest(&code).unwrap().clone();
    assert_eq!(revision2.revision(), Revision(2));
    assert_eq!(revision2.step(n(3)).unwrap().roles, [Role::KasiInfras]);

    // The request in flight keeps running under revision 1.
    let definition = registry.for_request(&old.state).unwrap();
    assert_eq!(definition.revision(), Revision(1));
    assert_eq!(*definition, revision1);
    // Feeding it the new revision is refused, not silently mixed.
    assert!(matches!(
        decide(&revision2, &old.state, Event::complete(2), &kasi(), old.now),
        Err(Rejection::WrongDefinition { .. })
    ));
    old.complete(2, &kasi());
    old.complete(3, &petugas()); // revision 1's role
    old.decide(4, Answer::Yes, &kasi());
    old.decide(5, Answer::Yes, &kadin());
    old.complete(6, &kabid());
    old.complete(7, &petugas());
    assert_eq!(old.state.outcome(), Some(Outcome::Completed));
    assert_eq!(old.state.revision, Revision(1));

    // A new request starts under revision 2 and follows its roles.
    let (mut new, _) = Run::start(&revision2, &skpd());
    assert_eq!(new.state.revision, Revision(2));
    new.complete(1, &kadin());
    new.complete(2, &kasi());
    assert!(matches!(
        new.rejected(Event::complete(3), &petugas()),
        Rejection::WrongRole { .. }
    ));
    new.complete(3, &kasi());

    // Loading the same revision twice is refused; a revision never loaded is reported.
    let duplicate = registry
        .load("copy.toml", &original)
        .expect_err("duplicate revision");
    assert!(matches!(duplicate, RegistryError::Duplicate { .. }));
    assert_eq!(
        duplicate.to_string(),
        "copy.toml: colocation_handover revision 1 is already defined by colocation_handover.r1.toml"
    );
    let mut orphan = old.state.clone();
    orphan.revision = Revision(3);
    assert_eq!(
        registry.for_request(&orphan).unwrap_err(),
        RegistryError::NotLoaded { code, revision: 3 }
    );
}

// ---------------------------------------------------------------------------------------
// Invalid definitions
// ---------------------------------------------------------------------------------------

fn load_error(text: &str) -> DefinitionError {
    ProcedureDefinition::from_toml("bad.toml", text).expect_err("definition must be invalid")
}

#[test]
fn the_mini_fixture_is_valid() {
    let mini = ProcedureDefinition::from_toml("mini.toml", MINI).unwrap();
    assert_eq!(mini.steps().len(), 3);
    assert_eq!(mini.policy().start_roles, [Role::Skpd]);
}

#[test]
fn invalid_definitions_are_rejected_naming_file_and_step() {
    let cases: Vec<(&str, String, &str)> = vec![
        (
            "duplicate step",
            MINI.replacen("number = 3", "number = 2", 1),
            "bad.toml: step 2: the number is used by more than one step",
        ),
        (
            "unknown target",
            MINI.replacen("next = 2", "next = 7", 1),
            "bad.toml: step 1: `next` leads to step 7, which does not exist",
        ),
        (
            "unknown branch target",
            MINI.replacen("yes = 3", "yes = 4", 1),
            "bad.toml: step 2: `yes` leads to step 4, which does not exist",
        ),
        (
            "unknown role",
            MINI.replacen("roles = [\"PETUGAS\"]", "roles = [\"KASI\"]", 1),
            "bad.toml: step 2: unknown role `KASI` (known roles: KADIN, KABID_TIK, KASI_INFRAS, PETUGAS, SKPD, ADMIN)",
        ),
        (
            "lower-case role",
            MINI.replacen("roles = [\"ADMIN\"]", "roles = [\"admin\"]", 1),
            "bad.toml: step 1: unknown role `admin`",
        ),
        (
            "no roles",
            MINI.replacen("roles = [\"ADMIN\"]", "roles = []", 1),
            "bad.toml: step 1: `roles` must name at least one role",
        ),
        (
            "unknown policy role",
            MINI.replacen("cancel_roles = [\"SKPD\"]", "cancel_roles = [\"BOSS\"]", 1),
            "bad.toml: policy.cancel_roles: unknown role `BOSS`",
        ),
        (
            "missing next",
            MINI.replacen("next = \"end\"\n", "", 1),
            "bad.toml: step 3: a task step needs `next` (a step number or \"end\")",
        ),
        (
            "decision without no",
            MINI.replacen("no = { end = \"rejected\" }\n", "", 1),
            "bad.toml: step 2: a decision step needs `no`",
        ),
        (
            "next on a decision",
            MINI.replacen("yes = 3\n", "yes = 3\nnext = 3\n", 1),
            "bad.toml: step 2: `next` is not allowed on a decision step",
        ),
        (
            "branch on a task",
            MINI.replacen("next = 2", "next = 2\nyes = 3", 1),
            "bad.toml: step 1: `yes` is not allowed on a task step",
        ),
        (
            "unknown kind",
            MINI.replacen("kind = \"decision\"", "kind = \"question\"", 1),
            "bad.toml: step 2: unknown kind `question`",
        ),
        (
            "bad time standard",
            MINI.replacen("time = \"2 jam\"", "time = \"2 minggu\"", 1),
            "bad.toml: step 2: invalid time standard `2 minggu`",
        ),
        (
            "zero time standard",
            MINI.replacen("time = \"1 jam\"", "time = \"0 jam\"", 1),
            "bad.toml: step 1: invalid time standard `0 jam`",
        ),
        (
            "bad time_from",
            MINI.replacen(
                "time = \"1 jam\"",
                "time = \"1 jam\"\ntime_from = \"later\"",
                1,
            ),
            "bad.toml: step 1: unknown time_from `later`",
        ),
        (
            "cancelled is not a target",
            MINI.replacen(
                "no = { end = \"rejected\" }",
                "no = { end = \"cancelled\" }",
                1,
            ),
            "bad.toml: step 2: `no` = { end = \"cancelled\" } is not a target",
        ),
        (
            "text target",
            MINI.replacen("next = 2", "next = \"two\"", 1),
            "bad.toml: step 1: `next` = \"two\" is not a target",
        ),
        (
            "self target",
            MINI.replacen("next = 2", "next = 1", 1),
            "bad.toml: step 1: `next` leads back to the step itself",
        ),
        (
            "unknown action",
            MINI.replacen(
                "next = 2",
                "next = 2\nactions = [{ action = \"reboot\" }]",
                1,
            ),
            "bad.toml: step 1: unknown action `reboot`",
        ),
        (
            "render without document",
            MINI.replacen(
                "next = 2",
                "next = 2\nactions = [{ action = \"render_document\" }]",
                1,
            ),
            "bad.toml: step 1: action render_document needs `document` (the document kind)",
        ),
        (
            "unknown document kind",
            MINI.replacen(
                "next = 2",
                "next = 2\nactions = [{ action = \"render_document\", document = \"memo\" }]",
                1,
            ),
            "bad.toml: step 1: unknown document kind `memo`",
        ),
        (
            "document on another action",
            MINI.replacen(
                "next = 2",
                "next = 2\nactions = [{ action = \"run_restore\", document = \"approval_form\" }]",
                1,
            ),
            "bad.toml: step 1: `document` is only allowed on action render_document",
        ),
        (
            "unknown trigger",
            MINI.replacen(
                "next = 2",
                "next = 2\nactions = [{ action = \"run_restore\", on = \"exit\" }]",
                1,
            ),
            "bad.toml: step 1: unknown action trigger `exit`",
        ),
        (
            "unreachable step",
            MINI.replacen("yes = 3", "yes = \"end\"", 1),
            "bad.toml: step 3: cannot be reached from the start step 1",
        ),
        (
            "no way to an end",
            MINI.replacen("next = \"end\"", "next = 2", 1).replacen(
                "no = { end = \"rejected\" }",
                "no = 1",
                1,
            ),
            "bad.toml: step 1: no path from this step reaches an end",
        ),
        (
            "empty step text",
            MINI.replacen("en = \"Three\"", "en = \" \"", 1),
            "bad.toml: step 3: `text.en` must not be empty",
        ),
        (
            "step zero",
            MINI.replacen("number = 1", "number = 0", 1),
            "bad.toml: step 0: step numbers start at 1",
        ),
        (
            "unknown start",
            MINI.replacen("revision = 1", "revision = 1\nstart = 9", 1),
            "bad.toml: start step 9 does not exist",
        ),
        (
            "unsupported format",
            MINI.replacen("format = 1", "format = 2", 1),
            "bad.toml: unsupported definition format 2 (this build reads format 1)",
        ),
        (
            "bad code",
            MINI.replacen("code = \"mini\"", "code = \"Mini Procedure\"", 1),
            "bad.toml: invalid procedure code `Mini Procedure`",
        ),
        (
            "revision zero",
            MINI.replacen("revision = 1", "revision = 0", 1),
            "bad.toml: revision must be 1 or greater",
        ),
        (
            "empty sop number",
            MINI.replacen("sop_number = \"067/798\"", "sop_number = \"\"", 1),
            "bad.toml: `sop_number` must not be empty",
        ),
        (
            "no start roles",
            MINI.replacen("start_roles = [\"SKPD\"]", "start_roles = []", 1),
            "bad.toml: policy.start_roles must name at least one role",
        ),
        (
            "no steps",
            MINI.split("[[steps]]").next().unwrap().to_owned(),
            "bad.toml: the procedure has no steps",
        ),
        (
            "misspelt key",
            MINI.replacen("time = \"1 hari\"", "tiem = \"1 hari\"", 1),
            "bad.toml: not a valid procedure definition:",
        ),
        (
            "bad date",
            MINI.replacen("2019-02-19", "\"19 Februari 2019\"", 1),
            "bad.toml: not a valid procedure definition:",
        ),
    ];
    for (name, text, expected) in cases {
        let message = load_error(&text).to_string();
        assert!(
            message.starts_with(expected),
            "{name}: expected a message starting with\n  {expected}\ngot\n  {message}"
        );
    }
}

#[test]
fn definition_errors_are_typed() {
    let error = load_error(&MINI.replacen("next = 2", "next = 7", 1));
    assert_eq!(
        error,
        DefinitionError::UnknownTarget {
            file: "bad.toml".into(),
            step: 1,
            field: "next",
            target: 7,
        }
    );
    let error = load_error(&MINI.replacen("number = 3", "number = 1", 1));
    assert_eq!(
        error,
        DefinitionError::DuplicateStep {
            file: "bad.toml".into(),
            step: 1,
        }
    );
    // The registry passes definition errors through unchanged.
    let error =
        Registry::from_sources([("bad.toml", MINI.replacen("number = 3", "number = 1", 1))])
            .unwrap_err();
    assert!(matches!(
        error,
        RegistryError::Definition(DefinitionError::DuplicateStep { step: 1, .. })
    ));
}

#[test]
fn dates_may_be_toml_dates_or_strings() {
    let quoted = MINI.replacen("2019-02-19", "\"2019-02-19\"", 1);
    let definition = ProcedureDefinition::from_toml("q.toml", &quoted).unwrap();
    assert_eq!(definition.sop_revision_date(), date(2019, 2, 19));
}

// ---------------------------------------------------------------------------------------
// Time standards and the working calendar
// ---------------------------------------------------------------------------------------

#[test]
fn time_standards_parse_in_the_sop_forms() {
    let good = [
        ("1 jam", TimeStandard::Hours(1)),
        ("3 jam", TimeStandard::Hours(3)),
        ("1 hari", TimeStandard::WorkingDays(1)),
        ("  2   Hari  kerja ", TimeStandard::WorkingDays(2)),
        ("12 JAM", TimeStandard::Hours(12)),
    ];
    for (text, expected) in good {
        assert_eq!(text.parse::<TimeStandard>(), Ok(expected), "{text:?}");
    }
    for bad in [
        "",
        "jam",
        "0 jam",
        "1",
        "1.5 jam",
        "-1 jam",
        "1 minggu",
        "1 jam lagi",
        "satu jam",
    ] {
        assert!(
            bad.parse::<TimeStandard>().is_err(),
            "{bad:?} must not parse"
        );
    }
    assert_eq!(TimeStandard::WorkingDays(1).to_string(), "1 hari");
    assert_eq!(TimeStandard::WorkingDays(2).english(), "2 working days");
    assert_eq!(TimeStandard::Hours(1).english(), "1 hour");
    assert_eq!(
        serde_json::to_string(&TimeStandard::Hours(3)).unwrap(),
        "\"3 jam\""
    );
    assert_eq!(
        serde_json::from_str::<TimeStandard>("\"1 hari\"").unwrap(),
        TimeStandard::WorkingDays(1)
    );
    assert!(serde_json::from_str::<TimeStandard>("\"1 minggu\"").is_err());
}

#[test]
fn hours_are_elapsed_time_even_outside_office_hours() {
    let calendar = WorkCalendar::default();
    let saturday_evening = wib(2026, 3, 7, 20, 0);
    assert_eq!(
        deadline(saturday_evening, TimeStandard::Hours(3), &calendar),
        wib(2026, 3, 7, 23, 0)
    );
}

#[test]
fn a_working_day_is_office_time_across_weekends_and_holidays() {
    let calendar = WorkCalendar::default();
    let day = TimeStandard::WorkingDays(1);
    // Monday 09:00 → 7 h left on Monday, 1.5 h on Tuesday.
    assert_eq!(
        deadline(wib(2026, 3, 2, 9, 0), day, &calendar),
        wib(2026, 3, 3, 9, 0)
    );
    // Before opening: the whole of Monday.
    assert_eq!(
        deadline(wib(2026, 3, 2, 5, 0), day, &calendar),
        wib(2026, 3, 2, 16, 0)
    );
    // At closing time: the whole of Tuesday.
    assert_eq!(
        deadline(wib(2026, 3, 2, 16, 0), day, &calendar),
        wib(2026, 3, 3, 16, 0)
    );
    // Friday 15:00 → 1 h on Friday, the weekend skipped, 7.5 h on Monday.
    assert_eq!(
        deadline(wib(2026, 3, 6, 15, 0), day, &calendar),
        wib(2026, 3, 9, 15, 0)
    );
    // Saturday → all of Monday.
    assert_eq!(
        deadline(wib(2026, 3, 7, 10, 0), day, &calendar),
        wib(2026, 3, 9, 16, 0)
    );
    // In UTC: Monday 16:00 WIB is 09:00 UTC.
    assert_eq!(
        deadline(wib(2026, 3, 7, 10, 0), day, &calendar),
        Utc.with_ymd_and_hms(2026, 3, 9, 9, 0, 0).unwrap()
    );

    // With Monday 9 March a holiday, Friday 15:00 runs to Tuesday 15:00.
    let with_holiday = WorkCalendar::default().with_holidays([date(2026, 3, 9)]);
    assert_eq!(
        deadline(wib(2026, 3, 6, 15, 0), day, &with_holiday),
        wib(2026, 3, 10, 15, 0)
    );
    // Two working days from Thursday 10:00 over a Friday holiday and the weekend:
    // 6 h Thursday, 8.5 h Monday, 2.5 h Tuesday.
    let friday_off = WorkCalendar::default().with_holidays([date(2026, 3, 20)]);
    assert_eq!(
        deadline(
            wib(2026, 3, 19, 10, 0),
            TimeStandard::WorkingDays(2),
            &friday_off
        ),
        wib(2026, 3, 24, 10, 0)
    );
    // Starting on a holiday counts from the next working day's opening.
    assert_eq!(
        deadline(wib(2026, 3, 9, 10, 0), day, &with_holiday),
        wib(2026, 3, 10, 16, 0)
    );
}

#[test]
fn the_calendar_is_configurable_and_validated() {
    let config = WorkCalendarConfig {
        working_days: vec![
            Weekday::Mon,
            Weekday::Tue,
            Weekday::Wed,
            Weekday::Thu,
            Weekday::Fri,
            Weekday::Sat,
        ],
        opens: NaiveTime::from_hms_opt(8, 0, 0).unwrap(),
        closes: NaiveTime::from_hms_opt(12, 0, 0).unwrap(),
        ..WorkCalendarConfig::default()
    };
    let calendar = WorkCalendar::try_from(config.clone()).unwrap();
    assert_eq!(calendar.working_day_length(), TimeDelta::hours(4));
    // Friday 11:00 → 1 h Friday, 3 h Saturday.
    assert_eq!(
        deadline(
            wib(2026, 3, 6, 11, 0),
            TimeStandard::WorkingDays(1),
            &calendar
        ),
        wib(2026, 3, 7, 11, 0)
    );

    let inverted = WorkCalendarConfig {
        opens: NaiveTime::from_hms_opt(16, 0, 0).unwrap(),
        closes: NaiveTime::from_hms_opt(7, 30, 0).unwrap(),
        ..WorkCalendarConfig::default()
    };
    assert!(matches!(
        WorkCalendar::try_from(inverted),
        Err(CalendarError::EmptyOfficeHours { .. })
    ));
    let idle = WorkCalendarConfig {
        working_days: Vec::new(),
        ..WorkCalendarConfig::default()
    };
    assert_eq!(
        WorkCalendar::try_from(idle),
        Err(CalendarError::NoWorkingDays)
    );

    // From TOML: omitted keys take the defaults; holidays as TOML dates or strings.
    let from_toml: WorkCalendar = toml::from_str(
        "holidays = [2026-03-19, \"2026-03-20\"]\nworking_days = [\"Mon\", \"Tue\", \"Wed\", \"Thu\", \"Fri\"]",
    )
    .unwrap();
    assert_eq!(from_toml.config().time_zone, chrono_tz::Asia::Jakarta);
    assert_eq!(
        from_toml.config().opens,
        NaiveTime::from_hms_opt(7, 30, 0).unwrap()
    );
    assert!(!from_toml.is_working_day(date(2026, 3, 19)));
    assert!(!from_toml.is_working_day(date(2026, 3, 20)));
    assert!(!from_toml.is_working_day(date(2026, 3, 21))); // Saturday
    assert!(from_toml.is_working_day(date(2026, 3, 23)));
    assert!(toml::from_str::<WorkCalendar>("opens = \"17:00\"").is_err());
    assert!(toml::from_str::<WorkCalendar>("time_zone = \"Asia/Nowhere\"").is_err());

    let json = serde_json::to_string(&from_toml).unwrap();
    assert_eq!(
        serde_json::from_str::<WorkCalendar>(&json).unwrap(),
        from_toml
    );
}

#[test]
fn overruns_are_reported_per_step_visit() {
    let a = definition("colocation_handover");
    let calendar = WorkCalendar::default();
    let monday = |hour, minute| wib(2026, 3, 2, hour, minute);
    let mut state = start(&a, &skpd(), monday(8, 0)).unwrap().state;
    let mut apply = |event: Event, by: &Actor, at| {
        state = decide(&a, &state, event, by, at).unwrap().state;
        state.clone()
    };
    apply(Event::complete(1), &kadin(), monday(8, 30)); // 1 jam: on time
    let state = apply(Event::complete(2), &kasi(), monday(12, 0)); // 3 jam: 30 min late

    // Step 3 (2 jam) is open since 12:00.
    let report = overrun_report(&state, &calendar, monday(13, 0));
    assert_eq!(report.steps.len(), 3);
    assert!(!report.steps[0].is_overrun());
    assert_eq!(report.steps[1].deadline, Some(monday(11, 30)));
    assert_eq!(report.steps[1].late_by_seconds, Some(30 * 60));
    assert!(!report.steps[2].is_overrun());
    assert!(report.steps[2].is_open());
    let late: Vec<StepNumber> = report.overruns().map(|timing| timing.step).collect();
    assert_eq!(late, [n(2)]);

    // Later, the open step has overrun too, measured to `now`.
    let report = overrun_report(&state, &calendar, monday(15, 0));
    let late: Vec<(StepNumber, Option<i64>)> = report
        .overruns()
        .map(|timing| (timing.step, timing.late_by_seconds))
        .collect();
    assert_eq!(late, [(n(2), Some(1800)), (n(3), Some(3600))]);
}

#[test]
fn a_working_day_step_overruns_only_after_office_time_runs_out() {
    let a = definition("colocation_handover");
    let calendar = WorkCalendar::default();
    let friday = wib(2026, 3, 6, 8, 0);
    let mut state = start(&a, &skpd(), friday).unwrap().state;
    for (event, by) in [
        (Event::complete(1), kadin()),
        (Event::complete(2), kasi()),
        (Event::complete(3), petugas()),
    ] {
        state = decide(&a, &state, event, &by, friday).unwrap().state;
    }
    let entered_8 = wib(2026, 3, 6, 15, 0);
    state = decide(
        &a,
        &state,
        Event::decide(4, Answer::No, "rak penuh"),
        &kasi(),
        entered_8,
    )
    .unwrap()
    .state;
    assert_eq!(state.current_step(), Some(n(8)));

    // Step 8, "1 hari", entered Friday 15:00: due Monday 15:00.
    let on_time = decide(
        &a,
        &state,
        Event::complete(8),
        &kabid(),
        wib(2026, 3, 9, 14, 0),
    )
    .unwrap()
    .state;
    let timing = overrun_report(&on_time, &calendar, wib(2026, 3, 30, 0, 0))
        .steps
        .pop()
        .unwrap();
    assert_eq!(timing.deadline, Some(wib(2026, 3, 9, 15, 0)));
    assert!(!timing.is_overrun());

    let late = decide(
        &a,
        &state,
        Event::complete(8),
        &kabid(),
        wib(2026, 3, 9, 15, 30),
    )
    .unwrap()
    .state;
    let timing = overrun_report(&late, &calendar, wib(2026, 3, 30, 0, 0))
        .steps
        .pop()
        .unwrap();
    assert_eq!(timing.late_by_seconds, Some(30 * 60));

    // The same finish is on time when Monday is a holiday.
    let holiday = WorkCalendar::default().with_holidays([date(2026, 3, 9)]);
    let timing = overrun_report(&late, &holiday, wib(2026, 3, 30, 0, 0))
        .steps
        .pop()
        .unwrap();
    assert_eq!(timing.deadline, Some(wib(2026, 3, 10, 15, 0)));
    assert!(!timing.is_overrun());
}

#[test]
fn a_step_timed_from_its_first_document_waits_for_it() {
    let b = definition("backup_request");
    let calendar = WorkCalendar::default();
    let (mut run, _) = Run::start(&b, &skpd());
    run.complete(1, &kadin());
    run.complete(2, &kasi());
    run.complete(3, &petugas());
    run.decide(4, Answer::Yes, &kasi());
    run.complete(5, &petugas());
    assert_eq!(run.state.current_step(), Some(n(6)));

    // Months later, no stop letter yet: step 6 has no clock and cannot be late.
    let months_later = wib(2026, 9, 1, 10, 0);
    let waiting = overrun_report(&run.state, &calendar, months_later)
        .steps
        .pop()
        .unwrap();
    assert_eq!(waiting.step, n(6));
    assert_eq!(waiting.clock_started_at, None);
    assert!(!waiting.is_overrun());

    // The letter arrives; 2 jam run from then.
    let state = decide(
        &b,
        &run.state,
        Event::Attach {
            step: n(6),
            document: "SURAT/STOP/1".into(),
        },
        &admin(),
        months_later,
    )
    .unwrap()
    .state;
    let done = |at| {
        decide(&b, &state, Event::complete(6), &kadin(), at)
            .unwrap()
            .state
    };
    // Completing step 6 enters step 7: pick step 6's own record.
    let timing = |state: &RequestState| {
        overrun_report(state, &calendar, months_later)
            .steps
            .into_iter()
            .find(|timing| timing.step == n(6))
            .unwrap()
    };
    let on_time = timing(&done(wib(2026, 9, 1, 11, 0)));
    assert_eq!(on_time.clock_started_at, Some(months_later));
    assert!(!on_time.is_overrun());
    assert_eq!(
        timing(&done(wib(2026, 9, 1, 13, 0))).late_by_seconds,
        Some(3600)
    );
}

#[test]
fn records_keep_the_time_standard_they_were_entered_with() {
    let a = definition("colocation_handover");
    let (mut run, _) = Run::start(&a, &skpd());
    run.complete(1, &kadin());
    let record = &run.state.steps[1];
    assert_eq!(record.time_standard, TimeStandard::Hours(3));
    assert_eq!(record.time_from, ClockStart::Entered);
}

// ---------------------------------------------------------------------------------------
// Serialization
// ---------------------------------------------------------------------------------------

#[test]
fn request_state_round_trips_through_json() {
    let b = definition("backup_request");
    let (mut run, _) = Run::start(&b, &skpd());
    run.complete(1, &kadin());
    run.ok(
        Event::Attach {
            step: n(2),
            document: "BA/KLARIFIKASI/3".into(),
        },
        &kasi(),
    );
    run.complete(2, &kasi());
    run.complete(3, &petugas());
    run.decide(4, Answer::No, &kasi());

    let json = serde_json::to_string(&run.state).unwrap();
    assert!(json.contains("\"status\":\"active\""), "{json}");
    assert!(json.contains("\"role\":\"KASI_INFRAS\""), "{json}");
    assert!(json.contains("\"decision\":\"no\""), "{json}");
    assert!(json.contains("\"time_standard\":\"1 hari\""), "{json}");
    assert!(json.contains("\"format\":1"), "{json}");
    let back: RequestState = serde_json::from_str(&json).unwrap();
    assert_eq!(back, run.state);

    // A decision, with its actions, and an event serialize too.
    let decision = decide(&b, &back, Event::complete(6), &kadin(), run.now).unwrap();
    let json = serde_json::to_string(&decision).unwrap();
    assert!(json.contains("\"action\":\"stop_backup_plan\""), "{json}");
    assert_eq!(serde_json::from_str::<Decision>(&json).unwrap(), decision);
    let event = Event::Decide {
        step: n(4),
        answer: Answer::Yes,
        reason: "ya".into(),
        documents: vec!["D/1".into()],
    };
    let json = serde_json::to_string(&event).unwrap();
    assert_eq!(
        json,
        r#"{"event":"decide","step":4,"answer":"yes","reason":"ya","documents":["D/1"]}"#
    );
    assert_eq!(serde_json::from_str::<Event>(&json).unwrap(), event);

    let finished = Progress::Finished {
        outcome: Outcome::CapacityUnavailable,
        at: wib(2026, 3, 2, 8, 0),
    };
    assert_eq!(
        serde_json::to_string(&finished).unwrap(),
        r#"{"status":"finished","outcome":"capacity_unavailable","at":"2026-03-02T01:00:00Z"}"#
    );
}

#[test]
fn definitions_serialize_to_their_file_shape_and_validate_on_the_way_back() {
    for definition in registry().iter() {
        let text = toml::to_string(definition).unwrap();
        let again = ProcedureDefinition::from_toml(definition.source(), &text)
            .unwrap_or_else(|error| panic!("{error}\n{text}"));
        assert_eq!(&again, definition);

        let json = serde_json::to_string(definition).unwrap();
        let back: ProcedureDefinition = serde_json::from_str(&json).unwrap();
        assert_eq!(back.steps(), definition.steps());
        assert_eq!(back.key(), definition.key());
    }
    // Deserializing does not bypass validation.
    let a = definition("colocation_handover");
    let json = serde_json::to_string(&a)
        .unwrap()
        .replace("\"yes\":5", "\"yes\":42");
    let error = serde_json::from_str::<ProcedureDefinition>(&json).unwrap_err();
    assert!(
        error
            .to_string()
            .contains("<serialized>: step 4: `yes` leads to step 42, which does not exist"),
        "{error}"
    );
}
