//! Resolving references inside what was sent: contained resources (`#id`) and the
//! entries of a Bundle (by `urn:uuid:` fullUrl, or `Type/id`). Nothing is fetched
//! from elsewhere.

use serde_json::Value;

/// The resources a reference may point to, with their FHIRPath.
#[derive(Debug, Default, Clone)]
pub struct Resolver<'a> {
    targets: Vec<(String, &'a Value, String)>,
}

impl<'a> Resolver<'a> {
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds the contained resources of `resource` (at `path`), referenced as `#id`.
    pub fn with_contained(mut self, resource: &'a Value, path: &str) -> Self {
        if let Some(contained) = resource.get("contained").and_then(Value::as_array) {
            for (index, target) in contained.iter().enumerate() {
                if let Some(id) = target.get("id").and_then(Value::as_str) {
                    self.targets.push((
                        format!("#{id}"),
                        target,
                        format!("{path}.contained[{index}]"),
                    ));
                }
            }
        }
        self
    }

    /// Adds the entries of a Bundle (at `path`), by fullUrl and by `Type/id`.
    pub fn with_bundle(mut self, bundle: &'a Value, path: &str) -> Self {
        if let Some(entries) = bundle.get("entry").and_then(Value::as_array) {
            for (index, entry) in entries.iter().enumerate() {
                let Some(resource) = entry.get("resource") else {
                    continue;
                };
                let resource_path = format!("{path}.entry[{index}].resource");
                if let Some(full_url) = entry.get("fullUrl").and_then(Value::as_str) {
                    self.targets
                        .push((full_url.to_owned(), resource, resource_path.clone()));
                }
                let resource_type = resource.get("resourceType").and_then(Value::as_str);
                let id = resource.get("id").and_then(Value::as_str);
                if let (Some(resource_type), Some(id)) = (resource_type, id) {
                    self.targets
                        .push((format!("{resource_type}/{id}"), resource, resource_path));
                }
            }
        }
        self
    }

    /// The resource `reference` points to, and where it is.
    pub fn resolve(&self, reference: &str) -> Option<(&'a Value, String)> {
        self.targets
            .iter()
            .find(|(key, _, _)| key == reference)
            .map(|(_, target, path)| (*target, path.clone()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn contained_and_bundled_resources_resolve_with_their_paths() {
        let request = json!({"resourceType": "ServiceRequest", "contained": [{"resourceType": "Patient", "id": "p1"}]});
        let bundle = json!({"resourceType": "Bundle", "entry": [
            {"fullUrl": "urn:uuid:aaa", "resource": {"resourceType": "Patient", "id": "x"}},
            {"fullUrl": "urn:uuid:bbb", "resource": request}
        ]});
        let resolver = Resolver::new()
            .with_bundle(&bundle, "Bundle")
            .with_contained(&request, "Bundle.entry[1].resource");
        assert_eq!(
            resolver.resolve("#p1").unwrap().1,
            "Bundle.entry[1].resource.contained[0]"
        );
        assert_eq!(
            resolver.resolve("urn:uuid:aaa").unwrap().1,
            "Bundle.entry[0].resource"
        );
        assert_eq!(
            resolver.resolve("Patient/x").unwrap().1,
            "Bundle.entry[0].resource"
        );
        assert!(resolver.resolve("urn:uuid:zzz").is_none());
        assert!(
            resolver.resolve("Patient/example").is_none(),
            "nothing is fetched from elsewhere"
        );
    }
}
