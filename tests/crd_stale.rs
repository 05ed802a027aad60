//! `daemonset/crd.yaml` must be exactly what `bindlet crd` prints.
//!
//! Regenerate with `hack/gen-crd.sh`, or run this test with `BINDLET_UPDATE_GOLDEN=1`.

use std::path::PathBuf;

#[test]
fn daemonset_crd_is_up_to_date() {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("daemonset/crd.yaml");
    let generated = bindlet::api::crd_yaml().expect("bindlet's CRD serializes");
    if std::env::var_os("BINDLET_UPDATE_GOLDEN").is_some_and(|v| v == "1") {
        std::fs::write(&path, &generated).expect("write daemonset/crd.yaml");
        return;
    }
    let committed = std::fs::read_to_string(&path).unwrap_or_default();
    if committed != generated {
        let first_diff = committed
            .lines()
            .zip(generated.lines())
            .position(|(a, b)| a != b)
            .map_or_else(
                || "files differ in length".to_owned(),
                |i| format!("first difference at line {}", i + 1),
            );
        panic!(
            "daemonset/crd.yaml is stale or missing ({first_diff}).\n\
             Regenerate it with `hack/gen-crd.sh` \
             (or `BINDLET_UPDATE_GOLDEN=1 cargo test --test crd_stale`) and commit the result."
        );
    }
}
