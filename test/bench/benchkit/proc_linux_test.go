package benchkit

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
			got, err := ParseStatCPU(tt.stat)
			if (err != nil) != tt.wantErr || got != tt.want {
				t.Errorf("ParseStatCPU = %d, %v; want %d, error %v", got, err, tt.want, tt.wantErr)
			}
		})
	}
}

func TestParseStatus(t *testing.T) {
	tests := []struct {
		name, status string
		want         Memory
		wantErr      bool
	}{
		{"all", "Name:\tsluice-proxy\nVmPeak:\t 1000 kB\nVmHWM:\t   15200 kB\nVmRSS:\t   12100 kB\nRssAnon:\t    5000 kB\nRssFile:\t    7100 kB\nThreads:\t5\n", Memory{RSS: 12100, HWM: 15200, Anon: 5000}, false},
		{"kernel thread has none", "Name:\tkthreadd\nThreads:\t1\n", Memory{}, true},
		{"bad unit", "VmHWM:\t1 MB\nVmRSS:\t1 kB\nRssAnon:\t1 kB\n", Memory{}, true},
		{"no RssAnon", "VmHWM:\t1 kB\nVmRSS:\t1 kB\n", Memory{}, true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := ParseStatus(tt.status)
			if (err != nil) != tt.wantErr || (!tt.wantErr && got != tt.want) {
				t.Errorf("ParseStatus = %+v, %v; want %+v, error %v", got, err, tt.want, tt.wantErr)
			}
		})
	}
}

// The helpers read this test process: it has used some CPU and holds
// some memory, and the sampler sees at least that much.
func TestReadOwnProcess(t *testing.T) {
	ps := Procs{os.Getpid()}
	busy := time.Now()
	for time.Since(busy) < 50*time.Millisecond {
	}
	cpu, err := ps.CPU()
	if err != nil || cpu <= 0 {
		t.Fatalf("cpu = %v, %v", cpu, err)
	}
	ms, err := ps.Memory()
	if err != nil || ms[0].RSS <= 0 || ms[0].HWM < ms[0].RSS || ms[0].Anon <= 0 || ms[0].Anon > ms[0].RSS {
		t.Fatalf("memory = %+v, %v", ms, err)
	}
	s := SampleRSS(ps, time.Millisecond)
	time.Sleep(5 * time.Millisecond)
	peak, err := s.Finish()
	if err != nil || peak[0].RSS <= 0 || peak[0].Anon <= 0 {
		t.Fatalf("sampled peak %v, %v", peak, err)
	}
	if _, err := (Procs{-1}).CPU(); err == nil {
		t.Error("cpu of a missing process: no error")
	}
}

func TestSpreadOf(t *testing.T) {
	tests := []struct {
		in   []float64
		want Spread
	}{
		{[]float64{4, 1, 3, 2}, Spread{Med: 2.5, Lo: 1, Hi: 4}},
		{[]float64{5, 1, 3}, Spread{Med: 3, Lo: 1, Hi: 5}},
		{nil, Spread{}},
	}
	for _, tt := range tests {
		if got := SpreadOf(tt.in); got != tt.want {
			t.Errorf("SpreadOf(%v) = %+v, want %+v", tt.in, got, tt.want)
		}
	}
	if got := (Spread{Med: 2.5, Lo: 1, Hi: 4}).Format(1); got != "2.5 (1.0 – 4.0)" {
		t.Errorf("Format = %q", got)
	}
}

func TestSumMetric(t *testing.T) {
	text := "# TYPE request_total counter\nrequest_total{direction=\"inbound\",a=\"1\"} 10\nrequest_total{direction=\"outbound\"} 5\nrequest_total{direction=\"inbound\",a=\"2\"} 2.5\n"
	if got, ok := SumMetric(text, "request_total", `direction="inbound"`); !ok || got != 12.5 {
		t.Errorf("inbound = %v, %v; want 12.5", got, ok)
	}
	if _, ok := SumMetric(text, "response_total", ""); ok {
		t.Error("a missing metric was found")
	}
}

func TestParseCgroupCPU(t *testing.T) {
	tests := []struct {
		stat    string
		want    time.Duration
		wantErr bool
	}{
		{"usage_usec 1500\nuser_usec 1000\nsystem_usec 500\n", 1500 * time.Microsecond, false},
		{"user_usec 1000\n", 0, true},
		{"usage_usec x\n", 0, true},
	}
	for _, tt := range tests {
		got, err := ParseCgroupCPU(tt.stat)
		if (err != nil) != tt.wantErr || got != tt.want {
			t.Errorf("ParseCgroupCPU(%q) = %v, %v; want %v, error %v", tt.stat, got, err, tt.want, tt.wantErr)
		}
	}
	if _, err := CgroupCPU(t.TempDir()); err == nil {
		t.Error("CgroupCPU of a directory without cpu.stat: no error")
	}
}
