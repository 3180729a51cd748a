//! `kind = "kubernetes"`: a block is a Deployment of `nodes_per_block` worker
//! pods, each pod running the block's script (and so its own launcher) in
//! the worker image; `[provider.kubernetes]` says where and how the pods
//! run. Resource quantities and tolerations are checked here, in the
//! server's own terms, so a typo is reported with its line before any
//! block reaches the cluster.

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
    /// The kubeconfig `kubectl` uses (default: kubectl's own choice,
    /// `$KUBECONFIG` or `~/.kube/config`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub kubeconfig: Option<String>,
    /// The kubeconfig context (default: its current context).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub context: Option<String>,
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
    /// Taints the pods tolerate (`key`, `operator`, `value`, `effect`).
    pub tolerations: Vec<BTreeMap<String, String>>,
    /// A PersistentVolumeClaim holding the object store, mounted read-only
    /// at `[worker] objects_dir` in every pod (default: none; workers fetch
    /// servables' files from the daemon over the interchange).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub objects_claim: Option<String>,
}

impl Default for KubernetesConfig {
    fn default() -> Self {
        KubernetesConfig {
            namespace: "default".into(),
            kubeconfig: None,
            context: None,
            image: String::new(),
            image_pull_policy: "IfNotPresent".into(),
            service_account: None,
            cpu_request: None,
            cpu_limit: None,
            memory_request: None,
            memory_limit: None,
            gpus: 0,
            node_selector: BTreeMap::new(),
            tolerations: Vec::new(),
            objects_claim: None,
        }
    }
}

/// `[provider.kubernetes]` as written: any key may be missing.
#[derive(Deserialize, Debug, Default)]
#[serde(deny_unknown_fields, default, expecting = "struct KubernetesConfig")]
pub(crate) struct RawKubernetes {
    namespace: Option<Spanned<String>>,
    kubeconfig: Option<Spanned<String>>,
    context: Option<Spanned<String>>,
    image: Option<Spanned<String>>,
    image_pull_policy: Option<Spanned<String>>,
    service_account: Option<Spanned<String>>,
    cpu_request: Option<Spanned<String>>,
    cpu_limit: Option<Spanned<String>>,
    memory_request: Option<Spanned<String>>,
    memory_limit: Option<Spanned<String>>,
    gpus: Option<Spanned<u32>>,
    node_selector: Option<Spanned<BTreeMap<String, String>>>,
    tolerations: Option<Spanned<Vec<BTreeMap<String, String>>>>,
    objects_claim: Option<Spanned<String>>,
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
        let mut quantity = |name: &str, raw: Option<Spanned<String>>| {
            let value = s.opt(name, raw);
            match value.as_deref().map(check_quantity) {
                Some(Err(why)) => Err(s.invalid(name, why)),
                _ => Ok(value),
            }
        };
        let cpu_request = quantity("cpu_request", self.cpu_request)?;
        let cpu_limit = quantity("cpu_limit", self.cpu_limit)?;
        let memory_request = quantity("memory_request", self.memory_request)?;
        let memory_limit = quantity("memory_limit", self.memory_limit)?;
        let tolerations = s.or("tolerations", self.tolerations, d.tolerations);
        for (i, t) in tolerations.iter().enumerate() {
            if let Err(why) = check_toleration(t) {
                return Err(s.invalid_entry("tolerations", &format!("tolerations[{i}]"), why));
            }
        }
        Ok(KubernetesConfig {
            namespace: s.or("namespace", self.namespace, d.namespace),
            kubeconfig: s.opt("kubeconfig", self.kubeconfig),
            context: s.opt("context", self.context),
            image: s.or("image", self.image, d.image),
            image_pull_policy,
            service_account: s.opt("service_account", self.service_account),
            cpu_request,
            cpu_limit,
            memory_request,
            memory_limit,
            gpus: s.count("gpus", self.gpus, d.gpus, 0, super::MAX_GPUS_PER_NODE)?,
            node_selector: s.or("node_selector", self.node_selector, d.node_selector),
            tolerations,
            objects_claim: s.opt("objects_claim", self.objects_claim),
        })
    }
}

/// Whether `q` is a Kubernetes resource quantity the server accepts for a
/// request or limit: a non-negative decimal number with an optional
/// binary (`Ki` … `Ei`), decimal (`m`, `k`, `M` … `E`) or exponent (`e3`)
/// suffix. The grammar is the API's `resource.Quantity`
/// (<https://kubernetes.io/docs/reference/kubernetes-api/common-definitions/quantity/>).
fn check_quantity(q: &str) -> Result<(), String> {
    let bad = || {
        format!(
            "`{q}` is not a Kubernetes quantity (a non-negative number with an optional suffix, e.g. `500m`, `2`, `4Gi`)"
        )
    };
    let digits = |s: &str| s.bytes().all(|b| b.is_ascii_digit());
    let number_end = q
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(q.len());
    let (number, suffix) = q.split_at(number_end);
    let number_ok = match number.split_once('.') {
        None => !number.is_empty() && digits(number),
        Some((whole, frac)) => {
            (!whole.is_empty() || !frac.is_empty()) && digits(whole) && digits(frac)
        }
    };
    let suffix_ok = match suffix {
        "" | "m" | "k" | "M" | "G" | "T" | "P" | "E" => true,
        "Ki" | "Mi" | "Gi" | "Ti" | "Pi" | "Ei" => true,
        _ => match suffix.strip_prefix(['e', 'E']) {
            Some(exp) => {
                let exp = exp.strip_prefix(['+', '-']).unwrap_or(exp);
                !exp.is_empty() && digits(exp)
            }
            None => false,
        },
    };
    if number_ok && suffix_ok {
        Ok(())
    } else {
        Err(bad())
    }
}

/// The fields of a toleration a site file may set.
const TOLERATION_FIELDS: [&str; 4] = ["key", "operator", "value", "effect"];

/// Whether `t` is a toleration the server accepts.
fn check_toleration(t: &BTreeMap<String, String>) -> Result<(), String> {
    if let Some(field) = t.keys().find(|k| !TOLERATION_FIELDS.contains(&k.as_str())) {
        return Err(format!(
            "unknown field `{field}` (a toleration has key, operator, value and effect)"
        ));
    }
    let operator = t.get("operator").map_or("Equal", String::as_str);
    match operator {
        "Equal" => {}
        "Exists" if t.get("value").is_some_and(|v| !v.is_empty()) => {
            return Err("operator Exists takes no value".into());
        }
        "Exists" => {}
        other => return Err(format!("operator must be Equal or Exists, got `{other}`")),
    }
    if t.get("key").is_none_or(String::is_empty) && operator != "Exists" {
        return Err("a toleration with no key needs operator = \"Exists\"".into());
    }
    match t.get("effect").map(String::as_str) {
        None | Some("" | "NoSchedule" | "PreferNoSchedule" | "NoExecute") => Ok(()),
        Some(other) => Err(format!(
            "effect must be NoSchedule, PreferNoSchedule or NoExecute, got `{other}`"
        )),
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
        if config.provider.kubernetes.objects_claim.is_some() && config.worker.objects_dir.is_none()
        {
            return Err(site.invalid(
                "provider.kubernetes.objects_claim",
                "a volume for the object store needs [worker] objects_dir, the path the pods mount it at",
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

    #[test]
    fn quantities_and_tolerations_are_checked_before_the_server_sees_them() {
        for good in [
            "2",
            "500m",
            "0.5",
            ".5",
            "4Gi",
            "1e3",
            "128974848",
            "129M",
            "1.5E+2",
        ] {
            assert_eq!(super::check_quantity(good), Ok(()), "{good}");
        }
        for bad in ["", "two", "4GB", "-1", "1.2.3", "4 Gi", "1e", ".", "Gi"] {
            assert!(super::check_quantity(bad).is_err(), "{bad}");
        }
        let err = Config::parse(
            "[provider]\nkind = \"kubernetes\"\n[provider.kubernetes]\nimage = \"reg/fl:1\"\nmemory_limit = \"8GB\"\n",
            "k.toml",
        )
        .unwrap_err()
        .to_string();
        assert_eq!(
            err,
            "k.toml:5: `provider.kubernetes.memory_limit`: `8GB` is not a Kubernetes quantity (a non-negative number with an optional suffix, e.g. `500m`, `2`, `4Gi`)"
        );
        let err = Config::parse(
            "[provider]\nkind = \"kubernetes\"\n[provider.kubernetes]\nimage = \"reg/fl:1\"\ntolerations = [{ key = \"gpu\", operator = \"Exists\", effect = \"NoSchedule\" }, { key = \"x\", effect = \"Never\" }]\n",
            "k.toml",
        )
        .unwrap_err()
        .to_string();
        assert!(
            err.starts_with("k.toml:5: `provider.kubernetes.tolerations[1]`: effect must be"),
            "{err}"
        );
        let err = Config::parse(
            "[provider]\nkind = \"kubernetes\"\n[provider.kubernetes]\nimage = \"reg/fl:1\"\nobjects_claim = \"store\"\n",
            "k.toml",
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("needs [worker] objects_dir"), "{err}");
    }
}
