package main

import (
	"bufio"
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"time"

	"github.com/spf13/cobra"

	"github.com/sluice-mesh/sluice/test/proxytest/payload"
)

// The opaque protocol: frames of a 4-byte magic, a big-endian uint32 length
// and that many bytes. It starts with bytes that are neither HTTP nor TLS
// (0x00 0xFF), and the server speaks first, so a proxy that waited for the
// client's first bytes to detect the protocol would stall it.
var (
	magicGreeting = [4]byte{0x00, 0xFF, 'S', 'G'} // server → client, once: "sluice-opaque/1 NAME"
	magicRequest  = [4]byte{0x00, 0xFF, 'S', 'Q'} // client → server
	magicReply    = [4]byte{0x00, 0xFF, 'S', 'R'} // server → client: sha256(request) ‖ request XOR 0xA5
)

// maxFrame bounds a frame's payload.
const maxFrame = 16 << 20

// errFrameTooLarge is returned by readFrame for a length above maxFrame.
var errFrameTooLarge = errors.New("frame too large")

// writeFrame writes one frame.
func writeFrame(w io.Writer, magic [4]byte, p []byte) error {
	var hdr [8]byte
	copy(hdr[:], magic[:])
	binary.BigEndian.PutUint32(hdr[4:], uint32(len(p)))
	if _, err := w.Write(append(hdr[:], p...)); err != nil {
		return fmt.Errorf("write frame: %w", err)
	}
	return nil
}

// readFrame reads one frame and checks its magic. A clean EOF before the
// frame's first byte is io.EOF.
func readFrame(r io.Reader, want [4]byte) ([]byte, error) {
	var hdr [8]byte
	if _, err := io.ReadFull(r, hdr[:]); err != nil {
		if errors.Is(err, io.EOF) {
			return nil, io.EOF
		}
		return nil, fmt.Errorf("read frame header: %w", err)
	}
	if [4]byte(hdr[:4]) != want {
		return nil, fmt.Errorf("read frame: magic %x, want %x", hdr[:4], want)
	}
	n := binary.BigEndian.Uint32(hdr[4:])
	if n > maxFrame {
		return nil, fmt.Errorf("read frame of %d bytes: %w", n, errFrameTooLarge)
	}
	p := make([]byte, n)
	if _, err := io.ReadFull(r, p); err != nil {
		return nil, fmt.Errorf("read frame body: %w", err)
	}
	return p, nil
}

// transform is the reply to request p.
func transform(p []byte) []byte {
	sum := sha256.Sum256(p)
	out := append(sum[:], p...)
	for i := sha256.Size; i < len(out); i++ {
		out[i] ^= 0xA5
	}
	return out
}

// OpaqueEvent is the line serve prints when an opaque connection ends.
type OpaqueEvent struct {
	Event  string `json:"event"` // "opaque"
	Remote string `json:"remote"`
	Frames int    `json:"frames"`
	Bytes  int64  `json:"bytes"`
	Err    string `json:"err,omitempty"`
}

// opaqueConn greets the client, then answers its frames until EOF.
func (a *app) opaqueConn(c *net.TCPConn) {
	ev := OpaqueEvent{Event: "opaque", Remote: c.RemoteAddr().String()}
	err := writeFrame(c, magicGreeting, []byte("sluice-opaque/1 "+a.name))
	r := bufio.NewReader(c)
	for err == nil {
		var p []byte
		if p, err = readFrame(r, magicRequest); err != nil {
			break
		}
		ev.Frames++
		ev.Bytes += int64(len(p))
		err = writeFrame(c, magicReply, transform(p))
	}
	if !errors.Is(err, io.EOF) {
		ev.Err = errString(err)
	}
	a.out.line(ev)
}

// opaqueOptions are the flags of `testapp opaque`.
type opaqueOptions struct {
	addr    string
	frames  int
	size    int
	timeout time.Duration
}

// OpaqueResult is the line `testapp opaque` prints.
type OpaqueResult struct {
	Greeting string `json:"greeting"`
	Frames   int    `json:"frames"` // answered correctly
	Bytes    int64  `json:"bytes"`  // sent in those frames
	Err      string `json:"err,omitempty"`
}

func newCmdOpaque() *cobra.Command {
	o := &opaqueOptions{}
	cmd := &cobra.Command{
		Use:   "opaque",
		Short: "Speak the server-first binary protocol of `serve --opaque` and check the answers",
		Long: `opaque connects, waits for the server's greeting (the server speaks first),
then sends --frames frames of --size deterministic bytes one at a time and
checks each reply. Frames are a 4-byte magic starting 0x00 0xFF (neither HTTP
nor TLS), a big-endian uint32 length and the bytes; the reply carries the
request's SHA-256 followed by its bytes XOR 0xA5.`,
		Args: cobra.NoArgs,
		RunE: runE(o.validate, oneLine(o.run)),
	}
	f := cmd.Flags()
	f.StringVar(&o.addr, "addr", "", "server address host:port (required)")
	f.IntVar(&o.frames, "frames", 10, "frames to send")
	f.IntVar(&o.size, "size", 1000, "bytes per frame")
	f.DurationVar(&o.timeout, "timeout", 60*time.Second, "give up after this long")
	return cmd
}

func (o *opaqueOptions) validate() error {
	if o.addr == "" || o.frames < 0 || o.size < 0 || o.size > maxFrame {
		return fmt.Errorf("validate flags: --addr is required, --frames not negative, --size from 0 to %d", maxFrame)
	}
	return nil
}

func (o *opaqueOptions) run(ctx context.Context) (res OpaqueResult) {
	c, done, err := session(ctx, o.addr, o.timeout)
	if err != nil {
		res.Err = err.Error()
		return res
	}
	defer done()
	r := bufio.NewReader(c)
	g, err := readFrame(r, magicGreeting)
	if err != nil {
		res.Err = fmt.Sprintf("greeting: %v", err)
		return res
	}
	res.Greeting = string(g)
	for i := range o.frames {
		p := payload.Bytes(uint64(i), o.size)
		if err := writeFrame(c, magicRequest, p); err != nil {
			res.Err = fmt.Sprintf("frame %d: %v", i, err)
			return res
		}
		got, err := readFrame(r, magicReply)
		if err != nil {
			res.Err = fmt.Sprintf("frame %d: %v", i, err)
			return res
		}
		if !bytes.Equal(got, transform(p)) {
			res.Err = fmt.Sprintf("frame %d: wrong reply (%d bytes)", i, len(got))
			return res
		}
		res.Frames++
		res.Bytes += int64(len(p))
	}
	return res
}
