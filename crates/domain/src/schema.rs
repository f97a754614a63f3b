//! The JSON Schemas of every event and message linkwork publishes, as committed under
//! `schemas/`. A test in this crate fails when the code and the committed files differ;
//! `make schemas` rewrites them.

use std::collections::BTreeMap;

use crate::call_log::CallLogDay;
use crate::{CallLogEvent, ReferralEvent};

/// File name (under `schemas/`) → schema, for every versioned event type.
pub fn catalogue() -> BTreeMap<String, serde_json::Value> {
    let mut files = BTreeMap::new();
    for (event_type, mut schema) in ReferralEvent::type_schemas()
        .into_iter()
        .chain(CallLogEvent::type_schemas())
        .chain([(CallLogDay::EVENT_TYPE, schemars::schema_for!(CallLogDay))])
    {
        schema.insert(
            "$id".into(),
            format!("https://linkwork.example/schemas/{event_type}.json").into(),
        );
        schema.insert("x-cloudevents-type".into(), event_type.into());
        files.insert(format!("{event_type}.json"), schema.to_value());
    }
    files
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::PathBuf;

    fn schemas_dir() -> PathBuf {
        // Read at run time: one target directory serves several checkouts.
        std::env::var_os("CARGO_MANIFEST_DIR")
            .map(PathBuf::from)
            .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")))
            .join("../..")
            .join("schemas")
    }

    /// Set `LINKWORK_BLESS_SCHEMAS=1` to rewrite the committed files from the code.
    #[test]
    fn committed_schemas_match_the_code() {
        let dir = schemas_dir();
        let expected = catalogue();
        if std::env::var_os("LINKWORK_BLESS_SCHEMAS").is_some() {
            std::fs::create_dir_all(&dir).unwrap();
            for entry in std::fs::read_dir(&dir).unwrap() {
                let path = entry.unwrap().path();
                if path.extension().is_some_and(|ext| ext == "json") {
                    std::fs::remove_file(path).unwrap();
                }
            }
            for (name, schema) in &expected {
                let text = serde_json::to_string_pretty(schema).unwrap() + "\n";
                std::fs::write(dir.join(name), text).unwrap();
            }
        }
        let mut committed = BTreeMap::new();
        for entry in std::fs::read_dir(&dir).expect("schemas/ exists") {
            let path = entry.unwrap().path();
            if path.extension().is_some_and(|ext| ext == "json") {
                let name = path.file_name().unwrap().to_string_lossy().into_owned();
                let text = std::fs::read_to_string(&path).unwrap();
                committed.insert(
                    name,
                    serde_json::from_str::<serde_json::Value>(&text).unwrap(),
                );
            }
        }
        let missing: Vec<_> = expected
            .keys()
            .filter(|name| !committed.contains_key(*name))
            .collect();
        let stale: Vec<_> = committed
            .keys()
            .filter(|name| !expected.contains_key(*name))
            .collect();
        assert!(
            missing.is_empty(),
            "schemas missing from schemas/ (run `make schemas`): {missing:?}"
        );
        assert!(
            stale.is_empty(),
            "schemas/ has files no event uses (run `make schemas`): {stale:?}"
        );
        for (name, schema) in &expected {
            assert_eq!(
                &committed[name], schema,
                "schemas/{name} differs from the code (run `make schemas` and review the diff)"
            );
        }
    }

    #[test]
    fn every_event_type_has_one_schema() {
        use crate::DomainEvent;
        let catalogue = catalogue();
        let types: Vec<&str> = ReferralEvent::TYPES
            .iter()
            .chain(CallLogEvent::TYPES)
            .chain(&[CallLogDay::EVENT_TYPE])
            .copied()
            .collect();
        assert_eq!(catalogue.len(), types.len());
        for event_type in types {
            assert!(
                catalogue.contains_key(&format!("{event_type}.json")),
                "{event_type}"
            );
            assert!(
                event_type.ends_with(".v1"),
                "{event_type} carries its version"
            );
        }
    }

    #[test]
    fn the_outcome_schema_states_the_instrument_ranges() {
        let schema = &catalogue()["linkwork.referral.outcome-recorded.v1.json"];
        let text = schema.to_string();
        assert!(text.contains("\"ucla-3\""), "instrument codes in schema");
        assert!(
            text.contains("\"maximum\":35"),
            "SWEMWBS maximum in schema: {text}"
        );
    }
}
