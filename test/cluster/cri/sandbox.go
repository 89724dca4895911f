package cri

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"time"

	"golang.org/x/sys/unix"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"
	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"

	"github.com/sluice-mesh/sluice/test/cluster/cri/cgroup"
	"github.com/sluice-mesh/sluice/test/cluster/cri/cni"
	"github.com/sluice-mesh/sluice/test/cluster/cri/container"
)

// killTimeout bounds the wait for a cgroup to empty after SIGKILL, and
// other cleanup steps that must not hang a call forever.
const killTimeout = 30 * time.Second

// sandbox is a pod sandbox.
type sandbox struct {
	// op serializes the sandbox's Stop and Remove.
	op sync.Mutex
	// config is immutable.
	config *runtimeapi.PodSandboxConfig
	dir    string

	// rec and holder are guarded by Server.mu; holder is nil when no
	// holder process is known.
	rec    sandboxRecord
	holder proc
}

// ready reports whether the sandbox is READY; s.mu must be held.
func (sb *sandbox) ready() bool {
	return parseSandboxState(sb.rec.State) == runtimeapi.PodSandboxState_SANDBOX_READY
}

// save persists the record; s.mu must be held.
func (sb *sandbox) save() error {
	return writeJSON(filepath.Join(sb.dir, sandboxFile), sb.rec)
}

// meta is the sandbox's identity for the CNI plugins.
func (sb *sandbox) meta() cni.PodMeta {
	m := sb.config.GetMetadata()
	return cni.PodMeta{Namespace: m.GetNamespace(), Name: m.GetName(), UID: m.GetUid(), SandboxID: sb.rec.ID}
}

// portMappings are the sandbox's host ports for the portmap plugin.
func (sb *sandbox) portMappings() []cni.PortMapping {
	var out []cni.PortMapping
	for _, p := range sb.config.GetPortMappings() {
		if p.GetHostPort() <= 0 {
			continue
		}
		out = append(out, cni.PortMapping{
			HostPort:      p.GetHostPort(),
			ContainerPort: p.GetContainerPort(),
			Protocol:      strings.ToLower(p.GetProtocol().String()),
			HostIP:        p.GetHostIp(),
		})
	}
	return out
}

// getSandbox finds a sandbox by id or unique id prefix.
func (s *Server) getSandbox(id string) (*sandbox, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.sandboxLocked(id)
}

// sandboxLocked is getSandbox with s.mu held.
func (s *Server) sandboxLocked(id string) (*sandbox, error) {
	return lookupID(s.sandboxes, "pod sandbox", id)
}

// lookupID finds an object by id or unique id prefix (crictl shows
// truncated ids).
func lookupID[T any](m map[string]T, kind, id string) (T, error) {
	var zero T
	if id == "" {
		return zero, status.Errorf(codes.InvalidArgument, "no %s id", kind)
	}
	if v, ok := m[id]; ok {
		return v, nil
	}
	var found []string
	for k := range m {
		if strings.HasPrefix(k, id) {
			found = append(found, k)
		}
	}
	switch len(found) {
	case 0:
		return zero, notFound(kind, id)
	case 1:
		return m[found[0]], nil
	}
	return zero, status.Errorf(codes.InvalidArgument, "%s id prefix %q is ambiguous", kind, id)
}

// namespaceOptions returns the sandbox config's namespace options (never nil).
func namespaceOptions(cfg *runtimeapi.PodSandboxConfig) *runtimeapi.NamespaceOption {
	if o := cfg.GetLinux().GetSecurityContext().GetNamespaceOptions(); o != nil {
		return o
	}
	return &runtimeapi.NamespaceOption{}
}

// validateSandbox rejects what procri cannot do, saying what it is.
func validateSandbox(cfg *runtimeapi.PodSandboxConfig, handler string) error {
	var errs []error
	if cfg.GetMetadata() == nil {
		errs = append(errs, errors.New("the sandbox config has no metadata"))
	}
	if handler != "" {
		errs = append(errs, fmt.Errorf("unknown runtime handler %q: procri has only the default handler (no RuntimeClass)", handler))
	}
	if cfg.GetWindows() != nil {
		errs = append(errs, errors.New("procri runs Linux processes only: the sandbox has a Windows config"))
	}
	ns := namespaceOptions(cfg)
	if m := ns.GetNetwork(); m != runtimeapi.NamespaceMode_POD && m != runtimeapi.NamespaceMode_NODE {
		errs = append(errs, fmt.Errorf("network namespace mode %s is not supported (procri does POD and NODE)", m))
	}
	if m := ns.GetIpc(); m != runtimeapi.NamespaceMode_POD && m != runtimeapi.NamespaceMode_NODE {
		errs = append(errs, fmt.Errorf("IPC namespace mode %s is not supported (procri does POD and NODE)", m))
	}
	if ns.GetPid() == runtimeapi.NamespaceMode_TARGET {
		errs = append(errs, errors.New("PID namespace mode TARGET (ephemeral containers targeting a container) is not supported: procri has no PID namespaces"))
	}
	if u := ns.GetUsernsOptions(); u.GetMode() == runtimeapi.NamespaceMode_POD && (len(u.GetUids()) > 0 || len(u.GetGids()) > 0) {
		errs = append(errs, errors.New("user namespaces (hostUsers: false) are not supported by procri"))
	}
	if ns.GetNetwork() == runtimeapi.NamespaceMode_POD && cfg.GetHostname() == "" {
		errs = append(errs, errors.New("the sandbox has its own network namespace but no hostname"))
	}
	for name := range cfg.GetLinux().GetSysctls() {
		if _, err := sysctlNamespace(name); err != nil {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}

// sysctlNamespace tells which namespace a sysctl belongs to: unix.CLONE_NEWNET
// for net.*, unix.CLONE_NEWIPC for the IPC ones; others are refused (they
// would change the whole machine).
func sysctlNamespace(name string) (int, error) {
	n := strings.ReplaceAll(name, "/", ".")
	switch {
	case strings.HasPrefix(n, "net."):
		return unix.CLONE_NEWNET, nil
	case strings.HasPrefix(n, "fs.mqueue."), strings.HasPrefix(n, "kernel.shm"), strings.HasPrefix(n, "kernel.msg"), n == "kernel.sem":
		return unix.CLONE_NEWIPC, nil
	}
	return 0, fmt.Errorf("sysctl %q is not namespaced: procri sets only net.* and IPC sysctls in a pod's namespaces", name)
}

// sysctlPath is the /proc/sys file of a sysctl in dotted or slashed form.
func sysctlPath(name string) string {
	if strings.Contains(name, "/") {
		return filepath.Join("/proc/sys", name)
	}
	return filepath.Join("/proc/sys", strings.ReplaceAll(name, ".", "/"))
}

// setSysctls writes the sandbox's sysctls inside the holder's namespaces,
// from a thread that joins them and is then discarded.
func setSysctls(pid int, sysctls map[string]string, hostNet, hostIPC bool) error {
	for _, name := range sortedKeys(sysctls) {
		kind, err := sysctlNamespace(name)
		if err != nil {
			return err
		}
		nsFile := "net"
		if kind == unix.CLONE_NEWIPC {
			nsFile = "ipc"
		}
		if (kind == unix.CLONE_NEWNET && hostNet) || (kind == unix.CLONE_NEWIPC && hostIPC) {
			return fmt.Errorf("sysctl %q: the pod shares the host's %s namespace, so it would change the whole machine", name, nsFile)
		}
		errc := make(chan error, 1)
		go func() {
			// The thread joins another namespace and is never unlocked: it
			// ends with this goroutine.
			runtime.LockOSThread()
			fd, err := unix.Open(fmt.Sprintf("/proc/%d/ns/%s", pid, nsFile), unix.O_RDONLY|unix.O_CLOEXEC, 0)
			if err != nil {
				errc <- fmt.Errorf("open %s namespace of holder %d: %w", nsFile, pid, err)
				return
			}
			defer unix.Close(fd)
			if err := unix.Setns(fd, kind); err != nil {
				errc <- fmt.Errorf("join %s namespace of holder %d: %w", nsFile, pid, err)
				return
			}
			if err := os.WriteFile(sysctlPath(name), []byte(sysctls[name]), 0o644); err != nil {
				errc <- fmt.Errorf("set sysctl %s=%q: %w", name, sysctls[name], err)
				return
			}
			errc <- nil
		}()
		if err := <-errc; err != nil {
			return err
		}
	}
	return nil
}

// resolvConf renders /etc/resolv.conf from the sandbox's DNS config, or
// copies the host's when the config is empty.
func resolvConf(dns *runtimeapi.DNSConfig) ([]byte, error) {
	if len(dns.GetServers()) == 0 && len(dns.GetSearches()) == 0 && len(dns.GetOptions()) == 0 {
		data, err := os.ReadFile("/etc/resolv.conf")
		if err != nil {
			return nil, fmt.Errorf("copy the host's resolv.conf: %w", err)
		}
		return data, nil
	}
	var b strings.Builder
	if len(dns.GetSearches()) > 0 {
		fmt.Fprintf(&b, "search %s\n", strings.Join(dns.GetSearches(), " "))
	}
	for _, srv := range dns.GetServers() {
		fmt.Fprintf(&b, "nameserver %s\n", srv)
	}
	if len(dns.GetOptions()) > 0 {
		fmt.Fprintf(&b, "options %s\n", strings.Join(dns.GetOptions(), " "))
	}
	return []byte(b.String()), nil
}

// sandboxKey identifies a sandbox's metadata: the kubelet never creates
// two sandboxes with the same one.
func sandboxKey(m *runtimeapi.PodSandboxMetadata) string {
	return fmt.Sprintf("%s/%s/%s/%d", m.GetNamespace(), m.GetName(), m.GetUid(), m.GetAttempt())
}

// RunPodSandbox creates the sandbox's directory, DNS and hostname files and
// holder cgroup, starts the holder and sets its network up; any failure
// undoes every step done and says which step failed.
func (s *Server) RunPodSandbox(ctx context.Context, req *runtimeapi.RunPodSandboxRequest) (*runtimeapi.RunPodSandboxResponse, error) {
	cfg := req.GetConfig()
	if err := validateSandbox(cfg, req.GetRuntimeHandler()); err != nil {
		return nil, status.Errorf(codes.InvalidArgument, "run pod sandbox: %v", err)
	}
	ns := namespaceOptions(cfg)
	hostNet := ns.GetNetwork() == runtimeapi.NamespaceMode_NODE
	if !hostNet && s.opts.CNI == nil {
		return nil, status.Error(codes.FailedPrecondition, "run pod sandbox: procri runs without a CNI network, so only host-network pods can run")
	}
	id := newID()
	key := sandboxKey(cfg.GetMetadata())
	s.mu.Lock()
	for _, other := range s.sandboxes {
		if sandboxKey(other.config.GetMetadata()) == key {
			s.mu.Unlock()
			return nil, status.Errorf(codes.AlreadyExists, "run pod sandbox: sandbox %s already has metadata %s", other.rec.ID, key)
		}
	}
	s.mu.Unlock()

	parent := cfg.GetLinux().GetCgroupParent()
	if parent == "" {
		parent = "/procri/" + id
	}
	sb := &sandbox{
		config: proto.Clone(cfg).(*runtimeapi.PodSandboxConfig),
		dir:    filepath.Join(s.opts.StateDir, sandboxesDir, id),
		rec: sandboxRecord{
			ID:             id,
			RuntimeHandler: req.GetRuntimeHandler(),
			CreatedAt:      time.Now().UnixNano(),
			State:          sandboxStateName(runtimeapi.PodSandboxState_SANDBOX_NOTREADY),
			CgroupParent:   parent,
			HolderCgroup:   parent + "/" + id,
			HostNetwork:    hostNet,
			HostIPC:        ns.GetIpc() == runtimeapi.NamespaceMode_NODE,
		},
	}
	log := s.log.With("sandbox", id, "pod", cfg.GetMetadata().GetNamespace()+"/"+cfg.GetMetadata().GetName())
	var err error
	if sb.rec.Config, err = marshalProto(cfg); err != nil {
		return nil, status.Errorf(codes.Internal, "run pod sandbox: %v", err)
	}

	// undo holds the rollback of every step done, run in reverse on failure.
	var undo []func()
	fail := func(step string, err error) (*runtimeapi.RunPodSandboxResponse, error) {
		for i := len(undo) - 1; i >= 0; i-- {
			undo[i]()
		}
		log.Error("run pod sandbox failed", "step", step, "err", err)
		return nil, status.Errorf(codes.Unknown, "run pod sandbox %s: %s: %v", cfg.GetMetadata().GetName(), step, err)
	}

	if err := os.MkdirAll(sb.dir, 0o700); err != nil {
		return fail("create sandbox directory", err)
	}
	undo = append(undo, func() { _ = os.RemoveAll(sb.dir) })
	resolv, err := resolvConf(cfg.GetDnsConfig())
	if err != nil {
		return fail("write resolv.conf", err)
	}
	if err := writeFileAtomic(filepath.Join(sb.dir, "resolv.conf"), resolv, 0o644); err != nil {
		return fail("write resolv.conf", err)
	}
	hostname := cfg.GetHostname()
	if hostname == "" {
		if hostname, err = os.Hostname(); err != nil {
			return fail("write hostname", err)
		}
	}
	if err := writeFileAtomic(filepath.Join(sb.dir, "hostname"), []byte(hostname+"\n"), 0o644); err != nil {
		return fail("write hostname", err)
	}
	// Recorded from here on, so that a crash leaves a NOTREADY sandbox the
	// kubelet stops and removes (tearing down its network) after a restart.
	if err := sb.save(); err != nil {
		return fail("record sandbox", err)
	}

	if err := s.opts.Cgroups.Create(sb.rec.HolderCgroup, cgroup.Resources{}); err != nil {
		return fail("create holder cgroup "+sb.rec.HolderCgroup, err)
	}
	undo = append(undo, func() {
		if err := s.opts.Cgroups.Remove(sb.rec.HolderCgroup); err != nil {
			log.Warn("remove holder cgroup", "err", err)
		}
		if cfg.GetLinux().GetCgroupParent() == "" {
			_ = s.opts.Cgroups.Remove(parent)
		}
	})
	holder, err := container.StartSandbox(container.SandboxSpec{
		HostNetwork: hostNet,
		HostIPC:     sb.rec.HostIPC,
		Hostname:    hostname,
		Cgroup:      func(pid int) error { return s.opts.Cgroups.Add(sb.rec.HolderCgroup, pid) },
		Log:         log,
	})
	if err != nil {
		return fail("start holder process", err)
	}
	undo = append(undo, func() { s.killHolder(childProc{holder}, sb.rec.HolderCgroup, log) })
	start, ok := procStartTime(holder.PID())
	if !ok {
		return fail("start holder process", fmt.Errorf("holder %d exited at once", holder.PID()))
	}
	sb.rec.HolderPID, sb.rec.HolderStart = holder.PID(), start

	if err := setSysctls(holder.PID(), cfg.GetLinux().GetSysctls(), hostNet, sb.rec.HostIPC); err != nil {
		return fail("set sysctls", err)
	}

	if !hostNet {
		netns := fmt.Sprintf("/proc/%d/ns/net", holder.PID())
		// Recorded before Setup: a crash during it leaves the teardown to do.
		sb.rec.NetworkUp = true
		if err := sb.save(); err != nil {
			return fail("record sandbox", err)
		}
		undo = append(undo, func() {
			tctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), killTimeout)
			defer cancel()
			if err := s.opts.CNI.Teardown(tctx, netns, sb.meta(), sb.portMappings()); err != nil {
				log.Warn("tear down network", "err", err)
			}
		})
		res, err := s.opts.CNI.Setup(ctx, netns, sb.meta(), sb.portMappings())
		if err != nil {
			return fail("set up network (CNI)", err)
		}
		if len(res.IPs) == 0 {
			return fail("set up network (CNI)", errors.New("the CNI plugins returned no IP address"))
		}
		sb.rec.IPs = res.IPs
	}

	sb.rec.State = sandboxStateName(runtimeapi.PodSandboxState_SANDBOX_READY)
	sb.holder = childProc{holder}
	s.mu.Lock()
	if err := sb.save(); err != nil {
		s.mu.Unlock()
		return fail("record sandbox", err)
	}
	s.sandboxes[id] = sb
	s.mu.Unlock()
	go s.watchHolder(sb, sb.holder)
	log.Info("pod sandbox running", "holder", holder.PID(), "ips", sb.rec.IPs, "hostNetwork", hostNet, "cgroup", sb.rec.HolderCgroup)
	return &runtimeapi.RunPodSandboxResponse{PodSandboxId: id}, nil
}

// killHolder kills a holder (everything in its cgroup) and waits for it.
func (s *Server) killHolder(p proc, cg string, log *slog.Logger) {
	ctx, cancel := context.WithTimeout(context.Background(), killTimeout)
	defer cancel()
	if err := s.opts.Cgroups.Kill(ctx, cg); err != nil {
		log.Warn("kill holder cgroup", "cgroup", cg, "err", err)
	}
	if p == nil {
		return
	}
	_ = p.Signal(unix.SIGKILL)
	select {
	case <-p.Done():
	case <-ctx.Done():
		log.Warn("holder did not exit", "pid", p.PID())
	}
}

// watchHolder marks the sandbox NOTREADY when its holder exits.
func (s *Server) watchHolder(sb *sandbox, p proc) {
	select {
	case <-p.Done():
	case <-s.stop:
		return
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed || sb.holder != p {
		return
	}
	if sb.ready() {
		s.log.Warn("pod sandbox holder exited", "sandbox", sb.rec.ID, "pid", p.PID())
		sb.rec.State = sandboxStateName(runtimeapi.PodSandboxState_SANDBOX_NOTREADY)
		if err := sb.save(); err != nil {
			s.log.Error("record sandbox", "sandbox", sb.rec.ID, "err", err)
		}
	}
}

// sandboxContainers lists the containers of a sandbox; s.mu must be held.
func (s *Server) sandboxContainers(id string) []*ctr {
	var out []*ctr
	for _, cid := range sortedKeys(s.containers) {
		if c := s.containers[cid]; c.rec.SandboxID == id {
			out = append(out, c)
		}
	}
	return out
}

// StopPodSandbox kills the sandbox's containers, tears its network down and
// stops its holder. It is idempotent.
func (s *Server) StopPodSandbox(ctx context.Context, req *runtimeapi.StopPodSandboxRequest) (*runtimeapi.StopPodSandboxResponse, error) {
	sb, err := s.getSandbox(req.GetPodSandboxId())
	if err != nil {
		return nil, err
	}
	if err := s.stopSandbox(ctx, sb); err != nil {
		return nil, status.Errorf(codes.Unknown, "stop pod sandbox %s: %v", sb.rec.ID, err)
	}
	return &runtimeapi.StopPodSandboxResponse{}, nil
}

// stopSandbox is StopPodSandbox on a found sandbox.
func (s *Server) stopSandbox(ctx context.Context, sb *sandbox) error {
	sb.op.Lock()
	defer sb.op.Unlock()
	log := s.log.With("sandbox", sb.rec.ID)
	// NOTREADY first: no container is created meanwhile, and the holder's
	// exit below is no surprise.
	s.mu.Lock()
	ctrs := s.sandboxContainers(sb.rec.ID)
	holder := sb.holder
	if sb.ready() {
		log.Info("stopping pod sandbox")
	}
	sb.rec.State = sandboxStateName(runtimeapi.PodSandboxState_SANDBOX_NOTREADY)
	err := sb.save()
	s.mu.Unlock()
	if err != nil {
		return err
	}

	for _, c := range ctrs {
		if err := s.killContainer(ctx, c); err != nil {
			return fmt.Errorf("kill container %s: %w", c.rec.ID, err)
		}
	}
	s.mu.Lock()
	networkUp := sb.rec.NetworkUp
	s.mu.Unlock()
	if networkUp {
		netns := ""
		if holder != nil && sameProcess(sb.rec.HolderPID, sb.rec.HolderStart) {
			netns = fmt.Sprintf("/proc/%d/ns/net", sb.rec.HolderPID)
		}
		if s.opts.CNI == nil {
			return errors.New("tear down network: procri runs without a CNI network now")
		}
		if err := s.opts.CNI.Teardown(ctx, netns, sb.meta(), sb.portMappings()); err != nil {
			return fmt.Errorf("tear down network (CNI): %w", err)
		}
		s.mu.Lock()
		sb.rec.NetworkUp = false
		err = sb.save()
		s.mu.Unlock()
		if err != nil {
			return err
		}
	}
	s.killHolder(holder, sb.rec.HolderCgroup, log)
	return nil
}

// RemovePodSandbox stops the sandbox, removes its containers, cgroups,
// directory and record. Removing an unknown sandbox succeeds.
func (s *Server) RemovePodSandbox(ctx context.Context, req *runtimeapi.RemovePodSandboxRequest) (*runtimeapi.RemovePodSandboxResponse, error) {
	sb, err := s.getSandbox(req.GetPodSandboxId())
	if status.Code(err) == codes.NotFound {
		return &runtimeapi.RemovePodSandboxResponse{}, nil
	}
	if err != nil {
		return nil, err
	}
	if err := s.stopSandbox(ctx, sb); err != nil {
		return nil, status.Errorf(codes.Unknown, "remove pod sandbox %s: stop it: %v", sb.rec.ID, err)
	}
	sb.op.Lock()
	defer sb.op.Unlock()
	s.mu.Lock()
	ctrs := s.sandboxContainers(sb.rec.ID)
	s.mu.Unlock()
	for _, c := range ctrs {
		if err := s.removeContainer(ctx, c); err != nil {
			return nil, status.Errorf(codes.Unknown, "remove pod sandbox %s: remove container %s: %v", sb.rec.ID, c.rec.ID, err)
		}
	}
	if err := s.opts.Cgroups.Remove(sb.rec.HolderCgroup); err != nil {
		return nil, status.Errorf(codes.Unknown, "remove pod sandbox %s: remove cgroup: %v", sb.rec.ID, err)
	}
	s.removePodCgroup(sb)
	if err := os.RemoveAll(sb.dir); err != nil {
		return nil, status.Errorf(codes.Unknown, "remove pod sandbox %s: %v", sb.rec.ID, err)
	}
	s.mu.Lock()
	delete(s.sandboxes, sb.rec.ID)
	s.mu.Unlock()
	s.log.Info("pod sandbox removed", "sandbox", sb.rec.ID)
	return &runtimeapi.RemovePodSandboxResponse{}, nil
}

// removePodCgroup removes the pod cgroup of a removed sandbox when no
// other sandbox uses it and no process is left in it. The kubelet removes
// the pod cgroups of the hierarchies it manages itself; this removes them
// from the others (the v2 and name=systemd hierarchies on a hybrid machine)
// and removes procri's own parent of a sandbox the kubelet gave none.
func (s *Server) removePodCgroup(sb *sandbox) {
	s.mu.Lock()
	shared := false
	for _, other := range s.sandboxes {
		if other != sb && other.rec.CgroupParent == sb.rec.CgroupParent {
			shared = true
		}
	}
	s.mu.Unlock()
	if shared {
		return
	}
	if pids, err := s.opts.Cgroups.Pids(sb.rec.CgroupParent); err != nil || len(pids) > 0 {
		return
	}
	if err := s.opts.Cgroups.Remove(sb.rec.CgroupParent); err != nil {
		s.log.Debug("pod cgroup left in place", "cgroup", sb.rec.CgroupParent, "err", err)
	}
}

// sandboxStatus is the CRI status of sb; s.mu must be held.
func (s *Server) sandboxStatus(sb *sandbox) *runtimeapi.PodSandboxStatus {
	st := &runtimeapi.PodSandboxStatus{
		Id:             sb.rec.ID,
		Metadata:       sb.config.GetMetadata(),
		State:          parseSandboxState(sb.rec.State),
		CreatedAt:      sb.rec.CreatedAt,
		Linux:          &runtimeapi.LinuxPodSandboxStatus{Namespaces: &runtimeapi.Namespace{Options: namespaceOptions(sb.config)}},
		Labels:         sb.config.GetLabels(),
		Annotations:    sb.config.GetAnnotations(),
		RuntimeHandler: sb.rec.RuntimeHandler,
		Network:        &runtimeapi.PodSandboxNetworkStatus{},
	}
	for i, ip := range sb.rec.IPs {
		if i == 0 {
			st.Network.Ip = ip.String()
			continue
		}
		st.Network.AdditionalIps = append(st.Network.AdditionalIps, &runtimeapi.PodIP{Ip: ip.String()})
	}
	return st
}

// PodSandboxStatus answers the sandbox's state, IPs, namespaces, metadata,
// labels and annotations.
func (s *Server) PodSandboxStatus(_ context.Context, req *runtimeapi.PodSandboxStatusRequest) (*runtimeapi.PodSandboxStatusResponse, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	sb, err := s.sandboxLocked(req.GetPodSandboxId())
	if err != nil {
		return nil, err
	}
	resp := &runtimeapi.PodSandboxStatusResponse{Status: s.sandboxStatus(sb), Timestamp: time.Now().UnixNano()}
	if req.GetVerbose() {
		info, _ := json.Marshal(map[string]any{
			"pid":          sb.rec.HolderPID,
			"cgroupParent": sb.rec.CgroupParent,
			"holderCgroup": sb.rec.HolderCgroup,
			"netns":        netnsPath(sb),
			"ips":          sb.rec.IPs,
			"stateDir":     sb.dir,
		})
		resp.Info = map[string]string{"info": string(info)}
	}
	return resp, nil
}

// netnsPath is the holder's network namespace file, "" for host network.
func netnsPath(sb *sandbox) string {
	if sb.rec.HostNetwork || sb.rec.HolderPID == 0 {
		return ""
	}
	return "/proc/" + strconv.Itoa(sb.rec.HolderPID) + "/ns/net"
}

// ListPodSandbox lists the sandboxes matching the filter (id or id prefix,
// state, labels).
func (s *Server) ListPodSandbox(_ context.Context, req *runtimeapi.ListPodSandboxRequest) (*runtimeapi.ListPodSandboxResponse, error) {
	f := req.GetFilter()
	s.mu.Lock()
	defer s.mu.Unlock()
	resp := &runtimeapi.ListPodSandboxResponse{}
	for _, id := range sortedKeys(s.sandboxes) {
		sb := s.sandboxes[id]
		st := parseSandboxState(sb.rec.State)
		if !matchID(id, f.GetId()) || (f.GetState() != nil && f.GetState().GetState() != st) || !matchLabels(sb.config.GetLabels(), f.GetLabelSelector()) {
			continue
		}
		resp.Items = append(resp.Items, &runtimeapi.PodSandbox{
			Id:             id,
			Metadata:       sb.config.GetMetadata(),
			State:          st,
			CreatedAt:      sb.rec.CreatedAt,
			Labels:         sb.config.GetLabels(),
			Annotations:    sb.config.GetAnnotations(),
			RuntimeHandler: sb.rec.RuntimeHandler,
		})
	}
	return resp, nil
}
