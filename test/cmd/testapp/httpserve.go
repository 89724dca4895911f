package main

import (
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"strconv"
	"time"

	"github.com/gorilla/websocket"

	"github.com/sluice-mesh/sluice/test/proxytest/payload"
)

// copyBufSize is the chunk size of every copy loop.
const copyBufSize = 32 << 10

// httpServer returns the HTTP/1.1 + h2c server of the app.
func (a *app) httpServer() *http.Server {
	mux := http.NewServeMux()
	mux.HandleFunc("/echo", a.handleEcho)
	mux.HandleFunc("/sha256", a.handleSHA256)
	mux.HandleFunc("/bytes", a.handleBytes)
	mux.HandleFunc("/status/{code}", a.handleStatus)
	mux.HandleFunc("/delay", a.handleDelay)
	mux.HandleFunc("/headers", a.handleHeaders)
	mux.HandleFunc("/ws", a.handleWS)
	var protos http.Protocols
	protos.SetHTTP1(true)
	protos.SetUnencryptedHTTP2(true)
	return &http.Server{
		Handler:           a.common(mux),
		Protocols:         &protos,
		ReadHeaderTimeout: 30 * time.Second,
	}
}

// common names the app in every answer and applies --delay.
func (a *app) common(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("X-App-Name", a.name)
		if err := sleep(r.Context(), a.delay); err != nil {
			return
		}
		next.ServeHTTP(w, r)
	})
}

// handleEcho streams the request body back as it arrives.
func (a *app) handleEcho(w http.ResponseWriter, r *http.Request) {
	rc := http.NewResponseController(w)
	_ = rc.EnableFullDuplex() // HTTP/1: read and write at once (HTTP/2 always can)
	if ct := r.Header.Get("Content-Type"); ct != "" {
		w.Header().Set("Content-Type", ct)
	}
	w.WriteHeader(http.StatusOK)
	_ = rc.Flush()
	buf := make([]byte, copyBufSize)
	for {
		n, err := r.Body.Read(buf)
		if n > 0 {
			if _, werr := w.Write(buf[:n]); werr != nil {
				return
			}
			_ = rc.Flush()
		}
		if err != nil {
			return
		}
	}
}

// SHA256Answer is the JSON answer of /sha256.
type SHA256Answer struct {
	Bytes            int64    `json:"bytes"`
	SHA256           string   `json:"sha256"`
	Proto            string   `json:"proto"`
	ContentLength    int64    `json:"content_length"`
	TransferEncoding []string `json:"transfer_encoding,omitempty"`
	Err              string   `json:"err,omitempty"`
}

// handleSHA256 reads the whole body and answers its size and hash.
func (a *app) handleSHA256(w http.ResponseWriter, r *http.Request) {
	h := sha256.New()
	n, err := io.CopyBuffer(h, r.Body, make([]byte, copyBufSize))
	ans := SHA256Answer{Bytes: n, SHA256: hex.EncodeToString(h.Sum(nil)), Proto: r.Proto,
		ContentLength: r.ContentLength, TransferEncoding: r.TransferEncoding, Err: errString(err)}
	code := http.StatusOK
	if err != nil {
		code = http.StatusBadRequest
	}
	writeJSON(w, code, ans)
}

// handleBytes streams n deterministic bytes of seed, with trailer x-sha256.
func (a *app) handleBytes(w http.ResponseWriter, r *http.Request) {
	n, err := strconv.ParseInt(r.URL.Query().Get("n"), 10, 64)
	if err != nil || n < 0 {
		http.Error(w, "bad n", http.StatusBadRequest)
		return
	}
	seed := uint64(1)
	if s := r.URL.Query().Get("seed"); s != "" {
		if seed, err = strconv.ParseUint(s, 10, 64); err != nil {
			http.Error(w, "bad seed", http.StatusBadRequest)
			return
		}
	}
	w.Header().Set("Trailer", "X-Sha256")
	w.Header().Set("Content-Type", "application/octet-stream")
	w.WriteHeader(http.StatusOK)
	h := sha256.New()
	if _, err := io.CopyBuffer(io.MultiWriter(w, h), payload.NewReader(seed, n), make([]byte, copyBufSize)); err != nil {
		return
	}
	w.Header().Set("X-Sha256", hex.EncodeToString(h.Sum(nil)))
}

// handleStatus answers the status code in the path without reading the
// body: a request with Expect: 100-continue gets the final status instead
// of a 100, and its body is never sent.
func (a *app) handleStatus(w http.ResponseWriter, r *http.Request) {
	code, err := strconv.Atoi(r.PathValue("code"))
	if err != nil || code < 200 || code > 599 {
		http.Error(w, "bad status code", http.StatusBadRequest)
		return
	}
	w.WriteHeader(code)
	if code != http.StatusNoContent && code != http.StatusNotModified {
		fmt.Fprintf(w, "status %d\n", code)
	}
}

// handleDelay answers after ?d=.
func (a *app) handleDelay(w http.ResponseWriter, r *http.Request) {
	d, err := time.ParseDuration(r.URL.Query().Get("d"))
	if err != nil {
		http.Error(w, "bad d", http.StatusBadRequest)
		return
	}
	if err := sleep(r.Context(), d); err != nil {
		return
	}
	fmt.Fprintf(w, "delayed %s\n", d)
}

// HeadersAnswer is the JSON answer of /headers.
type HeadersAnswer struct {
	Method           string      `json:"method"`
	Host             string      `json:"host"`
	URI              string      `json:"uri"`
	Proto            string      `json:"proto"`
	RemoteAddr       string      `json:"remote_addr"`
	ContentLength    int64       `json:"content_length"`
	TransferEncoding []string    `json:"transfer_encoding,omitempty"`
	Headers          http.Header `json:"headers"`
}

// handleHeaders answers the request it received.
func (a *app) handleHeaders(w http.ResponseWriter, r *http.Request) {
	_, _ = io.Copy(io.Discard, r.Body)
	writeJSON(w, http.StatusOK, HeadersAnswer{Method: r.Method, Host: r.Host, URI: r.RequestURI, Proto: r.Proto,
		RemoteAddr: r.RemoteAddr, ContentLength: r.ContentLength, TransferEncoding: r.TransferEncoding, Headers: r.Header})
}

// handleWS echoes WebSocket messages, text as text and binary as binary,
// until the client closes (subprotocol "echo" if asked).
func (a *app) handleWS(w http.ResponseWriter, r *http.Request) {
	up := websocket.Upgrader{
		CheckOrigin:  func(*http.Request) bool { return true },
		Subprotocols: []string{"echo"},
	}
	c, err := up.Upgrade(w, r, nil)
	if err != nil {
		return // Upgrade answered the error
	}
	defer c.Close()
	for {
		typ, msg, err := c.ReadMessage()
		if err != nil {
			return // the default close handler answered a close frame
		}
		if err := c.WriteMessage(typ, msg); err != nil {
			return
		}
	}
}

func writeJSON(w http.ResponseWriter, code int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(code)
	_ = json.NewEncoder(w).Encode(v)
}
