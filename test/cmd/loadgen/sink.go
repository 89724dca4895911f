package main

import (
	"errors"
	"fmt"
	"io"
	"net"
	"sync"
	"time"
)

// sinkBuffer is the size of a sink connection's reads.
const sinkBuffer = 256 << 10

// sink is the server side of loadgen tcp: it reads each connection to its
// end, answers the decimal count of bytes it read and "\n", and closes. A
// connection that fails before its end (a reset) gets no answer.
type sink struct {
	l  net.Listener
	st *listenerStats
	wg sync.WaitGroup

	mu     sync.Mutex
	conns  map[net.Conn]struct{} // open connections, closed by close
	closed bool
}

func newSink(l net.Listener, st *listenerStats) *sink {
	return &sink{l: l, st: st, conns: make(map[net.Conn]struct{})}
}

// serve accepts connections until the listener is closed, counting each as
// one request of st.
func (s *sink) serve() {
	for {
		c, err := s.l.Accept()
		if errors.Is(err, net.ErrClosed) {
			return
		}
		if err != nil {
			// Out of descriptors or an aborted connection: retry, as
			// net/http does.
			time.Sleep(5 * time.Millisecond)
			continue
		}
		s.st.count(c.RemoteAddr().String())
		if !s.add(c) {
			c.Close()
			return
		}
		go func() {
			defer s.remove(c)
			drain(c)
		}()
	}
}

// drain reads c to its end and answers the count. It reads with plain
// reads into its own buffer (no splice, which data an sk_msg program
// redirected into the socket would escape).
func drain(c net.Conn) {
	buf := make([]byte, sinkBuffer)
	var n int64
	for {
		k, err := c.Read(buf)
		n += int64(k)
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			return
		}
	}
	_, _ = fmt.Fprintf(c, "%d\n", n)
}

// add registers c and its goroutine unless the sink is closed.
func (s *sink) add(c net.Conn) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return false
	}
	s.conns[c] = struct{}{}
	s.wg.Add(1) // under mu, so never after close's Wait began
	return true
}

// remove closes c and ends the registration of add.
func (s *sink) remove(c net.Conn) {
	s.mu.Lock()
	delete(s.conns, c)
	s.mu.Unlock()
	c.Close()
	s.wg.Done()
}

// close stops accepting, closes the open connections and waits for their
// goroutines.
func (s *sink) close() {
	s.l.Close()
	s.mu.Lock()
	s.closed = true
	for c := range s.conns {
		c.Close()
	}
	s.mu.Unlock()
	s.wg.Wait()
}
