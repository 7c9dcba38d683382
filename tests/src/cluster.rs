//! A Kubernetes client for tests, with blocking calls: the harness is
//! synchronous, the kube client async, so this owns a small runtime.
use std::path::Path;

use anyhow::{bail, Context, Result};
use k8s_openapi::api::{
    core::v1::{Node, Service},
    discovery::v1::EndpointSlice,
};
use kube::{
    api::{DeleteParams, Patch, PatchParams},
    config::{KubeConfigOptions, Kubeconfig},
    Api, Client, Config,
};
use serde::Deserialize;

/// A client for the cluster `kubeconfig` names.
pub async fn client(kubeconfig: &Path) -> Result<Client> {
    let kc = Kubeconfig::read_from(kubeconfig)?;
    let config = Config::from_custom_kubeconfig(kc, &KubeConfigOptions::default()).await?;
    Ok(Client::try_from(config)?)
}

pub struct Cluster {
    rt: tokio::runtime::Runtime,
    client: Client,
}

/// The field manager of every write the tests make.
const MANAGER: &str = "bpfproxy-tests";

impl Cluster {
    pub fn connect(kubeconfig: &Path) -> Result<Self> {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        let client = rt.block_on(client(kubeconfig))?;
        Ok(Self { rt, client })
    }

    /// Server-side applies every Service, EndpointSlice and Node in `yaml`
    /// (several documents, as the harness's manifest builders write them).
    pub fn apply_yaml(&self, yaml: &str) -> Result<()> {
        for doc in serde_yaml::Deserializer::from_str(yaml) {
            let value = serde_yaml::Value::deserialize(doc)?;
            if value.is_null() {
                continue;
            }
            match value["kind"].as_str() {
                Some("Service") => self.apply(&serde_yaml::from_value::<Service>(value)?)?,
                Some("EndpointSlice") => {
                    self.apply(&serde_yaml::from_value::<EndpointSlice>(value)?)?
                }
                Some("Node") => self.apply(&serde_yaml::from_value::<Node>(value)?)?,
                other => bail!("apply_yaml: unsupported kind {other:?}"),
            }
        }
        Ok(())
    }

    fn api<K>(&self, ns: Option<&str>) -> Api<K>
    where
        K: kube::Resource<DynamicType = ()>,
        K::Scope: ApiScope,
    {
        K::Scope::api(self.client.clone(), ns)
    }

    pub fn apply<K>(&self, obj: &K) -> Result<()>
    where
        K: kube::Resource<DynamicType = ()>
            + serde::Serialize
            + serde::de::DeserializeOwned
            + Clone
            + std::fmt::Debug,
        K::Scope: ApiScope,
    {
        self.apply_many(std::slice::from_ref(obj), 1)
    }

    /// Server-side applies `objs`, up to `parallel` requests at a time
    /// (creating tens of thousands of objects one by one takes minutes).
    pub fn apply_many<K>(&self, objs: &[K], parallel: usize) -> Result<()>
    where
        K: kube::Resource<DynamicType = ()>
            + serde::Serialize
            + serde::de::DeserializeOwned
            + Clone
            + std::fmt::Debug,
        K::Scope: ApiScope,
    {
        use futures::{stream, StreamExt, TryStreamExt};
        let pp = PatchParams::apply(MANAGER).force();
        let writes = objs.iter().map(|obj| {
            let meta = obj.meta();
            let name = meta.name.clone();
            let api = self.api::<K>(meta.namespace.as_deref());
            let pp = &pp;
            async move {
                let name = name.context("object without a name")?;
                api.patch(&name, pp, &Patch::Apply(obj))
                    .await
                    .with_context(|| format!("applying {name}"))
            }
        });
        self.rt.block_on(
            stream::iter(writes)
                .buffer_unordered(parallel.max(1))
                .try_for_each(|_| async { Ok(()) }),
        )
    }

    /// Deletes `namespace/name` of kind K; a missing object is fine.
    pub fn delete<K>(&self, namespace: Option<&str>, name: &str) -> Result<()>
    where
        K: kube::Resource<DynamicType = ()> + serde::de::DeserializeOwned + Clone + std::fmt::Debug,
        K::Scope: ApiScope,
    {
        let api = self.api::<K>(namespace);
        match self.rt.block_on(api.delete(name, &DeleteParams::default())) {
            Ok(_) => Ok(()),
            Err(kube::Error::Api(e)) if e.code == 404 => Ok(()),
            Err(e) => Err(e).with_context(|| format!("deleting {name}")),
        }
    }

    pub fn get<K>(&self, namespace: Option<&str>, name: &str) -> Result<K>
    where
        K: kube::Resource<DynamicType = ()> + serde::de::DeserializeOwned + Clone + std::fmt::Debug,
        K::Scope: ApiScope,
    {
        let api = self.api::<K>(namespace);
        Ok(self.rt.block_on(api.get(name))?)
    }
}

/// Picks the right `Api` constructor for namespaced and cluster objects.
pub trait ApiScope {
    fn api<K: kube::Resource<DynamicType = (), Scope = Self>>(
        client: Client,
        ns: Option<&str>,
    ) -> Api<K>;
}

impl ApiScope for k8s_openapi::NamespaceResourceScope {
    fn api<K: kube::Resource<DynamicType = (), Scope = Self>>(
        client: Client,
        ns: Option<&str>,
    ) -> Api<K> {
        Api::namespaced(client, ns.unwrap_or("default"))
    }
}

impl ApiScope for k8s_openapi::ClusterResourceScope {
    fn api<K: kube::Resource<DynamicType = (), Scope = Self>>(
        client: Client,
        _ns: Option<&str>,
    ) -> Api<K> {
        Api::all(client)
    }
}
