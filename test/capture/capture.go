// Package capture records what crosses a network interface with Debian's
// tcpdump and reads it back with gopacket: the TCP streams between two
// addresses, reassembled in sequence order per direction, and whether a
// stream is nothing but well-formed TLS records. The end-to-end tests use
// it to show that meshed pods talk TLS on the wire and that a known
// plaintext never appears there.
package capture

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"sort"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/gopacket/gopacket"
	"github.com/gopacket/gopacket/layers"
	"github.com/gopacket/gopacket/pcapgo"
)

// Capture is a running tcpdump.
type Capture struct {
	cmd    *exec.Cmd
	file   string
	stderr lockedBuffer
	done   chan error
}

// lockedBuffer is tcpdump's standard error, written by the process's copier
// while Start reads it.
type lockedBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *lockedBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *lockedBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}

// Start runs tcpdump on iface with a BPF capture filter (tcpdump's
// syntax, such as "tcp and host 10.244.0.5"), writing to a file under dir,
// and returns once tcpdump listens. Stop ends it.
func Start(iface, filter, dir string) (*Capture, error) {
	c := &Capture{file: filepath.Join(dir, "capture.pcap"), done: make(chan error, 1)}
	// --immediate-mode and -U: deliver and write each packet at once (else
	// packets still in the kernel's ring when tcpdump is stopped are lost);
	// -s 0: whole packets, so each slot of the kernel's ring is 256 KiB;
	// -B 131072: a 128 MiB ring (512 slots; the default 2 MiB holds 8, and
	// the kernel drops what a busy tcpdump has not read); -n: no lookups.
	// -Z root: keep root, or tcpdump drops to its own user, who may not
	// write to dir.
	c.cmd = exec.Command("tcpdump", "-i", iface, "-n", "--immediate-mode", "-U", "-s", "0", "-B", "131072", "-Z", "root", "-w", c.file, filter)
	c.cmd.Stderr = &c.stderr
	c.cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := c.cmd.Start(); err != nil {
		return nil, fmt.Errorf("start tcpdump: %w", err)
	}
	go func() { c.done <- c.cmd.Wait() }()
	// tcpdump says "listening on <iface>" once it captures.
	deadline := time.After(10 * time.Second)
	for !strings.Contains(c.stderrText(), "listening on") {
		select {
		case err := <-c.done:
			return nil, fmt.Errorf("tcpdump exited: %v: %s", err, c.stderrText())
		case <-deadline:
			c.Stop()
			return nil, fmt.Errorf("tcpdump did not start listening: %s", c.stderrText())
		case <-time.After(50 * time.Millisecond):
		}
	}
	return c, nil
}

func (c *Capture) stderrText() string { return c.stderr.String() }

// quiet is how long the capture file must stay the same size before Stop
// ends tcpdump, and settleMax the longest Stop waits for that.
const (
	quiet     = 300 * time.Millisecond
	settleMax = 5 * time.Second
)

// Stop waits until the capture file has stopped growing (packets the
// kernel still holds for tcpdump would be lost at SIGINT), ends tcpdump,
// which flushes its file, and returns the packets it wrote. A capture the
// kernel dropped packets from is an error: a lost packet may have held
// what the caller looks for.
func (c *Capture) Stop() ([]Packet, error) {
	c.settle()
	c.cmd.Process.Signal(syscall.SIGINT)
	select {
	case <-c.done:
	case <-time.After(10 * time.Second):
		c.cmd.Process.Kill()
		<-c.done
	}
	f, err := os.Open(c.file)
	if err != nil {
		return nil, fmt.Errorf("open the capture: %w (tcpdump said: %s)", err, c.stderrText())
	}
	defer f.Close()
	ps, err := Read(f)
	if err == nil {
		// A lost packet could have carried what the caller looks for.
		if m := droppedRE.FindStringSubmatch(c.stderrText()); m != nil && m[1] != "0" {
			err = fmt.Errorf("tcpdump: %s packets dropped by the kernel; the capture is incomplete", m[1])
		}
	}
	return ps, err
}

// droppedRE finds tcpdump's closing count of packets the kernel dropped.
var droppedRE = regexp.MustCompile(`(\d+) packets? dropped by kernel`)

// settle returns once the file's size has not changed for quiet, or after
// settleMax.
func (c *Capture) settle() {
	size := func() int64 {
		fi, err := os.Stat(c.file)
		if err != nil {
			return -1
		}
		return fi.Size()
	}
	last, since := size(), time.Now()
	for start := time.Now(); time.Since(start) < settleMax && time.Since(since) < quiet; {
		time.Sleep(50 * time.Millisecond)
		if n := size(); n != last {
			last, since = n, time.Now()
		}
	}
}

// Packet is one captured TCP segment.
type Packet struct {
	Src, Dst netip.AddrPort
	Seq      uint32
	SYN, FIN bool
	Payload  []byte
}

// Read parses a pcap stream into its TCP segments over IPv4 or IPv6;
// other packets are skipped.
func Read(r io.Reader) ([]Packet, error) {
	pr, err := pcapgo.NewReader(r)
	if err != nil {
		return nil, fmt.Errorf("read pcap: %w", err)
	}
	src := gopacket.NewPacketSource(pr, pr.LinkType())
	src.NoCopy = false
	var out []Packet
	for {
		p, err := src.NextPacket()
		if errors.Is(err, io.EOF) {
			return out, nil
		}
		if err != nil {
			return out, fmt.Errorf("read pcap: %w", err)
		}
		var srcIP, dstIP netip.Addr
		switch ip := p.NetworkLayer().(type) {
		case *layers.IPv4:
			srcIP, _ = netip.AddrFromSlice(ip.SrcIP.To4())
			dstIP, _ = netip.AddrFromSlice(ip.DstIP.To4())
		case *layers.IPv6:
			srcIP, _ = netip.AddrFromSlice(ip.SrcIP)
			dstIP, _ = netip.AddrFromSlice(ip.DstIP)
		default:
			continue
		}
		tcp, ok := p.TransportLayer().(*layers.TCP)
		if !ok {
			continue
		}
		out = append(out, Packet{
			Src:     netip.AddrPortFrom(srcIP, uint16(tcp.SrcPort)),
			Dst:     netip.AddrPortFrom(dstIP, uint16(tcp.DstPort)),
			Seq:     tcp.Seq,
			SYN:     tcp.SYN,
			FIN:     tcp.FIN,
			Payload: append([]byte(nil), tcp.Payload...),
		})
	}
}

// Flow is one direction of one TCP connection.
type Flow struct{ Src, Dst netip.AddrPort }

func (f Flow) String() string { return f.Src.String() + " → " + f.Dst.String() }

// Opened returns the flows whose SYN (or SYN-ACK) was captured: their
// streams start at the connection's first byte.
func Opened(ps []Packet) map[Flow]bool {
	out := map[Flow]bool{}
	for _, p := range ps {
		if p.SYN {
			out[Flow{p.Src, p.Dst}] = true
		}
	}
	return out
}

// Streams reassembles the payload of every flow in sequence order,
// dropping retransmitted bytes. A flow whose SYN was not captured starts
// at its lowest sequence number.
func Streams(ps []Packet) map[Flow][]byte {
	type seg struct {
		seq  uint32
		data []byte
	}
	isn := map[Flow]uint32{}
	segs := map[Flow][]seg{}
	for _, p := range ps {
		f := Flow{p.Src, p.Dst}
		if p.SYN {
			isn[f] = p.Seq + 1
		}
		if len(p.Payload) > 0 {
			segs[f] = append(segs[f], seg{p.Seq, p.Payload})
		}
	}
	out := map[Flow][]byte{}
	for f, ss := range segs {
		start, ok := isn[f]
		if !ok {
			start = ss[0].seq
			for _, s := range ss {
				if int32(s.seq-start) < 0 {
					start = s.seq
				}
			}
		}
		sort.SliceStable(ss, func(i, j int) bool { return int32(ss[i].seq-start) < int32(ss[j].seq-start) })
		var b []byte
		for _, s := range ss {
			off := int(int32(s.seq - start))
			if off < 0 || off > len(b) {
				continue // before the start, or a gap (a segment tcpdump missed)
			}
			if end := off + len(s.data); end > len(b) {
				b = append(b, s.data[len(b)-off:]...)
			}
		}
		out[f] = b
	}
	return out
}

// TLS record content types (RFC 8446 section 5.1).
const (
	recordChangeCipherSpec = 20
	recordAlert            = 21
	recordHandshake        = 22
	recordApplicationData  = 23
)

// TLSRecords checks that stream is a sequence of whole TLS records (a
// last one may be cut off by the end of the capture) and returns how many
// records of application data it holds. With fromStart (the connection's
// SYN was captured, see Opened) the first record must be a handshake (the
// ClientHello or ServerHello); without, the stream is a connection's later
// part, which must start at a record's boundary (the capture began while
// it was idle).
func TLSRecords(stream []byte, fromStart bool) (appData int, err error) {
	if len(stream) == 0 {
		return 0, errors.New("empty stream")
	}
	for i := 0; len(stream) > 0; i++ {
		if len(stream) < 5 {
			return appData, nil // a header cut off by the end of the capture
		}
		typ, major, length := stream[0], stream[1], int(binary.BigEndian.Uint16(stream[3:5]))
		switch {
		case typ < recordChangeCipherSpec || typ > recordApplicationData:
			return appData, fmt.Errorf("record %d: content type %d is not TLS (bytes %q)", i, typ, head(stream))
		case major != 3:
			return appData, fmt.Errorf("record %d: version %d.%d is not TLS", i, major, stream[2])
		case length > 1<<14+256:
			return appData, fmt.Errorf("record %d: length %d exceeds TLS's maximum", i, length)
		case i == 0 && fromStart && typ != recordHandshake:
			return appData, fmt.Errorf("the stream starts with a record of type %d, not a handshake (bytes %q)", typ, head(stream))
		}
		if typ == recordApplicationData {
			appData++
		}
		if len(stream) < 5+length {
			return appData, nil // cut off by the end of the capture
		}
		stream = stream[5+length:]
	}
	return appData, nil
}

func head(b []byte) []byte { return b[:min(len(b), 24)] }
