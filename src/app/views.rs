//! Reads on behalf of a caller, confined to what the caller may see: an account of an
//! agency (SKPD) sees only that agency's requests, servers and documents; the data
//! center's staff see every agency's. Asking for another agency's object is refused
//! (`Forbidden`), not hidden, so an officer who typed a wrong id learns why.

use super::{App, AppError, Caller, RequestView};
use crate::catalog::{
    Agency, AgencyId, DocumentRecord, Mismatch, RequestFilter, RequestId, RequestSummary, Server,
    ServerId,
};

/// Most rows one listing returns.
pub const MAX_PAGE: u32 = 1000;

impl Caller {
    /// Refuses when the caller is confined to another agency than `agency`.
    ///
    /// # Errors
    /// [`AppError::Forbidden`].
    pub fn check_agency(&self, agency: AgencyId, what: &str) -> Result<(), AppError> {
        match self.confined_to() {
            Some(own) if own != agency => Err(AppError::forbidden(format!(
                "{what} belongs to another agency; `{}` acts only for agency {own}",
                self.account.username
            ))),
            _ => Ok(()),
        }
    }
}

impl App {
    /// A request, if the caller may see it.
    ///
    /// # Errors
    /// [`AppError::NotFound`]; [`AppError::Forbidden`] for another agency's request.
    pub async fn request_for(
        &self,
        caller: &Caller,
        id: RequestId,
    ) -> Result<RequestView, AppError> {
        let view = self.request(id).await?;
        caller.check_agency(view.agency_id, &format!("request {id}"))?;
        Ok(view)
    }

    /// Requests matching `filter` that the caller may see.
    ///
    /// # Errors
    /// [`AppError::Forbidden`] when the filter names another agency;
    /// [`AppError::InvalidInput`] for a page larger than [`MAX_PAGE`].
    pub async fn requests_for(
        &self,
        caller: &Caller,
        mut filter: RequestFilter,
        after: Option<RequestId>,
        limit: u32,
    ) -> Result<Vec<RequestSummary>, AppError> {
        if limit > MAX_PAGE {
            return Err(AppError::invalid(format!(
                "at most {MAX_PAGE} requests per page, not {limit}"
            )));
        }
        if let Some(agency) = filter.agency_id {
            caller.check_agency(agency, &format!("agency {agency}"))?;
        }
        if let Some(own) = caller.confined_to() {
            filter.agency_id = Some(own);
        }
        self.list_requests(&filter, after, limit).await
    }

    /// The agencies the caller may see.
    ///
    /// # Errors
    /// Catalog errors.
    pub async fn agencies_for(&self, caller: &Caller) -> Result<Vec<Agency>, AppError> {
        let mut agencies = self.agencies().await?;
        if let Some(own) = caller.confined_to() {
            agencies.retain(|agency| agency.id == own);
        }
        Ok(agencies)
    }

    /// The servers of `agency` (the caller's own when `None`).
    ///
    /// # Errors
    /// [`AppError::InvalidInput`] when staff name no agency; [`AppError::Forbidden`].
    pub async fn servers_for(
        &self,
        caller: &Caller,
        agency: Option<AgencyId>,
    ) -> Result<Vec<Server>, AppError> {
        let agency = agency.or(caller.confined_to()).ok_or_else(|| {
            AppError::invalid("name the agency whose servers to list (--agency ID)")
        })?;
        caller.check_agency(agency, &format!("agency {agency}"))?;
        self.agency(agency).await?;
        self.servers_of(agency).await
    }

    /// A server with its specification mismatches, if the caller may see it.
    ///
    /// # Errors
    /// [`AppError::NotFound`]; [`AppError::Forbidden`].
    pub async fn server_for(
        &self,
        caller: &Caller,
        id: ServerId,
    ) -> Result<(Server, Vec<Mismatch>), AppError> {
        let server = self.server(id).await?;
        caller.check_agency(server.agency_id, &format!("server {id}"))?;
        let mismatches = self.server_mismatches(id).await?;
        Ok((server, mismatches))
    }

    /// The documents of a request the caller may see.
    ///
    /// # Errors
    /// [`AppError::NotFound`]; [`AppError::Forbidden`].
    pub async fn documents_for(
        &self,
        caller: &Caller,
        request: RequestId,
    ) -> Result<Vec<DocumentRecord>, AppError> {
        self.request_for(caller, request).await?;
        self.documents_of(request).await
    }

    /// A document, if the caller may see the request it belongs to. Documents without a
    /// request are the data center's own and visible to staff only.
    ///
    /// # Errors
    /// [`AppError::NotFound`]; [`AppError::Forbidden`].
    pub async fn document_for(
        &self,
        caller: &Caller,
        number: &str,
    ) -> Result<DocumentRecord, AppError> {
        let document = self.document(number).await?;
        match document.request_id {
            Some(request) => {
                self.request_for(caller, request).await?;
            }
            None if caller.confined_to().is_some() => {
                return Err(AppError::forbidden(format!(
                    "document {number} is an internal document of the data center"
                )));
            }
            None => {}
        }
        Ok(document)
    }
}
