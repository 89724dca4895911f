package prometheustest

import "syscall"

// sysProcAttr makes Prometheus die with the test process, so that a test
// binary killed before its cleanup leaves no Prometheus behind.
func sysProcAttr() *syscall.SysProcAttr {
	return &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
}
