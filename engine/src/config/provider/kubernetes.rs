//! `kind = "kubernetes"`: a block is a Deployment of `nodes_per_block` worker
//! pods, each pod running the block's script (and so its own launcher) in
//! the worker image; `[provider.kubernetes]` says where and how the pods
//! run.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use toml::Spanned;

use super::ProviderRules;
use crate::config::site::{Section, Site};
use crate::config::{Config, ConfigError};

/// `[provider.kubernetes]`: where and how worker pods run.
#[derive(Serialize, Debug, Clone, PartialEq, Eq)]
pub struct KubernetesConfig {
    /// Namespace of the Deployments.
    pub namespace: String,
    /// Worker image (required with `kind = "kubernetes"`).
    pub image: String,
    /// `Always`, `IfNotPresent` or `Never`.
    pub image_pull_policy: String,
    /// Service account of the pods.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub service_account: Option<String>,
    /// CPU request per pod.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cpu_request: Option<String>,
    /// CPU limit per pod.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cpu_limit: Option<String>,
    /// Memory request per pod.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub memory_request: Option<String>,
    /// Memory limit per pod.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub memory_limit: Option<String>,
    /// GPUs per pod.
    pub gpus: u32,
    /// Node labels the pods must land on.
    pub node_selector: BTreeMap<String, String>,
}

impl Default for KubernetesConfig {
    fn default() -> Self {
        KubernetesConfig {
            namespace: "default".into(),
            image: String::new(),
            image_pull_policy: "IfNotPresent".into(),
            service_account: None,
            cpu_request: None,
            cpu_limit: None,
            memory_request: None,
            memory_limit: None,
            gpus: 0,
            node_selector: BTreeMap::new(),
        }
    }
}

/// `[provider.kubernetes]` as written: any key may be missing.
#[derive(Deserialize, Debug, Default)]
#[serde(deny_unknown_fields, default, expecting = "struct KubernetesConfig")]
pub(crate) struct RawKubernetes {
    namespace: Option<Spanned<String>>,
    image: Option<Spanned<String>>,
    image_pull_policy: Option<Spanned<String>>,
    service_account: Option<Spanned<String>>,
    cpu_request: Option<Spanned<String>>,
    cpu_limit: Option<Spanned<String>>,
    memory_request: Option<Spanned<String>>,
    memory_limit: Option<Spanned<String>>,
    gpus: Option<Spanned<u32>>,
    node_selector: Option<Spanned<BTreeMap<String, String>>>,
}

/// The pull policies Kubernetes knows.
const PULL_POLICIES: [&str; 3] = ["Always", "IfNotPresent", "Never"];

impl RawKubernetes {
    /// The table's settings in force (checked whatever the kind, like every
    /// other key), or what is wrong with them.
    pub(crate) fn check(self, s: &mut Section) -> Result<KubernetesConfig, ConfigError> {
        let d = KubernetesConfig::default();
        let image_pull_policy = s.or(
            "image_pull_policy",
            self.image_pull_policy,
            d.image_pull_policy,
        );
        if !PULL_POLICIES.contains(&image_pull_policy.as_str()) {
            return Err(s.invalid(
                "image_pull_policy",
                format!("must be Always, IfNotPresent or Never, got `{image_pull_policy}`"),
            ));
        }
        Ok(KubernetesConfig {
            namespace: s.or("namespace", self.namespace, d.namespace),
            image: s.or("image", self.image, d.image),
            image_pull_policy,
            service_account: s.opt("service_account", self.service_account),
            cpu_request: s.opt("cpu_request", self.cpu_request),
            cpu_limit: s.opt("cpu_limit", self.cpu_limit),
            memory_request: s.opt("memory_request", self.memory_request),
            memory_limit: s.opt("memory_limit", self.memory_limit),
            gpus: s.count("gpus", self.gpus, d.gpus, 0, super::MAX_GPUS_PER_NODE)?,
            node_selector: s.or("node_selector", self.node_selector, d.node_selector),
        })
    }
}

/// Kubernetes' rules.
pub(super) struct Kubernetes;

impl ProviderRules for Kubernetes {
    fn name(&self) -> &'static str {
        "kubernetes"
    }

    /// A Deployment has no wall time: its pods run until it is deleted.
    fn block_walltime_s(&self, _walltime: Option<&str>) -> Option<u64> {
        None
    }

    /// Every pod runs the block's script, and with it its own launcher.
    fn launcher_per_node(&self) -> bool {
        true
    }

    fn check(&self, config: &Config, site: &Site) -> Result<(), ConfigError> {
        if config.provider.kubernetes.image.trim().is_empty() {
            return Err(site.invalid(
                "provider.kubernetes.image",
                "kind = \"kubernetes\" needs the worker image to run (an image with flotilla-worker in it)",
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use crate::config::{Config, ProviderKind};

    #[test]
    fn kubernetes_blocks_need_an_image_and_a_known_pull_policy() {
        let c = Config::parse(
            "[provider]\nkind = \"kubernetes\"\nnodes_per_block = 3\n[provider.kubernetes]\nimage = \"reg/fl:1\"\nnode_selector = { pool = \"gpu\" }\n",
            "k.toml",
        )
        .unwrap();
        assert_eq!(c.provider.kind, ProviderKind::Kubernetes);
        assert_eq!(c.provider.kubernetes.image, "reg/fl:1");
        assert_eq!(c.provider.nodes_per_block, 3, "pods run their own launcher");
        assert_eq!(c.block_walltime_s(), None);
        let err = Config::parse(
            "[provider]\nkind = \"kubernetes\"\n[provider.kubernetes]\nimage = \"reg/fl:1\"\nimage_pull_policy = \"Sometimes\"\n",
            "k.toml",
        )
        .unwrap_err()
        .to_string();
        assert_eq!(
            err,
            "k.toml:5: `provider.kubernetes.image_pull_policy`: must be Always, IfNotPresent or Never, got `Sometimes`"
        );
        let err = Config::parse(
            "[provider]\nkind = \"kubernetes\"\n[provider.kubernetes]\nimage = \" \"\n",
            "k.toml",
        )
        .unwrap_err()
        .to_string();
        assert!(
            err.starts_with("k.toml:4: `provider.kubernetes.image`: kind = \"kubernetes\" needs"),
            "{err}"
        );
    }
}
