// Package probe checks that the running kernel has every eBPF feature the
// steering programs use, naming the first Linux release that has each.
package probe

import (
	"errors"
	"fmt"
	"os"
	"runtime"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/asm"
	"github.com/cilium/ebpf/features"
	"golang.org/x/sys/unix"

	"github.com/sluice-mesh/sluice/agent/api"
)

// ErrNotSupported wraps the error of every missing required feature.
var ErrNotSupported = errors.New("kernel feature not supported")

type feature struct {
	name      string
	minKernel string
	required  bool
	check     func() error
}

func progType(pt ebpf.ProgramType) func() error {
	return func() error { return features.HaveProgramType(pt) }
}

func mapType(mt ebpf.MapType) func() error {
	return func() error { return features.HaveMapType(mt) }
}

// attachType loads a program that returns 1 with an expected attach type:
// the kernel refuses attach types it does not know.
func attachType(pt ebpf.ProgramType, at ebpf.AttachType) func() error {
	return func() error {
		p, err := ebpf.NewProgram(&ebpf.ProgramSpec{
			Type: pt, AttachType: at, License: "Dual BSD/GPL",
			Instructions: asm.Instructions{asm.LoadImm(asm.R0, 1, asm.DWord), asm.Return()},
		})
		if err != nil {
			return fmt.Errorf("load %s program for %s: %w", pt, at, err)
		}
		return p.Close()
	}
}

func helper(pt ebpf.ProgramType, fn asm.BuiltinFunc) func() error {
	return func() error { return features.HaveProgramHelper(pt, fn) }
}

// Names of the optional features that decide Options of the programs.
const (
	SockopsNetnsCookie = "bpf_get_netns_cookie in sock_ops"
	SkMsgNetnsCookie   = "bpf_get_netns_cookie in sk_msg"
	SkMsgStorage       = "bpf_sk_storage_get in sk_msg"
	SockAddrStorage    = "bpf_sk_storage_get in cgroup/connect (getpeername restore)"
	GetPeerName        = "attach types cgroup/getpeername4 and getpeername6"
	// NetnsCookieSockopt is optional: without it the agent learns netns
	// cookies through cgroup/connect4 (bpf.NetnsProbeAddr).
	NetnsCookieSockopt = "SO_NETNS_COOKIE"
)

// all lists the features in the order they are reported. Minimum kernels
// are those of the upstream commits that added each one.
var all = []feature{
	{"BPF_PROG_TYPE_CGROUP_SOCK_ADDR (connect4/connect6)", "4.17", true, progType(ebpf.CGroupSockAddr)},
	{"BPF_PROG_TYPE_SOCK_OPS", "4.13", true, progType(ebpf.SockOps)},
	{"BPF_PROG_TYPE_SK_MSG", "4.17", true, progType(ebpf.SkMsg)},
	{"BPF_PROG_TYPE_CGROUP_SOCKOPT (getsockopt)", "5.3", true, progType(ebpf.CGroupSockopt)},
	{"BPF_PROG_TYPE_SK_LOOKUP", "5.9", true, progType(ebpf.SkLookup)},
	{"attach type cgroup/connect4", "4.17", true, attachType(ebpf.CGroupSockAddr, ebpf.AttachCGroupInet4Connect)},
	{"attach type cgroup/connect6", "4.17", true, attachType(ebpf.CGroupSockAddr, ebpf.AttachCGroupInet6Connect)},
	{"attach type cgroup/getsockopt", "5.3", true, attachType(ebpf.CGroupSockopt, ebpf.AttachCGroupGetsockopt)},
	{"attach type sk_lookup", "5.9", true, attachType(ebpf.SkLookup, ebpf.AttachSkLookup)},
	{"BPF_MAP_TYPE_SOCKMAP", "4.14", true, mapType(ebpf.SockMap)},
	{"BPF_MAP_TYPE_SOCKHASH", "4.18", true, mapType(ebpf.SockHash)},
	{"BPF_MAP_TYPE_SK_STORAGE", "5.2", true, mapType(ebpf.SkStorage)},
	{"BPF_MAP_TYPE_LRU_HASH", "4.10", true, mapType(ebpf.LRUHash)},
	{"BPF_MAP_TYPE_PERCPU_ARRAY", "4.6", true, mapType(ebpf.PerCPUArray)},
	{"bpf_get_netns_cookie in cgroup/connect", "5.7", true, helper(ebpf.CGroupSockAddr, asm.FnGetNetnsCookie)},
	{"bpf_get_socket_cookie in cgroup/connect", "5.0", true, helper(ebpf.CGroupSockAddr, asm.FnGetSocketCookie)},
	{"bpf_get_current_uid_gid in cgroup/connect", "4.17", true, helper(ebpf.CGroupSockAddr, asm.FnGetCurrentUidGid)},
	{"bpf_get_socket_cookie in sock_ops", "5.0", true, helper(ebpf.SockOps, asm.FnGetSocketCookie)},
	{"bpf_sk_storage_get in sock_ops", "5.3", true, helper(ebpf.SockOps, asm.FnSkStorageGet)},
	{"bpf_sock_hash_update in sock_ops", "4.18", true, helper(ebpf.SockOps, asm.FnSockHashUpdate)},
	{"bpf_sk_storage_get in cgroup/getsockopt", "5.3", true, helper(ebpf.CGroupSockopt, asm.FnSkStorageGet)},
	{"bpf_sk_assign in sk_lookup", "5.9", true, helper(ebpf.SkLookup, asm.FnSkAssign)},
	{"bpf_msg_redirect_hash in sk_msg", "4.18", true, helper(ebpf.SkMsg, asm.FnMsgRedirectHash)},
	{NetnsCookieSockopt, "5.14", false, haveNetnsCookieSockopt},
	{"kernel BTF (/sys/kernel/btf/vmlinux)", "5.4", false, haveBTF},
	{SockopsNetnsCookie, "5.15", false, helper(ebpf.SockOps, asm.FnGetNetnsCookie)},
	{SkMsgNetnsCookie, "5.15", false, helper(ebpf.SkMsg, asm.FnGetNetnsCookie)},
	{SkMsgStorage, "5.8", false, helper(ebpf.SkMsg, asm.FnSkStorageGet)},
	{SockAddrStorage, "5.3", false, helper(ebpf.CGroupSockAddr, asm.FnSkStorageGet)},
	{GetPeerName, "5.8", false, func() error {
		return errors.Join(attachType(ebpf.CGroupSockAddr, ebpf.AttachCgroupInet4GetPeername)(),
			attachType(ebpf.CGroupSockAddr, ebpf.AttachCgroupInet6GetPeername)())
	}},
}

// HaveNetnsCookieSockopt reports whether SO_NETNS_COOKIE works (Linux 5.14).
func HaveNetnsCookieSockopt() error { return haveNetnsCookieSockopt() }

func haveNetnsCookieSockopt() error {
	fd, err := unix.Socket(unix.AF_INET, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return fmt.Errorf("socket: %w", err)
	}
	defer unix.Close(fd)
	if _, err := unix.GetsockoptUint64(fd, unix.SOL_SOCKET, unix.SO_NETNS_COOKIE); err != nil {
		return fmt.Errorf("getsockopt SO_NETNS_COOKIE: %w", err)
	}
	return nil
}

func haveBTF() error {
	_, err := os.Stat("/sys/kernel/btf/vmlinux")
	return err
}

// Report is the outcome of every probe.
type Report struct {
	Features []api.Feature
}

// Run probes every feature.
func Run() Report { return run(all) }

func run(features []feature) Report {
	var r Report
	for _, f := range features {
		err := f.check()
		af := api.Feature{Name: f.name, MinKernel: f.minKernel, Required: f.required, OK: err == nil}
		if err != nil {
			af.Error = err.Error()
		}
		r.Features = append(r.Features, af)
	}
	return r
}

// Has reports whether the named feature was probed and is present.
func (r Report) Has(name string) bool {
	for _, f := range r.Features {
		if f.Name == name {
			return f.OK
		}
	}
	return false
}

// Err returns an error wrapping ErrNotSupported that names every missing
// required feature and its minimum kernel, or nil.
func (r Report) Err() error {
	var missing []error
	for _, f := range r.Features {
		if f.Required && !f.OK {
			missing = append(missing, fmt.Errorf("%s (Linux %s): %s", f.Name, f.MinKernel, f.Error))
		}
	}
	if len(missing) == 0 {
		return nil
	}
	return fmt.Errorf("%w on %s: %w", ErrNotSupported, runtime.GOARCH, errors.Join(missing...))
}
