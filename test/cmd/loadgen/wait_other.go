//go:build !linux

package main

import "time"

// waitUntil blocks the calling goroutine until t.
func waitUntil(t time.Time) { time.Sleep(time.Until(t)) }
