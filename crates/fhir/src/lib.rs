//! FHIR R4 for linkwork: parsing with precise locations, OperationOutcome, referral
//! validation and mapping, BaRS messages and batch Bundles.
//!
//! Parsing uses `fhir-model` (R4B types, which match R4 for the resources linkwork
//! reads); business rules read the JSON so every refusal can name the exact element.

pub mod batch;
pub mod message;
pub mod outcome;
pub mod parse;
pub mod referral;
pub mod resolve;

pub use fhir_model;
pub use outcome::{Issue, IssueCode, OperationOutcome, Severity};
pub use referral::{IntakeRules, Located, ValidatedReferral};
pub use resolve::Resolver;
