package loader

import (
	"errors"
	"fmt"
	"math/rand/v2"
	"os"
	"path/filepath"
	"testing"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/link"

	"github.com/sluice-mesh/sluice/bpf"
	"github.com/sluice-mesh/sluice/test/netns"
)

// testConfig returns a config with its own pin root and cgroup, removed at
// the end of the test.
func testConfig(t *testing.T) Config {
	t.Helper()
	netns.RequireRoot(t)
	mnt, err := netns.Cgroup2Mount()
	if err != nil {
		t.Fatal(err)
	}
	id := fmt.Sprintf("%08x", rand.Uint32())
	cg := filepath.Join(mnt, "sluice-loadertest-"+id)
	if err := os.Mkdir(cg, 0o755); err != nil {
		t.Fatal(err)
	}
	root := "/sys/fs/bpf/sluice-loadertest-" + id
	t.Cleanup(func() {
		if err := Uninstall(root); err != nil && !errors.Is(err, ErrNotLoaded) {
			t.Errorf("cleanup uninstall: %v", err)
		}
		_ = os.Remove(cg)
	})
	return Config{PinRoot: root, CgroupRoot: cg, Options: bpf.Options{SockopsNetnsCookie: true}}
}

func linkProgIDs(t *testing.T, s *State) map[string][2]uint32 {
	t.Helper()
	out := map[string][2]uint32{}
	for name, l := range s.links {
		info, err := l.Info()
		if err != nil {
			t.Fatal(err)
		}
		out[name] = [2]uint32{uint32(info.ID), uint32(info.Program)}
	}
	return out
}

func TestLoadAdoptUpgradeUninstall(t *testing.T) {
	cfg := testConfig(t)
	s, err := Load(cfg)
	if err != nil {
		t.Fatalf("first load: %v", err)
	}
	if err := s.Maps[bpf.MapPods].Put(uint64(42), bpf.SteerPodConfig{ProxyUid: 2102, OutboundPort: 4140, InboundPort: 4143}); err != nil {
		t.Fatal(err)
	}
	first := linkProgIDs(t, s)
	if len(first) != 4 {
		t.Fatalf("want 4 cgroup links, got %v", first)
	}
	for _, p := range s.Programs() {
		if p.Name != bpf.ProgSkLookup && p.Name != bpf.ProgSkMsg && !p.Attached {
			t.Errorf("%s not attached", p.Name)
		}
	}
	s.Close()

	// A restarted agent with the same programs adopts everything as is.
	s, err = Load(cfg)
	if err != nil {
		t.Fatalf("adopting load: %v", err)
	}
	if got := linkProgIDs(t, s); fmt.Sprint(got) != fmt.Sprint(first) {
		t.Errorf("adopting load changed links/programs: %v, was %v", got, first)
	}
	var pc bpf.SteerPodConfig
	if err := s.Maps[bpf.MapPods].Lookup(uint64(42), &pc); err != nil || pc.OutboundPort != 4140 {
		t.Errorf("pods entry lost across reload: %v %+v", err, pc)
	}
	s.Close()

	// An upgraded agent (here: other load-time constants) replaces the
	// programs behind the same links.
	cfg.Options.Redirect = true
	s, err = Load(cfg)
	if err != nil {
		t.Fatalf("upgrading load: %v", err)
	}
	upgraded := linkProgIDs(t, s)
	for name, ids := range upgraded {
		if ids[0] != first[name][0] {
			t.Errorf("%s: link replaced (id %d, was %d), want the same link updated", name, ids[0], first[name][0])
		}
		// Only sockops reads the constants that changed; the others run
		// the same code and must be left alone.
		if replaced := ids[1] != first[name][1]; replaced != (name == bpf.ProgSockops) {
			t.Errorf("%s: program replaced=%v by the upgrade", name, replaced)
		}
	}
	if err := s.Maps[bpf.MapPods].Lookup(uint64(42), &pc); err != nil {
		t.Errorf("pods entry lost across upgrade: %v", err)
	}
	if !s.skMsgAttached() {
		t.Error("sk_msg not attached after enabling the redirect")
	}

	// Uninstall refuses while an agent holds the state.
	if err := Uninstall(cfg.PinRoot); !errors.Is(err, ErrLocked) {
		t.Errorf("uninstall while loaded: got %v, want ErrLocked", err)
	}
	s.Close()
	if err := Uninstall(cfg.PinRoot); err != nil {
		t.Fatalf("uninstall: %v", err)
	}
	if _, err := os.Stat(cfg.PinRoot); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("pin root still exists after uninstall: %v", err)
	}
	for name, ids := range upgraded {
		if l, err := link.NewFromID(link.ID(ids[0])); err == nil {
			l.Close()
			t.Errorf("%s: link %d still exists after uninstall", name, ids[0])
		}
	}
	cg, err := os.Open(cfg.CgroupRoot)
	if err != nil {
		t.Fatal(err)
	}
	defer cg.Close()
	for _, cp := range cgroupProgs {
		res, err := link.QueryPrograms(link.QueryOptions{Target: int(cg.Fd()), Attach: cp.attach})
		if err != nil {
			t.Fatal(err)
		}
		if len(res.Programs) != 0 {
			t.Errorf("%s: %d programs still attached to the cgroup", cp.name, len(res.Programs))
		}
	}
	if err := Uninstall(cfg.PinRoot); !errors.Is(err, ErrNotLoaded) {
		t.Errorf("second uninstall: got %v, want ErrNotLoaded", err)
	}
}

func TestLoadIncompatibleMaps(t *testing.T) {
	cfg := testConfig(t)
	s, err := Load(cfg)
	if err != nil {
		t.Fatal(err)
	}
	s.Close()
	cfg.Options.MaxPods = 7
	if s, err := Load(cfg); !errors.Is(err, ErrIncompatible) {
		if s != nil {
			s.Close()
		}
		t.Fatalf("load with other map sizes: got %v, want ErrIncompatible", err)
	}
}

func TestStaleTempPinsRemoved(t *testing.T) {
	cfg := testConfig(t)
	stale := cfg.PinRoot + "_tmp_999999999"
	if err := os.MkdirAll(filepath.Join(stale, "maps"), 0o700); err != nil {
		t.Fatal(err)
	}
	m, err := ebpf.NewMap(&ebpf.MapSpec{Type: ebpf.Array, KeySize: 4, ValueSize: 4, MaxEntries: 1})
	if err != nil {
		t.Fatal(err)
	}
	if err := m.Pin(filepath.Join(stale, "maps", "x")); err != nil {
		t.Fatal(err)
	}
	m.Close()
	s, err := Load(cfg)
	if err != nil {
		t.Fatal(err)
	}
	s.Close()
	if _, err := os.Stat(stale); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("stale temporary pins not removed: %v", err)
	}
}

// The program variant for kernels without bpf_get_netns_cookie in sockops
// (before 5.15: no redirect, pair keys without a netns) loads and attaches.
func TestLoadWithoutSockopsNetnsCookie(t *testing.T) {
	cfg := testConfig(t)
	cfg.Options = bpf.Options{}
	s, err := Load(cfg)
	if err != nil {
		t.Fatalf("load: %v", err)
	}
	defer s.Close()
	for _, p := range s.Programs() {
		if p.Name == bpf.ProgSkMsg {
			t.Errorf("sk_msg listed with the redirect off")
		}
		if p.Name != bpf.ProgSkLookup && !p.Attached {
			t.Errorf("%s not attached", p.Name)
		}
	}
	if _, err := bpf.Spec(bpf.Options{Redirect: true}); err == nil {
		t.Error("redirect without netns cookies in sockops accepted")
	}
}
