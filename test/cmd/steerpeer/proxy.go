package main

import (
	"flag"
	"fmt"
	"io"
	"net"
	"net/netip"
	"strconv"
	"time"

	"github.com/sluice-mesh/sluice/proxy/netx"
)

// proxyEvent is the line printed for each connection a proxy listener accepts.
type proxyEvent struct {
	Listener string `json:"listener"` // "outbound" or "inbound"
	Orig     string `json:"orig"`     // original destination
	Local    string `json:"local"`
	Remote   string `json:"remote"`
	Err      string `json:"err,omitempty"`
}

// proxy is a minimal test sidecar.
type proxy struct {
	mode string // "forward" or "echo"
	out  *output
}

func runProxy(args []string, out *output, stderr io.Writer) int {
	fs := flag.NewFlagSet("steerpeer proxy", flag.ContinueOnError)
	fs.SetOutput(stderr)
	outbound := fs.Int("outbound", 4140, "outbound port, on 127.0.0.1 and [::1]")
	inbound := fs.Int("inbound", 4143, "inbound port, on 0.0.0.0 and [::] (IPv6 only)")
	mode := fs.String("mode", "forward", "forward (relay to the original destination) or echo")
	if err := fs.Parse(args); err != nil {
		return 2
	}
	if *mode != "forward" && *mode != "echo" {
		fmt.Fprintf(stderr, "steerpeer proxy: --mode must be forward or echo, not %q\n", *mode)
		return 2
	}
	p := &proxy{mode: *mode, out: out}
	type spec struct{ listener, network, addr string }
	specs := []spec{
		{"outbound", "tcp4", net.JoinHostPort("127.0.0.1", strconv.Itoa(*outbound))},
		{"outbound", "tcp6", net.JoinHostPort("::1", strconv.Itoa(*outbound))},
		{"inbound", "tcp4", net.JoinHostPort("0.0.0.0", strconv.Itoa(*inbound))},
		{"inbound", "tcp6", net.JoinHostPort("::", strconv.Itoa(*inbound))},
	}
	var ls []*net.TCPListener
	for _, s := range specs {
		l, err := listen(s.network, s.addr)
		if err != nil {
			fmt.Fprintf(stderr, "steerpeer proxy: listen %s %s: %v\n", s.network, s.addr, err)
			return 1
		}
		ls = append(ls, l)
	}
	out.line("READY")
	errc := make(chan error, len(ls))
	for i, l := range ls {
		go func() { errc <- p.serve(l, specs[i].listener) }()
	}
	err := <-errc
	fmt.Fprintf(stderr, "steerpeer proxy: %v\n", err)
	return 1
}

// serve accepts on l until it fails.
func (p *proxy) serve(l *net.TCPListener, listener string) error {
	for {
		c, err := l.AcceptTCP()
		if err != nil {
			if ne, ok := err.(net.Error); ok && ne.Timeout() {
				continue
			}
			return fmt.Errorf("accept on %v: %w", l.Addr(), err)
		}
		go p.handle(c, listener)
	}
}

// handle reports one accepted connection and echoes or forwards it.
func (p *proxy) handle(c *net.TCPConn, listener string) {
	ev := proxyEvent{
		Listener: listener,
		Local:    addrPort(c.LocalAddr()).String(),
		Remote:   addrPort(c.RemoteAddr()).String(),
	}
	var (
		orig netip.AddrPort
		err  error
	)
	if listener == "outbound" {
		orig, err = netx.OriginalDst(c)
	} else if orig, err = netx.OriginalDst(c); err != nil {
		// eBPF (sk_lookup) steering keeps the original destination as the
		// local address; iptables REDIRECT leaves it to conntrack.
		orig, err = addrPort(c.LocalAddr()), nil
	}
	if orig.IsValid() {
		ev.Orig = orig.String()
	}
	if err != nil {
		ev.Err = err.Error()
	}
	if p.mode == "echo" {
		p.out.json(ev)
		echo(c)
		return
	}
	if err != nil {
		p.out.json(ev)
		c.Close()
		return
	}
	target := orig
	if listener == "inbound" {
		lo := netip.AddrFrom4([4]byte{127, 0, 0, 1})
		if orig.Addr().Is6() {
			lo = netip.IPv6Loopback()
		}
		target = netip.AddrPortFrom(lo, orig.Port())
	}
	d := dialer()
	d.Timeout = 10 * time.Second
	up, err := d.Dial("tcp", target.String())
	if err != nil {
		ev.Err = fmt.Sprintf("dial %v: %v", target, err)
		p.out.json(ev)
		c.Close()
		return
	}
	p.out.json(ev)
	relay(c, up.(*net.TCPConn))
}
