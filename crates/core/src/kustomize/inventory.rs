//! Object identity, apply order and the inventory of applied objects, in Flux's formats.
//!
//! An object is identified by namespace, name, API group and kind (never the version: the same
//! object read through `v1beta1` and `v1` is one object). The textual id is Flux's
//! (`<namespace>_<name>_<group>_<kind>`, a `:` in the name written as `__`, as cli-utils does for
//! RBAC names such as `system:metrics`), so `status.inventory` written by Flux is read back
//! unchanged and vice versa.
//!
//! Apply order follows fluxcd/pkg `ssa`: objects are split into stages (cluster definitions,
//! then `*Class` kinds, then the rest) and sorted within a stage by a fixed kind order
//! (`ServiceAccount` before `Role` before `ConfigMap` ... webhooks last), then group, kind,
//! namespace and name, so the order never depends on the order in git.

use std::cmp::Ordering;
use std::collections::HashSet;
use std::fmt;
use std::str::FromStr;

/// Identity of a Kubernetes object.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ObjectId {
    /// Empty for cluster-scoped objects.
    pub namespace: String,
    pub name: String,
    /// Empty for the core group.
    pub group: String,
    pub kind: String,
}

impl ObjectId {
    pub fn new(
        namespace: impl Into<String>,
        name: impl Into<String>,
        group: impl Into<String>,
        kind: impl Into<String>,
    ) -> Self {
        ObjectId {
            namespace: namespace.into(),
            name: name.into(),
            group: group.into(),
            kind: kind.into(),
        }
    }

    /// From an `apiVersion` (`apps/v1`, `v1`) plus kind, namespace and name.
    pub fn from_api_version(api_version: &str, kind: &str, namespace: &str, name: &str) -> Self {
        ObjectId::new(namespace, name, group_of(api_version), kind)
    }

    /// Flux's short form for messages and events: `Kind/namespace/name` (`Kind/name` when
    /// cluster-scoped).
    pub fn display(&self) -> String {
        if self.namespace.is_empty() {
            format!("{}/{}", self.kind, self.name)
        } else {
            format!("{}/{}/{}", self.kind, self.namespace, self.name)
        }
    }

    /// The apply stage this object belongs to.
    pub fn stage(&self) -> Stage {
        stage_of(&self.group, &self.kind)
    }
}

/// The group part of an `apiVersion` (empty for the core group `v1`).
pub fn group_of(api_version: &str) -> &str {
    api_version.split_once('/').map_or("", |(group, _)| group)
}

/// Flux's inventory id: `<namespace>_<name>_<group>_<kind>`.
impl fmt::Display for ObjectId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}_{}_{}_{}",
            self.namespace,
            self.name.replace(':', "__"),
            self.group,
            self.kind
        )
    }
}

/// An inventory id that is not `<namespace>_<name>_<group>_<kind>`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid inventory id {id:?}: expected <namespace>_<name>_<group>_<kind>")]
pub struct ParseIdError {
    pub id: String,
}

impl FromStr for ObjectId {
    type Err = ParseIdError;

    fn from_str(id: &str) -> Result<Self, Self::Err> {
        let err = || ParseIdError { id: id.to_string() };
        // Namespaces, groups and kinds never contain `_`, and names only as the `__`
        // encoding of `:`; so the first field and the last two are unambiguous.
        let (namespace, rest) = id.split_once('_').ok_or_else(err)?;
        let (rest, kind) = rest.rsplit_once('_').ok_or_else(err)?;
        let (name, group) = rest.rsplit_once('_').ok_or_else(err)?;
        if name.is_empty() || kind.is_empty() {
            return Err(err());
        }
        Ok(ObjectId::new(
            namespace,
            name.replace("__", ":"),
            group,
            kind,
        ))
    }
}

/// Apply stages: each is applied (and its definitions waited for) before the next.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Stage {
    /// CustomResourceDefinitions, Namespaces and ClusterRoles: what other objects need to exist.
    Definitions,
    /// `*Class` kinds (StorageClass, IngressClass, ...), which objects of the last stage name.
    Classes,
    /// Everything else.
    Resources,
}

/// The stage of an object of `group`/`kind`.
pub fn stage_of(group: &str, kind: &str) -> Stage {
    match (group, kind) {
        ("apiextensions.k8s.io", "CustomResourceDefinition")
        | ("", "Namespace")
        | ("rbac.authorization.k8s.io", "ClusterRole") => Stage::Definitions,
        _ if kind.ends_with("Class") => Stage::Classes,
        _ => Stage::Resources,
    }
}

/// fluxcd/pkg `ssa` kind order: these first, in this order ...
const FIRST: &[&str] = &[
    "CustomResourceDefinition",
    "Namespace",
    "ClusterClass",
    "RuntimeClass",
    "PriorityClass",
    "StorageClass",
    "VolumeSnapshotClass",
    "IngressClass",
    "GatewayClass",
    "ResourceQuota",
    "ServiceAccount",
    "Role",
    "ClusterRole",
    "RoleBinding",
    "ClusterRoleBinding",
    "ConfigMap",
    "Secret",
    "Service",
    "LimitRange",
    "Deployment",
    "StatefulSet",
    "CronJob",
    "PodDisruptionBudget",
];

/// ... these last (a webhook must not intercept the objects its own backend needs).
const LAST: &[&str] = &[
    "MutatingWebhookConfiguration",
    "ValidatingWebhookConfiguration",
];

/// Position of a kind: negative for [`FIRST`], 0 for unlisted kinds, positive for [`LAST`].
fn kind_rank(kind: &str) -> i64 {
    if let Some(i) = FIRST.iter().position(|k| *k == kind) {
        return i as i64 - FIRST.len() as i64;
    }
    if let Some(i) = LAST.iter().position(|k| *k == kind) {
        return i as i64 + 1;
    }
    0
}

/// Total apply order: stage, kind rank, group, kind, namespace, name.
pub fn apply_order(a: &ObjectId, b: &ObjectId) -> Ordering {
    a.stage()
        .cmp(&b.stage())
        .then_with(|| kind_rank(&a.kind).cmp(&kind_rank(&b.kind)))
        .then_with(|| a.group.cmp(&b.group))
        .then_with(|| a.kind.cmp(&b.kind))
        .then_with(|| a.namespace.cmp(&b.namespace))
        .then_with(|| a.name.cmp(&b.name))
}

/// One applied object: its id and the API version it was applied with.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct InventoryEntry {
    pub id: ObjectId,
    pub version: String,
}

/// The objects a Kustomization applied (`status.inventory`).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Inventory {
    pub entries: Vec<InventoryEntry>,
}

impl Inventory {
    /// From `(id, v)` pairs as stored in `status.inventory.entries`.
    pub fn parse<'a>(
        entries: impl IntoIterator<Item = (&'a str, &'a str)>,
    ) -> Result<Self, ParseIdError> {
        let entries = entries
            .into_iter()
            .map(|(id, v)| {
                Ok(InventoryEntry {
                    id: id.parse()?,
                    version: v.to_string(),
                })
            })
            .collect::<Result<_, _>>()?;
        Ok(Inventory { entries })
    }

    /// `(id, v)` pairs in Flux's format, in the stored order.
    pub fn to_pairs(&self) -> Vec<(String, String)> {
        self.entries
            .iter()
            .map(|e| (e.id.to_string(), e.version.clone()))
            .collect()
    }

    /// Adds an entry unless the object is already listed (then its version is updated).
    pub fn insert(&mut self, id: ObjectId, version: impl Into<String>) {
        let version = version.into();
        match self.entries.iter_mut().find(|e| e.id == id) {
            Some(entry) => entry.version = version,
            None => self.entries.push(InventoryEntry { id, version }),
        }
    }

    /// Sorts into apply order, which is the order Flux writes (stage by stage).
    pub fn sort(&mut self) {
        self.entries.sort_by(|a, b| apply_order(&a.id, &b.id));
    }

    pub fn contains(&self, id: &ObjectId) -> bool {
        self.entries.iter().any(|e| &e.id == id)
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Entries of `self` (the previous inventory) missing from `current`: the objects to
    /// prune, in deletion order (the reverse of apply order, so Namespaces and CRDs go last).
    pub fn stale(&self, current: &Inventory) -> Vec<InventoryEntry> {
        let keep: HashSet<&ObjectId> = current.entries.iter().map(|e| &e.id).collect();
        let mut stale: Vec<InventoryEntry> = self
            .entries
            .iter()
            .filter(|e| !keep.contains(&e.id))
            .cloned()
            .collect();
        stale.sort_by(|a, b| apply_order(&b.id, &a.id));
        stale
    }

    /// All entries in deletion order.
    pub fn deletion_order(&self) -> Vec<InventoryEntry> {
        self.stale(&Inventory::default())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_use_flux_format() {
        let cases = [
            (
                ObjectId::new("apps", "web", "apps", "Deployment"),
                "apps_web_apps_Deployment",
            ),
            (
                ObjectId::new("apps", "settings", "", "ConfigMap"),
                "apps_settings__ConfigMap",
            ),
            (
                ObjectId::new("", "apps", "", "Namespace"),
                "_apps__Namespace",
            ),
            (
                ObjectId::new(
                    "",
                    "system:metrics",
                    "rbac.authorization.k8s.io",
                    "ClusterRole",
                ),
                "_system__metrics_rbac.authorization.k8s.io_ClusterRole",
            ),
            (
                ObjectId::new(
                    "",
                    "widgets.example.com",
                    "apiextensions.k8s.io",
                    "CustomResourceDefinition",
                ),
                "_widgets.example.com_apiextensions.k8s.io_CustomResourceDefinition",
            ),
        ];
        for (id, text) in cases {
            assert_eq!(id.to_string(), text);
            assert_eq!(text.parse::<ObjectId>().unwrap(), id, "{text}");
        }
    }

    #[test]
    fn malformed_ids_are_rejected() {
        for bad in ["", "abc", "a_b", "ns__apps_", "ns___ConfigMap"] {
            assert!(bad.parse::<ObjectId>().is_err(), "{bad:?} must not parse");
        }
    }

    #[test]
    fn display_is_kind_namespace_name() {
        assert_eq!(
            ObjectId::new("apps", "web", "apps", "Deployment").display(),
            "Deployment/apps/web"
        );
        assert_eq!(
            ObjectId::new("", "apps", "", "Namespace").display(),
            "Namespace/apps"
        );
    }

    #[test]
    fn stages_and_order_follow_flux() {
        let ids = [
            ObjectId::new(
                "apps",
                "hook",
                "admissionregistration.k8s.io",
                "ValidatingWebhookConfiguration",
            ),
            ObjectId::new("apps", "web", "apps", "Deployment"),
            ObjectId::new("apps", "w1", "example.com", "Widget"),
            ObjectId::new("apps", "web", "", "Service"),
            ObjectId::new("apps", "cfg", "", "ConfigMap"),
            ObjectId::new("apps", "sa", "", "ServiceAccount"),
            ObjectId::new("apps", "r", "rbac.authorization.k8s.io", "Role"),
            ObjectId::new("", "fast", "storage.k8s.io", "StorageClass"),
            ObjectId::new("", "view", "rbac.authorization.k8s.io", "ClusterRole"),
            ObjectId::new("", "apps", "", "Namespace"),
            ObjectId::new(
                "",
                "widgets.example.com",
                "apiextensions.k8s.io",
                "CustomResourceDefinition",
            ),
        ];
        let mut sorted = ids.to_vec();
        sorted.sort_by(apply_order);
        let kinds: Vec<&str> = sorted.iter().map(|i| i.kind.as_str()).collect();
        assert_eq!(
            kinds,
            [
                "CustomResourceDefinition",
                "Namespace",
                "ClusterRole",
                "StorageClass",
                "ServiceAccount",
                "Role",
                "ConfigMap",
                "Service",
                "Deployment",
                "Widget",
                "ValidatingWebhookConfiguration",
            ]
        );
        assert_eq!(sorted[0].stage(), Stage::Definitions);
        assert_eq!(sorted[3].stage(), Stage::Classes);
        assert_eq!(sorted[4].stage(), Stage::Resources);
    }

    #[test]
    fn stale_entries_come_in_deletion_order() {
        let previous = Inventory::parse([
            ("_apps__Namespace", "v1"),
            ("apps_cfg__ConfigMap", "v1"),
            ("apps_web_apps_Deployment", "v1"),
            ("apps_web__Service", "v1"),
            (
                "_widgets.example.com_apiextensions.k8s.io_CustomResourceDefinition",
                "v1",
            ),
            ("apps_w1_example.com_Widget", "v1"),
        ])
        .unwrap();
        let current = Inventory::parse([("apps_web__Service", "v1")]).unwrap();
        let stale: Vec<String> = previous
            .stale(&current)
            .iter()
            .map(|e| e.id.display())
            .collect();
        assert_eq!(
            stale,
            [
                "Widget/apps/w1",
                "Deployment/apps/web",
                "ConfigMap/apps/cfg",
                "Namespace/apps",
                "CustomResourceDefinition/widgets.example.com",
            ]
        );
        // The version is not part of the identity.
        let moved = Inventory::parse([("apps_web__Service", "v2")]).unwrap();
        assert!(current.stale(&moved).is_empty());
    }

    #[test]
    fn insert_sort_and_round_trip() {
        let mut inventory = Inventory::default();
        inventory.insert(ObjectId::new("apps", "web", "apps", "Deployment"), "v1");
        inventory.insert(ObjectId::new("apps", "sa", "", "ServiceAccount"), "v1");
        inventory.insert(ObjectId::new("apps", "web", "apps", "Deployment"), "v1");
        assert_eq!(inventory.len(), 2);
        inventory.sort();
        let pairs = inventory.to_pairs();
        assert_eq!(
            pairs,
            [
                ("apps_sa__ServiceAccount".to_string(), "v1".to_string()),
                ("apps_web_apps_Deployment".to_string(), "v1".to_string()),
            ]
        );
        let again = Inventory::parse(pairs.iter().map(|(a, b)| (a.as_str(), b.as_str()))).unwrap();
        assert_eq!(again, inventory);
    }
}
