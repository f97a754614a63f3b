//! A FHIR resource carried inside an event as the JSON text it arrived as.
//!
//! A `ReferralReceived` carries the ServiceRequest and the Patient so that the router
//! can hand them to a provider and the projector can store them. Neither looks inside
//! beyond a few top-level fields, so the event keeps them as text: decoding copies the
//! text instead of building a tree of maps (the router and the projector read every
//! receipt, and replay reads years of them), and writing them out again is a copy.

use std::borrow::Cow;
use std::fmt;

use schemars::{JsonSchema, Schema, SchemaGenerator};
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use serde_json::value::RawValue;
use serde_json::Value;

/// The JSON text of one resource (any JSON value, as read; an object when well formed).
#[derive(Clone)]
pub struct ResourceJson(Box<RawValue>);

impl ResourceJson {
    /// The text of `value`.
    pub fn from_value(value: &Value) -> Self {
        // A `Value` always serializes, and always to valid JSON.
        Self(
            serde_json::value::to_raw_value(value).unwrap_or_else(|error| {
                unreachable!("a serde_json::Value did not serialize: {error}")
            }),
        )
    }

    /// Takes JSON text as it is; refuses text that is not one JSON value.
    pub fn from_text(text: String) -> Result<Self, serde_json::Error> {
        RawValue::from_string(text).map(Self)
    }

    /// The JSON text.
    pub fn text(&self) -> &str {
        self.0.get()
    }

    /// The resource as a tree, for callers that look deep inside it.
    pub fn to_value(&self) -> Value {
        serde_json::from_str(self.text()).unwrap_or(Value::Null)
    }

    /// The top-level members, in the order written, each value left as text. `None`
    /// when the resource is not a JSON object.
    pub fn members(&self) -> Option<Vec<(Cow<'_, str>, &RawValue)>> {
        serde_json::from_str::<Members<'_>>(self.text())
            .ok()
            .map(|members| members.0)
    }
}

impl ResourceJson {
    /// `value` (an object) with the members `replace` names set to the values given:
    /// each in its place when `value` has it, else added at the end. Written straight
    /// from `value`, which is neither cloned nor changed.
    pub fn from_value_with(value: &Value, replace: &[(&str, &Value)]) -> Self {
        let Value::Object(members) = value else {
            return Self::from_value(value);
        };
        Self::written(&Replaced {
            members: members.iter().map(|(name, value)| (name.as_str(), value)),
            replace,
        })
    }

    /// This resource's text with the members `replace` names set (see
    /// [`ResourceJson::from_value_with`]); as it is when it is not an object.
    pub fn with(&self, replace: &[(&str, &Value)]) -> Self {
        self.edited(replace, &[])
    }

    /// This resource's text with the members `replace` names set and those `remove`
    /// names left out; as it is when it is not an object.
    pub fn edited(&self, replace: &[(&str, &Value)], remove: &[&str]) -> Self {
        let Some(members) = self.members() else {
            return self.clone();
        };
        Self::written(&Replaced {
            members: members
                .iter()
                .map(|(name, text)| (name.as_ref(), *text))
                .filter(|(name, _)| !remove.contains(name)),
            replace,
        })
    }

    fn written(value: &impl Serialize) -> Self {
        // Members that are JSON already, names that are strings: this cannot fail.
        Self(
            serde_json::value::to_raw_value(value).unwrap_or_else(|error| {
                unreachable!("a resource's members did not serialize: {error}")
            }),
        )
    }
}

/// An object's members written in order, those in `replace` swapped for theirs.
struct Replaced<'a, I> {
    members: I,
    replace: &'a [(&'a str, &'a Value)],
}

impl<'a, I, V> Serialize for Replaced<'a, I>
where
    I: Iterator<Item = (&'a str, V)> + Clone,
    V: Serialize,
{
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeMap;
        let mut map = serializer.serialize_map(None)?;
        let mut written = vec![false; self.replace.len()];
        for (name, value) in self.members.clone() {
            match self
                .replace
                .iter()
                .position(|(replaced, _)| *replaced == name)
            {
                Some(index) => {
                    map.serialize_entry(name, self.replace[index].1)?;
                    written[index] = true;
                }
                None => map.serialize_entry(name, &value)?,
            }
        }
        for ((name, value), done) in self.replace.iter().zip(written) {
            if !done {
                map.serialize_entry(name, value)?;
            }
        }
        map.end()
    }
}

impl From<Value> for ResourceJson {
    fn from(value: Value) -> Self {
        Self::from_value(&value)
    }
}

impl fmt::Debug for ResourceJson {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Identifiable data: never printed, only its size.
        write!(formatter, "ResourceJson({} bytes)", self.text().len())
    }
}

/// Equal when the text is equal (two spellings of the same JSON are not).
impl PartialEq for ResourceJson {
    fn eq(&self, other: &Self) -> bool {
        self.text() == other.text()
    }
}

impl Eq for ResourceJson {}

impl Serialize for ResourceJson {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        self.0.serialize(serializer)
    }
}

impl<'de> Deserialize<'de> for ResourceJson {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        Box::<RawValue>::deserialize(deserializer).map(Self)
    }
}

/// The schema is that of any JSON value, as when the field was a `serde_json::Value`.
impl JsonSchema for ResourceJson {
    fn schema_name() -> Cow<'static, str> {
        Value::schema_name()
    }

    fn schema_id() -> Cow<'static, str> {
        Value::schema_id()
    }

    fn json_schema(generator: &mut SchemaGenerator) -> Schema {
        Value::json_schema(generator)
    }

    fn inline_schema() -> bool {
        Value::inline_schema()
    }
}

/// An object's members in order, values unparsed; keys borrowed unless escaped.
struct Members<'a>(Vec<(Cow<'a, str>, &'a RawValue)>);

impl<'de: 'a, 'a> Deserialize<'de> for Members<'a> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Visit;
        impl<'de> serde::de::Visitor<'de> for Visit {
            type Value = Members<'de>;

            fn expecting(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
                formatter.write_str("a JSON object")
            }

            fn visit_map<A: serde::de::MapAccess<'de>>(
                self,
                mut map: A,
            ) -> Result<Self::Value, A::Error> {
                let mut members = Vec::with_capacity(map.size_hint().unwrap_or(16));
                while let Some(Key(key)) = map.next_key()? {
                    members.push((key, map.next_value::<&'de RawValue>()?));
                }
                Ok(Members(members))
            }
        }
        deserializer.deserialize_map(Visit)
    }
}

/// A member name: borrowed from the text when it holds no escapes.
struct Key<'a>(Cow<'a, str>);

impl<'de: 'a, 'a> Deserialize<'de> for Key<'a> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Visit;
        impl<'de> serde::de::Visitor<'de> for Visit {
            type Value = Key<'de>;

            fn expecting(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
                formatter.write_str("a member name")
            }

            fn visit_borrowed_str<E: serde::de::Error>(
                self,
                text: &'de str,
            ) -> Result<Key<'de>, E> {
                Ok(Key(Cow::Borrowed(text)))
            }

            fn visit_str<E: serde::de::Error>(self, text: &str) -> Result<Key<'de>, E> {
                Ok(Key(Cow::Owned(text.to_owned())))
            }
        }
        deserializer.deserialize_str(Visit)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn a_resource_travels_as_the_text_it_was_read_as() {
        let body =
            r#"{"resource":{"resourceType":"Patient","id":"p1","name":[{"family":"Quill"}]}}"#;
        #[derive(Deserialize, Serialize)]
        struct Carrier {
            resource: ResourceJson,
        }
        let carried: Carrier = serde_json::from_str(body).unwrap();
        assert_eq!(
            carried.resource.text(),
            r#"{"resourceType":"Patient","id":"p1","name":[{"family":"Quill"}]}"#
        );
        assert_eq!(serde_json::to_string(&carried).unwrap(), body);
        assert_eq!(carried.resource.to_value()["name"][0]["family"], "Quill");
    }

    #[test]
    fn members_come_in_written_order_with_escaped_names_read_too() {
        let resource =
            ResourceJson::from_text(r#"{"status":"active","na\u006De":[1, 2],"id":"x"}"#.into())
                .unwrap();
        let members = resource.members().unwrap();
        let names: Vec<&str> = members.iter().map(|(name, _)| name.as_ref()).collect();
        assert_eq!(names, ["status", "name", "id"]);
        assert_eq!(members[1].1.get(), "[1, 2]");
        assert!(matches!(members[0].0, Cow::Borrowed(_)));
    }

    #[test]
    fn a_resource_that_is_not_an_object_has_no_members_and_text_that_is_not_json_is_refused() {
        assert!(ResourceJson::from_value(&json!([1])).members().is_none());
        assert!(ResourceJson::from_text("{\"a\":".into()).is_err());
    }

    #[test]
    fn members_are_replaced_in_place_added_at_the_end_or_left_out_and_the_source_is_left_as_it_was()
    {
        let value = json!({"resourceType": "ServiceRequest", "id": "theirs", "status": "active"});
        let id = json!("ours");
        let meta = json!({"versionId": "1"});
        let written = ResourceJson::from_value_with(&value, &[("id", &id), ("meta", &meta)]);
        assert_eq!(
            written.to_value(),
            json!({"resourceType": "ServiceRequest", "id": "ours", "status": "active", "meta": {"versionId": "1"}})
        );
        assert_eq!(value["id"], "theirs");
        let again = written.with(&[("meta", &json!({"versionId": "2"}))]);
        assert_eq!(again.to_value()["meta"]["versionId"], "2");
        assert_eq!(again.to_value()["id"], "ours");
        let trimmed = again.edited(&[], &["status", "meta"]);
        assert_eq!(
            trimmed.to_value(),
            json!({"resourceType": "ServiceRequest", "id": "ours"})
        );
        let not_an_object = ResourceJson::from_value(&json!([1]));
        assert_eq!(not_an_object.with(&[("id", &id)]).text(), "[1]");
    }

    #[test]
    fn debug_output_shows_the_size_and_never_the_content() {
        let resource = ResourceJson::from_value(&json!({"name": "Quill"}));
        let shown = format!("{resource:?}");
        assert!(!shown.contains("Quill"), "{shown}");
        assert_eq!(shown, "ResourceJson(16 bytes)");
    }
}
