package tap

import (
	"errors"
	"fmt"
	"net/netip"
	"strings"

	tappb "github.com/sluice-mesh/sluice/controlplane/api/tap"
)

// maxMatchDepth bounds the nesting of a Match.
const maxMatchDepth = 64

// errInvalidMatch wraps every error of compileMatch.
var errInvalidMatch = errors.New("invalid match")

// matcher is a compiled tappb.Match.
type matcher interface {
	match(ri *RequestInfo) bool
}

type matchAll []matcher

func (m matchAll) match(ri *RequestInfo) bool {
	for _, c := range m {
		if !c.match(ri) {
			return false
		}
	}
	return true
}

type matchAny []matcher

func (m matchAny) match(ri *RequestInfo) bool {
	for _, c := range m {
		if c.match(ri) {
			return true
		}
	}
	return false
}

type matchNot struct{ m matcher }

func (m matchNot) match(ri *RequestInfo) bool { return !m.m.match(ri) }

// matchNet matches the source or destination address within a prefix.
type matchNet struct {
	dst    bool
	prefix netip.Prefix
}

func (m matchNet) match(ri *RequestInfo) bool {
	a := ri.Source.Addr()
	if m.dst {
		a = ri.Destination.Addr()
	}
	return a.IsValid() && m.prefix.Contains(a.Unmap())
}

// matchPorts matches the source or destination port within min..max.
type matchPorts struct {
	dst      bool
	min, max uint16
}

func (m matchPorts) match(ri *RequestInfo) bool {
	p := ri.Source.Port()
	if m.dst {
		p = ri.Destination.Port()
	}
	return m.min <= p && p <= m.max
}

// httpField is the request field a matchString reads.
type httpField uint8

const (
	fieldScheme httpField = iota
	fieldMethod
	fieldAuthority
	fieldPath
)

// matchString matches an HTTP field exactly or by prefix. Scheme and
// authority compare without regard to case, as URLs and host names do;
// method and path are case-sensitive.
type matchString struct {
	field  httpField
	prefix bool
	s      string
}

func (m matchString) match(ri *RequestInfo) bool {
	var v string
	fold := false
	switch m.field {
	case fieldScheme:
		v, fold = ri.Scheme, true
	case fieldMethod:
		v = ri.Method
	case fieldAuthority:
		v, fold = ri.Authority, true
	case fieldPath:
		v = ri.Path
	}
	if m.prefix {
		if len(v) < len(m.s) {
			return false
		}
		v = v[:len(m.s)]
	}
	if fold {
		return strings.EqualFold(v, m.s)
	}
	return v == m.s
}

// matchLabel matches a destination label exactly.
type matchLabel struct{ key, value string }

func (m matchLabel) match(ri *RequestInfo) bool {
	v, ok := ri.DestinationLabels[m.key]
	return ok && v == m.value
}

// compileMatch turns m into a matcher; nil or an empty top-level Match
// matches every request.
func compileMatch(m *tappb.Match) (matcher, error) {
	if m == nil || m.GetMatch() == nil {
		return matchAll(nil), nil
	}
	c, err := compile(m, 0)
	if err != nil {
		return nil, fmt.Errorf("%w: %w", errInvalidMatch, err)
	}
	return c, nil
}

func compile(m *tappb.Match, depth int) (matcher, error) {
	if depth > maxMatchDepth {
		return nil, fmt.Errorf("nested deeper than %d", maxMatchDepth)
	}
	switch x := m.GetMatch().(type) {
	case *tappb.Match_All:
		ms, err := compileSeq(x.All, depth)
		return matchAll(ms), err
	case *tappb.Match_Any:
		ms, err := compileSeq(x.Any, depth)
		return matchAny(ms), err
	case *tappb.Match_Not:
		if x.Not == nil || x.Not.GetMatch() == nil {
			return nil, errors.New("not: empty match")
		}
		c, err := compile(x.Not, depth+1)
		if err != nil {
			return nil, fmt.Errorf("not: %w", err)
		}
		return matchNot{c}, nil
	case *tappb.Match_Source:
		c, err := compileTCP(x.Source, false)
		if err != nil {
			return nil, fmt.Errorf("source: %w", err)
		}
		return c, nil
	case *tappb.Match_Destination:
		c, err := compileTCP(x.Destination, true)
		if err != nil {
			return nil, fmt.Errorf("destination: %w", err)
		}
		return c, nil
	case *tappb.Match_Http_:
		return compileHTTP(x.Http)
	case *tappb.Match_DestinationLabel:
		if x.DestinationLabel.GetKey() == "" {
			return nil, errors.New("destination_label: empty key")
		}
		return matchLabel{x.DestinationLabel.GetKey(), x.DestinationLabel.GetValue()}, nil
	}
	return nil, errors.New("empty match")
}

func compileSeq(s *tappb.Match_Seq, depth int) ([]matcher, error) {
	ms := make([]matcher, 0, len(s.GetMatches()))
	for i, m := range s.GetMatches() {
		c, err := compile(m, depth+1)
		if err != nil {
			return nil, fmt.Errorf("match %d: %w", i, err)
		}
		ms = append(ms, c)
	}
	return ms, nil
}

func compileTCP(t *tappb.Match_Tcp, dst bool) (matcher, error) {
	switch x := t.GetMatch().(type) {
	case *tappb.Match_Tcp_Netmask_:
		a, ok := netip.AddrFromSlice(x.Netmask.GetIp())
		if !ok {
			return nil, fmt.Errorf("netmask: ip of %d bytes, want 4 or 16", len(x.Netmask.GetIp()))
		}
		a = a.Unmap()
		if x.Netmask.GetMask() > uint32(a.BitLen()) {
			return nil, fmt.Errorf("netmask: mask /%d longer than the address", x.Netmask.GetMask())
		}
		p, err := a.Prefix(int(x.Netmask.GetMask()))
		if err != nil {
			return nil, fmt.Errorf("netmask: %w", err)
		}
		return matchNet{dst: dst, prefix: p}, nil
	case *tappb.Match_Tcp_Ports:
		lo, hi := x.Ports.GetMin(), x.Ports.GetMax()
		if hi == 0 {
			hi = lo
		}
		if lo > 65535 || hi > 65535 || hi < lo {
			return nil, fmt.Errorf("ports: invalid range %d..%d", lo, hi)
		}
		return matchPorts{dst: dst, min: uint16(lo), max: uint16(hi)}, nil
	}
	return nil, errors.New("empty tcp match")
}

func compileHTTP(h *tappb.Match_Http) (matcher, error) {
	var f httpField
	var sm *tappb.Match_Http_StringMatch
	switch x := h.GetMatch().(type) {
	case *tappb.Match_Http_Scheme:
		f, sm = fieldScheme, x.Scheme
	case *tappb.Match_Http_Method:
		f, sm = fieldMethod, x.Method
	case *tappb.Match_Http_Authority:
		f, sm = fieldAuthority, x.Authority
	case *tappb.Match_Http_Path:
		f, sm = fieldPath, x.Path
	default:
		return nil, errors.New("http: empty match")
	}
	switch x := sm.GetMatch().(type) {
	case *tappb.Match_Http_StringMatch_Exact:
		return matchString{field: f, s: x.Exact}, nil
	case *tappb.Match_Http_StringMatch_Prefix:
		return matchString{field: f, prefix: true, s: x.Prefix}, nil
	}
	return nil, errors.New("http: empty string match")
}
