package main

import (
	"bytes"
	"strconv"
	"strings"
	"testing"

	"github.com/sluice-mesh/sluice/test/proxytest/payload"
)

func TestWebSocket(t *testing.T) {
	s := startServe(t)
	rs := run[WSResult](t, "ws", "--url", "ws://"+s.ready.HTTP+"/ws", "--host", "web:8080", "--messages", "20", "--size", "5000")
	if len(rs) != 1 {
		t.Fatalf("%d results", len(rs))
	}
	r := rs[0]
	if r.Err != "" || r.Status != 101 || r.Messages != 20 || r.Bytes != 100000 || r.Subprotocol != "echo" || r.CloseCode != 1000 {
		t.Errorf("got %+v", r)
	}
}

func TestTCPHalfClose(t *testing.T) {
	s := startServe(t)
	for _, n := range []int64{0, 1, 4 << 20} {
		rs := run[TCPResult](t, "tcp", "--addr", s.ready.TCPEcho, "--bytes", itoa(n), "--seed", "5")
		r := rs[0]
		want := payload.SHA256(5, n)
		if r.Err != "" || !r.EOF || r.Sent != n || r.Received != n || r.SentSHA256 != want || r.ReceivedSHA256 != want {
			t.Errorf("%d bytes: got %+v, want the echo of all of them and EOF", n, r)
		}
		ev := s.event(t, "tcp")
		if ev["received"].(float64) != float64(n) || ev["eof"] != true {
			t.Errorf("server event %v", ev)
		}
	}
}

func TestOpaque(t *testing.T) {
	s := startServe(t)
	rs := run[OpaqueResult](t, "opaque", "--addr", s.ready.Opaque, "--frames", "5", "--size", "70000")
	r := rs[0]
	if r.Err != "" || r.Frames != 5 || r.Bytes != 350000 || r.Greeting != "sluice-opaque/1 app-1" {
		t.Errorf("got %+v", r)
	}
	if ev := s.event(t, "opaque"); ev["frames"].(float64) != 5 || ev["err"] != nil {
		t.Errorf("server event %v", ev)
	}
}

func TestFrames(t *testing.T) {
	cases := []struct {
		name    string
		wire    []byte
		magic   [4]byte
		want    []byte
		wantErr string
	}{
		{"empty frame", []byte{0, 0xFF, 'S', 'Q', 0, 0, 0, 0}, magicRequest, []byte{}, ""},
		{"frame", []byte{0, 0xFF, 'S', 'Q', 0, 0, 0, 2, 'h', 'i'}, magicRequest, []byte("hi"), ""},
		{"wrong magic", []byte("GET / HTTP/1.1\r\n"), magicRequest, nil, "magic"},
		{"truncated", []byte{0, 0xFF, 'S', 'Q', 0, 0, 0, 9, 'h'}, magicRequest, nil, "body"},
		{"too large", []byte{0, 0xFF, 'S', 'Q', 0xFF, 0, 0, 0}, magicRequest, nil, "too large"},
		{"eof", nil, magicRequest, nil, "EOF"},
	}
	for _, tc := range cases {
		t.Run(strings.ReplaceAll(tc.name, " ", "_"), func(t *testing.T) {
			got, err := readFrame(bytes.NewReader(tc.wire), tc.magic)
			if tc.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
					t.Errorf("err %v, want one containing %q", err, tc.wantErr)
				}
				return
			}
			if err != nil || !bytes.Equal(got, tc.want) {
				t.Errorf("got %q %v, want %q", got, err, tc.want)
			}
		})
	}
	var buf bytes.Buffer
	if err := writeFrame(&buf, magicReply, []byte("abc")); err != nil {
		t.Fatal(err)
	}
	if got, err := readFrame(&buf, magicReply); err != nil || string(got) != "abc" {
		t.Errorf("round trip: %q %v", got, err)
	}
}

func itoa(n int64) string { return strconv.FormatInt(n, 10) }
