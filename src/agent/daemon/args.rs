//! The agent's flags (shared by `run` and `demo`) and the configuration they make.

use std::time::Duration;

use clap::Args;

use crate::api::duration::parse_duration;
use crate::binding::{Backoff, CheckMode};
use crate::plugins::PluginSettings;

use super::AgentConfig;

/// Agent tuning shared by `run` and `demo`.
#[derive(Args, Debug, Clone)]
pub struct AgentArgs {
    /// Watch BindRequests in this namespace only (default: all namespaces, this node only).
    #[arg(long, env = "BINDLET_NAMESPACE")]
    pub namespace: Option<String>,
    /// Namespace of the per-node Lease (normally the agent's own namespace).
    #[arg(
        long,
        env = "BINDLET_LEASE_NAMESPACE",
        default_value = "bindlet-system"
    )]
    pub lease_namespace: String,
    /// Identity in the Lease (default: POD_NAME, else a random name).
    #[arg(long, env = "POD_NAME")]
    pub identity: Option<String>,
    /// Requests worked on at once.
    #[arg(long, env = "BINDLET_WORKERS", default_value_t = 16)]
    pub workers: usize,
    /// Attempts before a request is marked Failed, when the request sets no backoffLimit.
    #[arg(long, env = "BINDLET_DEFAULT_BACKOFF_LIMIT", default_value_t = 3)]
    pub default_backoff_limit: i32,
    /// First retry delay (doubles per attempt), e.g. 500ms.
    #[arg(long, env = "BINDLET_RETRY_BASE", default_value = "500ms", value_parser = parse_duration)]
    pub retry_base: Duration,
    /// Longest retry delay.
    #[arg(long, env = "BINDLET_RETRY_MAX", default_value = "60s", value_parser = parse_duration)]
    pub retry_max: Duration,
    /// Timeout of every API call.
    #[arg(long, env = "BINDLET_API_TIMEOUT", default_value = "10s", value_parser = parse_duration)]
    pub api_timeout: Duration,
    /// How long a silent Lease holder is tolerated before another agent takes over.
    /// A crashed holder is replaced after at most this (plus --lease-retry); a graceful stop
    /// releases the Lease at once.
    #[arg(long, env = "BINDLET_LEASE_DURATION", default_value = "40s", value_parser = parse_duration)]
    pub lease_duration: Duration,
    /// How often the holder renews the Lease (one request per renewal).
    #[arg(long, env = "BINDLET_LEASE_RENEW", default_value = "15s", value_parser = parse_duration)]
    pub lease_renew: Duration,
    /// How often a waiting agent looks at the Lease, and how soon a failed renewal is retried.
    #[arg(long, env = "BINDLET_LEASE_RETRY", default_value = "2s", value_parser = parse_duration)]
    pub lease_retry: Duration,
    /// Node checks (cordon, taints): enforce, warn or off.
    #[arg(long, env = "BINDLET_NODE_CHECKS", value_enum, default_value_t = CheckMode::Enforce)]
    pub node_checks: CheckMode,
    /// Write KAI's pod condition `PodBound` (True/Bound, False/BindingError) after each
    /// attempt, as KAI's binder does: one `pods/status` patch per attempt.
    #[arg(long, env = "BINDLET_POD_BOUND_CONDITION", default_value_t = true, action = clap::ArgAction::Set)]
    pub pod_bound_condition: bool,
    #[command(flatten)]
    pub memory: crate::plugins::node::MemoryArgs,
    #[command(flatten)]
    pub gpu: crate::gpu::GpuArgs,
    #[command(flatten)]
    pub volumes: crate::plugins::volumes::VolumeArgs,
    #[command(flatten)]
    pub dra: crate::plugins::dra::DraArgs,
    #[command(flatten)]
    pub sharing: crate::plugins::gpu_sharing::SharingArgs,
    #[command(flatten)]
    pub numa: crate::plugins::numa::NumaArgs,
}

impl Default for AgentArgs {
    /// The flags' own defaults (written once, in the `#[arg]`s above).
    fn default() -> Self {
        crate::flags::defaults()
    }
}

impl AgentArgs {
    pub fn to_config(&self, node_name: &str) -> AgentConfig {
        AgentConfig {
            node_name: node_name.to_string(),
            namespace: self.namespace.clone(),
            lease_namespace: self.lease_namespace.clone(),
            identity: self
                .identity
                .clone()
                .unwrap_or_else(|| format!("bindlet-{node_name}-{:08x}", rand::random::<u32>())),
            workers: self.workers,
            default_backoff_limit: self.default_backoff_limit,
            backoff: Backoff {
                base: self.retry_base,
                max: self.retry_max.max(self.retry_base),
            },
            api_timeout: self.api_timeout,
            lease_duration: self.lease_duration,
            lease_renew: self.lease_renew,
            lease_retry: self.lease_retry,
            pod_bound_condition: self.pod_bound_condition,
            plugins: PluginSettings {
                node_checks: self.node_checks,
                memory: self.memory.clone(),
                gpu: crate::plugins::gpu::GpuSettings {
                    args: self.gpu.clone(),
                },
                volumes: crate::plugins::volumes::VolumeSettings {
                    args: self.volumes.clone(),
                },
                dra: crate::plugins::dra::DraSettings {
                    args: self.dra.clone(),
                },
                sharing: crate::plugins::gpu_sharing::SharingSettings {
                    args: self.sharing.clone(),
                },
                numa: crate::plugins::numa::NumaSettings {
                    args: self.numa.clone(),
                },
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `flags::defaults` panics if a flag has no default; every flag struct of the agent is
    /// built here, so a flag added without one fails this test, not a run.
    #[test]
    fn every_flag_struct_takes_its_defaults_from_its_flags() {
        let a = AgentArgs::default();
        assert_eq!(a.workers, 16);
        assert_eq!(a.lease_duration, Duration::from_secs(40));
        assert_eq!(a.node_checks, CheckMode::Enforce);
        assert_eq!(a.gpu.nvml_library.to_str(), Some("libnvidia-ml.so.1"));
        assert_eq!(a.gpu.gpu_ignored_xids, crate::gpu::DEFAULT_IGNORED_XIDS);
        assert_eq!(a.memory.memory_check, CheckMode::Off);
        assert_eq!(a.memory.memory_reserve, 1 << 30);
        assert!(a.sharing.gpu_sharing);
        assert_eq!(a.volumes.volume_binding_timeout, Duration::from_secs(120));
        assert_eq!(
            a.dra.dra_binding_timeout,
            crate::dra::conditions::DEFAULT_BINDING_TIMEOUT
        );
        assert_eq!(a.numa.sysfs_root.to_str(), Some("/sys"));
        // Each struct alone gives what the flattened one does.
        let same = |x: &dyn std::fmt::Debug, y: &dyn std::fmt::Debug| {
            assert_eq!(format!("{x:?}"), format!("{y:?}"))
        };
        same(&crate::gpu::GpuArgs::default(), &a.gpu);
        same(&crate::plugins::node::MemoryArgs::default(), &a.memory);
        same(
            &crate::plugins::gpu_sharing::SharingArgs::default(),
            &a.sharing,
        );
        same(&crate::plugins::volumes::VolumeArgs::default(), &a.volumes);
        same(&crate::plugins::dra::DraArgs::default(), &a.dra);
        same(&crate::plugins::numa::NumaArgs::default(), &a.numa);
        let cfg = AgentConfig::for_node("n1");
        assert_eq!(cfg.backoff.base, Duration::from_millis(500));
        assert_eq!(cfg.api_timeout, Duration::from_secs(10));
    }
}
