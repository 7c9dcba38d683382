package main

// Services: defaulting, validation and ClusterIP / NodePort allocation.
//
// kube-apiserver's Service registry (k8s.io/kubernetes/pkg/registry/core/
// service) is not available as a library, so this is a deliberately small
// re-implementation of what a kube-proxy replacement can observe:
//
//   - defaults: type ClusterIP, sessionAffinity None (ClientIP timeout 10800),
//     ipFamilies [IPv4], ipFamilyPolicy SingleStack, internalTrafficPolicy
//     Cluster, externalTrafficPolicy Cluster (NodePort/LB),
//     allocateLoadBalancerNodePorts true (LB), port protocol TCP,
//     targetPort = port;
//   - spec.clusterIP allocated from --service-cidr when empty (not for
//     ExternalName or "None"); .1 is reserved for default/kubernetes;
//     clusterIPs = [clusterIP];
//   - nodePorts from 30000-32767 for NodePort/LoadBalancer ports lacking one
//     (same port number with another protocol shares the nodePort, as in
//     kube), healthCheckNodePort for LoadBalancer + externalTrafficPolicy
//     Local;
//   - updates: empty clusterIP/nodePort are taken from the old object,
//     a changed clusterIP is rejected ("field is immutable"), fields that
//     the new type does not use are cleared and released.
//
// Allocation is "next free after the last one handed out" (deterministic
// per server run, no immediate reuse of a just-freed IP). The allocator is
// in memory: this process is the only writer, and on first use it is seeded
// from the Services already in etcd, so a restart against old data works.

import (
	"context"
	"encoding/binary"
	"fmt"
	"net"
	"sync"

	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metainternalversion "k8s.io/apimachinery/pkg/apis/meta/internalversion"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/util/intstr"
	"k8s.io/apimachinery/pkg/util/sets"
	"k8s.io/apimachinery/pkg/util/validation/field"
	genericapirequest "k8s.io/apiserver/pkg/endpoints/request"
	genericregistry "k8s.io/apiserver/pkg/registry/generic/registry"
	"k8s.io/apiserver/pkg/registry/rest"
)

const (
	nodePortMin = 30000
	nodePortMax = 32767
)

type serviceAllocator struct {
	mu    sync.Mutex
	store *genericregistry.Store

	base   uint32 // network address of the service CIDR
	size   uint32 // number of addresses in the CIDR
	cidr   *net.IPNet
	inited bool

	ips      map[uint32]bool // offsets in use
	ports    map[int32]bool  // node ports in use
	nextIP   uint32
	nextPort int32
}

// allocation records what one request took, so it can be given back.
type allocation struct {
	ips   []uint32
	ports []int32
}

func newServiceAllocator(cidr string) (*serviceAllocator, error) {
	_, n, err := net.ParseCIDR(cidr)
	if err != nil {
		return nil, fmt.Errorf("--service-cidr: %w", err)
	}
	ip4 := n.IP.To4()
	ones, bits := n.Mask.Size()
	if ip4 == nil || bits != 32 {
		return nil, fmt.Errorf("--service-cidr %s: only IPv4 is supported", cidr)
	}
	if ones > 29 {
		return nil, fmt.Errorf("--service-cidr %s: too small", cidr)
	}
	return &serviceAllocator{
		base: binary.BigEndian.Uint32(ip4), size: 1 << (32 - ones), cidr: n,
		ips: map[uint32]bool{}, ports: map[int32]bool{},
		nextIP: 2, nextPort: nodePortMin,
	}, nil
}

// attach installs the allocation hooks on the Service store.
func (a *serviceAllocator) attach(store *genericregistry.Store) {
	a.store = store
	store.BeginCreate = a.beginCreate
	store.BeginUpdate = a.beginUpdate
	store.AfterDelete = func(obj runtime.Object, _ *metav1.DeleteOptions) {
		if svc, ok := obj.(*corev1.Service); ok {
			a.mu.Lock()
			a.release(a.owned(svc))
			a.mu.Unlock()
		}
	}
}

func (a *serviceAllocator) ipOffset(s string) (uint32, bool) {
	ip := net.ParseIP(s)
	if ip == nil || ip.To4() == nil || !a.cidr.Contains(ip) {
		return 0, false
	}
	return binary.BigEndian.Uint32(ip.To4()) - a.base, true
}

func (a *serviceAllocator) ipString(off uint32) string {
	b := make(net.IP, 4)
	binary.BigEndian.PutUint32(b, a.base+off)
	return b.String()
}

// owned lists what a stored Service holds.
func (a *serviceAllocator) owned(svc *corev1.Service) allocation {
	var al allocation
	for _, ip := range clusterIPsOf(svc) {
		if off, ok := a.ipOffset(ip); ok {
			al.ips = append(al.ips, off)
		}
	}
	for _, p := range svc.Spec.Ports {
		if p.NodePort != 0 {
			al.ports = append(al.ports, p.NodePort)
		}
	}
	if svc.Spec.HealthCheckNodePort != 0 {
		al.ports = append(al.ports, svc.Spec.HealthCheckNodePort)
	}
	return al
}

func clusterIPsOf(svc *corev1.Service) []string {
	if len(svc.Spec.ClusterIPs) > 0 {
		return svc.Spec.ClusterIPs
	}
	if svc.Spec.ClusterIP != "" {
		return []string{svc.Spec.ClusterIP}
	}
	return nil
}

// ensureInit seeds the in-use sets from etcd (once). Caller holds a.mu.
func (a *serviceAllocator) ensureInit(ctx context.Context) error {
	if a.inited {
		return nil
	}
	ctx = genericapirequest.WithNamespace(ctx, metav1.NamespaceAll)
	obj, err := a.store.List(ctx, &metainternalversion.ListOptions{})
	if err != nil {
		return fmt.Errorf("seeding service allocator: %w", err)
	}
	for i := range obj.(*corev1.ServiceList).Items {
		al := a.owned(&obj.(*corev1.ServiceList).Items[i])
		for _, ip := range al.ips {
			a.ips[ip] = true
		}
		for _, p := range al.ports {
			a.ports[p] = true
		}
	}
	a.inited = true
	return nil
}

func (a *serviceAllocator) release(al allocation) {
	for _, ip := range al.ips {
		delete(a.ips, ip)
	}
	for _, p := range al.ports {
		delete(a.ports, p)
	}
}

func (a *serviceAllocator) allocIP(al *allocation) (string, error) {
	for i := uint32(0); i < a.size; i++ {
		off := (a.nextIP + i) % a.size
		// skip network, broadcast and .1 (reserved for default/kubernetes)
		if off == 0 || off == 1 || off == a.size-1 || a.ips[off] {
			continue
		}
		a.ips[off] = true
		a.nextIP = off + 1
		al.ips = append(al.ips, off)
		return a.ipString(off), nil
	}
	return "", fmt.Errorf("no free ClusterIP left in %s", a.cidr)
}

func (a *serviceAllocator) allocPort(al *allocation) (int32, error) {
	n := int32(nodePortMax - nodePortMin + 1)
	for i := int32(0); i < n; i++ {
		p := nodePortMin + (a.nextPort-nodePortMin+i)%n
		if a.ports[p] {
			continue
		}
		a.ports[p] = true
		a.nextPort = p + 1
		al.ports = append(al.ports, p)
		return p, nil
	}
	return 0, fmt.Errorf("no free NodePort left in %d-%d", nodePortMin, nodePortMax)
}

func usesNodePorts(svc *corev1.Service) bool {
	switch svc.Spec.Type {
	case corev1.ServiceTypeNodePort:
		return true
	case corev1.ServiceTypeLoadBalancer:
		return svc.Spec.AllocateLoadBalancerNodePorts == nil || *svc.Spec.AllocateLoadBalancerNodePorts
	}
	return false
}

func needsHealthCheckPort(svc *corev1.Service) bool {
	return svc.Spec.Type == corev1.ServiceTypeLoadBalancer &&
		svc.Spec.ExternalTrafficPolicy == corev1.ServiceExternalTrafficPolicyLocal
}

// defaultService fills in the API defaults (kube's SetDefaults_Service et al.).
func defaultService(svc *corev1.Service) {
	sp := &svc.Spec
	if sp.Type == "" {
		sp.Type = corev1.ServiceTypeClusterIP
	}
	if sp.SessionAffinity == "" {
		sp.SessionAffinity = corev1.ServiceAffinityNone
	}
	if sp.SessionAffinity == corev1.ServiceAffinityClientIP {
		if sp.SessionAffinityConfig == nil {
			sp.SessionAffinityConfig = &corev1.SessionAffinityConfig{}
		}
		if sp.SessionAffinityConfig.ClientIP == nil {
			sp.SessionAffinityConfig.ClientIP = &corev1.ClientIPConfig{}
		}
		if sp.SessionAffinityConfig.ClientIP.TimeoutSeconds == nil {
			t := corev1.DefaultClientIPServiceAffinitySeconds
			sp.SessionAffinityConfig.ClientIP.TimeoutSeconds = &t
		}
	}
	for i := range sp.Ports {
		p := &sp.Ports[i]
		if p.Protocol == "" {
			p.Protocol = corev1.ProtocolTCP
		}
		if (p.TargetPort.Type == intstr.Int && p.TargetPort.IntVal == 0) ||
			(p.TargetPort.Type == intstr.String && p.TargetPort.StrVal == "") {
			p.TargetPort = intstr.FromInt32(p.Port)
		}
	}
	if sp.Type != corev1.ServiceTypeExternalName {
		if sp.InternalTrafficPolicy == nil {
			c := corev1.ServiceInternalTrafficPolicyCluster
			sp.InternalTrafficPolicy = &c
		}
		if len(sp.IPFamilies) == 0 {
			sp.IPFamilies = []corev1.IPFamily{corev1.IPv4Protocol}
		}
		if sp.IPFamilyPolicy == nil {
			p := corev1.IPFamilyPolicySingleStack
			sp.IPFamilyPolicy = &p
		}
	}
	if (sp.Type == corev1.ServiceTypeNodePort || sp.Type == corev1.ServiceTypeLoadBalancer) && sp.ExternalTrafficPolicy == "" {
		sp.ExternalTrafficPolicy = corev1.ServiceExternalTrafficPolicyCluster
	}
	if sp.Type == corev1.ServiceTypeLoadBalancer && sp.AllocateLoadBalancerNodePorts == nil {
		t := true
		sp.AllocateLoadBalancerNodePorts = &t
	}
	if sp.ClusterIP == "" && len(sp.ClusterIPs) > 0 {
		sp.ClusterIP = sp.ClusterIPs[0]
	}
	if sp.ClusterIP != "" && len(sp.ClusterIPs) == 0 {
		sp.ClusterIPs = []string{sp.ClusterIP}
	}
}

// dropUnusedFields clears what the (possibly changed) type does not use.
func dropUnusedFields(svc *corev1.Service) {
	sp := &svc.Spec
	if sp.Type == corev1.ServiceTypeExternalName {
		sp.ClusterIP, sp.ClusterIPs = "", nil
	}
	if !usesNodePorts(svc) {
		// kube keeps explicitly-set nodePorts on LB with
		// allocateLoadBalancerNodePorts=false; only clear for other types.
		if sp.Type != corev1.ServiceTypeLoadBalancer {
			for i := range sp.Ports {
				sp.Ports[i].NodePort = 0
			}
		}
	}
	if sp.Type != corev1.ServiceTypeNodePort && sp.Type != corev1.ServiceTypeLoadBalancer {
		sp.ExternalTrafficPolicy = ""
	}
	if sp.Type != corev1.ServiceTypeLoadBalancer {
		sp.AllocateLoadBalancerNodePorts = nil
	}
	if !needsHealthCheckPort(svc) {
		sp.HealthCheckNodePort = 0
	}
}

// assign allocates everything still missing; explicit values are reserved
// (if free). Caller holds a.mu. Everything taken is recorded in al.
func (a *serviceAllocator) assign(svc *corev1.Service, old *corev1.Service, al *allocation) *apierrors.StatusError {
	sp := &svc.Spec
	invalid := func(p *field.Path, v interface{}, msg string) *apierrors.StatusError {
		return apierrors.NewInvalid(corev1.SchemeGroupVersion.WithKind("Service").GroupKind(), svc.Name,
			field.ErrorList{field.Invalid(p, v, msg)})
	}
	// What the old object already owns can be kept without a check.
	oldIPs, oldPorts := sets.New[string](), sets.New[int32]()
	if old != nil {
		oldIPs.Insert(clusterIPsOf(old)...)
		for _, p := range a.owned(old).ports {
			oldPorts.Insert(p)
		}
	}
	reservePort := func(p *field.Path, port int32) *apierrors.StatusError {
		if port < nodePortMin || port > nodePortMax {
			return invalid(p, port, fmt.Sprintf("provided port is not in the valid range. The range of valid ports is %d-%d", nodePortMin, nodePortMax))
		}
		if oldPorts.Has(port) {
			return nil
		}
		if a.ports[port] {
			return invalid(p, port, "provided port is already allocated")
		}
		a.ports[port] = true
		al.ports = append(al.ports, port)
		oldPorts.Insert(port) // may be shared by another protocol of the same service
		return nil
	}

	// ClusterIP
	if sp.Type != corev1.ServiceTypeExternalName && sp.ClusterIP != corev1.ClusterIPNone {
		if sp.ClusterIP == "" {
			ip, err := a.allocIP(al)
			if err != nil {
				return apierrors.NewInternalError(err)
			}
			sp.ClusterIP, sp.ClusterIPs = ip, []string{ip}
		} else if !oldIPs.Has(sp.ClusterIP) {
			p := field.NewPath("spec", "clusterIPs").Index(0)
			off, ok := a.ipOffset(sp.ClusterIP)
			if !ok {
				return invalid(p, sp.ClusterIP, fmt.Sprintf("failed to allocate IP %s: provided IP is not in the valid range. The range of valid IPs is %s", sp.ClusterIP, a.cidr))
			}
			if a.ips[off] {
				return invalid(p, sp.ClusterIP, fmt.Sprintf("failed to allocate IP %s: provided IP is already allocated", sp.ClusterIP))
			}
			a.ips[off] = true
			al.ips = append(al.ips, off)
		}
	}
	// NodePorts: explicit first (so allocation does not hand them out).
	if usesNodePorts(svc) || sp.Type == corev1.ServiceTypeLoadBalancer {
		for i := range sp.Ports {
			if sp.Ports[i].NodePort != 0 {
				if err := reservePort(field.NewPath("spec", "ports").Index(i).Child("nodePort"), sp.Ports[i].NodePort); err != nil {
					return err
				}
			}
		}
	}
	if usesNodePorts(svc) {
		byPort := map[int32]int32{} // same port number, other protocol -> same nodePort
		for _, p := range sp.Ports {
			if p.NodePort != 0 {
				byPort[p.Port] = p.NodePort
			}
		}
		for i := range sp.Ports {
			p := &sp.Ports[i]
			if p.NodePort != 0 {
				continue
			}
			if np, ok := byPort[p.Port]; ok {
				p.NodePort = np
				continue
			}
			np, err := a.allocPort(al)
			if err != nil {
				return apierrors.NewInternalError(err)
			}
			p.NodePort, byPort[p.Port] = np, np
		}
	}
	if needsHealthCheckPort(svc) {
		if sp.HealthCheckNodePort != 0 {
			if err := reservePort(field.NewPath("spec", "healthCheckNodePort"), sp.HealthCheckNodePort); err != nil {
				return err
			}
		} else {
			np, err := a.allocPort(al)
			if err != nil {
				return apierrors.NewInternalError(err)
			}
			sp.HealthCheckNodePort = np
		}
	}
	return nil
}

// beginCreate runs before the generic create path (and thus before the
// strategy's Validate): default, then allocate. The returned finish func
// gives everything back if the create fails or is a dry run.
func (a *serviceAllocator) beginCreate(ctx context.Context, obj runtime.Object, opts *metav1.CreateOptions) (genericregistry.FinishFunc, error) {
	svc := obj.(*corev1.Service)
	defaultService(svc)
	dropUnusedFields(svc)
	if errs := validateService(svc); len(errs) > 0 {
		// Validate early: do not allocate for objects that will be rejected.
		return nil, apierrors.NewInvalid(corev1.SchemeGroupVersion.WithKind("Service").GroupKind(), svc.Name, errs)
	}
	a.mu.Lock()
	defer a.mu.Unlock()
	if err := a.ensureInit(ctx); err != nil {
		return nil, err
	}
	var al allocation
	if err := a.assign(svc, nil, &al); err != nil {
		a.release(al)
		return nil, err
	}
	dry := opts != nil && len(opts.DryRun) > 0
	return func(_ context.Context, success bool) {
		if !success || dry {
			a.mu.Lock()
			a.release(al)
			a.mu.Unlock()
		}
	}, nil
}

// beginUpdate: keep what the old object had when the new one leaves it
// empty (PUT of a manifest without clusterIP), allocate what a type change
// needs, release what is no longer used.
func (a *serviceAllocator) beginUpdate(ctx context.Context, obj, oldObj runtime.Object, opts *metav1.UpdateOptions) (genericregistry.FinishFunc, error) {
	svc, old := obj.(*corev1.Service), oldObj.(*corev1.Service)
	defaultService(svc)
	if svc.Spec.Type != corev1.ServiceTypeExternalName && svc.Spec.ClusterIP == "" && len(svc.Spec.ClusterIPs) == 0 {
		svc.Spec.ClusterIP, svc.Spec.ClusterIPs = old.Spec.ClusterIP, old.Spec.ClusterIPs
	}
	if usesNodePorts(svc) {
		prev := map[string]int32{}
		for _, p := range old.Spec.Ports {
			prev[fmt.Sprintf("%s/%d", p.Protocol, p.Port)] = p.NodePort
		}
		for i := range svc.Spec.Ports {
			p := &svc.Spec.Ports[i]
			if p.NodePort == 0 {
				p.NodePort = prev[fmt.Sprintf("%s/%d", p.Protocol, p.Port)]
			}
		}
	}
	if needsHealthCheckPort(svc) && svc.Spec.HealthCheckNodePort == 0 {
		svc.Spec.HealthCheckNodePort = old.Spec.HealthCheckNodePort
	}
	dropUnusedFields(svc)
	if errs := validateService(svc); len(errs) > 0 {
		return nil, apierrors.NewInvalid(corev1.SchemeGroupVersion.WithKind("Service").GroupKind(), svc.Name, errs)
	}
	if old.Spec.ClusterIP != "" && old.Spec.ClusterIP != corev1.ClusterIPNone &&
		svc.Spec.ClusterIP != "" && svc.Spec.ClusterIP != old.Spec.ClusterIP {
		return nil, apierrors.NewInvalid(corev1.SchemeGroupVersion.WithKind("Service").GroupKind(), svc.Name,
			field.ErrorList{field.Invalid(field.NewPath("spec", "clusterIPs").Index(0), svc.Spec.ClusterIP, "may not change once set")})
	}
	a.mu.Lock()
	defer a.mu.Unlock()
	if err := a.ensureInit(ctx); err != nil {
		return nil, err
	}
	var al allocation
	if err := a.assign(svc, old, &al); err != nil {
		a.release(al)
		return nil, err
	}
	dry := opts != nil && len(opts.DryRun) > 0
	return func(_ context.Context, success bool) {
		a.mu.Lock()
		defer a.mu.Unlock()
		if !success || dry {
			a.release(al)
			return
		}
		// Give back what the old object held and the new one does not.
		now := a.owned(svc)
		keepIPs, keepPorts := sets.New(now.ips...), sets.New(now.ports...)
		var gone allocation
		for _, ip := range a.owned(old).ips {
			if !keepIPs.Has(ip) {
				gone.ips = append(gone.ips, ip)
			}
		}
		for _, p := range a.owned(old).ports {
			if !keepPorts.Has(p) {
				gone.ports = append(gone.ports, p)
			}
		}
		a.release(gone)
	}, nil
}

// validateService: the structural subset of kube's ValidateService that
// matters for a proxy.
func validateService(svc *corev1.Service) field.ErrorList {
	var errs field.ErrorList
	sp := &svc.Spec
	spec := field.NewPath("spec")
	switch sp.Type {
	case corev1.ServiceTypeClusterIP, corev1.ServiceTypeNodePort, corev1.ServiceTypeLoadBalancer:
		if len(sp.Ports) == 0 && sp.ClusterIP != corev1.ClusterIPNone {
			errs = append(errs, field.Required(spec.Child("ports"), ""))
		}
	case corev1.ServiceTypeExternalName:
		if sp.ExternalName == "" {
			errs = append(errs, field.Required(spec.Child("externalName"), ""))
		}
	default:
		errs = append(errs, field.NotSupported(spec.Child("type"), sp.Type,
			[]string{"ClusterIP", "NodePort", "LoadBalancer", "ExternalName"}))
	}
	if sp.ClusterIP == corev1.ClusterIPNone && (sp.Type == corev1.ServiceTypeNodePort || sp.Type == corev1.ServiceTypeLoadBalancer) {
		errs = append(errs, field.Invalid(spec.Child("clusterIP"), sp.ClusterIP, "may not be set to 'None' for NodePort or LoadBalancer services"))
	}
	if sp.ClusterIP != "" && sp.ClusterIP != corev1.ClusterIPNone && net.ParseIP(sp.ClusterIP) == nil {
		errs = append(errs, field.Invalid(spec.Child("clusterIP"), sp.ClusterIP, "must be a valid IP address or 'None'"))
	}
	if len(sp.ClusterIPs) > 0 && sp.ClusterIPs[0] != sp.ClusterIP {
		errs = append(errs, field.Invalid(spec.Child("clusterIPs").Index(0), sp.ClusterIPs[0], "must match spec.clusterIP"))
	}
	switch sp.SessionAffinity {
	case corev1.ServiceAffinityNone, corev1.ServiceAffinityClientIP:
	default:
		errs = append(errs, field.NotSupported(spec.Child("sessionAffinity"), sp.SessionAffinity, []string{"None", "ClientIP"}))
	}
	names := sets.New[string]()
	seen := sets.New[string]()
	for i, p := range sp.Ports {
		pp := spec.Child("ports").Index(i)
		if len(sp.Ports) > 1 && p.Name == "" {
			errs = append(errs, field.Required(pp.Child("name"), "must be specified when there is more than one port"))
		}
		if p.Name != "" {
			if names.Has(p.Name) {
				errs = append(errs, field.Duplicate(pp.Child("name"), p.Name))
			}
			names.Insert(p.Name)
		}
		if p.Port < 1 || p.Port > 65535 {
			errs = append(errs, field.Invalid(pp.Child("port"), p.Port, "must be between 1 and 65535, inclusive"))
		}
		switch p.Protocol {
		case corev1.ProtocolTCP, corev1.ProtocolUDP, corev1.ProtocolSCTP:
		default:
			errs = append(errs, field.NotSupported(pp.Child("protocol"), p.Protocol, []string{"TCP", "UDP", "SCTP"}))
		}
		key := fmt.Sprintf("%s/%d", p.Protocol, p.Port)
		if seen.Has(key) {
			errs = append(errs, field.Duplicate(pp, key))
		}
		seen.Insert(key)
		if p.TargetPort.Type == intstr.Int && (p.TargetPort.IntVal < 1 || p.TargetPort.IntVal > 65535) {
			errs = append(errs, field.Invalid(pp.Child("targetPort"), p.TargetPort.IntVal, "must be between 1 and 65535, inclusive"))
		}
		if p.NodePort != 0 && sp.Type != corev1.ServiceTypeNodePort && sp.Type != corev1.ServiceTypeLoadBalancer {
			errs = append(errs, field.Forbidden(pp.Child("nodePort"), "may not be used when `type` is '"+string(sp.Type)+"'"))
		}
	}
	return errs
}

func serviceStrategy() *strategy {
	s := plainStrategy(true, dns1035Label)
	// Defaulting/allocation happen in the BeginCreate/BeginUpdate hooks;
	// Validate re-checks the final object.
	s.validate = func(obj runtime.Object) field.ErrorList { return validateService(obj.(*corev1.Service)) }
	return s
}

// createKubernetesService creates default/kubernetes (ClusterIP .1:443 ->
// this server) and its EndpointSlice, as kube-apiserver does
// (--kubernetes-service).
func createKubernetesService(ctx context.Context, svcs, slices *genericregistry.Store, a *serviceAllocator, port int) error {
	ip := a.ipString(1)
	svc := &corev1.Service{
		ObjectMeta: metav1.ObjectMeta{Name: "kubernetes", Namespace: metav1.NamespaceDefault,
			Labels: map[string]string{"component": "apiserver", "provider": "kubernetes"}},
		Spec: corev1.ServiceSpec{
			ClusterIP: ip,
			Ports:     []corev1.ServicePort{{Name: "https", Port: 443, TargetPort: intstr.FromInt32(int32(port))}},
		},
	}
	if err := createIgnoreExists(ctx, svcs, svc); err != nil {
		return fmt.Errorf("creating default/kubernetes: %w", err)
	}
	name, proto, p, ready := "https", corev1.ProtocolTCP, int32(port), true
	slice := &discoveryv1.EndpointSlice{
		ObjectMeta: metav1.ObjectMeta{Name: "kubernetes", Namespace: metav1.NamespaceDefault,
			Labels: map[string]string{discoveryv1.LabelServiceName: "kubernetes", discoveryv1.LabelManagedBy: "bpfproxy-test-apiserver"}},
		AddressType: discoveryv1.AddressTypeIPv4,
		Endpoints:   []discoveryv1.Endpoint{{Addresses: []string{"127.0.0.1"}, Conditions: discoveryv1.EndpointConditions{Ready: &ready}}},
		Ports:       []discoveryv1.EndpointPort{{Name: &name, Protocol: &proto, Port: &p}},
	}
	if err := createIgnoreExists(ctx, slices, slice); err != nil {
		return fmt.Errorf("creating EndpointSlice default/kubernetes: %w", err)
	}
	return nil
}

var _ rest.RESTCreateUpdateStrategy = &strategy{}
