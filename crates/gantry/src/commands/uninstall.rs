//! `gantry uninstall`: removes Gantry from a cluster the way `flux uninstall` removes Flux, and
//! never the workloads it applied.
//!
//! In order:
//! 1. Gantry's own objects in its namespace (Deployment, Services, ServiceAccounts, Roles,
//!    RoleBindings, the leader-election Lease) and the ClusterRoleBindings granting that
//!    namespace's ServiceAccounts, with the ClusterRoles `gantry install` made for them. The
//!    controllers stop first, so nothing adds a finalizer again.
//! 2. Gantry's finalizer is released from every object of its kinds, in every namespace: a
//!    deleted Kustomization then goes without garbage-collecting what it applied, and nothing
//!    hangs in `Terminating` waiting for a controller that is gone.
//! 3. The CustomResourceDefinitions, and with them the custom resources (`--keep-crds` skips it).
//! 4. The namespace (`--keep-namespace` skips it, as Flux's flag of that name does).
//!
//! Gantry's objects are found by the `app.kubernetes.io/name=gantry` label `gantry install`
//! puts on everything; cluster-scoped ones also by naming a ServiceAccount of the namespace, so
//! uninstalling one install leaves another namespace's install alone.

use std::collections::BTreeSet;
use std::process::ExitCode;

use anyhow::Context as _;
use clap::Args;
use gantry_api::meta::FINALIZER;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{Namespace, Service, ServiceAccount};
use k8s_openapi::api::rbac::v1::{ClusterRole, ClusterRoleBinding, Role, RoleBinding};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{Api, ApiResource, DeleteParams, DynamicObject, ListParams, Patch, PatchParams};
use kube::core::GroupVersionKind;
use kube::{Client, Resource};
use serde::de::DeserializeOwned;

use super::install::{DEFAULT_NAMESPACE, NAME};

/// Label `gantry install` puts on every object it makes.
const SELECTOR: &str = "app.kubernetes.io/name=gantry";

#[derive(Debug, Args)]
pub struct UninstallArgs {
    /// Namespace Gantry was installed in.
    #[arg(long, default_value = DEFAULT_NAMESPACE)]
    pub namespace: String,
    /// Keep the namespace (only Gantry's objects in it are deleted).
    #[arg(long)]
    pub keep_namespace: bool,
    /// Keep the CustomResourceDefinitions and the custom resources (finalizers still released):
    /// a later `gantry install` takes them over as they are.
    #[arg(long)]
    pub keep_crds: bool,
    /// Release finalizers only in this namespace: for an install whose `gantry run` watched only
    /// it (`--watch-namespace`). Default: every namespace.
    #[arg(long)]
    pub watch_namespace: Option<String>,
    /// Only print what would be deleted.
    #[arg(long)]
    pub dry_run: bool,
}

pub fn run(args: &UninstallArgs) -> anyhow::Result<ExitCode> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    runtime.block_on(async {
        let client = Client::try_default()
            .await
            .context("connecting to the cluster")?;
        uninstall(&client, args).await
    })?;
    Ok(ExitCode::SUCCESS)
}

/// Everything `gantry uninstall` does, against `client`.
pub async fn uninstall(client: &Client, args: &UninstallArgs) -> anyhow::Result<()> {
    let ns = args.namespace.as_str();
    let verb = if args.dry_run {
        "would delete"
    } else {
        "deleted"
    };
    let deleter = Deleter {
        dry_run: args.dry_run,
        verb,
    };
    // 1. The controllers and their identity.
    deleter
        .labelled(Api::<Deployment>::namespaced(client.clone(), ns))
        .await?;
    deleter
        .labelled(Api::<Service>::namespaced(client.clone(), ns))
        .await?;
    deleter
        .labelled(Api::<RoleBinding>::namespaced(client.clone(), ns))
        .await?;
    deleter
        .labelled(Api::<Role>::namespaced(client.clone(), ns))
        .await?;
    deleter
        .named(
            Api::<Lease>::namespaced(client.clone(), ns),
            &format!("{NAME}-leader-election"),
        )
        .await?;
    let bindings: Api<ClusterRoleBinding> = Api::all(client.clone());
    let mut roles = BTreeSet::new();
    for binding in bindings
        .list(&ListParams::default().labels(SELECTOR))
        .await?
    {
        let ours = binding
            .subjects
            .iter()
            .flatten()
            .any(|s| s.kind == "ServiceAccount" && s.namespace.as_deref() == Some(ns));
        if !ours {
            continue;
        }
        roles.insert(binding.role_ref.name.clone());
        deleter.one(&bindings, &binding).await?;
    }
    let cluster_roles: Api<ClusterRole> = Api::all(client.clone());
    for role in cluster_roles
        .list(&ListParams::default().labels(SELECTOR))
        .await?
    {
        // Only the roles this install's bindings used (never `cluster-admin`: it has no label).
        if role
            .metadata
            .name
            .as_ref()
            .is_some_and(|n| roles.contains(n))
        {
            deleter.one(&cluster_roles, &role).await?;
        }
    }
    deleter
        .labelled(Api::<ServiceAccount>::namespaced(client.clone(), ns))
        .await?;

    // 2. Finalizers released, then 3. the kinds themselves.
    let crds: Api<CustomResourceDefinition> = Api::all(client.clone());
    for crd in gantry_api::crds() {
        let name = crd.metadata.name.clone().unwrap_or_default();
        if crds.get_opt(&name).await?.is_none() {
            continue;
        }
        let Some(version) = crd.spec.versions.iter().find(|v| v.storage) else {
            continue;
        };
        let resource = ApiResource::from_gvk_with_plural(
            &GroupVersionKind::gvk(&crd.spec.group, &version.name, &crd.spec.names.kind),
            &crd.spec.names.plural,
        );
        let api: Api<DynamicObject> = match &args.watch_namespace {
            Some(watched) => Api::namespaced_with(client.clone(), watched, &resource),
            None => Api::all_with(client.clone(), &resource),
        };
        for object in api.list(&ListParams::default()).await? {
            release_finalizer(client, &resource, &object, args.dry_run).await?;
        }
        if !args.keep_crds {
            deleter.named(crds.clone(), &name).await?;
        }
    }

    // 4. The namespace.
    if !args.keep_namespace {
        deleter
            .named(Api::<Namespace>::all(client.clone()), ns)
            .await?;
    }
    if !args.dry_run {
        println!("Gantry is uninstalled; the workloads it applied are left in place.");
    }
    Ok(())
}

/// Removes Gantry's finalizer from `object`, keeping any other.
async fn release_finalizer(
    client: &Client,
    resource: &ApiResource,
    object: &DynamicObject,
    dry_run: bool,
) -> anyhow::Result<()> {
    let finalizers = object.metadata.finalizers.clone().unwrap_or_default();
    if !finalizers.iter().any(|f| f == FINALIZER) {
        return Ok(());
    }
    let name = object.metadata.name.clone().unwrap_or_default();
    let namespace = object.metadata.namespace.clone();
    let what = format!(
        "{}/{}{name}",
        resource.kind,
        namespace
            .as_deref()
            .map(|n| format!("{n}/"))
            .unwrap_or_default()
    );
    if dry_run {
        println!("would release the finalizer of {what}");
        return Ok(());
    }
    let kept: Vec<&String> = finalizers.iter().filter(|f| *f != FINALIZER).collect();
    // Guarded by the resourceVersion: a concurrent change fails instead of being overwritten.
    let patch = serde_json::json!({
        "metadata": {
            "finalizers": kept,
            "resourceVersion": object.metadata.resource_version,
        }
    });
    let api: Api<DynamicObject> = match &namespace {
        Some(ns) => Api::namespaced_with(client.clone(), ns, resource),
        None => Api::all_with(client.clone(), resource),
    };
    match api
        .patch(&name, &PatchParams::default(), &Patch::Merge(&patch))
        .await
    {
        Ok(_) => {}
        // Gone in the meantime: nothing to release.
        Err(kube::Error::Api(status)) if status.code == 404 => return Ok(()),
        Err(err) => return Err(err).with_context(|| format!("releasing the finalizer of {what}")),
    }
    println!("released the finalizer of {what}");
    Ok(())
}

struct Deleter {
    dry_run: bool,
    verb: &'static str,
}

impl Deleter {
    /// Deletes every object of `api` carrying Gantry's label.
    async fn labelled<K>(&self, api: Api<K>) -> anyhow::Result<()>
    where
        K: Resource + Clone + DeserializeOwned + std::fmt::Debug,
        K::DynamicType: Default,
    {
        for object in api.list(&ListParams::default().labels(SELECTOR)).await? {
            self.one(&api, &object).await?;
        }
        Ok(())
    }

    async fn named<K>(&self, api: Api<K>, name: &str) -> anyhow::Result<()>
    where
        K: Resource + Clone + DeserializeOwned + std::fmt::Debug,
        K::DynamicType: Default,
    {
        if let Some(object) = api.get_opt(name).await? {
            self.one(&api, &object).await?;
        }
        Ok(())
    }

    async fn one<K>(&self, api: &Api<K>, object: &K) -> anyhow::Result<()>
    where
        K: Resource + Clone + DeserializeOwned + std::fmt::Debug,
        K::DynamicType: Default,
    {
        let kind = K::kind(&K::DynamicType::default()).to_string();
        let name = object.meta().name.clone().unwrap_or_default();
        let what = match &object.meta().namespace {
            Some(ns) => format!("{kind}/{ns}/{name}"),
            None => format!("{kind}/{name}"),
        };
        if !self.dry_run {
            match api.delete(&name, &DeleteParams::background()).await {
                Ok(_) => {}
                Err(kube::Error::Api(status)) if status.code == 404 => {}
                Err(err) => return Err(err).with_context(|| format!("deleting {what}")),
            }
        }
        println!("{} {what}", self.verb);
        Ok(())
    }
}
