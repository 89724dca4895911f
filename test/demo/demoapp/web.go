package demoapp

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/url"
	"strings"
	"sync"
	"time"

	"github.com/gorilla/websocket"
	"google.golang.org/grpc"
	grpcbackoff "google.golang.org/grpc/backoff"
	"google.golang.org/grpc/credentials/insecure"

	"github.com/sluice-mesh/sluice/test/demo/api/books"
)

// WebConfig configures the web role: where its upstream services are.
type WebConfig struct {
	// Books is the books service's gRPC target, e.g.
	// "books.demo.svc.cluster.local:8081".
	Books string
	// Authors is the authors service's base URL, e.g.
	// "http://authors.demo.svc.cluster.local:8082".
	Authors string
	// Ticker is the ticker service's WebSocket URL, e.g.
	// "ws://ticker.demo.svc.cluster.local:8083/ws".
	Ticker string
	// Timeout bounds each upstream call (and the WebSocket dial); zero
	// means 5s.
	Timeout time.Duration
	// Log receives the server's logs; nil discards them.
	Log *slog.Logger
}

// BookView is one book of web's GET /api/books answer: the book from the
// books service with its author from the authors service.
type BookView struct {
	// ID, Title and Year are the book's, from books.
	ID    string `json:"id"`
	Title string `json:"title"`
	Year  int32  `json:"year"`
	// Author is the book's author, from authors.
	Author Author `json:"author"`
}

// BookList is web's GET /api/books answer.
type BookList struct {
	// Books are the catalog's books, in the order books lists them.
	Books []BookView `json:"books"`
}

// validate checks the configuration.
func (cfg *WebConfig) validate() error {
	if cfg.Books == "" {
		return errors.New("validate web config: books target is empty")
	}
	if u, err := url.Parse(cfg.Authors); err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
		return fmt.Errorf("validate web config: authors URL %q is not an http:// URL", cfg.Authors)
	}
	if u, err := url.Parse(cfg.Ticker); err != nil || (u.Scheme != "ws" && u.Scheme != "wss") || u.Host == "" {
		return fmt.Errorf("validate web config: ticker URL %q is not a ws:// URL", cfg.Ticker)
	}
	return nil
}

// RunWeb serves the web front end on l until ctx ends:
//
//	GET /           a short HTML page
//	GET /api/books  the catalog as JSON (BookList): one ListBooks call to
//	                books (gRPC), then one GET /authors/<id> to authors
//	                (HTTP/1.1) per distinct author; 502 Bad Gateway with a
//	                text body naming the failed service if any call fails
//	GET /ws         a WebSocket connection relayed, message by message, to
//	                a new connection to ticker (502 if ticker cannot be
//	                reached)
//	GET /healthz    "ok"
//
// When ctx ends it closes the relayed connections with 1001 (going away),
// shuts down gracefully and returns nil.
func RunWeb(ctx context.Context, l net.Listener, cfg WebConfig) error {
	if err := cfg.validate(); err != nil {
		_ = l.Close()
		return err
	}
	if cfg.Timeout <= 0 {
		cfg.Timeout = defaultTimeout
	}
	d := newDialer()
	conn, err := grpc.NewClient(cfg.Books,
		grpc.WithTransportCredentials(insecure.NewCredentials()),
		// Reconnect within seconds once books is up (gRPC's default backoff
		// grows to two minutes while it is not, as when web starts first).
		grpc.WithConnectParams(grpc.ConnectParams{
			Backoff:           grpcbackoff.Config{BaseDelay: 100 * time.Millisecond, Multiplier: 1.6, Jitter: 0.2, MaxDelay: 5 * time.Second},
			MinConnectTimeout: 5 * time.Second,
		}),
		grpc.WithContextDialer(func(ctx context.Context, addr string) (net.Conn, error) {
			return d.DialContext(ctx, "tcp", addr)
		}))
	if err != nil {
		_ = l.Close()
		return fmt.Errorf("create books client for %s: %w", cfg.Books, err)
	}
	defer conn.Close()
	w := &web{
		ctx:     ctx,
		cfg:     cfg,
		log:     orDiscard(cfg.Log),
		books:   books.NewBooksClient(conn),
		authors: newHTTPClient(cfg.Timeout, 16),
		wsDialer: &websocket.Dialer{
			NetDialContext:   d.DialContext,
			HandshakeTimeout: cfg.Timeout,
		},
	}
	defer w.authors.CloseIdleConnections()
	mux := http.NewServeMux()
	mux.HandleFunc("GET /{$}", w.index)
	mux.HandleFunc("GET /healthz", healthz)
	mux.HandleFunc("GET /api/books", w.listBooks)
	mux.HandleFunc("GET /ws", w.relay)
	err = serveHTTP(ctx, l, mux, w.log)
	w.streams.Wait()
	return err
}

// web serves the front end.
type web struct {
	ctx      context.Context // ends the relayed WebSocket connections
	cfg      WebConfig
	log      *slog.Logger
	books    books.BooksClient
	authors  *http.Client
	wsDialer *websocket.Dialer
	upgrader websocket.Upgrader
	streams  sync.WaitGroup
}

const indexPage = `<!doctype html>
<html><head><title>Sluice demo</title></head>
<body>
<h1>Sluice demo: books</h1>
<p><a href="/api/books">/api/books</a>: the catalog, from books (gRPC) and authors (HTTP/1.1).</p>
<p>/ws: a WebSocket stream relayed from ticker.</p>
</body></html>
`

func (w *web) index(rw http.ResponseWriter, _ *http.Request) {
	rw.Header().Set("Content-Type", "text/html; charset=utf-8")
	_, _ = io.WriteString(rw, indexPage)
}

// badGateway answers 502 with a text body that names the failed upstream.
func (w *web) badGateway(rw http.ResponseWriter, upstream string, err error) {
	w.log.Debug("upstream failed", "upstream", upstream, "err", err)
	http.Error(rw, fmt.Sprintf("web: upstream %s failed: %v", upstream, err), http.StatusBadGateway)
}

func (w *web) listBooks(rw http.ResponseWriter, r *http.Request) {
	ctx, cancel := context.WithTimeout(r.Context(), w.cfg.Timeout)
	defer cancel()
	resp, err := w.books.ListBooks(ctx, &books.ListBooksRequest{})
	if err != nil {
		w.badGateway(rw, "books", fmt.Errorf("list books: %w", err))
		return
	}
	authors := map[string]Author{}
	list := BookList{Books: []BookView{}}
	for _, b := range resp.GetBooks() {
		a, ok := authors[b.GetAuthorId()]
		if !ok {
			if a, err = w.author(ctx, b.GetAuthorId()); err != nil {
				w.badGateway(rw, "authors", err)
				return
			}
			authors[b.GetAuthorId()] = a
		}
		list.Books = append(list.Books, BookView{ID: b.GetId(), Title: b.GetTitle(), Year: b.GetYear(), Author: a})
	}
	writeJSON(rw, list)
}

// author gets one author from the authors service.
func (w *web) author(ctx context.Context, id string) (Author, error) {
	u := strings.TrimSuffix(w.cfg.Authors, "/") + "/authors/" + url.PathEscape(id)
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, u, nil)
	if err != nil {
		return Author{}, fmt.Errorf("get author %s: %w", id, err)
	}
	resp, err := w.authors.Do(req)
	if err != nil {
		return Author{}, fmt.Errorf("get author %s: %w", id, err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(io.LimitReader(resp.Body, 64<<10))
	if err != nil {
		return Author{}, fmt.Errorf("get author %s: read body: %w", id, err)
	}
	if resp.StatusCode != http.StatusOK {
		return Author{}, fmt.Errorf("get author %s: %s: %s", id, resp.Status, strings.TrimSpace(string(body)))
	}
	var a Author
	if err := json.Unmarshal(body, &a); err != nil {
		return Author{}, fmt.Errorf("get author %s: decode: %w", id, err)
	}
	return a, nil
}

// relay upgrades the client's connection and relays it to a new
// connection to ticker, message by message, both ways.
func (w *web) relay(rw http.ResponseWriter, r *http.Request) {
	// Counted before the upgrade hijacks the connection, while the HTTP
	// server's Shutdown still waits for this handler.
	w.streams.Add(1)
	defer w.streams.Done()
	ctx, cancel := context.WithTimeout(r.Context(), w.cfg.Timeout)
	up, resp, err := w.wsDialer.DialContext(ctx, w.cfg.Ticker, nil)
	cancel()
	if err != nil {
		if resp != nil {
			err = fmt.Errorf("%w (%s)", err, resp.Status)
		}
		w.badGateway(rw, "ticker", fmt.Errorf("dial %s: %w", w.cfg.Ticker, err))
		return
	}
	defer up.Close()
	down, err := w.upgrader.Upgrade(rw, r, nil)
	if err != nil {
		return // Upgrade answered the client
	}
	defer down.Close()

	errc := make(chan error, 2)
	go func() { errc <- copyMessages(up, down) }()
	go func() { errc <- copyMessages(down, up) }()
	select {
	case <-errc:
	case <-w.ctx.Done():
		msg := websocket.FormatCloseMessage(websocket.CloseGoingAway, "web shutting down")
		_ = down.WriteControl(websocket.CloseMessage, msg, time.Now().Add(time.Second))
		_ = up.WriteControl(websocket.CloseMessage, msg, time.Now().Add(time.Second))
	}
	// Closing both connections ends the other copier.
	_ = up.Close()
	_ = down.Close()
	<-errc
}

// copyMessages copies data messages from src to dst until src fails; a
// close frame from src is passed on to dst. It returns the reason it
// stopped.
func copyMessages(dst, src *websocket.Conn) error {
	for {
		typ, data, err := src.ReadMessage()
		if err != nil {
			var ce *websocket.CloseError
			if errors.As(err, &ce) {
				code, text := ce.Code, ce.Text
				switch code {
				case websocket.CloseNoStatusReceived: // never sent on the wire
					code, text = websocket.CloseNormalClosure, ""
				case websocket.CloseAbnormalClosure, websocket.CloseTLSHandshake: // idem
					code, text = websocket.CloseGoingAway, "peer went away"
				}
				msg := websocket.FormatCloseMessage(code, text)
				_ = dst.WriteControl(websocket.CloseMessage, msg, time.Now().Add(time.Second))
			}
			return fmt.Errorf("read message: %w", err)
		}
		_ = dst.SetWriteDeadline(time.Now().Add(writeTimeout))
		if err := dst.WriteMessage(typ, data); err != nil {
			return fmt.Errorf("write message: %w", err)
		}
	}
}
