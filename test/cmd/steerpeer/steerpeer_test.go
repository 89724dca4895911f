package main

import (
	"bufio"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os/exec"
	"strings"
	"testing"
	"time"

	"github.com/sluice-mesh/sluice/test/netns"
)

// peer is a running steerpeer proxy or serve.
type peer struct {
	lines chan string
}

// start runs cmd (a steerpeer proxy or serve) and waits for READY.
func start(t *testing.T, cmd *exec.Cmd) *peer {
	t.Helper()
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	var stderr strings.Builder
	cmd.Stderr = &stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		cmd.Process.Kill()
		cmd.Wait()
		if t.Failed() && stderr.Len() > 0 {
			t.Logf("%s stderr: %s", cmd.Args, stderr.String())
		}
	})
	p := &peer{lines: make(chan string, 100)}
	ready := make(chan bool, 1)
	go func() {
		sc := bufio.NewScanner(stdout)
		for sc.Scan() {
			if sc.Text() == "READY" {
				ready <- true
				continue
			}
			p.lines <- sc.Text()
		}
		close(ready)
	}()
	select {
	case ok := <-ready:
		if !ok {
			cmd.Wait()
			t.Fatalf("%s exited before READY: %s", cmd.Args, stderr.String())
		}
	case <-time.After(10 * time.Second):
		t.Fatalf("%s: no READY after 10s", cmd.Args)
	}
	return p
}

// next decodes the next JSON line the peer prints into v.
func (p *peer) next(t *testing.T, v any) {
	t.Helper()
	select {
	case l := <-p.lines:
		if err := json.Unmarshal([]byte(l), v); err != nil {
			t.Fatalf("decode %q: %v", l, err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("no JSON line after 10s")
	}
}

// runDialCmd runs a dial command and decodes its output line.
func runDialCmd(t *testing.T, cmd *exec.Cmd) (dialResult, dialError, error) {
	t.Helper()
	out, err := cmd.Output()
	var res dialResult
	var derr dialError
	lines := strings.Split(strings.TrimSpace(string(out)), "\n")
	last := lines[len(lines)-1]
	if jerr := json.Unmarshal([]byte(last), &res); jerr != nil {
		t.Fatalf("decode dial output %q: %v", out, jerr)
	}
	json.Unmarshal([]byte(last), &derr)
	return res, derr, err
}

// freePort returns a TCP port that was free on 127.0.0.1 and ::1 a moment ago.
func freePort(t *testing.T) int {
	t.Helper()
	for range 20 {
		l, err := net.Listen("tcp4", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		port := l.Addr().(*net.TCPAddr).Port
		l.Close()
		if l6, err := net.Listen("tcp6", fmt.Sprintf("[::1]:%d", port)); err == nil {
			l6.Close()
			return port
		}
	}
	t.Fatal("no free port")
	return 0
}

// chachaSHA256 is the sha256 of the first n bytes dial sends with seed.
func chachaSHA256(n int64, seed uint64) string {
	h := sha256.New()
	sendData(h, n, seed)
	return hex.EncodeToString(h.Sum(nil))
}

func TestServeDialEcho(t *testing.T) {
	bin := netns.BuildTool(t, "./test/cmd/steerpeer")
	addr := fmt.Sprintf("127.0.0.1:%d", freePort(t))
	srv := start(t, exec.Command(bin, "serve", "--listen", addr, "--mode", "echo"))

	const n = 300_000
	res, _, err := runDialCmd(t, exec.Command(bin, "dial", "--to", addr, "--bytes", fmt.Sprint(n), "--seed", "7"))
	if err != nil {
		t.Fatalf("dial: %v", err)
	}
	if res.Sent != n || res.Received != n || res.Remote != addr {
		t.Errorf("dial result %+v, want %d bytes both ways to %s", res, n, addr)
	}
	if want := chachaSHA256(n, 7); res.SentSHA256 != want {
		t.Errorf("sent_sha256 %s, want %s", res.SentSHA256, want)
	}
	if res.Response == "" {
		t.Errorf("empty response")
	}
	var ev serveEvent
	srv.next(t, &ev)
	if ev.Local != addr || ev.Remote != res.Local {
		t.Errorf("serve saw %+v, dial was %s -> %s", ev, res.Local, res.Remote)
	}
}

func TestServeDialSHA256(t *testing.T) {
	bin := netns.BuildTool(t, "./test/cmd/steerpeer")
	addr := fmt.Sprintf("127.0.0.1:%d", freePort(t))
	start(t, exec.Command(bin, "serve", "--listen", addr, "--mode", "sha256"))

	const n = 8 << 20
	res, _, err := runDialCmd(t, exec.Command(bin, "dial", "--to", addr, "--bytes", fmt.Sprint(n), "--seed", "42", "--expect-sha256"))
	if err != nil {
		t.Fatalf("dial: %v", err)
	}
	want := chachaSHA256(n, 42)
	if res.Sent != n || res.SentSHA256 != want || res.Response != want+"\n" || res.Received != int64(len(want)+1) {
		t.Errorf("dial result %+v, want sha256 %s", res, want)
	}

	// --expect-sha256 against an echo server fails with an err line.
	echoAddr := fmt.Sprintf("127.0.0.1:%d", freePort(t))
	start(t, exec.Command(bin, "serve", "--listen", echoAddr))
	_, derr, err := runDialCmd(t, exec.Command(bin, "dial", "--to", echoAddr, "--bytes", "10", "--expect-sha256"))
	if err == nil || !strings.Contains(derr.Err, "not the sha256") {
		t.Errorf("dial --expect-sha256 to echo: err %v, line %+v", err, derr)
	}
}

func TestDialHold(t *testing.T) {
	bin := netns.BuildTool(t, "./test/cmd/steerpeer")
	addr := fmt.Sprintf("[::1]:%d", freePort(t))
	start(t, exec.Command(bin, "serve", "--listen", addr))
	cmd := exec.Command(bin, "dial", "--to", addr, "--hold", "300ms")
	began := time.Now()
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("dial --hold: %v: %s", err, out)
	}
	if time.Since(began) < 300*time.Millisecond {
		t.Errorf("dial --hold returned after %v", time.Since(began))
	}
	lines := strings.Split(strings.TrimSpace(string(out)), "\n")
	if len(lines) != 2 || !strings.Contains(lines[0], `"state":"holding"`) {
		t.Fatalf("output %q", out)
	}
	var res dialResult
	if err := json.Unmarshal([]byte(lines[1]), &res); err != nil || res.Response != "hello\n" {
		t.Errorf("final line %q (%v), want the echoed hello", lines[1], err)
	}
}

func TestProxyEcho(t *testing.T) {
	bin := netns.BuildTool(t, "./test/cmd/steerpeer")
	outPort, inPort := freePort(t), freePort(t)
	px := start(t, exec.Command(bin, "proxy", "--mode", "echo",
		"--outbound", fmt.Sprint(outPort), "--inbound", fmt.Sprint(inPort)))
	for _, tc := range []struct {
		listener string
		to       netip.AddrPort
	}{
		{"inbound", netip.MustParseAddrPort(fmt.Sprintf("127.0.0.1:%d", inPort))},
		{"inbound", netip.MustParseAddrPort(fmt.Sprintf("[::1]:%d", inPort))},
		{"outbound", netip.MustParseAddrPort(fmt.Sprintf("127.0.0.1:%d", outPort))},
		{"outbound", netip.MustParseAddrPort(fmt.Sprintf("[::1]:%d", outPort))},
	} {
		res, _, err := runDialCmd(t, exec.Command(bin, "dial", "--to", tc.to.String(), "--bytes", "1000"))
		if err != nil || res.Received != 1000 {
			t.Errorf("dial %v: %v, %+v", tc.to, err, res)
			continue
		}
		var ev proxyEvent
		px.next(t, &ev)
		if ev.Listener != tc.listener || ev.Local != tc.to.String() || ev.Remote != res.Local {
			t.Errorf("proxy event %+v for a dial %s -> %s", ev, res.Local, tc.to)
		}
		// Inbound: the original destination is the local address. Outbound without
		// a redirect: whatever conntrack says (the address itself) or an error.
		if tc.listener == "inbound" && ev.Orig != tc.to.String() {
			t.Errorf("inbound orig %q, want %v", ev.Orig, tc.to)
		}
		if tc.listener == "outbound" && ev.Orig != tc.to.String() && ev.Err == "" {
			t.Errorf("outbound orig %q without error, want %v", ev.Orig, tc.to)
		}
	}
}

var _ io.Writer = plainConn{}
