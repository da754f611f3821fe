//! Official documents and their yearly number sequence.

use super::codec::{instant, parse_instant, to_u32};
use super::{CatalogError, DocumentId, DocumentRecord, NewDocument, RequestId, Tx};
use crate::workflow::DocumentKind;

#[derive(sqlx::FromRow)]
struct DocumentRow {
    id: i64,
    kind: String,
    request_id: Option<i64>,
    step: Option<i64>,
    year: i64,
    seq: i64,
    number: String,
    title: String,
    issued_at: String,
    issued_by: String,
    html: String,
    content_hash: String,
}

impl DocumentRow {
    fn decode(self) -> Result<DocumentRecord, CatalogError> {
        const TABLE: &str = "documents";
        Ok(DocumentRecord {
            id: DocumentId(self.id),
            kind: DocumentKind::from_code(&self.kind).ok_or_else(|| {
                CatalogError::corrupt(TABLE, format!("unknown document kind `{}`", self.kind))
            })?,
            request_id: self.request_id.map(RequestId),
            step: self
                .step
                .map(|step| to_u32(TABLE, "step", step))
                .transpose()?,
            year: i32::try_from(self.year)
                .map_err(|_| CatalogError::corrupt(TABLE, format!("year {}", self.year)))?,
            seq: self.seq,
            number: self.number,
            title: self.title,
            issued_at: parse_instant(TABLE, &self.issued_at)?,
            issued_by: self.issued_by,
            html: self.html,
            content_hash: self.content_hash,
        })
    }
}

// One statement allocates the next number: the upsert creates the year's counter at 1 or
// increments it, and on PostgreSQL the row lock it takes serialises concurrent issuers
// until commit, so two transactions can never draw the same number.
const NEXT_SEQ: &str = "INSERT INTO document_counters (year, last_seq) VALUES ($1, 1) \
     ON CONFLICT (year) DO UPDATE SET last_seq = document_counters.last_seq + 1 \
     RETURNING last_seq";
const INSERT_DOCUMENT: &str = "INSERT INTO documents \
     (kind, request_id, step, year, seq, number, title, issued_at, issued_by, html, content_hash) \
     VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11) RETURNING id";
const SELECT_DOCUMENT: &str = "SELECT id, kind, request_id, step, year, seq, number, title, \
     issued_at, issued_by, html, content_hash FROM documents WHERE id = $1";
const SELECT_DOCUMENT_BY_NUMBER: &str = "SELECT id, kind, request_id, step, year, seq, number, \
     title, issued_at, issued_by, html, content_hash FROM documents WHERE number = $1";
const SELECT_DOCUMENTS_FOR_REQUEST: &str = "SELECT id, kind, request_id, step, year, seq, number, \
     title, issued_at, issued_by, html, content_hash FROM documents WHERE request_id = $1 \
     ORDER BY id";

impl Tx {
    /// Draws the next document sequence number of `year` (1, 2, …). The number is only
    /// taken if the transaction commits; a rolled-back draw leaves no gap.
    ///
    /// # Errors
    /// From the driver.
    pub async fn next_document_seq(&mut self, year: i32) -> Result<i64, CatalogError> {
        Ok(with_conn!(self, |conn| {
            sqlx::query_scalar(NEXT_SEQ)
                .bind(i64::from(year))
                .fetch_one(&mut *conn)
                .await?
        }))
    }

    /// Stores an issued document.
    ///
    /// # Errors
    /// [`CatalogError::Conflict`] when the number or (year, seq) is already used.
    pub async fn insert_document(
        &mut self,
        document: &NewDocument,
    ) -> Result<DocumentRecord, CatalogError> {
        let id: i64 = with_conn!(self, |conn| {
            sqlx::query_scalar(INSERT_DOCUMENT)
                .bind(document.kind.code())
                .bind(document.request_id.map(|id| id.0))
                .bind(document.step.map(i64::from))
                .bind(i64::from(document.year))
                .bind(document.seq)
                .bind(&document.number)
                .bind(&document.title)
                .bind(instant(document.issued_at))
                .bind(&document.issued_by)
                .bind(&document.html)
                .bind(&document.content_hash)
                .fetch_one(&mut *conn)
                .await?
        });
        self.document(DocumentId(id)).await
    }

    /// The document with this id.
    ///
    /// # Errors
    /// [`CatalogError::NotFound`].
    pub async fn document(&mut self, id: DocumentId) -> Result<DocumentRecord, CatalogError> {
        let row: Option<DocumentRow> = with_conn!(self, |conn| {
            sqlx::query_as(SELECT_DOCUMENT)
                .bind(id.0)
                .fetch_optional(&mut *conn)
                .await?
        });
        row.ok_or_else(|| CatalogError::not_found("document", id))?
            .decode()
    }

    /// The document with this official number.
    ///
    /// # Errors
    /// [`CatalogError::NotFound`].
    pub async fn document_by_number(
        &mut self,
        number: &str,
    ) -> Result<DocumentRecord, CatalogError> {
        let row: Option<DocumentRow> = with_conn!(self, |conn| {
            sqlx::query_as(SELECT_DOCUMENT_BY_NUMBER)
                .bind(number)
                .fetch_optional(&mut *conn)
                .await?
        });
        row.ok_or_else(|| CatalogError::not_found("document", number))?
            .decode()
    }

    /// Every document of a request, in issue order.
    ///
    /// # Errors
    /// From the driver, or [`CatalogError::Corrupt`].
    pub async fn documents_for_request(
        &mut self,
        request: RequestId,
    ) -> Result<Vec<DocumentRecord>, CatalogError> {
        let rows: Vec<DocumentRow> = with_conn!(self, |conn| {
            sqlx::query_as(SELECT_DOCUMENTS_FOR_REQUEST)
                .bind(request.0)
                .fetch_all(&mut *conn)
                .await?
        });
        rows.into_iter().map(DocumentRow::decode).collect()
    }
}
