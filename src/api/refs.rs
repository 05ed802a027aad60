//! `ObjectReference`s (what Events are about) built one way: apiVersion and kind from the
//! object's type, never typed by hand.

use k8s_openapi::api::core::v1::ObjectReference;
use kube_core::Resource;

/// A reference to `obj`: its type's apiVersion and kind, its namespace, name and UID.
pub fn object_ref<K: Resource<DynamicType = ()>>(obj: &K) -> ObjectReference {
    let meta = obj.meta();
    reference_to::<K>(meta.namespace.clone(), meta.name.clone(), meta.uid.clone())
}

/// A reference to an object of type `K` known by name (and UID, when known).
pub fn reference_to<K: Resource<DynamicType = ()>>(
    namespace: Option<String>,
    name: Option<String>,
    uid: Option<String>,
) -> ObjectReference {
    ObjectReference {
        api_version: Some(K::api_version(&()).into_owned()),
        kind: Some(K::kind(&()).into_owned()),
        namespace,
        name,
        uid,
        ..Default::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::BindRequest;
    use k8s_openapi::api::core::v1::{Node, Pod};
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

    #[test]
    fn references_carry_the_types_api_version_and_kind() {
        let pod = Pod {
            metadata: ObjectMeta {
                namespace: Some("ns".into()),
                name: Some("p".into()),
                uid: Some("u".into()),
                resource_version: Some("7".into()),
                ..Default::default()
            },
            ..Default::default()
        };
        let r = object_ref(&pod);
        assert_eq!(
            (
                r.api_version.as_deref(),
                r.kind.as_deref(),
                r.uid.as_deref()
            ),
            (Some("v1"), Some("Pod"), Some("u"))
        );
        assert_eq!(
            r.resource_version, None,
            "an Event is about the object, not a version"
        );
        let n = reference_to::<Node>(None, Some("n1".into()), None);
        assert_eq!((n.kind.as_deref(), n.namespace), (Some("Node"), None));
        let b = reference_to::<BindRequest>(Some("ns".into()), Some("p".into()), None);
        assert_eq!(
            (b.api_version.as_deref(), b.kind.as_deref()),
            (Some("scheduling.run.ai/v1alpha2"), Some("BindRequest"))
        );
    }
}
