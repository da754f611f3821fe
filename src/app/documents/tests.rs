//! Golden-file tests of the renderer: each document kind rendered from fixed data is
//! compared byte for byte with `src/app/golden/<name>.html`. A missing golden file is
//! written (and reported); set `CADANG_UPDATE_GOLDEN=1` to rewrite them after an intended
//! change, and review the diff.

use std::path::{Path, PathBuf};

use chrono::NaiveDate;

use super::render::render;
use super::*;
use crate::app::details::Validity;

fn golden_dir() -> PathBuf {
    // `file!()` is relative to the workspace in the main crate and absolute when the
    // module is compiled through a `#[path]` attribute elsewhere.
    let here = Path::new(file!());
    let here = if here.is_absolute() {
        here.to_path_buf()
    } else {
        Path::new(env!("CARGO_MANIFEST_DIR")).join(here)
    };
    here.parent()
        .and_then(Path::parent)
        .expect("src/app/documents/tests.rs has two parents")
        .join("golden")
}

fn golden(name: &str, html: &str) {
    let path = golden_dir().join(format!("{name}.html"));
    if std::env::var_os("CADANG_UPDATE_GOLDEN").is_some() || !path.exists() {
        std::fs::write(&path, html).expect("golden directory is writable");
        eprintln!("wrote golden file {}", path.display());
        return;
    }
    let expected = std::fs::read_to_string(&path).expect("golden file is readable");
    assert!(
        html == expected,
        "{name}: rendered HTML differs from {} (set CADANG_UPDATE_GOLDEN=1 to accept an intended change)",
        path.display()
    );
}

fn date() -> NaiveDate {
    NaiveDate::from_ymd_opt(2026, 3, 2).expect("valid date")
}

fn office() -> OfficeIdentity {
    OfficeIdentity {
        contact: Some("Telp. (024) 8319140 · diskominfo@jatengprov.go.id".into()),
        signatories: vec![Signatory {
            role: Role::KabidTik,
            name: "Ir. Budi Santoso, M.T.".into(),
            nip: Some("197001011995031001".into()),
            rank: Some("Pembina Tk. I".into()),
        }],
        ..OfficeIdentity::default()
    }
}

/// An agency whose name tries to inject markup: every renderer must escape it.
const HOSTILE_UNIT: &str = "Dinas Kesehatan & <script>alert('x')</script> \"Jateng\"";

fn applicant() -> Party {
    Party {
        unit: HOSTILE_UNIT.into(),
        person: Some("dr. Siti Rahayu, M.Kes.".into()),
        nip: Some("19750812 200003 2 004".into()),
        address: Some("Jl. Piere Tendean No. 24, Semarang".into()),
        phone: Some("(024) 3511351".into()),
    }
}

fn entry() -> ColocationEntry {
    ColocationEntry {
        name: "simkes-web-01".into(),
        noc: "NOC-1".into(),
        location: "Ruang Server Lt. 2, rak R01, U7–U8".into(),
        serial_number: "CN7016389F0012".into(),
        type_and_brand: "PowerEdge R740 / Dell".into(),
        domain: "simkes.jatengprov.go.id".into(),
        host_admin_user: Some("root".into()),
        password_on_file: true,
        ip_addresses: "103.9.227.10, 10.10.20.5".into(),
        contact_person: Some("Andi (0812-2800-1234)".into()),
    }
}

fn data(kind: DocumentKind, number: &str, body: DocumentBody) -> DocumentData {
    DocumentData {
        kind,
        number: number.into(),
        date: date(),
        office: office(),
        signatory_role: Role::KabidTik,
        body,
    }
}

fn letter(kind: DocumentKind, facts: Vec<(&str, &str)>, paragraphs: Vec<&str>) -> DocumentData {
    data(
        kind,
        "007/555/DISKOMINFO/2026",
        DocumentBody::Letter {
            recipient: applicant(),
            subject: title(kind).into(),
            paragraphs: paragraphs.into_iter().map(str::to_owned).collect(),
            facts: facts
                .into_iter()
                .map(|(label, value)| (label.to_owned(), value.to_owned()))
                .collect(),
        },
    )
}

fn check(name: &str, data: &DocumentData) {
    let html = render(data);
    assert!(
        !html.contains("<script>"),
        "{name}: unescaped markup from data"
    );
    assert!(
        html.contains("&lt;script&gt;alert(&#39;x&#39;)&lt;/script&gt;"),
        "{name}: the hostile unit name is not shown escaped"
    );
    assert!(html.starts_with("<!DOCTYPE html>"));
    assert!(html.contains("size: A4"));
    assert!(
        !html.contains("<link") && !html.contains("src="),
        "{name}: not self-contained"
    );
    golden(name, &html);
}

#[test]
fn form_1_application() {
    check(
        "form1_application",
        &data(
            DocumentKind::ApplicationForm,
            "001/FPC/DISKOMINFO/2026",
            DocumentBody::Application {
                applicant: applicant(),
                domain: "simkes.jatengprov.go.id".into(),
                domain_activation: NaiveDate::from_ymd_opt(2026, 4, 1),
                validity: Validity::Temporary {
                    until: NaiveDate::from_ymd_opt(2027, 3, 31).expect("valid date"),
                },
            },
        ),
    );
}

#[test]
fn form_2_approval() {
    let mut rejected_data = data(
        DocumentKind::ApprovalForm,
        "003/FPSC/DISKOMINFO/2026",
        DocumentBody::Approval {
            domain: "simkes.jatengprov.go.id".into(),
            approved: false,
            considerations: "Kapasitas <daya> tidak cukup & rak penuh".into(),
            data_center_name: HOSTILE_UNIT.into(),
            data_center: None,
            colocation: Vec::new(),
        },
    );
    check("form2_approval_rejected", &rejected_data);
    rejected_data.body = DocumentBody::Approval {
        domain: "simkes.jatengprov.go.id".into(),
        approved: true,
        considerations: "Kapasitas tersedia: rak R01 (Ruang Server Lt. 2), U7–U8.".into(),
        data_center_name: HOSTILE_UNIT.into(),
        data_center: Some(Placement {
            noc: "NOC-1".into(),
            location: "Ruang Server Lt. 2, rak R01, U7–U8".into(),
            domain: "simkes.jatengprov.go.id".into(),
        }),
        colocation: vec![entry()],
    };
    let html = render(&rejected_data);
    assert!(
        html.contains("tersimpan tersegel"),
        "the password is never printed"
    );
    check("form2_approval_approved", &rejected_data);
}

#[test]
fn form_3_handover_with_conformity_check() {
    check(
        "form3_handover",
        &data(
            DocumentKind::HandoverForm,
            "004/FSTC/DISKOMINFO/2026",
            DocumentBody::Handover {
                day: render::indonesian_weekday(date()).into(),
                handing: applicant(),
                receiving: Party {
                    unit: OfficeIdentity::default().unit,
                    person: Some("Rudi Hartono, S.Kom.".into()),
                    nip: Some("19880514 201101 1 002".into()),
                    address: None,
                    phone: None,
                },
                servers: vec![
                    SpecRow {
                        name: "simkes-web-01".into(),
                        processor: "Intel Xeon Silver 4214".into(),
                        ram: "64 GB".into(),
                        motherboard: "Dell 0WXD1Y".into(),
                        storage: "2 x 1.2 TB SAS".into(),
                        psu: "2 x 750 W".into(),
                    },
                    SpecRow {
                        name: "simkes-db-01".into(),
                        processor: "Intel Xeon Gold 5218".into(),
                        ram: "32GB".into(),
                        motherboard: "Dell 0WXD1Y".into(),
                        storage: "4 x 2 TB SAS".into(),
                        psu: "2 x 750 W".into(),
                    },
                ],
                checked: true,
                mismatches: vec![CheckRow {
                    server: "simkes-db-01".into(),
                    field: "RAM".into(),
                    declared: "128 GB".into(),
                    observed: "32GB".into(),
                }],
            },
        ),
    );
}

#[test]
fn form_4_withdrawal() {
    check(
        "form4_withdrawal",
        &data(
            DocumentKind::WithdrawalForm,
            "005/FPNC/DISKOMINFO/2026",
            DocumentBody::Withdrawal {
                domain: "simkes.jatengprov.go.id".into(),
                data_center: Placement {
                    noc: "NOC Diskominfo Provinsi Jawa Tengah".into(),
                    location: "Ruang Server Lt. 2, rak R01, U7–U8".into(),
                    domain: "simkes.jatengprov.go.id".into(),
                },
                colocation: entry(),
                considerations: format!("Server {HOSTILE_UNIT} dipindahkan ke cloud"),
            },
        ),
    );
}

#[test]
fn letter_request_approved() {
    check(
        "letter_request_approved",
        &letter(
            DocumentKind::LetterRequestApproved,
            vec![
                ("Nomor permohonan", "12"),
                ("Nama Domain/Sub-Domain", "simkes.jatengprov.go.id"),
                (
                    "Letak Server",
                    "simkes-web-01: Ruang Server Lt. 2, rak R01, U7–U8",
                ),
            ],
            vec![
                "Menindaklanjuti surat permohonan colocation server, dengan ini kami sampaikan bahwa permohonan tersebut telah disetujui.",
                "Demikian disampaikan, atas perhatian dan kerja samanya diucapkan terima kasih.",
            ],
        ),
    );
}

#[test]
fn letter_capacity_unavailable() {
    check(
        "letter_capacity_unavailable",
        &letter(
            DocumentKind::LetterCapacityUnavailable,
            vec![
                ("Kebutuhan tempat", "4 U"),
                ("Kebutuhan listrik", "1.800 W"),
                (
                    "Hasil pengecekan kapasitas",
                    "Kapasitas tidak tersedia: listrik: sisa daya terbesar 500 W, dibutuhkan 1.800 W.",
                ),
            ],
            vec!["Kapasitas infrastruktur (listrik, bandwidth, tempat) saat ini tidak tersedia."],
        ),
    );
}

#[test]
fn letter_backup_stopped() {
    check(
        "letter_backup_stopped",
        &letter(
            DocumentKind::LetterBackupStopped,
            vec![
                ("Cakupan back up", "/var/www, database simkes"),
                ("Tanggal penghentian", "2 Maret 2026"),
            ],
            vec!["Pelaksanaan back up data telah dihentikan."],
        ),
    );
}

#[test]
fn letter_restore_result() {
    check(
        "letter_restore_result",
        &letter(
            DocumentKind::LetterRestoreResult,
            vec![("Titik restore", "2026-02-28 02:00"), ("Hasil", "berhasil")],
            vec!["Proses restore data berhasil."],
        ),
    );
}

fn pairs(items: &[(&str, &str)]) -> Vec<(String, String)> {
    items
        .iter()
        .map(|(label, value)| ((*label).to_owned(), (*value).to_owned()))
        .collect()
}

#[test]
fn form_restore_execution() {
    let attempt = |step: &str, source: &str, verification: &str, outcome: &str| AttemptRow {
        step: step.into(),
        snapshot: "5e1f0c9a2b7d4e63".into(),
        source: source.into(),
        target: "simkes-web-01 (S/N CN7016389F0012), direktori /srv/pulih".into(),
        finished: "02-03-2026 10:41".into(),
        verification: verification.into(),
        outcome: outcome.into(),
    };
    check(
        "form_restore_execution",
        &data(
            DocumentKind::RestoreExecutionForm,
            "007/FPRD/DISKOMINFO/2026",
            DocumentBody::RestoreExecution {
                agency: applicant(),
                requested: pairs(&[
                    ("Nomor permohonan", "41"),
                    ("Titik restore", "back up 28 Februari 2026"),
                    ("Tujuan restore", "server simkes-web-01, /srv/pulih"),
                    ("Alasan", "basis data rusak setelah pembaruan"),
                ]),
                plan: pairs(&[
                    ("Versi rencana", "2 (sidik BLAKE3 9c0e41d27ab35f10)"),
                    ("Titik restore", "terbaru"),
                    ("Data", "/var/lib/simkes"),
                    (
                        "Pemeriksaan setelah restore",
                        "`pg_isready -h 127.0.0.1` (batas waktu 60 detik)",
                    ),
                    (
                        "Langkah pemulihan (C6)",
                        "baca chunk rusak dari replika → snapshot sebelumnya (dengan konfirmasi Kepala Bidang)",
                    ),
                    ("Disetujui (langkah 3)", "kabid, 02-03-2026 09:12"),
                ]),
                attempts: vec![
                    attempt(
                        "restore utama",
                        "repositori utama",
                        "2 berkas cocok dengan snapshot (hash BLAKE3 berkunci), 1 gagal",
                        "tidak berhasil (verify differences)",
                    ),
                    attempt(
                        "baca chunk rusak dari replika",
                        "repositori utama; 3 chunk rusak dibaca dari repositori replika (kerusakan dilaporkan untuk diperbaiki)",
                        "3 berkas cocok dengan snapshot (hash BLAKE3 berkunci), 0 gagal; pemeriksaan `pg_isready -h 127.0.0.1`: lulus",
                        "berhasil",
                    ),
                ],
                failed: pairs(&[(
                    "/var/lib/simkes/<b>base</b>/16384",
                    "chunk 2c07e9f7 unreadable in the repository",
                )]),
                failed_unlisted: 4,
                times: vec![
                    TimeRow {
                        step: "langkah 4".into(),
                        took: "12 menit".into(),
                        standard: "1 hari".into(),
                        met: true,
                    },
                    TimeRow {
                        step: "langkah 5".into(),
                        took: "185 menit".into(),
                        standard: "2 jam".into(),
                        met: false,
                    },
                ],
                result: "berhasil setelah langkah pemulihan (baca chunk rusak dari replika) dan seluruh berkas terverifikasi".into(),
            },
        ),
    );
    let html = render(&data(
        DocumentKind::RestoreExecutionForm,
        "008/FPRD/DISKOMINFO/2026",
        DocumentBody::RestoreExecution {
            agency: applicant(),
            requested: Vec::new(),
            plan: Vec::new(),
            attempts: Vec::new(),
            failed: Vec::new(),
            failed_unlisted: 0,
            times: Vec::new(),
            result: "restore belum dijalankan oleh sistem".into(),
        },
    ));
    assert!(html.contains("Rencana restore tidak dicatat"));
    assert!(html.contains("Belum ada restore yang dijalankan"));
    assert!(!html.contains("Berkas yang gagal"));
}

#[test]
fn numbering_follows_the_pattern() {
    let numbering = DocumentNumbering::default();
    numbering.validate().unwrap();
    assert_eq!(
        numbering.format(DocumentKind::ApprovalForm, 7, date()),
        "007/FPSC/DISKOMINFO/2026"
    );
    let roman = DocumentNumbering {
        pattern: "{seq}/{code}/DISKOMINFO/{roman_month}/{year}".into(),
        seq_width: 4,
        codes: [("letter_request_approved".to_owned(), "555.1".to_owned())].into(),
    };
    roman.validate().unwrap();
    assert_eq!(
        roman.format(DocumentKind::LetterRequestApproved, 12, date()),
        "0012/555.1/DISKOMINFO/III/2026"
    );
    for (pattern, expected) in [
        ("{code}/{year}", "must contain {seq}"),
        ("{seq}/{code}", "must contain {year}"),
        ("{seq}/{yr}/{year}", "unknown placeholder {yr}"),
        ("{seq}/{year", "must contain {year}"),
        ("{seq}/{year}/{", "unclosed"),
    ] {
        let numbering = DocumentNumbering {
            pattern: pattern.into(),
            ..DocumentNumbering::default()
        };
        let error = numbering.validate().unwrap_err().to_string();
        assert!(error.contains(expected), "{pattern}: {error}");
    }
    let bad_kind = DocumentNumbering {
        codes: [("invoice".to_owned(), "X".to_owned())].into(),
        ..DocumentNumbering::default()
    };
    assert!(
        bad_kind
            .validate()
            .unwrap_err()
            .to_string()
            .contains("unknown document kind")
    );
}
