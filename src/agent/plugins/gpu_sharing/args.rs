//! The `gpu_sharing` plugin's flags and settings.

use super::*;

/// The image KAI's reservation pods run (it writes the GPU's UUID on its own pod).
pub const DEFAULT_RESERVATION_IMAGE: &str =
    "ghcr.io/nvidia/kai-scheduler/resource-reservation:latest";

/// Flags of the `gpu_sharing` plugin.
#[derive(Debug, Clone, clap::Args)]
pub struct SharingArgs {
    /// Serve fractional GPU requests (KAI `receivedResourceType: Fraction`) with
    /// reservation pods, group labels and ConfigMaps; `false` refuses them.
    #[arg(long, env = "BINDLET_GPU_SHARING", default_value_t = true, action = clap::ArgAction::Set)]
    pub gpu_sharing: bool,
    /// Namespace of the GPU reservation pods (KAI's default).
    #[arg(
        long,
        env = "BINDLET_RESERVATION_NAMESPACE",
        default_value = "kai-resource-reservation"
    )]
    pub reservation_namespace: String,
    /// Image of the reservation pods: use the one of your KAI release.
    #[arg(long, env = "BINDLET_RESERVATION_IMAGE", default_value = DEFAULT_RESERVATION_IMAGE)]
    pub reservation_image: String,
    /// Service account of the reservation pods.
    #[arg(
        long,
        env = "BINDLET_RESERVATION_SERVICE_ACCOUNT",
        default_value = "kai-resource-reservation"
    )]
    pub reservation_service_account: String,
    /// Value of the reservation pods' `app` label.
    #[arg(
        long,
        env = "BINDLET_RESERVATION_APP_LABEL",
        default_value = "kai-resource-reservation"
    )]
    pub reservation_app_label: String,
    /// RuntimeClass of the reservation pods (e.g. `nvidia`), if the node needs one.
    #[arg(long, env = "BINDLET_RESERVATION_RUNTIME_CLASS")]
    pub reservation_runtime_class: Option<String>,
    /// How long a bind waits for a reservation pod to get its GPU.
    #[arg(long, env = "BINDLET_RESERVATION_TIMEOUT", default_value = "40s", value_parser = crate::api::duration::parse_duration)]
    pub reservation_timeout: Duration,
    /// How often unused reservation pods are looked for.
    #[arg(long, env = "BINDLET_RESERVATION_GC_INTERVAL", default_value = "30s", value_parser = crate::api::duration::parse_duration)]
    pub reservation_gc_interval: Duration,
    /// A reservation pod younger than this is never collected.
    #[arg(long, env = "BINDLET_RESERVATION_GC_GRACE", default_value = "30s", value_parser = crate::api::duration::parse_duration)]
    pub reservation_gc_grace: Duration,
    /// The NVIDIA device plugin hands GPUs out as CDI devices: NVIDIA_VISIBLE_DEVICES then
    /// names `k8s.device-plugin.nvidia.com/gpu=<UUID>`.
    #[arg(long, env = "BINDLET_CDI")]
    pub cdi: bool,
    /// Resources of the reservation pods besides their one GPU, as JSON ResourceRequirements
    /// (KAI's `--resource-reservation-pod-resources`), e.g.
    /// `{"requests":{"cpu":"1m","memory":"10Mi"}}`.
    #[arg(long, env = "BINDLET_RESERVATION_POD_RESOURCES", value_parser = json_arg::<ResourceRequirements>)]
    pub reservation_pod_resources: Option<ResourceRequirements>,
    /// Pod security context of the reservation pods, as JSON (KAI's
    /// `--resource-reservation-pod-security-context`).
    #[arg(long, env = "BINDLET_RESERVATION_POD_SECURITY_CONTEXT", value_parser = json_arg::<PodSecurityContext>)]
    pub reservation_pod_security_context: Option<PodSecurityContext>,
    /// Security context of the reservation pods' container, as JSON (KAI's
    /// `--resource-reservation-container-security-context`).
    #[arg(long, env = "BINDLET_RESERVATION_CONTAINER_SECURITY_CONTEXT", value_parser = json_arg::<SecurityContext>)]
    pub reservation_container_security_context: Option<SecurityContext>,
    /// Write CUDA_DEVICE_MEMORY_LIMIT for HAMi-core into the capabilities ConfigMap, as KAI's
    /// `hamicore` binder plugin does (off by default, as there), from the GPU's measured
    /// memory less the driver's reserve.
    #[arg(long, env = "BINDLET_HAMICORE")]
    pub hamicore: bool,
}

/// Parses a flag given as JSON into a Kubernetes type.
pub(super) fn json_arg<T: serde::de::DeserializeOwned>(text: &str) -> Result<T, String> {
    serde_json::from_str(text).map_err(|e| format!("not valid JSON for this setting: {e}"))
}

impl Default for SharingArgs {
    /// The flags' own defaults (written once, in the `#[arg]`s above).
    fn default() -> Self {
        crate::flags::defaults()
    }
}

impl SharingArgs {
    /// What reservation pods are made of.
    pub fn pod_settings(&self) -> decide::reservation::PodSettings {
        decide::reservation::PodSettings {
            namespace: self.reservation_namespace.clone(),
            app_label: self.reservation_app_label.clone(),
            image: self.reservation_image.clone(),
            service_account: self.reservation_service_account.clone(),
            runtime_class: self.reservation_runtime_class.clone(),
            resources: self.reservation_pod_resources.clone(),
            pod_security_context: self.reservation_pod_security_context.clone(),
            container_security_context: self.reservation_container_security_context.clone(),
        }
    }

    pub fn scope(&self) -> ReservationScope {
        ReservationScope {
            namespace: self.reservation_namespace.clone(),
            app_label: self.reservation_app_label.clone(),
        }
    }
}

/// Settings of the plugin: its flags.
#[derive(Debug, Clone, Default)]
pub struct SharingSettings {
    pub args: SharingArgs,
}
