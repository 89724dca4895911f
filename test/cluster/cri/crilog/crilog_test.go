package crilog_test

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	v1 "k8s.io/api/core/v1"
	"k8s.io/cri-client/pkg/logs"

	"github.com/sluice-mesh/sluice/test/cluster/cri/crilog"
)

// readLogs reads path with the kubelet's reader and returns what it gives
// for stdout and stderr.
func readLogs(t *testing.T, path string) (stdout, stderr []byte) {
	t.Helper()
	var o, e bytes.Buffer
	opts := logs.NewLogOptions(&v1.PodLogOptions{}, time.Now())
	if err := logs.ReadLogs(context.Background(), nil, path, "", opts, nil, &o, &e); err != nil {
		t.Fatalf("kubelet ReadLogs: %v", err)
	}
	return o.Bytes(), e.Bytes()
}

var recordRE = regexp.MustCompile(`^(\S+) (stdout|stderr) ([PF]) (.*)$`)

// records parses path strictly: every line is a record with a UTC
// RFC3339Nano timestamp, P records are full-sized except a final one.
func records(t *testing.T, path string) []string {
	t.Helper()
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	if len(data) > 0 && data[len(data)-1] != '\n' {
		t.Fatalf("log does not end with a newline: %q", tail(data))
	}
	var tags []string
	sc := bufio.NewScanner(bytes.NewReader(data))
	sc.Buffer(nil, 4*crilog.MaxContent)
	for sc.Scan() {
		m := recordRE.FindStringSubmatch(sc.Text())
		if m == nil {
			t.Fatalf("not a CRI log record: %q", tail(sc.Bytes()))
		}
		ts, err := time.Parse(time.RFC3339Nano, m[1])
		if err != nil || !strings.HasSuffix(m[1], "Z") || ts.Location() != time.UTC {
			t.Errorf("timestamp %q is not RFC3339Nano UTC (%v)", m[1], err)
		}
		if len(m[4]) > crilog.MaxContent {
			t.Errorf("record content of %d bytes, more than %d", len(m[4]), crilog.MaxContent)
		}
		tags = append(tags, m[2]+":"+m[3])
	}
	if err := sc.Err(); err != nil {
		t.Fatal(err)
	}
	return tags
}

func tail(b []byte) []byte {
	if len(b) > 80 {
		return b[len(b)-80:]
	}
	return b
}

func TestRoundTrip(t *testing.T) {
	long := strings.Repeat("x", crilog.MaxContent)
	tests := []struct {
		name   string
		writes []string
		tags   []string // stream:tag of the records, in order
	}{
		{"lines", []string{"one\ntwo\n"}, []string{"stdout:F", "stdout:F"}},
		{"empty lines", []string{"\n\na\n\n"}, []string{"stdout:F", "stdout:F", "stdout:F", "stdout:F"}},
		{"line split across writes", []string{"he", "llo", " world\nbye\n"}, []string{"stdout:F", "stdout:F"}},
		{"unterminated tail", []string{"done\nno newline"}, []string{"stdout:F", "stdout:P"}},
		{"only unterminated", []string{"abc"}, []string{"stdout:P"}},
		{"exactly MaxContent", []string{long + "\n"}, []string{"stdout:F"}},
		{"MaxContent+1", []string{long + "y\n"}, []string{"stdout:P", "stdout:F"}},
		{"3x MaxContent+5 in small writes", chunk(long+long+long+"12345\nend\n", 1000), []string{"stdout:P", "stdout:P", "stdout:P", "stdout:F", "stdout:F"}},
		{"long unterminated tail", []string{"a\n" + long + long + "zz"}, []string{"stdout:F", "stdout:P", "stdout:P", "stdout:P"}},
		{"tail of exactly MaxContent", []string{long}, []string{"stdout:P"}},
		{"10 MaxContent in one write, then a newline", []string{strings.Repeat(long, 10) + "x", "\n"}, append(slices.Repeat([]string{"stdout:P"}, 10), "stdout:F")},
		{"binary and carriage returns", []string{"a\r\x00\xff b\t\n"}, []string{"stdout:F"}},
		{"nothing", nil, nil},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			path := filepath.Join(t.TempDir(), "a", "b", "0.log") // parents are created
			f, err := crilog.Open(path)
			if err != nil {
				t.Fatal(err)
			}
			w := f.Stream("stdout")
			var want strings.Builder
			for _, s := range tc.writes {
				n, err := w.Write([]byte(s))
				if err != nil || n != len(s) {
					t.Fatalf("Write = %d, %v; want %d, nil", n, err, len(s))
				}
				want.WriteString(s)
			}
			if err := w.Close(); err != nil {
				t.Fatal(err)
			}
			if err := f.Close(); err != nil {
				t.Fatal(err)
			}
			if got := records(t, path); strings.Join(got, " ") != strings.Join(tc.tags, " ") {
				t.Errorf("records %v, want %v", got, tc.tags)
			}
			stdout, stderr := readLogs(t, path)
			if string(stdout) != want.String() {
				t.Errorf("kubelet reads stdout %q\nwant %q", clip(stdout), clip([]byte(want.String())))
			}
			if len(stderr) != 0 {
				t.Errorf("kubelet reads stderr %q, want nothing", stderr)
			}
		})
	}
}

func chunk(s string, n int) []string {
	var out []string
	for len(s) > n {
		out = append(out, s[:n])
		s = s[n:]
	}
	return append(out, s)
}

func clip(b []byte) string {
	if len(b) > 200 {
		return fmt.Sprintf("%s...(%d bytes)", b[:200], len(b))
	}
	return string(b)
}

// TestConcurrentStreams writes both streams of one file from two goroutines
// and checks that the kubelet separates them back exactly.
func TestConcurrentStreams(t *testing.T) {
	path := filepath.Join(t.TempDir(), "0.log")
	f, err := crilog.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	want := map[string]string{}
	var wg sync.WaitGroup
	for _, name := range []string{"stdout", "stderr"} {
		var b strings.Builder
		for i := range 2000 {
			// Lines of varying length, some longer than a record.
			fmt.Fprintf(&b, "%s line %d %s\n", name, i, strings.Repeat(name[3:4], (i*37)%(crilog.MaxContent+500)))
		}
		b.WriteString(name + " tail")
		want[name] = b.String()
		wg.Add(1)
		go func() {
			defer wg.Done()
			w := f.Stream(name)
			for _, c := range chunk(want[name], 4093) {
				if _, err := w.Write([]byte(c)); err != nil {
					t.Error(err)
					return
				}
			}
			if err := w.Close(); err != nil {
				t.Error(err)
			}
		}()
	}
	wg.Wait()
	if err := f.Close(); err != nil {
		t.Fatal(err)
	}
	records(t, path)
	stdout, stderr := readLogs(t, path)
	if string(stdout) != want["stdout"] {
		t.Errorf("stdout differs: got %d bytes, want %d", len(stdout), len(want["stdout"]))
	}
	if string(stderr) != want["stderr"] {
		t.Errorf("stderr differs: got %d bytes, want %d", len(stderr), len(want["stderr"]))
	}
}

// TestReopen rotates the log as the kubelet does: rename, then Reopen.
func TestReopen(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "0.log")
	if err := os.WriteFile(path, []byte("2024-01-01T00:00:00.000000001Z stdout F existing\n"), 0o640); err != nil {
		t.Fatal(err)
	}
	f, err := crilog.Open(path) // appends
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	out, errw := f.Stream("stdout"), f.Stream("stderr")
	io.WriteString(out, "before\n")
	io.WriteString(errw, "half")
	rotated := path + ".20240101-000000"
	if err := os.Rename(path, rotated); err != nil {
		t.Fatal(err)
	}
	if err := f.Reopen(); err != nil {
		t.Fatal(err)
	}
	io.WriteString(errw, " line\n")
	io.WriteString(out, "after\n")
	if err := out.Close(); err != nil {
		t.Fatal(err)
	}
	if err := errw.Close(); err != nil {
		t.Fatal(err)
	}
	if o, e := readLogs(t, rotated); string(o) != "existing\nbefore\n" || len(e) != 0 {
		t.Errorf("rotated log reads %q, %q; want %q, %q", o, e, "existing\nbefore\n", "")
	}
	if o, e := readLogs(t, path); string(o) != "after\n" || string(e) != "half line\n" {
		t.Errorf("new log reads %q, %q; want %q, %q", o, e, "after\n", "half line\n")
	}
}

func TestClosed(t *testing.T) {
	path := filepath.Join(t.TempDir(), "0.log")
	f, err := crilog.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	w := f.Stream("stdout")
	if err := w.Close(); err != nil {
		t.Fatal(err)
	}
	if _, err := w.Write([]byte("x\n")); err == nil {
		t.Error("Write after stream Close succeeded")
	}
	if err := f.Close(); err != nil {
		t.Fatal(err)
	}
	if _, err := f.Stream("stderr").Write([]byte("x\n")); err == nil {
		t.Error("Write after File Close succeeded")
	}
	if err := f.Reopen(); err == nil {
		t.Error("Reopen after Close succeeded")
	}
	if _, err := crilog.Open(filepath.Join(path, "sub", "1.log")); err == nil {
		t.Error("Open under a regular file succeeded")
	}
}
