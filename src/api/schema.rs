//! Schema pieces that schemars cannot derive the way KAI's CRD spells them, and the final
//! touches that turn kube's derived CRD into bindlet's published one.

#[cfg(feature = "kube")]
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::{
    CustomResourceDefinition, JSONSchemaProps, JSONSchemaPropsOrArray, JSONSchemaPropsOrBool,
};
use schemars::{Schema, SchemaGenerator, json_schema};

/// The pattern Kubernetes puts on every `Quantity`.
pub const QUANTITY_PATTERN: &str = r"^(\+|-)?(([0-9]+(\.[0-9]*)?)|(\.[0-9]+))(([KMGTPE]i)|[numkMGTPE]|([eE](\+|-)?(([0-9]+(\.[0-9]*)?)|(\.[0-9]+))))?$";

/// Removes `format`: KAI declares `receivedGPU.count` as a bare integer, and an added
/// `format` would make bindlet's schema stricter than KAI's.
pub fn drop_format(schema: &mut Schema) {
    schema.remove("format");
}

/// An object whose content the API server must keep verbatim.
pub fn preserved_object(_: &mut SchemaGenerator) -> Schema {
    json_schema!({ "type": "object", "x-kubernetes-preserve-unknown-fields": true })
}

/// A Kubernetes quantity: integer or quantity string.
pub fn quantity() -> Schema {
    json_schema!({
        "x-kubernetes-int-or-string": true,
        "anyOf": [{ "type": "integer" }, { "type": "string" }],
        "pattern": QUANTITY_PATTERN,
    })
}

/// The CRD touches, with the derive (bindlet-api's `kube` feature).
#[cfg(feature = "kube")]
mod finishing {
    use super::*;

    /// Applies what the derive cannot express to the CRD it generated.
    pub(crate) fn finish(crd: &mut CustomResourceDefinition, list_kind: &str) {
        crd.spec.names.list_kind = Some(list_kind.to_owned());
        for version in &mut crd.spec.versions {
            let Some(root) = version
                .schema
                .as_mut()
                .and_then(|s| s.open_api_v3_schema.as_mut())
            else {
                continue;
            };
            walk(root);
            // schemars names the root after the Rust type; KAI has no title.
            root.title = None;
            // KAI does not require `spec`; requiring it would reject objects KAI's CRD accepts.
            root.required = None;
            // Declared like KAI (and controller-gen) do, so both CRDs describe the same paths.
            let props = root.properties.get_or_insert_with(Default::default);
            props.insert("apiVersion".into(), string_prop(API_VERSION_DOC));
            props.insert("kind".into(), string_prop(KIND_DOC));
            props.insert(
                "metadata".into(),
                JSONSchemaProps {
                    type_: Some("object".into()),
                    ..Default::default()
                },
            );
        }
    }

    const API_VERSION_DOC: &str =
        "APIVersion defines the versioned schema of this representation of an object.";
    const KIND_DOC: &str =
        "Kind is a string value representing the REST resource this object represents.";

    fn string_prop(description: &str) -> JSONSchemaProps {
        JSONSchemaProps {
            description: Some(description.into()),
            type_: Some("string".into()),
            ..Default::default()
        }
    }

    /// Recursive clean-up of every schema node.
    fn walk(node: &mut JSONSchemaProps) {
        // Optional fields are omitted, never null; `nullable` would let the server store nulls
        // that KAI's CRD rejects.
        node.nullable = None;
        if node.x_kubernetes_int_or_string == Some(true) {
            // The derive's structural rewrite empties the variants; restore KAI's spelling.
            node.any_of = Some(vec![typed("integer"), typed("string")]);
            node.type_ = None;
        } else if let Some(any_of) = &mut node.any_of {
            any_of.iter_mut().for_each(walk);
        }
        if let Some(props) = &mut node.properties {
            props.values_mut().for_each(walk);
        }
        match &mut node.items {
            Some(JSONSchemaPropsOrArray::Schema(s)) => walk(s),
            Some(JSONSchemaPropsOrArray::Schemas(v)) => v.iter_mut().for_each(walk),
            None => {}
        }
        if let Some(JSONSchemaPropsOrBool::Schema(s)) = &mut node.additional_properties {
            walk(s);
        }
    }

    fn typed(t: &str) -> JSONSchemaProps {
        JSONSchemaProps {
            type_: Some(t.into()),
            ..Default::default()
        }
    }
}

#[cfg(feature = "kube")]
pub(super) use finishing::finish;
