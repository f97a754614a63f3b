//! FHIR R4 for linkwork: parsing with precise locations, OperationOutcome, referral
//! validation and mapping, what providers send (Task, Observation, Communication,
//! Procedure, Consent) read into commands, BaRS messages and batch Bundles. One reader
//! of FHIR dates ([`parse_date_time`]) serves them all.
//!
//! Parsing uses `fhir-model` (R4B types, which match R4 for the resources linkwork
//! reads); business rules read the JSON so every refusal can name the exact element.

pub mod batch;
pub mod message;
pub mod outcome;
pub mod parse;
pub mod provider;
pub mod referral;
pub mod resolve;
pub mod systems;

pub use fhir_model;
pub use outcome::{Issue, IssueCode, OperationOutcome, Severity};
pub use referral::{parse_date_time, IntakeRules, Located, ValidatedReferral};
pub use resolve::Resolver;
