package main

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"net"
	"time"

	"github.com/spf13/cobra"

	"github.com/sluice-mesh/sluice/test/proxytest/payload"
)

// TCPEvent is the line serve prints when a TCP echo connection ends.
type TCPEvent struct {
	Event    string `json:"event"` // "tcp"
	Remote   string `json:"remote"`
	Local    string `json:"local"`
	Received int64  `json:"received"`
	EOF      bool   `json:"eof"` // the client half-closed
	Err      string `json:"err,omitempty"`
}

// echoConn echoes c until EOF, then half-closes it and waits for the
// client to close.
func (a *app) echoConn(c *net.TCPConn) {
	ev := TCPEvent{Event: "tcp", Remote: c.RemoteAddr().String(), Local: c.LocalAddr().String()}
	buf := make([]byte, copyBufSize)
	var err error
	for {
		var n int
		n, err = c.Read(buf)
		if n > 0 {
			ev.Received += int64(n)
			if _, werr := c.Write(buf[:n]); werr != nil {
				err = werr
				break
			}
		}
		if err != nil {
			break
		}
	}
	if errors.Is(err, io.EOF) {
		ev.EOF, err = true, c.CloseWrite()
		if err == nil {
			_ = c.SetReadDeadline(time.Now().Add(30 * time.Second))
			_, _ = io.Copy(io.Discard, c)
		}
	}
	ev.Err = errString(err)
	a.out.line(ev)
}

// tcpOptions are the flags of `testapp tcp`.
type tcpOptions struct {
	addr    string
	bytes   int64
	seed    uint64
	timeout time.Duration
}

// TCPResult is the line `testapp tcp` prints.
type TCPResult struct {
	Local          string `json:"local"`
	Remote         string `json:"remote"`
	Sent           int64  `json:"sent"`
	SentSHA256     string `json:"sent_sha256"`
	Received       int64  `json:"received"`
	ReceivedSHA256 string `json:"received_sha256"`
	EOF            bool   `json:"eof"` // the server half-closed after our CloseWrite
	Err            string `json:"err,omitempty"`
}

func newCmdTCP() *cobra.Command {
	o := &tcpOptions{}
	cmd := &cobra.Command{
		Use:   "tcp",
		Short: "Send bytes to a TCP echo server, half-close, read the echo to EOF",
		Long: `tcp sends --bytes deterministic bytes while reading the echo, then
half-closes (CloseWrite) and keeps reading until the server's EOF: with an
echo server the received hash equals the sent one only if the half-close
reached the server and the echo after it came back.`,
		Args: cobra.NoArgs,
		RunE: runE(o.validate, oneLine(o.run)),
	}
	f := cmd.Flags()
	f.StringVar(&o.addr, "addr", "", "server address host:port (required)")
	f.Int64Var(&o.bytes, "bytes", 1<<20, "bytes to send")
	f.Uint64Var(&o.seed, "seed", 1, "seed of the bytes")
	f.DurationVar(&o.timeout, "timeout", 120*time.Second, "give up after this long")
	return cmd
}

func (o *tcpOptions) validate() error {
	if o.addr == "" || o.bytes < 0 {
		return errors.New("validate flags: --addr is required, --bytes not negative")
	}
	return nil
}

func (o *tcpOptions) run(ctx context.Context) (res TCPResult) {
	c, done, err := session(ctx, o.addr, o.timeout)
	if err != nil {
		res.Err = err.Error()
		return res
	}
	defer done()
	res.Local, res.Remote = c.LocalAddr().String(), c.RemoteAddr().String()
	werr := make(chan error, 1)
	go func() {
		h := sha256.New()
		n, err := io.CopyBuffer(writerOnly{io.MultiWriter(c, h)}, payload.NewReader(o.seed, o.bytes), make([]byte, copyBufSize))
		res.Sent, res.SentSHA256 = n, hex.EncodeToString(h.Sum(nil))
		if err == nil {
			err = c.CloseWrite()
		}
		werr <- err
	}()
	h := sha256.New()
	n, rerr := io.CopyBuffer(h, readerOnly{c}, make([]byte, copyBufSize))
	res.Received, res.ReceivedSHA256 = n, hex.EncodeToString(h.Sum(nil))
	res.EOF = rerr == nil
	if err := <-werr; err != nil {
		res.Err = fmt.Sprintf("write: %v", err)
	} else if rerr != nil {
		res.Err = fmt.Sprintf("read: %v", rerr)
	}
	return res
}

// readerOnly and writerOnly hide ReadFrom/WriteTo, so copies use plain
// read and write (never splice).
type readerOnly struct{ io.Reader }

type writerOnly struct{ io.Writer }
