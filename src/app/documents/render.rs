//! Pure rendering of documents to printable, self-contained A4 HTML (no external files,
//! no scripts), with the SOP's Indonesian labels.
//!
//! Every value that comes from data — names, domains, reasons, even the configured
//! letterhead — passes through [`escape`]; markup is only ever written from string
//! literals in this file. The golden files under `src/app/golden/` pin the output.

use chrono::{Datelike, NaiveDate, Weekday};

use super::{
    AttemptRow, CheckRow, ColocationEntry, DocumentBody, DocumentData, OfficeIdentity, Party,
    Placement, SpecRow, TimeRow, title,
};
use crate::app::details::Validity;
use crate::workflow::{DocumentKind, Role};

const MONTHS: [&str; 12] = [
    "Januari",
    "Februari",
    "Maret",
    "April",
    "Mei",
    "Juni",
    "Juli",
    "Agustus",
    "September",
    "Oktober",
    "November",
    "Desember",
];

/// A date as Indonesian letters write it: `19 Februari 2019`.
pub fn indonesian_date(date: NaiveDate) -> String {
    let month = MONTHS
        .get(usize::try_from(date.month0()).unwrap_or(0))
        .copied()
        .unwrap_or("");
    format!("{} {} {}", date.day(), month, date.year())
}

/// The Indonesian name of the weekday: `Senin` … `Minggu`.
pub fn indonesian_weekday(date: NaiveDate) -> &'static str {
    match date.weekday() {
        Weekday::Mon => "Senin",
        Weekday::Tue => "Selasa",
        Weekday::Wed => "Rabu",
        Weekday::Thu => "Kamis",
        Weekday::Fri => "Jumat",
        Weekday::Sat => "Sabtu",
        Weekday::Sun => "Minggu",
    }
}

/// Escapes text for HTML element content and attribute values.
pub fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for character in text.chars() {
        match character {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            other => out.push(other),
        }
    }
    out
}

/// An HTML buffer: markup from literals, text escaped.
struct Html(String);

impl Html {
    fn raw(&mut self, markup: &'static str) -> &mut Self {
        self.0.push_str(markup);
        self
    }

    fn text(&mut self, text: &str) -> &mut Self {
        self.0.push_str(&escape(text));
        self
    }

    /// The value, or a dotted blank line as on the paper form.
    fn value(&mut self, value: Option<&str>) -> &mut Self {
        match value.map(str::trim).filter(|value| !value.is_empty()) {
            Some(value) => self.text(value),
            None => self.raw("<span class=\"blank\">..............................</span>"),
        }
    }

    /// One `label : value` line of a form.
    fn field(&mut self, label: &str, value: Option<&str>) -> &mut Self {
        self.raw("<tr><th>")
            .text(label)
            .raw("</th><td class=\"colon\">:</td><td>")
            .value(value)
            .raw("</td></tr>\n")
    }
}

const STYLE: &str = r#"<style>
@page { size: A4; margin: 20mm 20mm 20mm 25mm; }
* { box-sizing: border-box; }
body { margin: 0; font-family: "Times New Roman", Times, serif; font-size: 12pt; line-height: 1.4; color: #000; background: #fff; }
.page { width: 165mm; margin: 0 auto; }
.form-head { display: table; width: 100%; border: 1px solid #000; border-collapse: collapse; margin-bottom: 6mm; }
.form-head > div { display: table-cell; vertical-align: middle; padding: 2mm 3mm; border: 1px solid #000; }
.form-head .org { width: 30%; font-size: 9pt; font-weight: bold; text-align: center; }
.form-head h1 { margin: 0; font-size: 13pt; text-align: center; }
.form-head .meta { width: 30%; padding: 0; }
.meta table { width: 100%; border-collapse: collapse; font-size: 10pt; }
.meta th, .meta td { border: 1px solid #000; padding: 1mm 2mm; text-align: left; }
.meta th { width: 35%; font-weight: normal; }
.subtitle { text-align: center; font-style: italic; margin: -4mm 0 4mm; }
table.fields { width: 100%; border-collapse: collapse; margin: 2mm 0; }
table.fields th { width: 38%; text-align: left; font-weight: normal; vertical-align: top; padding: 1mm 0; }
table.fields td { vertical-align: top; padding: 1mm 0; }
table.fields td.colon { width: 4%; }
.blank { color: #555; letter-spacing: 1px; }
h2 { font-size: 12pt; margin: 5mm 0 1mm; text-decoration: underline; }
h3 { font-size: 11pt; margin: 3mm 0 1mm; }
table.grid { width: 100%; border-collapse: collapse; margin: 2mm 0 4mm; font-size: 10.5pt; }
table.grid th, table.grid td { border: 1px solid #000; padding: 1mm 1.5mm; vertical-align: top; }
table.grid th { background: #eee; }
.box { font-family: "DejaVu Sans", Arial, sans-serif; }
.sign { margin-top: 8mm; width: 70mm; margin-left: auto; text-align: center; }
.sign .space { height: 22mm; }
.signs { display: table; width: 100%; margin-top: 8mm; }
.signs > div { display: table-cell; width: 50%; text-align: center; }
.signs .space { height: 22mm; }
.kop { text-align: center; line-height: 1.2; }
.kop .gov { font-size: 14pt; font-weight: bold; }
.kop .dinas { font-size: 16pt; font-weight: bold; }
.kop .addr { font-size: 10pt; }
hr.kop-line { border: 0; border-top: 3px double #000; margin: 2mm 0 5mm; }
.place-date { text-align: right; margin: 0 0 4mm; }
table.letter-meta { border-collapse: collapse; margin-bottom: 5mm; }
table.letter-meta td { padding: 0 2mm 0 0; vertical-align: top; }
.to { margin: 0 0 5mm; }
p.body { text-align: justify; text-indent: 10mm; margin: 0 0 3mm; }
.note { font-size: 10pt; margin-top: 6mm; }
footer { margin-top: 10mm; font-size: 8pt; color: #444; border-top: 1px solid #999; padding-top: 1mm; }
@media print { footer { position: fixed; bottom: 0; width: 165mm; } }
</style>
"#;

/// Renders a document to a complete HTML page.
pub fn render(data: &DocumentData) -> String {
    let mut html = Html(String::with_capacity(8 * 1024));
    html.raw("<!DOCTYPE html>\n<html lang=\"id\">\n<head>\n<meta charset=\"utf-8\">\n<title>")
        .text(title(data.kind))
        .raw(" — ")
        .text(&data.number)
        .raw("</title>\n")
        .raw(STYLE)
        .raw("</head>\n<body>\n<main class=\"page\">\n");
    match &data.body {
        DocumentBody::Application {
            applicant,
            domain,
            domain_activation,
            validity,
        } => application(
            &mut html,
            data,
            applicant,
            domain,
            *domain_activation,
            *validity,
        ),
        DocumentBody::Approval {
            domain,
            approved,
            considerations,
            data_center_name,
            data_center,
            colocation,
        } => approval(
            &mut html,
            data,
            domain,
            *approved,
            considerations,
            data_center_name,
            data_center.as_ref(),
            colocation,
        ),
        DocumentBody::Handover {
            day,
            handing,
            receiving,
            servers,
            checked,
            mismatches,
        } => handover(
            &mut html, data, day, handing, receiving, servers, *checked, mismatches,
        ),
        DocumentBody::Withdrawal {
            domain,
            data_center,
            colocation,
            considerations,
        } => withdrawal(
            &mut html,
            data,
            domain,
            data_center,
            colocation,
            considerations,
        ),
        DocumentBody::RestoreExecution {
            agency,
            requested,
            plan,
            attempts,
            failed,
            failed_unlisted,
            times,
            result,
        } => restore_execution(
            &mut html,
            data,
            agency,
            requested,
            plan,
            attempts,
            (failed, *failed_unlisted),
            times,
            result,
        ),
        DocumentBody::Letter {
            recipient,
            subject,
            paragraphs,
            facts,
        } => letter(&mut html, data, recipient, subject, paragraphs, facts),
    }
    html.raw("<footer>")
        .text(&data.office.agency)
        .raw(" · ")
        .text(&data.number)
        .raw("</footer>\n</main>\n</body>\n</html>\n");
    html.0
}

fn form_head(html: &mut Html, data: &DocumentData) {
    html.raw("<header class=\"form-head\">\n<div class=\"org\">")
        .text(&data.office.government)
        .raw("<br>")
        .text(&data.office.agency)
        .raw("</div>\n<div><h1>")
        .text(title(data.kind))
        .raw("</h1></div>\n<div class=\"meta\"><table>\n<tr><th>No.</th><td>")
        .text(&data.number)
        .raw("</td></tr>\n<tr><th>Tanggal</th><td>")
        .text(&indonesian_date(data.date))
        .raw("</td></tr>\n<tr><th>Halaman</th><td>1 dari 1</td></tr>\n</table></div>\n</header>\n");
}

fn signatory_lines(html: &mut Html, office: &OfficeIdentity, role: Role) {
    match office.signatory(role) {
        Some(signatory) => {
            html.raw("<p><strong><u>")
                .text(&signatory.name)
                .raw("</u></strong>");
            if let Some(rank) = &signatory.rank {
                html.raw("<br>").text(rank);
            }
            if let Some(nip) = &signatory.nip {
                html.raw("<br>NIP. ").text(&grouped(nip));
            }
            html.raw("</p>\n");
        }
        None => {
            html.raw("<p>( ..................................... )</p>\n");
        }
    }
}

fn grouped(nip: &str) -> String {
    crate::app::identifiers::Nip::parse(nip)
        .map(|nip| nip.grouped())
        .unwrap_or_else(|_| nip.to_owned())
}

fn head_of_division_sign(html: &mut Html, data: &DocumentData, lead: &'static str) {
    html.raw("<section class=\"sign\">\n<p>")
        .raw(lead)
        .raw("<br>Kepala Bidang</p>\n<div class=\"space\"></div>\n");
    signatory_lines(html, &data.office, Role::KabidTik);
    html.raw("</section>\n");
}

fn checkbox(checked: bool) -> &'static str {
    if checked {
        "<span class=\"box\">&#9745;</span>"
    } else {
        "<span class=\"box\">&#9744;</span>"
    }
}

fn application(
    html: &mut Html,
    data: &DocumentData,
    applicant: &Party,
    domain: &str,
    domain_activation: Option<NaiveDate>,
    validity: Validity,
) {
    form_head(html, data);
    let activation = domain_activation.map(indonesian_date);
    html.raw("<table class=\"fields\">\n")
        .field("Nama Unit", Some(&applicant.unit))
        .field("Penanggung Jawab", applicant.person.as_deref())
        .field("NIP", applicant.nip.as_deref())
        .field("Alamat Unit", applicant.address.as_deref())
        .field("Kontak Number", applicant.phone.as_deref())
        .field("Nama Domain/Sub-Domain", Some(domain))
        .field("Tanggal Aktif Domain/Subdomain", activation.as_deref());
    html.raw("<tr><th>(*)Masa Berlaku Co-location</th><td class=\"colon\">:</td><td>");
    match validity {
        Validity::Permanent => {
            html.raw(checkbox(true))
                .raw(" Permanen / ")
                .raw(checkbox(false))
                .raw(" Tidak permanen");
        }
        Validity::Temporary { until } => {
            html.raw(checkbox(false))
                .raw(" Permanen / ")
                .raw(checkbox(true))
                .raw(" Tidak permanen s.d. ")
                .text(&indonesian_date(until));
        }
    }
    html.raw("</td></tr>\n</table>\n");
    head_of_division_sign(html, data, "Telah menyetujui");
}

fn placement_fields(html: &mut Html, placement: Option<&Placement>) {
    html.raw("<table class=\"fields\">\n")
        .field("NOC", placement.map(|p| p.noc.as_str()))
        .field("Letak Server", placement.map(|p| p.location.as_str()))
        .field(
            "Nama Domain/Sub-Domain",
            placement.map(|p| p.domain.as_str()),
        )
        .raw("</table>\n");
}

fn colocation_fields(html: &mut Html, entry: &ColocationEntry, with_admin: bool) {
    html.raw("<table class=\"fields\">\n")
        .field("NOC", Some(&entry.noc))
        .field("Letak Server", Some(&entry.location))
        .field("S/N Server", Some(&entry.serial_number))
        .field("Type & Merk", Some(&entry.type_and_brand))
        .field("Nama Domain/Sub-Domain", Some(&entry.domain));
    if with_admin {
        html.raw("<tr><th>Host Admin</th><td class=\"colon\">:</td><td>User : ")
            .value(entry.host_admin_user.as_deref())
            .raw(" &nbsp; Password : ");
        if entry.password_on_file {
            html.raw("<em>(tersimpan tersegel di sistem; tidak dicetak)</em>");
        } else {
            html.raw("<span class=\"blank\">..............................</span>");
        }
        html.raw("</td></tr>\n")
            .field("IP Address", Some(&entry.ip_addresses))
            .field("Contact Person", entry.contact_person.as_deref());
    }
    html.raw("</table>\n");
}

#[allow(clippy::too_many_arguments)]
fn approval(
    html: &mut Html,
    data: &DocumentData,
    domain: &str,
    approved: bool,
    considerations: &str,
    data_center_name: &str,
    data_center: Option<&Placement>,
    colocation: &[ColocationEntry],
) {
    form_head(html, data);
    html.raw("<table class=\"fields\">\n")
        .field("Nama Domain/Sub-domain", Some(domain))
        .raw("</table>\n<p>Telah ( ")
        .raw(checkbox(approved))
        .raw(" menyetujui ")
        .raw(checkbox(!approved))
        .raw(" menolak ) permohonan co-location di ")
        .text(data_center_name)
        .raw("<br>dengan pertimbangan</p>\n<p class=\"body\">")
        .value(Some(considerations))
        .raw("</p>\n<p><em>( Diisi jika telah disetujui)</em></p>\n<h2>Data Center</h2>\n");
    placement_fields(html, if approved { data_center } else { None });
    html.raw("<h2>Colocation</h2>\n");
    if approved && !colocation.is_empty() {
        for entry in colocation {
            if colocation.len() > 1 {
                html.raw("<h3>Server: ").text(&entry.name).raw("</h3>\n");
            }
            colocation_fields(html, entry, true);
        }
    } else {
        colocation_fields(html, &ColocationEntry::default(), true);
    }
    head_of_division_sign(html, data, "Tertanda,");
}

fn party_fields(html: &mut Html, party: &Party) {
    html.raw("<table class=\"fields\">\n")
        .field("Nama Unit", Some(&party.unit))
        .field("Penanggung Jawab", party.person.as_deref())
        .field("NIP", party.nip.as_deref())
        .raw("</table>\n");
}

#[allow(clippy::too_many_arguments)]
fn handover(
    html: &mut Html,
    data: &DocumentData,
    day: &str,
    handing: &Party,
    receiving: &Party,
    servers: &[SpecRow],
    checked: bool,
    mismatches: &[CheckRow],
) {
    form_head(html, data);
    html.raw("<p>Pada hari ini, ")
        .text(day)
        .raw(" Tanggal, ")
        .text(&indonesian_date(data.date))
        .raw("</p>\n");
    party_fields(html, handing);
    html.raw("<p>Telah menyerahkan colocation sebagai berikut :</p>\n<table class=\"grid\">\n<thead>\n<tr><th rowspan=\"2\">No</th><th rowspan=\"2\">Nama Server</th><th colspan=\"5\">Spesifikasi Server</th></tr>\n<tr><th>Prosesor</th><th>RAM</th><th>Motherboard</th><th>Storage</th><th>PSU</th></tr>\n</thead>\n<tbody>\n");
    for (index, server) in servers.iter().enumerate() {
        html.raw("<tr><td>")
            .text(&(index + 1).to_string())
            .raw("</td><td>")
            .text(&server.name)
            .raw("</td><td>")
            .text(&server.processor)
            .raw("</td><td>")
            .text(&server.ram)
            .raw("</td><td>")
            .text(&server.motherboard)
            .raw("</td><td>")
            .text(&server.storage)
            .raw("</td><td>")
            .text(&server.psu)
            .raw("</td></tr>\n");
    }
    html.raw("</tbody>\n</table>\n<p>Kepada :</p>\n");
    party_fields(html, receiving);
    html.raw("<p>Demikian formulir serah terima ini dibuat dengan kondisi sebenarnya.</p>\n<div class=\"signs\">\n<div><p>Yang Menyerahkan,</p><div class=\"space\"></div><p>")
        .value(handing.person.as_deref())
        .raw("<br>NIP. ")
        .value(handing.nip.as_deref())
        .raw("</p></div>\n<div><p>Yang Menerima,</p><div class=\"space\"></div><p>")
        .value(receiving.person.as_deref())
        .raw("<br>NIP. ")
        .value(receiving.nip.as_deref())
        .raw("</p></div>\n</div>\n<p class=\"note\">Keterangan:<br>Harap untuk melampirkan hasil dari pengecekan kesesuaian spesifikasi server</p>\n<h2>Lampiran: Hasil Pengecekan Kesesuaian Spesifikasi Server</h2>\n");
    if !checked {
        html.raw("<p>Pengecekan kesesuaian spesifikasi server belum dilakukan.</p>\n");
    } else if mismatches.is_empty() {
        html.raw("<p>Spesifikasi server sesuai dengan yang dideklarasikan: tidak ditemukan ketidaksesuaian.</p>\n");
    } else {
        html.raw("<p>Ditemukan ")
            .text(&mismatches.len().to_string())
            .raw(" ketidaksesuaian antara spesifikasi yang dideklarasikan dan hasil pengecekan:</p>\n<table class=\"grid\">\n<thead><tr><th>No</th><th>Nama Server</th><th>Komponen</th><th>Dideklarasikan</th><th>Hasil Pengecekan</th></tr></thead>\n<tbody>\n");
        for (index, row) in mismatches.iter().enumerate() {
            html.raw("<tr><td>")
                .text(&(index + 1).to_string())
                .raw("</td><td>")
                .text(&row.server)
                .raw("</td><td>")
                .text(&row.field)
                .raw("</td><td>")
                .text(&row.declared)
                .raw("</td><td>")
                .text(&row.observed)
                .raw("</td></tr>\n");
        }
        html.raw("</tbody>\n</table>\n");
    }
}

fn withdrawal(
    html: &mut Html,
    data: &DocumentData,
    domain: &str,
    data_center: &Placement,
    colocation: &ColocationEntry,
    considerations: &str,
) {
    form_head(html, data);
    html.raw(
        "<p class=\"subtitle\">(Permohonan Penarikan Colocation)</p>\n<table class=\"fields\">\n",
    )
    .field("Nama Domain/Sub-domain", Some(domain))
    .raw(
        "</table>\n<p>Telah mengajukan permohonan penarikan colocation</p>\n<h2>Data Center</h2>\n",
    );
    placement_fields(html, Some(data_center));
    html.raw("<h2>Colocation</h2>\n");
    colocation_fields(html, colocation, false);
    html.raw("<p>dengan pertimbangan</p>\n<p class=\"body\">")
        .value(Some(considerations))
        .raw("</p>\n<p>Segala syarat dan ketentuan dalam pencabutan data center dan co-location telah disetujui oleh Kepala Bidang.</p>\n");
    head_of_division_sign(html, data, "Tertanda,");
}

#[allow(clippy::too_many_arguments)]
fn restore_execution(
    html: &mut Html,
    data: &DocumentData,
    agency: &Party,
    requested: &[(String, String)],
    plan: &[(String, String)],
    attempts: &[AttemptRow],
    (failed, failed_unlisted): (&[(String, String)], u64),
    times: &[TimeRow],
    result: &str,
) {
    form_head(html, data);
    html.raw("<h2>Permohonan</h2>\n<table class=\"fields\">\n")
        .field("Nama Unit", Some(&agency.unit));
    for (label, value) in requested {
        html.field(label, Some(value));
    }
    html.raw("</table>\n<h2>Rencana Restore</h2>\n");
    if plan.is_empty() {
        html.raw("<p>Rencana restore tidak dicatat dalam sistem.</p>\n");
    } else {
        html.raw("<table class=\"fields\">\n");
        for (label, value) in plan {
            html.field(label, Some(value));
        }
        html.raw("</table>\n");
    }
    html.raw("<h2>Pelaksanaan Restore</h2>\n");
    if attempts.is_empty() {
        html.raw("<p>Belum ada restore yang dijalankan.</p>\n");
    } else {
        html.raw("<table class=\"grid\">\n<thead><tr><th>No</th><th>Langkah</th><th>Snapshot</th><th>Sumber Data</th><th>Tujuan</th><th>Selesai</th><th>Verifikasi</th><th>Hasil</th></tr></thead>\n<tbody>\n");
        for (index, row) in attempts.iter().enumerate() {
            html.raw("<tr><td>")
                .text(&(index + 1).to_string())
                .raw("</td><td>")
                .text(&row.step)
                .raw("</td><td>")
                .text(&row.snapshot)
                .raw("</td><td>")
                .text(&row.source)
                .raw("</td><td>")
                .text(&row.target)
                .raw("</td><td>")
                .text(&row.finished)
                .raw("</td><td>")
                .text(&row.verification)
                .raw("</td><td>")
                .text(&row.outcome)
                .raw("</td></tr>\n");
        }
        html.raw("</tbody>\n</table>\n");
    }
    if !failed.is_empty() {
        html.raw("<h3>Berkas yang gagal diverifikasi</h3>\n<table class=\"grid\">\n<thead><tr><th>No</th><th>Berkas</th><th>Keterangan</th></tr></thead>\n<tbody>\n");
        for (index, (path, reason)) in failed.iter().enumerate() {
            html.raw("<tr><td>")
                .text(&(index + 1).to_string())
                .raw("</td><td>")
                .text(path)
                .raw("</td><td>")
                .text(reason)
                .raw("</td></tr>\n");
        }
        html.raw("</tbody>\n</table>\n");
        if failed_unlisted > 0 {
            html.raw("<p>dan ")
                .text(&failed_unlisted.to_string())
                .raw(" berkas lainnya (daftar lengkap pada catatan restore di sistem).</p>\n");
        }
    }
    if !times.is_empty() {
        html.raw("<h2>Waktu Pelaksanaan</h2>\n<table class=\"grid\">\n<thead><tr><th>Langkah</th><th>Lama</th><th>Standar Waktu</th><th>Keterangan</th></tr></thead>\n<tbody>\n");
        for row in times {
            html.raw("<tr><td>")
                .text(&row.step)
                .raw("</td><td>")
                .text(&row.took)
                .raw("</td><td>")
                .text(&row.standard)
                .raw("</td><td>")
                .raw(if row.met { "terpenuhi" } else { "terlampaui" })
                .raw("</td></tr>\n");
        }
        html.raw("</tbody>\n</table>\n");
    }
    html.raw("<h2>Hasil</h2>\n<p class=\"body\">Proses restore data ")
        .text(result)
        .raw(".</p>\n<p>Demikian formulir pelaksanaan restore data back up ini dibuat dengan sebenarnya.</p>\n<div class=\"signs\">\n<div><p>Yang Melaksanakan,<br>Petugas Jaringan</p><div class=\"space\"></div>\n");
    signatory_lines(html, &data.office, Role::Petugas);
    html.raw("</div>\n<div><p>Mengetahui,<br>Kepala Seksi Infrastruktur</p><div class=\"space\"></div>\n");
    signatory_lines(html, &data.office, Role::KasiInfras);
    html.raw("</div>\n</div>\n");
}

fn letter(
    html: &mut Html,
    data: &DocumentData,
    recipient: &Party,
    subject: &str,
    paragraphs: &[String],
    facts: &[(String, String)],
) {
    let office = &data.office;
    html.raw("<header class=\"kop\">\n<div class=\"gov\">")
        .text(&office.government)
        .raw("</div>\n<div class=\"dinas\">")
        .text(&office.agency)
        .raw("</div>\n<div class=\"addr\">")
        .text(&office.address);
    if let Some(contact) = &office.contact {
        html.raw("<br>").text(contact);
    }
    html.raw("</div>\n</header>\n<hr class=\"kop-line\">\n<p class=\"place-date\">")
        .text(&office.city)
        .raw(", ")
        .text(&indonesian_date(data.date))
        .raw("</p>\n<table class=\"letter-meta\">\n<tr><td>Nomor</td><td>:</td><td>")
        .text(&data.number)
        .raw("</td></tr>\n<tr><td>Sifat</td><td>:</td><td>Biasa</td></tr>\n<tr><td>Lampiran</td><td>:</td><td>-</td></tr>\n<tr><td>Hal</td><td>:</td><td><strong>")
        .text(subject)
        .raw("</strong></td></tr>\n</table>\n<p class=\"to\">Kepada Yth.<br>Pimpinan ")
        .text(&recipient.unit);
    if let Some(address) = &recipient.address {
        html.raw("<br>").text(address);
    }
    html.raw("<br>di Tempat</p>\n");
    for paragraph in paragraphs {
        html.raw("<p class=\"body\">").text(paragraph).raw("</p>\n");
    }
    if !facts.is_empty() {
        html.raw("<table class=\"fields\">\n");
        for (label, value) in facts {
            html.field(label, Some(value));
        }
        html.raw("</table>\n");
    }
    let signer = data.signatory_role;
    html.raw("<section class=\"sign\">\n<p>")
        .text(&signer_title(signer, office))
        .raw("</p>\n<div class=\"space\"></div>\n");
    signatory_lines(html, office, signer);
    html.raw("</section>\n");
    if data.kind == DocumentKind::MaintenanceReport {
        html.raw("<p class=\"note\">Catatan: laporan ini merupakan pencatatan detail informasi permintaan perawatan sebagaimana diwajibkan SOP.</p>\n");
    }
}

fn signer_title(role: Role, office: &OfficeIdentity) -> String {
    match role {
        Role::Kadin => format!("KEPALA {}", office.agency),
        Role::KabidTik => "KEPALA BIDANG TEKNOLOGI INFORMASI DAN KOMUNIKASI".to_owned(),
        Role::KasiInfras => "KEPALA SEKSI INFRASTRUKTUR".to_owned(),
        Role::Petugas => "PETUGAS JARINGAN".to_owned(),
        Role::Skpd | Role::Admin => role.indonesian().to_uppercase(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escaping_covers_the_five_characters() {
        assert_eq!(
            escape(r#"<script>alert("x&'y")</script>"#),
            "&lt;script&gt;alert(&quot;x&amp;&#39;y&quot;)&lt;/script&gt;"
        );
    }

    #[test]
    fn indonesian_dates() {
        let date = NaiveDate::from_ymd_opt(2019, 2, 19).unwrap();
        assert_eq!(indonesian_date(date), "19 Februari 2019");
        assert_eq!(indonesian_weekday(date), "Selasa");
    }
}
