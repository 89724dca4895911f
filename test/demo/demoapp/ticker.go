package demoapp

import (
	"context"
	"log/slog"
	"net"
	"net/http"
	"sync"
	"time"

	"github.com/gorilla/websocket"
)

// TickerConfig configures the ticker role.
type TickerConfig struct {
	// Interval is the time between two ticks on a stream; zero means 1s.
	Interval time.Duration
	// Log receives the server's logs; nil discards them.
	Log *slog.Logger
}

// Tick is the text message that ticker sends on each stream, as JSON: one
// at once when the connection opens, then one every interval.
type Tick struct {
	// Seq counts the stream's ticks from 1.
	Seq uint64 `json:"seq"`
	// Time is when the tick was sent.
	Time time.Time `json:"time"`
}

// RunTicker serves the ticker service on l until ctx ends:
//
//	GET /ws       a WebSocket stream: a Tick every Interval, and every
//	              message the client sends echoed back unchanged
//	GET /healthz  "ok"
//
// When ctx ends it closes every stream with 1001 (going away), shuts down
// gracefully and returns nil.
func RunTicker(ctx context.Context, l net.Listener, cfg TickerConfig) error {
	if cfg.Interval <= 0 {
		cfg.Interval = time.Second
	}
	t := &ticker{ctx: ctx, interval: cfg.Interval, log: orDiscard(cfg.Log)}
	mux := http.NewServeMux()
	mux.HandleFunc("GET /healthz", healthz)
	mux.HandleFunc("GET /ws", t.serveWS)
	err := serveHTTP(ctx, l, mux, t.log)
	t.streams.Wait()
	return err
}

// ticker serves WebSocket streams until ctx ends.
type ticker struct {
	ctx      context.Context
	interval time.Duration
	log      *slog.Logger
	upgrader websocket.Upgrader
	streams  sync.WaitGroup
}

// wsMessage is one WebSocket data message.
type wsMessage struct {
	typ  int
	data []byte
}

func (t *ticker) serveWS(w http.ResponseWriter, r *http.Request) {
	// Counted before the upgrade hijacks the connection, while the HTTP
	// server's Shutdown still waits for this handler.
	t.streams.Add(1)
	defer t.streams.Done()
	c, err := t.upgrader.Upgrade(w, r, nil)
	if err != nil {
		return // Upgrade answered the client
	}
	defer c.Close()
	t.log.Debug("stream opened", "remote", r.RemoteAddr)

	// One reader hands received messages to the one writer below.
	received := make(chan wsMessage)
	done := make(chan struct{})
	defer close(done)
	go func() {
		defer close(received)
		for {
			typ, data, err := c.ReadMessage()
			if err != nil {
				return
			}
			select {
			case received <- wsMessage{typ, data}:
			case <-done:
				return
			}
		}
	}()

	tk := time.NewTicker(t.interval)
	defer tk.Stop()
	var seq uint64
	send := func(now time.Time) error {
		seq++
		_ = c.SetWriteDeadline(time.Now().Add(writeTimeout))
		return c.WriteJSON(Tick{Seq: seq, Time: now.UTC()})
	}
	if err := send(time.Now()); err != nil {
		return
	}
	for {
		select {
		case <-t.ctx.Done():
			msg := websocket.FormatCloseMessage(websocket.CloseGoingAway, "ticker shutting down")
			_ = c.WriteControl(websocket.CloseMessage, msg, time.Now().Add(time.Second))
			return
		case m, ok := <-received:
			if !ok {
				t.log.Debug("stream closed", "remote", r.RemoteAddr)
				return
			}
			_ = c.SetWriteDeadline(time.Now().Add(writeTimeout))
			if err := c.WriteMessage(m.typ, m.data); err != nil {
				return
			}
		case now := <-tk.C:
			if err := send(now); err != nil {
				return
			}
		}
	}
}
