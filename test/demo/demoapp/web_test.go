package demoapp

import (
	"context"
	"encoding/json"
	"errors"
	"net"
	"net/http"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/gorilla/websocket"
)

// backends are the addresses web is configured with.
type backends struct {
	books, authors, ticker string
}

// startTicker runs the ticker role and returns its WebSocket URL and a
// function that stops it.
func startTicker(t *testing.T, interval time.Duration) (string, func()) {
	t.Helper()
	addr, stop := serve(t, "ticker", func(ctx context.Context, l net.Listener) error {
		return RunTicker(ctx, l, TickerConfig{Interval: interval})
	})
	return "ws://" + addr + "/ws", stop
}

// startBackends runs books, authors (failing authorsRate of requests) and
// ticker.
func startBackends(t *testing.T, authorsRate float64) (backends, func()) {
	t.Helper()
	tickerURL, stopTicker := startTicker(t, 10*time.Millisecond)
	return backends{books: startBooks(t, 0), authors: startAuthors(t, authorsRate), ticker: tickerURL}, stopTicker
}

// startWeb runs the web role in front of b and returns its base URL.
func startWeb(t *testing.T, b backends) string {
	t.Helper()
	addr, _ := serve(t, "web", func(ctx context.Context, l net.Listener) error {
		return RunWeb(ctx, l, WebConfig{Books: b.books, Authors: b.authors, Ticker: b.ticker, Timeout: hangGuard})
	})
	return "http://" + addr
}

func TestWebPages(t *testing.T) {
	b, _ := startBackends(t, 0)
	base := startWeb(t, b)
	c := newHTTPClient(hangGuard, 1)
	defer c.CloseIdleConnections()
	tests := []struct {
		path, contains string
		code           int
	}{
		{path: "/", code: http.StatusOK, contains: "/api/books"},
		{path: "/healthz", code: http.StatusOK, contains: "ok"},
		{path: "/nope", code: http.StatusNotFound},
	}
	for _, tt := range tests {
		code, body := get(t, c, base+tt.path)
		if code != tt.code || !strings.Contains(body, tt.contains) {
			t.Errorf("GET %s = %d %q, want %d with %q", tt.path, code, body, tt.code, tt.contains)
		}
	}
}

func TestWebListBooks(t *testing.T) {
	b, _ := startBackends(t, 0)
	base := startWeb(t, b)
	c := newHTTPClient(hangGuard, 1)
	defer c.CloseIdleConnections()

	code, body := get(t, c, base+"/api/books")
	if code != http.StatusOK {
		t.Fatalf("GET /api/books: status %d (%q), want 200", code, body)
	}
	var got BookList
	if err := json.Unmarshal([]byte(body), &got); err != nil {
		t.Fatalf("GET /api/books: decode %q: %v", body, err)
	}
	var want BookList
	for _, bk := range catalogBooks() {
		want.Books = append(want.Books, BookView{ID: bk.Id, Title: bk.Title, Year: bk.Year, Author: catalogAuthors()[bk.AuthorId]})
	}
	if !reflect.DeepEqual(got, want) {
		t.Errorf("GET /api/books = %+v, want %+v", got, want)
	}
}

func TestWebBadGateway(t *testing.T) {
	ok, _ := startBackends(t, 0)
	failing, _ := startBackends(t, 1)
	tests := []struct {
		name     string
		backends backends
		contains []string
	}{
		{"authors fails", failing, []string{"upstream authors failed", "500 Internal Server Error", "injected failure"}},
		{"authors down", backends{books: ok.books, authors: "http://" + closedAddr(t), ticker: ok.ticker}, []string{"upstream authors failed", "refused"}},
		{"books down", backends{books: closedAddr(t), authors: ok.authors, ticker: ok.ticker}, []string{"upstream books failed", "Unavailable"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			base := startWeb(t, tt.backends)
			c := newHTTPClient(hangGuard, 1)
			defer c.CloseIdleConnections()
			code, body := get(t, c, base+"/api/books")
			if code != http.StatusBadGateway {
				t.Errorf("GET /api/books: status %d (%q), want 502", code, body)
			}
			for _, s := range tt.contains {
				if !strings.Contains(body, s) {
					t.Errorf("GET /api/books: body %q does not contain %q", body, s)
				}
			}
		})
	}
}

// readTick reads messages until a Tick, skipping echoes, and returns it.
func readTick(t *testing.T, c *websocket.Conn) Tick {
	t.Helper()
	for {
		_, data, err := c.ReadMessage()
		if err != nil {
			t.Fatalf("read tick: %v", err)
		}
		var tk Tick
		if json.Unmarshal(data, &tk) == nil && tk.Seq > 0 {
			return tk
		}
	}
}

func TestWebSocketRelay(t *testing.T) {
	b, stopTicker := startBackends(t, 0)
	base := startWeb(t, b)
	c, _, err := websocket.DefaultDialer.DialContext(t.Context(), "ws"+strings.TrimPrefix(base, "http")+"/ws", nil)
	if err != nil {
		t.Fatalf("dial web /ws: %v", err)
	}
	defer c.Close()
	_ = c.SetReadDeadline(time.Now().Add(hangGuard))

	// Ticks flow from ticker through web, in order.
	for want := uint64(1); want <= 3; want++ {
		if tk := readTick(t, c); tk.Seq != want {
			t.Fatalf("tick %d has seq %d", want, tk.Seq)
		}
	}
	// A message flows to ticker and its echo back.
	for _, msg := range []string{"hello", "world"} {
		if err := c.WriteMessage(websocket.TextMessage, []byte(msg)); err != nil {
			t.Fatalf("write %q: %v", msg, err)
		}
		for {
			_, data, err := c.ReadMessage()
			if err != nil {
				t.Fatalf("read echo of %q: %v", msg, err)
			}
			if string(data) == msg {
				break
			}
		}
	}
	// Ticker's close reaches the client.
	stopTicker()
	for {
		_, _, err := c.ReadMessage()
		if err == nil {
			continue
		}
		var ce *websocket.CloseError
		if !errors.As(err, &ce) || ce.Code != websocket.CloseGoingAway {
			t.Errorf("after ticker stopped: %v, want close 1001", err)
		}
		break
	}
}

func TestWebSocketTickerDown(t *testing.T) {
	b, _ := startBackends(t, 0)
	b.ticker = "ws://" + closedAddr(t) + "/ws"
	base := startWeb(t, b)
	_, resp, err := websocket.DefaultDialer.DialContext(t.Context(), "ws"+strings.TrimPrefix(base, "http")+"/ws", nil)
	if err == nil || resp == nil || resp.StatusCode != http.StatusBadGateway {
		t.Errorf("dial web /ws with ticker down: %v (response %v), want 502", err, resp)
	}
}

func TestWebConfigValidate(t *testing.T) {
	tests := []struct {
		name string
		cfg  WebConfig
		ok   bool
	}{
		{"valid", WebConfig{Books: "books:8081", Authors: "http://authors:8082", Ticker: "ws://ticker:8083/ws"}, true},
		{"no books", WebConfig{Authors: "http://authors:8082", Ticker: "ws://ticker:8083/ws"}, false},
		{"authors not http", WebConfig{Books: "b:1", Authors: "authors:8082", Ticker: "ws://ticker:8083/ws"}, false},
		{"ticker not ws", WebConfig{Books: "b:1", Authors: "http://authors:8082", Ticker: "http://ticker:8083/ws"}, false},
	}
	for _, tt := range tests {
		if err := tt.cfg.validate(); (err == nil) != tt.ok {
			t.Errorf("%s: validate() = %v, want ok %v", tt.name, err, tt.ok)
		}
	}
}
