package main

import "encoding/binary"

// nativeFamily returns an address family in host byte order, as two bytes.
func nativeFamily(f uint16) (byte, byte) {
	var b [2]byte
	binary.NativeEndian.PutUint16(b[:], f)
	return b[0], b[1]
}
