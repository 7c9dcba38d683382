//! Services and EndpointSlices as the agent keeps them: parsed once, when
//! a source receives them, into the parts the model reads, with the skips
//! that parsing found.
//!
//! The API types are large even when stripped (a Service is 824 bytes
//! before its strings, an EndpointSlice endpoint 352 bytes, a label map a
//! 544-byte node), and the sources cache every object; at 10k Services
//! they were most of the agent's memory. Parsing once also takes the
//! address parsing and validation out of every rebuild.
//!
//! What a Service means can still depend on the agent's settings (whose
//! proxy it is for, via its service-proxy-name label): that part is left
//! to the build, which gets the settings.
use std::{borrow::Cow, sync::Arc};

use k8s_openapi::api::{core::v1::Service, discovery::v1::EndpointSlice};

use super::{
    namespaced_name,
    service::{parse_service, ServiceInfo},
    skip::{skip, SkipReason},
    slices::{parse_slice, service_label, UsableSlice},
    ModelConfig, ServiceRef, Skip,
};

/// Services carrying this label belong to the proxy it names; kube-proxy
/// ignores them unless the name is its own.
const SERVICE_PROXY_NAME_LABEL: &str = "service.kubernetes.io/service-proxy-name";

/// A Service, parsed.
#[derive(Clone, Debug)]
pub struct ServiceObject {
    /// `(namespace, name)`; the name is empty for an unnamed object.
    key: ServiceRef,
    /// The service-proxy-name label.
    proxy_name: Option<String>,
    info: Option<ServiceInfo>,
    skips: Vec<Skip>,
}

impl ServiceObject {
    pub fn new(svc: &Service) -> Self {
        let mut skips = Vec::new();
        let Some((namespace, name)) = namespaced_name(&svc.metadata) else {
            skips.push(skip("Service", "<unnamed>", SkipReason::MissingName, ""));
            return ServiceObject {
                key: (namespace_of(&svc.metadata).into(), "".into()),
                proxy_name: None,
                info: None,
                skips,
            };
        };
        let obj = format!("{namespace}/{name}");
        let info = parse_service(svc, &obj, &mut skips);
        let proxy_name = svc
            .metadata
            .labels
            .as_ref()
            .and_then(|l| l.get(SERVICE_PROXY_NAME_LABEL).cloned());
        skips.shrink_to_fit();
        ServiceObject {
            key: (namespace.into(), name.into()),
            proxy_name,
            info,
            skips,
        }
    }

    /// `(namespace, name)`, None for an unnamed object.
    pub fn key(&self) -> Option<&ServiceRef> {
        (!self.key.1.is_empty()).then_some(&self.key)
    }

    /// Whether this agent (proxy name `config.proxy_name`) handles the
    /// Service: unlabelled ones, and those labelled with its name.
    fn ours(&self, config: &ModelConfig) -> bool {
        self.proxy_name.is_none() || self.proxy_name == config.proxy_name
    }

    /// What the build uses under `config`: the parsed Service (None:
    /// nothing to program) and its skips (none for another proxy's).
    pub(super) fn parsed(&self, config: &ModelConfig) -> (Option<&ServiceInfo>, &[Skip]) {
        if self.ours(config) {
            (self.info.as_ref(), &self.skips)
        } else {
            (None, &[])
        }
    }
}

/// An EndpointSlice, parsed.
#[derive(Clone, Debug)]
pub struct SliceObject {
    namespace: String,
    /// Empty for an unnamed object.
    name: String,
    /// Its Service (the kubernetes.io/service-name label in the slice's
    /// namespace), for a named slice.
    service: Option<ServiceRef>,
    usable: Option<UsableSlice>,
    skips: Vec<Skip>,
}

impl SliceObject {
    pub fn new(slice: &EndpointSlice) -> Self {
        let mut skips = Vec::new();
        let Some((namespace, name)) = namespaced_name(&slice.metadata) else {
            skips.push(skip(
                "EndpointSlice",
                "<unnamed>",
                SkipReason::MissingName,
                "",
            ));
            return SliceObject {
                namespace: namespace_of(&slice.metadata),
                name: String::new(),
                service: None,
                usable: None,
                skips,
            };
        };
        let obj = format!("{namespace}/{name}");
        let usable = parse_slice(slice, &obj, &mut skips);
        skips.shrink_to_fit();
        SliceObject {
            namespace: namespace.to_string(),
            name: name.to_string(),
            service: service_label(slice).map(|s| (namespace.into(), s.into())),
            usable,
            skips,
        }
    }

    /// `(namespace, Service name)` of the Service the slice belongs to, if
    /// it is named and labelled.
    pub fn service(&self) -> Option<ServiceRef> {
        self.service.clone()
    }

    /// The slice's parts the proxy uses (None: unusable or FQDN).
    pub(super) fn usable(&self) -> Option<&UsableSlice> {
        self.usable.as_ref()
    }

    /// What parsing found wrong with the slice.
    pub(super) fn skips(&self) -> &[Skip] {
        &self.skips
    }
}

/// The object's namespace (`default` when missing), kept for the
/// source's cache even when the object is unnamed.
fn namespace_of(meta: &k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta) -> String {
    meta.namespace.clone().unwrap_or_else(|| "default".into())
}

/// The sources' caches (kube-runtime's reflector store) key objects by
/// kind, namespace and name; these say them for the parsed forms, without
/// a resource version or uid (the store keeps no copy of those strings).
macro_rules! lookup {
    ($object:ty, $api:ty, $name:ident) => {
        impl kube::runtime::reflector::Lookup for $object {
            type DynamicType = ();

            fn kind(_: &()) -> Cow<'_, str> {
                <$api as kube::Resource>::kind(&())
            }

            fn group(_: &()) -> Cow<'_, str> {
                <$api as kube::Resource>::group(&())
            }

            fn version(_: &()) -> Cow<'_, str> {
                <$api as kube::Resource>::version(&())
            }

            fn plural(_: &()) -> Cow<'_, str> {
                <$api as kube::Resource>::plural(&())
            }

            fn name(&self) -> Option<Cow<'_, str>> {
                Some(Cow::Borrowed(self.$name()))
            }

            fn namespace(&self) -> Option<Cow<'_, str>> {
                Some(Cow::Borrowed(self.namespace()))
            }

            fn resource_version(&self) -> Option<Cow<'_, str>> {
                None
            }

            fn uid(&self) -> Option<Cow<'_, str>> {
                None
            }
        }
    };
}

impl ServiceObject {
    fn object_name(&self) -> &str {
        &self.key.1
    }

    fn namespace(&self) -> &str {
        &self.key.0
    }
}

impl SliceObject {
    fn object_name(&self) -> &str {
        &self.name
    }

    fn namespace(&self) -> &str {
        &self.namespace
    }
}

lookup!(ServiceObject, Service, object_name);
lookup!(SliceObject, EndpointSlice, object_name);

/// Parsed forms of `services`, shared as the sources share them.
pub fn service_objects<'a>(
    services: impl IntoIterator<Item = &'a Service>,
) -> Vec<Arc<ServiceObject>> {
    services
        .into_iter()
        .map(|s| Arc::new(ServiceObject::new(s)))
        .collect()
}

/// Parsed forms of `slices`, shared as the sources share them.
pub fn slice_objects<'a>(
    slices: impl IntoIterator<Item = &'a EndpointSlice>,
) -> Vec<Arc<SliceObject>> {
    slices
        .into_iter()
        .map(|s| Arc::new(SliceObject::new(s)))
        .collect()
}

#[cfg(test)]
mod tests;
