// Package enroll keeps the agent's enrollments: it validates a request,
// programs the pod's steering (eBPF maps and its sk_lookup link, or iptables
// rules), adopts the proxy's inbound listener, and records every enrollment
// in a state file so a restarted agent reports the same ones.
package enroll

import (
	"context"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"sort"
	"sync"
	"time"

	"github.com/cilium/ebpf"
	"golang.org/x/sys/unix"

	"github.com/sluice-mesh/sluice/agent/api"
	"github.com/sluice-mesh/sluice/agent/loader"
	"github.com/sluice-mesh/sluice/agent/podns"
	"github.com/sluice-mesh/sluice/bpf"
)

// Errors callers map to answers; each wraps one of these.
var (
	ErrInvalid  = errors.New("invalid enrollment")
	ErrNotFound = errors.New("not enrolled")
	ErrConflict = errors.New("already enrolled")
	ErrFull     = errors.New("no room")
)

// Rules programs iptables interception in a pod's namespace
// (agent/iptables implements it).
type Rules interface {
	Install(ctx context.Context, netns string, cfg api.PodConfig) error
	Remove(ctx context.Context, netns string) error
}

// Config of a Manager.
type Config struct {
	// Mode is the interception mode of every enrollment.
	Mode api.Mode
	// State holds the eBPF maps and links (eBPF mode).
	State *loader.State
	// Rules programs iptables (iptables mode).
	Rules Rules
	// StateFile records enrollments across restarts.
	StateFile string
	// MaxPods is the size of the pods map.
	MaxPods int
	// Cookie learns a namespace's ID; nil means podns.SockoptCookie.
	Cookie podns.CookieFunc
	Logger *slog.Logger
}

type record struct {
	api.Enrollment
	Ino uint64 `json:"ino"`
	// probing is set while a steering probe of the record is in flight.
	probing bool
}

// Manager enrolls and unenrolls pods. Safe for concurrent use.
type Manager struct {
	cfg Config
	log *slog.Logger
	mu  sync.Mutex
	ens map[uint64]*record
}

// New returns a manager with the enrollments of the state file, reconciled
// with the pods map in eBPF mode: entries missing from the map are dropped,
// map entries missing from the file are adopted.
func New(cfg Config) (*Manager, error) {
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	if cfg.MaxPods == 0 {
		cfg.MaxPods = 1024
	}
	if cfg.Cookie == nil {
		cfg.Cookie = podns.SockoptCookie
	}
	m := &Manager{cfg: cfg, log: cfg.Logger, ens: map[uint64]*record{}}
	var recs []record
	data, err := os.ReadFile(cfg.StateFile)
	switch {
	case errors.Is(err, fs.ErrNotExist):
	case err != nil:
		return nil, fmt.Errorf("read state file: %w", err)
	default:
		if err := json.Unmarshal(data, &recs); err != nil {
			return nil, fmt.Errorf("parse state file %s: %w", cfg.StateFile, err)
		}
	}
	for i := range recs {
		r := recs[i]
		if r.Mode != cfg.Mode {
			m.log.Warn("enrollment of another mode in state file; keeping it listed", "cookie", r.NetNSCookie, "mode", r.Mode)
		}
		m.ens[r.NetNSCookie] = &r
	}
	if cfg.Mode == api.ModeEBPF {
		m.reconcileMap()
	}
	return m, m.save()
}

func (m *Manager) reconcileMap() {
	pods := m.cfg.State.Maps[bpf.MapPods]
	inMap := map[uint64]bpf.SteerPodConfig{}
	var k uint64
	var v bpf.SteerPodConfig
	it := pods.Iterate()
	for it.Next(&k, &v) {
		inMap[k] = v
	}
	for c, r := range m.ens {
		if _, ok := inMap[c]; !ok && r.Mode == api.ModeEBPF {
			m.log.Warn("dropping enrollment missing from the pods map", "cookie", c)
			delete(m.ens, c)
		}
	}
	for c, v := range inMap {
		if _, ok := m.ens[c]; !ok {
			m.log.Warn("adopting enrollment found only in the pods map", "cookie", c)
			m.ens[c] = &record{Enrollment: api.Enrollment{NetNSCookie: c, Mode: api.ModeEBPF, Config: fromBPF(v)}}
		}
	}
}

// Enroll steers a pod's traffic.
func (m *Manager) Enroll(ctx context.Context, req api.EnrollRequest) (api.Enrollment, error) {
	path := req.NetNS
	switch {
	case path != "" && req.PID != 0:
		return api.Enrollment{}, fmt.Errorf("%w: give netns or pid, not both", ErrInvalid)
	case req.PID < 0:
		return api.Enrollment{}, fmt.Errorf("%w: pid %d", ErrInvalid, req.PID)
	case req.PID > 0:
		path = podns.PathOf(req.PID)
	case path == "":
		return api.Enrollment{}, fmt.Errorf("%w: netns or pid is required", ErrInvalid)
	}
	cfg := req.Config.WithDefaults()
	if err := cfg.Validate(); err != nil {
		return api.Enrollment{}, fmt.Errorf("%w: %w", ErrInvalid, err)
	}
	ns, err := podns.OpenWith(path, m.cfg.Cookie)
	if err != nil {
		return api.Enrollment{}, fmt.Errorf("%w: %w", ErrInvalid, err)
	}
	defer ns.Close()
	addrs := req.Addresses
	if len(addrs) == 0 {
		if addrs, err = ns.Addresses(); err != nil {
			return api.Enrollment{}, err
		}
	}
	for i, a := range addrs {
		if !a.IsValid() {
			return api.Enrollment{}, fmt.Errorf("%w: invalid address", ErrInvalid)
		}
		addrs[i] = a.Unmap()
	}

	m.mu.Lock()
	defer m.mu.Unlock()
	if _, ok := m.ens[ns.Cookie]; ok {
		return api.Enrollment{}, fmt.Errorf("%w: netns %s (cookie %d)", ErrConflict, path, ns.Cookie)
	}
	for _, r := range m.ens {
		for _, a := range r.Addresses {
			for _, b := range addrs {
				if a == b {
					return api.Enrollment{}, fmt.Errorf("%w: address %s belongs to netns %s", ErrConflict, a, r.NetNS)
				}
			}
		}
	}
	if len(m.ens) >= m.cfg.MaxPods {
		return api.Enrollment{}, fmt.Errorf("%w: the pods map is full (%d pods)", ErrFull, m.cfg.MaxPods)
	}
	r := &record{Ino: ns.Ino, Enrollment: api.Enrollment{
		NetNSCookie: ns.Cookie, NetNS: path, Pod: req.Pod, Mode: m.cfg.Mode, Addresses: addrs, Config: cfg,
	}}
	switch m.cfg.Mode {
	case api.ModeEBPF:
		err = m.enrollEBPF(ns, r)
	case api.ModeIPTables:
		err = m.cfg.Rules.Install(ctx, path, cfg)
	default:
		err = fmt.Errorf("unknown mode %q", m.cfg.Mode)
	}
	if err != nil {
		return api.Enrollment{}, err
	}
	m.ens[ns.Cookie] = r
	if err := m.save(); err != nil {
		m.log.Error("save state", "err", err)
	}
	if m.cfg.Mode == api.ModeEBPF {
		m.adoptListener(ns, r)
	}
	m.log.Info("enrolled", "netns", path, "cookie", ns.Cookie, "pod", req.Pod, "addresses", addrs)
	return r.Enrollment, nil
}

func (m *Manager) freeSlot() uint32 {
	used := map[uint32]bool{}
	var k uint64
	var v bpf.SteerPodConfig
	it := m.cfg.State.Maps[bpf.MapPods].Iterate()
	for it.Next(&k, &v) {
		used[v.Slot] = true
	}
	for s := uint32(0); ; s++ {
		if !used[s] {
			return s
		}
	}
}

// enrollEBPF writes the pod's addresses, then its config (which starts
// outbound steering), then attaches sk_lookup; on failure it undoes all.
func (m *Manager) enrollEBPF(ns *podns.NS, r *record) (err error) {
	st := m.cfg.State
	slot := m.freeSlot()
	var written []bpf.SteerIpKey
	defer func() {
		if err != nil {
			for _, k := range written {
				_ = st.Maps[bpf.MapPodIPs].Delete(k)
			}
			_ = st.Maps[bpf.MapPods].Delete(r.NetNSCookie)
			_ = st.DetachNetNs(r.NetNSCookie)
		}
	}()
	for _, a := range r.Addresses {
		k := ipKey(a)
		v := bpf.SteerPodIp{NetnsCookie: r.NetNSCookie, Slot: slot, InboundPort: r.Config.InboundPort}
		if err := st.Maps[bpf.MapPodIPs].Update(k, v, ebpf.UpdateNoExist); err != nil {
			if errors.Is(err, ebpf.ErrKeyExist) {
				return fmt.Errorf("%w: address %s is enrolled already", ErrConflict, a)
			}
			return fmt.Errorf("%w: write address %s: %w", ErrFull, a, err)
		}
		written = append(written, k)
	}
	pc := toBPF(r.Config, slot)
	if err := st.Maps[bpf.MapPods].Update(r.NetNSCookie, pc, ebpf.UpdateNoExist); err != nil {
		if errors.Is(err, ebpf.ErrKeyExist) {
			return fmt.Errorf("%w: netns cookie %d is in the pods map", ErrConflict, r.NetNSCookie)
		}
		return fmt.Errorf("%w: write pod config: %w", ErrFull, err)
	}
	if err := st.AttachNetNs(ns.FD(), r.NetNSCookie); err != nil {
		return err
	}
	return nil
}

// Unenroll stops steering a pod.
func (m *Manager) Unenroll(ctx context.Context, cookie uint64) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	r, ok := m.ens[cookie]
	if !ok {
		return fmt.Errorf("%w: netns cookie %d", ErrNotFound, cookie)
	}
	var err error
	switch r.Mode {
	case api.ModeEBPF:
		err = m.unenrollEBPF(r)
	case api.ModeIPTables:
		err = m.cfg.Rules.Remove(ctx, r.NetNS)
		if errors.Is(err, fs.ErrNotExist) {
			err = nil // the namespace is gone, and its rules with it
		}
	}
	if err != nil {
		return err
	}
	delete(m.ens, cookie)
	m.log.Info("unenrolled", "netns", r.NetNS, "cookie", cookie)
	return m.save()
}

func (m *Manager) unenrollEBPF(r *record) error {
	st := m.cfg.State
	if st == nil {
		return fmt.Errorf("eBPF enrollment %d but the agent runs in %s mode", r.NetNSCookie, m.cfg.Mode)
	}
	var pc bpf.SteerPodConfig
	slotKnown := st.Maps[bpf.MapPods].Lookup(r.NetNSCookie, &pc) == nil
	var errs []error
	if err := st.Maps[bpf.MapPods].Delete(r.NetNSCookie); err != nil && !errors.Is(err, ebpf.ErrKeyNotExist) {
		errs = append(errs, fmt.Errorf("delete pod config: %w", err))
	}
	for _, a := range r.Addresses {
		if err := st.Maps[bpf.MapPodIPs].Delete(ipKey(a)); err != nil && !errors.Is(err, ebpf.ErrKeyNotExist) {
			errs = append(errs, fmt.Errorf("delete address %s: %w", a, err))
		}
	}
	if slotKnown {
		for _, idx := range []uint32{pc.Slot * 2, pc.Slot*2 + 1} {
			_ = st.Maps[bpf.MapInboundListeners].Delete(idx)
		}
	}
	if err := st.DetachNetNs(r.NetNSCookie); err != nil {
		errs = append(errs, err)
	}
	return errors.Join(errs...)
}

// List returns every enrollment, ordered by cookie.
func (m *Manager) List() []api.Enrollment {
	m.mu.Lock()
	defer m.mu.Unlock()
	out := make([]api.Enrollment, 0, len(m.ens))
	for _, r := range m.ens {
		e := r.Enrollment
		e.InboundListener = m.hasListener(r)
		out = append(out, e)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].NetNSCookie < out[j].NetNSCookie })
	return out
}

// Len is the number of enrollments.
func (m *Manager) Len() int {
	m.mu.Lock()
	defer m.mu.Unlock()
	return len(m.ens)
}

func (m *Manager) hasListener(r *record) bool {
	if r.Mode != api.ModeEBPF || m.cfg.State == nil {
		return false
	}
	var pc bpf.SteerPodConfig
	if m.cfg.State.Maps[bpf.MapPods].Lookup(r.NetNSCookie, &pc) != nil {
		return false
	}
	var cookie uint64
	for _, idx := range []uint32{pc.Slot * 2, pc.Slot*2 + 1} {
		if m.cfg.State.Maps[bpf.MapInboundListeners].Lookup(idx, &cookie) == nil {
			return true
		}
	}
	return false
}

// Reconcile looks for the inbound listener of every eBPF enrollment that
// lacks one (a proxy that started after enrollment, or restarted). With gc
// it also unenrolls pods whose network namespace no longer exists, so a pod
// deleted without an unenroll leaks no map entry, slot or pin.
func (m *Manager) Reconcile(ctx context.Context, gc bool) {
	m.mu.Lock()
	defer m.mu.Unlock()
	changed := false
	for c, r := range m.ens {
		if gc && m.gone(r) {
			m.log.Info("network namespace gone; unenrolling", "netns", r.NetNS, "cookie", c)
			var err error
			switch r.Mode {
			case api.ModeEBPF:
				err = m.unenrollEBPF(r)
			case api.ModeIPTables:
				// The rules died with the namespace.
			}
			if err != nil {
				m.log.Warn("unenroll gone pod", "cookie", c, "err", err)
				continue
			}
			delete(m.ens, c)
			changed = true
			continue
		}
		if r.Mode != api.ModeEBPF || m.hasListener(r) {
			continue
		}
		ns, err := m.reopen(r)
		if err != nil {
			continue
		}
		m.adoptListener(ns, r)
		ns.Close()
	}
	if changed {
		if err := m.save(); err != nil {
			m.log.Error("save state", "err", err)
		}
	}
	for _, r := range m.ens {
		if r.Config.ProbePort == 0 || r.Steered || r.probing || (r.Mode == api.ModeEBPF && !m.hasListener(r)) {
			continue
		}
		r.probing = true
		go m.probe(ctx, r)
	}
}

// probe sends the steering probe to one enrolled pod and records a reply.
// It runs without the lock; Reconcile retries a failed probe on its next run.
func (m *Manager) probe(ctx context.Context, r *record) {
	m.mu.Lock()
	addrs, port := append([]netip.Addr(nil), r.Addresses...), r.Config.ProbePort
	m.mu.Unlock()
	var err error
	ok := false
	for _, a := range addrs {
		if err = probeAddr(ctx, netip.AddrPortFrom(a, port)); err == nil {
			ok = true
			break
		}
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	r.probing = false
	if !ok {
		m.log.Debug("steering probe failed", "netns", r.NetNS, "port", port, "err", err)
		return
	}
	if m.ens[r.NetNSCookie] != r {
		return // unenrolled meanwhile
	}
	r.Steered = true
	m.log.Info("steering confirmed by the proxy", "netns", r.NetNS, "pod", r.Pod)
	if err := m.save(); err != nil {
		m.log.Error("save state", "err", err)
	}
}

// probeAddr connects to addr, sends the probe line and checks the answer.
func probeAddr(ctx context.Context, addr netip.AddrPort) error {
	ctx, cancel := context.WithTimeout(ctx, time.Second)
	defer cancel()
	var d net.Dialer
	c, err := d.DialContext(ctx, "tcp", addr.String())
	if err != nil {
		return fmt.Errorf("probe %s: %w", addr, err)
	}
	defer c.Close()
	if dl, ok := ctx.Deadline(); ok {
		_ = c.SetDeadline(dl)
	}
	if _, err := io.WriteString(c, api.ProbeRequest); err != nil {
		return fmt.Errorf("probe %s: %w", addr, err)
	}
	buf := make([]byte, len(api.ProbeReply))
	if _, err := io.ReadFull(c, buf); err != nil {
		return fmt.Errorf("probe %s: read reply: %w", addr, err)
	}
	if string(buf) != api.ProbeReply {
		return fmt.Errorf("probe %s: unexpected reply %q", addr, buf)
	}
	return nil
}

// gone reports whether the enrollment's network namespace is destroyed.
func (m *Manager) gone(r *record) bool {
	switch r.Mode {
	case api.ModeEBPF:
		return m.cfg.State != nil && !m.cfg.State.NetNsAlive(r.NetNSCookie)
	case api.ModeIPTables:
		// Inode numbers of namespaces are reused once freed, so a process
		// found by inode only counts if its namespace has the pod's cookie
		// (which reopen checks).
		ns, err := m.reopen(r)
		if err != nil {
			return true
		}
		ns.Close()
		return false
	}
	return false
}

// reopen opens the enrollment's namespace by its path or, when that path is
// gone (the process enrolled by pid exited), through another process in it.
func (m *Manager) reopen(r *record) (*podns.NS, error) {
	paths := []string{r.NetNS}
	if r.Ino != 0 {
		paths = append(paths, podns.FindByIno(r.Ino))
	}
	for _, p := range paths {
		if p == "" {
			continue
		}
		if ns, err := podns.OpenWith(p, m.cfg.Cookie); err == nil && ns.Cookie == r.NetNSCookie {
			return ns, nil
		} else if err == nil {
			ns.Close()
		}
	}
	return nil, fmt.Errorf("netns of enrollment %d is gone", r.NetNSCookie)
}

// adoptListener puts the proxy's inbound listeners into the sockmap: an
// IPv4 one in slot*2, an IPv6 one in slot*2+1, a dual-stack IPv6 one in
// both unless an IPv4 one exists.
func (m *Manager) adoptListener(ns *podns.NS, r *record) {
	ls, err := ns.TakeListeners(r.Config.InboundPort)
	defer func() {
		for _, l := range ls {
			unix.Close(l.FD) // the sockmap holds its own reference
		}
	}()
	if err != nil {
		m.log.Warn("find proxy listener", "netns", r.NetNS, "err", err)
	}
	if len(ls) == 0 {
		return
	}
	var pc bpf.SteerPodConfig
	if err := m.cfg.State.Maps[bpf.MapPods].Lookup(r.NetNSCookie, &pc); err != nil {
		return
	}
	haveV4 := false
	for _, l := range ls {
		if l.Family == unix.AF_INET {
			haveV4 = true
		}
	}
	for _, l := range ls {
		idx := []uint32{pc.Slot * 2}
		if l.Family == unix.AF_INET6 {
			idx = []uint32{pc.Slot*2 + 1}
			if v6only, err := unix.GetsockoptInt(l.FD, unix.IPPROTO_IPV6, unix.IPV6_V6ONLY); err == nil && v6only == 0 && !haveV4 {
				idx = append(idx, pc.Slot*2)
			}
		}
		for _, i := range idx {
			if err := m.cfg.State.Maps[bpf.MapInboundListeners].Update(i, uint64(l.FD), ebpf.UpdateAny); err != nil {
				m.log.Warn("adopt proxy listener (an MPTCP listener cannot be used)", "netns", r.NetNS, "err", err)
			} else {
				m.log.Info("adopted proxy inbound listener", "netns", r.NetNS, "pid", l.PID, "index", i)
			}
		}
	}
}

// save writes the enrollments atomically. Called with mu held.
func (m *Manager) save() error {
	recs := make([]record, 0, len(m.ens))
	for _, r := range m.ens {
		recs = append(recs, *r)
	}
	sort.Slice(recs, func(i, j int) bool { return recs[i].NetNSCookie < recs[j].NetNSCookie })
	data, err := json.MarshalIndent(recs, "", "  ")
	if err != nil {
		return fmt.Errorf("encode state: %w", err)
	}
	if err := os.MkdirAll(filepath.Dir(m.cfg.StateFile), 0o700); err != nil {
		return fmt.Errorf("create state dir: %w", err)
	}
	tmp := m.cfg.StateFile + ".tmp"
	if err := os.WriteFile(tmp, data, 0o600); err != nil {
		return fmt.Errorf("write state: %w", err)
	}
	if err := os.Rename(tmp, m.cfg.StateFile); err != nil {
		return fmt.Errorf("write state: %w", err)
	}
	return nil
}

// ipKey is the pod_ips key of an address: its bytes, as the kernel reads them.
func ipKey(a netip.Addr) bpf.SteerIpKey {
	var k bpf.SteerIpKey
	if a.Is4() {
		b := a.As4()
		k.Family = unix.AF_INET
		k.Addr[0] = binary.NativeEndian.Uint32(b[:])
		return k
	}
	b := a.As16()
	k.Family = unix.AF_INET6
	for i := range 4 {
		k.Addr[i] = binary.NativeEndian.Uint32(b[4*i:])
	}
	return k
}

func toBPF(c api.PodConfig, slot uint32) bpf.SteerPodConfig {
	pc := bpf.SteerPodConfig{
		ProxyUid: c.ProxyUID, OutboundPort: c.OutboundPort, InboundPort: c.InboundPort, Slot: slot,
	}
	if c.DisableRedirect {
		pc.Flags |= 1 // POD_F_NO_REDIRECT
	}
	for i, r := range c.SkipInboundPorts {
		pc.SkipIn[i] = bpf.SteerPortRange{Lo: r.Lo, Hi: r.Hi}
	}
	pc.N_skipIn = uint8(len(c.SkipInboundPorts))
	for i, r := range c.SkipOutboundPorts {
		pc.SkipOut[i] = bpf.SteerPortRange{Lo: r.Lo, Hi: r.Hi}
	}
	pc.N_skipOut = uint8(len(c.SkipOutboundPorts))
	for i, p := range c.SkipSubnets {
		k := ipKey(p.Masked().Addr().Unmap())
		pc.SkipSubnets[i] = bpf.SteerSubnet{Addr: k.Addr, Family: uint8(k.Family), PrefixLen: uint8(p.Bits())}
		if p.Addr().Is4In6() {
			pc.SkipSubnets[i].PrefixLen = uint8(max(p.Bits()-96, 0))
		}
	}
	pc.N_skipSubnets = uint8(len(c.SkipSubnets))
	return pc
}

func fromBPF(pc bpf.SteerPodConfig) api.PodConfig {
	c := api.PodConfig{ProxyUID: pc.ProxyUid, OutboundPort: pc.OutboundPort, InboundPort: pc.InboundPort, DisableRedirect: pc.Flags&1 != 0}
	for i := 0; i < int(pc.N_skipIn) && i < len(pc.SkipIn); i++ {
		c.SkipInboundPorts = append(c.SkipInboundPorts, api.PortRange{Lo: pc.SkipIn[i].Lo, Hi: pc.SkipIn[i].Hi})
	}
	for i := 0; i < int(pc.N_skipOut) && i < len(pc.SkipOut); i++ {
		c.SkipOutboundPorts = append(c.SkipOutboundPorts, api.PortRange{Lo: pc.SkipOut[i].Lo, Hi: pc.SkipOut[i].Hi})
	}
	for i := 0; i < int(pc.N_skipSubnets) && i < len(pc.SkipSubnets); i++ {
		s := pc.SkipSubnets[i]
		var b [16]byte
		for w := range 4 {
			binary.NativeEndian.PutUint32(b[4*w:], s.Addr[w])
		}
		var a netip.Addr
		if s.Family == unix.AF_INET {
			a = netip.AddrFrom4([4]byte(b[:4]))
		} else {
			a = netip.AddrFrom16(b)
		}
		c.SkipSubnets = append(c.SkipSubnets, netip.PrefixFrom(a, int(s.PrefixLen)))
	}
	return c
}
