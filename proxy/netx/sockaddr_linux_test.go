package netx

import (
	"encoding/binary"
	"net/netip"
	"testing"
)

// nativeFamily returns an address family in host byte order, as two bytes.
func nativeFamily(f uint16) (byte, byte) {
	var b [2]byte
	binary.NativeEndian.PutUint16(b[:], f)
	return b[0], b[1]
}

func TestParseSockaddr(t *testing.T) {
	v4 := []byte{0, 0, 0x1f, 0x90, 10, 248, 1, 10, 0, 0, 0, 0, 0, 0, 0, 0}
	v4[0], v4[1] = nativeFamily(2)
	got, err := parseSockaddr(v4)
	if err != nil || got != netip.MustParseAddrPort("10.248.1.10:8080") {
		t.Errorf("sockaddr_in: %v, %v", got, err)
	}
	v6 := make([]byte, 28)
	v6[0], v6[1] = nativeFamily(10)
	v6[2], v6[3] = 0x1f, 0x90
	a := netip.MustParseAddr("fd5c:0:0:1::10").As16()
	copy(v6[8:], a[:])
	got, err = parseSockaddr(v6)
	if err != nil || got != netip.MustParseAddrPort("[fd5c:0:0:1::10]:8080") {
		t.Errorf("sockaddr_in6: %v, %v", got, err)
	}
	mapped := netip.MustParseAddr("::ffff:10.0.0.1").As16()
	copy(v6[8:], mapped[:])
	got, err = parseSockaddr(v6)
	if err != nil || got != netip.MustParseAddrPort("10.0.0.1:8080") {
		t.Errorf("mapped sockaddr_in6: %v, %v", got, err)
	}
	if _, err := parseSockaddr(v4[:3]); err == nil {
		t.Error("short sockaddr accepted")
	}
}
