package main

import (
	"context"
	"errors"
	"io"
	"net"
	"net/netip"
	"syscall"
)

// bufSize is the size of every copy buffer.
const bufSize = 64 << 10

// listen listens on a plain (non-MPTCP) TCP socket. A "tcp6" listener is IPv6
// only.
func listen(network, addr string) (*net.TCPListener, error) {
	var lc net.ListenConfig
	lc.SetMultipathTCP(false)
	if network == "tcp6" {
		lc.Control = func(_, _ string, rc syscall.RawConn) error {
			var serr error
			err := rc.Control(func(fd uintptr) {
				serr = syscall.SetsockoptInt(int(fd), syscall.IPPROTO_IPV6, syscall.IPV6_V6ONLY, 1)
			})
			return errors.Join(err, serr)
		}
	}
	l, err := lc.Listen(context.Background(), network, addr)
	if err != nil {
		return nil, err
	}
	return l.(*net.TCPListener), nil
}

// dialer returns a plain (non-MPTCP) TCP dialer.
func dialer() *net.Dialer {
	d := new(net.Dialer)
	d.SetMultipathTCP(false)
	return d
}

// addrPort returns a as an unmapped netip.AddrPort.
func addrPort(a net.Addr) netip.AddrPort {
	if ta, ok := a.(*net.TCPAddr); ok {
		ap := ta.AddrPort()
		return netip.AddrPortFrom(ap.Addr().Unmap(), ap.Port())
	}
	return netip.AddrPort{}
}

// plainConn exposes only Read and Write of a TCP connection, hiding its
// ReadFrom and WriteTo so that nothing copies through splice(2).
type plainConn struct{ c *net.TCPConn }

func (p plainConn) Read(b []byte) (int, error)  { return p.c.Read(b) }
func (p plainConn) Write(b []byte) (int, error) { return p.c.Write(b) }

// halfCopier copies one direction of a connection pair through a read/write
// loop, then passes the half-close on with CloseWrite.
type halfCopier struct {
	src, dst *net.TCPConn
}

// run copies until src reports EOF (then closes dst for writing) or an error.
func (h halfCopier) run() error {
	src, dst := plainConn{h.src}, plainConn{h.dst}
	buf := make([]byte, bufSize)
	for {
		n, err := src.Read(buf)
		if n > 0 {
			if _, werr := dst.Write(buf[:n]); werr != nil {
				return werr
			}
		}
		if err == io.EOF {
			return h.dst.CloseWrite()
		}
		if err != nil {
			return err
		}
	}
}

// relay copies a to b and b to a with half-close, then closes both. If one
// direction fails, both connections are closed, which ends the other.
func relay(a, b *net.TCPConn) {
	done := make(chan struct{})
	for _, h := range []halfCopier{{a, b}, {b, a}} {
		go func() {
			if err := h.run(); err != nil {
				a.Close()
				b.Close()
			}
			done <- struct{}{}
		}()
	}
	<-done
	<-done
	a.Close()
	b.Close()
}

// echo writes back what c sends until EOF, then closes c for writing and
// closes it.
func echo(c *net.TCPConn) error {
	defer c.Close()
	return halfCopier{c, c}.run()
}
