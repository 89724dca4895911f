package main

import (
	"bufio"
	"bytes"
	"encoding/json"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"
)

func TestFlags(t *testing.T) {
	cases := []struct {
		name string
		args []string
		code int
	}{
		{"no url", nil, 2},
		{"zero concurrency", []string{"--url", "http://x/", "--concurrency", "0"}, 2},
		{"negative count", []string{"--url", "http://x/", "--count", "-1"}, 2},
		{"help", []string{"--help"}, 0},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			var out, errb bytes.Buffer
			if code := run(tc.args, strings.NewReader(""), &out, &errb); code != tc.code {
				t.Errorf("exit %d, want %d (stderr %q)", code, tc.code, errb.String())
			}
		})
	}
}

// newServer answers with x-app-name "app" and its request's path as the
// status: /500 fails.
func newServer(t *testing.T) *httptest.Server {
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("X-App-Name", "app:"+r.Host)
		if r.URL.Path == "/500" {
			w.Header().Set("Sluice-Proxy-Error", "boom")
			w.WriteHeader(500)
		}
		io.WriteString(w, "hello")
	}))
	t.Cleanup(srv.Close)
	return srv
}

func decode(t *testing.T, out []byte) ([]Result, Done) {
	t.Helper()
	var rs []Result
	var done Done
	sc := bufio.NewScanner(bytes.NewReader(out))
	for sc.Scan() {
		if strings.Contains(sc.Text(), `"done"`) {
			if err := json.Unmarshal(sc.Bytes(), &done); err != nil {
				t.Fatal(err)
			}
			continue
		}
		var r Result
		if err := json.Unmarshal(sc.Bytes(), &r); err != nil {
			t.Fatalf("line %q: %v", sc.Text(), err)
		}
		rs = append(rs, r)
	}
	return rs, done
}

func TestCount(t *testing.T) {
	srv := newServer(t)
	cases := []struct {
		name       string
		path       string
		conc       string
		wantStatus int
		wantPErr   string
	}{
		{"sequential", "/", "1", 200, ""},
		{"concurrent", "/", "3", 200, ""},
		{"failing", "/500", "2", 500, "boom"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			var out, errb bytes.Buffer
			code := run([]string{"--url", srv.URL + tc.path, "--host", "web:8080", "--count", "10", "--concurrency", tc.conc}, strings.NewReader(""), &out, &errb)
			if code != 0 {
				t.Fatalf("exit %d: %s", code, errb.String())
			}
			rs, done := decode(t, out.Bytes())
			if !done.Done || done.Sent != 10 || len(rs) != 10 {
				t.Fatalf("%d results, last line %+v; want 10 and done", len(rs), done)
			}
			seen := map[int64]bool{}
			for _, r := range rs {
				if r.Status != tc.wantStatus || r.App != "app:web:8080" || r.ProxyError != tc.wantPErr || r.Err != "" {
					t.Errorf("result %+v", r)
				}
				seen[r.Seq] = true
			}
			if len(seen) != 10 {
				t.Errorf("sequence numbers %v, want 0-9 once each", seen)
			}
		})
	}
}

func TestTransportError(t *testing.T) {
	srv := newServer(t)
	url := srv.URL
	srv.Close()
	var out, errb bytes.Buffer
	if code := run([]string{"--url", url, "--count", "2"}, strings.NewReader(""), &out, &errb); code != 0 {
		t.Fatalf("exit %d: %s", code, errb.String())
	}
	rs, _ := decode(t, out.Bytes())
	if len(rs) != 2 || rs[0].Err == "" || rs[0].Status != 0 {
		t.Fatalf("results %+v, want two transport errors", rs)
	}
}

// Without --count, reqloop sends until its stdin closes, then finishes the
// requests in flight and prints its last line.
func TestUntilStdinCloses(t *testing.T) {
	srv := newServer(t)
	inR, inW := io.Pipe()
	outR, outW := io.Pipe()
	exit := make(chan int, 1)
	go func() {
		exit <- run([]string{"--url", srv.URL, "--concurrency", "2"}, inR, outW, io.Discard)
		outW.Close()
	}()
	var out bytes.Buffer
	lines := make(chan struct{}, 1)
	read := make(chan struct{})
	go func() {
		defer close(read)
		sc := bufio.NewScanner(outR)
		for sc.Scan() {
			out.Write(sc.Bytes())
			out.WriteByte('\n')
			select {
			case lines <- struct{}{}:
			default:
			}
		}
	}()
	// Let it send a while: at least 20 results.
	for n := 0; n < 20; n++ {
		select {
		case <-lines:
		case <-time.After(time.Minute):
			t.Fatal("no results for a minute (hang guard)")
		}
	}
	inW.Close()
	select {
	case code := <-exit:
		if code != 0 {
			t.Fatalf("exit %d", code)
		}
	case <-time.After(time.Minute):
		t.Fatal("still running a minute after stdin closed (hang guard)")
	}
	<-read
	rs, done := decode(t, out.Bytes())
	if !done.Done || done.Sent != int64(len(rs)) || len(rs) < 20 {
		t.Fatalf("last line %+v after %d results", done, len(rs))
	}
	for _, r := range rs {
		if r.Status != 200 {
			t.Errorf("result %+v", r)
		}
	}
}
