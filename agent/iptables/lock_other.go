//go:build !linux

package iptables

func nsKey(netns string) string { return netns }
