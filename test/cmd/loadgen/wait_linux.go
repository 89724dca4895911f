package main

import (
	"time"

	"golang.org/x/sys/unix"
)

// waitUntil blocks the calling goroutine (and its thread) until t with
// nanosleep(2). time.Sleep would do, but when the runtime has nothing else
// to run it parks in epoll_pwait, whose timeout is rounded up to whole
// milliseconds: at 1000 requests per second most sends would start up to a
// millisecond late. nanosleep wakes within tens of microseconds.
func waitUntil(t time.Time) {
	for {
		d := time.Until(t)
		if d <= 0 {
			return
		}
		ts := unix.NsecToTimespec(int64(d))
		_ = unix.Nanosleep(&ts, nil) // EINTR (the runtime's preemption signal): loop
	}
}
