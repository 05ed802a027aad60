//! `Lenient<K>`: an object that still decodes when its content does not, keeping its
//! metadata so that the agent can name it, report on it and write its status.
//!
//! kube's `DeserializeGuard<K>` does the same by first decoding into a `serde_value` tree and
//! then decoding a clone of that tree; on the BindRequest watch that was a sixth of the
//! agent's CPU per bind (profile of `bindlet bench --dra-claims 1`). `Lenient` keeps the
//! object's JSON text instead (one copy) and decodes it once; the metadata is decoded from the
//! same text only when the object is invalid.
//!
//! The text is taken with `serde_json`'s `RawValue`, so `Lenient` decodes only where
//! `serde_json` itself drives the decoding: kube decodes every response body and every watch
//! line with it, and kube-apiserver writes a watch event's `type` before its `object` (the
//! field order of Go's `metav1.WatchEvent`), so the object is never buffered by serde first.

use std::borrow::Cow;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube_core::error_boundary::InvalidObject;
use kube_core::{PartialObjectMeta, Resource};
use serde::de::{DeserializeOwned, Error as _};
use serde::{Deserialize, Deserializer};
use serde_json::value::RawValue;

/// The decoded object, or why it could not be decoded together with its metadata.
#[derive(Debug, Clone)]
pub struct Lenient<K>(pub Result<K, InvalidObject>);

impl<'de, K> Deserialize<'de> for Lenient<K>
where
    K: DeserializeOwned + Resource,
{
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let raw = Box::<RawValue>::deserialize(deserializer)?;
        Ok(Lenient(Self::decode(raw.get()).map_err(D::Error::custom)?))
    }
}

impl<K: DeserializeOwned + Resource> Lenient<K> {
    /// `Ok(Ok(object))`, `Ok(Err(invalid))` when only the metadata decodes, `Err` when not
    /// even that does (then the text is not an object at all).
    fn decode(text: &str) -> Result<Result<K, InvalidObject>, serde_json::Error> {
        match serde_json::from_str::<K>(text) {
            Ok(k) => Ok(Ok(k)),
            Err(error) => {
                let PartialObjectMeta { metadata, .. } =
                    serde_json::from_str::<PartialObjectMeta<K>>(text)?;
                Ok(Err(InvalidObject {
                    error: error.to_string(),
                    metadata,
                }))
            }
        }
    }
}

impl<K: Resource> Resource for Lenient<K> {
    type DynamicType = K::DynamicType;
    type Scope = K::Scope;

    fn kind(dt: &Self::DynamicType) -> Cow<'_, str> {
        K::kind(dt)
    }

    fn group(dt: &Self::DynamicType) -> Cow<'_, str> {
        K::group(dt)
    }

    fn version(dt: &Self::DynamicType) -> Cow<'_, str> {
        K::version(dt)
    }

    fn plural(dt: &Self::DynamicType) -> Cow<'_, str> {
        K::plural(dt)
    }

    fn meta(&self) -> &ObjectMeta {
        self.0.as_ref().map_or_else(|e| &e.metadata, K::meta)
    }

    fn meta_mut(&mut self) -> &mut ObjectMeta {
        self.0
            .as_mut()
            .map_or_else(|e| &mut e.metadata, K::meta_mut)
    }
}

#[cfg(test)]
mod tests {
    use kube_core::watch::WatchEvent;
    use kube_core::{ObjectList, Resource};

    use super::Lenient;
    use crate::BindRequest;

    fn valid(name: &str) -> String {
        format!(
            r#"{{"apiVersion":"scheduling.run.ai/v1alpha2","kind":"BindRequest","metadata":{{"name":"{name}","namespace":"ns","resourceVersion":"7","labels":{{"selected-node":"n1"}}}},"spec":{{"podName":"{name}","selectedNode":"n1","receivedResourceType":"Regular"}}}}"#
        )
    }

    const INVALID: &str = r#"{"apiVersion":"scheduling.run.ai/v1alpha2","kind":"BindRequest","metadata":{"name":"bad","namespace":"ns","resourceVersion":"8"},"spec":{"podName":42}}"#;

    #[test]
    fn watch_lines_in_the_apiservers_field_order_decode_valid_and_invalid_objects() {
        let line = format!(r#"{{"type":"ADDED","object":{}}}"#, valid("p1"));
        let WatchEvent::Added(obj) =
            serde_json::from_str::<WatchEvent<Lenient<BindRequest>>>(&line).unwrap()
        else {
            panic!("not ADDED")
        };
        let br = obj.0.as_ref().unwrap();
        assert_eq!(br.spec.pod_name.as_deref(), Some("p1"));
        assert_eq!(obj.meta().resource_version.as_deref(), Some("7"));

        let line = format!(r#"{{"type":"MODIFIED","object":{INVALID}}}"#);
        let WatchEvent::Modified(obj) =
            serde_json::from_str::<WatchEvent<Lenient<BindRequest>>>(&line).unwrap()
        else {
            panic!("not MODIFIED")
        };
        let err = obj.0.as_ref().unwrap_err();
        assert!(err.error.contains("invalid type"), "{}", err.error);
        assert_eq!(obj.meta().name.as_deref(), Some("bad"));
        assert_eq!(obj.meta().resource_version.as_deref(), Some("8"));
    }

    #[test]
    fn a_list_keeps_the_valid_items_and_the_metadata_of_the_invalid_ones() {
        let body = format!(
            r#"{{"apiVersion":"v1","kind":"List","metadata":{{"resourceVersion":"9"}},"items":[{},{INVALID},{}]}}"#,
            valid("a"),
            valid("b")
        );
        let list: ObjectList<Lenient<BindRequest>> = serde_json::from_str(&body).unwrap();
        let names: Vec<(String, bool)> = list
            .items
            .iter()
            .map(|o| (o.meta().name.clone().unwrap_or_default(), o.0.is_ok()))
            .collect();
        assert_eq!(
            names,
            [
                ("a".into(), true),
                ("bad".into(), false),
                ("b".into(), true)
            ]
        );
    }

    #[test]
    fn text_that_is_not_an_object_is_an_error_not_a_panic() {
        let line = r#"{"type":"ADDED","object":"just a string"}"#;
        assert!(serde_json::from_str::<WatchEvent<Lenient<BindRequest>>>(line).is_err());
    }
}
