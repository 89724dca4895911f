package proxy

import (
	"os"
	"testing"
	"time"
)

func TestParseStatCPU(t *testing.T) {
	tests := []struct {
		name, stat string
		want       uint64
		wantErr    bool
	}{
		{"plain", "1234 (nginx) S 1 1234 1234 0 -1 4194560 300 0 0 0 250 125 0 0 20 0 1 0 500 10000000 800 18446744073709551615", 375, false},
		{"name with spaces and parens", "99 (my (odd) name) R 1 99 99 0 -1 0 0 0 0 0 7 3 0 0 20 0 1 0 1 1 1", 10, false},
		{"truncated", "99 (x) R 1 2 3", 0, true},
		{"no name", "garbage", 0, true},
		{"not a number", "99 (x) R 1 99 99 0 -1 0 0 0 0 0 seven 3 0", 0, true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := parseStatCPU(tt.stat)
			if (err != nil) != tt.wantErr || got != tt.want {
				t.Errorf("parseStatCPU = %d, %v; want %d, error %v", got, err, tt.want, tt.wantErr)
			}
		})
	}
}

func TestParseStatus(t *testing.T) {
	tests := []struct {
		name, status string
		want         memory
		wantErr      bool
	}{
		{"all", "Name:\tsluice-proxy\nVmPeak:\t 1000 kB\nVmHWM:\t   15200 kB\nVmRSS:\t   12100 kB\nRssAnon:\t    5000 kB\nRssFile:\t    7100 kB\nThreads:\t5\n", memory{RSS: 12100, HWM: 15200, Anon: 5000}, false},
		{"kernel thread has none", "Name:\tkthreadd\nThreads:\t1\n", memory{}, true},
		{"bad unit", "VmHWM:\t1 MB\nVmRSS:\t1 kB\nRssAnon:\t1 kB\n", memory{}, true},
		{"no RssAnon", "VmHWM:\t1 kB\nVmRSS:\t1 kB\n", memory{}, true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := parseStatus(tt.status)
			if (err != nil) != tt.wantErr || (!tt.wantErr && got != tt.want) {
				t.Errorf("parseStatus = %+v, %v; want %+v, error %v", got, err, tt.want, tt.wantErr)
			}
		})
	}
}

// The helpers read this test process: it has used some CPU and holds
// some memory, and the sampler sees at least that much.
func TestReadOwnProcess(t *testing.T) {
	ps := procs{os.Getpid()}
	busy := time.Now()
	for time.Since(busy) < 50*time.Millisecond {
	}
	cpu, err := ps.cpu()
	if err != nil || cpu <= 0 {
		t.Fatalf("cpu = %v, %v", cpu, err)
	}
	ms, err := ps.memory()
	if err != nil || ms[0].RSS <= 0 || ms[0].HWM < ms[0].RSS || ms[0].Anon <= 0 || ms[0].Anon > ms[0].RSS {
		t.Fatalf("memory = %+v, %v", ms, err)
	}
	s := sampleRSS(ps, time.Millisecond)
	time.Sleep(5 * time.Millisecond)
	peak, err := s.finish()
	if err != nil || peak[0].RSS <= 0 || peak[0].Anon <= 0 {
		t.Fatalf("sampled peak %v, %v", peak, err)
	}
	if _, err := (procs{-1}).cpu(); err == nil {
		t.Error("cpu of a missing process: no error")
	}
}
