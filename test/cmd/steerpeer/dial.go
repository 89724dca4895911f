package main

import (
	"context"
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"flag"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"strings"
	"time"
)

// dialResult is the line printed by a successful dial.
type dialResult struct {
	Local      string `json:"local"`
	Remote     string `json:"remote"`
	Sent       int64  `json:"sent"`
	SentSHA256 string `json:"sent_sha256"`
	Response   string `json:"response"` // the first 200 bytes of the response
	Received   int64  `json:"received"`
}

// dialHolding is printed by dial --hold once the connection is up and "hello\n"
// was sent.
type dialHolding struct {
	Local  string `json:"local"`
	Remote string `json:"remote"`
	State  string `json:"state"` // "holding"
}

// dialError is the line printed when dial fails.
type dialError struct {
	Err string `json:"err"`
}

// maxResponse is how much of the response a dial reports.
const maxResponse = 200

type dialOptions struct {
	to           string
	bytes        int64
	seed         uint64
	expectSHA256 bool
	timeout      time.Duration
	hold         time.Duration
}

func runDial(args []string, out *output, stderr io.Writer) int {
	var o dialOptions
	fs := flag.NewFlagSet("steerpeer dial", flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.StringVar(&o.to, "to", "", "address to connect to (required)")
	fs.Int64Var(&o.bytes, "bytes", 0, "bytes of pseudo-random data to send")
	fs.Uint64Var(&o.seed, "seed", 1, "seed of the data (ChaCha8)")
	fs.BoolVar(&o.expectSHA256, "expect-sha256", false, "fail unless the response is the hex SHA-256 of the data sent")
	fs.DurationVar(&o.timeout, "timeout", 60*time.Second, "deadline for the whole exchange (after --hold)")
	fs.DurationVar(&o.hold, "hold", 0, `send "hello\n" instead of data and keep the connection open this long before closing it for writing`)
	if err := fs.Parse(args); err != nil {
		return 2
	}
	if o.to == "" || o.bytes < 0 {
		fmt.Fprintln(stderr, "steerpeer dial: need --to ADDR and --bytes >= 0")
		return 2
	}
	res, err := dial(o, out)
	if err != nil {
		out.json(dialError{Err: err.Error()})
		return 1
	}
	out.json(res)
	return 0
}

// dial runs one exchange: connect, send, half-close, read the response to EOF.
func dial(o dialOptions, out *output) (dialResult, error) {
	var res dialResult
	deadline := time.Now().Add(o.hold + o.timeout)
	ctx, cancel := context.WithDeadline(context.Background(), deadline)
	defer cancel()
	nc, err := new(net.Dialer).DialContext(ctx, "tcp", o.to)
	if err != nil {
		return res, fmt.Errorf("dial %s: %w", o.to, err)
	}
	c := nc.(*net.TCPConn)
	defer c.Close()
	c.SetDeadline(deadline)
	res.Local = addrPort(c.LocalAddr()).String()
	res.Remote = addrPort(c.RemoteAddr()).String()

	type readResult struct {
		head []byte
		n    int64
		err  error
	}
	rc := make(chan readResult, 1)
	go func() {
		var r readResult
		r.head, r.n, r.err = readAll(plainConn{c})
		rc <- r
	}()

	h := sha256.New()
	w := io.MultiWriter(plainConn{c}, h)
	if o.hold > 0 {
		res.Sent = int64(len("hello\n"))
		_, err = io.WriteString(w, "hello\n")
		if err == nil {
			out.json(dialHolding{Local: res.Local, Remote: res.Remote, State: "holding"})
			time.Sleep(o.hold)
		}
	} else {
		res.Sent = o.bytes
		err = sendData(w, o.bytes, o.seed)
	}
	if err != nil {
		return res, fmt.Errorf("send: %w", err)
	}
	if err := c.CloseWrite(); err != nil {
		return res, fmt.Errorf("close for writing: %w", err)
	}
	res.SentSHA256 = hex.EncodeToString(h.Sum(nil))
	r := <-rc
	res.Response, res.Received = string(r.head), r.n
	if r.err != nil {
		return res, fmt.Errorf("read response after %d bytes: %w", r.n, r.err)
	}
	if o.expectSHA256 && strings.TrimSpace(res.Response) != res.SentSHA256 {
		return res, fmt.Errorf("response %q is not the sha256 of the data sent (%s)", res.Response, res.SentSHA256)
	}
	return res, nil
}

// sendData writes n bytes of the ChaCha8 stream seeded by seed, 64 KiB at a time.
func sendData(w io.Writer, n int64, seed uint64) error {
	var key [32]byte
	binary.LittleEndian.PutUint64(key[:], seed)
	rng := rand.NewChaCha8(key)
	buf := make([]byte, bufSize)
	for n > 0 {
		k := min(int64(len(buf)), n)
		rng.Read(buf[:k])
		if _, err := w.Write(buf[:k]); err != nil {
			return err
		}
		n -= k
	}
	return nil
}

// readAll reads r to EOF and returns the first maxResponse bytes and the count.
func readAll(r io.Reader) (head []byte, n int64, err error) {
	buf := make([]byte, bufSize)
	for {
		k, err := r.Read(buf)
		if k > 0 && len(head) < maxResponse {
			head = append(head, buf[:min(k, maxResponse-len(head))]...)
		}
		n += int64(k)
		if errors.Is(err, io.EOF) {
			return head, n, nil
		}
		if err != nil {
			return head, n, err
		}
	}
}
