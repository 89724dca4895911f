// Package loader owns the agent's pinned eBPF state: it loads the steering
// programs, pins programs, maps and links under the pin root, attaches the
// cgroup programs as bpf_links, re-adopts what an earlier agent pinned,
// upgrades programs in place with link.Update, and uninstalls everything.
//
// Pin layout under the root (default /sys/fs/bpf/sluice):
//
//	maps/<map>             every map of bpf/steer.c
//	progs/<program>        every program
//	links/<program>        the cgroup links (connect4, connect6, sockops, getsockopt)
//	links/netns/<cookie>   one sk_lookup link per enrolled pod
//
// The sk_msg program is attached to the sock_pairs map, which keeps it.
package loader

import (
	"bytes"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/link"
	"golang.org/x/sys/unix"

	"github.com/sluice-mesh/sluice/agent/api"
	"github.com/sluice-mesh/sluice/bpf"
)

// Sentinel errors callers may match with errors.Is.
var (
	// ErrNotLoaded: nothing is pinned under the pin root.
	ErrNotLoaded = errors.New("sluice programs are not loaded")
	// ErrLocked: another agent holds the pinned state.
	ErrLocked = errors.New("pinned state is locked by another agent")
	// ErrIncompatible: the pinned maps differ from this agent's (layout or
	// size); uninstall first.
	ErrIncompatible = errors.New("pinned maps are incompatible with this agent")
)

// DefaultPinRoot is where the agent pins its state.
const DefaultPinRoot = "/sys/fs/bpf/sluice"

// Config says where the state lives and how the programs are built.
type Config struct {
	// PinRoot is the bpffs directory of the state; tests use their own.
	PinRoot string
	// CgroupRoot is the cgroup v2 directory the programs attach to: the root
	// of the hierarchy on a node, a test's own cgroup in tests.
	CgroupRoot string
	// Options select program features (from the probes).
	Options bpf.Options
	// Logger receives progress; nil discards.
	Logger *slog.Logger
}

// cgroupProgs are attached at CgroupRoot, in this order.
var cgroupProgs = []struct {
	name   string
	attach ebpf.AttachType
}{
	{bpf.ProgGetsockopt, ebpf.AttachCGroupGetsockopt},
	{bpf.ProgSockops, ebpf.AttachCGroupSockOps},
	{bpf.ProgConnect4, ebpf.AttachCGroupInet4Connect},
	{bpf.ProgConnect6, ebpf.AttachCGroupInet6Connect},
	{bpf.ProgGetPeerName4, ebpf.AttachCgroupInet4GetPeername},
	{bpf.ProgGetPeerName6, ebpf.AttachCgroupInet6GetPeername},
}

// State is the loaded, pinned and attached steering programs. Close frees
// its descriptors and never detaches anything.
type State struct {
	cfg   Config
	log   *slog.Logger
	lock  *os.File
	Maps  map[string]*ebpf.Map
	Progs map[string]*ebpf.Program
	links map[string]link.Link // by program name
}

func (c Config) withDefaults() Config {
	if c.PinRoot == "" {
		c.PinRoot = DefaultPinRoot
	}
	if c.Logger == nil {
		c.Logger = slog.New(slog.DiscardHandler)
	}
	return c
}

// Load loads the programs and attaches them, adopting whatever an earlier
// agent pinned: its maps (and so every enrollment and connection state) are
// reused, and programs whose instructions differ are replaced with
// link.Update. A first load is pinned into a temporary directory that is
// renamed into place, so a crash never leaves half a state at PinRoot.
func Load(cfg Config) (_ *State, err error) {
	cfg = cfg.withDefaults()
	if cfg.CgroupRoot == "" {
		return nil, fmt.Errorf("load: no cgroup root given")
	}
	if err := EnsureBPFFS(filepath.Dir(cfg.PinRoot)); err != nil {
		return nil, err
	}
	sweepTemp(cfg.PinRoot, cfg.Logger)

	dir := cfg.PinRoot
	fresh := false
	if _, err := os.Stat(dir); errors.Is(err, fs.ErrNotExist) {
		fresh = true
		dir = fmt.Sprintf("%s_tmp_%d", cfg.PinRoot, os.Getpid())
		if err := os.MkdirAll(dir, 0o700); err != nil {
			return nil, fmt.Errorf("create pin dir: %w", err)
		}
		defer func() {
			if err != nil {
				removePins(dir)
			}
		}()
	}
	for _, sub := range []string{"maps", "progs", "links/netns"} {
		if err := os.MkdirAll(filepath.Join(dir, sub), 0o700); err != nil {
			return nil, fmt.Errorf("create pin dir: %w", err)
		}
	}
	lock, err := lockDir(dir)
	if err != nil {
		return nil, err
	}
	s := &State{cfg: cfg, log: cfg.Logger, lock: lock, Maps: map[string]*ebpf.Map{}, Progs: map[string]*ebpf.Program{}, links: map[string]link.Link{}}
	defer func() {
		if err != nil {
			s.Close()
		}
	}()

	spec, err := bpf.Spec(cfg.Options)
	if err != nil {
		return nil, err
	}
	repl := map[string]*ebpf.Map{}
	for name := range spec.Maps {
		if strings.HasPrefix(name, ".") {
			continue
		}
		m, err := ebpf.LoadPinnedMap(filepath.Join(dir, "maps", name), nil)
		if errors.Is(err, fs.ErrNotExist) {
			continue
		}
		if err != nil {
			return nil, fmt.Errorf("open pinned map %s: %w", name, err)
		}
		repl[name] = m
	}
	defer func() {
		for _, m := range repl {
			m.Close()
		}
	}()
	coll, err := ebpf.NewCollectionWithOptions(spec, ebpf.CollectionOptions{MapReplacements: repl})
	if err != nil {
		if errors.Is(err, ebpf.ErrMapIncompatible) {
			return nil, fmt.Errorf("%w: %w", ErrIncompatible, err)
		}
		return nil, fmt.Errorf("load programs: %w", err)
	}
	for name, m := range coll.Maps {
		if strings.HasPrefix(name, ".") {
			m.Close() // .rodata: the programs keep it
			continue
		}
		s.Maps[name] = m
		if _, adopted := repl[name]; !adopted {
			if err := m.Pin(filepath.Join(dir, "maps", name)); err != nil {
				return nil, fmt.Errorf("pin map %s: %w", name, err)
			}
		}
	}
	for name, p := range coll.Programs {
		s.Progs[name] = p
	}
	for _, cp := range cgroupProgs {
		if s.Progs[cp.name] == nil {
			continue // left out by the options
		}
		if err := s.attachCgroup(dir, cp.name, cp.attach); err != nil {
			return nil, err
		}
	}
	if err := s.updateNetnsLinks(dir); err != nil {
		return nil, err
	}
	if err := s.attachSkMsg(dir); err != nil {
		return nil, err
	}
	for name, p := range s.Progs {
		path := filepath.Join(dir, "progs", name)
		_ = os.Remove(path)
		if err := p.Pin(path); err != nil {
			return nil, fmt.Errorf("pin program %s: %w", name, err)
		}
	}
	if fresh {
		if err := os.Rename(dir, cfg.PinRoot); err != nil {
			return nil, fmt.Errorf("move pins into place: %w", err)
		}
	}
	s.log.Info("programs loaded", "pinRoot", cfg.PinRoot, "cgroup", cfg.CgroupRoot, "fresh", fresh, "redirect", cfg.Options.Redirect)
	return s, nil
}

// attachCgroup adopts the pinned link of a cgroup program, replacing its
// program when the instructions differ, or attaches and pins a new link.
func (s *State) attachCgroup(dir, name string, attach ebpf.AttachType) error {
	prog := s.Progs[name]
	path := filepath.Join(dir, "links", name)
	if l, err := link.LoadPinnedLink(path, nil); err == nil {
		if err := s.updateLink(l, prog, name); err != nil {
			l.Close()
			return err
		}
		s.links[name] = l
		return nil
	} else if !errors.Is(err, fs.ErrNotExist) {
		return fmt.Errorf("open pinned link %s: %w", name, err)
	}
	l, err := link.AttachCgroup(link.CgroupOptions{Path: s.cfg.CgroupRoot, Attach: attach, Program: prog})
	if err != nil {
		return fmt.Errorf("attach %s to %s: %w", name, s.cfg.CgroupRoot, err)
	}
	if err := l.Pin(path); err != nil {
		l.Close()
		return fmt.Errorf("pin link %s (bpf_link for cgroups needs Linux 5.7): %w", name, err)
	}
	s.links[name] = l
	return nil
}

// updateLink points l at prog unless it already runs the same instructions.
func (s *State) updateLink(l link.Link, prog *ebpf.Program, name string) error {
	info, err := l.Info()
	if err != nil {
		return fmt.Errorf("link info %s: %w", name, err)
	}
	same, err := sameProgram(info.Program, prog)
	if err != nil {
		return fmt.Errorf("compare %s: %w", name, err)
	}
	if same {
		return nil
	}
	if err := l.Update(prog); err != nil {
		return fmt.Errorf("update link %s: %w", name, err)
	}
	s.log.Info("program replaced", "program", name)
	return nil
}

// sameProgram reports whether the program with id runs the same
// instructions with the same load-time constants as prog. The kernel's tag
// covers the instructions only, so the .rodata contents are compared too.
func sameProgram(id ebpf.ProgramID, prog *ebpf.Program) (bool, error) {
	old, err := ebpf.NewProgramFromID(id)
	if err != nil {
		return false, err
	}
	defer old.Close()
	oi, err := old.Info()
	if err != nil {
		return false, err
	}
	ni, err := prog.Info()
	if err != nil {
		return false, err
	}
	if oi.Tag != ni.Tag {
		return false, nil
	}
	or, err := rodata(oi)
	if err != nil {
		return false, err
	}
	nr, err := rodata(ni)
	if err != nil {
		return false, err
	}
	return bytes.Equal(or, nr), nil
}

// rodata returns the contents of a program's .rodata map, or nil.
func rodata(info *ebpf.ProgramInfo) ([]byte, error) {
	ids, _ := info.MapIDs()
	for _, id := range ids {
		m, err := ebpf.NewMapFromID(id)
		if err != nil {
			return nil, fmt.Errorf("open map %d: %w", id, err)
		}
		mi, err := m.Info()
		if err != nil || !strings.HasSuffix(mi.Name, ".rodata") {
			m.Close()
			continue
		}
		val := make([]byte, m.ValueSize())
		err = m.Lookup(uint32(0), &val)
		m.Close()
		if err != nil {
			return nil, fmt.Errorf("read .rodata: %w", err)
		}
		return val, nil
	}
	return nil, nil
}

func (s *State) updateNetnsLinks(dir string) error {
	entries, err := os.ReadDir(filepath.Join(dir, "links", "netns"))
	if err != nil {
		return fmt.Errorf("read netns links: %w", err)
	}
	for _, e := range entries {
		l, err := link.LoadPinnedLink(filepath.Join(dir, "links", "netns", e.Name()), nil)
		if err != nil {
			return fmt.Errorf("open netns link %s: %w", e.Name(), err)
		}
		err = s.updateLink(l, s.Progs[bpf.ProgSkLookup], "sk_lookup/"+e.Name())
		l.Close()
		if err != nil {
			return err
		}
	}
	return nil
}

// attachSkMsg attaches (or replaces) the sk_msg program on sock_pairs when
// the redirect is enabled, and detaches an earlier one when it is not.
func (s *State) attachSkMsg(dir string) error {
	target := s.Maps[bpf.MapSockPairs].FD()
	if s.cfg.Options.Redirect {
		err := link.RawAttachProgram(link.RawAttachProgramOptions{Target: target, Program: s.Progs[bpf.ProgSkMsg], Attach: ebpf.AttachSkMsgVerdict})
		if err != nil {
			return fmt.Errorf("attach sk_msg to %s: %w", bpf.MapSockPairs, err)
		}
		return nil
	}
	old, err := ebpf.LoadPinnedProgram(filepath.Join(dir, "progs", bpf.ProgSkMsg), nil)
	if err != nil {
		return nil // never attached
	}
	defer old.Close()
	_ = link.RawDetachProgram(link.RawDetachProgramOptions{Target: target, Program: old, Attach: ebpf.AttachSkMsgVerdict})
	return nil
}

// AttachNetNs attaches sk_lookup to the network namespace open at netnsFD
// and pins the link as links/netns/<cookie>. An existing link is kept.
func (s *State) AttachNetNs(netnsFD int, cookie uint64) error {
	path := s.netnsLinkPath(cookie)
	if _, err := os.Stat(path); err == nil {
		return nil
	}
	l, err := link.AttachNetNs(netnsFD, s.Progs[bpf.ProgSkLookup])
	if err != nil {
		return fmt.Errorf("attach sk_lookup to netns %d: %w", cookie, err)
	}
	defer l.Close()
	if err := l.Pin(path); err != nil {
		return fmt.Errorf("pin sk_lookup link of netns %d: %w", cookie, err)
	}
	return nil
}

// NetnsCookie learns a network namespace's cookie without SO_NETNS_COOKIE
// (Linux < 5.14): do must run its function on a thread inside the namespace,
// and that thread's process must be in a cgroup at or below CgroupRoot. A UDP
// connect to bpf.NetnsProbeAddr makes cgroup/connect4 record the cookie.
func (s *State) NetnsCookie(do func(func() error) error) (uint64, error) {
	var sock uint64
	err := do(func() error {
		fd, err := unix.Socket(unix.AF_INET, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, 0)
		if err != nil {
			return fmt.Errorf("socket: %w", err)
		}
		defer unix.Close(fd)
		// The program runs before the route lookup: the connect may fail
		// (loopback down) and still have recorded the cookie.
		_ = unix.Connect(fd, &unix.SockaddrInet4{Addr: [4]byte{127, 0, 0, 254}, Port: 1})
		if sock, err = unix.GetsockoptUint64(fd, unix.SOL_SOCKET, unix.SO_COOKIE); err != nil {
			return fmt.Errorf("SO_COOKIE: %w", err)
		}
		return nil
	})
	if err != nil {
		return 0, fmt.Errorf("probe netns cookie: %w", err)
	}
	m := s.Maps[bpf.MapNetnsProbe]
	var netns uint64
	if err := m.Lookup(sock, &netns); err != nil {
		return 0, fmt.Errorf("probe netns cookie: cgroup/connect4 recorded nothing (is the agent in a cgroup under %s?): %w", s.cfg.CgroupRoot, err)
	}
	_ = m.Delete(sock)
	return netns, nil
}

// DetachNetNs removes the sk_lookup link of a pod. A missing link is fine.
func (s *State) DetachNetNs(cookie uint64) error {
	path := s.netnsLinkPath(cookie)
	l, err := link.LoadPinnedLink(path, nil)
	if errors.Is(err, fs.ErrNotExist) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("open netns link %d: %w", cookie, err)
	}
	defer l.Close()
	if err := l.Unpin(); err != nil {
		return fmt.Errorf("unpin netns link %d: %w", cookie, err)
	}
	// The namespace may be gone already, which detached the link.
	_ = l.Detach()
	return nil
}

// NetNsAlive reports whether the network namespace of a pod's sk_lookup
// link still exists: the kernel detaches the link when the namespace dies.
// A missing link reports false.
func (s *State) NetNsAlive(cookie uint64) bool {
	l, err := link.LoadPinnedLink(s.netnsLinkPath(cookie), nil)
	if err != nil {
		return false
	}
	defer l.Close()
	info, err := l.Info()
	if err != nil {
		return false
	}
	ns := info.NetNs()
	return ns != nil && ns.NetnsInode != 0
}

// HasNetNsLink reports whether the pod's sk_lookup link is pinned.
func (s *State) HasNetNsLink(cookie uint64) bool {
	_, err := os.Stat(s.netnsLinkPath(cookie))
	return err == nil
}

func (s *State) netnsLinkPath(cookie uint64) string {
	return filepath.Join(s.cfg.PinRoot, "links", "netns", strconv.FormatUint(cookie, 10))
}

// Programs describes every program and its attachment, for status.
func (s *State) Programs() []api.Program {
	var out []api.Program
	add := func(name, attachType, to string, attached bool) {
		p := s.Progs[name]
		ap := api.Program{Name: name, Type: p.Type().String(), AttachType: attachType, AttachedTo: to, Attached: attached}
		if info, err := p.Info(); err == nil {
			if id, ok := info.ID(); ok {
				ap.ID = uint32(id)
			}
			ap.Tag = info.Tag
		}
		out = append(out, ap)
	}
	for _, cp := range cgroupProgs {
		if s.Progs[cp.name] == nil {
			continue
		}
		attached := false
		if l, ok := s.links[cp.name]; ok {
			if info, err := l.Info(); err == nil {
				attached = cgroupLinkLive(info)
			}
		}
		add(cp.name, cp.attach.String(), s.cfg.CgroupRoot, attached)
	}
	if s.cfg.Options.Redirect {
		// Without the redirect sk_msg is deliberately not attached.
		add(bpf.ProgSkMsg, ebpf.AttachSkMsgVerdict.String(), "map "+bpf.MapSockPairs, s.skMsgAttached())
	}
	add(bpf.ProgSkLookup, ebpf.AttachSkLookup.String(), "netns (one link per enrolled pod)", true)
	return out
}

func cgroupLinkLive(info *link.Info) bool {
	cg := info.Cgroup()
	return cg != nil && cg.CgroupId != 0
}

func (s *State) skMsgAttached() bool {
	res, err := link.QueryPrograms(link.QueryOptions{Target: s.Maps[bpf.MapSockPairs].FD(), Attach: ebpf.AttachSkMsgVerdict})
	if err != nil {
		// Querying sockmap attachments needs a newer kernel; trust the attach.
		return true
	}
	return len(res.Programs) > 0
}

// Pins lists every pinned path relative to the pin root.
func (s *State) Pins() []string {
	return ListPins(s.cfg.PinRoot)
}

// ListPins lists every pinned object under root, relative to it.
func ListPins(root string) []string {
	var out []string
	_ = filepath.WalkDir(root, func(path string, d fs.DirEntry, err error) error {
		if err != nil || d.IsDir() {
			return nil
		}
		rel, _ := filepath.Rel(root, path)
		out = append(out, rel)
		return nil
	})
	sort.Strings(out)
	return out
}

// MapUsage reports the fill level of every map. Per-socket storage and the
// counters have no meaningful fill and report -1.
func (s *State) MapUsage() []api.MapUsage {
	var out []api.MapUsage
	names := make([]string, 0, len(s.Maps))
	for n := range s.Maps {
		names = append(names, n)
	}
	sort.Strings(names)
	for _, n := range names {
		m := s.Maps[n]
		u := api.MapUsage{Name: n, Entries: -1, MaxEntries: int(m.MaxEntries())}
		switch m.Type() {
		case ebpf.Hash, ebpf.LRUHash, ebpf.SockHash, ebpf.SockMap:
			u.Entries = countEntries(m)
		}
		out = append(out, u)
	}
	return out
}

func countEntries(m *ebpf.Map) int {
	n := 0
	key := make([]byte, m.KeySize())
	it := m.Iterate()
	var val []byte
	if m.Type() == ebpf.SockMap || m.Type() == ebpf.SockHash {
		// Values of socket maps read back as cookies.
		val = make([]byte, 8)
	} else {
		val = make([]byte, m.ValueSize())
	}
	for it.Next(&key, &val) {
		n++
	}
	return n
}

// Counters sums the per-CPU counters, indexed as bpf.Counter.
func (s *State) Counters() ([]uint64, error) {
	out := make([]uint64, len(bpf.Counter))
	for i := range out {
		var per []uint64
		if err := s.Maps[bpf.MapCounters].Lookup(uint32(i), &per); err != nil {
			return nil, fmt.Errorf("read counter %s: %w", bpf.Counter[i], err)
		}
		for _, v := range per {
			out[i] += v
		}
	}
	return out, nil
}

// Close frees the descriptors. Programs stay attached and maps stay pinned.
func (s *State) Close() error {
	for _, l := range s.links {
		l.Close()
	}
	for _, p := range s.Progs {
		p.Close()
	}
	for _, m := range s.Maps {
		m.Close()
	}
	if s.lock != nil {
		s.lock.Close()
		s.lock = nil
	}
	return nil
}

// Uninstall detaches every program the pinned state at root holds and
// removes the pins. It takes the state's lock, so it fails with ErrLocked
// while an agent runs. Nothing pinned is ErrNotLoaded.
func Uninstall(root string) error {
	if root == "" {
		root = DefaultPinRoot
	}
	sweepTemp(root, slog.New(slog.DiscardHandler))
	if _, err := os.Stat(root); errors.Is(err, fs.ErrNotExist) {
		return ErrNotLoaded
	}
	lock, err := lockDir(root)
	if err != nil {
		return err
	}
	defer lock.Close()
	return removePins(root)
}

// removePins detaches every link pinned under dir, detaches the sk_msg
// program from its map, and removes every pin and the directory.
func removePins(dir string) error {
	var errs []error
	detachSkMsg(dir)
	_ = filepath.WalkDir(filepath.Join(dir, "links"), func(path string, d fs.DirEntry, err error) error {
		if err != nil || d.IsDir() {
			return nil
		}
		l, err := link.LoadPinnedLink(path, nil)
		if err != nil {
			errs = append(errs, fmt.Errorf("open link %s: %w", path, err))
			return nil
		}
		if err := l.Unpin(); err != nil {
			errs = append(errs, fmt.Errorf("unpin link %s: %w", path, err))
		}
		_ = l.Detach()
		l.Close()
		return nil
	})
	if err := os.RemoveAll(dir); err != nil {
		errs = append(errs, fmt.Errorf("remove %s: %w", dir, err))
	}
	return errors.Join(errs...)
}

func detachSkMsg(dir string) {
	m, err := ebpf.LoadPinnedMap(filepath.Join(dir, "maps", bpf.MapSockPairs), nil)
	if err != nil {
		return
	}
	defer m.Close()
	p, err := ebpf.LoadPinnedProgram(filepath.Join(dir, "progs", bpf.ProgSkMsg), nil)
	if err != nil {
		return
	}
	defer p.Close()
	_ = link.RawDetachProgram(link.RawDetachProgramOptions{Target: m.FD(), Program: p, Attach: ebpf.AttachSkMsgVerdict})
}

// sweepTemp removes temporary pin directories left by agents that died
// while creating their state.
func sweepTemp(root string, log *slog.Logger) {
	matches, _ := filepath.Glob(root + "_tmp_*")
	for _, m := range matches {
		pid, err := strconv.Atoi(strings.TrimPrefix(m, root+"_tmp_"))
		if err == nil && pid != os.Getpid() && unix.Kill(pid, 0) == nil {
			continue // its agent is still creating it
		}
		log.Info("removing stale pins", "dir", m)
		_ = removePins(m)
	}
}

func lockDir(dir string) (*os.File, error) {
	f, err := os.Open(dir)
	if err != nil {
		return nil, fmt.Errorf("open %s: %w", dir, err)
	}
	if err := unix.Flock(int(f.Fd()), unix.LOCK_EX|unix.LOCK_NB); err != nil {
		f.Close()
		if errors.Is(err, unix.EWOULDBLOCK) {
			return nil, fmt.Errorf("%w: %s", ErrLocked, dir)
		}
		return nil, fmt.Errorf("lock %s: %w", dir, err)
	}
	return f, nil
}

// EnsureBPFFS mounts the BPF filesystem at dir unless it is mounted there.
func EnsureBPFFS(dir string) error {
	var st unix.Statfs_t
	if err := unix.Statfs(dir, &st); err == nil && st.Type == unix.BPF_FS_MAGIC {
		return nil
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return fmt.Errorf("create %s: %w", dir, err)
	}
	if err := unix.Mount("bpf", dir, "bpf", 0, "mode=0700"); err != nil {
		return fmt.Errorf("mount bpffs at %s: %w", dir, err)
	}
	return nil
}
