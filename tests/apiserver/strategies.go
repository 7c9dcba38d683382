package main

// Registry strategies: the per-resource hooks the generic store calls on
// create/update (defaulting, validation). kube-apiserver's real strategies
// live in k8s.io/kubernetes (not packaged); these are small stand-ins that
// keep the wire behaviour a client can observe close to the real thing
// (defaults filled in, obviously invalid objects rejected with 422).

import (
	"context"

	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	apiequality "k8s.io/apimachinery/pkg/api/equality"
	"k8s.io/apimachinery/pkg/api/meta"
	apimachineryvalidation "k8s.io/apimachinery/pkg/api/validation"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/util/validation/field"
	"k8s.io/apiserver/pkg/storage"
	"k8s.io/apiserver/pkg/storage/names"
)

var (
	dns1123Label     = apimachineryvalidation.NameIsDNSLabel
	dns1123Subdomain = apimachineryvalidation.NameIsDNSSubdomain
	dns1035Label     = apimachineryvalidation.NameIsDNS1035Label
)

// strategy implements rest.RESTCreateStrategy, RESTUpdateStrategy and
// RESTDeleteStrategy with optional per-resource functions.
type strategy struct {
	runtime.ObjectTyper
	names.NameGenerator
	namespaced bool
	nameFn     apimachineryvalidation.ValidateNameFunc

	prepareCreate func(obj runtime.Object)
	prepareUpdate func(obj, old runtime.Object)
	validate      func(obj runtime.Object) field.ErrorList
	validateUpd   func(obj, old runtime.Object) field.ErrorList
}

func plainStrategy(namespaced bool, nameFn apimachineryvalidation.ValidateNameFunc) *strategy {
	return &strategy{ObjectTyper: Scheme, NameGenerator: names.SimpleNameGenerator, namespaced: namespaced, nameFn: nameFn}
}

func (s *strategy) NamespaceScoped() bool { return s.namespaced }

func (s *strategy) PrepareForCreate(_ context.Context, obj runtime.Object) {
	if s.prepareCreate != nil {
		s.prepareCreate(obj)
	}
}

func (s *strategy) PrepareForUpdate(_ context.Context, obj, old runtime.Object) {
	if s.prepareUpdate != nil {
		s.prepareUpdate(obj, old)
	}
}

// Validate checks the name with the resource's real naming rule (the
// generic layer only checks it is a valid path segment) plus spec rules.
func (s *strategy) Validate(_ context.Context, obj runtime.Object) field.ErrorList {
	var errs field.ErrorList
	if m, err := meta.Accessor(obj); err == nil && s.nameFn != nil {
		for _, msg := range s.nameFn(m.GetName(), false) {
			errs = append(errs, field.Invalid(field.NewPath("metadata", "name"), m.GetName(), msg))
		}
	}
	if s.validate != nil {
		errs = append(errs, s.validate(obj)...)
	}
	return errs
}

func (s *strategy) ValidateUpdate(_ context.Context, obj, old runtime.Object) field.ErrorList {
	var errs field.ErrorList
	if s.validate != nil {
		errs = append(errs, s.validate(obj)...)
	}
	if s.validateUpd != nil {
		errs = append(errs, s.validateUpd(obj, old)...)
	}
	return errs
}

func (s *strategy) WarningsOnCreate(context.Context, runtime.Object) []string { return nil }
func (s *strategy) WarningsOnUpdate(context.Context, runtime.Object, runtime.Object) []string {
	return nil
}
func (s *strategy) Canonicalize(runtime.Object)    {}
func (s *strategy) AllowCreateOnUpdate() bool      { return false } // PUT does not create (server-side apply still does)
func (s *strategy) AllowUnconditionalUpdate() bool { return true }  // PUT without resourceVersion is allowed, as in kube

func storageAttrFunc(namespaced bool) storage.AttrFunc {
	if namespaced {
		return storage.DefaultNamespaceScopedAttr // metadata.name / metadata.namespace field selectors
	}
	return storage.DefaultClusterScopedAttr
}

func metaNamespace(obj runtime.Object) (string, error) {
	m, err := meta.Accessor(obj)
	if err != nil {
		return "", err
	}
	return m.GetNamespace(), nil
}

// --- Namespace --------------------------------------------------------------
// Like kube: status.phase=Active and the kubernetes.io/metadata.name label.
// No spec.finalizers (there is no namespace controller to remove them), so
// a delete removes the namespace at once (its contents stay).
func namespaceStrategy() *strategy {
	s := plainStrategy(false, dns1123Label)
	fix := func(ns *corev1.Namespace) {
		if ns.Status.Phase == "" {
			ns.Status.Phase = corev1.NamespaceActive
		}
		if ns.Labels == nil {
			ns.Labels = map[string]string{}
		}
		ns.Labels[corev1.LabelMetadataName] = ns.Name
	}
	s.prepareCreate = func(obj runtime.Object) { fix(obj.(*corev1.Namespace)) }
	s.prepareUpdate = func(obj, _ runtime.Object) { fix(obj.(*corev1.Namespace)) }
	return s
}

// --- Endpoints (v1) ---------------------------------------------------------
func endpointsStrategy() *strategy {
	s := plainStrategy(true, dns1123Subdomain)
	def := func(obj runtime.Object) {
		ep := obj.(*corev1.Endpoints)
		for i := range ep.Subsets {
			for j := range ep.Subsets[i].Ports {
				if ep.Subsets[i].Ports[j].Protocol == "" {
					ep.Subsets[i].Ports[j].Protocol = corev1.ProtocolTCP
				}
			}
		}
	}
	s.prepareCreate = def
	s.prepareUpdate = func(obj, _ runtime.Object) { def(obj) }
	return s
}

// --- EndpointSlice (discovery.k8s.io/v1) ------------------------------------
// Defaults as in kube (port name "" and protocol TCP), generation bumped
// when the content changes, a few basic validation rules.
func endpointSliceStrategy() *strategy {
	s := plainStrategy(true, dns1123Subdomain)
	def := func(es *discoveryv1.EndpointSlice) {
		for i := range es.Ports {
			if es.Ports[i].Name == nil {
				empty := ""
				es.Ports[i].Name = &empty
			}
			if es.Ports[i].Protocol == nil {
				tcp := corev1.ProtocolTCP
				es.Ports[i].Protocol = &tcp
			}
		}
	}
	s.prepareCreate = func(obj runtime.Object) {
		es := obj.(*discoveryv1.EndpointSlice)
		def(es)
		es.Generation = 1
	}
	s.prepareUpdate = func(obj, old runtime.Object) {
		es, o := obj.(*discoveryv1.EndpointSlice), old.(*discoveryv1.EndpointSlice)
		def(es)
		if !apiequality.Semantic.DeepEqual(es.Endpoints, o.Endpoints) ||
			!apiequality.Semantic.DeepEqual(es.Ports, o.Ports) || es.AddressType != o.AddressType {
			es.Generation = o.Generation + 1
		}
	}
	s.validate = func(obj runtime.Object) field.ErrorList {
		es := obj.(*discoveryv1.EndpointSlice)
		var errs field.ErrorList
		switch es.AddressType {
		case discoveryv1.AddressTypeIPv4, discoveryv1.AddressTypeIPv6, discoveryv1.AddressTypeFQDN:
		case "":
			errs = append(errs, field.Required(field.NewPath("addressType"), ""))
		default:
			errs = append(errs, field.NotSupported(field.NewPath("addressType"), es.AddressType,
				[]string{"IPv4", "IPv6", "FQDN"}))
		}
		for i, ep := range es.Endpoints {
			p := field.NewPath("endpoints").Index(i).Child("addresses")
			if len(ep.Addresses) < 1 || len(ep.Addresses) > 100 {
				errs = append(errs, field.Invalid(p, len(ep.Addresses), "must contain between 1 and 100 addresses"))
			}
		}
		for i, port := range es.Ports {
			if port.Port != nil && (*port.Port < 0 || *port.Port > 65535) {
				errs = append(errs, field.Invalid(field.NewPath("ports").Index(i).Child("port"), *port.Port, "must be between 0 and 65535"))
			}
		}
		return errs
	}
	s.validateUpd = func(obj, old runtime.Object) field.ErrorList {
		es, o := obj.(*discoveryv1.EndpointSlice), old.(*discoveryv1.EndpointSlice)
		if es.AddressType != o.AddressType {
			return field.ErrorList{field.Invalid(field.NewPath("addressType"), es.AddressType, "field is immutable")}
		}
		return nil
	}
	return s
}
