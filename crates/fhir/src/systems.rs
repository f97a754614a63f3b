//! Every code system, identifier system and canonical URL linkwork writes or reads, in
//! one place. Systems under linkwork's own canonical base (a deployment setting) are
//! functions of that base.

/// The canonical base of linkwork's own systems and profiles when a deployment does
/// not set one.
pub const DEFAULT_CANONICAL_BASE: &str = "https://linkwork.example/fhir";

/// NHS number (identifier system).
pub const NHS_NUMBER: &str = linkwork_domain::nhs_number::NHS_NUMBER_SYSTEM;
/// SNOMED CT.
pub const SNOMED_CT: &str = "http://snomed.info/sct";
/// HL7 Observation categories (`survey` for outcome measures).
pub const OBSERVATION_CATEGORY: &str = "http://terminology.hl7.org/CodeSystem/observation-category";
/// HL7 Task codes (`fulfill`).
pub const TASK_CODE: &str = "http://hl7.org/fhir/CodeSystem/task-code";
/// HL7 MeasureReport population codes.
pub const MEASURE_POPULATION: &str = "http://terminology.hl7.org/CodeSystem/measure-population";
/// HL7 measure improvement notation.
pub const MEASURE_IMPROVEMENT: &str =
    "http://terminology.hl7.org/CodeSystem/measure-improvement-notation";
/// UCUM units.
pub const UCUM: &str = "http://unitsofmeasure.org";
/// NHS BaRS HTTP error codes (OperationOutcome details).
pub const BARS_HTTP_ERROR_CODES: &str = "https://fhir.nhs.uk/Codesystem/http-error-codes";

/// linkwork's outcome instruments (UCLA-3, De Jong Gierveld, (S)WEMWBS, ONS4 items).
pub fn outcome_instrument(canonical_base: &str) -> String {
    format!("{canonical_base}/CodeSystem/outcome-instrument")
}
