package cri

import (
	"encoding/json"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"strconv"
	"strings"

	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"
	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"

	"github.com/sluice-mesh/sluice/test/cluster/cri/container"
)

// The state directory's layout:
//
//	<state>/images.json                       the pulled references
//	<state>/sandboxes/<id>/sandbox.json       a sandbox's record
//	<state>/sandboxes/<id>/resolv.conf        its containers' /etc/resolv.conf
//	<state>/sandboxes/<id>/hostname           its containers' /etc/hostname
//	<state>/containers/<id>/container.json    a container's record
//	<state>/containers/<id>/...               the container package's scaffolding
const (
	sandboxesDir  = "sandboxes"
	containersDir = "containers"
	sandboxFile   = "sandbox.json"
	containerFile = "container.json"
	imagesFile    = "images.json"
)

// sandboxRecord is what procri keeps of a pod sandbox, persisted as JSON.
type sandboxRecord struct {
	ID string `json:"id"`
	// Config is the PodSandboxConfig in protobuf's JSON form.
	Config         json.RawMessage `json:"config"`
	RuntimeHandler string          `json:"runtimeHandler,omitempty"`
	CreatedAt      int64           `json:"createdAt"`
	State          string          `json:"state"`
	// HolderPID and HolderStart identify the holder process (start time in
	// clock ticks since boot, from /proc/<pid>/stat), so that a restarted
	// procri does not mistake a reused pid for it.
	HolderPID   int    `json:"holderPID,omitempty"`
	HolderStart uint64 `json:"holderStart,omitempty"`
	// CgroupParent is the kubelet's pod cgroup; HolderCgroup the holder's.
	CgroupParent string `json:"cgroupParent"`
	HolderCgroup string `json:"holderCgroup"`
	HostNetwork  bool   `json:"hostNetwork,omitempty"`
	HostIPC      bool   `json:"hostIPC,omitempty"`
	// NetworkUp is true between a successful CNI Setup and its Teardown.
	NetworkUp bool         `json:"networkUp,omitempty"`
	IPs       []netip.Addr `json:"ips,omitempty"`
}

// launch is how a container's processes run: computed and validated at
// CreateContainer, used by StartContainer and ExecSync.
type launch struct {
	Args         []string          `json:"args"`
	Env          []string          `json:"env"`
	Dir          string            `json:"dir"`
	UID          uint32            `json:"uid"`
	GID          uint32            `json:"gid"`
	Groups       []uint32          `json:"groups,omitempty"`
	Caps         []string          `json:"caps"`
	NoNewPrivs   bool              `json:"noNewPrivs,omitempty"`
	ReadOnlyRoot bool              `json:"readOnlyRoot,omitempty"`
	OOMScoreAdj  int               `json:"oomScoreAdj,omitempty"`
	Mounts       []container.Mount `json:"mounts,omitempty"`
	StopSignal   int               `json:"stopSignal"`
}

// containerRecord is what procri keeps of a container, persisted as JSON.
type containerRecord struct {
	ID        string `json:"id"`
	SandboxID string `json:"sandboxID"`
	// Config is the ContainerConfig in protobuf's JSON form.
	Config json.RawMessage `json:"config"`
	// Resources are the current LinuxContainerResources (protobuf JSON).
	Resources json.RawMessage `json:"resources,omitempty"`
	// ImageRef is the normalized reference and ImageID the id of the image
	// the container was created from.
	ImageRef   string `json:"imageRef"`
	ImageID    string `json:"imageID"`
	CreatedAt  int64  `json:"createdAt"`
	StartedAt  int64  `json:"startedAt,omitempty"`
	FinishedAt int64  `json:"finishedAt,omitempty"`
	State      string `json:"state"`
	ExitCode   int32  `json:"exitCode,omitempty"`
	Reason     string `json:"reason,omitempty"`
	Message    string `json:"message,omitempty"`
	PID        int    `json:"pid,omitempty"`
	PIDStart   uint64 `json:"pidStart,omitempty"`
	// LogPath is the absolute log file path, "" when the kubelet gave none.
	LogPath string `json:"logPath,omitempty"`
	Cgroup  string `json:"cgroup"`
	// OOMKillsAtStart is the cgroup's OOM kill count when the process
	// started: more at exit means the cgroup OOM killer struck.
	OOMKillsAtStart uint64 `json:"oomKillsAtStart,omitempty"`
	Launch          launch `json:"launch"`
}

// writeJSON writes v to path atomically: a temporary file in the same
// directory, synced, then renamed over path.
func writeJSON(path string, v any) error {
	data, err := json.MarshalIndent(v, "", "  ")
	if err != nil {
		return fmt.Errorf("encode %s: %w", path, err)
	}
	return writeFileAtomic(path, append(data, '\n'), 0o600)
}

// writeFileAtomic writes data to path through a temporary file and rename.
func writeFileAtomic(path string, data []byte, perm os.FileMode) error {
	f, err := os.CreateTemp(filepath.Dir(path), "."+filepath.Base(path)+".tmp*")
	if err != nil {
		return fmt.Errorf("write %s: %w", path, err)
	}
	tmp := f.Name()
	_, err = f.Write(data)
	if err == nil {
		err = f.Chmod(perm)
	}
	if err == nil {
		err = f.Sync()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = os.Rename(tmp, path)
	}
	if err != nil {
		_ = os.Remove(tmp)
		return fmt.Errorf("write %s: %w", path, err)
	}
	return nil
}

// readJSON decodes the JSON file at path into v.
func readJSON(path string, v any) error {
	data, err := os.ReadFile(path)
	if err != nil {
		return fmt.Errorf("read state: %w", err)
	}
	if err := json.Unmarshal(data, v); err != nil {
		return fmt.Errorf("decode %s: %w", path, err)
	}
	return nil
}

// marshalProto is protobuf's JSON form of m.
func marshalProto(m proto.Message) (json.RawMessage, error) {
	data, err := protojson.Marshal(m)
	if err != nil {
		return nil, fmt.Errorf("encode %T: %w", m, err)
	}
	return data, nil
}

// unmarshalProto decodes protobuf JSON into m; empty data leaves m empty.
func unmarshalProto(data json.RawMessage, m proto.Message) error {
	if len(data) == 0 {
		return nil
	}
	if err := (protojson.UnmarshalOptions{DiscardUnknown: true}).Unmarshal(data, m); err != nil {
		return fmt.Errorf("decode %T: %w", m, err)
	}
	return nil
}

// readDirRecords reads every <dir>/<id>/<file> record, calling load for each;
// a directory without a record (a crash between mkdir and the first write)
// is reported to skip and left for the caller to clean up.
func readDirRecords(dir, file string, load func(id, path string) error, skip func(id string, err error)) error {
	entries, err := os.ReadDir(dir)
	if errors.Is(err, os.ErrNotExist) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("read state: %w", err)
	}
	for _, e := range entries {
		if !e.IsDir() {
			continue
		}
		path := filepath.Join(dir, e.Name(), file)
		if err := load(e.Name(), path); err != nil {
			skip(e.Name(), err)
		}
	}
	return nil
}

// procStartTime returns a process's start time in clock ticks since boot
// (field 22 of /proc/<pid>/stat), and false when the process does not exist
// or is a zombie (it has exited; only its status is left).
func procStartTime(pid int) (uint64, bool) {
	if pid <= 0 {
		return 0, false
	}
	data, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
	if err != nil {
		return 0, false
	}
	// The command name (field 2) is in parentheses and may hold spaces.
	i := strings.LastIndexByte(string(data), ')')
	if i < 0 {
		return 0, false
	}
	fields := strings.Fields(string(data[i+1:]))
	// fields[0] is field 3 (state); field 22 is fields[19].
	if len(fields) < 20 || fields[0] == "Z" || fields[0] == "X" {
		return 0, false
	}
	start, err := strconv.ParseUint(fields[19], 10, 64)
	if err != nil {
		return 0, false
	}
	return start, true
}

// sameProcess reports whether pid is still the process that started at
// start (clock ticks), and alive.
func sameProcess(pid int, start uint64) bool {
	got, ok := procStartTime(pid)
	return ok && got == start
}

// sandboxStateName and parseSandboxState convert states to and from their
// names in the records.
func sandboxStateName(s runtimeapi.PodSandboxState) string { return s.String() }

func parseSandboxState(s string) runtimeapi.PodSandboxState {
	if v, ok := runtimeapi.PodSandboxState_value[s]; ok {
		return runtimeapi.PodSandboxState(v)
	}
	return runtimeapi.PodSandboxState_SANDBOX_NOTREADY
}

// containerStateName and parseContainerState convert container states to
// and from their names in the records.
func containerStateName(s runtimeapi.ContainerState) string { return s.String() }

func parseContainerState(s string) runtimeapi.ContainerState {
	if v, ok := runtimeapi.ContainerState_value[s]; ok {
		return runtimeapi.ContainerState(v)
	}
	return runtimeapi.ContainerState_CONTAINER_UNKNOWN
}
