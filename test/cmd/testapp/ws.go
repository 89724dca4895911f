package main

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"time"

	"github.com/gorilla/websocket"
	"github.com/spf13/cobra"

	"github.com/sluice-mesh/sluice/test/proxytest/payload"
)

// wsOptions are the flags of `testapp ws`.
type wsOptions struct {
	url, host string
	messages  int
	size      int
	timeout   time.Duration
}

// WSResult is the line `testapp ws` prints.
type WSResult struct {
	Status      int    `json:"status"` // of the upgrade answer
	Subprotocol string `json:"subprotocol"`
	Messages    int    `json:"messages"` // echoed intact
	Bytes       int64  `json:"bytes"`
	CloseCode   int    `json:"close_code"` // the server's answer to our close
	Err         string `json:"err,omitempty"`
}

func newCmdWS() *cobra.Command {
	o := &wsOptions{}
	cmd := &cobra.Command{
		Use:   "ws",
		Short: "Connect to a WebSocket echo server, echo messages, close, and print the result",
		Long: `ws upgrades to WebSocket (subprotocol "echo"), sends --messages messages
of --size deterministic bytes (alternately text and binary), checks each comes
back unchanged, then closes with 1000 and waits for the server's close.`,
		Args: cobra.NoArgs,
		RunE: runE(o.validate, oneLine(o.run)),
	}
	f := cmd.Flags()
	f.StringVar(&o.url, "url", "", "ws:// URL (required)")
	f.StringVar(&o.host, "host", "", "Host header (default: from --url)")
	f.IntVar(&o.messages, "messages", 10, "messages to echo")
	f.IntVar(&o.size, "size", 1000, "bytes per message")
	f.DurationVar(&o.timeout, "timeout", 60*time.Second, "give up after this long")
	return cmd
}

func (o *wsOptions) validate() error {
	if o.url == "" || o.messages < 0 || o.size < 0 {
		return errors.New("validate flags: --url is required, --messages and --size not negative")
	}
	return nil
}

func (o *wsOptions) run(ctx context.Context) (res WSResult) {
	ctx, cancel := context.WithTimeout(ctx, o.timeout)
	defer cancel()
	nd := dialer(10 * time.Second)
	d := websocket.Dialer{
		NetDialContext: func(ctx context.Context, network, addr string) (net.Conn, error) {
			return nd.DialContext(ctx, network, addr)
		},
		Subprotocols:     []string{"echo"},
		HandshakeTimeout: o.timeout,
	}
	h := http.Header{}
	if o.host != "" {
		h.Set("Host", o.host)
	}
	c, resp, err := d.DialContext(ctx, o.url, h)
	if resp != nil {
		res.Status = resp.StatusCode
	}
	if err != nil {
		res.Err = fmt.Sprintf("dial: %v", err)
		return res
	}
	defer c.Close()
	stop := context.AfterFunc(ctx, func() { c.Close() })
	defer stop()
	res.Subprotocol = c.Subprotocol()
	for i := range o.messages {
		typ := websocket.BinaryMessage
		msg := payload.Bytes(uint64(i), o.size)
		if i%2 == 1 {
			typ = websocket.TextMessage
			msg = []byte(fmt.Sprintf("%x", msg))[:o.size] // valid UTF-8
		}
		if err := c.WriteMessage(typ, msg); err != nil {
			res.Err = fmt.Sprintf("write message %d: %v", i, err)
			return res
		}
		gotTyp, got, err := c.ReadMessage()
		if err != nil {
			res.Err = fmt.Sprintf("read message %d: %v", i, err)
			return res
		}
		if gotTyp != typ || !bytes.Equal(got, msg) {
			res.Err = fmt.Sprintf("message %d came back changed (type %d, %d bytes)", i, gotTyp, len(got))
			return res
		}
		res.Messages++
		res.Bytes += int64(len(got))
	}
	if err := c.WriteMessage(websocket.CloseMessage, websocket.FormatCloseMessage(websocket.CloseNormalClosure, "bye")); err != nil {
		res.Err = fmt.Sprintf("write close: %v", err)
		return res
	}
	_, _, err = c.ReadMessage()
	var ce *websocket.CloseError
	if !errors.As(err, &ce) {
		res.Err = fmt.Sprintf("read close: %v", err)
		return res
	}
	res.CloseCode = ce.Code
	return res
}
