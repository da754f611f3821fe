//! The loaded procedure definitions, keyed by procedure code and revision, so that a
//! revised SOP can be loaded while requests started under an earlier revision finish
//! under it.

use std::collections::BTreeMap;

use super::{DefinitionError, ProcedureCode, ProcedureDefinition, RequestState, Revision};

/// A definition cannot be added to, or found in, the registry.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RegistryError {
    /// The definition itself is invalid.
    #[error(transparent)]
    Definition(#[from] DefinitionError),
    /// Another file already defines this procedure at this revision.
    #[error("{file}: {code} revision {revision} is already defined by {existing}")]
    Duplicate {
        /// The file being added.
        file: String,
        /// The procedure.
        code: ProcedureCode,
        /// The revision.
        revision: u32,
        /// The file that defined it first.
        existing: String,
    },
    /// No definition for this procedure and revision is loaded.
    #[error("no definition of {code} revision {revision} is loaded")]
    NotLoaded {
        /// The procedure.
        code: ProcedureCode,
        /// The revision.
        revision: u32,
    },
}

/// Every loaded definition, by (procedure code, revision).
#[derive(Debug, Clone, Default)]
pub struct Registry {
    definitions: BTreeMap<(ProcedureCode, Revision), ProcedureDefinition>,
}

impl Registry {
    /// An empty registry.
    pub fn new() -> Self {
        Registry::default()
    }

    /// Builds a registry from `(file name, file text)` pairs; the caller reads the files.
    ///
    /// # Errors
    /// The first [`RegistryError`]: an invalid definition or a duplicate key.
    pub fn from_sources<N, T>(
        sources: impl IntoIterator<Item = (N, T)>,
    ) -> Result<Self, RegistryError>
    where
        N: AsRef<str>,
        T: AsRef<str>,
    {
        let mut registry = Registry::new();
        for (name, text) in sources {
            registry.load(name.as_ref(), text.as_ref())?;
        }
        Ok(registry)
    }

    /// Parses, validates and adds one definition.
    ///
    /// # Errors
    /// [`RegistryError::Definition`] for an invalid file, [`RegistryError::Duplicate`] when
    /// its procedure and revision are already loaded.
    pub fn load(
        &mut self,
        source: &str,
        text: &str,
    ) -> Result<&ProcedureDefinition, RegistryError> {
        let definition = ProcedureDefinition::from_toml(source, text)?;
        self.insert(definition)
    }

    /// Adds a definition.
    ///
    /// # Errors
    /// [`RegistryError::Duplicate`] when its procedure and revision are already loaded;
    /// a loaded revision is never replaced, since requests in flight depend on it.
    pub fn insert(
        &mut self,
        definition: ProcedureDefinition,
    ) -> Result<&ProcedureDefinition, RegistryError> {
        let key = definition.key();
        if let Some(existing) = self.definitions.get(&key) {
            return Err(RegistryError::Duplicate {
                file: definition.source().to_owned(),
                code: key.0,
                revision: key.1.0,
                existing: existing.source().to_owned(),
            });
        }
        Ok(self.definitions.entry(key).or_insert(definition))
    }

    /// The definition of this procedure at this revision.
    pub fn get(&self, code: &ProcedureCode, revision: Revision) -> Option<&ProcedureDefinition> {
        self.definitions.get(&(code.clone(), revision))
    }

    /// The highest revision of a procedure: the one new requests start under.
    pub fn latest(&self, code: &ProcedureCode) -> Option<&ProcedureDefinition> {
        self.definitions
            .range((code.clone(), Revision(0))..=(code.clone(), Revision(u32::MAX)))
            .next_back()
            .map(|(_, definition)| definition)
    }

    /// The definition a request runs under (the revision it was started with).
    ///
    /// # Errors
    /// [`RegistryError::NotLoaded`] when that revision is not loaded.
    pub fn for_request(&self, state: &RequestState) -> Result<&ProcedureDefinition, RegistryError> {
        self.get(&state.procedure, state.revision)
            .ok_or_else(|| RegistryError::NotLoaded {
                code: state.procedure.clone(),
                revision: state.revision.0,
            })
    }

    /// Every loaded definition, by code then revision.
    pub fn iter(&self) -> impl Iterator<Item = &ProcedureDefinition> {
        self.definitions.values()
    }

    /// How many definitions are loaded.
    pub fn len(&self) -> usize {
        self.definitions.len()
    }

    /// Whether none is loaded.
    pub fn is_empty(&self) -> bool {
        self.definitions.is_empty()
    }
}
