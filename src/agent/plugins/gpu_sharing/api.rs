//! The plugin's API adapter: the only code that reads or writes the server for it (pods on this node, reservation pods), and the per-group locks it shares with the collector.

use super::*;

/// One lock per GPU group, shared by binds and garbage collection.
#[derive(Default)]
pub struct GroupLocks {
    pub(super) map: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
}

impl GroupLocks {
    pub(super) fn entry(&self, group: &str) -> Arc<tokio::sync::Mutex<()>> {
        let mut map = self.map.lock().unwrap_or_else(|p| p.into_inner());
        if map.len() > 1024 {
            // Forget the locks nobody holds or waits for.
            map.retain(|_, m| Arc::strong_count(m) > 1);
        }
        map.entry(group.to_string()).or_default().clone()
    }

    pub async fn lock(&self, group: &str) -> OwnedMutexGuard<()> {
        self.entry(group).lock_owned().await
    }

    pub fn try_lock(&self, group: &str) -> Option<OwnedMutexGuard<()>> {
        self.entry(group).try_lock_owned().ok()
    }
}

/// The plugin's API access and the node-wide state it shares with garbage collection.
#[derive(Clone)]
pub struct SharingApi {
    pub(super) kube: Kube,
    pub(super) node: String,
    pub(super) pods: Arc<dyn NodePods>,
    pub(super) assignments: Option<Arc<dyn DeviceAssignments>>,
    pub locks: Arc<GroupLocks>,
    /// The last kubelet refusal of a reservation pod on this node.
    pub(super) refused: Arc<Mutex<Option<(Instant, String)>>>,
}

impl SharingApi {
    /// The reservation pods on this node: `scope`'s namespace and app label, this node's
    /// `spec.nodeName`.
    pub(super) async fn reservation_pods(
        &self,
        scope: &ReservationScope,
    ) -> Result<Vec<Pod>, String> {
        let api: Api<Pod> = Api::namespaced(self.kube.client.clone(), &scope.namespace);
        let lp = ListParams::default()
            .labels(&format!("app={}", scope.app_label))
            .fields(&format!("spec.nodeName={}", self.node));
        let what = crate::kubeapi::calls::LIST_PODS;
        self.kube
            .call(what, api.list(&lp))
            .await
            .map(|l| l.items)
            .map_err(|e| format!("listing the reservation pods on this node: {e}"))
    }
}

impl std::fmt::Debug for SharingApi {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SharingApi")
            .field("node", &self.node)
            .field("kube", &self.kube)
            .finish_non_exhaustive()
    }
}

impl SharingApi {
    pub fn new(kube: Kube, node: &str, socket: Option<std::path::PathBuf>) -> Self {
        let timeout = kube.timeout;
        let pods = Arc::new(crate::plugins::gpu::ApiNodePods {
            kube: kube.clone(),
            node: node.to_string(),
        });
        let assignments = socket.map(|path| {
            Arc::new(crate::plugins::gpu::SocketAssignments { path, timeout })
                as Arc<dyn DeviceAssignments>
        });
        SharingApi {
            kube,
            node: node.to_string(),
            pods,
            assignments,
            locks: Arc::default(),
            refused: Arc::default(),
        }
    }

    /// The kubelet's GPU assignments, or `None` (with a log line) when there is no socket
    /// or it does not answer: the annotation is then the only source.
    pub(super) async fn assigned(&self) -> Option<Assignments> {
        let a = self.assignments.as_ref()?;
        match a.list().await {
            Ok(list) => Some(
                list.iter()
                    .map(|p| {
                        (
                            format!("{}/{}", p.namespace, p.name),
                            p.device_ids(GPU_RESOURCE).map(str::to_string).collect(),
                        )
                    })
                    .collect(),
            ),
            Err(e) => {
                tracing::warn!(error = %e, "kubelet pod-resources socket unavailable; reading reservation annotations");
                None
            }
        }
    }

    pub(super) fn pods_in(&self, ns: &str) -> Api<Pod> {
        Api::namespaced(self.kube.client.clone(), ns)
    }

    pub(super) async fn get_pod(&self, ns: &str, name: &str) -> Result<Option<Pod>, ApiError> {
        self.kube
            .call_opt(calls::GET_POD, self.pods_in(ns).get_opt(name))
            .await
    }

    /// Deletes a pod if it is still the one with `uid`; gone already is success.
    pub(super) async fn delete_pod(&self, ns: &str, name: &str, uid: &str) -> Result<(), ApiError> {
        let dp = DeleteParams {
            grace_period_seconds: Some(0),
            preconditions: Some(Preconditions {
                uid: Some(uid.to_string()),
                resource_version: None,
            }),
            ..Default::default()
        };
        match self
            .kube
            .call(calls::DELETE_POD, self.pods_in(ns).delete(name, &dp))
            .await
        {
            Ok(_) => Ok(()),
            Err(e) if matches!(e.code(), Some(404) | Some(409)) => Ok(()),
            Err(e) => Err(e),
        }
    }

    pub(super) fn note_refusal(&self, message: &str) {
        *self.refused.lock().unwrap_or_else(|p| p.into_inner()) =
            Some((Instant::now(), message.to_string()));
    }

    pub(super) fn recent_refusal(&self) -> Option<String> {
        let r = self.refused.lock().unwrap_or_else(|p| p.into_inner());
        r.as_ref()
            .filter(|(at, _)| at.elapsed() < REFUSAL_COOL_DOWN)
            .map(|(at, m)| format!("{m} ({} s ago)", at.elapsed().as_secs()))
    }
}

/// The plugin's writes: reservation pods, pod labels and annotations, ConfigMaps.
impl GpuSharingPlugin {
    /// Creates the group's reservation pod, after checking (under the node's GPU bind
    /// lock, so a whole-GPU bind cannot take the same GPU meanwhile) that a GPU is free.
    /// Its name is KAI's deterministic one: AlreadyExists means another binder (KAI's, during
    /// a migration) created it since this attempt looked, and it is used as found. Returns
    /// name, uid and whether this attempt created it.
    pub(super) async fn create_reservation(
        &self,
        api: &SharingApi,
        group: &str,
        source: &Pod,
        pods: &[Pod],
    ) -> Result<(String, String, bool), PluginError> {
        if let Some(last) = api.recent_refusal() {
            return Err(PluginError::not_ready(format!(
                "group {group} needs a new reservation pod, but none is created on this node for {} s after a refusal: {last}",
                REFUSAL_COOL_DOWN.as_secs()
            )));
        }
        let _guard = match (&self.gpu, self.mode) {
            (Some(rt), CheckMode::Enforce | CheckMode::Warn) => {
                let guard = rt.lock_binds().await;
                let free = rt.whole_gpu_verdict(pods).await?;
                if free.outcome == VerdictOutcome::Fail {
                    return Err(PluginError::unsatisfiable(format!(
                        "group {group} needs a new reservation pod, which needs a free GPU: {}",
                        free.message
                    )));
                }
                Some(guard)
            }
            _ => None,
        };
        let ns = &self.args.reservation_namespace;
        let pod = decide::reservation::pod(&self.args.pod_settings(), &api.node, group, source);
        let name = pod.metadata.name.clone().unwrap_or_default();
        let created = api
            .kube
            .call(
                calls::CREATE_POD,
                api.pods_in(ns).create(&PostParams::default(), &pod),
            )
            .await;
        match created {
            Ok(created) => {
                tracing::info!(group, pod = %name, "created GPU reservation pod");
                Ok((name, created.metadata.uid.unwrap_or_default(), true))
            }
            Err(ApiError::Status { code: 409, .. }) => {
                let found = api.get_pod(ns, &name).await.map_err(|e| {
                    PluginError::unavailable(format!(
                        "group {group}: reservation pod {ns}/{name} already exists; reading it: {e}"
                    ))
                })?;
                match found {
                    Some(p) if p.metadata.deletion_timestamp.is_none() => {
                        tracing::info!(group, pod = %name, "GPU reservation pod already exists; using it");
                        Ok((name, p.metadata.uid.unwrap_or_default(), false))
                    }
                    _ => Err(PluginError::contention(format!(
                        "group {group}: reservation pod {ns}/{name} is being deleted; retrying"
                    ))),
                }
            }
            Err(e) => {
                let m = format!("group {group}: creating a reservation pod in {ns}: {e}");
                Err(
                    if e.code().is_some_and(|c| c == 403 || c == 404 || c == 422) {
                        PluginError::rejected(m)
                    } else {
                        PluginError::unavailable(m)
                    },
                )
            }
        }
    }

    pub(super) async fn patch_pod(
        &self,
        api: &SharingApi,
        ctx: &BindContext<'_>,
        body: serde_json::Value,
    ) -> Result<(), ApiError> {
        api.kube
            .call(
                calls::PATCH_POD,
                api.pods_in(&ctx.request.namespace).patch(
                    &ctx.request.pod_name,
                    &PatchParams::default(),
                    &Patch::Merge(body),
                ),
            )
            .await
            .map(|_| ())
    }

    /// Creates the ConfigMap owned by the pod, or brings an existing one up to date (KAI's
    /// binder also takes over one left by an earlier pod of the same name).
    pub(super) async fn write_configmap(
        &self,
        api: &SharingApi,
        ctx: &BindContext<'_>,
        plan: &decide::ConfigMapPlan,
        w: &mut SharingWrites,
    ) -> Result<(), PluginError> {
        let ns = &ctx.request.namespace;
        let cms: Api<ConfigMap> = Api::namespaced(api.kube.client.clone(), ns);
        let owner = OwnerReference {
            api_version: "v1".into(),
            kind: "Pod".into(),
            name: ctx.request.pod_name.clone(),
            uid: ctx.pod.metadata.uid.clone().unwrap_or_default(),
            ..Default::default()
        };
        let fail = |e: ApiError| {
            PluginError::unavailable(format!("writing ConfigMap {ns}/{}: {e}", plan.name))
        };
        for _ in 0..CONFLICT_TRIES {
            let existing = api
                .kube
                .call_opt(calls::GET_CONFIGMAP, cms.get_opt(&plan.name))
                .await
                .map_err(fail)?;
            let result = match existing {
                None => {
                    let cm = ConfigMap {
                        metadata: ObjectMeta {
                            name: Some(plan.name.clone()),
                            namespace: Some(ns.clone()),
                            owner_references: Some(vec![owner.clone()]),
                            ..Default::default()
                        },
                        data: Some(plan.data.clone()),
                        ..Default::default()
                    };
                    api.kube
                        .call(
                            calls::CREATE_CONFIGMAP,
                            cms.create(&PostParams::default(), &cm),
                        )
                        .await
                        .map(|c| {
                            w.configmaps_created
                                .push((plan.name.clone(), c.metadata.uid.unwrap_or_default()));
                        })
                }
                Some(mut cm) => {
                    let old = cm.data.take().unwrap_or_default();
                    let data = decide::merged_data(&old, plan);
                    let owned = cm
                        .metadata
                        .owner_references
                        .as_ref()
                        .is_some_and(|o| o.len() == 1 && o[0].uid == owner.uid);
                    if owned && data == old {
                        return Ok(());
                    }
                    cm.data = Some(data);
                    cm.metadata.owner_references = Some(vec![owner.clone()]);
                    // The resourceVersion read above guards the write: 409 → read again.
                    api.kube
                        .call(
                            calls::UPDATE_CONFIGMAP,
                            cms.replace(&plan.name, &PostParams::default(), &cm),
                        )
                        .await
                        .map(|_| ())
                }
            };
            match result {
                Ok(()) => return Ok(()),
                Err(e) if e.code() == Some(409) => continue,
                Err(e) => return Err(fail(e)),
            }
        }
        Err(PluginError::contention(format!(
            "writing ConfigMap {ns}/{}: it kept changing ({CONFLICT_TRIES} conflicts)",
            plan.name
        )))
    }
}

impl SharingApi {
    /// Rollback: deletes the ConfigMaps this attempt created (by UID, so a newer one of
    /// the same name is kept); gone or replaced ones are fine.
    pub(super) async fn delete_configmaps(&self, ns: &str, created: Vec<(String, String)>) {
        let cms: Api<ConfigMap> = Api::namespaced(self.kube.client.clone(), ns);
        for (name, uid) in created {
            let dp = DeleteParams {
                preconditions: Some(Preconditions {
                    uid: Some(uid),
                    resource_version: None,
                }),
                ..Default::default()
            };
            let r = self
                .kube
                .call(calls::DELETE_CONFIGMAP, cms.delete(&name, &dp))
                .await;
            if let Err(e) = r
                && !matches!(e.code(), Some(404) | Some(409))
            {
                tracing::warn!(configmap = %name, error = %e, "rollback: could not delete ConfigMap");
            }
        }
    }
}
