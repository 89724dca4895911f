package demoapp

import (
	"bytes"
	"context"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"
)

func TestRoles(t *testing.T) {
	var got []string
	for _, c := range NewRootCmd().Commands() {
		if c.Name() != "help" && c.Name() != "completion" {
			got = append(got, c.Name())
		}
	}
	slices.Sort(got)
	if want := []string{"authors", "books", "loadgen", "ticker", "web"}; !slices.Equal(got, want) {
		t.Errorf("roles = %v, want %v", got, want)
	}
}

func TestParseArgs(t *testing.T) {
	tests := []struct {
		args []string
		ok   bool
		flag string // if set, its value must be want
		want string
	}{
		{[]string{"web"}, true, "listen", ":8080"},
		{[]string{"web", "--books=books.demo.svc.cluster.local:8081", "--authors=http://authors.demo.svc.cluster.local:8082"}, true, "books", "books.demo.svc.cluster.local:8081"},
		{[]string{"books"}, true, "listen", ":8081"},
		{[]string{"books", "--failure-rate=0.2"}, true, "failure-rate", "0.2"},
		{[]string{"authors", "--failure-rate=0.1"}, true, "listen", ":8082"},
		{[]string{"ticker", "--interval=2s"}, true, "interval", "2s"},
		{[]string{"loadgen", "--rps=20", "--target=http://web.demo.svc.cluster.local:8080"}, true, "rps", "20"},
		{nil, false, "", ""},
		{[]string{"nope"}, false, "", ""},
		{[]string{"web", "--nope=1"}, false, "", ""},
		{[]string{"web", "extra"}, false, "", ""},
		{[]string{"web", "--authors=authors:8082"}, false, "", ""},
		{[]string{"authors", "--failure-rate=1.5"}, false, "", ""},
		{[]string{"books", "--failure-rate=-0.1"}, false, "", ""},
		{[]string{"ticker", "--interval=0s"}, false, "", ""},
		{[]string{"loadgen", "--rps=0"}, false, "", ""},
		{[]string{"loadgen", "--target=web:8080"}, false, "", ""},
		{[]string{"loadgen", "--concurrency=0"}, false, "", ""},
	}
	for _, tt := range tests {
		cmd, err := ParseArgs(tt.args)
		if (err == nil) != tt.ok {
			t.Errorf("ParseArgs(%q) = %v, want ok %v", tt.args, err, tt.ok)
			continue
		}
		if err == nil && tt.flag != "" {
			if got := cmd.Flags().Lookup(tt.flag).Value.String(); got != tt.want {
				t.Errorf("ParseArgs(%q): --%s = %q, want %q", tt.args, tt.flag, got, tt.want)
			}
		}
	}
}

// syncBuffer is a bytes.Buffer safe for concurrent use.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (b *syncBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.b.Write(p)
}

func (b *syncBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.b.String()
}

// TestCommandsRunUntilCanceled runs each role through the command tree, as
// sluice-demo does, and checks that it starts, logs with its component, and
// returns nil when its context ends (as on SIGTERM).
func TestCommandsRunUntilCanceled(t *testing.T) {
	tests := []struct {
		args []string
		log  string // a message the role logs once running
	}{
		{[]string{"web", "--listen=127.0.0.1:0"}, `msg=serving`},
		{[]string{"books", "--listen=127.0.0.1:0"}, `msg=serving`},
		{[]string{"authors", "--listen=127.0.0.1:0", "--failure-rate=0.1"}, `msg=serving`},
		{[]string{"ticker", "--listen=127.0.0.1:0"}, `msg=serving`},
		{[]string{"loadgen", "--target=http://" + closedAddr(t), "--rps=50"}, `msg="sending load"`},
	}
	for _, tt := range tests {
		t.Run(tt.args[0], func(t *testing.T) {
			var stderr syncBuffer
			cmd := NewRootCmd()
			cmd.SetArgs(tt.args)
			cmd.SetErr(&stderr)
			ctx, cancel := context.WithCancel(t.Context())
			defer cancel()
			done := make(chan error, 1)
			go func() { done <- cmd.ExecuteContext(ctx) }()
			waitFor(t, tt.log+" in the log", func() bool { return strings.Contains(stderr.String(), tt.log) })
			if want := "component=" + tt.args[0]; !strings.Contains(stderr.String(), want) {
				t.Errorf("log %q lacks %s", stderr.String(), want)
			}
			cancel()
			select {
			case err := <-done:
				if err != nil {
					t.Errorf("%s returned %v after cancel, want nil", tt.args[0], err)
				}
			case <-time.After(hangGuard):
				t.Fatalf("%s still running after cancel", tt.args[0])
			}
		})
	}
}
