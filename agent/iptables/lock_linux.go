package iptables

import (
	"fmt"
	"os"
	"syscall"
)

// nsKey names the namespace behind netns by device and inode, so that
// /proc/PID/ns/net and its bind mount under /run/netns share one lock.
func nsKey(netns string) string {
	fi, err := os.Stat(netns)
	if err != nil {
		return netns
	}
	st, ok := fi.Sys().(*syscall.Stat_t)
	if !ok {
		return netns
	}
	return fmt.Sprintf("ns:%d:%d", st.Dev, st.Ino)
}
